"""Every exception portd raises for an expected failure, with the exit code it means.

Library code raises these; only ``portd.cli`` turns them into one-line messages and
exit codes (sysexits.h numbering). Context is added, never rewrapped: ``where`` names
what an error concerns (a listener), and :meth:`PortdError.messages` says it first.
"""

from __future__ import annotations

from collections.abc import Sequence

EX_FAILED = 1  # as nc: a connect that failed, a host that does not resolve
EX_USAGE = 64
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_NOPERM = 77
EX_CONFIG = 78


class PortdError(Exception):
    """Base class: an expected failure with a one-line message and an exit code."""

    exit_code = EX_SOFTWARE
    where: str | None = None  # what the error concerns, said first (a listener's label)

    def messages(self) -> list[str]:
        """The lines to show a user, each complete."""
        text = str(self)
        return [f"{self.where}: {text}" if self.where else text]

    def concerning(self, where: str) -> PortdError:
        """Say what this error concerns (unless already said or part of the message);
        returns the same error."""
        if self.where is None and not str(self).startswith(where):
            self.where = where
        return self


class ListenersFailedError(PortdError):
    """Several listeners failed at once (binding, starting handlers): every one is said."""

    def __init__(self, errors: Sequence[PortdError]) -> None:
        self.errors = tuple(errors)
        self.exit_code = self.errors[0].exit_code
        super().__init__("; ".join(line for error in self.errors for line in error.messages()))

    def messages(self) -> list[str]:
        """One line (or more) per failed listener."""
        return [line for error in self.errors for line in error.messages()]


def one_or_all(errors: Sequence[PortdError]) -> PortdError:
    """The error to raise for ``errors``: the one itself, or all of them together."""
    return errors[0] if len(errors) == 1 else ListenersFailedError(errors)


class UsageError(PortdError):
    """A command line or API argument that does not parse."""

    exit_code = EX_USAGE


class BindSyntaxError(UsageError):
    """Text that is not ``[HOST:]PORT`` (or names an unknown service)."""


class HostNotFoundError(PortdError):
    """A host name to connect to does not resolve (connect, scan): exit 1, as nc does."""

    exit_code = EX_FAILED


class ConnectError(PortdError):
    """The peer refused, did not answer in time, or could not be reached (exit 1)."""

    exit_code = EX_FAILED


class ServiceNotFoundError(PortdError):
    """No /etc/services entry has that name or port (exit 1)."""

    exit_code = EX_FAILED


class ConfigError(PortdError):
    """One or more problems in a config file, each already a complete line."""

    exit_code = EX_CONFIG

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = tuple(lines)
        super().__init__("\n".join(self.lines))

    def messages(self) -> list[str]:
        """One line per problem."""
        return [f"{self.where}: {line}" if self.where else line for line in self.lines]

    def concerning(self, where: str) -> PortdError:
        """Say what these problems concern (a listener)."""
        if self.where is None:
            self.where = where
        return self


class OptionError(ValueError):
    """A single option value that does not fit; the message says what is allowed."""


class BindError(PortdError):
    """A listener's socket could not be opened."""

    exit_code = EX_UNAVAILABLE


class AddressInUseError(BindError):
    """The address and port are held by another socket."""


class AddressNotAvailableError(BindError):
    """The address is not one of this host's, or its family is unsupported."""


class BindPermissionError(BindError):
    """The OS refused the bind for lack of a right (a privileged port, a directory)."""

    exit_code = EX_NOPERM


class PrivilegedPortError(BindPermissionError):
    """A port below net.ipv4.ip_unprivileged_port_start without CAP_NET_BIND_SERVICE."""


class NotASocketError(BindError):
    """Something other than a socket is at a unix socket's path: portd never removes it."""


class UnsafeDirectoryError(BindError):
    """The directory of a socket path could let another user swap the socket."""


class AccessError(PortdError):
    """A file or directory portd needs is out of reach of the user it runs as."""

    exit_code = EX_NOPERM


class ResourceLimitError(PortdError):
    """Out of file descriptors, threads or memory for what was asked."""

    exit_code = EX_UNAVAILABLE


class ControlError(PortdError):
    """No daemon answers on the control socket, or it cannot be opened."""

    exit_code = EX_UNAVAILABLE


class UnknownUserError(PortdError):
    """[daemon] user or group names nobody on this host."""

    exit_code = EX_NOUSER


class PrivilegeError(PortdError):
    """Switching user failed, or would leave a way back to root."""

    exit_code = EX_NOPERM


class HandlerError(PortdError):
    """A handler name that no built-in or installed package provides."""

    exit_code = EX_CONFIG


class ReloadFailedError(PortdError):
    """The daemon refused a reload (``portd reload``); it keeps serving the old config."""

    def __init__(self, lines: Sequence[str], exit_code: int = EX_CONFIG) -> None:
        self.lines = tuple(lines)
        self.exit_code = exit_code
        super().__init__("\n".join(self.lines))

    def messages(self) -> list[str]:
        """The daemon's lines, as ``portd check`` prints them."""
        return list(self.lines)


class DiagnosisError(PortdError):
    """doctor/ports: the kernel's tables or the host's addresses could not be read at all."""

    exit_code = EX_UNAVAILABLE


class ProcessNotFoundError(PortdError):
    """ports --pid: no process has that pid: exit 1, as ps -p does."""

    exit_code = 1


class NotPermittedError(PortdError):
    """An inspection of another user's process without root."""

    exit_code = EX_NOPERM


class LoopUnavailableError(PortdError):
    """``[daemon] loop = "uvloop"`` on a host without uvloop: a config the host cannot serve."""

    exit_code = EX_CONFIG


class TLSConfigError(PortdError):
    """A certificate, key or CA file that cannot be loaded (missing, unreadable, not PEM,
    a key that does not match its certificate), outside a config file (78, as there)."""

    exit_code = EX_CONFIG


class TLSHandshakeError(PortdError):
    """``portd connect --tls``: the handshake failed (the server's certificate did not
    verify, no shared protocol); exit 1, as any other failed connect."""

    exit_code = EX_FAILED


class CannotCreateError(PortdError):
    """``portd cert``: a file could not be written where asked (73, sysexits' CANTCREAT)."""

    exit_code = EX_CANTCREAT
