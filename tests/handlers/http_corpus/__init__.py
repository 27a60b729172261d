"""Raw request streams for http-hello, with the answers expected in expected.toml."""
