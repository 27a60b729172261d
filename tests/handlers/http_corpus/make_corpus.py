"""Writes the http-hello corpus: one raw request stream per file, the expected answers
in expected.toml. The files are the corpus; this script is how they were made, and
test_http_hello_corpus.py checks that the two still agree.

Each stream is sent whole, then the client half-closes. The expectation is a status,
a list of statuses (one per pipelined request answered), or "close" (no response).

    python tests/handlers/http_corpus/make_corpus.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
Expected = int | list[int] | str
H = b"Host: example.test\r\n"
GET = b"GET / HTTP/1.1\r\n" + H + b"\r\n"
HEAD = b"HEAD / HTTP/1.1\r\n" + H + b"\r\n"


def line(request_line: bytes, *fields: bytes, host: bool = True) -> bytes:
    """A head: the request line, Host (unless told not to), the fields, an empty line."""
    lines = [request_line, *([H.rstrip()] if host else []), *fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def get(*fields: bytes, host: bool = True) -> bytes:
    return line(b"GET / HTTP/1.1", *fields, host=host)


def field(length: int, name: bytes = b"X-Pad") -> bytes:
    """A field line of exactly ``length`` bytes (CRLF excluded)."""
    return name + b": " + b"v" * (length - len(name) - 2)


def target_line(length: int) -> bytes:
    """A GET request line of exactly ``length`` bytes."""
    return b"GET /" + b"a" * (length - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"


VALID: list[tuple[str, bytes, Expected]] = [
    ("get-minimal", GET, 200),
    ("head-minimal", HEAD, 200),
    ("get-http10-no-host", b"GET / HTTP/1.0\r\n\r\n", 200),
    ("get-http10-keep-alive", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 200),
    ("get-absolute-form", line(b"GET http://example.test/path?q=1 HTTP/1.1"), 200),
    ("get-query-and-fragment", line(b"GET /a/b;c?d=e&f=%20#frag HTTP/1.1"), 200),
    ("get-dot-segments", line(b"GET /a/../../b/./c HTTP/1.1"), 200),
    ("get-content-length-zero", get(b"Content-Length: 0"), 200),
    ("get-content-length-zeros", get(b"Content-Length: 000"), 200),
    ("get-leading-empty-lines", b"\r\n\r\n" + GET, 200),
    ("get-leading-bare-lf", b"\n\n" + GET, 200),
    ("get-host-with-port", line(b"GET / HTTP/1.1", b"Host: example.test:8080", host=False), 200),
    ("get-host-ipv6-literal", line(b"GET / HTTP/1.1", b"Host: [::1]:8080", host=False), 200),  # noqa: fixed-port
    ("get-host-empty", line(b"GET / HTTP/1.1", b"Host:", host=False), 200),
    ("get-host-trailing-space", line(b"GET / HTTP/1.1", b"Host: a   ", host=False), 200),
    ("get-obs-text-value", get(b"X-Latin1: caf\xe9"), 200),
    ("get-utf8-value", get(b"X-Name: \xc3\xa9t\xc3\xa9"), 200),
    ("get-tab-in-value", get(b"X-Tab: a\tb"), 200),
    ("get-tab-before-value", get(b"X-Tab:\tvalue"), 200),
    ("get-empty-value", get(b"X-Empty:"), 200),
    ("get-connection-close", get(b"Connection: close"), 200),
    ("get-upgrade-ignored", get(b"Connection: Upgrade", b"Upgrade: websocket"), 200),
    ("get-expect-continue", get(b"Expect: 100-continue"), 200),
    ("get-underscore-header", get(b"Transfer_Encoding: chunked"), 200),
    ("get-many-common-fields", get(*[f"X-F{i}: {i}".encode() for i in range(40)]), 200),
]

REQUEST_LINES: list[tuple[str, bytes, Expected]] = [
    ("target-asterisk-on-get", line(b"GET * HTTP/1.1"), 400),
    ("target-bad-percent", line(b"GET /%zz HTTP/1.1"), 400),
    ("target-truncated-percent", line(b"GET /a%2 HTTP/1.1"), 400),
    ("target-authority-form-on-get", line(b"GET example.test:80 HTTP/1.1"), 400),
    ("target-bad-percent-on-head", line(b"HEAD /%G0 HTTP/1.1"), 400),
    ("target-bad-percent-http10", b"GET /%zz HTTP/1.0\r\n\r\n", 400),
    ("target-asterisk-on-options", line(b"OPTIONS * HTTP/1.1"), 405),
    ("empty-lines-few", b"\r\n" * 8 + GET, 200),
    ("empty-lines-flood", b"\r\n" * 9 + GET, 400),
    ("empty-lines-between-requests", GET + b"\r\n" * 8 + GET, [200, 200]),
    ("empty-lines-flood-between-requests", GET + b"\r\n" * 9 + GET, [200, 400]),
    ("line-lowercase-version", line(b"GET / http/1.1"), 400),
    ("line-http09-no-version", b"GET /\r\n\r\n", 400),
    ("line-double-space-after-method", line(b"GET  / HTTP/1.1"), 400),
    ("line-double-space-before-version", line(b"GET /  HTTP/1.1"), 400),
    ("line-leading-space", line(b" GET / HTTP/1.1"), 400),
    ("line-trailing-space", line(b"GET / HTTP/1.1 "), 400),
    ("line-tab-separators", line(b"GET\t/\tHTTP/1.1"), 400),
    ("line-bare-lf", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("line-bare-cr", b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
    ("line-missing-target", line(b"GET HTTP/1.1"), 400),
    ("line-space-in-target", line(b"GET /a b HTTP/1.1"), 400),
    ("line-nul-in-target", line(b"GET /\x00 HTTP/1.1"), 400),
    ("line-del-in-target", line(b"GET /\x7f HTTP/1.1"), 400),
    ("line-high-byte-in-target", line(b"GET /\x80 HTTP/1.1"), 400),
    ("line-utf8-in-target", line(b"GET /caf\xc3\xa9 HTTP/1.1"), 400),
    ("line-relative-target", line(b"GET index.html HTTP/1.1"), 400),
    ("line-only-method", b"GET\r\n\r\n", 400),
    ("line-response-as-request", b"HTTP/1.1 200 OK\r\n\r\n", 400),
    ("line-version-suffix", line(b"GET / HTTP/1.1x"), 400),
    ("line-version-space", line(b"GET / HTTP/ 1.1"), 400),
    ("line-version-truncated", line(b"GET / HTTP/1."), 400),
    ("line-version-two-digits", line(b"GET / HTTP/11.1"), 400),
    ("line-version-three-parts", line(b"GET / HTTP/1.1.1"), 400),
    ("line-rtsp", line(b"GET / RTSP/1.0"), 400),
    ("line-ice", line(b"SOURCE / ICE/1.0"), 400),
    ("line-tls-client-hello", bytes.fromhex("160301020001000200") + b"\x03\x03" * 20, 400),
    ("line-ssh-banner", b"SSH-2.0-OpenSSH_9.6\r\n", 400),
    ("line-binary-garbage", bytes(range(256)), 400),
    ("line-nul-bytes", b"\x00" * 64, 400),
    ("line-all-0xff", b"\xff" * 64, 400),
    ("line-only-spaces", b"        \r\n\r\n", 400),
    ("line-nul-before-method", b"\x00" + GET, 400),
    ("line-utf8-bom", b"\xef\xbb\xbf" + GET, 400),
    ("line-method-with-colon", line(b"GET: / HTTP/1.1"), 400),
    ("line-empty-then-junk", b"\r\n\x01\x02\r\n\r\n", 400),
]

METHODS: list[tuple[str, bytes, Expected]] = [
    *[
        (f"method-{method.lower()}", line(method.encode() + b" / HTTP/1.1"), 405)
        for method in (
            "POST",
            "PUT",
            "DELETE",
            "PATCH",
            "OPTIONS",
            "TRACE",
            "PROPFIND",
            "PURGE",
            "LINK",
            "QUERY",
        )
    ],
    ("method-connect-authority", line(b"CONNECT example.test:443 HTTP/1.1"), 405),
    ("method-options-asterisk", line(b"OPTIONS * HTTP/1.1"), 405),
    ("method-m-search", line(b"M-SEARCH * HTTP/1.1"), 405),
    ("method-unknown-token", line(b"BREW /pot HTTP/1.1"), 405),
    ("method-lowercase-get", line(b"get / HTTP/1.1"), 405),
    ("method-get-prefix", line(b"GETS / HTTP/1.1"), 405),
    ("method-post-with-body", line(b"POST / HTTP/1.1", b"Content-Length: 5") + b"hello", 405),
    (
        "method-post-chunked",
        line(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n",
        405,
    ),
    ("method-post-bad-field-after", line(b"POST / HTTP/1.1", b"Bad Field"), 405),
]

VERSIONS: list[tuple[str, bytes, Expected]] = [
    ("version-2-0", line(b"GET / HTTP/2.0"), 505),
    ("version-0-9-explicit", line(b"GET / HTTP/0.9"), 505),
    ("version-1-2", line(b"GET / HTTP/1.2"), 505),
    ("version-1-9", line(b"GET / HTTP/1.9"), 505),
    ("version-3-0", line(b"GET / HTTP/3.0"), 505),
    ("version-9-9", line(b"GET / HTTP/9.9"), 505),
    ("version-0-0", line(b"GET / HTTP/0.0"), 505),
    ("version-h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("version-before-method", line(b"BREW / HTTP/3.0"), 505),
]

# The last field line's length that brings Host and two 8000-byte fields to 16384 bytes.
SECTION_REST = 16384 - len(H) - 2 * 8002 - 2
LIMITS: list[tuple[str, bytes, Expected]] = [
    ("limit-line-8192", line(target_line(8192)), 200),
    ("limit-line-8193", line(target_line(8193)), 414),
    ("limit-line-32k", line(target_line(32768)), 414),
    ("limit-line-unterminated-32k", b"GET /" + b"a" * 32768, 414),
    ("limit-field-8192", get(field(8192)), 200),
    ("limit-field-8193", get(field(8193)), 431),
    ("limit-field-32k", get(field(32768)), 431),
    ("limit-field-name-9000", get(b"X" * 9000 + b": v"), 431),
    ("limit-field-ows-9000", get(b"X:" + b" " * 9000 + b"v"), 431),
    ("limit-fields-100", get(*[b"X: y"] * 99), 200),
    ("limit-fields-101", get(*[b"X: y"] * 100), 431),
    ("limit-fields-1000", get(*[b"X: y"] * 999), 431),
    ("limit-section-16384", get(field(8000), field(8000), field(SECTION_REST)), 200),
    ("limit-section-16385", get(field(8000), field(8000), field(SECTION_REST + 1)), 431),
    ("limit-section-32k", get(*[field(4000)] * 8), 431),
    ("limit-syntax-error-before-limit", get(b"Bad Field", field(9000)), 400),
    ("limit-before-syntax-error", get(field(9000), b"Bad Field"), 431),
    ("limit-line-beats-bad-method", line(b"BREW /" + b"a" * 9000 + b" HTTP/1.1"), 414),
    ("limit-head-with-head-method", line(b"HEAD / HTTP/1.1", field(9000)), 431),
]

FIELDS: list[tuple[str, bytes, Expected]] = [
    ("field-obs-fold-space", get(b"X-A: one", b" two"), 400),
    ("field-obs-fold-tab", get(b"X-A: one", b"\ttwo"), 400),
    ("field-space-before-colon", get(b"X-A : v"), 400),
    ("field-space-in-name", get(b"X A: v"), 400),
    ("field-empty-name", get(b": v"), 400),
    ("field-no-colon", get(b"X-A"), 400),
    ("field-nul-in-value", get(b"X-A: a\x00b"), 400),
    ("field-ctl-in-value", get(b"X-A: a\x01b"), 400),
    ("field-del-in-value", get(b"X-A: a\x7fb"), 400),
    ("field-vt-in-value", get(b"X-A: a\x0bb"), 400),
    ("field-bare-cr-in-value", get(b"X-A: a\rb"), 400),
    ("field-bare-lf-ending", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
    ("field-bare-lf-final", b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
    ("field-bare-cr-final", b"GET / HTTP/1.1\r\nHost: a\r\n\rX\r\n\r\n", 400),
    ("field-high-byte-in-name", get(b"X-Caf\xe9: v"), 400),
    ("field-at-in-name", get(b"X@A: v"), 400),
    ("field-slash-in-name", get(b"X/A: v"), 400),
    ("field-brackets-in-name", get(b"X[A]: v"), 400),
    ("field-quote-in-name", get(b'X"A: v'), 400),
    ("field-leading-space-first", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
    ("field-whitespace-line", get(b"   "), 400),
    ("field-nul-name", get(b"\x00: v"), 400),
]

SMUGGLING: list[tuple[str, bytes, Expected]] = [
    ("smuggle-cl-then-te", get(b"Content-Length: 4", b"Transfer-Encoding: chunked"), 400),
    ("smuggle-te-then-cl", get(b"Transfer-Encoding: chunked", b"Content-Length: 4"), 400),
    ("smuggle-duplicate-cl-same", get(b"Content-Length: 1", b"Content-Length: 1") + b"x", 400),
    ("smuggle-duplicate-cl-diff", get(b"Content-Length: 1", b"Content-Length: 2") + b"xy", 400),
    ("smuggle-duplicate-cl-zero", get(b"Content-Length: 0", b"Content-Length: 0"), 400),
    ("smuggle-cl-list", get(b"Content-Length: 1, 1") + b"x", 400),
    ("smuggle-cl-plus", get(b"Content-Length: +1") + b"x", 400),
    ("smuggle-cl-negative", get(b"Content-Length: -1"), 400),
    ("smuggle-cl-hex", get(b"Content-Length: 0x1") + b"x", 400),
    ("smuggle-cl-trailing-junk", get(b"Content-Length: 1a") + b"x", 400),
    ("smuggle-cl-empty", get(b"Content-Length:"), 400),
    ("smuggle-cl-huge", get(b"Content-Length: 99999999999999999999999999"), 400),
    ("smuggle-cl-body-on-get", get(b"Content-Length: 5") + b"hello", 413),
    ("smuggle-cl-body-on-head", line(b"HEAD / HTTP/1.1", b"Content-Length: 5") + b"hello", 413),
    ("smuggle-cl-hides-request", get(b"Content-Length: 41") + GET, 413),
    ("smuggle-te-chunked-get", get(b"Transfer-Encoding: chunked") + b"0\r\n\r\n", 413),
    ("smuggle-te-chunked-http10", line(b"GET / HTTP/1.0", b"Transfer-Encoding: chunked"), 400),
    ("smuggle-te-gzip", get(b"Transfer-Encoding: gzip"), 400),
    ("smuggle-te-chunked-gzip", get(b"Transfer-Encoding: chunked, gzip"), 400),
    ("smuggle-te-xchunked", get(b"Transfer-Encoding: xchunked"), 400),
    ("smuggle-te-identity", get(b"Transfer-Encoding: identity"), 400),
    ("smuggle-te-uppercase", get(b"Transfer-Encoding: CHUNKED") + b"0\r\n\r\n", 413),
    ("smuggle-te-twice", get(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), 400),
    ("smuggle-te-vertical-tab", get(b"Transfer-Encoding: \x0bchunked"), 400),
    ("smuggle-te-space-before-colon", get(b"Transfer-Encoding : chunked"), 400),
    ("smuggle-te-hides-request", get(b"Transfer-Encoding: chunked") + b"0\r\n\r\n" + GET, 413),
]

HOSTS: list[tuple[str, bytes, Expected]] = [
    ("host-missing-http11", get(host=False), 400),
    ("host-twice", get(b"Host: other.test"), 400),
    ("host-twice-http10", line(b"GET / HTTP/1.0", b"Host: a", b"Host: a", host=False), 400),
    ("host-space-inside", line(b"GET / HTTP/1.1", b"Host: a b", host=False), 400),
    ("host-slash", line(b"GET / HTTP/1.1", b"Host: a/b", host=False), 400),
    ("host-userinfo", line(b"GET / HTTP/1.1", b"Host: user@a", host=False), 400),
    ("host-non-ascii", line(b"GET / HTTP/1.1", b"Host: caf\xc3\xa9.test", host=False), 400),
    ("host-quote", line(b"GET / HTTP/1.1", b'Host: "a"', host=False), 400),
    ("host-missing-absolute-form", line(b"GET http://a/ HTTP/1.1", host=False), 400),
]

PIPELINES: list[tuple[str, bytes, Expected]] = [
    ("pipe-get-get", GET + GET, [200, 200]),
    ("pipe-get-head-get", GET + HEAD + GET, [200, 200, 200]),
    ("pipe-ten-gets", GET * 10, [200] * 10),
    ("pipe-empty-lines-between", GET + b"\r\n\r\n" + GET, [200, 200]),
    ("pipe-get-post", GET + line(b"POST / HTTP/1.1"), [200, 405]),
    ("pipe-get-bad-line", GET + b"GET  / HTTP/1.1\r\n\r\n", [200, 400]),
    ("pipe-get-http2", GET + line(b"GET / HTTP/2.0"), [200, 505]),
    ("pipe-get-long-line", GET + line(target_line(9000)), [200, 414]),
    ("pipe-get-long-field", GET + get(field(9000)), [200, 431]),
    ("pipe-get-no-host", GET + get(host=False), [200, 400]),
    ("pipe-error-then-get", b"BREW / HTTP/1.1\r\n\r\n" + GET, 405),
    ("pipe-close-then-get", get(b"Connection: close") + GET, 200),
    ("pipe-http10-then-get", b"GET / HTTP/1.0\r\n\r\n" + GET, 200),
    (
        "pipe-http10-keep-alive-pair",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2,
        [200, 200],
    ),
    ("pipe-upgrade-then-binary", get(b"Connection: Upgrade", b"Upgrade: h2c") + b"\x00\x01", 200),
    ("pipe-get-then-partial", GET + b"GET / HT", [200, 400]),
    ("pipe-get-then-junk", GET + b"\x16\x03\x01", [200, 400]),
    (
        "pipe-smuggled-after-get",
        GET + get(b"Content-Length: 4", b"Transfer-Encoding: chunked"),
        [200, 400],
    ),
]

TRUNCATED: list[tuple[str, bytes, Expected]] = [
    ("eof-empty", b"", "close"),
    ("eof-only-crlf", b"\r\n\r\n", "close"),
    ("eof-only-lf", b"\n", "close"),
    ("eof-after-method", b"GET", 400),
    ("eof-after-target", b"GET /", 400),
    ("eof-after-version", b"GET / HTTP/1.1", 400),
    ("eof-after-line", b"GET / HTTP/1.1\r\n", 400),
    ("eof-in-field", b"GET / HTTP/1.1\r\nHost: a", 400),
    ("eof-after-field", b"GET / HTTP/1.1\r\nHost: a\r\n", 400),
    ("eof-before-final-lf", b"GET / HTTP/1.1\r\nHost: a\r\n\r", 400),
    ("eof-after-cr", b"GET / HTTP/1.1\r", 400),
]

CASES = [
    *VALID, *REQUEST_LINES, *METHODS, *VERSIONS, *LIMITS, *FIELDS, *SMUGGLING, *HOSTS,
    *PIPELINES, *TRUNCATED,
]  # fmt: skip


def corpus() -> dict[str, tuple[bytes, Expected]]:
    """File name -> (bytes, expected), in corpus order."""
    return {f"{n:03d}-{name}.http": (data, want) for n, (name, data, want) in enumerate(CASES, 1)}


def manifest(cases: dict[str, tuple[bytes, Expected]]) -> str:
    """expected.toml's text."""
    lines = [
        "# What portd answers to each file of this corpus, sent whole, then a half-close.",
        '# A status, a list of statuses (pipelined requests), or "close" (no response).',
        "# Written by make_corpus.py.",
    ]
    for name, (_, want) in cases.items():
        value = f'"{want}"' if isinstance(want, str) else str(want)
        lines.append(f'"{name}" = {value}')
    return "\n".join(lines) + "\n"


def main() -> None:
    cases = corpus()
    for stale in HERE.glob("*.http"):
        if stale.name not in cases:
            stale.unlink()
    for name, (data, _) in cases.items():
        (HERE / name).write_bytes(data)
    (HERE / "expected.toml").write_text(manifest(cases), encoding="utf-8")
    print(f"wrote {len(cases)} files and expected.toml to {HERE}")


if __name__ == "__main__":
    main()
