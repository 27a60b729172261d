"""netcat-style commands: ``portd listen`` and ``portd connect``, and the relay between
stdin/stdout and sockets they share.

Nothing here imports asyncio, anyio, structlog or uvloop unless a handler is asked for:
``portd listen`` is started often and must be accepting within milliseconds.
"""
