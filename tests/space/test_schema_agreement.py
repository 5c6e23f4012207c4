"""schema.json and validation come from one description (space/document.py): check that they
agree, document by document, on valid files and on many broken ones."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from msdn_tune.space import json_schema
from msdn_tune.space.document import SpaceDocument
from tests.space.test_space import base_doc

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"

# Values each key is replaced by in turn: every JSON type, boundaries, and values the format
# knows elsewhere (so a right value in a wrong place is tried too). No x.0 floats: JSON Schema
# counts 1.0 as an integer, YAML (and the validator) does not.
_POOL: list[Any] = [
    None, True, False, 0, 1, 2, -1, 0.5, 1.5, "x", "", "best/H", "tpe", "none", "float",
    [], [1], ["none", "none"], {}, {"type": "random"}, {"metric": "best/H"},
]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield prefix + (i,)
            yield from _paths(value, prefix + (i,))


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


def _documents() -> Iterator[Any]:
    multi = base_doc()
    multi["objective"] = [{"metric": "best/H"}, {"metric": "val/H", "mode": "min"}]
    bases = [multi, yaml.safe_load((SPACES / "demo.yaml").read_text())]
    for base in bases:
        yield base
        for path in _paths(base):
            for value in _POOL:
                doc = copy.deepcopy(base)
                _parent(doc, path)[path[-1]] = copy.deepcopy(value)
                yield doc
            doc = copy.deepcopy(base)
            parent = _parent(doc, path)
            if isinstance(parent, dict):
                del parent[path[-1]]
                yield doc
                doc = copy.deepcopy(base)
                _parent(doc, path)["unknown_key"] = 1
                yield doc


def _model_accepts(doc: Any) -> bool:
    """Whether the models accept the document's structure: errors of type "space" are the
    rules between keys (low < high, ...) that run once every key is valid, beyond any schema."""
    try:
        SpaceDocument.model_validate(doc)
    except ValidationError as exc:
        return all(e["type"] == "space" for e in exc.errors())
    return True


def test_schema_and_models_agree_on_generated_documents():
    validator = jsonschema.Draft202012Validator(json_schema())
    seen = valid = 0
    disagree = []
    for doc in _documents():
        seen += 1
        by_schema = validator.is_valid(doc)
        valid += by_schema
        if by_schema != _model_accepts(doc):
            disagree.append((by_schema, json.dumps(doc, default=str)[:300]))
    assert not disagree, f"{len(disagree)} of {seen} disagree, e.g. {disagree[:3]}"
    assert seen > 1000 and 0 < valid < seen  # both kinds were tried


def test_what_the_schema_rejects_load_rejects_too():
    """Validation checks more than the schema (conditions, the trainer's rules), never less."""
    from msdn_tune.errors import SpaceError
    from msdn_tune.space import parse_space

    validator = jsonschema.Draft202012Validator(json_schema())
    for doc in _documents():
        if not validator.is_valid(doc):
            with pytest.raises(SpaceError):
                parse_space(doc)


def test_space_validate_imports_no_torch_optuna_or_ray():
    code = (
        "import sys; from msdn_tune.space import load_space; "
        f"load_space({str(SPACES / 'demo.yaml')!r}); "
        "print(sorted(m for m in ('torch', 'optuna', 'ray', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
