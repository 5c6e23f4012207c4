"""Error wording for space files: pydantic's validation errors rewritten as our messages.

Every message names the file, the key path (``params.lr.low``), the bad value (truncated) and
what was expected, with a "did you mean" hint for a misspelt key or value, because a typo in a
study file silently wastes hours of GPU time. The rules come from the models
(:mod:`msdn_tune.space.document`); this module only words them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from msdn_tune.errors import SpaceError
from msdn_tune.safeload import shorten
from msdn_tune.space.document import (
    NOT_SEARCHABLE,
    CategoricalParam,
    FloatParam,
    IntParam,
    ObjectiveDoc,
    SpaceDocument,
)
from msdn_tune.space.options import (
    EPOCH_METRICS,
    FLOAT_MAX,
    FORMAT_VERSION,
    MODES,
    OBJECTIVE_METRICS,
    PARAM_TYPES,
    SAMPLER_OPTIONS,
    SCHEDULER_OPTIONS,
    Confirm,
    Resources,
    Tracking,
)
from msdn_tune.train.config import FIELD_CHOICES, TrainConfig

Where = tuple[str | int, ...]

_KIND_WORDS = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}
# The labels pydantic puts in an error path for the member of a plain union that failed.
_UNION_LABELS = {"int", "float", "str", "bool", "list[union[str,int,float,bool]]"}
_TAG = re.compile(r"<[^>]*>")
_MAX_HINTED = 100
"""Longest word a "did you mean" hint is looked up for (difflib is quadratic)."""


def fail(source: str, where: Where, message: str) -> NoReturn:
    """Raise the SpaceError for one problem: `source: key.path: message`."""
    raise SpaceError(f"{source}: {key_path(where)}: {message}" if where else f"{source}: {message}")


def key_path(where: Where) -> str:
    """`params.lr.low`, `objective[1].metric`: how a user finds the key in the file."""
    out = ""
    for part in where:
        # a key may be anything the user typed (a megabyte, a line break): shown cut and
        # escaped, like values
        plain = isinstance(part, str) and len(part) <= 40 and part.isprintable()
        text = str(part) if plain else shorten(part, 40)
        out += f"[{text}]" if isinstance(part, int) else (f".{text}" if out else text)
    return out


def describe(value: Any) -> str:
    """A value as the message shows it (YAML's words, truncated)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {shorten(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return shorten(value)


def number(value: Any) -> str:
    """A bound or a value in a message: integers exactly, floats short, anything else cut."""
    if isinstance(value, float):
        return f"{value:g}"
    return shorten(value)


def hint(word: Any, options: Iterable[str]) -> str:
    """A "did you mean" suffix; case is ignored so best/h suggests best/H.

    Only a short string gets a hint: anything else (a list, a megabyte of text) is never turned
    into a string here.
    """
    if not isinstance(word, str) or len(word) > _MAX_HINTED:
        return ""
    by_lower = {o.lower(): o for o in options}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def unknown(noun: str, value: Any, options: Sequence[str]) -> str:
    """`unknown sampler 'bayes' (did you mean ...?); expected one of: ...`."""
    return (
        f"unknown {noun} {shorten(value)}{hint(value, options)}; expected one of: "
        f"{', '.join(options)}"
    )


def raise_validation_error(exc: ValidationError, doc: Any, source: str) -> NoReturn:
    """Raise the SpaceError for the first problem pydantic found in `doc`."""
    errors = exc.errors()
    # A version this reader does not know explains every other error: report it first.
    first = next((e for e in errors if e["loc"][:1] == ("version",)), errors[0])
    where, node_key = _real_path(first["loc"], doc)
    if first["type"] == "int_type":  # `int | float` failed both ways: the number is the news
        numbers = (e for e in errors if e["type"] == "float_type")
        first = next((e for e in numbers if _real_path(e["loc"], doc)[0] == where), first)
    message = _word(first, where, node_key, doc)
    if "at" in (first.get("ctx") or {}):  # our own rule (document.py): the path below the model
        where = where + tuple((first.get("ctx") or {})["at"])
    elif first["type"] in ("union_tag_not_found", "union_tag_invalid") and isinstance(
        first["input"], dict
    ):
        where = where + ("type",)
    fail(source, where, message)


def _real_path(loc: tuple[str | int, ...], doc: Any) -> tuple[Where, bool]:
    """The error path without union tags; whether the last step names a mapping key itself."""
    out: list[str | int] = []
    node = doc
    is_key = False
    for part in loc:
        if isinstance(part, str) and (_TAG.fullmatch(part) or part in _UNION_LABELS
                                      or part.startswith(("function-", "literal["))):
            if not (isinstance(node, dict) and part in node):
                continue
        if part == "[key]":
            is_key = True
            continue
        out.append(part)
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out), is_key


def _word(err: ErrorDetails, where: Where, is_key: bool, doc: Any) -> str:
    kind = err["type"]
    value = err["input"]
    ctx = err.get("ctx") or {}
    last = where[-1] if where else ""
    if "message" in ctx:
        return str(ctx["message"])
    if is_key or kind == "extra_forbidden":
        return _unknown_key(where, doc)
    if kind == "missing":
        if where == ("version",):
            return (
                f"required; this msdn-tune reads version {FORMAT_VERSION} "
                f"(add `version: {FORMAT_VERSION}` at the top)"
            )
        if where[:1] == ("params",) and last == "type":
            return f"required: one of {', '.join(PARAM_TYPES)}"
        return "required"
    if kind == "union_tag_not_found":
        if not isinstance(value, dict):
            return f"expected a mapping (got {describe(value)})"
        return f"required: one of {', '.join(PARAM_TYPES)}"
    if kind == "union_tag_invalid":
        chosen = value.get("type") if isinstance(value, dict) else value
        noun, options = {
            "sampler": ("sampler", tuple(SAMPLER_OPTIONS)),
            "scheduler": ("scheduler", tuple(SCHEDULER_OPTIONS)),
        }.get(str(where[0]), ("parameter type", PARAM_TYPES))
        return unknown(noun, chosen, options)
    if kind == "literal_error":
        return _bad_choice(where, value)
    if kind == "list_type" and len(where) >= 2 and where[-2] == "when":
        return _empty(where, value)
    if kind in _KIND_WORDS:
        return f"expected {_KIND_WORDS[kind]} (got {describe(value)}{_type_hint(kind, value)})"
    if kind == "finite_number":
        return f"must be finite (got {describe(value)})"
    bounds = {
        "greater_than": (">", "gt"),
        "greater_than_equal": (">=", "ge"),
        "less_than": ("<", "lt"),
        "less_than_equal": ("<=", "le"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return f"must be {op} {number(ctx[key])} (got {describe(value)})"
    if kind in ("too_short", "string_too_short"):
        return _empty(where, value)
    if kind in ("too_long", "string_too_long"):
        if isinstance(value, str):
            return f"at most {ctx.get('max_length')} characters (got {len(value):,})"
        return f"at most {ctx.get('max_length')} items (got {len(value):,})"
    if kind == "string_pattern_mismatch" and last == "name":
        return (
            f"{shorten(value)} is not a valid study name: use letters, digits, '.', '_' "
            "or '-' (it names directories and MLflow runs), at most 100 characters"
        )
    return f"{shorten(err['msg'], 200)} (got {describe(value)})"


def _unknown_key(where: Where, doc: Any) -> str:
    """An unknown key: what it may be instead, by the mapping it is in."""
    key = str(where[-1])
    section = where[:-1]
    if section[:1] == ("params",) and len(section) == 3 and section[2] == "when":
        params = [str(p) for p in (doc.get("params") or {})]
        return (
            f"condition on unknown parameter {shorten(key)}{hint(key, params)}; searched "
            f"parameters: {shorten(', '.join(params), 200)}"
        )
    if section in (("params",), ("fixed",)):
        if section == ("params",) and key in NOT_SEARCHABLE:
            return f"cannot be searched: {NOT_SEARCHABLE[key]}; set it under fixed:"
        return unknown_word("trainer setting", key, TrainConfig.field_names())
    allowed, what = _allowed_keys(section, doc)
    return unknown_word(what, key, allowed)


def unknown_word(what: str, key: str, allowed: Sequence[str]) -> str:
    """`unknown option (did you mean 'seed'?); expected one of: ...`: an unknown key."""
    return f"unknown {what}{hint(key, allowed)}; expected one of: {', '.join(allowed) or '(none)'}"


def _allowed_keys(section: Where, doc: Any) -> tuple[tuple[str, ...], str]:
    model: type[BaseModel] = SpaceDocument
    what = "key"
    node = _at(doc, section)
    head = section[:1]
    if head == ("params",):
        kind = node.get("type") if isinstance(node, dict) else None
        by_type: dict[str, type[BaseModel]] = {"int": IntParam, "categorical": CategoricalParam}
        model = by_type.get(str(kind), FloatParam)
    elif head == ("objective",):
        model = ObjectiveDoc
    elif head in (("sampler",), ("scheduler",)):
        table = SAMPLER_OPTIONS if head == ("sampler",) else SCHEDULER_OPTIONS
        default = "tpe" if head == ("sampler",) else "asha"
        kind = node.get("type", default) if isinstance(node, dict) else default
        model, what = table.get(str(kind), table[default]), "option"
    elif head == ("resources",):
        model, what = Resources, "option"
    elif head == ("tracking",):
        model, what = Tracking, "option"
    elif head == ("confirm",):
        model, what = Confirm, "option"
    return tuple(model.model_fields), what


def _at(doc: Any, where: Where) -> Any:
    node = doc
    for part in where:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _bad_choice(where: Where, value: Any) -> str:
    """A value outside a fixed set of values: say which set, with a hint."""
    last = str(where[-1])
    if where == ("version",):
        if isinstance(value, int) and not isinstance(value, bool):
            return f"unsupported version {value}; this msdn-tune reads version {FORMAT_VERSION}"
        return f"expected an integer (got {describe(value)}{_type_hint('int_type', value)})"
    if where[:1] == ("fixed",) and last in FIELD_CHOICES:
        return unknown(last, value, FIELD_CHOICES[last])
    if last == "mode":
        return f"expected max or min (got {describe(value)})"
    if where[:1] == ("objective",):
        return unknown("metric", value, OBJECTIVE_METRICS)
    if where == ("scheduler", "metric"):
        if value in OBJECTIVE_METRICS:
            return (
                f"{value} arrives once, at the end of a trial, but ASHA compares trials every "
                f"epoch; use one of: {', '.join(EPOCH_METRICS)}"
            )
        return unknown("value", value, EPOCH_METRICS)
    return unknown("value", value, MODES)


def _type_hint(kind: str, value: Any) -> str:
    """Why a value has the wrong type, when YAML is the likely culprit."""
    if kind in ("int_type", "float_type") and isinstance(value, str) and _looks_numeric(value):
        mantissa, sep, exponent = value.strip().lower().partition("e")
        if sep and "." not in mantissa:
            return (
                f"; YAML reads {value} as text because it has no decimal point: write "
                f"{mantissa}.0e{exponent}"
            )
        return "; write the number without quotes"
    if kind == "int_type" and isinstance(value, float):
        return "; this setting takes whole numbers"
    if kind == "float_type" and isinstance(value, int) and not isinstance(value, bool):
        return f"; too large: at most {FLOAT_MAX:.4g} in size"
    return ""


def _empty(where: Where, value: Any) -> str:
    if where == ("params",):
        return "no parameters to search; add at least one"
    if where == ("objective",):
        return "must name at least one metric"
    if where[-1:] == ("when",):
        return "must name at least one parameter (or be left out)"
    if len(where) >= 2 and where[-2] == "when":
        return f"expected a non-empty list of values of {where[-1]} (got {describe(value)})"
    return "must not be empty"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

