"""schema.json and validation come from one description (space/document.py): check that they
agree, document by document, on valid files and on many broken ones."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from pydantic import ValidationError

from msdn_tune.space import json_schema
from msdn_tune.space.document import SpaceDocument
from tests.space.mutations import mutated, schema_values
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
            disagree.append((by_schema, json.dumps(doc, default=str)[-400:]))
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


# ------------------------------------------------------------------------------------------------
# The same generated files through both: schema.json and the whole validator (issue 14)

BEYOND_SCHEMA: dict[str, str] = {
    "low < high": r"\.low: must be < high",
    "log scale: low > 0, no grid": r"log scale needs low > 0|cannot be combined with log|"
    r"must be 1 with log",
    "the grid fits the range (step <= high - low, a whole number of steps, finite width)": (
        r"multiple of step|must be at most high - low|too small for the range|largest float"
    ),
    "TrainConfig's own rules for fixed settings": (
        r"fixed\.\w+: (must be in |must be >= |a causal loss|effect logits|expected auto)"
    ),
    "a searched setting's kind, choices and bounds (TrainConfig)": (
        r"rejected by the trainer|the trainer rejects|takes whole numbers|is a true/false "
        r"setting|is a text setting|must be in \d+\.\.\d+|params\.\w+\.choices\[\d+\]: "
        r"(expected|unknown)"
    ),
    "a setting is fixed or searched": r"also set under fixed",
    "conditions (`when`) between parameters": (
        r"condition|can never be active|cannot depend on itself|'s choices"
    ),
    "ASHA's max_t and grace_period against the epochs a trial runs": (
        r"scheduler\.(max_t|grace_period): must be"
    ),
    "sampler options that depend on each other or on the objectives": (
        r"needs multivariate|optimises a single objective|needs the `cmaes` package"
    ),
    "an objective listed twice": r"is listed twice",
    "gpu: 0, at least 0.0001, a fraction below 1 or a whole number": (
        r"resources\.gpu: must be (a fraction|0 or at least)"
    ),
    "${VAR} expansion and path limits (after expansion)": (
        r"environment variable|variable reference|NUL|longer than the \d+|data: must not be empty"
    ),
    "NaN: JSON has no NaN, so its Schema cannot refuse one": r"\(got nan\)",
    "8.0 as an integer: JSON Schema counts 8.0 as an integer, the validator (like YAML) does not": (
        r"expected an integer \(got -?\d+\.0;"
    ),
}
"""The rules schema.json cannot state, each with the pattern of the validator's message: the
only reasons a file the schema accepts may still be refused. Keep this list small: a rule that a
schema can say belongs in the models of space/document.py, from which the schema is generated."""


def _validator_verdict(doc: Any) -> str | None:
    """None when the whole `space validate` accepts `doc`, else its message."""
    from msdn_tune.commands.space import check_round_trip
    from msdn_tune.errors import SpaceError
    from msdn_tune.integrations.optuna import check_space
    from msdn_tune.space import parse_space

    try:
        spec = parse_space(doc, source="g.yaml")
        check_space(spec)
        check_round_trip(spec)
    except SpaceError as exc:
        return str(exc)
    return None


def _agreement(validator: jsonschema.Draft202012Validator, doc: Any) -> None:
    by_schema = validator.is_valid(doc)
    refusal = _validator_verdict(doc)
    shown = json.dumps(doc, default=str)[:400]
    if not by_schema:
        assert refusal is not None, f"the schema refuses what the validator accepts: {shown}"
        return
    if refusal is not None:
        rules = [name for name, pattern in BEYOND_SCHEMA.items() if re.search(pattern, refusal)]
        assert rules, f"the schema accepts, the validator refuses by an unlisted rule: {refusal}"


_SCHEMA_VALIDATOR = jsonschema.Draft202012Validator(json_schema())


@pytest.mark.slow  # 300 generated documents; the two checks above stay in the fast tier
@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutated(schema_values))
def test_schema_accepts_exactly_what_the_validator_accepts(doc):
    _agreement(_SCHEMA_VALIDATOR, doc)


@pytest.mark.parametrize(
    "path,value",
    [
        (("params", "batch_size", "step"), None),  # the known case: null means 1 in both now
        (("params", "batch_size", "step"), 64),
        (("params", "margin", "step"), 1.0e10),
        (("fixed", "seed"), 2**70),
        (("sampler", "seed"), -1),
        (("sampler", "seed"), 2**40),
        (("params", "batch_size", "step"), 10**400),
        (("params", "margin", "step"), 5.0e-324),
        (("fixed", "w1"), 10**400),
    ],
)
def test_schema_and_validator_on_the_issue_cases(path, value):
    doc = base_doc()
    _parent(doc, path)[path[-1]] = value
    _agreement(_SCHEMA_VALIDATOR, doc)
