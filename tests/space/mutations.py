"""Hypothesis strategies that mutate valid space documents (shared by the fuzz test and the
schema-agreement test): values of every type at any key, huge and negative numbers, wrong
containers, unicode, deep nesting, long strings, deleted and unknown keys."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from tests.space.test_space import base_doc

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"


def bases() -> list[dict[str, Any]]:
    """Valid documents to start from: the test's base, a multi-objective one, the shipped files."""
    multi = base_doc()
    multi["objective"] = [{"metric": "best/H"}, {"metric": "val/H", "mode": "min"}]
    multi["sampler"] = {"type": "nsga2", "seed": 1, "population_size": 4}
    shipped = [yaml.safe_load(p.read_text()) for p in sorted(SPACES.glob("*.yaml"))]
    return [base_doc(), multi, *shipped]


BASES = bases()

_BOUNDARY_INTS = [
    0, 1, -1, 2, 8, 2**31 - 1, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1,
    2**64, 10**30, 10**400, -(10**400),
]
_BOUNDARY_FLOATS = [
    0.0, -0.0, 0.5, 1.5, 1e-9, 5e-324, 1e10, 1e300, 1.7e308, -1.7e308, sys.float_info.max,
    float("inf"), float("-inf"), float("nan"),
]
_WORDS = [
    "", "tpe", "asha", "none", "float", "int", "categorical", "best/H", "val/H", "max", "min",
    "demo", "synthetic", "${HOME}", "${MSDN_T_UNSET:-${MSDN_T_UNSET2:-/x}}", "${", "a\0b",
    "ünïcödé ☃ \u2028 \ufeff", "x" * 300, "/tmp/" + "y" * 260, "-", "~", "./rel", "s3://b/k",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(_BOUNDARY_INTS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(_BOUNDARY_FLOATS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(_WORDS),
    st.text(max_size=20),
    st.text(min_size=200, max_size=2000),
)


def _nest(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


values = st.one_of(
    scalars,
    st.lists(scalars, max_size=5),
    st.dictionaries(st.sampled_from(["type", "seed", "low", "x", "metric"]), scalars, max_size=3),
    st.builds(_nest, scalars, st.integers(min_value=1, max_value=100)),
    st.just(["float"] * 2000),
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path of a document, down to the depth of a real space file."""
    if len(prefix) >= 6:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield prefix + (i,)
            yield from paths(value, prefix + (i,))


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@st.composite
def mutated(draw: st.DrawFn, value_strategy: st.SearchStrategy[Any] = values) -> dict[str, Any]:
    """A valid document with one to three mutations."""
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        where = list(paths(doc))
        if not where:
            break
        path = draw(st.sampled_from(where))
        parent = _parent(doc, path)
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        if action == "replace":  # a copy: st.just() hands out one object, never share it
            parent[path[-1]] = copy.deepcopy(draw(value_strategy))
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            key = draw(st.one_of(st.sampled_from(["unknown_key", "seed", "type"]), st.text()))
            parent[key] = copy.deepcopy(draw(value_strategy))
    return doc


schema_values = st.one_of(
    scalars,
    st.lists(scalars, max_size=5),
    st.dictionaries(st.sampled_from(["type", "seed", "low", "x", "metric"]), scalars, max_size=3),
)
"""Values for documents given to both schema.json and the validator: no deep nesting (the
validator's YAML loader refuses it, jsonschema recurses into it)."""
