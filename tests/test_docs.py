"""The user's guide and docs/: the README stays short, every relative link resolves, every algorithm has its page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedbrick_flower.registry import algorithm_names

ROOT = Path(__file__).resolve().parents[1]
GUIDES = ("README.md", "bench/README.md", "deploy/README.md")
DOCS = sorted([*(ROOT / name for name in GUIDES), *ROOT.glob("docs/**/*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
MAX_README_LINES = 400


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", text), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def relative_links(text: str) -> list[str]:
    """The link targets of a Markdown file outside code blocks, less web addresses."""
    return [target for target in LINK.findall(FENCE.sub("", text)) if not re.match(r"[a-z]+:", target)]


def test_heading_anchors_follow_github() -> None:
    # Execute
    anchors = heading_anchors("# Title\n## Leaderboard: the `depth` suite's +2 setting, 8 rounds\n```\n# not one\n```")

    # Assert
    assert anchors == {"title", "leaderboard-the-depth-suites-2-setting-8-rounds"}


def test_readme_is_a_short_guide() -> None:
    # Execute
    lines = (ROOT / "README.md").read_text().splitlines()

    # Assert
    assert len(lines) <= MAX_README_LINES


@pytest.mark.parametrize("document", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(document: Path) -> None:
    # Prepare
    text = document.read_text()

    # Execute
    broken = []
    for target in relative_links(text):
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
            broken.append(target)

    # Assert
    assert broken == []


def test_every_algorithm_has_a_page_with_its_departures() -> None:
    # Prepare
    index = (ROOT / "docs" / "algorithms.md").read_text()

    # Execute
    pages = {}
    for name in algorithm_names():
        first_cell = rf"^\|[^|\n]*`{re.escape(name)}`[^|\n]*\|"
        row = re.search(first_cell + r"[^\n]*?\]\((algorithms/[\w.-]+\.md)\)", index, re.MULTILINE)
        pages[name] = ROOT / "docs" / row.group(1) if row else None

    # Assert
    assert {name for name, page in pages.items() if page is None} == set()
    for name, page in pages.items():
        assert "\n## Departures\n" in page.read_text(), name


@pytest.mark.parametrize("document", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_placeholder_is_left_where_figures_belong(document: Path) -> None:
    # Prepare: a line that is one upper-case word (FIGURES, BF16_TABLE...) is a stand-in nobody filled in
    text = FENCE.sub("", document.read_text())

    # Execute
    placeholders = re.findall(r"^[A-Z][A-Z0-9_]{3,}$", text, re.MULTILINE)

    # Assert
    assert not placeholders, f"{document.name}: fill in {placeholders}"
