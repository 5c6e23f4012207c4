"""Citations in the repository point at documents that exist in it, and at sections that exist.

Code comments cite reference documents as ``docs/model.md §1.4``, ``docs/model.md §1.2-§1.3``,
``docs/model.md §1.4 and §2.3``, ``docs/search.md B5`` or ``docs/search.md B10, C2, C4``. This
module checks, over every tracked text file:

(a) nothing cites a document that is not part of this repository (notes kept elsewhere);
(b) every ``docs/<name>.md`` exists, and every section identifier right after it is the first
    word of a heading in that document (``## §1 ...``, ``### §1.2 ...``, ``### B4 ...``).

Pure stdlib plus pytest: no network, no heavy imports.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()

#: Names of documents that live outside this repository; citing them leaves readers stranded.
FORBIDDEN = ("hpo-notes", "stack-facts", "msdn-model.md", "architecture-review", "style.md",
             "../shared", "shared/docs")

#: Sections other code relies on (cited from comments); they must keep these identifiers.
REQUIRED = {
    "model": ["1.2", "1.3", "1.4", "2.3", "3", "4", "4.2", "4.3", "5"],
    "search": ["B1", "B2", "B3", "B4", "B5", "B10", "B13", "B15", "C1", "C2", "C4", "C5", "D",
               "S2", "S4"],
}

# --- parsing -----------------------------------------------------------------------------------

# `docs/<name>.md`, also as `../docs/<name>.md`, but not inside a longer path or URL
# (`.../main/docs/x.md`, `mlflow.org/docs/...`).
_DOC = r"(?<![\w.\-/])(?:\.{1,2}/)*docs/(?P<name>[\w.\-]+(?:/[\w.\-]+)*)\.md"
# One section identifier: §1, §1.2 (numbers need the §), B4, D, S2, optionally written §D.
_ID = r"(?:§\d+(?:\.\d+)*|§?[A-Z]\d*)(?![\w§]|\.\d)"
# Identifiers joined by ranges (-, –) or lists (",", "and", "or", "&", "/").
_SEP = r"[ \t]*(?:-|–|,|&|/|\band\b|\bor\b)[ \t]*"
CITATION = re.compile(
    _DOC + r"(?:[`*]*[ \t]+|[`*]+[ \t]*)?" + r"(?P<ids>" + _ID + r"(?:" + _SEP + _ID + r")*)?"
)
_ONE_ID = re.compile(_ID)
_HEADING = re.compile(r"^#{1,6}[ \t]+(?P<text>.+?)[ \t#]*$")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")


def parse_citations(line: str) -> list[tuple[str, list[str]]]:
    """``[(doc name, [section ids])]`` for each ``docs/<name>.md`` citation in ``line``.

    Identifiers are returned without ``§`` (``"1.2"``, ``"B4"``, ``"D"``); a range contributes
    its two ends. A bare ``docs/x.md`` gives an empty list.
    """
    out = []
    for m in CITATION.finditer(line):
        ids = [i.lstrip("§") for i in _ONE_ID.findall(m.group("ids") or "")]
        out.append((m.group("name"), ids))
    return out


def heading_ids(markdown: str) -> set[str]:
    """First word of every heading (outside code fences), without a leading ``§``.

    ``### §1.2 AVA sub-net`` gives ``1.2``; ``### B4 TPE with ...`` gives ``B4``.
    """
    ids: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if m:
            first = m.group("text").split()[0].strip("*`:.")
            ids.add(first.lstrip("§"))
    return ids


@functools.cache
def _doc_ids(path: Path) -> frozenset[str] | None:
    if not path.is_file():
        return None
    return frozenset(heading_ids(path.read_text(encoding="utf-8")))


def check_line(line: str, where: str, docs_dir: Path = DOCS) -> list[str]:
    """Failure messages (``where: ...``) for the citations in one line."""
    failures = []
    for name, ids in parse_citations(line):
        ids_in_doc = _doc_ids(docs_dir / f"{name}.md")
        if ids_in_doc is None:
            failures.append(f"{where}: cites docs/{name}.md, which does not exist")
            continue
        missing = [i for i in ids if i not in ids_in_doc]
        if missing:
            shown = ", ".join(missing)
            failures.append(f"{where}: docs/{name}.md has no section {shown}")
    return failures


# --- the repository's files ----------------------------------------------------------------------


def tracked_text_files() -> list[tuple[str, str]]:
    """``(relative path, text)`` of every tracked, existing, non-binary file (docs/img left out)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"git ls-files unavailable: {exc}")
    files = []
    for raw in out.split(b"\0"):
        rel = raw.decode("utf-8", "surrogateescape")
        if not rel or rel.startswith("docs/img/"):
            continue
        path = ROOT / rel
        if not path.is_file():  # deleted or moved in the working tree
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        try:
            files.append((rel, data.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return files


@pytest.fixture(scope="module")
def repo_files() -> list[tuple[str, str]]:
    files = tracked_text_files()
    assert files, "git ls-files listed no text files"
    return files


def test_no_citations_of_documents_outside_the_repository(repo_files):
    failures = []
    for rel, text in repo_files:
        if rel == SELF:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            failures += [f"{rel}:{n}: mentions {s!r}: {line.strip()[:120]}"
                         for s in FORBIDDEN if s in line]
    assert not failures, "cites documents that are not in this repository:\n" + "\n".join(
        failures)


def test_citations_name_existing_documents_and_sections(repo_files):
    failures = []
    for rel, text in repo_files:
        if rel == SELF:  # its own samples of broken citations
            continue
        for n, line in enumerate(text.splitlines(), 1):
            failures += check_line(line, f"{rel}:{n}")
    assert not failures, "broken citations:\n" + "\n".join(failures)


@pytest.mark.parametrize("doc", sorted(REQUIRED))
def test_cited_sections_exist(doc):
    ids = _doc_ids(DOCS / f"{doc}.md")
    assert ids is not None, f"docs/{doc}.md is missing"
    missing = [i for i in REQUIRED[doc] if i not in ids]
    assert not missing, f"docs/{doc}.md lacks headings for {missing}"


# --- the parser itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("The maths follows docs/model.md §1.2-§1.3 (what the published MSDN code trains)",
         [("model", ["1.2", "1.3"])]),
        ('"""MSDN++ training losses (docs/model.md §1.4 and §2.3).', [("model", ["1.4", "2.3"])]),
        ("(reference docs/model.md §4.3) and refuses", [("model", ["4.3"])]),
        ("published MSDN training scripts (docs/model.md §3), so", [("model", ["3"])]),
        ("docs/model.md §1.2, §1.3 or §5.", [("model", ["1.2", "1.3", "5"])]),
        ("docs/model.md §1.2–§1.3", [("model", ["1.2", "1.3"])]),
        ("(docs/search.md B10, C2, C4; docs/search.md S2). `msdn-tune submit`",
         [("search", ["B10", "C2", "C4"]), ("search", ["S2"])]),
        ("# --- job submission (docs/search.md C2, docs/search.md S2) ----",
         [("search", ["C2"]), ("search", ["S2"])]),
        ("Layout in MLflow (``docs/search.md`` D): one experiment", [("search", ["D"])]),
        ("(docs/search.md B5), so `study.best_trial`, TPE", [("search", ["B5"])]),
        ("docs/search.md B5, Optuna then", [("search", ["B5"])]),
        ("docs/search.md B10 and C4.", [("search", ["B10", "C4"])]),
        ("see docs/search.md §D", [("search", ["D"])]),
        ("# Layout (docs/search.md C1, C5):", [("search", ["C1", "C5"])]),
        ("[notes](../docs/search.md) say", [("search", [])]),
        ("see docs/model.md.", [("model", [])]),
        ("docs/search.md Ray's own", [("search", [])]),
        ("docs/model.md 3 times", [("model", [])]),
        ("https://github.com/o/r/blob/main/docs/other.md and mlflow.org/docs/latest", []),
        ("no citation here: docs/img/mlflow-ui.png", []),
    ],
)
def test_parse_citations(line, expected):
    assert parse_citations(line) == expected


def test_heading_ids():
    md = ("# Title\n\n## §1 Part\n### §1.2 Sub\n#### §1.2.1 Deeper\n## D MLflow\n### B4 TPE\n"
          "```\n# §9 inside a code fence\n```\n### S2 Ray basics ###\n")
    assert heading_ids(md) == {"Title", "1", "1.2", "1.2.1", "D", "B4", "S2"}


def test_check_line_against_the_real_documents():
    good = ("docs/model.md §1.2-§1.3 and docs/model.md §1.4 and §2.3; "
            "docs/search.md B10, C2, C4; ``docs/search.md`` D; docs/search.md S4")
    assert check_line(good, "sample:1") == []
    bad = check_line("docs/model.md §8 and docs/search.md B99; docs/nowhere.md", "sample:2")
    assert bad == ["sample:2: docs/model.md has no section 8",
                   "sample:2: docs/search.md has no section B99",
                   "sample:2: cites docs/nowhere.md, which does not exist"]
