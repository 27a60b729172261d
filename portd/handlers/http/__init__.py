"""HTTP/1.x building blocks shared by portd's HTTP handlers.

``heads`` owns what a request head may look like (request-line shape and the size
limits), ``responses`` owns the bytes portd sends. Parsing proper is llhttp's job,
through httptools; these modules add only what llhttp does not check.
"""
