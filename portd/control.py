"""The local control socket: ``portd status`` asks the running daemon for its numbers,
``portd reload`` asks it to reload and waits for the outcome.

A unix stream socket, created mode 0600 in a directory only its owner can change (made
0700 when missing), or an abstract name when ``control_socket_abstract`` allows it. A
client sends one line (``status`` or ``reload``) and reads one JSON document back;
``reload`` does exactly what SIGHUP does, nothing else on it changes the daemon. It
answers only root and the daemon's own user (SO_PEERCRED), at most MAX_CLIENTS at once,
each given REQUEST_TIMEOUT_S to ask (a reload may then take as long as it takes).

Where it is (``control_socket = "auto"``): ``$RUNTIME_DIRECTORY/control.sock`` under
systemd; otherwise, for a daemon started by hand, a per-user runtime directory
(``$XDG_RUNTIME_DIR/portd``, else ``/tmp/portd-UID``) holding one socket per config
file, named after a hash of the config's real path, so ``portd status -c FILE`` finds
the daemon serving FILE with no setting at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple, cast

from portd.endpoints.unix_paths import (
    check_private_directory,
    clear_stale_socket,
    peer_credentials,
)
from portd.errors import ControlError, PortdError, ReloadFailedError

DEFAULT_SOCKET = "/run/portd/control.sock"  # RuntimeDirectory=portd in the shipped units
MAX_REQUEST = 1024
MAX_CLIENTS = 16
REQUEST_TIMEOUT_S = 5.0
LABEL = "control socket"
# The daemon's numbers, now (one process) or once its workers answered (their parent).
Snapshot = Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]]


class ReloadFailure(NamedTuple):
    """Why a reload was refused: the exit code ``portd reload`` exits with, and its lines."""

    exit_code: int
    lines: tuple[str, ...]


def resolve_socket_path(
    setting: str, environ: dict[str, str] | None = None, config_path: str = ""
) -> str:
    """The daemon's socket path for a ``control_socket`` setting.

    ``auto``: ``$RUNTIME_DIRECTORY/control.sock`` under systemd; else the per-user path
    for ``config_path`` (see the module docstring); else off (``""``).
    """
    if setting != "auto":
        return setting
    env = os.environ if environ is None else environ
    runtime = env.get("RUNTIME_DIRECTORY", "")
    if runtime:
        return os.path.join(runtime.split(":")[0], "control.sock")  # noqa: PTH118
    return user_socket_path(config_path, env) if config_path else ""


def user_socket_path(config_path: str, environ: dict[str, str] | os._Environ[str]) -> str:
    """``$XDG_RUNTIME_DIR/portd/control-<hash>.sock`` (else under ``/tmp/portd-UID``), the
    hash taken over the config's real path: one socket per config file and user."""
    import hashlib

    runtime = environ.get("XDG_RUNTIME_DIR", "")
    directory = (
        os.path.join(runtime, "portd")  # noqa: PTH118
        if runtime.startswith("/") and _owned_by_me(runtime)
        else f"/tmp/portd-{os.geteuid()}"  # noqa: S108 - made 0700 and checked before use
    )
    real = os.path.realpath(config_path).encode("utf-8", "surrogateescape")
    return os.path.join(directory, f"control-{hashlib.sha256(real).hexdigest()[:16]}.sock")  # noqa: PTH118


def _owned_by_me(directory: str) -> bool:
    """XDG_RUNTIME_DIR must belong to its user; one inherited from another (sudo, setpriv)
    is not this user's."""
    try:
        return os.stat(directory).st_uid == os.geteuid()  # noqa: PTH116
    except OSError:
        return False


def client_socket_paths(
    socket_path: str | None, config_path: str | None, environ: dict[str, str] | None = None
) -> list[str]:
    """Where ``portd status``/``reload`` look, in order: ``--socket``; else the socket the
    config names or, for ``auto``, systemd's and the per-user one for that config; else
    ``$RUNTIME_DIRECTORY/control.sock`` and DEFAULT_SOCKET.

    Raises:
        ControlError: the config turns the control socket off.
    """
    if socket_path:
        return [socket_path]
    env = os.environ if environ is None else environ
    runtime = env.get("RUNTIME_DIRECTORY", "")
    systemd = [os.path.join(runtime.split(":")[0], "control.sock")] if runtime else []  # noqa: PTH118
    if config_path is None:
        return [*systemd, DEFAULT_SOCKET]
    setting = configured_setting(config_path)
    if setting == "":
        raise ControlError(f'{config_path} turns the control socket off (control_socket = "")')
    if setting != "auto":
        return [setting]
    return list(dict.fromkeys([*systemd, user_socket_path(config_path, env), DEFAULT_SOCKET]))


def configured_setting(config_path: str) -> str:
    """``[daemon] control_socket`` of a config file, read without validating the rest
    (a broken file still has a daemon to ask); ``auto`` when it cannot be read."""
    import tomllib

    from portd.config import read_config_text

    try:
        value = tomllib.loads(read_config_text(config_path)).get("daemon", {})
        setting = value.get("control_socket", "auto") if isinstance(value, dict) else "auto"
    except (PortdError, ValueError, RecursionError):
        return "auto"
    return setting if isinstance(setting, str) else "auto"


def socket_address(path: str) -> str:
    """What bind() and connect() take: ``@name`` is the abstract name ``\\0name``."""
    return "\0" + path[1:] if path.startswith("@") else path


class _ControlProtocol(asyncio.Protocol):
    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.buffer = b""
        self.timer: asyncio.TimerHandle | None = None
        self.uid = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.clients += 1
        if self.server.clients > MAX_CLIENTS:
            self.transport.abort()  # a flood of clients must not cost the daemon memory
            return
        sock = transport.get_extra_info("socket")
        self.uid = peer_credentials(sock)[1] if sock is not None else -1
        self.timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT_S, self.transport.abort)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" not in self.buffer and len(self.buffer) < MAX_REQUEST:
            return
        self.transport.pause_reading()
        if self.timer is not None:  # asked in time; a reload may take longer to answer
            self.timer.cancel()
        command = self.buffer.split(b"\n", 1)[0].strip()
        if self.uid not in (0, os.geteuid()):  # answered after the request: a close with
            # unread input would reset the connection before the client reads why
            self._answer({"error": f"uid {self.uid} may not ask this daemon"})
        elif command == b"status":
            snapshot = self.server.snapshot()
            if isinstance(snapshot, dict):
                self._answer(snapshot)
            else:  # a parent of workers asks them first
                self._hold(self._status(snapshot))
        elif command == b"reload" and self.server.reload is not None:
            self._hold(self._reload(self.server.reload))
        else:
            self._answer({"error": f"unknown command {command[:40].decode(errors='replace')!r}"})

    def _hold(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self.server.tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self.server.tasks.discard)

    async def _status(self, snapshot: Awaitable[dict[str, Any]]) -> None:
        self._answer(await snapshot)

    async def _reload(self, reload: Callable[[], Awaitable[ReloadFailure | None]]) -> None:
        failure = await reload()
        if failure is None:
            self._answer({"reloaded": True})
        else:
            self._answer({"error": "reload failed", "exit_code": failure.exit_code,
                          "lines": list(failure.lines)})  # fmt: skip

    def _answer(self, reply: dict[str, Any]) -> None:
        if self.transport.is_closing():  # the client left; the reload happened all the same
            return
        self.transport.write(json.dumps(reply).encode() + b"\n")
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.clients -= 1
        if self.timer is not None:
            self.timer.cancel()


class ControlServer:
    """The running control socket; :meth:`close` stops it and removes its file."""

    def __init__(
        self,
        path: str,
        snapshot: Snapshot,
        reload: Callable[[], Awaitable[ReloadFailure | None]] | None = None,
    ) -> None:
        self.path = path
        self.snapshot = snapshot
        self.reload = reload
        self.tasks: set[asyncio.Future[None]] = set()
        self.clients = 0
        self.server: asyncio.AbstractServer | None = None
        self._identity: tuple[int, int] | None = None  # st_dev, st_ino of our socket file

    async def start(self) -> None:
        """Bind and serve.

        Raises:
            AddressInUseError: another daemon answers there.
            NotASocketError, UnsafeDirectoryError: the path or its directory is not safe to use.
            ControlError: the OS refused the socket.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if not self.path.startswith("@"):
                self._prepare_path()
            previous = os.umask(0o177)
            try:
                sock.bind(socket_address(self.path))
            finally:
                os.umask(previous)
            if not self.path.startswith("@"):
                info = os.stat(self.path)  # noqa: PTH116
                self._identity = (info.st_dev, info.st_ino)
            sock.listen(MAX_CLIENTS)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            self.server = await loop.create_unix_server(lambda: _ControlProtocol(self), sock=sock)
        except OSError as exc:
            sock.close()
            self.close()
            raise ControlError(f"cannot open {LABEL} {self.path}: {exc.strerror}") from exc
        except BaseException:
            sock.close()
            raise

    def _prepare_path(self) -> None:
        directory = os.path.dirname(self.path) or "."  # noqa: PTH120
        os.makedirs(directory, mode=0o700, exist_ok=True)  # noqa: PTH103
        check_private_directory(self.path, LABEL)
        clear_stale_socket(self.path, LABEL)

    def close(self) -> None:
        """Stop answering and remove the socket file, if it is still the one we made."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self._identity is None:
            return
        identity, self._identity = self._identity, None
        with contextlib.suppress(OSError):
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == identity:
                os.unlink(self.path)  # noqa: PTH108


async def serve_control(
    path: str,
    snapshot: Snapshot,
    reload: Callable[[], Awaitable[ReloadFailure | None]] | None = None,
) -> ControlServer:
    """Listen on ``path`` (see the module docstring); the caller closes it.

    Raises:
        BindError, ControlError: see :meth:`ControlServer.start`.
    """
    server = ControlServer(path, snapshot, reload)
    await server.start()
    return server


def query(
    paths: str | list[str], command: str = "status", timeout_s: float = 5.0
) -> dict[str, Any]:
    """Ask the daemon at the first of ``paths`` that answers; return its JSON reply.

    Raises:
        ControlError: nothing answers there, the reply is not JSON, or it is an error.
        ReloadFailedError: a reload the daemon refused (its exit code and lines).
    """
    candidates = [paths] if isinstance(paths, str) else paths
    for index, path in enumerate(candidates):
        try:
            raw = _ask(path, command, timeout_s)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if index + 1 < len(candidates):
                continue  # not this one: a daemon of another kind of start
            tried = ", ".join(candidates)
            raise ControlError(f"no daemon answers on {tried}: {exc.strerror or exc}") from None
        except OSError as exc:
            raise ControlError(f"no daemon answers on {path}: {exc.strerror or exc}") from None
        return _reply(path, raw)
    raise ControlError("no control socket to ask")  # pragma: no cover - paths is never empty


def _ask(path: str, command: str, timeout_s: float) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(socket_address(path))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            raise ControlError(f"{path}: no answer within {timeout_s:g} s") from None
    return b"".join(chunks)


def _reply(path: str, raw: bytes) -> dict[str, Any]:
    try:
        reply: dict[str, Any] = json.loads(raw)
    except ValueError:
        raise ControlError(f"{path}: the reply is not a portd answer") from None
    if "lines" in reply:
        raise ReloadFailedError(reply["lines"], int(reply.get("exit_code", 78)))
    if "error" in reply:
        raise ControlError(f"{path}: {reply['error']}")
    return reply


async def open_control(
    setting: str,
    config_path: str,
    snapshot: Snapshot,
    reload: Callable[[], Awaitable[ReloadFailure | None]],
    log: Any,
) -> ControlServer | None:
    """The daemon's control socket for its ``control_socket`` setting, or None when off.

    A configured path or systemd's must open; the per-user one of a daemon started by
    hand is a convenience, so a failure there is a warning and the daemon serves on.

    Raises:
        BindError, ControlError: see :meth:`ControlServer.start`.
    """
    path = resolve_socket_path(setting, config_path=config_path)
    if not path:
        return None
    try:
        return await serve_control(path, snapshot, reload)
    except PortdError as exc:
        if setting != "auto" or os.environ.get("RUNTIME_DIRECTORY"):
            raise
        log.warning("control_socket_unavailable", path=path, error=str(exc))
        return None
