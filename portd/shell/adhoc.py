"""``portd listen --handler NAME``: one listener of the daemon, built from the command line.

This path loads the daemon's machinery (anyio, structlog, uvloop) only when a handler is
asked for, so plain ``portd listen`` keeps its fast start.
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from portd.errors import ConfigError, UsageError
from portd.shell.bound import announce
from portd.shell.listen import ListenOptions, exit_on_sigterm

SOURCE = "portd listen"
LOCATION = '[[listener]] #1 "listen"'
# Given by [HOST:]PORT, -u and --handler: a --set must not quietly override them (it did:
# `--set bind=...` bound elsewhere, `--set protocol=udp` served UDP while saying tcp).
COMMAND_LINE_KEYS = {"bind": "[HOST:]PORT", "protocol": "-u", "handler": "--handler"}


def parse_sets(pairs: Sequence[str], text_keys: Collection[str] = ()) -> dict[str, Any]:
    """``["max_bytes=1GiB", "keep_partial=true"]`` -> typed values (TOML scalars, else text).

    Keys in ``text_keys`` (options that take a string) keep the text as written, so
    ``--set body=1`` means the string "1".

    Raises:
        UsageError: a pair without ``=``, or a key the command line sets otherwise.
    """
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {pair!r}")
        if key in COMMAND_LINE_KEYS:
            raise UsageError(f"--set {key}=...: give the {key} as {COMMAND_LINE_KEYS[key]}")
        if key in text_keys:
            values[key] = text
            continue
        try:
            values[key] = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            values[key] = text
        except ValueError:  # an integer past Python's 4,300 digits
            raise UsageError(f"--set {key}=...: a number that long cannot be read") from None
    return values


def run_handler(
    options: ListenOptions,
    bind_text: str,
    handler: str,
    sets: Sequence[str],
    given: Mapping[str, Any] | None = None,
) -> int:
    """Serve ``handler`` on the bind; one connection unless -k (UDP: until interrupted).
    ``given``: table entries a flag set (``--exec``'s command), which --set must not repeat.

    Raises:
        UsageError: unknown handler or a bad ``--set`` (each problem named, on one line).
        BindError: the same messages and exit codes as the daemon.
    """
    from portd.config import LISTENER_OPTIONS
    from portd.errors import HandlerError
    from portd.handlers.registry import load_handler

    try:
        declared = (*LISTENER_OPTIONS, *load_handler(handler).options)
    except HandlerError as exc:
        raise UsageError(str(exc)) from None
    text_keys = {option.name for option in declared if option.kind is str}
    bind = config_bind(bind_text, options.endpoint)
    table = {"name": "listen", "bind": bind, "protocol": options.protocol, "handler": handler}
    with contextlib.ExitStack() as stack:
        if options.tls:
            table.update(_tls_keys(options, stack))
        return _run(options, table, sets, text_keys, given or {})


def _tls_keys(options: ListenOptions, stack: contextlib.ExitStack) -> dict[str, str]:
    """--tls: the listener's tls_cert/tls_key: --cert/--key (checked now: 78 as for
    connect), or an ephemeral certificate in a private directory kept while serving."""
    import tempfile

    from portd.shell.tls import listen_context, write_ephemeral

    cert, key = options.tls_files
    if cert:
        listen_context(cert, key, ())
        return {"tls_cert": cert, "tls_key": key or cert}
    directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="portd-listen-tls-"))
    hosts = [getattr(a, "host", "") for a in options.endpoint.resolve(options.families)]
    cert, key = write_ephemeral(hosts, directory)
    return {"tls_cert": cert, "tls_key": key}


def _run(
    options: ListenOptions,
    table: dict[str, Any],
    sets: Sequence[str],
    text_keys: set[str],
    given: Mapping[str, Any],
) -> int:
    import anyio

    from portd.config import parse_config
    from portd.daemon import loop_options
    from portd.logging import configure_logging
    from portd.supervisor import Supervisor

    try:
        sets_table = parse_sets(sets, text_keys)
        clash = sorted(set(sets_table) & set(given))
        if clash:
            raise UsageError(f"--set {clash[0]}=...: --exec or --sh-exec gives it already")
        config = parse_config({"listener": [{**table, **given, **sets_table}]}, SOURCE)
    except ConfigError as exc:  # on the command line these are usage errors (64)
        raise UsageError("; ".join(_as_argument(line) for line in exc.messages())) from None
    listener = config.listeners[0]
    if options.families:  # -4/-6: the BindSyntaxError of an address left without sockets
        listener = replace(listener, addresses=listener.endpoint.resolve(options.families))
    configure_logging("auto", "info" if options.verbose else "warning")
    exit_on_sigterm()  # as Ctrl-C: the supervisor's close removes a unix socket's file
    if listener.tls is not None:  # TLS's 256 KiB buffers, as the daemon (portd/memory.py)
        from portd.memory import hold_heap_steady

        hold_heap_steady()
    supervisor = Supervisor(replace(config, listeners=(listener,)))
    supervisor.bind_all()
    try:
        if "command" in given:
            from portd.shell.programs import warn_if_reachable

            warn_if_reachable(supervisor.listeners[0].addresses, options.protocol, given["command"])
        announce(supervisor.listeners[0].addresses, options.label, options.port_file)
        result: int = anyio.run(
            _serve, supervisor, options, backend="asyncio", backend_options=loop_options("auto")
        )
        return result
    finally:
        supervisor.close()


def config_bind(bind_text: str, endpoint: Any) -> str:
    """The bind as a config file takes it: a relative unix path anchored at the working
    directory, where the shell user meant it (a config file takes absolute paths only)."""
    path: str = getattr(endpoint, "path", "")
    if endpoint.kind == "unix" and not path.startswith(("/", "@")):
        import os

        return "unix:" + os.path.abspath(path)  # noqa: PTH100
    return bind_text


def _as_argument(line: str) -> str:
    """``portd listen: [[listener]] #1 "listen": limit = 0: ...`` -> ``limit = 0: ...``."""
    return line.removeprefix(f"{SOURCE}: {LOCATION}: ")


async def _serve(supervisor: Any, options: ListenOptions) -> int:
    import anyio

    listener = supervisor.listeners[0]
    listener.drain_at_limit = not listener.handler.takes_sockets  # the program runs on
    if not (options.keep or options.protocol == "udp" or options.tls):
        listener.accept_limit = 1  # like nc -l: one connection, then no more listening
    await supervisor.start()
    if options.keep or options.protocol == "udp":
        await anyio.sleep_forever()
    await listener.wait_for_connection()
    if options.tls:  # the first connection whose handshake succeeded: a failed one
        listener.stop_accepting(drain=listener.drain_at_limit)  # does not end listen
    await listener.wait_idle()
    return 0
