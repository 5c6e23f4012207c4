"""Evaluate a trained model: from one of our checkpoints or from a registered MLflow model."""

from __future__ import annotations

from typing import Any

from msdn_tune.data.resolve import open_benchmark
from msdn_tune.errors import DataError
from msdn_tune.integrations.mlflow import check_tracking, load_model, resolve_tracking_uri
from msdn_tune.train.config import TrainConfig
from msdn_tune.train.trainer import Trainer, evaluate_run, load_checkpoint


def evaluate_source(source: str, data: str, overrides: dict[str, Any] | None = None, *,
                    tracking_uri: str | None = None) -> dict[str, Any]:
    """Test metrics of `source` (a checkpoint path or `models:/...` URI) on `data`.

    `tracking_uri` is the MLflow store of a `models:/` or `runs:/` source (default: the usual
    resolution, $MLFLOW_TRACKING_URI else ./mlflow.db).

    Evaluation-only settings (w1, gamma, kappa, eval_batch_size, device) may be overridden;
    anything else would not describe the trained model and is refused.
    """
    overrides = dict(overrides or {})
    allowed = {"w1", "gamma", "kappa", "eval_batch_size", "device", "precision", "threads"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise DataError(f"--set {bad[0]}: only evaluation settings can be changed here "
                        f"({', '.join(sorted(allowed))})")
    bench = open_benchmark(data)
    if source.startswith(("models:/", "runs:/")):
        uri = resolve_tracking_uri(cli=tracking_uri)
        check_tracking(uri)
        model = load_model(source, tracking_uri=uri)
        cfg_dict = dict(getattr(model, "msdn_tune_config", {}) or {})
        cfg = TrainConfig.from_dict({**cfg_dict, **overrides})
        trainer = Trainer(cfg, bench)
        # A registered model carries its shapes in its weights: classes x attributes in `att`,
        # channels in W_1's width.
        att, w1 = model.state_dict()["att"], model.state_dict()["W_1"]
        _check_shapes(trainer, source, {"n_classes": att.shape[0], "n_attributes": att.shape[1],
                                        "channels": w1.shape[1]})
        trainer.model.load_state_dict(model.state_dict())
        return evaluate_run(trainer, use_best=False)
    state = load_checkpoint(source)
    cfg = TrainConfig.from_dict({**state["config"], **overrides})
    trainer = Trainer(cfg, bench)
    _check_shapes(trainer, source, state["benchmark"])
    trainer.load_state_dict(state)
    return evaluate_run(trainer, use_best=True)


def _check_shapes(trainer: Trainer, source: str, meta: dict[str, Any] | None = None) -> None:
    bench = trainer.bench
    if meta is None:
        return
    for key, have in (("n_classes", bench.n_classes), ("n_attributes", bench.n_attributes),
                      ("channels", bench.channels)):
        if int(meta.get(key, have)) != have:
            raise DataError(f"{source}: trained with {key}={meta[key]} but the benchmark "
                            f"{bench.path} has {have}")
