"""The inet endpoint grammar ``[HOST:]PORT``: parse_inet, parse_port, resolution, formatting.

Nothing here binds a socket: these tests only parse and resolve addresses, so the port
numbers in them are never opened.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from portd.endpoints.base import ProtocolName as Protocol
from portd.endpoints.inet import (
    InetAddress,
    InetEndpoint,
    format_host_port,
    parse_inet,
    parse_port,
)
from portd.errors import EX_USAGE, BindSyntaxError, UsageError

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
V4_ANY = InetAddress(AF_INET, ("0.0.0.0", 80))
V6_ANY = InetAddress(AF_INET6, ("::", 80, 0, 0))
V4_LOOPBACK = InetAddress(AF_INET, ("127.0.0.1", 80))
V6_LOOPBACK = InetAddress(AF_INET6, ("::1", 80, 0, 0))


@pytest.mark.parametrize(
    ("text", "protocol", "expected"),
    [
        pytest.param("80", "tcp", InetEndpoint("*", 80), id="bare-port-is-wildcard"),
        pytest.param("0", "tcp", InetEndpoint("*", 0), id="port-zero"),
        pytest.param("65535", "tcp", InetEndpoint("*", 65535), id="highest-port"),
        pytest.param("080", "tcp", InetEndpoint("*", 80), id="leading-zero-is-decimal"),
        pytest.param("*:80", "tcp", InetEndpoint("*", 80), id="star-port"),
        pytest.param("127.0.0.1:80", "tcp", InetEndpoint("127.0.0.1", 80), id="ipv4"),
        pytest.param("0.0.0.0:80", "tcp", InetEndpoint("0.0.0.0", 80), id="ipv4-any-literal"),
        pytest.param("[::1]:80", "tcp", InetEndpoint("::1", 80), id="ipv6-loopback"),
        pytest.param("[::]:80", "tcp", InetEndpoint("::", 80), id="ipv6-any-literal"),
        pytest.param("[fe80::1%lo]:80", "tcp", InetEndpoint("fe80::1%lo", 80), id="ipv6-scope"),
        pytest.param("localhost:80", "tcp", InetEndpoint("localhost", 80), id="host-name"),
        pytest.param("localhost:http", "tcp", InetEndpoint("localhost", 80), id="host-and-service"),
        pytest.param("http", "tcp", InetEndpoint("*", 80), id="service-http-tcp"),
        pytest.param("echo", "tcp", InetEndpoint("*", 7), id="service-echo-tcp"),
        pytest.param("echo", "udp", InetEndpoint("*", 7), id="service-echo-udp"),
        pytest.param("[::1]:domain", "udp", InetEndpoint("::1", 53), id="ipv6-and-service-udp"),
        pytest.param(
            "  127.0.0.1:80 \n", "tcp", InetEndpoint("127.0.0.1", 80), id="surrounding-space"
        ),
    ],
)
def test_parse_inet_accepts_every_form(
    text: str, protocol: Protocol, expected: InetEndpoint
) -> None:
    """Each documented form of [HOST:]PORT parses to the exact host and port."""
    assert parse_inet(text, protocol) == expected._replace(protocol=protocol)


def test_parse_inet_looks_up_services_for_tcp_by_default() -> None:
    """Without a protocol, service names are looked up as tcp (http is tcp-only)."""
    assert parse_inet("http") == InetEndpoint("*", 80)


@pytest.mark.parametrize(
    ("text", "protocol", "message"),
    [
        pytest.param("", "tcp", "empty bind; expected [HOST:]PORT", id="empty"),
        pytest.param("   ", "tcp", "empty bind; expected [HOST:]PORT", id="only-space"),
        pytest.param(
            "65536", "tcp", "port 65536 is out of range; expected 0-65535", id="port-too-high"
        ),
        pytest.param(
            "127.0.0.1:99999",
            "tcp",
            "port 99999 is out of range; expected 0-65535",
            id="host-port-too-high",
        ),
        pytest.param(
            "nosuchservice",
            "tcp",
            "bad port 'nosuchservice'; expected 0-65535 or a service name from /etc/services",
            id="unknown-service",
        ),
        pytest.param(
            "-1",
            "tcp",
            "bad port '-1'; expected 0-65535 or a service name from /etc/services",
            id="negative-port",
        ),
        pytest.param(
            "127.0.0.1:",
            "tcp",
            "bad port ''; expected 0-65535 or a service name from /etc/services",
            id="empty-port",
        ),
        pytest.param(
            "::1", "tcp", "bad bind '::1'; put IPv6 addresses in brackets", id="bare-ipv6"
        ),
        pytest.param(
            "::1:80",
            "tcp",
            "bad bind '::1:80'; put IPv6 addresses in brackets: [::1]:PORT",
            id="unbracketed-ipv6-with-port",
        ),
        pytest.param(
            "1.2.3.4:80:90",
            "tcp",
            "bad bind '1.2.3.4:80:90'; put IPv6 addresses in brackets",
            id="two-colons",
        ),
        pytest.param(
            "[::1:80", "tcp", "bad bind '[::1:80'; expected [IPv6]:PORT", id="missing-bracket"
        ),
        pytest.param("[::1]", "tcp", "bad bind '[::1]'; expected [IPv6]:PORT", id="no-port"),
        pytest.param(
            "[::1]80", "tcp", "bad bind '[::1]80'; expected [IPv6]:PORT", id="no-colon-after-]"
        ),
        pytest.param(
            ":80",
            "tcp",
            "bad bind ':80'; HOST is empty (omit ':' for every interface)",
            id="empty-host",
        ),
        pytest.param(
            "[not-an-ip]:80",
            "tcp",
            "bad bind '[not-an-ip]:80'; 'not-an-ip' is not an IPv6 address",
            id="bracketed-name",
        ),
        pytest.param(
            "[127.0.0.1]:80",
            "tcp",
            "bad bind '[127.0.0.1]:80'; '127.0.0.1' is not an IPv6 address",
            id="bracketed-ipv4",
        ),
        pytest.param(
            "[]:80", "tcp", "bad bind '[]:80'; '' is not an IPv6 address", id="empty-brackets"
        ),
        pytest.param(
            "http",
            "udp",
            "service 'http' is 80/tcp in /etc/services, not udp",
            id="tcp-only-service-for-udp",
        ),
        pytest.param(
            "127.0.0.1:tftp",
            "tcp",
            "service 'tftp' is 69/udp in /etc/services, not tcp",
            id="udp-only-service-for-tcp",
        ),
    ],
)
def test_parse_inet_rejects_with_a_message_naming_the_text(
    text: str, protocol: Protocol, message: str
) -> None:
    """Each malformed bind raises BindSyntaxError whose message quotes what was wrong."""
    with pytest.raises(BindSyntaxError) as excinfo:
        parse_inet(text, protocol)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("\N{SUPERSCRIPT TWO}", "'\N{SUPERSCRIPT TWO}'", id="superscript-digit"),
        pytest.param(
            "\N{ARABIC-INDIC DIGIT EIGHT}\N{ARABIC-INDIC DIGIT ZERO}",
            "'\N{ARABIC-INDIC DIGIT EIGHT}\N{ARABIC-INDIC DIGIT ZERO}'",
            id="arabic-indic-digits",
        ),
        pytest.param("ht\x00tp", "'ht\\x00tp'", id="nul-in-service"),
    ],
)
def test_parse_port_rejects_text_that_is_not_ascii_digits_or_a_service(
    text: str, shown: str
) -> None:
    """Unicode digits and NUL are bad ports (BindSyntaxError), not a ValueError or a number."""
    with pytest.raises(BindSyntaxError) as excinfo:
        parse_port(text)
    assert str(excinfo.value) == (
        f"bad port {shown}; expected 0-65535 or a service name from /etc/services"
    )


def test_parse_port_rejects_a_huge_number_as_out_of_range() -> None:
    """A port with more digits than int() converts is out of range, not a ValueError."""
    with pytest.raises(BindSyntaxError) as excinfo:
        parse_port("9" * 5000)
    assert str(excinfo.value).startswith("port 99999")
    assert str(excinfo.value).endswith(" is out of range; expected 0-65535")


def test_parse_port_range_message_shows_the_digits_as_written() -> None:
    """Leading zeros stay in the out-of-range message so it matches the config text."""
    with pytest.raises(BindSyntaxError) as excinfo:
        parse_port("0070000")
    assert str(excinfo.value) == "port 0070000 is out of range; expected 0-65535"


def test_bind_syntax_errors_are_usage_errors() -> None:
    """A bad bind on the command line exits 64 (EX_USAGE)."""
    with pytest.raises(UsageError) as excinfo:
        parse_inet(":80")
    assert excinfo.value.exit_code == EX_USAGE


@pytest.mark.parametrize(
    ("text", "protocol", "port"),
    [
        pytest.param("0", "tcp", 0, id="zero"),
        pytest.param("65535", "udp", 65535, id="highest"),
        pytest.param("00000", "tcp", 0, id="zeros"),
        pytest.param("http", "tcp", 80, id="http-tcp"),
        pytest.param("www", "tcp", 80, id="service-alias"),
        pytest.param("echo", "tcp", 7, id="echo-tcp"),
        pytest.param("echo", "udp", 7, id="echo-udp"),
        pytest.param("tftp", "udp", 69, id="tftp-udp"),
    ],
)
def test_parse_port_numbers_and_services(text: str, protocol: Protocol, port: int) -> None:
    """parse_port gives the number itself, or the /etc/services port for that protocol."""
    assert parse_port(text, protocol) == port


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [
        pytest.param("127.0.0.1", 80, "127.0.0.1:80", id="ipv4"),
        pytest.param("::1", 80, "[::1]:80", id="ipv6-bracketed"),
        pytest.param("fe80::1%lo", 0, "[fe80::1%lo]:0", id="ipv6-scope-bracketed"),
        pytest.param("*", 80, "*:80", id="wildcard"),
        pytest.param("localhost", 7, "localhost:7", id="name"),
    ],
)
def test_format_host_port_brackets_ipv6_only(host: str, port: int, text: str) -> None:
    """format_host_port puts IPv6 literals, and only them, in brackets."""
    assert format_host_port(host, port) == text


@pytest.mark.parametrize(
    "text",
    ["*:80", "127.0.0.1:0", "[::1]:80", "[fe80::1%lo]:80", "localhost:7"],
)
def test_str_of_a_spec_parses_back_to_the_same_spec(text: str) -> None:
    """str(InetEndpoint) is itself valid bind text for the same endpoint."""
    spec = parse_inet(text)
    assert str(spec) == text
    assert parse_inet(str(spec)) == spec


def test_spec_is_wildcard_only_for_star() -> None:
    """Only '*' (or a bare port) is the wildcard spec; an explicit 0.0.0.0 is one address."""
    assert parse_inet("80").is_wildcard is True
    assert parse_inet("*:80").is_wildcard is True
    assert parse_inet("0.0.0.0:80").is_wildcard is False
    assert parse_inet("[::]:80").is_wildcard is False


def test_with_port_keeps_the_host() -> None:
    """with_port replaces only the port (used to report the kernel's choice for port 0)."""
    assert parse_inet("[::1]:0").with_port(80) == InetEndpoint("::1", 80)


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_resolve_wildcard_gives_ipv4_then_ipv6_any(protocol: Protocol) -> None:
    """'*' opens 0.0.0.0 and :: (in that order) for either protocol."""
    assert list(parse_inet("*:80", protocol).resolve()) == [V4_ANY, V6_ANY]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("127.0.0.1:80", [V4_LOOPBACK], id="ipv4"),
        pytest.param("0.0.0.0:80", [V4_ANY], id="ipv4-any-only"),
        pytest.param("[::1]:80", [V6_LOOPBACK], id="ipv6"),
        pytest.param("[::]:80", [V6_ANY], id="ipv6-any-only"),
        pytest.param("127.1:80", [V4_LOOPBACK], id="short-ipv4-normalised"),
    ],
)
def test_resolve_address_literal_gives_one_address(text: str, expected: list[InetAddress]) -> None:
    """An address literal resolves to exactly that one address, in normal form."""
    assert list(parse_inet(text).resolve()) == expected


def test_resolve_scoped_ipv6_carries_the_interface_index() -> None:
    """A link-local address with %lo resolves with lo's index as the scope id."""
    addresses = list(parse_inet("[fe80::1%lo]:80").resolve())
    assert addresses == [InetAddress(AF_INET6, ("fe80::1", 80, 0, socket.if_nametoindex("lo")))]


def test_resolve_localhost_gives_loopback_ipv4_first() -> None:
    """localhost gives 127.0.0.1 first, then ::1 when the host's resolver lists it."""
    addresses = list(parse_inet("localhost:80").resolve())
    assert addresses[0] == V4_LOOPBACK
    assert addresses[1:] in ([], [V6_LOOPBACK])


def test_resolve_host_name_orders_ipv4_first_and_drops_duplicates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever order the resolver answers in, IPv4 comes first, once each, non-IP dropped."""
    calls: list[dict[str, Any]] = []
    answer = [
        (AF_INET6, socket.SOCK_DGRAM, 17, "", ("::1", 53, 0, 0)),
        (socket.AF_UNIX, socket.SOCK_DGRAM, 0, "", "/run/x"),
        (AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.1", 53)),
        (AF_INET6, socket.SOCK_DGRAM, 17, "", ("::1", 53, 0, 0)),
        (AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.1", 53)),
    ]

    def fake_getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        calls.append({"host": host, "port": port, **kwargs})
        return answer

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    addresses = list(parse_inet("dual.example:domain", "udp").resolve())
    assert addresses == [
        InetAddress(AF_INET, ("127.0.0.1", 53)),
        InetAddress(AF_INET6, ("::1", 53, 0, 0)),
    ]
    assert calls == [
        {
            "host": "dual.example",
            "port": 53,
            "type": socket.SOCK_DGRAM,
            "flags": socket.AI_PASSIVE,
        }
    ]


@pytest.mark.parametrize(
    ("text", "families", "expected"),
    [
        pytest.param("*:80", (AF_INET,), [V4_ANY], id="wildcard-ipv4-only"),
        pytest.param("*:80", (AF_INET6,), [V6_ANY], id="wildcard-ipv6-only"),
        pytest.param("*:80", (AF_INET, AF_INET6), [V4_ANY, V6_ANY], id="wildcard-both"),
        pytest.param("127.0.0.1:80", (AF_INET,), [V4_LOOPBACK], id="ipv4-kept"),
        pytest.param("[::1]:80", (AF_INET6,), [V6_LOOPBACK], id="ipv6-kept"),
    ],
)
def test_resolve_filters_by_family(
    text: str, families: tuple[socket.AddressFamily, ...], expected: list[InetAddress]
) -> None:
    """families keeps only the addresses of those families (-4 / -6)."""
    assert list(parse_inet(text).resolve(families)) == expected


@pytest.mark.parametrize(
    ("text", "families", "message"),
    [
        pytest.param("127.0.0.1:80", (AF_INET6,), "127.0.0.1:80 has no IPv6 address", id="v4-6"),
        pytest.param("[::1]:80", (AF_INET,), "[::1]:80 has no IPv4 address", id="v6-4"),
    ],
)
def test_resolve_with_no_address_left_names_the_family(
    text: str, families: tuple[socket.AddressFamily, ...], message: str
) -> None:
    """Filtering away every address is an error naming the bind and the family asked for."""
    with pytest.raises(BindSyntaxError) as excinfo:
        list(parse_inet(text).resolve(families))
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    ("host", "prefix"),
    [
        pytest.param(
            "nonexistent.invalid", "cannot resolve host 'nonexistent.invalid': ", id="invalid-tld"
        ),
        pytest.param(
            "a" * 64 + ".invalid",
            # The reason is Python's idna codec, worded differently by 3.11 ("encoding with
            # 'idna' codec failed (...label empty or too long)"), 3.12 and 3.13 ("...: label
            # too long"); each says "too long".
            f"cannot resolve host '{'a' * 64}.invalid': ",
            id="label-too-long",
        ),
    ],
)
def test_resolve_unresolvable_host_names_the_host(host: str, prefix: str) -> None:
    """A host that does not resolve is a BindSyntaxError quoting the host and the reason."""
    with pytest.raises(BindSyntaxError) as excinfo:
        list(InetEndpoint(host, 80).resolve())
    assert str(excinfo.value).startswith(prefix)
    assert len(str(excinfo.value)) > len(prefix)
    if "a" * 64 in host:
        assert "too long" in str(excinfo.value)


@pytest.mark.parametrize(
    ("address", "host", "port", "wildcard", "text"),
    [
        pytest.param(V4_ANY, "0.0.0.0", 80, True, "0.0.0.0:80", id="v4-any"),
        pytest.param(V6_ANY, "::", 80, True, "[::]:80", id="v6-any"),
        pytest.param(V4_LOOPBACK, "127.0.0.1", 80, False, "127.0.0.1:80", id="v4-loopback"),
        pytest.param(V6_LOOPBACK, "::1", 80, False, "[::1]:80", id="v6-loopback"),
        pytest.param(
            InetAddress(AF_INET6, ("fe80::1%lo", 7, 0, 1)),
            "fe80::1%lo",
            7,
            False,
            "[fe80::1%lo]:7",
            id="v6-scoped",
        ),
    ],
)
def test_socket_address_parts(
    address: InetAddress, host: str, port: int, wildcard: bool, text: str
) -> None:
    """InetAddress exposes host, port, whether it is 0.0.0.0/::, and host:port text."""
    assert (address.host, address.port, address.is_wildcard, str(address)) == (
        host,
        port,
        wildcard,
        text,
    )
