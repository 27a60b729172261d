"""What a user installs: a wheel built with the oldest hatchling pyproject.toml allows, into
a clean venv, works without the checkout (example config, units, man page, version);
and the metadata promises only what exists (one version, no lint tools for users).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import portd

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
INSTALL_TIMEOUT_S = 300


def run(
    *argv: str | Path, cwd: Path | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in argv], capture_output=True, text=True, check=False,
        timeout=INSTALL_TIMEOUT_S, cwd=cwd, input=input,
    )  # fmt: skip


def hatchling_floor() -> str:
    (requirement,) = PYPROJECT["build-system"]["requires"]
    found = re.fullmatch(r"hatchling>=([\d.]+)", requirement)
    assert found, requirement
    return found.group(1)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built without isolation by exactly the lowest allowed hatchling."""
    work = tmp_path_factory.mktemp("build")
    builder = work / "builder"
    assert run(sys.executable, "-m", "venv", builder).returncode == 0
    pip = builder / "bin" / "pip"
    floor = hatchling_floor()
    installed = run(pip, "install", "-q", f"hatchling=={floor}.*")
    assert installed.returncode == 0, installed.stderr
    built = run(pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", work, ROOT)
    assert built.returncode == 0, built.stderr
    (found,) = work.glob("portd-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the wheel and its dependencies; returns its bin/."""
    venv = tmp_path_factory.mktemp("clean") / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    done = run(venv / "bin" / "pip", "install", "-q", wheel)
    assert done.returncode == 0, done.stderr
    return venv / "bin"


def test_the_wheel_holds_the_example_config_units_and_man_page(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "portd/config.example.toml" in names
    assert "portd/systemd_units/portd.service" in names
    assert f"portd-{portd.__version__}.data/data/share/man/man1/portd.1" in names


def test_example_config_checks_in_a_clean_venv(installed: Path, tmp_path: Path) -> None:
    """README's install steps, from a wheel: no checkout anywhere near (cwd is empty)."""
    example = run(installed / "portd", "example-config", cwd=tmp_path)
    assert example.returncode == 0, example.stderr
    assert example.stdout == (ROOT / "config.example.toml").read_text(encoding="utf-8")
    checked = run(installed / "portd", "check", "-", input=example.stdout, cwd=tmp_path)
    assert (checked.returncode, checked.stderr) == (0, "")
    assert checked.stdout.splitlines()[0] == "<stdin>: OK, 3 listeners"


def test_the_installed_portd_knows_its_version_and_ships_units(
    installed: Path, tmp_path: Path
) -> None:
    version = run(installed / "portd", "--version", cwd=tmp_path)
    assert version.stdout == f"portd {portd.__version__}\n"
    (tmp_path / "portd.toml").write_text((ROOT / "config.example.toml").read_text())
    units = run(installed / "portd", "units", "portd.toml", cwd=tmp_path)
    assert units.returncode == 0, units.stderr
    assert "ExecReload=/usr/local/bin/portd reload -c " in units.stdout
    assert (installed.parent / "share" / "man" / "man1" / "portd.1").is_file()


def test_lint_tools_are_development_dependencies_only() -> None:
    extras = PYPROJECT["project"].get("optional-dependencies", {})
    user_facing = " ".join(" ".join(deps) for deps in extras.values())
    assert "ruff" not in user_facing
    assert "mypy" not in user_facing
    lint = " ".join(map(str, PYPROJECT["dependency-groups"]["lint"]))
    assert "ruff==" in lint
    assert "mypy==" in lint


def test_one_version_one_source() -> None:
    assert "version" not in PYPROJECT["project"]
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "portd/__init__.py"


def test_classifiers_name_the_pythons_ci_runs() -> None:
    classifiers = PYPROJECT["project"]["classifiers"]
    for minor in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {minor}" in classifiers
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"


def test_no_link_points_at_a_page_that_does_not_exist() -> None:
    """portd is installed from a checkout or a wheel: no package index page to link to."""
    assert "urls" not in PYPROJECT["project"]
    from tests.docs import PAGES

    for path in [*PAGES, *sorted((ROOT / "systemd").iterdir())]:
        assert "pypi.org" not in path.read_text(encoding="utf-8"), path
