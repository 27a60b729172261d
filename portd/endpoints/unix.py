"""The unix kind: unix-domain sockets, stream or datagram, on a path or an abstract name.

``unix:/run/app.sock`` binds a socket file; ``unix:@name`` a Linux abstract name (no
file, no permissions: any local user can connect). Stream sockets are ``protocol =
"tcp"`` (SOCK_STREAM), datagram sockets ``"udp"`` (SOCK_DGRAM), as socat names them.

- The file: a stale socket left by a dead process is replaced, a live one is "in use"
  (naming its holder), anything else is never removed (portd.endpoints.unix_paths).
  ``mode`` is applied through the umask, so the file is born with it, and ``owner``
  with lchown() before the socket listens: no client ever sees other permissions.
  After the listener's sockets closed for good, the file is removed if it is still a
  stale socket (the daemon's own, not one another process bound since).
- Peers carry the client's pid, uid and gid (SO_PEERCRED; SCM_CREDENTIALS for each
  datagram), which ``allow_uids``/``allow_gids`` and per-source limits use.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence
from typing import Any, NamedTuple

from portd.endpoints.base import SOCKET_TYPES, ProtocolName, SocketOptions
from portd.endpoints.unix_paths import PEERCRED, clear_stale_socket, peer_credentials
from portd.errors import AddressInUseError, BindError, BindPermissionError, BindSyntaxError

MAX_PATH_BYTES = 107  # sun_path is 108 bytes with its NUL
ABSTRACT = "@"


class UnixAddress(NamedTuple):
    """A unix socket's address: a path, or ``@name`` for the abstract namespace."""

    path: str

    @property
    def family(self) -> socket.AddressFamily:
        """AF_UNIX."""
        return socket.AF_UNIX

    @property
    def is_abstract(self) -> bool:
        """True for an abstract name (no file)."""
        return self.path.startswith(ABSTRACT)

    @property
    def sockaddr(self) -> str:
        """What bind() and connect() take (the abstract name with its leading NUL)."""
        return "\0" + self.path[1:] if self.is_abstract else self.path

    @property
    def key(self) -> tuple[str, str]:
        """Identity across reloads and socket activation: the path or name."""
        return ("unix", self.path)

    @property
    def local_only(self) -> bool:
        """Always: a unix socket is reachable from this host only."""
        return True

    @property
    def overlap_group(self) -> tuple[str, str]:
        """Only the same path can overlap."""
        return ("unix", self.path)

    def overlaps(self, other: Any) -> bool:
        """Two sockets cannot bind the same path or name."""
        return isinstance(other, UnixAddress) and other.path == self.path

    def __str__(self) -> str:
        return f"unix:{self.path}"


def unix_address(name: str | bytes) -> UnixAddress:
    """The address getsockname() or recvfrom() gave (bytes with a NUL: abstract)."""
    if isinstance(name, bytes):
        text = name.decode("utf-8", "surrogateescape")
        return UnixAddress(ABSTRACT + text[1:] if text.startswith("\0") else text)
    return UnixAddress(ABSTRACT + name[1:] if name.startswith("\0") else name)


_SOURCES: dict[int, str] = {}
MAX_SOURCES = 4096  # uids remembered; past that the table starts again


def _source_of(uid: int) -> str:
    if len(_SOURCES) >= MAX_SOURCES:
        _SOURCES.clear()
    source = _SOURCES[uid] = f"uid {uid}"
    return source


class UnixPeer:
    """A unix-socket peer: its bound path ("" when unnamed) and its credentials."""

    __slots__ = ("gid", "path", "pid", "source", "uid")
    kind = "unix"

    def __init__(self, path: str, pid: int, uid: int, gid: int) -> None:
        self.path = path
        self.pid = pid
        self.uid = uid
        self.gid = gid
        # Per-source limits count by uid; admission and release read it, so it is made
        # once per uid (a peer's one string is shared, not made per connection).
        self.source: str = _SOURCES.get(uid) or _source_of(uid)

    @property
    def sockaddr(self) -> str:
        """Where replies go (a datagram peer must have bound a path to get them)."""
        return "\0" + self.path[1:] if self.path.startswith(ABSTRACT) else self.path

    def environment(self, protocol: str, local: Any) -> dict[str, str]:
        """ucspi-unix's variables for a program serving this peer (``local``: the
        socket's own address, from getsockname())."""
        env = {"PROTO": "UNIX", "UNIXLOCALPATH": unix_address(local).path if local else ""}
        if self.pid >= 0:
            env.update(UNIXREMOTEPID=str(self.pid), UNIXREMOTEUID=str(self.uid),
                       UNIXREMOTEGID=str(self.gid), UNIXREMOTEEUID=str(self.uid),
                       UNIXREMOTEEGID=str(self.gid))  # fmt: skip
        if self.path:
            env["UNIXREMOTEPATH"] = self.path
        return env

    def __str__(self) -> str:
        who = f"pid {self.pid} uid {self.uid}" if self.pid >= 0 else "unknown process"
        return f"{who} ({self.path})" if self.path else who

    def __repr__(self) -> str:
        return f"UnixPeer({self.path!r}, pid={self.pid}, uid={self.uid}, gid={self.gid})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UnixPeer):
            return NotImplemented
        return (self.path, self.pid, self.uid, self.gid) == (
            other.path, other.pid, other.uid, other.gid,
        )  # fmt: skip

    def __hash__(self) -> int:
        return hash((self.path, self.pid, self.uid, self.gid))


class UnixEndpoint(NamedTuple):
    """A parsed ``unix:PATH`` or ``unix:@NAME`` for one protocol."""

    path: str
    protocol: ProtocolName = "tcp"

    @property
    def kind(self) -> str:
        """``unix``."""
        return "unix"

    @property
    def is_abstract(self) -> bool:
        """True for an abstract name."""
        return self.path.startswith(ABSTRACT)

    @property
    def is_ephemeral(self) -> bool:
        """A unix socket's address is always the one asked for."""
        return False

    def __str__(self) -> str:
        return f"unix:{self.path}"

    def resolve(self, families: tuple[socket.AddressFamily, ...] = ()) -> tuple[UnixAddress]:
        """The one address; -4/-6 do not apply to unix sockets.

        Raises:
            BindSyntaxError: an address family filter was given.
        """
        if families:
            raise BindSyntaxError(f"{self}: -4/-6 apply to IP addresses, not unix sockets")
        return (UnixAddress(self.path),)

    def open_sockets(
        self, addresses: Sequence[Any], options: SocketOptions, label: str
    ) -> list[socket.socket]:
        """Bind the socket file (or name), apply mode and owner, then listen.

        Raises:
            AddressInUseError: a live socket is there.
            NotASocketError: something that is not a socket is there (left untouched).
            BindPermissionError: the directory or owner change needs rights portd lacks.
            BindError: any other OS refusal, with its reason.
        """
        (address,) = addresses
        if not address.is_abstract:
            clear_stale_socket(address.path, label)
        sock = socket.socket(socket.AF_UNIX, SOCKET_TYPES[self.protocol])
        try:
            _bind(sock, address, options.mode, label)
            if options.owner is not None and not address.is_abstract:
                _chown(address.path, options.owner, label)
            if self.protocol == "udp":
                # Every datagram then carries its sender's pid, uid and gid.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            elif options.listen:
                sock.listen(options.backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            if not address.is_abstract:
                self.release(())
            raise
        return [sock]

    def bound_addresses(self, sockets: Sequence[socket.socket]) -> list[UnixAddress]:
        """The path or name each socket is bound to."""
        return [unix_address(sock.getsockname()) for sock in sockets]

    def describe_bound(self, addresses: Sequence[Any]) -> str:
        """``unix:/run/app.sock``."""
        return str(self)

    def name_part(self) -> str:
        """``unix-run-app.sock`` (the caller replaces what systemd cannot take)."""
        return "unix-" + self.path.strip("/").replace("/", "-")

    def unit_lines(self, addresses: Sequence[Any], options: SocketOptions) -> list[str]:
        """ListenStream=/ListenDatagram= with SocketMode=, SocketUser=, SocketGroup=."""
        kind = "ListenStream" if self.protocol == "tcp" else "ListenDatagram"
        lines = [f"{kind}={address.path}" for address in addresses]
        if options.mode is not None:
            lines.append(f"SocketMode={options.mode:04o}")
        if options.owner is not None:
            uid, gid = options.owner
            if uid >= 0:
                lines.append(f"SocketUser={uid}")
            if gid >= 0:
                lines.append(f"SocketGroup={gid}")
        if self.protocol == "tcp":
            lines.append(f"Backlog={options.backlog}")
        if self.protocol == "udp":
            lines.append("PassCredentials=yes")
        return lines

    def peer(self, sock: socket.socket, addr: Any) -> UnixPeer:
        """The connected client: the path it bound (rarely any) and its credentials."""
        pid, uid, gid = peer_credentials(sock)
        return UnixPeer(unix_address(addr).path if addr else "", pid, uid, gid)

    def datagram_io(self, sock: socket.socket) -> tuple[Any, Any]:
        """recvmsg with the sender's credentials (SCM_CREDENTIALS); replies go to the path
        the sender bound (an unbound sender cannot be answered: the send fails)."""
        space = socket.CMSG_SPACE(PEERCRED.size)

        def receive(buffer: memoryview, flags: int = 0) -> tuple[int, UnixPeer]:
            size, ancillary, _flags, addr = sock.recvmsg_into([buffer], space, flags)
            pid = uid = gid = -1
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, uid, gid = PEERCRED.unpack(data[: PEERCRED.size])
            return size, UnixPeer(unix_address(addr).path if addr else "", pid, uid, gid)

        def send(data: bytes, peer: UnixPeer) -> None:
            sock.sendto(data, peer.sockaddr)

        return receive, send

    def datagram_peek(self, sock: socket.socket) -> Any:
        """``peek(buffer)``: the next datagram's size and sender, left in the socket."""
        receive, _send = self.datagram_io(sock)
        return lambda buffer: receive(buffer, socket.MSG_PEEK)

    def release(self, sockets: Sequence[socket.socket]) -> None:
        """Remove the socket file if it is stale: the listener's sockets have closed, and a
        live socket there now belongs to someone else (left alone, as anything else)."""
        if self.is_abstract:
            return
        with contextlib.suppress(BindError):
            clear_stale_socket(self.path, str(self))

    def upstream_problem(self) -> str | None:
        """Any path or name can be connected to."""
        return None

    async def open_stream(
        self, loop: Any, protocol_factory: Any, *, ssl: Any = None, server_hostname: Any = None
    ) -> Any:
        """``loop.create_unix_connection`` to the path or abstract name."""
        sockaddr = UnixAddress(self.path).sockaddr
        hostname = (server_hostname or "localhost") if ssl is not None else None
        return await loop.create_unix_connection(
            protocol_factory, sockaddr, ssl=ssl, server_hostname=hostname
        )

    def connect_datagram(self) -> socket.socket:
        """A unix datagram socket, autobound to an abstract name (so replies have
        somewhere to go), connected to the path or name."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind("")  # Linux autobind: a unique abstract name
            sock.setblocking(False)
            sock.connect(UnixAddress(self.path).sockaddr)
        except BaseException:
            sock.close()
            raise
        return sock


def parse_unix(
    text: str, protocol: ProtocolName = "tcp", *, absolute: bool = False
) -> UnixEndpoint:
    """``/run/app.sock``, ``relative.sock`` or ``@name`` (what follows ``unix:``).

    Args:
        absolute: refuse a relative path (a daemon's working directory is no anchor).

    Raises:
        BindSyntaxError: empty, a NUL or control character, relative where refused, or
            longer than sun_path holds.
    """
    if not text:
        raise BindSyntaxError("empty unix socket path; expected unix:/PATH or unix:@NAME")
    if not text.isprintable():
        raise BindSyntaxError(f"bad unix socket path {text!r}; it holds a control character")
    if text == ABSTRACT:
        raise BindSyntaxError("empty abstract name; expected unix:@NAME")
    if absolute and not text.startswith(("/", ABSTRACT)):
        raise BindSyntaxError(f"unix socket path {text!r} is relative; give an absolute path")
    size = len(os.fsencode(text)) - (1 if text.startswith(ABSTRACT) else 0)
    if size > MAX_PATH_BYTES - (1 if text.startswith(ABSTRACT) else 0):
        raise BindSyntaxError(
            f"unix socket path {text!r} is {size} bytes; the kernel takes at most {MAX_PATH_BYTES}"
        )
    return UnixEndpoint(text, protocol)


def _bind(sock: socket.socket, address: UnixAddress, mode: int | None, label: str) -> None:
    # The kernel creates the file with 0777 & ~umask: set the umask so it is born with
    # the mode asked for (0666 & ~umask otherwise, as socat does), never wider.
    previous = os.umask(0o777)
    os.umask(previous)
    wanted = (0o666 & ~previous) if mode is None else mode
    os.umask(0o777 & ~wanted)
    try:
        sock.bind(address.sockaddr)
    except OSError as exc:
        raise _bind_error(exc, address, label) from exc
    finally:
        os.umask(previous)


def _chown(path: str, owner: tuple[int, int], label: str) -> None:
    try:
        os.chown(path, owner[0], owner[1], follow_symlinks=False)
    except OSError as exc:
        raise BindPermissionError(
            f"{label}: cannot give {path} to uid {owner[0]} gid {owner[1]}: {exc.strerror}"
        ) from exc


def _bind_error(exc: OSError, address: UnixAddress, label: str) -> BindError:
    import errno

    where = f"{label}: {address}"
    if exc.errno == errno.EADDRINUSE:
        return AddressInUseError(f"{where} is already in use")
    if exc.errno == errno.EACCES:
        return BindPermissionError(f"{where}: permission denied ({exc.strerror})")
    return BindError(f"{where}: cannot bind: {exc.strerror}")
