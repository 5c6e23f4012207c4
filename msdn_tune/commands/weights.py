"""Where a model's weights come from: one of our checkpoints, a registered model, a published file.

`train --init`, a space's `fixed: {init: ...}`, `evaluate`, `export` and `import-checkpoint` all
take "a model" in any of three forms. This module turns each into tensors, checked, with files
read by ``torch.load(weights_only=True)`` only. A registered model is unpickled by MLflow: load
only models your own studies or imports logged (see `integrations.mlflow.load_model`).
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from msdn_tune.data.resolve import open_benchmark
from msdn_tune.errors import DataError
from msdn_tune.model.msdn import MSDN
from msdn_tune.model.published import PublishedWeights, is_published, read_published
from msdn_tune.safeload import shorten
from msdn_tune.train.config import TrainConfig
from msdn_tune.train.trainer import CHECKPOINT_KEYS, check_checkpoint, load_checkpoint

TRAINABLE = ("V", "W_1", "W_2", "W_1_1", "W_2_1")
"""The tensors a model is initialised from (the class matrix is always the benchmark's)."""


def is_model_uri(source: str) -> bool:
    """Whether `source` names a logged model (MLflow ``models:/`` or ``runs:/``), not a file."""
    return source.startswith(("models:/", "runs:/"))


def load_weights_file(path: str | Path) -> dict[str, Any]:
    """A ``.pt``/``.pth`` file's top-level dict, read with ``torch.load(weights_only=True)``.

    Raises:
        DataError: the file is missing, or is not a dict torch can load without unpickling code.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{shorten(str(path), 200)}: no such file")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise on stderr
            warnings.simplefilter("ignore")
            state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # never torch's advice to load it unsafely
        raise DataError(f"{p}: not a weights file torch can read safely: it is not a file "
                        "torch.save wrote, or it holds Python objects beyond tensors and plain "
                        "data, which are never loaded") from None
    except Exception as exc:  # noqa: BLE001 - RuntimeError (bad zip), EOFError, ...
        raise DataError(f"{p}: not a weights file torch can read safely (torch.load "
                        f"weights_only=True: {shorten(str(exc), 200)})") from None
    if not isinstance(state, dict):
        raise DataError(f"{p}: holds a {type(state).__name__}, expected a state dict")
    return state


def _is_our_checkpoint(state: dict[str, Any]) -> bool:
    return set(CHECKPOINT_KEYS) <= set(state)


def _model_weights(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's model: its best weights when it kept them (what `evaluate` scores), else
    its last."""
    return dict(state["best_state"] or state["model"])


def read_published_file(path: str | Path) -> PublishedWeights:
    """A published MSDN ``.pth`` (either published class), checked (see `read_published`)."""
    return read_published(load_weights_file(path), where=str(path))


def init_weights(source: str, *, tracking_uri: str | None = None) -> dict[str, torch.Tensor]:
    """The trainable tensors of the model `source` names, to start a run from.

    `source`: one of our checkpoints (its best weights when it kept them, else its last), a
    ``models:/``/``runs:/`` URI (from `tracking_uri`, else the usual store), or a published MSDN
    state dict. Shapes are checked by the Trainer against the benchmark it is given.
    """
    if is_model_uri(source):
        from msdn_tune.integrations import mlflow as tracking  # seconds to import: only here

        uri = tracking.resolve_tracking_uri(cli=tracking_uri)
        tracking.check_tracking(uri)
        weights = dict(tracking.load_model(source, tracking_uri=uri).state_dict())
    elif Path(source).is_dir():  # a run folder: its checkpoint.pt
        weights = _model_weights(load_checkpoint(source))
    else:
        state = load_weights_file(source)
        if _is_our_checkpoint(state):  # checked as `load_checkpoint` would, without a re-read
            weights = _model_weights(check_checkpoint(state, source))
        elif is_published(state):
            weights = read_published(state, where=source).head
        else:
            raise DataError(f"{source}: neither an msdn-tune checkpoint nor a published MSDN "
                            "state dict (expected V, W_1, W_2, W_1_1, W_2_1)")
    missing = [k for k in TRAINABLE if k not in weights]
    if missing:
        raise DataError(f"{source}: has no {', '.join(missing)}; not an MSDN model")
    return {k: weights[k].detach().float().cpu() for k in TRAINABLE}


@dataclass
class SourceModel:
    """A trained model, with what is needed to score or export it."""

    model: MSDN
    config: TrainConfig
    seen: torch.Tensor | None
    """Its benchmark's seen classes (indices), when known without a store."""
    where: str


def source_model(source: str, *, tracking_uri: str | None = None) -> SourceModel:
    """The model in one of our checkpoints or behind a ``models:/``/``runs:/`` URI."""
    if is_model_uri(source):
        from msdn_tune.integrations import mlflow as tracking  # seconds to import: only here

        uri = tracking.resolve_tracking_uri(cli=tracking_uri)
        tracking.check_tracking(uri)
        model = tracking.load_model(source, tracking_uri=uri)
        if not isinstance(model, MSDN):
            raise DataError(f"{source}: holds a {type(model).__name__}, not an MSDN model")
        cfg_dict = getattr(model, "msdn_tune_config", None)
        if not isinstance(cfg_dict, dict):
            raise DataError(f"{source}: the model carries no msdn_tune_config; it was not "
                            "logged by msdn-tune")
        seen = getattr(model, "msdn_tune_seen", None)
        return SourceModel(model=model.eval(), config=TrainConfig.from_dict(cfg_dict),
                           seen=None if seen is None else torch.as_tensor(seen).long(),
                           where=source)
    state = load_checkpoint(source)
    cfg = TrainConfig.from_dict(state["config"])
    weights = _model_weights(state)
    att, w1 = weights.get("att"), weights.get("W_1")
    if not (isinstance(att, torch.Tensor) and isinstance(w1, torch.Tensor)):
        raise DataError(f"{source}: its weights lack 'att' or 'W_1'")
    model = MSDN(att, None, int(w1.shape[1]), vec_dim=int(w1.shape[0]),
                 normalize_v=cfg.normalize_v, normalize_f=cfg.normalize_f, temp_ava=cfg.temp_ava,
                 temp_vaa=cfg.temp_vaa, intervention=cfg.intervention)
    model.load_state_dict(weights)
    seen = None
    bench_path = state["benchmark"].get("path")
    if isinstance(bench_path, str) and Path(bench_path).is_dir():
        try:
            with open_benchmark(bench_path) as bench:
                seen = torch.as_tensor(bench.seen_classes).long()
        except DataError:
            seen = None  # the store it was trained on is gone or changed: the caller asks
    return SourceModel(model=model.eval(), config=cfg, seen=seen, where=source)
