"""The repository's promises to users and CI: README's commands and .ci/run agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from portd.endpoints.inet import InetAddress

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """The shell commands of README.md's code blocks marked `sh`, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S)]


def test_readme_opens_with_exactly_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    head = text.split("\n## ", 1)[0]
    assert len(re.findall(r"```sh\n", head)) == 2
    serve, test = readme_commands()[:2]
    assert "portd serve -c config.example.toml" in serve
    assert "pytest" in test


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = readme_commands()[1]
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci_lines


def test_example_config_serves_only_loopback_high_ports() -> None:
    from portd.config import load_config

    config = load_config(ROOT / "config.example.toml")
    for listener in config.listeners:
        for address in listener.addresses:
            assert isinstance(address, InetAddress)
            assert address.host in ("127.0.0.1", "::1")
            assert address.port >= 1024


def test_the_readme_test_command_installs_the_lint_tools() -> None:
    """ruff and mypy are a dependency group, not an extra: the command must ask for it."""
    test_command = readme_commands()[1]
    assert "--group lint" in test_command
    assert "'pip>=25.1'" in test_command  # the first pip that reads [dependency-groups]


def test_no_absolute_machine_paths_in_repository_files() -> None:
    """Files travel between machines: no developer's home or work tree in them."""
    import subprocess

    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    if listed.returncode != 0:
        pytest.skip("not a git checkout (an unpacked sdist)")
    files = listed.stdout.split()
    for name in files:
        path = ROOT / name
        if (
            path.suffix in {".py", ".md", ".toml", ".service", ".socket", ".1", ""}
            and path.is_file()
        ):
            text = path.read_text(encoding="utf-8", errors="replace")
            for forbidden in ("/" + "work/", "/" + "root/"):  # split: this file is checked too
                assert forbidden not in text, f"{name} names {forbidden}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    """A page no link reaches is a page nobody reads."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name}" in readme, f"README links no docs/{page.name}"


def test_relative_links_in_the_docs_resolve() -> None:
    """Links between README and docs/ pages (and their #anchors) reach something."""
    from tests.docs import PAGES, headings

    def anchor(title: str) -> str:  # GitHub's rule: lower case, punctuation out, - for spaces
        return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")

    anchors = {page: {anchor(h[1]) for h in headings(page.read_text("utf-8"))} for page in PAGES}
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            name, _, fragment = target.partition("#")
            linked = (page.parent / name).resolve() if name else page
            assert linked.exists(), f"{page.name} links {target}: no such file"
            if fragment and linked.suffix == ".md":
                assert fragment in anchors[linked], f"{page.name} links {target}: no such heading"
