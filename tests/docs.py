"""The user documentation the tests run: README.md and the docs/ pages it links.

Examples live wherever a reader finds them (README keeps the set-up commands and a
tour; reference sections are pages under docs/), so the tests read every page as one
text and find a section by its title, at whatever heading level it sits.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README_PATH = ROOT / "README.md"
PAGES = (README_PATH, *sorted((ROOT / "docs").glob("*.md")))
TEXT = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
HEADING = re.compile(r"^(#+) (.+)$")


def headings(text: str) -> list[tuple[int, str, int, int]]:
    """(level, title, start, end) of each heading, skipping fenced code (where
    ``# portd serve`` is a root prompt, not a heading)."""
    found, offset, fenced = [], 0, False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line.rstrip("\n"))):
            found.append((len(match.group(1)), match.group(2).strip(), offset, offset + len(line)))
        offset += len(line)
    return found


def section(title: str, text: str = TEXT) -> str:
    """The body under the heading ``title`` (any level), up to the next heading of the
    same or a higher level: its subsections included.

    Raises:
        LookupError: no heading or more than one is called that (a test would read
            the wrong text).
    """
    every = headings(text)
    found = [i for i, heading in enumerate(every) if heading[1] == title]
    if len(found) != 1:
        raise LookupError(f"{len(found)} headings are called {title!r}")
    level, _, _, start = every[found[0]]
    ends = [h[2] for h in every[found[0] + 1 :] if h[0] <= level]
    return text[start : ends[0]] if ends else text[start:]


def blocks(kind: str, text: str = TEXT) -> list[str]:
    """The fenced code blocks of one kind (```toml, ```console, ...), in order."""
    return re.findall(rf"```{kind}\n(.*?)```", text, flags=re.S)
