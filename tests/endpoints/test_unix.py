"""The unix kind over real sockets in a test directory: grammar, files (stale, live, not a
socket), mode and owner, peers and their credentials, datagrams, unit lines."""

from __future__ import annotations

import os
import socket
import stat
from asyncio.trsock import TransportSocket
from pathlib import Path

import pytest

from portd.endpoints import unix
from portd.endpoints.base import SocketOptions
from portd.endpoints.parse import parse_endpoint
from portd.endpoints.unix import UnixAddress, UnixEndpoint, UnixPeer, parse_unix
from portd.endpoints.unix_paths import peer_credentials
from portd.errors import AddressInUseError, BindSyntaxError, NotASocketError


@pytest.mark.parametrize(
    ("text", "protocol", "expected"),
    [
        ("unix:/run/app.sock", None, UnixEndpoint("/run/app.sock", "tcp")),
        ("unix:/run/app.sock", "udp", UnixEndpoint("/run/app.sock", "udp")),
        ("unix:@portd", None, UnixEndpoint("@portd", "tcp")),
        ("unix:relative.sock", None, UnixEndpoint("relative.sock", "tcp")),
    ],
)
def test_the_unix_scheme_selects_the_unix_kind(
    text: str, protocol: str | None, expected: UnixEndpoint
) -> None:
    assert parse_endpoint(text, protocol) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty unix socket path; expected unix:/PATH or unix:@NAME"),
        ("@", "empty abstract name; expected unix:@NAME"),
        ("/run/a\nb", "bad unix socket path '/run/a\\nb'; it holds a control character"),
        ("/" + "x" * 107, "is 108 bytes; the kernel takes at most 107"),
        ("relative.sock", "unix socket path 'relative.sock' is relative; give an absolute path"),
    ],
)
def test_bad_paths_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(BindSyntaxError) as raised:
        parse_unix(text, absolute=True)
    assert message in str(raised.value)


def test_the_longest_path_the_kernel_takes_binds(tmp_path: Path) -> None:
    directory = tmp_path / ("d" * (100 - len(str(tmp_path))))
    directory.mkdir()
    path = str(directory / "s")
    assert len(path.encode()) <= 107
    endpoint = parse_unix(path)
    sockets = endpoint.open_sockets(endpoint.resolve(), SocketOptions(), "test")
    for sock in sockets:
        sock.close()


def test_tcp_and_udp_prefixes_are_inet_and_may_not_contradict_the_protocol() -> None:
    assert parse_endpoint("udp:127.0.0.1:53").protocol == "udp"
    assert parse_endpoint("tcp:80").kind == "inet"
    with pytest.raises(BindSyntaxError, match="it says udp but the protocol is tcp"):
        parse_endpoint("udp:53", "tcp")


DEFAULTS = SocketOptions()


def open_endpoint(path: str, options: SocketOptions = DEFAULTS) -> socket.socket:
    endpoint = UnixEndpoint(path)
    (sock,) = endpoint.open_sockets(endpoint.resolve(), options, "test")
    return sock


def test_the_file_is_born_with_the_mode_asked_for(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    previous = os.umask(0o002)  # a permissive umask must not widen it
    try:
        with open_endpoint(path, SocketOptions(mode=0o640)):
            assert stat.S_IMODE(Path(path).stat().st_mode) == 0o640
    finally:
        os.umask(previous)


def test_without_a_mode_the_file_is_0666_minus_the_umask_as_socat_makes_it(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    previous = os.umask(0o027)
    try:
        with open_endpoint(path):
            assert stat.S_IMODE(Path(path).stat().st_mode) == 0o640
        assert os.umask(0o027) == 0o027  # the umask was put back
    finally:
        os.umask(previous)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_the_owner_is_set_before_the_socket_listens(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with open_endpoint(path, SocketOptions(owner=(65534, 65534), mode=0o660)) as sock:
        info = Path(path).stat()
        assert (info.st_uid, info.st_gid) == (65534, 65534)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    with open_endpoint(path) as sock:
        assert sock.getsockname() == path


def test_a_live_socket_is_in_use_and_names_its_holder(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as holder:
        holder.bind(path)
        holder.listen()
        with pytest.raises(AddressInUseError, match=f"is in use by pid {os.getpid()}"):
            open_endpoint(path)


def test_a_live_datagram_socket_is_in_use(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as holder:
        holder.bind(path)
        with pytest.raises(AddressInUseError, match="is in use"):
            open_endpoint(path)


@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
def test_anything_but_a_socket_is_never_removed(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "s"
    target = tmp_path / "target"
    target.write_text("keep me\n")
    if kind == "file":
        path.write_text("keep me\n")
    elif kind == "symlink":
        path.symlink_to(target)
    else:
        path.mkdir()
    with pytest.raises(NotASocketError, match="portd removes only stale sockets"):
        open_endpoint(str(path))
    assert path.is_symlink() if kind == "symlink" else path.exists()
    assert target.read_text() == "keep me\n"


def test_release_removes_the_file_only_while_it_is_a_stale_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    endpoint = UnixEndpoint(path)
    open_endpoint(path).close()
    endpoint.release(())
    assert not os.path.exists(path)  # noqa: PTH110
    with socket.socket(socket.AF_UNIX) as other:  # someone else binds it meanwhile
        other.bind(path)
        other.listen()
        endpoint.release(())
        assert os.path.exists(path)  # noqa: PTH110


def test_an_abstract_name_leaves_no_file_and_is_exclusive() -> None:
    name = f"@portd-test-{os.getpid()}-abstract"
    with open_endpoint(name) as sock:
        assert sock.getsockname() == b"\0" + name[1:].encode()
        with pytest.raises(AddressInUseError):
            open_endpoint(name)
        assert UnixEndpoint(name).bound_addresses([sock]) == [UnixAddress(name)]


def test_an_accepted_peer_carries_the_clients_credentials(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with open_endpoint(path) as server, socket.socket(socket.AF_UNIX) as client:
        server.setblocking(True)
        client.connect(path)
        conn, addr = server.accept()
        with conn:
            peer = UnixEndpoint(path).peer(conn, addr)
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert str(peer) == f"pid {os.getpid()} uid {os.getuid()}"
    assert peer.source == f"uid {os.getuid()}"


def test_peers_of_one_uid_share_one_source_and_the_table_of_sources_stays_bounded() -> None:
    first, second = UnixPeer("", 10, 1000, 1000), UnixPeer("", 11, 1000, 1000)
    assert first.source == second.source == "uid 1000"
    assert first.source is second.source  # one string per uid, not one per connection
    many = [UnixPeer("", 1, uid, 0).source for uid in range(2 * unix.MAX_SOURCES)]
    assert many == [f"uid {uid}" for uid in range(2 * unix.MAX_SOURCES)]
    assert len(unix._SOURCES) <= unix.MAX_SOURCES


def test_each_datagram_carries_its_senders_credentials_and_gets_an_answer(tmp_path: Path) -> None:
    path, client_path = str(tmp_path / "s"), str(tmp_path / "c")
    endpoint = UnixEndpoint(path, "udp")
    (server,) = endpoint.open_sockets(endpoint.resolve(), SocketOptions(), "test")
    receive, send = endpoint.datagram_io(server)
    with server, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.bind(client_path)
        client.sendto(b"ping", path)
        server.setblocking(True)
        buffer = memoryview(bytearray(1024))
        size, peer = receive(buffer)
        assert (bytes(buffer[:size]), peer) == (
            b"ping", UnixPeer(client_path, os.getpid(), os.getuid(), os.getgid()),
        )  # fmt: skip
        send(b"pong", peer)
        assert client.recv(16) == b"pong"


def test_unit_lines_carry_the_socket_file_settings() -> None:
    endpoint = UnixEndpoint("/run/portd/app.sock")
    options = SocketOptions(backlog=64, mode=0o660, owner=(0, 33))
    assert endpoint.unit_lines(endpoint.resolve(), options) == [
        "ListenStream=/run/portd/app.sock",
        "SocketMode=0660",
        "SocketUser=0",
        "SocketGroup=33",
        "Backlog=64",
    ]
    datagrams = UnixEndpoint("@portd", "udp")
    assert datagrams.unit_lines(datagrams.resolve(), SocketOptions()) == [
        "ListenDatagram=@portd",
        "PassCredentials=yes",
    ]


def test_families_do_not_apply_to_unix_sockets() -> None:
    with pytest.raises(BindSyntaxError, match="-4/-6 apply to IP addresses, not unix sockets"):
        UnixEndpoint("/x").resolve((socket.AF_INET,))


def test_peer_credentials_read_a_socket_and_a_transports_socket_alike() -> None:
    """The daemon's peers come as sockets, the control socket's as what its transport
    offers (asyncio's TransportSocket, not a socket.socket)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        mine = (os.getpid(), os.getuid(), os.getgid())
        assert peer_credentials(ours) == mine
        assert peer_credentials(TransportSocket(ours)) == mine
