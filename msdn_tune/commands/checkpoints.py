"""Published MSDN checkpoints in and out: the `import-checkpoint` and `export` use cases.

Import reads a ``*_MSDN_GZSL.pth``/``*_MSDN_CZSL.pth`` file of the published code (either of its
classes, see `model.published`), checks it against the dataset (and the store, when given),
takes its training margin from ``bias``, scores it, and registers it as a version of
``msdn-<dataset>`` with an alias (``published``), so that every command that takes a model
(`evaluate models:/msdn-cub@published`, `train --init`, `fixed: {init: ...}`, `export`) takes it.
Export writes any of our models back in the published core class's layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from msdn_tune.commands.weights import read_published_file, source_model
from msdn_tune.data.registry import get_dataset
from msdn_tune.data.resnet import file_sha256, load_trunk
from msdn_tune.data.resolve import open_benchmark
from msdn_tune.errors import ConfigError, DataError
from msdn_tune.model.msdn import MSDN
from msdn_tune.model.published import PublishedWeights, to_published
from msdn_tune.train.config import TrainConfig
from msdn_tune.train.trainer import Trainer, evaluate_run

IMPORT_DATASETS = ("CUB", "SUN", "AWA2")
"""The benchmarks the published code trained (it has no FLO checkpoints)."""
VEC_DIM = 300
CHANNELS = 2048


@dataclass
class ImportResult:
    """What `import-checkpoint` did, for the command line to print."""

    file: Path
    sha256: str
    kind: str
    margin: float
    dataset: str
    registered: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    backbone: Path | None = None
    backbone_tensors: int = 0


def check_against_dataset(pw: PublishedWeights, dataset: str, where: str) -> None:
    """The published head's shapes must be the dataset's: classes, attributes, 2048 x 300."""
    info = get_dataset(dataset)
    for what, have, want in (("classes (att rows)", pw.n_classes, info.n_classes),
                             ("attributes (att columns)", pw.n_attributes, info.n_attributes),
                             ("feature channels (W_1 columns)", pw.channels, CHANNELS),
                             ("attribute vector width (W_1 rows)", pw.vec_dim, VEC_DIM)):
        if have != want:
            raise DataError(f"{where}: {have} {what}, but {info.name} has {want}; is it a "
                            f"checkpoint of another dataset?")
    if pw.seen is not None and len(pw.seen) != info.n_seen:
        raise DataError(f"{where}: mask_bias marks {len(pw.seen)} classes seen, but {info.name}'s "
                        f"proposed split has {info.n_seen}")


def published_config(pw: PublishedWeights, dataset: str) -> TrainConfig:
    """The dataset's published recipe with the checkpoint's own margin (its ``bias``)."""
    recipe = get_dataset(dataset).recipe
    try:
        return TrainConfig.for_dataset(recipe).replace(margin=pw.margin)
    except ConfigError as exc:
        raise DataError(f"the checkpoint's bias {pw.margin!r} is not a usable margin: "
                        f"{exc}") from None


def published_model(pw: PublishedWeights, cfg: TrainConfig) -> MSDN:
    """Our model holding the published head, with the recipe's forward-pass options.

    The class matrix is used as saved (already normalised by the published code): no clipping,
    which would change what the model was trained with.
    """
    model = MSDN.from_published_state_dict(
        pw.head, normalize_v=cfg.normalize_v, normalize_f=cfg.normalize_f,
        temp_ava=cfg.temp_ava, temp_vaa=cfg.temp_vaa)
    return model.eval()


def _write_new(path: Path, write: Any, force: bool, option: str) -> None:
    """Write through a temp file + rename; an existing file is replaced only with `force`."""
    if path.exists() and not force:
        raise ConfigError(f"{option} {path}: already exists; choose another path or pass "
                          "--force to replace it")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{option} {path}: exists and is not a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def score_on_store(model: MSDN, cfg: TrainConfig, data: str, seen: torch.Tensor | None,
                   where: str) -> dict[str, float]:
    """Test metrics of `model` on the store `data` (standard protocol), after checking that the
    store's shapes and seen classes are the ones the model was trained with."""
    bench = open_benchmark(data)
    for what, have, want in (("classes", model.n_classes, bench.n_classes),
                             ("attributes", model.n_attributes, bench.n_attributes),
                             ("channels", model.channels, bench.channels)):
        if have != want:
            raise DataError(f"{where}: the model has {have} {what}, the store {bench.path} has "
                            f"{want}")
    if seen is not None and sorted(seen.tolist()) != sorted(int(c) for c in bench.seen_classes):
        raise DataError(f"{where}: the classes it was trained on (mask_bias) are not the seen "
                        f"classes of {bench.path}; it was trained on another split")
    trainer = Trainer(cfg.replace(selection="official"), bench)
    trainer.model.load_state_dict(model.state_dict())
    metrics = evaluate_run(trainer, use_best=False)
    return {k: float(v) for k, v in metrics.items() if k.startswith("test/")}


def import_checkpoint(file: str, dataset: str, *, data: str | None = None,
                      tracking_uri: str | None = None, alias: str = "published",
                      backbone_out: str | None = None, force: bool = False) -> ImportResult:
    """Check, score and register a published MSDN checkpoint (see the module docstring).

    Backbone weights (the root class's ``resnet101.*``) are written, under torchvision's names,
    to `backbone_out` (default: ``<file stem>.resnet101.pth`` in the current folder), checked
    by loading them as `data extract --weights` will. Nothing is registered when a check fails.
    """
    path = Path(file)
    dataset = get_dataset(dataset).name
    if dataset not in IMPORT_DATASETS:
        raise ConfigError(f"--dataset {dataset}: the published code has checkpoints for "
                          f"{', '.join(IMPORT_DATASETS)} only")
    pw = read_published_file(path)
    where = str(path)
    check_against_dataset(pw, dataset, where)
    cfg = published_config(pw, dataset)
    model = published_model(pw, cfg)
    metrics = score_on_store(model, cfg, data, pw.seen, where) if data else {}

    backbone = None
    if pw.backbone:
        backbone = Path(backbone_out) if backbone_out else Path(f"{path.stem}.resnet101.pth")
        _write_new(backbone, lambda tmp: torch.save(pw.backbone, tmp), force, "--backbone-out")
        try:
            load_trunk(backbone)
        except DataError as exc:
            backbone.unlink(missing_ok=True)
            raise DataError(f"{where}: its resnet101.* weights are not a whole ResNet-101 "
                            f"trunk ({exc})") from None

    sha = file_sha256(path)
    model.__dict__["msdn_tune_config"] = cfg.to_dict()
    if pw.seen is not None:
        model.__dict__["msdn_tune_seen"] = [int(c) for c in pw.seen]
    from msdn_tune.integrations import mlflow as tracking  # seconds to import: only here

    uri = tracking.resolve_tracking_uri(cli=tracking_uri)
    tracking.check_tracking(uri)
    tags = {"source": "published", "file": path.name, "sha256": sha, "margin": repr(pw.margin),
            "class": pw.kind, "benchmark": dataset,
            **({"scored_on": data} if data else {}),
            **({"backbone": str(backbone.resolve())} if backbone else {})}
    registered = tracking.register_imported(
        uri, model=model, dataset=cfg.dataset, alias=alias, run_name=path.name,
        params=cfg.to_dict(), metrics=metrics, tags=tags)
    return ImportResult(file=path, sha256=sha, kind=pw.kind, margin=pw.margin, dataset=dataset,
                        registered=registered, metrics=metrics, backbone=backbone,
                        backbone_tensors=len(pw.backbone))


@dataclass
class ExportResult:
    """What `export --published` wrote."""

    out: Path
    margin: float
    n_seen: int
    tensors: int


def export_published(source: str, out: str, *, data: str | None = None,
                     tracking_uri: str | None = None, force: bool = False) -> ExportResult:
    """Write the model `source` names as a state dict of the published core class.

    The seen classes (its ``mask_bias``) come from `data` when given, else from what the model
    recorded (a registered model) or the store its checkpoint names.
    """
    src = source_model(source, tracking_uri=tracking_uri)
    seen = src.seen
    if data:
        with open_benchmark(data) as bench:
            if bench.n_classes != src.model.n_classes:
                raise DataError(f"{source}: the model has {src.model.n_classes} classes, the "
                                f"store {bench.path} has {bench.n_classes}")
            seen = torch.as_tensor(bench.seen_classes).long()
    if seen is None:
        raise ConfigError(f"{source}: which classes it treats as seen is not recorded and its "
                          "benchmark store is not at hand; pass --data STORE")
    state = to_published(dict(src.model.state_dict()), margin=src.config.margin, seen=seen)
    target = Path(out)
    _write_new(target, lambda tmp: torch.save(state, tmp), force, "--published")
    return ExportResult(out=target, margin=src.config.margin, n_seen=len(seen),
                        tensors=len(state))
