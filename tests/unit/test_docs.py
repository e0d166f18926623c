"""The README and docs/ stay true to the tree: every relative link (and its #heading)
resolves, and every setting in settings.py is in the configuration table of
docs/operations.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tradeops.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target); the target up to a space, a quote or the closing bracket.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s\"']+)")


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # not code samples
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:", t)]


def anchors(page: Path) -> set[str]:
    """The #fragments GitHub gives a page's headings: lower case, punctuation dropped."""
    headings = re.findall(
        r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), re.M
    )
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def resolves(page: Path, target: str) -> bool:
    path, _, fragment = target.partition("#")
    linked = (page.parent / path) if path else page
    if not linked.exists():
        return False
    return not fragment or linked.suffix != ".md" or fragment in anchors(linked)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_a_file_of_the_tree(page: Path) -> None:
    assert [target for target in relative_links(page) if not resolves(page, target)] == []


def test_the_readme_links_every_page_of_docs() -> None:
    linked = {Path(t.split("#", 1)[0]).name for t in relative_links(ROOT / "README.md")}
    assert {p.name for p in PAGES[1:]} - linked == set()


def test_every_setting_is_in_the_configuration_table() -> None:
    table = (ROOT / "docs" / "operations.md").read_text()
    rows = "\n".join(line.split("|")[1] for line in table.splitlines() if line.startswith("| `"))
    missing = [
        f"TRADEOPS_{name.upper()}"
        for name in Settings.model_fields
        if f"`TRADEOPS_{name.upper()}`" not in rows
    ]
    assert missing == [], "add a row to docs/operations.md's configuration table"
