"""file-receive sessions in-process over an in-memory connection, on both event loops:
each file-system failure ends that transfer cleanly, reading pauses while the disk is
behind, and a transfer's fate does not depend on the event loop outliving it."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

from portd.endpoints.inet import inet_peer
from portd.handlers import file_receive
from portd.handlers.file_receive import FileReceiveHandler
from portd.handlers.files import durable
from portd.handlers.files.directory import ReceiveDirectory
from portd.testing import kit

pytestmark = pytest.mark.anyio
CHUNK = 256 << 10
Logs = list[MutableMapping[str, Any]]


class FakeConnection(kit.FakeConnection):
    """The kit's connection on the running loop, with events for how the session ends it
    and for reading resuming (the worker threads report back through the loop)."""

    def __init__(self) -> None:
        peer = inet_peer(("127.0.0.1", 50000))  # noqa: fixed-port
        super().__init__(peer=peer, listener="up", conn_id=7, clock=asyncio.get_running_loop())
        self.log = structlog.get_logger().bind(listener="up", conn_id=7, peer=str(peer))
        self.ended = anyio.Event()
        self.resumed = anyio.Event()

    def write(self, data: bytes) -> None:
        raise AssertionError("file-receive never writes to the peer")

    def write_eof(self) -> None:
        raise AssertionError("file-receive never half-closes")

    def close(self) -> None:
        super().close()
        self.ended.set()

    def abort(self) -> None:
        super().abort()
        self.ended.set()

    def reset(self, reason: str = "") -> None:
        super().reset(reason)
        self.ended.set()

    def resume_reading(self) -> None:
        super().resume_reading()
        self.resumed.set()


@pytest.fixture
def handler(tmp_path: Path) -> Iterator[FileReceiveHandler]:
    receiver = FileReceiveHandler({"directory": str(tmp_path / "in"), "min_free_bytes": 0})
    yield receiver
    receiver.close()


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs() as captured:
        yield captured


async def ended(conn: FakeConnection) -> str:
    with anyio.fail_after(10):
        await conn.ended.wait()
    assert conn.ending is not None
    return conn.ending


def entries(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def failing(code: int) -> Any:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENOSPC, errno.EDQUOT, errno.EACCES])
async def test_a_temporary_that_cannot_be_created_fails_that_transfer_with_one_line(
    handler: FileReceiveHandler,
    logs: Logs,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
) -> None:
    monkeypatch.setattr(ReceiveDirectory, "create_temp", failing(code))
    conn = FakeConnection()
    session = handler.open_session(conn)
    session.data_received(b"data")
    assert await ended(conn) == "reset"
    [failed] = [entry for entry in logs if entry["event"] == "file_failed"]
    assert (failed["reason"], failed["error"]) == (errno.errorcode[code], os.strerror(code))
    assert entries(Path(handler.directory.path)) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO])
async def test_a_failed_write_removes_the_partial_and_logs_why(
    handler: FileReceiveHandler,
    logs: Logs,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
) -> None:
    monkeypatch.setattr(durable, "write_all", failing(code))
    conn = FakeConnection()
    handler.open_session(conn).data_received(b"data")
    assert await ended(conn) == "reset"
    assert [(e["event"], e.get("reason")) for e in logs] == [("file_failed", errno.errorcode[code])]
    assert entries(Path(handler.directory.path)) == []


async def test_a_failed_fsync_never_gives_the_file_its_final_name(
    handler: FileReceiveHandler, logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "fsync", failing(errno.EIO))
    conn = FakeConnection()
    session = handler.open_session(conn)
    session.data_received(b"data")
    session.eof_received()
    assert await ended(conn) == "reset"
    assert [(e["event"], e.get("reason")) for e in logs] == [("file_failed", "EIO")]
    assert entries(Path(handler.directory.path)) == []


async def test_reading_pauses_while_the_disk_is_behind_and_resumes_when_it_catches_up(
    handler: FileReceiveHandler, logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk_ready = threading.Event()
    real_write_all = durable.write_all

    def slow_write_all(fd: int, chunks: Sequence[bytes]) -> None:
        disk_ready.wait(10)
        real_write_all(fd, chunks)

    monkeypatch.setattr(durable, "write_all", slow_write_all)
    conn = FakeConnection()
    session = handler.open_session(conn)
    data = os.urandom(6 << 20)
    for start in range(0, len(data), CHUNK):
        if not conn.reading:
            break  # a paused transport delivers nothing more
        session.data_received(data[start : start + CHUNK])
    fed = start
    assert not conn.reading
    assert file_receive.BUFFER_HIGH_WATER < fed <= file_receive.BUFFER_HIGH_WATER + CHUNK
    disk_ready.set()
    with anyio.fail_after(10):
        await conn.resumed.wait()
    session.data_received(data[fed:])
    session.eof_received()
    assert await ended(conn) == "close"
    [received] = [entry for entry in logs if entry["event"] == "file_received"]
    assert (Path(handler.directory.path) / received["name"]).read_bytes() == data


async def test_a_connection_lost_after_eof_still_stores_the_complete_file(
    handler: FileReceiveHandler, logs: Logs
) -> None:
    conn = FakeConnection()
    session = handler.open_session(conn)
    session.data_received(b"complete")
    session.eof_received()
    session.connection_lost(None)  # e.g. the drain timeout hit while fsync ran
    await ended(conn)
    [received] = [entry for entry in logs if entry["event"] == "file_received"]
    assert (Path(handler.directory.path) / received["name"]).read_bytes() == b"complete"


async def test_closing_the_handler_removes_a_cut_transfer_without_the_event_loop(
    tmp_path: Path, logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At exit the loop may stop before a worker finishes: clean-up must not need it."""
    directory = tmp_path / "in"
    handler = FileReceiveHandler({"directory": str(directory), "min_free_bytes": 0})
    disk_ready = threading.Event()
    real_write_all = durable.write_all

    def slow_write_all(fd: int, chunks: Sequence[bytes]) -> None:
        disk_ready.wait(10)
        real_write_all(fd, chunks)

    monkeypatch.setattr(durable, "write_all", slow_write_all)
    session = handler.open_session(FakeConnection())
    session.data_received(b"half")
    session.connection_lost(ConnectionResetError(errno.ECONNRESET, "reset"))
    disk_ready.set()
    handler.close()  # blocks this thread, and so the loop, until the queue is done
    assert entries(directory) == []
    [failed] = [entry for entry in logs if entry["event"] == "file_failed"]
    assert (failed["reason"], failed["bytes"]) == ("connection_lost", 4)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_directory_created_as_root_is_handed_to_the_user_portd_drops_to(
    tmp_path: Path,
) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    for path in (tmp_path / "created", existing):
        handler = FileReceiveHandler({"directory": str(path)})
        handler.before_privilege_drop(65534, 65534)
        handler.close()
    assert ((tmp_path / "created").stat().st_uid, (tmp_path / "created").stat().st_gid) == (
        65534,
        65534,
    )
    assert existing.stat().st_uid == 0
