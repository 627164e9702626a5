"""The repository speaks only of itself: its design page is in docs/, every
"design §N" reference resolves to a section of it, and every relative link in
the Markdown pages leads to a file (and heading) that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", "tidings-data", ".pytest_cache",
             ".mypy_cache", ".ruff_cache", ".hypothesis", "build", "dist"}
TEXT = {".py", ".md", ".js", ".html", ".css", ".toml", ".sql", ".lua", ".yml", ".yaml", ".cfg",
        ".txt", ""}


def repo_files() -> list[Path]:
    """The repository's files: git's view (tracked and new, not ignored) in a
    checkout, else a walk that skips what a checkout would ignore."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        listed = None
    if listed is not None:
        return [ROOT / name for name in listed.stdout.splitlines()
                if Path(name).suffix in TEXT and (ROOT / name).is_file()]
    out = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.is_file() and path.suffix in TEXT:
            out.append(path)
    return out


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    found = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6} (.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def design_sections() -> set[str]:
    text = (ROOT / "docs" / "design.md").read_text()
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, re.M))


def test_no_reference_to_files_outside_the_repository():
    # spelled in pieces so that this file does not match itself
    outside = ["DESIGN" + ".md", "DESIGN" + " §", "../" + "shared", "research" + "/",
               "/work" + "/"]
    offenders = []
    for path in repo_files():
        text = path.read_text(errors="replace")
        for needle in outside:
            if needle in text:
                offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not offenders, offenders


def test_every_design_reference_names_a_section_that_exists():
    sections = design_sections()
    assert {"1", "2", "2.1", "2.8", "3", "4", "5", "6"} <= sections
    refs = []
    for path in repo_files():
        for m in re.finditer(r"design(?:\.md)? §(\d+(?:\.\d+)?)", path.read_text(errors="replace")):
            refs.append((path.relative_to(ROOT), m.group(1)))
    assert len(refs) > 20  # code, tests, docs and bench all cite it
    missing = [(str(p), s) for p, s in refs if s not in sections]
    assert not missing, missing


def test_relative_links_in_markdown_resolve():
    broken = []
    for path in repo_files():
        if path.suffix != ".md":
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("/"):
                continue  # a URL, or a path on a running server
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_no_markdown_line_runs_away():
    # A performance-table row is long (about 1,200 characters), but an edit once
    # inserted its new text between every character of the old row (380,000);
    # the page still rendered and every other test passed.
    long = [f"{p.relative_to(ROOT)}:{i}: {len(line):,} characters"
            for p in repo_files() if p.suffix == ".md"
            for i, line in enumerate(p.read_text().splitlines(), 1) if len(line) > 5000]
    assert not long, long
