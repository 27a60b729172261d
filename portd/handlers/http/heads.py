"""What a request head may look like beyond what llhttp checks: shape and size.

llhttp (through httptools) parses strictly but tolerates a few things on purpose
(several spaces between request-line words, ``RTSP/`` and ``ICE/`` versions, HTTP/0.9
and HTTP/2.0 request lines) and caps no sizes. This module judges the raw request line
and measures the header section, on bytes only; the session decides when to call it.

Limits (bytes, CRLF excluded unless said):

- empty lines before a request line: 16 bytes of CR and LF (400 beyond; RFC 9112 §2.2
  asks to ignore "at least one", and a flood of them must not cost more than junk)

- request line: 8192 (414 above)
- one field line (``Name: value``): 8192 (431 above)
- the field section, every field line with its CRLF: 16384 (431 above)
- fields: 100 (431 from the 101st)
"""

from __future__ import annotations

import re

from httptools import HttpParserError, HttpParserInvalidMethodError, HttpParserInvalidURLError

MAX_LINE = 8192
MAX_EMPTY_LINE_BYTES = 16
MAX_FIELDS_BYTES = 16384
MAX_FIELDS = 100
# No field section under this size can hold more than MAX_FIELDS fields ("a:" CRLF each).
FEWEST_BYTES_FOR_TOO_MANY = (MAX_FIELDS + 1) * 4

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_TARGET = rb"[\x21-\x7e]+"
# RFC 9112 §3: method SP request-target SP HTTP-version, one space each.
REQUEST_LINE = re.compile(_TOKEN + b" " + _TARGET + rb" HTTP/[0-9]\.[0-9]")
# Everything that can still grow into a REQUEST_LINE.
REQUEST_LINE_PREFIX = re.compile(
    _TOKEN + rb"(?: [\x21-\x7e]*(?: (?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.[0-9]?)?)?)?)?)?)?)?)?)?"
)
# RFC 9112 §3.2: origin-form (absolute-path ["?" query]) or absolute-form; every "%"
# starts a two-digit escape. A fragment is tolerated (llhttp and nginx accept one).
_PCHARS = rb"(?:[-A-Za-z0-9._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*"
_AUTHORITY = rb"(?:[-A-Za-z0-9._~!$&'()*+,;=:@\[\]]|%[0-9A-Fa-f]{2})+"
REQUEST_TARGET = re.compile(
    rb"(?:/" + _PCHARS + rb"|[A-Za-z][-A-Za-z0-9+.]*://" + _AUTHORITY + rb"(?:[/?]" + _PCHARS
    + rb")?)(?:#" + _PCHARS + rb")?"
)  # fmt: skip
# RFC 3986 host [":" port] characters: unreserved, sub-delims, "%", ":", "[", "]".
HOST_CHARS = b"-._~!$&'()*+,;=%:[]0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# judge_request_line's verdict when the request may go on: these bits, or a status >= 400.
HEAD = 1
HTTP_1_0 = 2
LINE_ERRORS = (HttpParserInvalidMethodError, HttpParserInvalidURLError)


def judge_request_line(buf: bytes, start: int, end: int, error: HttpParserError | None) -> int:
    """Judge ``buf[start:end]`` (CRLF excluded), which llhttp has just parsed.

    ``error`` is what llhttp raised on the line (an unknown method or a bad target),
    if anything. In order: not of the form ``token SP target SP HTTP/d.d`` is 400; a
    version other than 1.0 and 1.1 is 505; a target llhttp rejects is 400; a method
    other than GET and HEAD (known to llhttp or not) is 405.

    Returns:
        A status, or the HEAD and HTTP_1_0 bits of a request that may go on.
    """
    version = _judge_version(buf, start, end, error)
    if version >= 400:
        return version
    method_end = buf.find(b" ", start, end)
    if buf.startswith(b"GET ", start):
        return version if is_valid_target(buf, method_end + 1, end - 9) else 400
    if buf.startswith(b"HEAD ", start):
        return version | HEAD if is_valid_target(buf, method_end + 1, end - 9) else 400
    return 405  # "*" (OPTIONS) and host:port (CONNECT) forms belong to methods not served


def is_valid_target(buf: bytes, start: int, end: int) -> bool:
    """True when ``buf[start:end]`` is an origin-form or absolute-form request target
    (``GET *`` and ``GET /%zz`` are not: 400, as RFC 9112 §3.2 asks)."""
    return REQUEST_TARGET.fullmatch(buf, start, end) is not None


def _judge_version(buf: bytes, start: int, end: int, error: HttpParserError | None) -> int:
    """HTTP_1_0 or 0 for a well-formed HTTP/1.x line, else its status."""
    # llhttp accepted a line with two spaces, so it has exactly one between the words.
    simple = error is None and buf.count(b" ", start, end) == 2
    if not simple and REQUEST_LINE.fullmatch(buf, start, end) is None:
        return 400
    if buf.startswith(b"HTTP/1.1", end - 8):
        return 0 if error is None else _target_status(error)
    if buf.startswith(b"HTTP/1.0", end - 8):
        return HTTP_1_0 if error is None else _target_status(error) or HTTP_1_0
    return 505 if buf.startswith(b"HTTP/", end - 8) else 400


def _target_status(error: HttpParserError) -> int:
    """400 when llhttp rejected the target; 0 when it only did not know the method."""
    return 400 if isinstance(error, HttpParserInvalidURLError) else 0


def judge_partial_line(buf: bytes, start: int) -> int:
    """Judge a request line whose CRLF has not arrived: 0 to wait for more, or a status.

    Longer than MAX_LINE is 414; anything that can no longer become a well-formed
    request line (a stray CR or LF, a byte outside the grammar) is 400 at once, so a
    TLS handshake or binary junk is answered without waiting for the header deadline.
    """
    end = len(buf)
    if buf.endswith(b"\r"):
        end -= 1  # may be the first half of the CRLF
    if end - start > MAX_LINE:
        return 414
    if REQUEST_LINE_PREFIX.fullmatch(buf, start, end) is None:
        return 400
    return 0


class FieldMeter:
    """Measures one head's field lines against the limits, each complete line once, so
    a peer sending a byte at a time does not make portd rescan the whole section."""

    __slots__ = ("count", "scanned")

    def __init__(self) -> None:
        self.count = 0  # complete field lines measured
        self.scanned = 0  # bytes of the section they take, CRLFs included

    def find_excess(self, buf: bytes, begin: int, stop: int) -> int:
        """The offset of the first byte past a field limit in ``buf[begin:stop]``, or -1.

        ``begin`` is the first byte after the request line's CRLF; ``stop`` ends the
        head, or the bytes received so far when the head is incomplete.
        """
        pos = begin + self.scanned
        if stop - begin <= MAX_LINE and buf.count(b"\r\n", pos, stop) + self.count < MAX_FIELDS:
            return -1
        while pos < stop:
            end = buf.find(b"\r\n", pos, stop)
            line_end = end if end >= 0 else stop - (buf[stop - 1] == 0x0D)
            if line_end == pos:
                break  # the empty line that ends the head (or its CR so far)
            if self.count == MAX_FIELDS:
                return pos
            excess = _line_excess(begin, pos, line_end, end + 2 if end >= 0 else stop)
            if excess >= 0 or end < 0:
                return excess
            self.count += 1
            pos = end + 2
            self.scanned = pos - begin
        return -1


def _line_excess(begin: int, pos: int, line_end: int, next_line: int) -> int:
    """The first byte of field line ``pos:line_end`` past a size limit, or -1."""
    excess = [pos + MAX_LINE] if line_end - pos > MAX_LINE else []
    if next_line - begin > MAX_FIELDS_BYTES:
        excess.append(begin + MAX_FIELDS_BYTES)
    return min(excess, default=-1)


def is_valid_host(value: bytes) -> bool:
    """True when a Host value has only URI host and port characters (RFC 9112 §3.2)."""
    return not value.rstrip(b" \t").translate(None, HOST_CHARS)


KNOWN_HEADS = 64  # distinct heads a handler remembers (the map is emptied when full)
KNOWN_HEAD_BYTES = 1024  # longer heads are judged every time


class KnownHeads:
    """Heads answered with a plain 200 before, byte for byte, and whether each kept the
    connection alive: the verdict is a function of the bytes alone, so the same head
    again (a load balancer's probe, a client repeating itself) is answered without
    being parsed. Bounded: at most KNOWN_HEADS heads of KNOWN_HEAD_BYTES each."""

    __slots__ = ("get", "heads")

    def __init__(self) -> None:
        self.heads: dict[bytes, bool] = {}
        self.get = self.heads.get  # the data path's lookup, one call

    def remember(self, head: bytes, keep_alive: bool) -> None:
        """Record the verdict on ``head``, a whole GET head llhttp parsed to a 200."""
        heads = self.heads
        if len(head) <= KNOWN_HEAD_BYTES:
            if len(heads) >= KNOWN_HEADS:
                heads.clear()  # follow the heads in use; a flood of new ones costs a parse each
            heads[head] = keep_alive
