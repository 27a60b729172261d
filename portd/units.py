"""``portd units``: systemd socket units for a config's listeners, and the service they start.

Each listener with a fixed port gets its own socket unit, because FileDescriptorName=
names every socket of a unit: ``portd-<listener>.socket`` with one ListenStream= or
ListenDatagram= per address and ``FileDescriptorName=<listener>``, which is how portd
matches inherited sockets to listeners. The service is the shipped, hardened
``portd-activated.service`` (no capabilities, no network of its own) pointed at the
config and the socket units.

Paths go into ``ExecStart=`` quoted per systemd's rules (systemd.syntax(7) and
systemd.service(5), "Command lines"): ``%`` and ``$`` doubled so no specifier or
variable is expanded, double quotes with C-style escapes around anything else than
plain path characters. Control characters (a newline would start another directive)
and text that is not UTF-8 are refused: no quoting carries them into a unit file.
"""

from __future__ import annotations

import re
from pathlib import Path

from portd.config import Config, ListenerConfig
from portd.errors import UsageError

SERVICE = "portd-activated.service"
PLAIN_ARGUMENT = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def quote_argument(text: str, what: str) -> str:
    """``text`` as one argument of a systemd command line.

    Raises:
        UsageError: it holds a control character or is not UTF-8 (one line naming it).
    """
    if CONTROL_CHARACTERS.search(text):
        raise UsageError(f"{what} {text!r} holds a control character; a unit file cannot carry it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what} {text!r} is not UTF-8; a unit file cannot carry it") from None
    escaped = text.replace("%", "%%").replace("$", "$$")
    if PLAIN_ARGUMENT.fullmatch(escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def port_zero_warnings(config: Config) -> list[str]:
    """One line per port-0 listener: the service binds those itself, so the generated
    unit keeps network access (exposure rises from about 0.4 to 1.1)."""
    return [
        f"{listener.label} binds port 0: socket activation cannot pass it, so "
        f"{SERVICE} binds it itself and keeps network access (PrivateNetwork=no, "
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX; systemd-analyze security "
        "exposure about 1.1 instead of 0.4); give it a fixed port to keep the unit sealed"
        for listener in config.listeners
        if listener.endpoint.is_ephemeral
    ]


def _template_directory() -> Path:
    """Where the shipped unit files are: inside the wheel, or systemd/ in a checkout."""
    packaged = Path(__file__).resolve().parent / "systemd_units"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "systemd"


def render_units(config: Config, config_path: str, portd: str) -> dict[str, str]:
    """File name -> text for every unit; port-0 listeners bind at start instead.

    Args:
        config: a validated config.
        config_path: the absolute path the service passes to ``portd serve -c``.
        portd: the absolute path of the portd executable.
    """
    activated = [listener for listener in config.listeners if not listener.endpoint.is_ephemeral]
    units = {_socket_name(listener): _socket_unit(listener) for listener in activated}
    only = len(activated) == len(config.listeners)
    units[SERVICE] = _service_unit(list(units), config_path, portd, activation_only=only)
    return units


def _socket_name(listener: ListenerConfig) -> str:
    return f"portd-{listener.name}.socket"


def _socket_unit(listener: ListenerConfig) -> str:
    lines = listener.endpoint.unit_lines(listener.addresses, listener.socket_options)
    return (
        "[Unit]\n"
        f"Description=portd listener {listener.name} ({listener.protocol} {listener.endpoint})\n"
        f"PartOf={SERVICE}\n\n"
        "[Socket]\n"
        + "".join(f"{line}\n" for line in lines)
        + f"FileDescriptorName={listener.name}\n"
        f"Service={SERVICE}\n\n"
        "[Install]\n"
        "WantedBy=sockets.target\n"
    )


def _replace(line: str, values: dict[str, str]) -> str:
    key = line.partition("=")[0]
    return f"{key}={values[key]}" if key in values else line


def _service_unit(
    sockets: list[str], config_path: str, portd: str, *, activation_only: bool
) -> str:
    flag = " --activation-only" if activation_only else ""
    executable = quote_argument(portd, "--portd")
    config_argument = quote_argument(config_path, "config path")
    replaced = {
        "ExecStart": f"{executable} serve -c {config_argument}{flag}",
        "ExecReload": f"{executable} reload -c {config_argument}",
        "Requires": " ".join(sockets),
        "After": " ".join(["network.target", *sockets]),
    }
    if not activation_only:  # port-0 listeners bind inside the service: it needs the network
        replaced["PrivateNetwork"] = "no"
        replaced["RestrictAddressFamilies"] = "AF_INET AF_INET6 AF_UNIX"
    template = (_template_directory() / SERVICE).read_text(encoding="utf-8").splitlines()
    lines = [_replace(line, replaced) for line in template if not line.startswith("#")]
    header = f"# Generated by `portd units {config_argument}`: socket-activated portd.\n"
    if not activation_only:
        header += (
            "# Some listeners bind port 0, so this service binds them itself and keeps\n"
            "# network access (PrivateNetwork=no): give them fixed ports to seal it.\n"
        )
    return header + "\n".join(lines) + "\n"
