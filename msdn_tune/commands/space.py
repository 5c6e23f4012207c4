"""`space validate` and `space show`: a space file checked as far as a study would take it before
Ray starts.

`load_space` checks the format and the trainer's rules; here the file is also given to Optuna
(every distribution, the sampler, one suggested trial) and the resolved space that `space show`
prints is read back, so a file this accepts does not fail later, when a study runs.
"""

from __future__ import annotations

from pathlib import Path

from msdn_tune.errors import SpaceError
from msdn_tune.integrations.optuna import check_space
from msdn_tune.safeload import parse_yaml, shorten
from msdn_tune.space import StudySpec, load_space


def validate_space(path: str | Path) -> StudySpec:
    """Load `path`, give it to Optuna and check that its `space show` form loads back the same.

    Raises:
        SpaceError: the first problem, naming the file and the key.
    """
    space = load_space(path)
    check_space(space)
    check_round_trip(space)
    return space


def check_round_trip(space: StudySpec) -> None:
    """The YAML `space show` prints for `space` must load back as the same space.

    A file that expands to something the format reads differently (an environment variable whose
    value holds `${`, say) would otherwise run a study other than the one shown.

    Raises:
        SpaceError: naming the first key whose shown value reads back differently.
    """
    source = str(space.path) if space.path else "<dict>"
    text = space.to_yaml()
    try:
        again = StudySpec.from_document(
            parse_yaml(text, source=f"{source} (as shown)", error=SpaceError),
            source=f"{source} (as shown by `space show`)",
            path=space.path,
        )
    except SpaceError as exc:
        raise SpaceError(f"{source}: the resolved file does not load back: {exc}") from None
    shown, read = space.to_dict(), again.to_dict()
    for key in shown:
        if shown[key] != read[key]:
            raise SpaceError(
                f"{source}: {key}: `space show` prints a value that reads back differently "
                f"({shorten(shown[key])} becomes {shorten(read[key])})"
            )


def show_space(path: str | Path) -> str:
    """The resolved YAML of a space file that `validate_space` accepts."""
    return validate_space(path).to_yaml()

