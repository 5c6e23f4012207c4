"""Reading a space file: strict, safe YAML (duplicate keys rejected) into a :class:`StudySpec`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from msdn_tune.errors import SpaceError
from msdn_tune.space.spec import StudySpec


def load_space(path: str | Path) -> StudySpec:
    """Read and validate a search-space YAML file.

    Raises:
        SpaceError: when the file is missing, unreadable, not YAML or not a valid space; the
            message starts with the file name and the key path.
    """
    p = Path(path)
    source = str(path)
    if not p.exists():
        raise SpaceError(f"{source}: no such file")
    if not p.is_file():
        raise SpaceError(f"{source}: not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpaceError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SpaceError(f"{source}: cannot read ({exc.strerror})") from None
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise SpaceError(f"{source}: {where}invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise SpaceError(f"{source}: invalid YAML: {exc}") from None
    if doc is None:
        raise SpaceError(
            f"{source}: the file is empty; expected a mapping with version, data, "
            "fixed, params, ..."
        )
    return StudySpec.from_document(doc, source=source, path=p)


def parse_space(doc: dict[str, Any], *, source: str = "<dict>") -> StudySpec:
    """Validate a search space given as plain data (the YAML document, already parsed).

    Raises:
        SpaceError: naming `source` and the key path of the first problem found.
    """
    return StudySpec.from_document(doc, source=source)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden: fine
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: let PyYAML report it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
