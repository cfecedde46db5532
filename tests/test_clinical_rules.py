"""The rulebook is in the repository: docs/clinical-rules.md.

Citations in code, mapping files, profiles and docs point at the rulebook (``docs/clinical-rules.md#<anchor>``)
or at a primary source — never at notes outside the project. Every cited anchor exists.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULEBOOK = ROOT / "docs" / "clinical-rules.md"
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache", ".pytest_cache",
             ".ruff_cache", "build", "dist"}
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".json", ".toml", ".txt", ".j2", ".mjs", ".js", ".cfg", ".ini", ".csv",
                 ".html", ".xml", ".sh"}
# notes that are not part of the project (spelled in pieces so this file does not match itself)
OUTSIDE = re.compile("|".join([r"decisions\.md", "clinical" + "-reference", "shared" + "/reference",
                               r"\.\./" + "shared"]))
CITATION = re.compile(r"clinical-rules\.md#([A-Za-z0-9_-]+)")
ANCHOR = re.compile(r"""<a id="([A-Za-z0-9_-]+)"></a>""")


def _project_files() -> list[Path]:
    out = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name == "Makefile"):
            out.append(path)
    return out


def _anchors() -> list[str]:
    return ANCHOR.findall(RULEBOOK.read_text(encoding="utf-8"))


def test_no_citation_of_notes_outside_the_project() -> None:
    hits = []
    for path in _project_files():
        for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()}")
    assert not hits, ("cite docs/clinical-rules.md#<anchor> or the primary source instead:\n" + "\n".join(hits))


def test_citations_name_an_anchor() -> None:
    """A rule is cited by its anchor (``docs/clinical-rules.md#missing-is-not-zero``), not by a heading title."""
    by_title = re.compile(r'clinical-rules\.md "')
    hits = [f"{path.relative_to(ROOT)}:{no}: {line.strip()}" for path in _project_files()
            for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if by_title.search(line)]
    assert hits == [], "cite docs/clinical-rules.md#<anchor>:\n" + "\n".join(hits)


def test_rulebook_anchors_are_unique() -> None:
    anchors = _anchors()
    assert len(anchors) > 40
    assert len(anchors) == len(set(anchors)), sorted(a for a in anchors if anchors.count(a) > 1)


def test_every_cited_anchor_exists() -> None:
    anchors = set(_anchors())
    missing = []
    cited = 0
    for path in _project_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for no, line in enumerate(text.splitlines(), 1):
            for anchor in CITATION.findall(line):
                cited += 1
                if anchor not in anchors:
                    missing.append(f"{path.relative_to(ROOT)}:{no}: #{anchor}")
    assert cited > 40   # code, mapping files and docs cite the rulebook
    assert not missing, "no such anchor in docs/clinical-rules.md:\n" + "\n".join(missing)


def test_links_inside_the_rulebook_resolve() -> None:
    anchors = set(_anchors())
    links = re.findall(r"\]\(#([A-Za-z0-9_-]+)\)", RULEBOOK.read_text(encoding="utf-8"))
    assert links
    assert sorted(set(links) - anchors) == []


def test_every_rule_file_cites_the_rulebook() -> None:
    """Each rule file of the shipped study names the rule it configures."""
    study = ROOT / "mappings" / "lcar-aio"
    uncited = [p.name for p in sorted(study.glob("*.yaml"))
               if p.name not in {"items.yaml"} and not CITATION.search(p.read_text(encoding="utf-8"))]
    assert uncited == []
