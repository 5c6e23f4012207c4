"""The package's shape, as ARCHITECTURE.md states it: modules stay small unless they hold one
concept, and the documented module table lists every module that exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "msdn_tune"
LIMIT = 500  # lines; a longer module says in its docstring which one concept it holds


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_long_modules_say_which_one_concept_they_hold():
    offenders = []
    for path in _modules():
        lines = path.read_text().count("\n")
        if lines <= LIMIT:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if "One concept:" not in doc:
            offenders.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not offenders, (f"modules over {LIMIT} lines whose docstring does not name their one "
                           f"concept ('One concept: ...'): {', '.join(offenders)}")


def test_every_module_has_a_docstring():
    missing = [str(p.relative_to(ROOT)) for p in _modules()
               if p.read_text().strip() and not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"modules without a docstring: {missing}"


def test_architecture_md_lists_every_module_and_no_missing_one():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    listed = set(re.findall(r"`(msdn_tune/[\w/]+\.py)`", text))
    actual = {str(p.relative_to(ROOT)) for p in _modules()
              if p.name != "__init__.py" or p.read_text().strip()}
    assert not (listed - actual), f"ARCHITECTURE.md lists missing modules: {listed - actual}"
    unlisted = {m for m in actual - listed if not m.endswith("__init__.py")}
    assert not unlisted, f"modules missing from ARCHITECTURE.md: {sorted(unlisted)}"
