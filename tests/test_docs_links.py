"""The README front page and its reference pages under docs/: every local link resolves, the
quick start's test command is the one CI runs, the front page stays short (issue #27)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m[1]) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_local_link_resolves(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        assert dest.exists(), f"{page.name}: {target}"
        if anchor:
            assert anchor in _anchors(dest), f"{page.name}: {target}"


def test_the_front_page_links_every_reference_page_and_stays_short() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in ("DATA", "PROVIDERS", "OPTIONS", "STATISTICS", "SPEED", "GUARANTEES"):
        assert f"](docs/{name}.md)" in readme, name
    for section in ("## Quick start", "## The reference study on the Kaggle data", "## Commands"):
        assert section in readme
    assert len(readme.splitlines()) < 200


def test_the_quick_start_test_command_is_what_ci_runs() -> None:
    ci = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.startswith("pip install")
    ]
    readme = (ROOT / "README.md").read_text()
    assert ci and f"&& {ci[0].replace(' -q', '')}" in readme, ci
