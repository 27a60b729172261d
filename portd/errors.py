"""The exceptions portd raises, each carrying the exit code the CLI maps it to.

Library code raises these; only ``portd.cli`` turns them into one-line messages and
exit codes (sysexits.h numbering).
"""

from __future__ import annotations

from collections.abc import Sequence

EX_USAGE = 64
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


class ConnectError(PortdError):
    """connect: the peer refused, did not answer in time, or was not reachable: exit 1, as nc."""

    exit_code = 1


class ServiceNotFoundError(PortdError):
    """No /etc/services entry for a name or port."""

    exit_code = 1


class DiagnosisError(PortdError):
    """doctor/ports: the kernel's tables or the host's addresses could not be read at all."""

    exit_code = EX_UNAVAILABLE


class ProcessNotFoundError(PortdError):
    """ports --pid: no process has that pid: exit 1, as ps -p does."""

    exit_code = 1


class NotPermittedError(PortdError):
    """An inspection of another user's process without root."""

    exit_code = EX_NOPERM
