"""Reading a space file: strict, bounded, safe YAML (msdn_tune/safeload.py) into a StudySpec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msdn_tune.errors import SpaceError
from msdn_tune.safeload import load_yaml
from msdn_tune.space.spec import StudySpec


def load_space(path: str | Path) -> StudySpec:
    """Read and validate a search-space YAML file.

    Raises:
        SpaceError: when the file is missing, unreadable, not YAML or not a valid space; the
            message starts with the file name and the key path.
    """
    p = Path(path)
    source = str(path)
    doc = load_yaml(p, error=SpaceError)
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
