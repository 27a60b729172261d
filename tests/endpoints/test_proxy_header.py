"""PROXY protocol headers (haproxy's spec): v1 text and v2 binary for IPv4 and IPv6
clients, and the "no address to tell" forms for a unix peer."""

from __future__ import annotations

import struct

from portd.endpoints.inet import inet_peer
from portd.endpoints.proxy_header import V2_SIGNATURE, proxy_header
from portd.endpoints.unix import UnixPeer


def test_v1_names_family_addresses_and_ports() -> None:
    peer = inet_peer(("192.0.2.7", 50000))
    assert proxy_header("v1", peer, ("192.0.2.1", 443)) == (
        b"PROXY TCP4 192.0.2.7 192.0.2.1 50000 443\r\n"
    )
    six = inet_peer(("2001:db8::7", 50000, 0, 0))
    assert proxy_header("v1", six, ("2001:db8::1", 443, 0, 0)) == (
        b"PROXY TCP6 2001:db8::7 2001:db8::1 50000 443\r\n"  # noqa: fixed-port
    )


def test_v2_is_the_signature_the_command_the_family_and_the_addresses() -> None:
    header = proxy_header("v2", inet_peer(("10.0.0.2", 1234)), ("10.0.0.1", 80))
    assert header[:12] == V2_SIGNATURE
    assert header[12:16] == bytes([0x21, 0x11]) + struct.pack("!H", 12)
    assert header[16:] == bytes([10, 0, 0, 2, 10, 0, 0, 1]) + struct.pack("!HH", 1234, 80)
    six = proxy_header("v2", inet_peer(("::1", 1, 0, 0)), ("::1", 2, 0, 0))
    assert six[12:16] == bytes([0x21, 0x21]) + struct.pack("!H", 36)
    assert len(six) == 16 + 36


def test_a_unix_peer_has_no_address_to_tell() -> None:
    peer = UnixPeer("", 42, 1000, 1000)
    assert proxy_header("v1", peer, "/run/app.sock") == b"PROXY UNKNOWN\r\n"
    assert proxy_header("v2", peer, "/run/app.sock") == V2_SIGNATURE + bytes([0x20, 0, 0, 0])
