"""README's "Testing with portd" examples run as written: the pytest ones (sync and async)
through pytester, the unittest one through unittest, so the docs cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs import blocks, section

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
SECTION = "Testing with portd"


def readme_examples() -> list[str]:
    """The section's Python blocks, in order (the last one is a sketch, not run)."""
    return blocks("python", section(SECTION))


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


def test_the_forward_examples_pass(pytester: pytest.Pytester) -> None:
    (forward,) = [block for block in readme_examples() if "portd_forward" in block]
    pytester.makeini(
        "[pytest]\naddopts = -p no:cacheprovider -p no:hypothesispytest\n"
        "asyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
    )
    pytester.makepyfile(test_forward=forward)
    result = pytester.runpytest()
    assert result.ret == 0, result.stdout.str()
    assert result.parseoutcomes()["passed"] == 4


def test_the_readme_tour_example_passes(pytester: pytest.Pytester) -> None:
    """README's own "Real ports for tests" block, the one a newcomer reads first."""
    (tour,) = blocks("python", section("Real ports for tests"))
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider -p no:hypothesispytest\n")
    pytester.makepyfile(test_tour=tour)
    result = pytester.runpytest_subprocess()
    assert result.ret == 0, result.stdout.str()
    assert result.parseoutcomes()["passed"] == 1
