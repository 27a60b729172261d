"""Where sockets live: the endpoint kinds (inet, unix), their grammar, sockets and identity."""
