"""The http-hello session: frames heads, feeds llhttp, answers in order, lingers after
errors, and drains; the contract it keeps is in portd.handlers.http_hello's docstring."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from portd.handlers.base import Connection, StreamSession
from portd.handlers.http.deadline import Clock, Deadline, FirstDeadlines
from portd.handlers.http.heads import (
    FEWEST_BYTES_FOR_TOO_MANY,
    HEAD,
    HOST_CHARS,
    HTTP_1_0,
    LINE_ERRORS,
    MAX_EMPTY_LINE_BYTES,
    MAX_FIELDS,
    MAX_LINE,
    FieldMeter,
    is_valid_host,
    is_valid_target,
    judge_partial_line,
    judge_request_line,
)
from portd.handlers.http.responses import (
    BODY_PIECE_BYTES,
    CLOSE,
    KEEP_ALIVE,
    KEEP_ALIVE_1_0,
)

if TYPE_CHECKING:
    from portd.handlers.http_hello import HttpHelloHandler

LINGER_S = 2.0
LINGER_MAX_BYTES = 1 << 20
FLUSH_BYTES = 1 << 16  # pipelined responses are written in batches up to this size
NOT_EMPTY_LINE = re.compile(rb"[^\r\n]")
# Session states.
OPEN = 0
LINGER = 1  # an error was sent: reading and dropping input until the close
CLOSED = 2


class HttpHelloSession(StreamSession):
    """One HTTP connection: frames heads, feeds llhttp, answers in order."""

    # The state every connection starts in, as class attributes: a session sets only
    # what it changes, so opening one costs a few assignments instead of two dozen.
    state = OPEN
    requests = 0
    paused = False
    eof = False
    _buf = b""  # unanswered input, from a head's first byte on
    _fed = 0  # bytes of _buf llhttp has seen (0 until the request line is complete)
    _in_head = False  # a request line has begun and its head is not answered
    _head_began = False  # ... and it began during the current callback
    _line = -1  # judge_request_line's verdict on the current request line
    _line_length = 0
    _meter: FieldMeter | None = None  # only for heads big enough to need it
    _hosts = 0
    _bad = False  # a bad Host, or a Transfer-Encoding that does not end in chunked
    _content = False  # request content (Content-Length above 0, chunked): 413
    _chunked = False  # ... chunked, which HTTP/1.0 cannot frame (400)
    _empty = 0  # CR and LF bytes before the current request line
    _body: memoryview | None = None  # of a 200 being written piece by piece
    _close_after_body = False
    _keep_alive = False
    _out_bytes = 0
    _dropped = 0

    def __init__(
        self,
        conn: Connection,
        handler: HttpHelloHandler,
        clock: Clock,
        first: FirstDeadlines | None = None,
    ) -> None:
        """``first``: where the first deadline waits (the handler's queue for ``clock``)."""
        self.conn = conn
        self.responses = handler.responses
        self.heads = handler.known_heads
        self.header_timeout_s: float = handler.settings["header_timeout_s"]
        self.keepalive_timeout_s: float = handler.settings["keepalive_timeout_s"]
        self.clock = clock
        self.parser = HttpRequestParser(self)
        self.stopping = conn.draining
        self._out: list[bytes] = []
        when = clock.time() + self.header_timeout_s
        self.deadline = Deadline(clock, self._expired, when, first)

    # Callbacks from llhttp.

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name)
        if size == 4:
            if name == b"Host" or name.lower() == b"host":
                self._hosts += 1
                if value.translate(None, HOST_CHARS) and not is_valid_host(value):
                    self._bad = True
        elif size == 14:
            if name.lower() == b"content-length" and int(value):  # llhttp checked the digits
                self._content = True
        elif size == 17 and name.lower() == b"transfer-encoding":
            if value.rsplit(b",", 1)[-1].strip(b" \t").lower() == b"chunked":
                self._content = self._chunked = True
            else:
                self._bad = True  # RFC 9112 §6.3: no way to find the end of the content

    def on_headers_complete(self) -> None:
        self._keep_alive = self.parser.should_keep_alive() and not self.parser.should_upgrade()

    # Callbacks from the server.

    def data_received(self, data: bytes) -> None:
        if self.state != OPEN:
            self._drop(len(data))
            return
        if self._buf:
            data = self._buf + data
            self._buf = b""
        elif not self._in_head and not self.paused:
            if (keep_alive := self.heads.get(data)) is not None:
                self._answer_ok(keep_alive)  # a head answered 200 before
                return
            if self._answer_whole(data):
                return
        served = self.requests
        self._run(data)
        self._after_input(served != self.requests)

    def _answer_whole(self, data: bytes) -> bool:
        """The common case in one call: a chunk that is one GET head, whole, too small
        for any size limit, with a plain request line. The verdicts are _run's; False
        (nothing done) for any other chunk, which _run then judges in full."""
        eol = data.find(b"\r\n")
        if not (
            data.startswith(b"GET ")
            and data.find(b"\r\n\r\n") == len(data) - 4
            and len(data) <= MAX_LINE
            and data.count(b"\r\n") <= MAX_FIELDS
            and data.startswith(b"HTTP/1.1", eol - 8)
            and data.count(b" ", 0, eol) == 2
            and is_valid_target(data, 4, eol - 9)
        ):
            return False
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            pass  # answered 200 with Connection: close, as _read_head does
        except HttpParserError as error:
            line = self._judge_line(data, 0, eol, error)
            if line >= 0:
                self._reject(400, line & HEAD)
            return True
        if self._hosts == 1 and not (self._bad or self._content or self.responses.streamed):
            keep_alive, self._hosts, self._keep_alive = self._keep_alive, 0, False
            self.heads.remember(data, keep_alive)
            self._answer_ok(keep_alive)
            return True
        self._answer(0)
        self._flush()
        if self.state == OPEN and not self.paused:
            self.deadline.move(self.clock.time() + self.keepalive_timeout_s)
        return True

    def _answer_ok(self, keep_alive: bool) -> None:
        """_answer's verdict on a whole GET head that passed: 200, then wait or close."""
        self.requests += 1
        if keep_alive and not self.stopping and self.keepalive_timeout_s:
            self.conn.write(self.responses.ok(KEEP_ALIVE, 0))  # may call pause_writing
            if not self.paused:
                self.deadline.move(self.clock.time() + self.keepalive_timeout_s)
        else:
            self.conn.write(self.responses.ok(CLOSE, 0))
            self._close()

    def eof_received(self) -> bool:
        self.eof = True
        if self.state != OPEN:
            return False
        if self.paused and self._buf:
            return True  # answer what is queued once the peer reads again, then close
        if self._in_head:
            self._reject(400)  # the head was cut short
        return False

    def pause_writing(self) -> None:
        self.paused = True
        self.conn.pause_reading()
        self.deadline.move(self.clock.time() + self.header_timeout_s)

    def resume_writing(self) -> None:
        self.paused = False
        if self._body is not None and self._write_body():
            return  # paused again before the body was out
        if self.state == OPEN:
            buf, self._buf = self._buf, b""
            self._run(buf)
            if self.eof and self.state == OPEN and not self.paused:
                if self._in_head:
                    self._reject(400)  # the head was cut short; closes, as EOF came
                else:
                    self._close()
                return
            self._after_input(True)
        if not self.paused:
            self.conn.resume_reading()

    def shutdown_requested(self) -> None:
        self.stopping = True
        if self.state == LINGER:
            self._close()
        elif self.state == OPEN and not self._in_head and not self._buf and self.requests:
            # Idle between requests: say goodbye with a FIN and read what still comes for
            # a while, so a request already on the wire sees an EOF (which clients retry
            # on a kept-alive connection), never an RST. A connection that has not sent
            # its first request yet is kept: that request is answered, Connection: close.
            self._linger()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.deadline.cancel()
        self.parser = DETACHED_PARSER  # it holds our bound methods: break the cycle
        self._body = None
        self._buf = b""
        self._out.clear()

    # Framing and judging.

    def _run(self, buf: bytes) -> None:
        """Answer every complete head in ``buf``; keep the rest in ``self._buf``."""
        pos = 0
        size = len(buf)
        while self.state == OPEN and not self.paused and self._body is None:
            if not self._in_head:
                # RFC 9112 §2.2: empty lines before a request line are ignored, a few
                # of them: a flood of CRLF is junk, and found by a C-speed search.
                found = NOT_EMPTY_LINE.search(buf, pos)
                start, pos = pos, size if found is None else found.start()
                self._empty += pos - start
                if self._empty > MAX_EMPTY_LINE_BYTES:
                    self._reject(400)
                    return
                if pos == size:
                    break
                self._in_head = self._head_began = True
            end = self._read_head(buf, pos)
            if end < 0:
                break
            pos = end
        self._flush()
        if self.state == OPEN and pos < size:
            self._buf = buf[pos:] if pos else buf

    def _read_head(self, buf: bytes, pos: int) -> int:
        """Feed and judge the head starting at ``pos``; its end, or -1 if not complete."""
        line = self._line
        fed = self._fed
        if line < 0:
            eol = buf.find(b"\r\n", pos)
            if eol < 0 or eol - pos > MAX_LINE:
                self._partial_line(buf, pos, eol)
                return -1
            end = buf.find(b"\r\n\r\n", eol)
        else:
            eol = pos + self._line_length
            end = buf.find(b"\r\n\r\n", pos + fed - 3)
        stop = len(buf) if end < 0 else end + 4
        excess = -1
        if stop - eol >= FEWEST_BYTES_FOR_TOO_MANY:  # smaller field sections fit every limit
            excess = self._find_excess(buf, eol + 2, stop)
            if excess >= 0:
                stop = excess  # llhttp gets only the bytes before the limit
        error = None
        if stop > pos + fed:
            try:
                self.parser.feed_data(
                    memoryview(buf)[pos + fed : stop] if pos + fed or stop != len(buf) else buf
                )
            except HttpParserUpgrade:
                pass  # an Upgrade is ignored: the answer is a 200 with Connection: close
            except HttpParserError as exc:
                error = exc
            self._fed = stop - pos
        if line < 0:
            line = self._judge_line(buf, pos, eol, error)
            if line < 0:
                return -1
        if error is not None or excess >= 0:
            self._reject(431 if error is None else 400, line & HEAD)
            return -1
        if end < 0:
            return -1
        self._answer(line)
        return stop if self.state == OPEN else -1

    def _find_excess(self, buf: bytes, begin: int, stop: int) -> int:
        if self._meter is None:
            self._meter = FieldMeter()
        return self._meter.find_excess(buf, begin, stop)

    def _partial_line(self, buf: bytes, pos: int, eol: int) -> None:
        """A request line without its CRLF yet, or too long: reject it or wait."""
        status = 414 if eol >= 0 else judge_partial_line(buf, pos)
        if status:
            self._reject(status)

    def _judge_line(self, buf: bytes, pos: int, eol: int, error: HttpParserError | None) -> int:
        """judge_request_line's verdict, kept for the head; -1 when rejected."""
        if error is None and buf.startswith(b"GET ", pos) and buf.startswith(b"HTTP/1.1", eol - 8):
            simple = buf.count(b" ", pos, eol) == 2 and is_valid_target(buf, pos + 4, eol - 9)
            line = 0 if simple else judge_request_line(buf, pos, eol, None)  # the common case
        else:
            line = judge_request_line(
                buf, pos, eol, error if isinstance(error, LINE_ERRORS) else None
            )
        if line >= 400:
            self._reject(line)
            return -1
        self._line = line
        self._line_length = eol - pos
        return line

    def _answer(self, line: int) -> None:
        """Answer a complete head whose request line and fields passed."""
        bad = self._bad or (self._chunked and line & HTTP_1_0)  # RFC 9112 §6.1: faulty
        if bad or (self._hosts > 1 if line & HTTP_1_0 else self._hosts != 1):
            self._reject(400, line & HEAD)
            return
        if self._content:  # http-hello takes no request content: any is too large
            self._reject(413, line & HEAD)
            return
        close = not self._keep_alive or self.stopping or not self.keepalive_timeout_s
        response = self.responses.ok(
            CLOSE if close else KEEP_ALIVE_1_0 if line & HTTP_1_0 else KEEP_ALIVE, line & HEAD
        )
        self.requests += 1
        self._end_head()
        out = self._out
        out.append(response)
        self._out_bytes += len(response)
        if self.responses.streamed and not line & HEAD:
            self._flush()
            self._body, self._close_after_body = self.responses.body, close
            self._write_body()
        elif close:
            self._flush()
            self._close()
        elif self._out_bytes >= FLUSH_BYTES:
            self._flush()

    def _write_body(self) -> bool:
        """Write the body of a streamed 200 while the peer reads; True if it paused first."""
        body = self._body
        while body is not None and not self.paused:
            self.conn.write(bytes(body[:BODY_PIECE_BYTES]))  # may call pause_writing
            body = body[BODY_PIECE_BYTES:] or None
        self._body = body
        if body is not None:
            return True
        if self._close_after_body:
            self._close()
        return False

    def _end_head(self) -> None:
        self._fed = 0
        self._line = -1
        self._meter = None
        self._in_head = False
        self._hosts = 0
        self._bad = self._content = self._chunked = False
        self._empty = 0
        self._keep_alive = False

    # Output, closing and timers.

    def _flush(self) -> None:
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self._out_bytes = 0
            self.conn.write(data)

    def _reject(self, status: int, head: int = 0) -> None:
        """Send an error response after what is already queued; then linger and close."""
        self._out.append(self.responses.error(status, head))
        self._flush()
        self._end_head()
        self._buf = b""
        self.conn.log.debug("http_rejected", status=status, requests=self.requests)
        if self.eof or self.stopping:
            self._close()
            return
        self._linger()

    def _linger(self) -> None:
        """Half-close, then read and drop input until the peer closes, LINGER_S passes or
        LINGER_MAX_BYTES arrive."""
        self.state = LINGER
        self.conn.write_eof()
        self.deadline.move(self.clock.time() + LINGER_S)

    def _drop(self, size: int) -> None:
        self._dropped += size
        if self.state == LINGER and self._dropped > LINGER_MAX_BYTES:
            self._close()

    def _close(self) -> None:
        self.state = CLOSED
        self._buf = b""
        self.conn.close()

    def _after_input(self, progressed: bool) -> None:
        """Move the deadline after input was handled (``progressed``: answers went out,
        or the peer drained its queue)."""
        began, self._head_began = self._head_began, False
        if self.state != OPEN or self.paused:
            return
        if self._in_head:
            if began and self.requests:  # the first head's deadline runs from the connect
                self.deadline.move(self.clock.time() + self.header_timeout_s)
        elif progressed:
            self.deadline.move(self.clock.time() + self.keepalive_timeout_s)

    def _expired(self) -> None:
        if self.state == CLOSED:
            return
        if self.state == LINGER:
            self._close()
        elif self.paused or self.conn.get_write_buffer_size():
            self.state = CLOSED
            self.conn.abort()  # the peer is not reading what it asked for
        elif self._in_head:
            self._reject(408)
        else:
            self._close()  # idle keep-alive, or a connection that never sent a request


class _Detached:
    """No callbacks: what a closed session's parser reports to."""


DETACHED_PARSER = HttpRequestParser(_Detached())
