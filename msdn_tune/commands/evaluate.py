"""Evaluate a trained model: from one of our checkpoints or from a registered MLflow model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from msdn_tune.data.resolve import open_benchmark
from msdn_tune.errors import DataError, DivergenceError
from msdn_tune.integrations.mlflow import check_tracking, load_model, resolve_tracking_uri
from msdn_tune.safeload import shorten
from msdn_tune.train.config import TrainConfig
from msdn_tune.train.trainer import (
    Trainer,
    check_weights,
    checkpoint_config,
    evaluate_run,
    load_checkpoint,
)


def evaluate_source(source: str, data: str, overrides: dict[str, Any] | None = None, *,
                    tracking_uri: str | None = None) -> dict[str, Any]:
    """Test metrics of `source` (a checkpoint path or `models:/...` URI) on `data`.

    `tracking_uri` is the MLflow store of a `models:/` or `runs:/` source (default: the usual
    resolution, $MLFLOW_TRACKING_URI else ./mlflow.db).

    Evaluation-only settings (w1, gamma, kappa, eval_batch_size, device) may be overridden;
    anything else would not describe the trained model and is refused. A checkpoint is checked
    whole (keys, types, tensor shapes against the model its config and `data` make) before it
    is used, so a file that is not one of ours, or does not fit `data`, is one DataError.
    """
    overrides = dict(overrides or {})
    allowed = {"w1", "gamma", "kappa", "eval_batch_size", "device", "precision", "threads"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise DataError(f"--set {shorten(bad[0], 40)}: only evaluation settings can be changed "
                        f"here ({', '.join(sorted(allowed))})")
    bench = open_benchmark(data)
    if source.startswith(("models:/", "runs:/")):
        uri = resolve_tracking_uri(cli=tracking_uri)
        check_tracking(uri)
        model = load_model(source, tracking_uri=uri)
        cfg_dict = getattr(model, "msdn_tune_config", None) or {}
        if not isinstance(cfg_dict, Mapping):
            raise DataError(f"{source}: the model's msdn_tune_config is not a mapping of "
                            "settings")
        cfg = TrainConfig.from_dict({**cfg_dict, **overrides})
        trainer = Trainer(cfg, bench)
        # A registered model carries its shapes in its weights: classes x attributes in `att`,
        # channels in W_1's width.
        weights = model.state_dict()
        att, w1 = weights.get("att"), weights.get("W_1")
        if not (isinstance(att, torch.Tensor) and isinstance(w1, torch.Tensor)
                and att.ndim == 2 and w1.ndim == 2):
            raise DataError(f"{source}: not an MSDN model (its weights lack 'att' or 'W_1')")
        _check_shapes(trainer, source, {"n_classes": att.shape[0], "n_attributes": att.shape[1],
                                        "channels": w1.shape[1]})
        check_weights(source, "model", weights, trainer.model.state_dict())
        trainer.model.load_state_dict(weights)
    else:
        state = load_checkpoint(source)
        trainer = Trainer(checkpoint_config(state, overrides), bench)
        _check_shapes(trainer, source, state["benchmark"])
        trainer.load_state_dict(state)
    try:
        return evaluate_run(trainer, use_best=not source.startswith(("models:/", "runs:/")))
    except DivergenceError:  # finite weights can still overflow float32 logits
        raise DataError(f"{source}: its weights give NaN or inf logits on {bench.path}; the "
                        "checkpoint cannot be evaluated") from None


def _check_shapes(trainer: Trainer, source: str, meta: dict[str, Any] | None = None) -> None:
    bench = trainer.bench
    if meta is None:
        return
    for key, have in (("n_classes", bench.n_classes), ("n_attributes", bench.n_attributes),
                      ("channels", bench.channels)):
        if meta.get(key, have) != have:
            raise DataError(f"{source}: trained with {key}={meta[key]} but the benchmark "
                            f"{bench.path} has {have}")
