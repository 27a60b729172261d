"""The exceptions portd raises, each carrying the exit code the CLI maps it to.

Library code raises these; only ``portd.cli`` turns them into one-line messages and
exit codes (sysexits.h numbering).
"""

from __future__ import annotations

from collections.abc import Sequence

EX_USAGE = 64
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_NOPERM = 77
EX_CONFIG = 78


class PortdError(Exception):
    """Base class: an expected failure with a one-line message and an exit code."""

    exit_code = EX_SOFTWARE


class UsageError(PortdError):
    """A command line or API argument that does not parse."""

    exit_code = EX_USAGE


class BindSyntaxError(UsageError):
    """Text that is not ``[HOST:]PORT`` (or names an unknown service)."""


class HostNotFoundError(PortdError):
    """A host name to connect to does not resolve (connect, scan): exit 1, as nc does."""

    exit_code = 1


class ConfigError(PortdError):
    """One or more problems in a config file, each already a complete line."""

    exit_code = EX_CONFIG

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = tuple(lines)
        super().__init__("\n".join(self.lines))


class OptionError(ValueError):
    """A single option value that does not fit; the message says what is allowed."""


class BindError(PortdError):
    """A listener's socket could not be opened."""

    exit_code = EX_UNAVAILABLE


class AddressInUseError(BindError):
    """The address and port are held by another socket."""


class AddressNotAvailableError(BindError):
    """The address is not one of this host's, or its family is unsupported."""


class PrivilegedPortError(BindError):
    """A port below net.ipv4.ip_unprivileged_port_start without CAP_NET_BIND_SERVICE."""

    exit_code = EX_NOPERM


class ControlError(PortdError):
    """No daemon answers on the control socket, or it cannot be opened."""

    exit_code = EX_UNAVAILABLE


class HandlerError(PortdError):
    """A handler name that no built-in or installed package provides."""

    exit_code = EX_CONFIG


class ReloadFailedError(PortdError):
    """The daemon refused a reload (``portd reload``); it keeps serving the old config."""

    def __init__(self, lines: Sequence[str], exit_code: int = EX_CONFIG) -> None:
        self.lines = tuple(lines)
        self.exit_code = exit_code
        super().__init__("\n".join(self.lines))


class ConnectError(PortdError):
    """``portd connect``: the peer refused, did not answer in time, or a source address
    could not be bound (exit 1, as nc)."""

    exit_code = 1


class LoopUnavailableError(PortdError):
    """``[daemon] loop = "uvloop"`` on a host without uvloop: a config the host cannot serve."""

    exit_code = EX_CONFIG


class UnknownUserError(PortdError):
    """[daemon] user or group names nobody on this host."""

    exit_code = EX_NOUSER


class PrivilegeError(PortdError):
    """Switching user failed, or would leave a way back to root."""

    exit_code = EX_NOPERM


class ServiceNotFoundError(PortdError):
    """``portd services``: no /etc/services entry by that name or number (exit 1)."""

    exit_code = 1
