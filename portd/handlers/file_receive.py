"""file-receive: each TCP connection's bytes become one file in a directory, like
``nc -l PORT > file`` for many senders at once, with guarantees nc does not give.

- A file under its final name is always complete and durable: bytes go to a temporary
  ``.portd-partial-*`` (created exclusively, relative to the held directory, never
  through a symlink), which is fsynced and then linked to a free final name (an
  existing entry is never replaced), and the directory is fsynced.
- A transfer that cannot complete (over ``max_bytes``, out of space or quota, EFBIG,
  EMFILE, EIO, a reset, the daemon aborting it) leaves no file (or, with
  ``keep_partial``, a ``NAME.partial``) and one ``file_failed`` line, and its
  connection is aborted; every other transfer and listener goes on.
- portd closes the connection only once the file is durable or the transfer has
  failed, so a sender that waits for the close (``nc -N``, socat) knows the outcome:
  a stored file ends with a normal close, a failure always with an RST (a timeout and
  the end of the drain too), and ``connection_closed`` names the failure.
- A connection that sends no byte (``nc -z``, a port scan, a health check) stores no
  file: one ``file_empty`` line, unless ``keep_empty``. The temporary is created only
  with the first byte, so probes cost the disk nothing.

A raw stream has no end marker: a sender that closes normally has delivered a complete
file, and one killed on the same host (the kernel sends its FIN) looks the same.

Disk work (open, write, hash, fsync, link) runs in the handler's worker threads, one
step at a time per file, fed through a per-connection queue; reading pauses while more
than BUFFER_HIGH_WATER bytes wait for the disk.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from portd.endpoints.base import ProtocolName
from portd.errors import AccessError, ConfigError, OptionError
from portd.handlers.base import Connection, Handler, StreamSession
from portd.handlers.files.directory import check_directory_usable, hold_directory
from portd.handlers.files.durable import DurableFile
from portd.handlers.files.names import DEFAULT_TEMPLATE, name_fields, parse_template
from portd.logging import get_logger
from portd.options import Option, Settings, defaults, parse_size

BUFFER_HIGH_WATER = 4 << 20  # received, not yet written: above this, stop reading
WRITE_BATCH = 1 << 20  # at most this much per write, so reading goes on while one runs
BUFFER_LOW_WATER = BUFFER_HIGH_WATER - WRITE_BATCH  # read again once a batch is written
WORKER_THREADS = 8
FILE_MODE_ALLOWED = 0o644


def check_directory(path: str) -> str:
    """An absolute directory path (the daemon's working directory is no anchor)."""
    if not Path(path).is_absolute() or "\0" in path:
        raise OptionError("expected an absolute path")
    return path


def check_file_mode(mode: int) -> int:
    """A file mode without group/world write or any execute bit."""
    if mode & ~FILE_MODE_ALLOWED:
        raise OptionError(
            f"0o{mode:o} allows group/world writing, execution or special bits; expected "
            "at most 0o644, such as 0o600 or 0o640 (TOML octal: 0o600)"
        )
    return mode


class Step(NamedTuple):
    """A control step in a transfer's queue (data steps are plain bytes)."""

    action: str  # open | commit | keep | discard
    reason: str = ""
    error: str = ""


OPEN = Step("open")
COMMIT = Step("commit")


class FileReceiveSession(StreamSession):
    """One connection's transfer.

    The event loop owns ``phase``, the byte counts and flow control; worker threads own
    the file. Steps pass through ``_steps`` (under ``_lock``) in order, at most one
    worker at a time per session, and each worker step is re-queued on the executor so
    busy transfers share the threads fairly.
    """

    def __init__(self, conn: Connection, handler: FileReceiveHandler) -> None:
        self.conn = conn
        self.handler = handler
        self.log: Any = conn.log
        self.loop = conn.clock
        self.started = time.monotonic()
        fields = name_fields(str(conn.peer), conn.conn_id, conn.listener, time.time())
        self.name: str = handler.settings["file_name"].render(fields)
        self.phase = "open"  # open -> eof -> done; loop thread only
        self.received = 0
        self.queued = 0  # bytes handed to the worker and not written yet
        self.paused = False
        self.file: DurableFile | None = None  # worker side from here on
        self.finished = False
        self._lock = threading.Lock()
        self._steps: deque[bytes | Step] = deque()
        self._scheduled = False
        self._submit(OPEN)

    # Event-loop side.

    def data_received(self, data: bytes) -> None:
        if self.phase != "open":
            return
        self.received += len(data)
        limit = self.handler.settings["max_bytes"]
        if limit is not None and self.received > limit:
            self._give_up(Step("discard", "max_bytes", f"more than {limit} bytes"))
            return
        self.queued += len(data)
        self._submit(data)
        if self.queued > BUFFER_HIGH_WATER and not self.paused:
            self.paused = True
            self.conn.pause_reading()

    def eof_received(self) -> bool:
        if self.phase == "open":
            self.phase = "eof"
            self._submit(COMMIT)
        return True  # keep the connection until the file is durable; then close it

    def connection_lost(self, exc: Exception | None) -> None:
        if self.phase == "open":  # cut before EOF: by the peer, or by portd (drain timeout)
            reason, error = ("connection_lost", str(exc)) if exc else ("aborted", "closed by portd")
            keep = self.handler.settings["keep_partial"] and self.received
            action = "empty" if not self.received else "keep" if keep else "discard"
            self._submit(Step(action, reason, error))
        self.phase = "done"

    def _give_up(self, step: Step) -> None:
        self.phase = "done"
        self._submit(step)
        self.conn.reset(f"file_failed: {step.reason}")  # the sender must see it failed

    def _written(self, count: int) -> None:
        self.queued -= count
        if self.paused and self.queued <= BUFFER_LOW_WATER:
            self.paused = False
            self.conn.resume_reading()

    def _ended(self, stored: bool, reason: str = "") -> None:
        self.phase = "done"
        if stored:
            self.conn.close()
        else:
            self.conn.reset(f"file_failed: {reason}")

    def _submit(self, step: bytes | Step) -> None:
        with self._lock:
            self._steps.append(step)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.handler.executor.submit(self._work)
        except RuntimeError:  # the executor is shutting down with the daemon: work here
            self._work()

    def _notify(self, callback: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: the daemon is exiting
            self.loop.call_soon_threadsafe(callback, *args)

    # Worker side.

    def _work(self) -> None:
        while True:
            self._run(self._take())
            with self._lock:
                if not self._steps:
                    self._scheduled = False
                    return
            try:
                self.handler.executor.submit(self._work)
            except RuntimeError:
                continue  # shutting down: finish the queue in this thread
            return

    def _take(self) -> list[bytes] | Step:
        with self._lock:
            head = self._steps.popleft()
            if isinstance(head, Step):
                return head
            chunks, size = [head], len(head)
            while size < WRITE_BATCH and self._steps and isinstance(self._steps[0], bytes):
                chunk: bytes = self._steps.popleft()  # type: ignore[assignment]
                chunks.append(chunk)
                size += len(chunk)
            return chunks

    def _run(self, step: list[bytes] | Step) -> None:
        if self.finished:
            return
        try:
            if isinstance(step, list):
                self._write(step)
            elif step.action == "open":
                self._open()
            elif step.action == "commit" or (step.action == "keep" and self._has_bytes()):
                self._commit(step)
            elif step.action == "empty":
                self._skip_empty(step.reason)
            else:
                self._fail(step.reason, step.error)
        except OSError as exc:
            self._fail(errno.errorcode.get(exc.errno or 0, "OSError"), exc.strerror or str(exc))
        except Exception as exc:  # a bug must not leave a partial file behind
            self.log.error("handler_failed", exc_info=exc)
            self._fail("internal_error", repr(exc))

    def _open(self) -> None:
        floor = self.handler.settings["min_free_bytes"]
        free = self.handler.directory.free_bytes() if floor else 0
        if free < floor:
            self.finished = True
            self.log.warning("file_refused", reason="min_free_bytes", free_bytes=free,
                             min_free_bytes=floor)  # fmt: skip
            self._notify(self._ended, False, "min_free_bytes")

    def _create(self) -> DurableFile:
        """The temporary, made with the first byte (or at EOF with keep_empty)."""
        if self.file is None:
            stem = f"{os.getpid()}-{self.conn.conn_id}"
            mode = self.handler.settings["file_mode"]
            self.file = DurableFile(self.handler.directory, stem, mode)
        return self.file

    def _write(self, chunks: list[bytes]) -> None:
        self._create()
        assert self.file is not None
        hashed = self.handler.hashers.submit(self.file.hash, chunks)  # both release the GIL
        try:
            self.file.write(chunks)
        finally:
            hashed.result()
        floor = self.handler.settings["min_free_bytes"]
        if floor and self.handler.directory.free_bytes() < floor:
            self._fail("min_free_bytes", f"less than {floor} bytes free")
            return
        self._notify(self._written, sum(len(chunk) for chunk in chunks))

    def _has_bytes(self) -> bool:
        return self.file is not None and self.file.size > 0

    def _commit(self, step: Step) -> None:
        if self.file is None and not self.handler.settings["keep_empty"]:
            self._skip_empty("eof")
            return
        self._create()
        assert self.file is not None
        name = self.name if step.action == "commit" else f"{self.name}.partial"
        final = self.file.commit(name)
        self.finished = True
        fields = {"name": final, "bytes": self.file.size, "sha256": self.file.sha256.hexdigest()}
        if step.action == "commit":
            self.log.info("file_received", **fields, duration_ms=self._duration_ms())
            self._notify(self._ended, True)
        else:
            self.log.warning("file_partial_kept", **fields, reason=step.reason, error=step.error)

    def _skip_empty(self, ended_by: str) -> None:
        """A connection without a byte (a probe): nothing stored, one line."""
        self.finished = True
        self.log.info("file_empty", ended_by=ended_by, stored=False,
                      duration_ms=self._duration_ms())  # fmt: skip
        self._notify(self._ended, True)

    def _fail(self, reason: str, error: str) -> None:
        self.finished = True
        size = 0
        if self.file is not None:
            size = self.file.size
            self.file.discard()
        self.log.warning("file_failed", reason=reason, error=error, bytes=size,
                         duration_ms=self._duration_ms())  # fmt: skip
        self._notify(self._ended, False, reason)

    def _duration_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 1)


class FileReceiveHandler(Handler):
    """Receives one file per TCP connection into ``directory``."""

    name = "file-receive"
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp"})
    # A silent peer holds a connection (and a max_connections slot) until this passes;
    # nginx closes idle clients after 60 s too. idle_timeout_s = 0 turns it off.
    default_limits: ClassVar[Mapping[str, Any]] = {"idle_timeout_s": 60.0}
    options = (
        Option("directory", str, None, "absolute path; created 0700 when missing",
               convert=check_directory, required=True),
        Option("max_bytes", object, None, "largest file accepted, e.g. 1GiB (default: no limit)",
               convert=parse_size),
        Option("file_name", str, parse_template(DEFAULT_TEMPLATE), "final-name template",
               convert=parse_template),
        Option("file_mode", int, 0o600, "mode of received files, at most 0o644", minimum=0,
               convert=check_file_mode),
        Option("keep_partial", bool, False, "keep a cut transfer as NAME.partial"),
        Option("keep_empty", bool, False, "store a connection that sent no byte as an "
               "empty file (default: log file_empty, store nothing)"),
        Option("min_free_bytes", object, 64 << 20, "refuse and stop transfers below this much "
               "free space, e.g. 1GiB", convert=parse_size),
    )  # fmt: skip

    def __init__(self, settings: Settings) -> None:
        """Open (or create) and lock the directory and remove stale temporaries.

        Raises:
            ConfigError: ``directory`` is missing or cannot be used (one line).
        """
        super().__init__({**defaults(self.options), **settings})
        path = self.settings["directory"]
        if path is None:
            raise ConfigError(["file-receive: missing required key 'directory' (an absolute path)"])
        self.directory, removed = hold_directory(path)
        self._closed = False
        self.executor = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="file-receive")
        # Hashing runs beside the write on its own threads: a pool shared with the writers
        # could fill with writers waiting for hashes queued behind them.
        self.hashers = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="file-receive-hash")
        get_logger(handler=self.name).info(
            "receive_directory_ready", directory=path, created=self.directory.created,
            stale_partials_removed=removed,
        )  # fmt: skip
        if os.geteuid() != 0:  # root may write anywhere; [daemon] user is checked after the drop
            self._check_writable()

    @classmethod
    def check_settings(cls, settings: Settings) -> list[str]:
        """A directory that is a symlink or not a directory, or whose parent is missing."""
        path = settings.get("directory")
        problem = check_directory_usable(path) if isinstance(path, str) else None
        return [problem] if problem else []

    def open_session(self, conn: Connection) -> StreamSession:
        return FileReceiveSession(conn, self)

    def before_privilege_drop(self, uid: int, gid: int) -> None:
        """A directory portd created as root goes to the user it runs as from now on;
        one that existed keeps the owner its administrator gave it."""
        if self.directory.created:
            os.fchown(self.directory.fd, uid, gid)

    def after_privilege_drop(self) -> None:
        """The directory must take files from the user portd now runs as."""
        self._check_writable()

    def _check_writable(self) -> None:
        """Create and remove a temporary, as every upload will.

        Raises:
            AccessError: this user cannot (exit 77), so no upload could be stored.
        """
        try:
            name, fd = self.directory.create_temp(f"{os.getpid()}-access-check", 0o600)
            os.close(fd)
            self.directory.unlink(name)
        except OSError as exc:
            self.close()
            raise AccessError(
                f"file-receive: directory = {json.dumps(self.settings['directory'])}: uid "
                f"{os.geteuid()} cannot create files in it ({exc.strerror}); give that user "
                "write access, or let portd create the directory"
            ) from None

    def close(self) -> None:
        """Let queued steps finish (a cut transfer's partial is removed), then release
        the directory (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.executor.shutdown(wait=True)
        self.hashers.shutdown(wait=True)
        self.directory.release()
