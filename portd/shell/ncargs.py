"""netcat's command-line habits, read with nc's meaning: bundled short flags (``-lvnp 5555``),
``HOST PORT`` and ``-p PORT`` in listen, ``HOST:PORT`` in connect, ``-U PATH`` (or
``unix:PATH``) for a unix-domain socket, ``-n``, and the options portd lacks on purpose,
each refused with what to type instead.

Pure string work, no imports beyond the bind grammar: it runs on every ``portd listen``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from portd.errors import BindSyntaxError, HostNotFoundError, UsageError

# Options of other netcats that portd does not take, and why, per command ("" = both).
# The message is the reason and what to type instead; it follows "unknown option -X: ".
NOT_SUPPORTED: Mapping[tuple[str, str], str] = {
    ("connect", "-e"): "connect runs no program; to run one for each client that "
    "connects: portd listen --exec 'PROG ARGS' PORT",
    ("connect", "-c"): "connect runs no program; to run one for each client that "
    "connects: portd listen --sh-exec 'COMMAND' PORT",
    ("connect", "--exec"): "connect runs no program; portd listen --exec runs one per client",
    ("connect", "--sh-exec"): "connect runs no program; portd listen --sh-exec runs one per client",
    ("", "-x"): "portd connects directly; it has no proxy support",
    ("", "-X"): "portd connects directly; it has no proxy support",
    ("", "--proxy"): "portd connects directly; it has no proxy support",
    ("", "-t"): "portd does no telnet negotiation; bytes pass unchanged",
    ("", "-o"): "stdout carries the data: redirect it (> FILE)",
    ("", "--output"): "stdout carries the data: redirect it (> FILE)",
    ("", "--recv-only"): "use -d (do not read stdin)",
    ("", "--ssl"): "portd speaks no TLS in the shell",
    ("", "-T"): "portd sets no TOS/DSCP",
    ("connect", "-l"): "to listen, use portd listen",
    ("connect", "-k"): "-k keeps a listener open: portd listen -k",
    ("listen", "-z"): "-z checks a port without sending: portd connect -z HOST PORT "
    "(or portd scan HOST PORTS)",
}


def expand_short_flags(
    argv: Sequence[str], takes_value: Mapping[str, bool], command: str = ""
) -> list[str]:
    """``-lvnp5555`` -> ``-l -v -n -p 5555``; ``-q -1`` -> ``-q-1`` (a value, not an option).

    Args:
        argv: one subcommand's arguments (after its name).
        takes_value: every option string of that subcommand -> whether it takes a value.
        command: the subcommand, for the message about an unknown letter in a bundle.

    Raises:
        UsageError: an unknown option, named by itself (also inside a bundle).
    """
    out: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "--":
            out.extend(argv[index - 1 :])
            break
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg
        if name in takes_value:
            if takes_value[name] and "=" not in arg and index < len(argv):
                out.extend(_attached(arg, argv[index]))
                index += 1
            else:
                out.append(arg)
        elif arg.startswith("--"):
            raise unknown_option(name, command)
        elif _is_value(arg):
            out.append(arg)
        elif len(arg) > 2:
            index = _expand_bundle(
                arg, argv, index, takes_value=takes_value, command=command, out=out
            )
        else:
            raise unknown_option(arg, command)
    return out


def _expand_bundle(
    arg: str,
    argv: Sequence[str],
    index: int,
    *,
    takes_value: Mapping[str, bool],
    command: str,
    out: list[str],
) -> int:
    for position, letter in enumerate(arg[1:], start=1):
        flag = "-" + letter
        if flag not in takes_value:
            raise unknown_option(flag, command, bundle=arg)
        if not takes_value[flag]:
            out.append(flag)
            continue
        rest = arg[position + 1 :]
        if rest:
            out.append(flag + rest)
        elif index < len(argv):
            out.extend(_attached(flag, argv[index]))
            index += 1
        else:
            out.append(flag)  # argparse says the value is missing
        break
    return index


def _is_value(arg: str) -> bool:
    """Not an option: a positional, or a negative number."""
    if not arg.startswith("-") or arg == "-":
        return True
    body = arg[1:]
    return body.replace(".", "", 1).isdigit()


def _attached(option: str, value: str) -> list[str]:
    """An option and its value as one word, so a value like ``-1`` is never read as an
    option; an empty value stays a word of its own (``-e ""``)."""
    if not value:
        return [option, value]
    return [f"{option}={value}" if option.startswith("--") else option + value]


def unknown_option(name: str, command: str, bundle: str = "") -> UsageError:
    """``unknown option -e: portd runs no program ...`` (the reason when portd knows it)."""
    reason = NOT_SUPPORTED.get((command, name)) or NOT_SUPPORTED.get(("", name))
    where = f" (in {bundle})" if bundle else ""
    return UsageError(f"unknown option {name}{where}" + (f": {reason}" if reason else ""))


def listen_bind(
    words: Sequence[str], port: str | None, source: str | None, unix: bool = False
) -> str:
    """listen's ``[HOST:]PORT``, ``HOST PORT``, ``-p PORT [HOST]``, ``-s ADDR -p PORT`` or
    ``-U PATH`` -> one text for the bind grammar (``-U PATH`` gives ``unix:PATH``).

    Raises:
        UsageError: no port, the port or host given twice, too many words; -U with
            other than one PATH, or with -p or -s.
    """
    if unix:
        if port is not None or source is not None:
            raise UsageError("-U listens on a PATH; -p and -s name IP ports and addresses")
        return "unix:" + unix_path(words)
    if len(words) > 2:
        raise UsageError(
            f"too many arguments {' '.join(words)!r}; expected [HOST:]PORT or HOST PORT"
        )
    host = source
    if len(words) == 2 or (port is not None and len(words) == 1):
        if host is not None:
            raise UsageError("the address is given twice: -s ADDR and HOST; give one")
        host = words[0]
    if len(words) == 2:
        if port is not None:
            raise UsageError("the port is given twice: -p PORT and PORT; give one")
        port = words[1]
    elif port is None:
        if not words:
            raise UsageError("no port: expected [HOST:]PORT, HOST PORT or -p PORT")
        if host is not None:
            return join_host_port(host, words[0])
        return words[0]
    return join_host_port(host, port) if host is not None else port


def unix_path(words: Sequence[str]) -> str:
    """-U's one word: the socket's path (a ``unix:`` prefix there says it twice: dropped).

    Raises:
        UsageError: no word, or more than one.
    """
    if len(words) != 1:
        given = f", got {' '.join(words)!r}" if words else ""
        raise UsageError(f"-U takes one PATH (the socket file, or @NAME){given}")
    return words[0].removeprefix("unix:")


def unix_target(words: Sequence[str], unix: bool) -> str | None:
    """connect's ``-U PATH`` or ``unix:PATH`` -> the path; None for HOST PORT forms.

    Raises:
        UsageError: -U with other than one PATH.
    """
    if unix:
        return unix_path(words)
    if len(words) == 1 and words[0].startswith("unix:"):
        return words[0].removeprefix("unix:")
    return None


def connect_target(words: Sequence[str]) -> tuple[str, str]:
    """connect's ``HOST PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port).

    Raises:
        UsageError: neither form.
    """
    if len(words) == 2:
        host, port = words
        return host.removeprefix("[").removesuffix("]"), port
    if len(words) > 2:
        raise UsageError(f"too many arguments {' '.join(words)!r}; expected HOST PORT or HOST:PORT")
    text = words[0]
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if sep and host and port:
            return host, port
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if host and port:
            return host, port
    hint = f"; an IPv6 address: [{text}]:PORT or {text} PORT" if text.count(":") > 1 else ""
    raise UsageError(f"no port in {text!r}: expected HOST PORT or HOST:PORT{hint}")


def join_host_port(host: str, port: str) -> str:
    """``::1``, ``80`` -> ``[::1]:80``; ``*`` and names as they are."""
    host = host.removeprefix("[").removesuffix("]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def require_numeric(host: str, for_connect: bool) -> None:
    """-n: refuse a host name (nc -n does no DNS lookup); IP literals and ``*`` pass.

    Raises:
        HostNotFoundError: connect, as nc exits 1.
        BindSyntaxError: listen, as any bad bind (64).
    """
    import ipaddress

    bare = host.removeprefix("[").removesuffix("]").split("%", 1)[0]
    if bare in ("", "*"):
        return
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        message = f"-n: {host!r} is not a numeric address (no DNS lookup with -n)"
        raise (HostNotFoundError if for_connect else BindSyntaxError)(message) from None


def bind_host(text: str) -> str:
    """The host part of ``[HOST:]PORT`` ("" when there is none)."""
    if text.startswith("["):
        return text[1:].partition("]")[0]
    host, sep, _port = text.rpartition(":")
    return host if sep else ""
