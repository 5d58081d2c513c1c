"""The README and docs/: every link resolves (file and heading), every page is reachable
from the README, and every docs page the code and params point users at exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens dropped, spaces
    to hyphens (``Mixing snapshots (SWA)`` → ``mixing-snapshots-swa``)."""
    text = re.sub(r"`|\*\*", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def test_slug_follows_github():
    assert slug("Mixing snapshots (SWA)") == "mixing-snapshots-swa"
    assert slug("reference and evaluate") == "reference-and-evaluate"
    assert (
        slug("Run it offline, or on your own pictures") == "run-it-offline-or-on-your-own-pictures"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_link_resolves_to_a_file_and_heading(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, broken


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in links(REPO / "README.md")}
    assert {p.resolve() for p in PAGES[1:]} <= linked


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 120


def test_docs_pages_named_in_code_and_params_exist():
    named = set()
    sources = [*REPO.glob("pipeline/**/*.py"), *REPO.glob("stages/*.py"), *REPO.glob("*.yaml")]
    for path in sources:
        text = path.read_text()
        named |= set(re.findall(r"docs/[\w-]+\.md", text))
        # sections moved out of the README are named by their docs page now
        assert not re.search(r"README[,:]? \"?(?!Quick start)[A-Za-z]", text), path
    assert named and all((REPO / name).is_file() for name in named), named
