"""`portd check` and `portd serve` agree on every config of a corpus: the same verdict, and
for a refused config the same exit code and the same lines.

A config is accepted by serve when the daemon reaches ``daemon_ready`` (it is then
stopped); checking binds nothing, so the corpus holds no config whose only fault is a
busy or privileged port.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import PORTD, run_portd

ECHO = '[[listener]]\nname = "e"\nbind = "127.0.0.1:0"\nhandler = "echo"\n'
EXEC = '[[listener]]\nname = "x"\nbind = "127.0.0.1:0"\nhandler = "exec"\n'


def receive(directory: str) -> str:
    return '[[listener]]\nname = "up"\nbind = "127.0.0.1:0"\nhandler = "file-receive"\n' + (
        f'directory = "{directory}"\n'
    )


def _symlinked(tmp: Path) -> str:
    (tmp / "real").mkdir()
    (tmp / "link").symlink_to(tmp / "real")
    return receive(str(tmp / "link"))


def _a_file(tmp: Path) -> str:
    (tmp / "plain").write_text("")
    return receive(str(tmp / "plain"))


def _tls(kind: str) -> Callable[[Path], str]:
    """A TLS listener whose files are made in the case's directory: good, or broken one way."""

    def build(tmp: Path) -> str:
        from portd.tls.certs import Authority
        from tests.tls.files import NAMES, Pair, expired, tls_table, write_pair

        authority = Authority("corpus CA")
        pair = write_pair(tmp, expired(authority) if kind == "expired" else authority.issue(NAMES))
        extra = {"bad-version": 'tls_min_version = "1.0"\n', "udp": 'protocol = "udp"\n'}
        if kind == "missing-cert":
            pair = Pair(tmp / "missing.pem", pair.key)
        if kind == "key-mismatch":
            pair = Pair(pair.cert, write_pair(tmp, authority.issue(["x"]), "other").key)
        if kind == "half-pair":
            return tls_table(pair).replace(f'tls_key = "{pair.key}"\n', "")
        return tls_table(pair, extra.get(kind, ""))

    return build


FORWARD = '[[listener]]\nname = "f"\nbind = "127.0.0.1:0"\nhandler = "forward"\n'


def _upstream_tls(kind: str) -> Callable[[Path], str]:
    """A forward that originates TLS: good, or with a key that cannot work."""

    def build(tmp: Path) -> str:
        from portd.tls.certs import Authority

        ca = tmp / "ca.pem"
        ca.write_bytes(Authority("corpus CA").cert_pem)
        keys = {
            "ok": f'upstream_tls = true\nupstream_ca = "{ca}"\n',
            "missing-ca": f'upstream_tls = true\nupstream_ca = "{tmp}/missing.pem"\n',
            "not-a-ca": f'upstream_tls = true\nupstream_ca = "{tmp}"\n',
            "without-tls": f'upstream_ca = "{ca}"\nupstream_servername = "db"\n',
            "key-only": f'upstream_tls = true\nupstream_key = "{ca}"\n',
            "udp": 'upstream_tls = true\nprotocol = "udp"\n',
        }
        return FORWARD + 'upstream = "127.0.0.1:9"\n' + keys[kind]

    return build


CORPUS: dict[str, Callable[[Path], str]] = {
    "echo-tcp-udp": lambda tmp: ECHO + ECHO.replace('"e"', '"u"') + 'protocol = "udp"\n',
    "unix-stream-and-datagram": lambda tmp: (
        f'[[listener]]\nbind = "unix:{tmp}/s.sock"\nhandler = "echo"\n'
        f'[[listener]]\nbind = "unix:{tmp}/d.sock"\nprotocol = "udp"\nhandler = "echo"\n'
    ),
    "unix-relative-path": lambda tmp: '[[listener]]\nbind = "unix:x.sock"\nhandler = "echo"\n',
    "unix-key-on-inet": lambda tmp: ECHO + 'socket_mode = "0600"\n',
    "unix-unknown-socket-user": lambda tmp: (
        f'[[listener]]\nbind = "unix:{tmp}/s.sock"\nhandler = "echo"\n'
        'socket_user = "no-such-user-here"\n'
    ),
    "unknown-key": lambda tmp: ECHO + "bogus = 1\n",
    "bad-bind": lambda tmp: ECHO.replace("127.0.0.1:0", "127.0.0.1:99999"),
    "prefix-contradicts-protocol": lambda tmp: (
        ECHO.replace("127.0.0.1:0", "udp:127.0.0.1:0") + 'protocol = "tcp"\n'
    ),
    "unknown-handler": lambda tmp: ECHO.replace('"echo"', '"no-such-handler"'),
    "duplicate-names": lambda tmp: ECHO + ECHO,
    "overlapping-binds": lambda tmp: (
        ECHO.replace(":0", ":7") + ECHO.replace('"e"', '"f"').replace("127.0.0.1:0", "*:7")
    ),
    "file-receive-ok": lambda tmp: receive(str(tmp / "in")),
    "file-receive-no-parent": lambda tmp: receive(str(tmp / "missing" / "in")),
    "file-receive-symlink": _symlinked,
    "file-receive-a-file": _a_file,
    "file-receive-relative": lambda tmp: receive("relative/in"),
    "deep-nesting": lambda tmp: "x = " + "[" * 600 + "]" * 600 + "\n",
    "huge-integer": lambda tmp: ECHO + "backlog = " + "9" * 5000 + "\n",
    "nul-in-bind": lambda tmp: ECHO.replace("127.0.0.1:0", "127.0.0.1\\u0000:0"),
    "abstract-control-socket": lambda tmp: '[daemon]\ncontrol_socket = "@portd"\n' + ECHO,
    "relative-control-socket": lambda tmp: '[daemon]\ncontrol_socket = "ctl.sock"\n' + ECHO,
    "no-listeners": lambda tmp: "[daemon]\n",
    "toxiproxy-api-with-workers": lambda tmp: (
        '[daemon]\ntoxiproxy_api = "127.0.0.1:0"\nworkers = 2\n' + ECHO
    ),
    "exec-ok": lambda tmp: EXEC + 'command = ["cat"]\n',
    "exec-string-without-shell": lambda tmp: EXEC + 'command = "cat -u"\n',
    "exec-program-not-found": lambda tmp: EXEC + 'command = ["no-such-program-here"]\n',
    "exec-user-with-daemon-user": lambda tmp: (
        '[daemon]\nuser = "nobody"\n' + EXEC + 'command = ["cat"]\nuser = "nobody"\n'
    ),
    **{
        f"tls-{kind}": _tls(kind)
        for kind in (
            "ok",
            "expired",
            "missing-cert",
            "key-mismatch",
            "bad-version",
            "udp",
            "half-pair",
        )
    },
    **{
        f"upstream-tls-{kind}": _upstream_tls(kind)
        for kind in ("ok", "missing-ca", "not-a-ca", "without-tls", "key-only", "udp")
    },
}


def serve_verdict(config: Path) -> tuple[int, list[str]]:
    """0 when the daemon got ready (then stopped), else its exit code and stderr lines."""
    with subprocess.Popen(
        [*PORTD, "serve", "-c", str(config), "--log-format", "json"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            if '"event": "daemon_ready"' in line:
                proc.terminate()
                proc.communicate(timeout=30)
                return 0, []
            lines.append(line.rstrip("\n"))
        return proc.wait(timeout=30), lines


@pytest.mark.parametrize("case", list(CORPUS))
def test_check_and_serve_give_the_same_verdict(tmp_path: Path, case: str) -> None:
    config = tmp_path / "portd.toml"
    config.write_text(CORPUS[case](tmp_path))
    checked = run_portd("check", str(config))
    served_code, served_lines = serve_verdict(config)
    assert (checked.returncode == 0) == (served_code == 0), (checked.stderr, served_lines)
    if checked.returncode:
        assert served_code == checked.returncode
        assert served_lines == checked.stderr.splitlines()
        assert all(line.startswith("portd: ") for line in served_lines)
        assert not any("Traceback" in line for line in served_lines)


def test_the_corpus_has_both_verdicts(tmp_path: Path) -> None:
    """A corpus of only good (or only bad) configs would prove nothing."""
    codes = set()
    for case, build in CORPUS.items():
        config = tmp_path / f"{case}.toml"
        config.write_text(build(_fresh(tmp_path, case)))
        codes.add(run_portd("check", str(config)).returncode)
    assert codes == {0, 78}


def _fresh(tmp_path: Path, case: str) -> Path:
    directory = tmp_path / f"case-{case}"
    directory.mkdir(exist_ok=True)
    return directory
