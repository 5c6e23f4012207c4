"""The JSON Schema of the space file (search_spaces/schema.json, for editors and CI), generated
from the models in :mod:`msdn_tune.space.document`, so it says what validation checks.

Pydantic's output is post-processed into plain draft 2020-12: titles dropped, `int | float`
written as "number", nullable scalars as a type list, and its own constraint names ("gt")
left on a union turned into the standard ones.
"""

from __future__ import annotations

from typing import Any

from msdn_tune.space.document import SpaceDocument
from msdn_tune.space.options import FORMAT_VERSION

_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}
_SIMPLE = {"type", "enum", "const", *_BOUNDS.values()}


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the file format, for editors and CI.

    It checks shape and types; `load_space` additionally checks what a schema cannot (ranges
    against each other, conditions, the trainer's own rules). Regenerate the shipped file with
    ``python -m msdn_tune.space > search_spaces/schema.json``.
    """
    body = _clean(SpaceDocument.model_json_schema())
    body.pop("description", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://msdn-tune.invalid/search-space-v{FORMAT_VERSION}.json",
        "title": f"msdn-tune search space (version {FORMAT_VERSION})",
        **body,
    }


def _clean(node: Any) -> Any:
    if isinstance(node, list):
        return [_clean(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _clean(v) for k, v in node.items() if k != "title" or not isinstance(v, str)}
    if "properties" in node:  # a property may be called anything: clean its schema, keep its name
        out["properties"] = {k: _clean(v) for k, v in node["properties"].items()}
    for ours, standard in _BOUNDS.items():
        if ours in out:
            out[standard] = out.pop(ours)
    members = out.get("anyOf")
    if (isinstance(members, list) and all(set(m) <= _SIMPLE for m in members)
            and _mergeable(members)):
        out.pop("anyOf")
        out.update(_merge(members))
    return out


def _mergeable(members: list[dict[str, Any]]) -> bool:
    """Whether `_merge` keeps the members' meaning: a value list (enum/const) restricts the
    merged schema to it, so either every member other than null has one, or none has."""
    listed = [("enum" in m or "const" in m) for m in members if m.get("type") != "null"]
    return all(listed) or not any(listed)


def _merge(members: list[dict[str, Any]]) -> dict[str, Any]:
    """One schema for `anyOf` members that differ only in type (bounds and enums kept)."""
    types: list[str] = []
    merged: dict[str, Any] = {}
    for m in members:
        kind = m.get("type")
        if kind is not None and kind not in types:
            types.append(kind)
        for key, value in m.items():
            if key in ("enum", "const"):
                merged.setdefault("enum", []).extend(value if key == "enum" else [value])
            elif key != "type":
                merged[key] = value
    if "integer" in types and "number" in types:
        types.remove("integer")
    if "enum" in merged and "null" in types:
        merged["enum"].append(None)
    return {"type": types[0] if len(types) == 1 else types, **merged}
