"""The documentation builds: `mkdocs build --strict` (a broken link between pages or to an anchor fails it),
every page is in the nav, and every link from the README or a page to a repository file resolves."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
README = REPO / "README.md"
# [text](target) and ![alt](target), outside code spans and blocks.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text without fenced code blocks or code spans, where brackets are code, not links."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))


def anchors(page: Path) -> set[str]:
    """The ids MkDocs and GitHub give a page's headings: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+ (.+)$", prose(page.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower())) for heading in headings}


def links(page: Path) -> list[tuple[Path, str]]:
    """Each link to a file of this repository, as the path it names and its anchor ("" for none). A link
    starting with / is from the repository root, as GitHub reads it; any other is from the page's folder."""
    found = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = REPO / path.lstrip("/") if path.startswith("/") else page.parent / path if path else page
        found.append((resolved.resolve(), anchor))
    return found


def test_the_site_builds_strictly(tmp_path):
    """Offline, into a temporary folder: a broken link between pages, a missing anchor or a page left out
    of the nav is a warning, and --strict makes a warning fail the build."""
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert "WARNING" not in completed.stderr
    assert (tmp_path / "site" / "index.html").is_file()


@pytest.mark.parametrize("target", ["/README.md", "/results/gpt2-cpu-sweep-plots/per-token.png", "../README.md"])
def test_the_strict_build_fails_on_a_link_to_a_file_the_site_does_not_contain(target, tmp_path):
    """The site holds docs/ alone: a link to another of the repository's files (the README, a results
    figure) leads nowhere there, so the strict build refuses it."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(f"# A page\n\nSee [it]({target}).\n")
    config.update(docs_dir=str(tmp_path / "docs"), nav=[{"Home": "index.md"}])
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode != 0 and target.lstrip("./") in completed.stderr, completed.stderr


def test_a_figure_the_docs_show_is_the_one_its_results_folder_has():
    """The site cannot show the repository's results/ folder, so docs/figures/ carries copies; a new plot
    must be copied again."""
    copied = {
        DOCS / "figures" / "per-token.png": REPO / "results" / "gpt2-cpu-sweep-plots" / "per-token.png",
    }
    assert sorted(copied) == sorted((DOCS / "figures").iterdir())
    for copy, original in copied.items():
        assert copy.read_bytes() == original.read_bytes(), f"{copy.name} differs from {original}"


def test_every_page_is_in_the_nav():
    def named(entries) -> list[str]:
        found = []
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            found += named(value) if isinstance(value, list) else [value]
        return found

    nav = named(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"])
    assert sorted(nav) == sorted(page.name for page in PAGES)


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda page: str(page.relative_to(REPO)))
def test_links_to_repository_files_resolve(page):
    for path, anchor in links(page):
        assert path.exists(), f"{page.name} links to {path.relative_to(REPO)}, which does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page.name} links to #{anchor}, not a heading of {path.name}"


def test_the_readme_links_into_every_docs_page():
    linked = {path for path, _ in links(README)}
    assert {page.resolve() for page in PAGES} <= linked


def test_the_readme_shows_no_images():
    """A wheel's metadata (the PyPI page) carries the README without the repository, so a relative image
    would break there; the figures live in the docs pages."""
    assert not re.search(r"!\[[^\]]*\]\(", prose(README.read_text(encoding="utf-8")))


def test_the_declared_license_ships_its_text():
    declared = re.search(r'^license = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert declared is not None and declared.group(1) == "MIT"
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
