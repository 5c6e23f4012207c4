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



def packing_rule(space: StudySpec) -> str | None:
    """What `resources: {gpu: auto}` will do, for `space validate` to print: trials per GPU for
    common card sizes at the study's benchmark shapes (the store's when it exists, else the
    dataset's published ones), or None when the study does not ask for auto or its shapes are
    unknown before it runs (a synthetic preset not generated yet)."""
    if space.resources.get("gpu") != "auto":
        return None
    # torch (through the trainer) only for a space that asks for auto
    from msdn_tune.data.registry import DATASETS
    from msdn_tune.data.resolve import open_benchmark
    from msdn_tune.train.config import TrainConfig
    from msdn_tune.train.packing import TrialShapes, packing_table, trial_memory
    from msdn_tune.train.trainer import trial_shapes

    cfg = TrainConfig.from_dict(dict(space.fixed))
    store = Path(str(space.data))
    if store.is_dir() and (store / "meta.json").is_file():
        with open_benchmark(store) as bench:
            shapes, where = trial_shapes(bench, cfg), f"{store}'s shapes"
    else:
        info = DATASETS.get(cfg.dataset.upper())
        if info is None:
            return "gpu: auto: trials per GPU are chosen when the study starts (its store's " \
                   "shapes are not known before)"
        # clean selection splits trainval into train and validation: the same images in all
        shapes = TrialShapes(n_train=info.trainval, n_eval=info.test_seen + info.test_unseen,
                             channels=2048, regions=196, n_attributes=info.n_attributes,
                             n_classes=info.n_classes, batch_size=cfg.batch_size,
                             eval_batch_size=cfg.eval_batch_size)
        where = f"{info.name}'s published shapes"
    mem = trial_memory(shapes)
    cards = ", ".join(f"{gb} GB: {n} ({share:g} each)" if n else f"{gb} GB: 1 (not all resident)"
                      for gb, n, share in packing_table(mem))
    return (f"gpu: auto packs trials by GPU memory, about {mem.total / 1e9:.1f} GB each at "
            f"{where} ({(mem.train_features + mem.eval_features) / 1e9:.1f} GB of features kept "
            f"on the GPU): trials per GPU {cards}")
