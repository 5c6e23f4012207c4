"""The one safe loader: every class of hostile YAML/JSON from issue 14 is one error line, in
bounded time and memory."""

from __future__ import annotations

import pytest

from msdn_tune.errors import SpaceError
from msdn_tune.safeload import MAX_DEPTH, parse_json, parse_yaml, shorten


def _bomb(levels: int = 9, width: int = 9) -> str:
    names = "abcdefghijklmnop"
    lines = [f"a: &a [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"{names[i]}: &{names[i]} [{', '.join([f'*{names[i - 1]}'] * width)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, needle", [
    ("extra: 2024-02-30\n", "line 1"),
    ("n: !!bool maybe\n", "line 1"),
    ("n: !!float 1e\n", "line 1"),
    ("n: !!int 0x_\n", "line 1"),
    ("n: " + "1" * 5000 + "\n", "line 1"),
    ("[" * 400 + "]" * 400 + "\n", f"deeper than {MAX_DEPTH}"),
    ("a: 1\nb: [\n", "line"),
    ("a: 1\na: 2\n", "duplicate key"),
    (_bomb(), "expands to more than"),
    ("a: \x1b\n", "not allowed"),
])
def test_hostile_yaml_is_one_error_with_its_place(text, needle):
    with pytest.raises(SpaceError) as info:
        parse_yaml(text, source="f.yaml", error=SpaceError)
    message = str(info.value)
    assert message.startswith("f.yaml: ") and needle in message
    assert "\n" not in message and len(message) < 400


def test_aliases_within_bounds_still_load():
    doc = parse_yaml(_bomb(levels=3, width=3), source="f.yaml", error=SpaceError)
    assert len(doc["c"]) == 3 and doc["c"][0][0] == ["lol"] * 3


@pytest.mark.parametrize("text, needle", [
    ("[" * 5000 + "]" * 5000, "deeper than"),
    ("{\"a\": " + "1" * 5000 + "}", "invalid JSON"),
    ("{\"a\": 1,}", "line 1"),
])
def test_hostile_json_is_one_error(text, needle):
    with pytest.raises(SpaceError, match=needle):
        parse_json(text, source="meta.json", error=SpaceError)


def test_shorten_bounds_any_value():
    assert "digits" in shorten(10 ** 5000)
    assert len(shorten("x" * 10_000)) == 80
