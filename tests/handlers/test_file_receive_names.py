"""file-receive's final names: templates are checked at load, and whatever a peer or a
template brings, a rendered name is one safe directory entry."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portd.errors import OptionError
from portd.handlers.files.names import (
    DEFAULT_TEMPLATE,
    MAX_NAME_CHARS,
    SAFE_CHARACTERS,
    name_fields,
    parse_template,
    safe_name,
)

ACCEPTED = calendar.timegm((2026, 11, 21, 22, 21, 39)) + 0.123456


def assert_safe(name: str) -> None:
    assert name
    assert set(name) <= SAFE_CHARACTERS
    assert not name.startswith(".")
    assert ".." not in name
    assert len(name) <= MAX_NAME_CHARS


def test_the_default_template_names_time_peer_and_connection() -> None:
    fields = name_fields("127.0.0.1:50000", 17, "up", ACCEPTED)  # noqa: fixed-port (a name field)
    assert parse_template(DEFAULT_TEMPLATE).render(fields) == (
        "20261121T222139.123456Z_127.0.0.1-50000_17"
    )


@pytest.mark.parametrize(
    ("peer", "host", "rendered"),
    [
        ("[::1]:50000", "--1", "--1-50000"),  # noqa: fixed-port
        ("[fe80::1%eth0]:7", "fe80--1_eth0", "fe80--1_eth0-7"),
        ("[::ffff:127.0.0.1]:1", "--ffff-127.0.0.1", "--ffff-127.0.0.1-1"),
        ("?", "_", "_"),
    ],
)
def test_ipv6_and_unknown_peers_render_without_brackets_colons_or_percent(
    peer: str, host: str, rendered: str
) -> None:
    fields = name_fields(peer, 1, "up", ACCEPTED)
    assert parse_template("{host}").render(fields) == host
    assert parse_template("{peer}").render(fields) == rendered


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("..", "_"),
        (".", "_."),
        ("", "_"),
        ("../../etc/passwd", "____etc_passwd"),
        ("a/b\\c", "a_b_c"),
        ("x\x00y\ny\x1b[31m", "x_y_y_31m"),
        ("...hidden", "_hidden"),
        ("name..txt", "name_txt"),
        ("é", "_"),
    ],
)
def test_hostile_field_values_still_give_one_safe_name(value: str, expected: str) -> None:
    name = parse_template("{listener}").render({"listener": value})
    assert name == expected
    assert_safe(name)


def test_a_dotted_literal_meeting_a_dotted_value_never_makes_dot_dot() -> None:
    assert parse_template("x.{listener}").render({"listener": ".y"}) == "x_y"


def test_long_names_are_cut_to_leave_room_for_a_suffix() -> None:
    name = parse_template("{listener}").render({"listener": "a" * 1000})
    assert name == "a" * MAX_NAME_CHARS


@given(st.text())
def test_any_text_becomes_one_safe_name(text: str) -> None:
    assert_safe(safe_name(text))


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{nope}", "unknown field {nope}"),
        ("{utc!r}", "unknown field {utc!r}"),
        ("{utc:>30}", "unknown field {utc:>30}"),
        ("{peer.__class__}", "unknown field {peer.__class__}"),
        ("{peer[0]}", "unknown field {peer[0]}"),
        ("{utc}/{peer}", "expected literal text"),
        ("../{utc}", "expected literal text"),
        ("a..{utc}", "expected literal text"),
        (".{utc}", "expected literal text"),
        ("{utc} {peer}", "expected literal text"),
        ("{utc}\n", "expected literal text"),
        ("{utc", "expected literal text"),
        ("utc}", "expected literal text"),
        ("", "expected literal text"),
    ],
)
def test_bad_templates_are_refused_with_what_is_allowed(template: str, message: str) -> None:
    with pytest.raises(OptionError, match=r"^(unknown field \{.*\}; )?expected literal text") as e:
        parse_template(template)
    assert str(e.value).startswith(message)
    assert "{utc} {peer} {host} {port} {conn_id} {listener}" in str(e.value)


def test_a_template_may_use_every_field_and_safe_literals() -> None:
    template = parse_template("in+{listener}={host},{port}@{conn_id}_{utc}.{peer}.dat")
    fields = name_fields("10.0.0.1:9", 3, "up", ACCEPTED)
    assert template.render(fields) == ("in+up=10.0.0.1,9@3_20261121T222139.123456Z.10.0.0.1-9.dat")
