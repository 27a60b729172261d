"""README's "Testing with portd" examples run as written: the pytest ones (sync and async)
through pytester, the unittest one through unittest, so the docs cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Testing with portd"


def readme_examples() -> list[str]:
    """The section's Python blocks, in order (the last one is a sketch, not run)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    if SECTION not in text:
        pytest.skip(f"README.md has no {SECTION!r} section yet")
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_pytest_examples_pass(pytester: pytest.Pytester) -> None:
    sync, asynchronous = readme_examples()[:2]
    pytester.makeini(
        "[pytest]\naddopts = -p no:cacheprovider -p no:hypothesispytest\n"
        "asyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
    )
    pytester.makepyfile(test_sync=sync, test_async=asynchronous)
    result = pytester.runpytest_subprocess()
    assert result.ret == 0, result.stdout.str()
    assert result.parseoutcomes()["passed"] >= 6


def test_the_unittest_example_passes(tmp_path: Path) -> None:
    (tmp_path / "readme_unittest.py").write_text(readme_examples()[2], encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-W", "error", "-m", "unittest", "readme_unittest"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stderr
