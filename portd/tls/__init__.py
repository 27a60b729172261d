"""TLS as a layer on a stream endpoint: one owner for keys, contexts and handshakes.

* ``settings``: the ``tls_*`` listener keys and TLSConfig (imports no ssl: config
  loading parses the keys, then asks ``context`` to load the files);
* ``context``: certificate and key files -> a server SSLContext, with one-line errors;
  :func:`~portd.tls.context.client_context` for code that originates TLS (connect,
  a proxy's upstreams);
* ``accept``: the handshake of an accepted connection (timeout, failure reasons, the
  optional 400 for plaintext HTTP), on the listener's adoption path;
* ``info``: what a connection knows of its TLS session (``conn.tls``);
* ``certs``: certificates made with ``cryptography`` (ephemeral ones, the testing
  API's CA); ``files``: ``portd cert``'s files.

Nothing here is imported unless a listener or command uses TLS.
"""
