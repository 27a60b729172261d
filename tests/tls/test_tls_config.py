"""The tls_* listener keys: every file problem is one line naming the key, the path and
the reason (exit 78, from check and serve alike); an expired certificate is a warning."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from portd.config import parse_config_text
from portd.errors import ConfigError
from portd.tls.certs import Authority
from tests.support import run_portd
from tests.tls.files import NAMES, Pair, expired, tls_table, write_pair

SOURCE = "t.toml"


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority("tests CA")


@pytest.fixture
def pair(tmp_path: Path, authority: Authority) -> Pair:
    return write_pair(tmp_path, authority.issue(NAMES))


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, SOURCE)
    return caught.value.messages()


def test_a_valid_pair_gives_the_listener_a_tls_layer(pair: Pair) -> None:
    (listener,) = parse_config_text(tls_table(pair, handler="http-hello"), SOURCE).listeners
    assert listener.tls is not None
    assert (listener.tls.min_version, listener.tls.alpn) == ("1.2", ("http/1.1",))
    assert listener.tls.handshake_timeout_s == 10.0
    assert listener.tls.warnings == ()


def test_tls_alpn_overrides_the_handler_default(pair: Pair) -> None:
    text = tls_table(pair, 'tls_alpn = ["h2", "http/1.1"]\ntls_min_version = "1.3"\n')
    (listener,) = parse_config_text(text, SOURCE).listeners
    assert listener.tls is not None
    assert (listener.tls.alpn, listener.tls.min_version) == (("h2", "http/1.1"), "1.3")


def test_a_missing_file_names_key_path_and_errno(pair: Pair, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    (line,) = problems(tls_table(Pair(missing, pair.key)))
    assert line == (
        f't.toml: [[listener]] #1 "web": tls_cert = "{missing}": cannot read: '
        "No such file or directory (errno 2)"
    )


def test_a_directory_is_not_a_certificate(pair: Pair, tmp_path: Path) -> None:
    (line,) = problems(tls_table(Pair(pair.cert, tmp_path)))
    assert line.endswith(f'tls_key = "{tmp_path}": cannot read: not a regular file')


def test_a_key_of_another_certificate_is_refused(
    pair: Pair, tmp_path: Path, authority: Authority
) -> None:
    other = write_pair(tmp_path, authority.issue(["other"]), "other")
    (line,) = problems(tls_table(Pair(pair.cert, other.key)))
    assert line == (
        f't.toml: [[listener]] #1 "web": tls_key = "{other.key}": does not match the '
        f'certificate of tls_cert = "{pair.cert}" (CN=localhost)'
    )


def test_files_that_are_not_pem(pair: Pair, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    (cert_line,) = problems(tls_table(Pair(junk, pair.key)))
    assert re.search(r'tls_cert = ".*junk.pem": no PEM certificate could be read', cert_line)
    (key_line,) = problems(tls_table(Pair(pair.cert, junk)))
    assert re.search(r'tls_key = ".*junk.pem": not a PEM private key', key_line)


def test_an_encrypted_key_is_refused_without_a_prompt(pair: Pair, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pair.key.read_bytes(), None)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    (line,) = problems(tls_table(Pair(pair.cert, locked)))
    assert "the key is encrypted; portd needs it unencrypted" in line


def test_bad_version_and_half_a_pair(pair: Pair) -> None:
    (line,) = problems(tls_table(pair, 'tls_min_version = "1.1"\n'))
    assert line.endswith("tls_min_version = \"1.1\": expected one of '1.2', '1.3'")
    text = tls_table(pair).replace(f'tls_key = "{pair.key}"\n', "")
    (line,) = problems(text)
    assert line.endswith("tls_cert: TLS needs both tls_cert and tls_key")


def test_tls_on_a_datagram_listener_is_an_error(pair: Pair) -> None:
    lines = problems(tls_table(pair, 'protocol = "udp"\n'))
    assert lines == [
        f't.toml: [[listener]] #1 "web": tls_cert = "{pair.cert}": applies to tcp listeners only',
        f't.toml: [[listener]] #1 "web": tls_key = "{pair.key}": applies to tcp listeners only',
    ]


def test_tls_on_a_unix_stream_listener_is_fine(pair: Pair, tmp_path: Path) -> None:
    text = tls_table(pair).replace("127.0.0.1:0", f"unix:{tmp_path}/s.sock")
    (listener,) = parse_config_text(text, SOURCE).listeners
    assert listener.tls is not None


def test_every_problem_is_reported_at_once(pair: Pair, tmp_path: Path) -> None:
    text = tls_table(Pair(tmp_path / "a.pem", pair.key)) + tls_table(
        Pair(pair.cert, tmp_path / "b.pem"), name="api"
    )
    assert len(problems(text)) == 2


def test_check_exits_78_with_the_same_line(pair: Pair, tmp_path: Path) -> None:
    config = tmp_path / "portd.toml"
    config.write_text(tls_table(Pair(tmp_path / "gone.pem", pair.key)))
    done = run_portd("check", str(config))
    assert done.returncode == 78
    assert done.stderr == (
        f'portd: {config}: [[listener]] #1 "web": tls_cert = "{tmp_path}/gone.pem": '
        "cannot read: No such file or directory (errno 2)\n"
    )


def test_an_expired_certificate_is_a_warning_with_its_date(
    tmp_path: Path, authority: Authority
) -> None:
    old = write_pair(tmp_path, expired(authority))
    config = tmp_path / "portd.toml"
    config.write_text(tls_table(old))
    done = run_portd("check", str(config))
    assert done.returncode == 0, done.stderr
    (line,) = done.stderr.splitlines()
    assert re.fullmatch(
        rf'portd: warning: listener "web": tls_cert = "{re.escape(str(old.cert))}": the '
        r"certificate expired on \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC; clients will refuse it",
        line,
    )
