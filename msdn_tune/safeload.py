"""Reading YAML and JSON that a user handed us: bounded, strict, and one line when it is bad.

Every YAML or JSON file msdn-tune reads (space files, a store's ``meta.json``, a study's
metadata, ``--set`` values) goes through here, because the parsers' own failure modes are not
fit for a user: PyYAML raises ValueError/KeyError/OverflowError from its constructors (an
impossible date, ``!!bool maybe``, a 5,000-digit integer), recurses until RecursionError on deep
nesting, and expands an alias bomb (nine levels of nine aliases) into billions of nodes. Here a
document is refused, in bounded time and memory, when it is larger than ``max_bytes``, nests
deeper than :data:`MAX_DEPTH` or holds more than :data:`MAX_NODES` nodes once aliases are
expanded; any parse failure becomes the caller's error kind with the file and line. Duplicate
mapping keys are an error (PyYAML silently keeps the last one).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from msdn_tune.errors import MsdnTuneError

MAX_BYTES = 1 << 20
"""Default size limit of a document (1 MiB): far above any real space file or meta.json."""

MAX_DEPTH = 64
"""Deepest nesting of mappings and lists accepted."""

MAX_NODES = 200_000
"""Most nodes a YAML document may expand to, counting every use of an alias."""

SHORT = 80
"""Longest rendering of a user's value in a message."""


def shorten(value: object, limit: int = SHORT) -> str:
    """`repr(value)` cut to `limit` characters, safe for any value (a huge int included).

    Messages quote what the user wrote, but a value may be megabytes long, or an integer too long
    for ``str`` (Python refuses over 4,300 digits), so nothing is printed unbounded.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits>"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_text(path: str | Path, *, error: type[MsdnTuneError], what: str = "file",
              max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of `path`, or `error` naming the file: missing, a folder, too large,
    unreadable (a name too long for the file system included) or not UTF-8."""
    source = str(path) if len(str(path)) <= SHORT else shorten(str(path))
    p = Path(path)
    try:
        if not p.exists():
            raise error(f"{source}: no such {what}")
        if not p.is_file():
            raise error(f"{source}: not a file")
        size = p.stat().st_size
        if size > max_bytes:
            raise error(f"{source}: {size:,} bytes, larger than the {max_bytes:,} a {what} "
                        "may be")
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{shorten(source)}: cannot read ({exc.strerror or exc})") from None


def load_yaml(path: str | Path, *, error: type[MsdnTuneError], what: str = "file",
              max_bytes: int = MAX_BYTES) -> Any:
    """Parse the YAML file `path` (see :func:`parse_yaml`)."""
    text = read_text(path, error=error, what=what, max_bytes=max_bytes)
    return parse_yaml(text, source=str(path), error=error)


def parse_yaml(text: str, *, source: str, error: type[MsdnTuneError]) -> Any:
    """One YAML document from `text`, safely constructed (plain data only), or `error`.

    The node graph is composed and measured first (depth, nodes with aliases expanded), so a bomb
    is refused before anything is built from it.
    """
    try:
        loader = _StrictLoader(text)
    except yaml.reader.ReaderError as exc:  # the reader refuses control characters up front
        raise error(f"{source}: invalid YAML: character #x{exc.character:04x} at position "
                    f"{exc.position} is not allowed") from None
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise error(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
        if node is None:
            return None
        _check_graph(node, source, error)
        try:
            return loader.construct_document(node)
        except RecursionError:
            raise error(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise error(f"{source}: {where}invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise error(f"{source}: invalid YAML: {shorten(str(exc), 200)}") from None
    finally:
        loader.dispose()


def load_json(path: str | Path, *, error: type[MsdnTuneError], what: str = "file",
              max_bytes: int = MAX_BYTES) -> Any:
    """Parse the JSON file `path` (see :func:`parse_json`)."""
    text = read_text(path, error=error, what=what, max_bytes=max_bytes)
    return parse_json(text, source=str(path), error=error)


def parse_json(text: str, *, source: str, error: type[MsdnTuneError]) -> Any:
    """One JSON document from `text`, nesting bounded, or `error` with the line."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{source}: line {exc.lineno}, column {exc.colno}: invalid JSON: "
                    f"{exc.msg}") from None
    except RecursionError:
        raise error(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # an integer over Python's 4,300-digit limit
        raise error(f"{source}: invalid JSON: {shorten(str(exc), 120)}") from None
    if _depth(doc) > MAX_DEPTH:
        raise error(f"{source}: nested deeper than {MAX_DEPTH} levels")
    return doc


def _depth(doc: Any) -> int:
    """Nesting depth of plain JSON data, without recursion."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _check_graph(root: yaml.Node, source: str, error: type[MsdnTuneError]) -> None:
    """Refuse a node graph that nests too deep or expands to too many nodes.

    Aliases make the graph a DAG whose expansion can be exponential in its size, so expanded
    sizes are computed once per distinct node (iteratively, post-order).
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in size and not done:
            continue
        children = _children(node)
        if not done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in size)
            if len(stack) > 4 * MAX_NODES:
                raise error(f"{source}: more than {MAX_NODES:,} YAML nodes")
            continue
        size[key] = 1 + sum(size.get(id(c), 1) for c in children)
        depth[key] = 1 + max((depth.get(id(c), 1) for c in children), default=0)
        if size[key] > MAX_NODES:
            line = node.start_mark.line + 1 if node.start_mark else "?"
            raise error(f"{source}: line {line}: the document expands to more than "
                        f"{MAX_NODES:,} values (aliases counted at every use)")
        if depth[key] > MAX_DEPTH:
            raise error(f"{source}: nested deeper than {MAX_DEPTH} levels")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reports a constructor's failure with its line.

    PyYAML's constructors raise plain ValueError, KeyError, TypeError or OverflowError for values
    such as ``2024-02-30``, ``!!bool maybe`` or ``!!float 1e`` (only YAMLError is documented);
    here each becomes a YAML error at the node that caused it.
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, KeyError, TypeError, OverflowError, IndexError,
                AttributeError) as exc:
            value = node.value if isinstance(node, yaml.ScalarNode) else node.tag
            detail = shorten(str(exc), 80) if str(exc) else type(exc).__name__
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shorten(value)} as {node.tag.rsplit(':', 1)[-1]} "
                f"({detail})", node.start_mark) from None


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden: fine
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: PyYAML reports it below
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"duplicate key {shorten(key)}",
                key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
