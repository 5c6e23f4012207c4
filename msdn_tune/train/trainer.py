"""The MSDN++ epoch loop: batches, losses, per-epoch evaluation, model selection, checkpoints.

One `Trainer` owns one run. It is driven epoch by epoch (`run_epoch`) so that the same object
serves the CLI (`fit`), the Ray Tune trainable (report + checkpoint after every epoch) and tests.
Everything needed to continue a run exactly where it stopped lives in `state_dict()`: model,
optimizer, epoch, best metrics and best weights, RNG states and the config. Batch order and
counterfactual noise are seeded per epoch from (seed, epoch), so a resumed run draws the same
batches as an uninterrupted one. A checkpoint is checked whole (keys, types, every tensor's shape
against this run's model, optimizer and split) before any of it is loaded.

One concept: one training run, from its first batch to its checkpoint and back.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msdn_tune.data.store import BenchmarkStore
from msdn_tune.errors import ConfigError, DataError, DivergenceError
from msdn_tune.model.losses import LossWeights, margin_vector, msdn_loss
from msdn_tune.model.msdn import MSDN
from msdn_tune.safeload import shorten
from msdn_tune.train.config import MAX_EPOCHS, TrainConfig
from msdn_tune.train.metrics import EvalLogits, evaluate_logits, tune_eval_settings
from msdn_tune.train.packing import TrialShapes, working_bytes
from msdn_tune.train.precision import PrecisionChoice, bf16_supported, resolve_precision

CHECKPOINT_VERSION = 1
EVAL_METRICS = ("zsl_acc", "U", "S", "H")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when available; an unavailable CUDA device is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available here")
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device: {name!r} requested but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def default_threads() -> int:
    """CPU threads for torch: what the process was given (Ray sets OMP_NUM_THREADS per trial)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def trial_shapes(bench: BenchmarkStore, cfg: TrainConfig) -> TrialShapes:
    """The shapes a run of `cfg` on `bench` keeps in GPU memory (msdn_tune.train.packing): its
    training split and every evaluation set it scores (validation and test under clean
    selection)."""
    select, test = _splits(bench, cfg.selection)
    evals = {id(a): len(a) for sp in (select, test) for a in (sp.eval_seen, sp.eval_unseen)}
    return TrialShapes(
        n_train=len(select.train), n_eval=sum(evals.values()), channels=bench.channels,
        regions=bench.regions, n_attributes=bench.n_attributes, n_classes=bench.n_classes,
        batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size)


def gpu_budget_bytes(device: torch.device, fraction: float | None) -> int | None:
    """This trainer's share of its GPU's memory (None off a GPU), capping CUDA's allocator at
    `fraction` when trials share the GPU (0 < fraction < 1)."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    if fraction is not None and 0 < fraction < 1:
        torch.cuda.set_per_process_memory_fraction(float(fraction), index)
        return int(total * fraction)
    free, _ = torch.cuda.mem_get_info(index)
    return int(free)


@dataclass
class _Split:
    """Which rows a run trains on and evaluates on, and which classes count as unseen."""

    train: np.ndarray
    eval_seen: np.ndarray
    eval_unseen: np.ndarray
    seen: np.ndarray  # classes evaluated as seen
    unseen: np.ndarray  # classes evaluated as unseen
    train_unseen: np.ndarray  # classes that get +margin during training (all not trained on)
    candidates: np.ndarray | None  # classes eligible at prediction (None: all)


def _splits(bench: BenchmarkStore, selection: str) -> tuple[_Split, _Split]:
    """(selection split, test split). In official mode they are the same test split."""
    all_classes = np.arange(bench.n_classes)
    test = _Split(
        train=bench.splits["trainval"], eval_seen=bench.splits["test_seen"],
        eval_unseen=bench.splits["test_unseen"], seen=bench.seen_classes,
        unseen=bench.unseen_classes,
        train_unseen=np.setdiff1d(all_classes, bench.seen_classes), candidates=None,
    )
    if selection == "official":
        return test, test
    if len(bench.splits["val_unseen"]) == 0 or len(bench.splits["val_seen"]) == 0:
        raise DataError(f"{bench.path}: selection=clean needs val_seen and val_unseen splits, "
                        "but this store has none")
    seen = bench.val_seen_classes
    unseen = bench.val_unseen_classes
    val = _Split(
        train=bench.splits["train"], eval_seen=bench.splits["val_seen"],
        eval_unseen=bench.splits["val_unseen"], seen=seen, unseen=unseen,
        train_unseen=np.setdiff1d(all_classes, seen),
        candidates=np.union1d(seen, unseen),
    )
    # The test split is evaluated with the standard protocol after clean selection too: the
    # validation classes then count as seen (they are trainval classes), as in xlsa17.
    return val, test


def build_model(cfg: TrainConfig, bench: BenchmarkStore) -> MSDN:
    """The MSDN++ model a config describes for a benchmark (weights freshly initialised).

    Used by the Trainer and wherever only the model is needed (logging a trained model): no
    optimizer, whose first construction alone imports torch._dynamo for over a second.
    """
    att = torch.tensor(np.array(bench.class_attributes), dtype=torch.float32)
    vec = (None if bench.attribute_vectors is None
           else torch.tensor(np.array(bench.attribute_vectors), dtype=torch.float32))
    return MSDN(
        att, vec, bench.channels, normalize_v=cfg.normalize_v, normalize_f=cfg.normalize_f,
        temp_ava=cfg.temp_ava, temp_vaa=cfg.temp_vaa, intervention=cfg.intervention,
        clip_negative_att=cfg.clip_negative_att)


@dataclass
class TrainResult:
    """What a finished run returns: final metrics, per-epoch history, checkpoint location."""

    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None


class Trainer:
    """One MSDN++ training run over a benchmark store."""

    def __init__(self, cfg: TrainConfig, bench: BenchmarkStore, *,
                 init_weights: Mapping[str, torch.Tensor] | None = None,
                 gpu_memory_fraction: float | None = None) -> None:
        """`init_weights`: the trainable tensors of the model `cfg.init` names, which the
        caller loads (a models:/ URI needs MLflow, which this library does not import); a
        config with `init` set refuses to train from a random draw without them, unless a
        checkpoint is loaded over it (`load_state_dict`).

        `gpu_memory_fraction`: this trial's share of its GPU when trials share one (Ray's
        fractional `gpu`). CUDA's allocator is capped at it, so a trial that outgrows its share
        fails alone instead of starving the others, and the data kept on the GPU is sized to it.
        """
        self.cfg = cfg
        self.bench = bench
        self.device = resolve_device(cfg.device)
        self.gpu_budget = gpu_budget_bytes(self.device, gpu_memory_fraction)
        torch.set_num_threads(cfg.threads or default_threads())
        if cfg.precision == "bf16" and not bf16_supported(self.device):
            raise ConfigError(f"precision: bf16 is not supported on {self.device} here; use fp32")
        # What the run trains and evaluates in (fp32 or bf16 autocast), and why: the config
        # keeps what the user wrote, which may be auto (a probe on a CPU's first run)
        self.precision_choice: PrecisionChoice = resolve_precision(cfg.precision, self.device)
        self.precision = self.precision_choice.precision
        self.select_split, self.test_split = _splits(bench, cfg.selection)
        if len(self.select_split.train) == 0:
            raise DataError(f"{bench.path}: the training split is empty")

        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, bench).to(self.device)
        self._initialised = not cfg.init
        if init_weights is not None:
            self.load_init_weights(init_weights, cfg.init or "init weights")
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == "rmsprop":
            self.optimizer: torch.optim.Optimizer = torch.optim.RMSprop(
                params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
        else:
            self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.weights = LossWeights(
            lambda_sc=cfg.lambda_sc, lambda_d=cfg.lambda_d, lambda_causal=cfg.lambda_causal,
            lambda_ar=cfg.lambda_ar, distill_effect=cfg.distill_effect)
        c = bench.n_classes
        self._m_train = margin_vector(c, torch.as_tensor(self.select_split.train_unseen),
                                      cfg.margin, device=self.device)
        self._unseen_mask = torch.zeros(c, dtype=torch.bool, device=self.device)
        self._unseen_mask[torch.as_tensor(self.select_split.train_unseen, dtype=torch.long)] = True
        self._att_normed = torch.nn.functional.normalize(
            self.model_class_attributes(), dim=1) if cfg.lambda_ar > 0 else None
        self._labels = torch.tensor(np.array(bench.labels), dtype=torch.long)
        self._resident: dict[str, torch.Tensor] = {}
        self._place_resident()

        self.epoch = 0
        self.best: dict[str, float] = {f"best/{k}": 0.0 for k in EVAL_METRICS}
        self.best["best/epoch"] = 0.0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_logits: EvalLogits | None = None
        self.history: list[dict[str, float]] = []

    def load_init_weights(self, weights: Mapping[str, torch.Tensor], where: str) -> None:
        """Start from another model's trainable tensors (V, W_1, W_2, W_1_1, W_2_1).

        The class matrix stays the benchmark's, so a model trained on other classes with the
        same attributes and channels can be fine-tuned here. Every tensor is checked (present,
        same shape, finite) before any is copied: a mismatch is one DataError naming `where`.
        """
        own = {k: p for k, p in self.model.named_parameters() if p.requires_grad}
        missing = [k for k in own if k not in weights]
        if missing:
            raise DataError(f"{where}: has no {', '.join(missing)}; not the weights of an MSDN "
                            "model")
        for key, param in own.items():
            value = weights[key]
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(param.shape):
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise DataError(f"{where}: {key} has shape {got}, this benchmark's model needs "
                                f"{tuple(param.shape)} ({self.bench.n_attributes} attributes, "
                                f"{self.bench.channels} channels)")
            if not _finite_tensor(value.float()):
                raise DataError(f"{where}: {key} holds NaN or inf values")
        with torch.no_grad():
            for key, param in own.items():
                param.copy_(weights[key].to(param.dtype))
        self._initialised = True

    # ------------------------------------------------------------------ data
    def model_class_attributes(self) -> torch.Tensor:
        """The class-attribute matrix the model uses (after the optional clip)."""
        att = torch.tensor(np.array(self.bench.class_attributes), dtype=torch.float32,
                           device=self.device)
        return att.clamp_min(0) if self.cfg.clip_negative_att else att

    def _place_resident(self) -> None:
        """On a GPU, keep the splits it reads every epoch in its memory, in fp16, so that no
        step waits for the host: the training split first, then the evaluation sets, each only
        if it fits in this trial's memory budget next to the working memory that
        :mod:`msdn_tune.train.packing` reserves (the same rule that packs trials on a GPU)."""
        if self.device.type != "cuda" or self.gpu_budget is None:
            return
        splits = {"train": self.select_split.train}
        for split in {id(self.select_split): self.select_split,
                      id(self.test_split): self.test_split}.values():
            splits[f"seen:{id(split.eval_seen)}"] = split.eval_seen
            splits[f"unseen:{id(split.eval_unseen)}"] = split.eval_unseen
        # the store's own dtype (fp16 as written by default): features read from the GPU copy
        # are the same numbers as those read from the host
        dtype = torch.from_numpy(np.empty(0, dtype=self.bench.dtype)).dtype
        shape = (self.bench.channels, self.bench.regions)
        row_bytes = shape[0] * shape[1] * torch.empty((), dtype=dtype).element_size()
        limit = self.gpu_budget - working_bytes(self.trial_shapes())
        used = 0
        for key, rows in splits.items():
            need = len(rows) * row_bytes
            if used + need > limit:
                if key == "train":
                    return  # without the training split resident, none is worth its memory
                continue
            # filled in place, chunk by chunk: never twice the split on the GPU at once
            out = torch.empty((len(rows), *shape), dtype=dtype, device=self.device)
            for i in range(0, len(rows), 1024):
                chunk = self.bench.gather(rows[i:i + 1024])
                out[i:i + len(chunk)].copy_(chunk.pin_memory(), non_blocking=True)
            torch.cuda.synchronize(self.device)  # every chunk copied before it is counted
            self._resident[key] = out
            used += need

    def trial_shapes(self) -> TrialShapes:
        """This run's shapes, as the GPU packing rule counts them."""
        return trial_shapes(self.bench, self.cfg)

    @property
    def resident_bytes(self) -> int:
        """Bytes of benchmark features this trainer keeps on its GPU."""
        return sum(t.numel() * t.element_size() for t in self._resident.values())

    def _batches(self, epoch: int) -> Iterator[np.ndarray]:
        """Positions into the training split for each batch of one epoch (seeded by epoch)."""
        rng = np.random.default_rng([self.cfg.seed, epoch])
        rows = self.select_split.train
        n, bs = len(rows), self.cfg.batch_size
        if self.cfg.sampler == "uniform":
            order = rng.permutation(n)
            for i in range(0, n, bs):
                batch = order[i:i + bs]
                if len(batch) >= 2 or n < 2:
                    yield batch
            return
        # Class-balanced: each batch holds min(bs, #classes) distinct classes, one image each
        # (the published SUN/AWA2 sampler); as many batches as a uniform epoch would have, i.e.
        # n/bs, not n/#images-per-batch: the published AWA2 run (40 classes, bs 50) evaluates
        # every n_trainval/50 = 470 iterations of 40 images.
        labels = self.bench.labels[rows]
        classes = np.unique(labels)
        by_class = {c: np.flatnonzero(labels == c) for c in classes}
        per = min(bs, len(classes))
        for _ in range(max(1, math.ceil(n / bs))):
            chosen = rng.choice(classes, size=per, replace=False)
            yield np.array([rng.choice(by_class[c]) for c in chosen])

    def _features(self, pos: np.ndarray | torch.Tensor, rows: np.ndarray,
                  key: str | None) -> torch.Tensor:
        """Features of `rows[pos]`: from the resident copy `key` when there is one (`pos` may
        then already be on the device), else gathered from the store."""
        cached = self._resident.get(key) if key is not None else None
        if cached is not None:
            return cached[torch.as_tensor(pos, device=self.device)].float()
        x = self.bench.gather(rows[np.asarray(pos.cpu() if isinstance(pos, torch.Tensor)
                                              else pos)])
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device, torch.float32)

    def _autocast(self) -> Any:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # ------------------------------------------------------------------ epochs
    def train_epoch(self, progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
        """One pass over the training split; returns mean loss components as `train/*`."""
        if not self._initialised:
            raise ConfigError(f"init: {shorten(self.cfg.init)} was set but its weights were "
                              "never loaded (Trainer's init_weights); refusing to train a "
                              "random model in its name")
        self.model.train()
        epoch = self.epoch + 1
        torch.manual_seed(self.cfg.seed * 100003 + epoch)
        rows = self.select_split.train
        batches = list(self._batches(epoch))
        # On a GPU nothing below waits for the device: losses are summed there and read once
        # per epoch, and a non-finite loss is noticed at the epoch's end (the weights of the
        # last finished epoch are the caller's checkpoint). On a CPU reading them costs nothing
        # and a divergence is caught at its step.
        lazy = self.device.type == "cuda"
        # a copy: the split's rows are a read-only view of the store, which torch warns about
        labels = self._labels[torch.tensor(rows, dtype=torch.long)].to(self.device)
        sums: dict[str, torch.Tensor] = {}
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        for step, pos in enumerate(batches, 1):
            pos_t = torch.as_tensor(pos).to(self.device, non_blocking=True)
            x = self._features(pos_t if "train" in self._resident else pos, rows, "train")
            y = labels[pos_t]
            with self._autocast():
                out = self.model(x)
                loss, parts = msdn_loss(out, y, self._m_train, self._unseen_mask, self.weights,
                                        self._att_normed)
            if lazy:
                finite &= torch.isfinite(loss)
            elif not torch.isfinite(loss):
                raise DivergenceError(epoch, step, "loss")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            for k, v in parts.items():
                v = torch.as_tensor(v).detach().double()
                sums[k] = sums[k] + v if k in sums else v
            if progress is not None:
                progress(step, len(batches))
        if lazy and not bool(finite):
            raise DivergenceError(epoch, len(batches), "loss (at a step of this epoch)")
        return {f"train/{k}": float(v) / len(batches) for k, v in sums.items()}

    @torch.no_grad()
    def logits(self, split: _Split, *, epoch: int | None = None) -> EvalLogits:
        """Raw per-sub-net logits on a split's evaluation sets (no margin, no fusion).

        `epoch` names the epoch being evaluated in a divergence error (default: the last one
        completed, which is right for evaluating a finished run).
        """
        self.model.eval()
        parts = []
        for kind, rows in (("seen", split.eval_seen), ("unseen", split.eval_unseen)):
            za, zv = [], []
            key = f"{kind}:{id(rows)}"
            for i in range(0, len(rows), self.cfg.eval_batch_size):
                pos = np.arange(i, min(i + self.cfg.eval_batch_size, len(rows)))
                x = self._features(pos, rows, key)
                with self._autocast():
                    out = self.model(x, intervene=self.cfg.kappa > 0)
                a, v = out.z_ava.float(), out.z_vaa.float()
                if self.cfg.kappa > 0 and out.z_ava_eff is not None:
                    a = a + self.cfg.kappa * out.z_ava_eff.float()
                    v = v + self.cfg.kappa * out.z_vaa_eff.float()
                za.append(a)
                zv.append(v)
            # one copy to the host per evaluation set, not one (and one wait) per batch
            z_a = (torch.cat(za).cpu().numpy() if za
                   else np.zeros((0, self.bench.n_classes), np.float32))
            z_v = (torch.cat(zv).cpu().numpy() if zv
                   else np.zeros((0, self.bench.n_classes), np.float32))
            if not (np.isfinite(z_a).all() and np.isfinite(z_v).all()):
                raise DivergenceError(self.epoch if epoch is None else epoch, 0,
                                      "evaluation logits")
            parts.append((z_a, z_v, self.bench.labels[rows]))
        (sa, sv, ys), (ua, uv, yu) = parts
        return EvalLogits(
            z_ava_seen=sa, z_vaa_seen=sv, y_seen=ys, z_ava_unseen=ua, z_vaa_unseen=uv,
            y_unseen=yu, seen=split.seen, unseen=split.unseen, margin=self.cfg.margin,
            candidates=split.candidates)

    def run_epoch(self, progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
        """Train one epoch, evaluate, update the best-so-far; returns this epoch's metrics."""
        t0 = time.perf_counter()
        metrics = self.train_epoch(progress)
        t1 = time.perf_counter()
        ev = self.logits(self.select_split, epoch=self.epoch + 1)
        val = evaluate_logits(ev, self.cfg.w1, self.cfg.gamma)
        self.epoch += 1
        metrics.update({f"val/{k}": float(val[k]) for k in EVAL_METRICS})
        self._update_best(val, ev)
        metrics.update(self.best)
        metrics["mean/H"] = self._mean_h(float(val["H"]))
        metrics["epoch"] = float(self.epoch)
        metrics["time/train_s"] = t1 - t0
        metrics["time/eval_s"] = time.perf_counter() - t1
        # which precision ran, in every record of the run's metrics (Tune, MLflow, parquet,
        # metrics.jsonl): with precision auto the config alone does not say
        metrics["time/bf16"] = 1.0 if self.precision == "bf16" else 0.0
        if self.device.type == "cuda":  # what packing trials on a GPU needs to know
            metrics["gpu/peak_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            metrics["gpu/resident_mb"] = self.resident_bytes / 2**20
            if self.gpu_budget is not None:
                metrics["gpu/budget_mb"] = self.gpu_budget / 2**20
        self.history.append(metrics)
        return metrics

    def _update_best(self, val: dict[str, float], ev: EvalLogits) -> None:
        """official: best H (with its U, S) and best ZSL kept independently, as published.
        clean: everything from the epoch with the best validation H."""
        improved = val["H"] > self.best["best/H"] or self.best_state is None
        if improved:
            self.best.update({"best/H": val["H"], "best/U": val["U"], "best/S": val["S"],
                              "best/epoch": float(self.epoch)})
            self.best_state = {k: v.detach().to("cpu", copy=True)
                               for k, v in self.model.state_dict().items()}
            self.best_logits = ev
            if self.cfg.selection == "clean":
                self.best["best/zsl_acc"] = val["zsl_acc"]
        if self.cfg.selection == "official":
            self.best["best/zsl_acc"] = max(self.best["best/zsl_acc"], val["zsl_acc"])

    def _mean_h(self, latest: float | None = None) -> float:
        """Mean selection-split H over the epochs run so far (`latest`: this epoch's, not yet in
        the history). A steadier trial score than best/H, the maximum over noisy epochs, which
        flatters configurations whose validation H jumps about; it also rewards learning fast."""
        hs = [h["val/H"] for h in self.history if "val/H" in h]
        if latest is not None:
            hs.append(latest)
        return sum(hs) / len(hs) if hs else 0.0

    def finish(self) -> dict[str, float]:
        """Final metrics: best-so-far, eval-only tuning of w1/gamma, and (clean) test once."""
        out = dict(self.best)
        out["mean/H"] = self._mean_h()
        out["epoch"] = float(self.epoch)
        out["time/bf16"] = 1.0 if self.precision == "bf16" else 0.0
        if self.best_logits is not None:
            tuned = tune_eval_settings(self.best_logits)
            out.update({"eval/w1": tuned["w1"], "eval/gamma": tuned["gamma"],
                        "eval/H_tuned": tuned["H"], "eval/U_tuned": tuned["U"],
                        "eval/S_tuned": tuned["S"], "eval/ausuc": tuned.get("ausuc", 0.0)})
        if self.cfg.selection == "clean" and self.best_state is not None:
            current = copy.deepcopy(self.model.state_dict())
            self.model.load_state_dict(self.best_state)
            ev = self.logits(self.test_split)
            self.model.load_state_dict(current)
            test = evaluate_logits(ev, self.cfg.w1, self.cfg.gamma)
            out.update({f"test/{k}": float(test[k]) for k in EVAL_METRICS})
            if "eval/w1" in out:
                tt = evaluate_logits(ev, out["eval/w1"], out["eval/gamma"])
                out["test/H_tuned"] = float(tt["H"])
        else:
            out.update({f"test/{k}": out[f"best/{k}"] for k in EVAL_METRICS})
        return out

    def fit(self, on_epoch: Callable[[dict[str, float]], None] | None = None,
            progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
        """Run the remaining epochs, then `finish()`."""
        while self.epoch < self.cfg.epochs:
            m = self.run_epoch(progress)
            if on_epoch is not None:
                on_epoch(m)
        return self.finish()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly (loadable with weights_only=True)."""
        logits = None
        if self.best_logits is not None:
            # candidates are not saved: they follow from the split (None in official mode)
            logits = {k: torch.as_tensor(np.asarray(getattr(self.best_logits, k)))
                      for k in EvalLogits._ARRAYS}
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.cfg.to_dict(),
            "benchmark": {"dataset": self.bench.dataset, "path": str(self.bench.path),
                          "n_classes": self.bench.n_classes,
                          "n_attributes": self.bench.n_attributes,
                          "channels": self.bench.channels},
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best": dict(self.best),
            "best_state": self.best_state,
            "best_logits": logits,
            "history": list(self.history),
            "rng": {"torch": torch.get_rng_state()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()`; the config must match the run's.

        Everything is checked before anything is loaded (keys and types by
        :func:`check_checkpoint`, then every tensor's shape against this trainer's model,
        optimizer and split), so a checkpoint that does not fit is one DataError naming the
        file and the key, never a KeyError or a size-mismatch RuntimeError from torch, and a
        refused checkpoint leaves the trainer as it was.
        """
        where = str(getattr(state, "source", "checkpoint"))
        state = check_checkpoint(state, where)
        self._check_benchmark(state["benchmark"])
        was = state["config"].get("selection", self.cfg.selection)
        if was != self.cfg.selection:  # best-so-far metrics and logits belong to the old split
            raise ConfigError(f"selection: the checkpoint's run selects with {was!r}; it cannot "
                              f"continue as {self.cfg.selection!r} (start a new run instead)")
        want = self.model.state_dict()
        check_weights(where, "model", state["model"], want)
        if state["best_state"] is not None:
            check_weights(where, "best_state", state["best_state"], want)
        optimizer = self._checked_optimizer(where, state["optimizer"])
        lg = state["best_logits"]
        if lg is not None:
            self._check_logits(where, lg)
        rng = state["rng"]["torch"]
        if rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
            raise DataError(f"{where}: checkpoint key 'rng.torch' is not torch's generator state "
                            f"(a uint8 tensor of {torch.get_rng_state().numel()} bytes)")

        self.model.load_state_dict(state["model"])
        self._initialised = True  # a run continued: its own weights, whatever `init` said
        self.optimizer.load_state_dict(optimizer)
        self.epoch = int(state["epoch"])
        self.best = {k: float(v) for k, v in state["best"].items()}
        self.best_state = state["best_state"]
        if lg is not None:
            self.best_logits = EvalLogits(
                **{k: lg[k].numpy() for k in EvalLogits._ARRAYS}, margin=self.cfg.margin,
                candidates=self.select_split.candidates)
        self.history = list(state["history"])
        torch.set_rng_state(rng)

    def _checked_optimizer(self, where: str, saved: dict[str, Any]) -> dict[str, Any]:
        """The optimizer state to load: the saved per-parameter state, checked against this
        run's parameters and optimizer, under this run's parameter groups.

        The groups (lr, momentum, ...) follow from the config, so they are taken from it and
        not from the file; a per-parameter entry must have the optimizer's keys (RMSprop's
        state is not Adam's) with each tensor shaped like its parameter, or the first step
        would fail with a KeyError or a size mismatch.
        """
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        groups, entries = saved.get("param_groups"), saved.get("state")
        if not isinstance(groups, list) or not isinstance(entries, dict):
            raise DataError(f"{where}: checkpoint key 'optimizer' is not an optimizer's state "
                            "(needs 'state' and 'param_groups')")
        counts = [len(g["params"]) if isinstance(g, dict) and isinstance(g.get("params"), list)
                  else -1 for g in groups]
        if sum(counts) != len(params) or -1 in counts:
            raise DataError(f"{where}: the optimizer state was saved for another model "
                            f"({shorten(counts)} parameters in its groups, this model has "
                            f"{len(params)})")
        need = {"rmsprop": {"step", "square_avg"} | ({"momentum_buffer"}
                                                    if self.cfg.momentum > 0 else set()),
                "adam": {"step", "exp_avg", "exp_avg_sq"}}[self.cfg.optimizer]
        checked: dict[int, dict[str, Any]] = {}
        for index, entry in entries.items():
            if not _is_int(index) or not 0 <= index < len(params) or not isinstance(entry, dict):
                raise DataError(f"{where}: checkpoint key 'optimizer.state' has an entry "
                                f"{shorten(index)} that is not one of the model's "
                                f"{len(params)} parameters")
            if not entry:
                continue
            lacking = sorted(need - set(entry))
            if lacking:
                raise DataError(f"{where}: the optimizer state of parameter {index} lacks "
                                f"{lacking[0]!r}: it is not the state of {self.cfg.optimizer} "
                                f"with momentum={self.cfg.momentum} (the run's optimizer and "
                                "momentum cannot change on resume)")
            for name, value in entry.items():
                key = f"optimizer.state.{index}.{name}"
                if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                    raise DataError(f"{where}: checkpoint key {shorten(key)} is not a tensor")
                want = () if name == "step" else tuple(params[index].shape)
                if tuple(value.shape) != want or not _finite_tensor(value):
                    raise DataError(f"{where}: checkpoint key {shorten(key)} has shape "
                                    f"{list(value.shape)} and dtype {value.dtype}, expected "
                                    f"finite values of shape {list(want)}")
                if name == "step" and not 0 <= float(value) <= 2**53:
                    raise DataError(f"{where}: checkpoint key {key!r} is {float(value)}, "
                                    "expected a step count")
            checked[index] = dict(entry)
        out = self.optimizer.state_dict()
        out["state"] = checked
        return out

    def _check_logits(self, where: str, lg: dict[str, Any]) -> None:
        """The best epoch's logits must be those of this run's split: their labels and
        classes are the split's, their logits finite rows over this benchmark's classes."""
        split = self.select_split
        labels = self.bench.labels
        exact = {"y_seen": labels[split.eval_seen], "y_unseen": labels[split.eval_unseen],
                 "seen": split.seen, "unseen": split.unseen}
        rows = {"z_ava_seen": len(split.eval_seen), "z_vaa_seen": len(split.eval_seen),
                "z_ava_unseen": len(split.eval_unseen), "z_vaa_unseen": len(split.eval_unseen)}
        for name in EvalLogits._ARRAYS:
            value = lg[name]
            key = f"best_logits.{name}"
            if name in exact:
                same = (value.dtype in (torch.int64, torch.int32) and value.ndim == 1
                        and np.array_equal(value.numpy(), np.asarray(exact[name])))
                if not same:
                    raise DataError(f"{where}: checkpoint key {key!r} does not match the "
                                    f"{name.replace('_', ' ')} of {self.bench.path}'s split")
                continue
            want = (rows[name], self.bench.n_classes)
            if tuple(value.shape) != want or not _finite_tensor(value):
                raise DataError(f"{where}: checkpoint key {key!r} has shape {list(value.shape)}, "
                                f"expected finite logits of shape {list(want)}")

    def _check_benchmark(self, meta: dict[str, Any]) -> None:
        """A checkpoint only fits a benchmark of the same shapes: say so, not a size-mismatch
        traceback from torch (e.g. `train --resume` with another `--data`)."""
        for key in ("n_classes", "n_attributes", "channels"):
            have = getattr(self.bench, key)
            if key in meta and meta[key] != have:
                raise DataError(f"checkpoint trained with {key}={meta[key]} (benchmark "
                                f"{shorten(meta.get('path', '?'))}) does not fit "
                                f"{self.bench.path}, which has {key}={have}")

    def save(self, path: str | Path) -> Path:
        """Write the full state atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def from_checkpoint(cls, path: str | Path, bench: BenchmarkStore,
                        overrides: dict[str, Any] | None = None) -> Trainer:
        """Rebuild a trainer from a checkpoint file and continue (or evaluate) it."""
        state = load_checkpoint(path)
        cfg = checkpoint_config(state, overrides)
        trainer = cls(cfg, bench)
        trainer.load_state_dict(state)
        return trainer


class Checkpoint(dict[str, Any]):
    """A checkpoint's state as :func:`load_checkpoint` read it: a plain dict that also knows
    its file (``source``), so that later checks name the file."""

    source: str = "checkpoint"


CHECKPOINT_KEYS: dict[str, tuple[type, ...]] = {
    "version": (int,), "config": (dict,), "benchmark": (dict,), "epoch": (int,),
    "model": (dict,), "optimizer": (dict,), "best": (dict,), "best_state": (dict, type(None)),
    "best_logits": (dict, type(None)), "history": (list,), "rng": (dict,),
}
"""Every key of a checkpoint (what :meth:`Trainer.state_dict` writes) and its types."""

BEST_KEYS = (*(f"best/{k}" for k in EVAL_METRICS), "best/epoch")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read one of our checkpoints safely (weights_only) with a clear error when it is not.

    A file torch cannot load with ``weights_only=True`` (text, random bytes, a pickle of
    arbitrary objects) is one line, never torch's advice to load it unsafely; what it holds is
    then checked by :func:`check_checkpoint`.
    """
    path = Path(path)
    try:
        if path.is_dir():
            path = path / "checkpoint.pt"
        found = path.is_file()
    except OSError as exc:
        raise DataError(f"{shorten(str(path))}: cannot read the checkpoint "
                        f"({exc.strerror or exc})") from None
    if not found:
        raise DataError(f"{shorten(str(path))}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise DataError(f"{path}: not a msdn-tune checkpoint (not a file that torch.save "
                        "writes)")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise on stderr
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        reason = ("it is not a file torch.save wrote, or it holds Python objects beyond "
                  "tensors and plain data, which are never loaded")
        raise DataError(f"{path}: not a msdn-tune checkpoint ({reason})") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise DataError(f"{path}: not a msdn-tune checkpoint (torch cannot read it: "
                        f"{detail})") from None
    out = Checkpoint(check_checkpoint(state, str(path)))
    out.source = str(path)
    return out


def check_checkpoint(state: object, where: str) -> dict[str, Any]:
    """``state`` if it has every checkpoint key with the right type, else DataError.

    What needs no model is checked here: the keys and their types, the version, the config
    (a valid :class:`TrainConfig`), the benchmark's record, the epoch, that weights are
    tensors, the best-so-far metrics and the history. :meth:`Trainer.load_state_dict` then
    checks shapes against the model that the config and the benchmark make.
    """
    if not isinstance(state, dict):
        raise DataError(f"{where}: not a msdn-tune checkpoint (it holds {_kind(state)}, not a "
                        "dictionary)")
    for key, types in CHECKPOINT_KEYS.items():
        if key not in state:
            raise DataError(f"{where}: not a msdn-tune checkpoint (key {key!r} is missing)")
        value = state[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise DataError(f"{where}: checkpoint key {key!r} has {_kind(value)}, expected "
                            f"{' or '.join(_TYPE_WORDS[t] for t in types)}")
    if state["version"] != CHECKPOINT_VERSION:
        raise DataError(f"{where}: checkpoint version {shorten(state['version'])} is not "
                        f"supported (expected {CHECKPOINT_VERSION})")
    try:
        TrainConfig.from_dict(state["config"])
    except ConfigError as exc:
        raise DataError(f"{where}: the checkpoint's config is invalid: {exc}") from None
    bench = state["benchmark"]
    for key in ("dataset", "path"):
        if not isinstance(bench.get(key), str):
            raise DataError(f"{where}: checkpoint key 'benchmark.{key}' has "
                            f"{shorten(bench.get(key))}, expected a string")
    for key in ("n_classes", "n_attributes", "channels"):
        if not (_is_int(bench.get(key)) and 1 <= bench[key] <= 2**31 - 1):
            raise DataError(f"{where}: checkpoint key 'benchmark.{key}' has "
                            f"{shorten(bench.get(key))}, expected a positive integer")
    if not 0 <= state["epoch"] <= MAX_EPOCHS:
        raise DataError(f"{where}: checkpoint key 'epoch' has {shorten(state['epoch'])}, "
                        f"expected 0 to {MAX_EPOCHS}")
    for key in ("model", "best_state"):
        weights = state[key]
        if weights is None:
            continue
        bad = next((k for k, v in weights.items()
                    if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
        if bad is not None:
            raise DataError(f"{where}: checkpoint key '{key}.{shorten(bad, 40)}' is not a "
                            "tensor")
    best = state["best"]
    if set(best) != set(BEST_KEYS) or not all(_real(v) for v in best.values()):
        raise DataError(f"{where}: checkpoint key 'best' must hold finite numbers for exactly "
                        f"{list(BEST_KEYS)}, got {shorten(best)}")
    logits = state["best_logits"]
    if logits is not None:
        for name in EvalLogits._ARRAYS:
            value = logits.get(name)
            if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
                raise DataError(f"{where}: checkpoint key 'best_logits.{name}' has "
                                f"{_kind(value)}, expected a tensor")
    history = state["history"]
    if len(history) > MAX_EPOCHS or not all(
            isinstance(m, dict) and all(isinstance(k, str) and _number(v) for k, v in m.items())
            for m in history):
        raise DataError(f"{where}: checkpoint key 'history' must be a list of per-epoch "
                        "metrics (names to numbers)")
    rng = state["rng"].get("torch")
    if not isinstance(rng, torch.Tensor):
        raise DataError(f"{where}: checkpoint key 'rng.torch' has {_kind(rng)}, expected "
                        "torch's generator state")
    return state


def checkpoint_config(state: dict[str, Any], overrides: dict[str, Any] | None = None
                      ) -> TrainConfig:
    """The config of a checked checkpoint with `overrides` on top (ConfigError names the key)."""
    return TrainConfig.from_dict({**state["config"], **(overrides or {})})


_TYPE_WORDS = {int: "an integer", dict: "a dictionary", list: "a list", type(None): "None"}


def _kind(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return {dict: "a dictionary", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "None",
            tuple: "a tuple"}.get(type(value), f"a {type(value).__name__}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _real(value: object) -> bool:
    return _number(value) and math.isfinite(value)  # type: ignore[arg-type]


def _finite_tensor(t: torch.Tensor) -> bool:
    """A dense floating tensor with only finite values."""
    return (t.layout == torch.strided and t.is_floating_point()
            and bool(torch.isfinite(t).all()))


def check_weights(where: str, what: str, have: dict[str, Any],
                   want: dict[str, torch.Tensor]) -> None:
    """`have` must hold exactly `want`'s names, each a finite tensor of the same shape and
    dtype: what `model.load_state_dict` would otherwise fail on with a size mismatch."""
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        name = missing[0] if missing else extra[0]
        says = "lacks" if missing else "has an unknown tensor"
        raise DataError(f"{where}: checkpoint key {what!r} {says} {shorten(name, 40)}: it is not "
                        "the weights of the model its config and the benchmark make")
    for name, ref in want.items():
        value = have[name]
        if tuple(value.shape) != tuple(ref.shape) or value.dtype != ref.dtype:
            raise DataError(f"{where}: checkpoint key '{what}.{name}' has shape "
                            f"{list(value.shape)} ({value.dtype}), the model needs "
                            f"{list(ref.shape)} ({ref.dtype})")
        if not _finite_tensor(value):
            raise DataError(f"{where}: checkpoint key '{what}.{name}' holds NaN or inf (or is "
                            "not a dense floating tensor)")


def evaluate_run(trainer: Trainer, *, use_best: bool = True) -> dict[str, Any]:
    """Test-split metrics of a run's best (or current) weights, with the calibration sweep.

    Reports the configured w1/gamma, the gamma sweep (seen-unseen curve area, best-gamma H) and
    the eval-only tuned settings, each labelled, so that published-protocol numbers and tuned
    ones are never confused.
    """
    from msdn_tune.train.metrics import fused_logits, gamma_sweep

    if use_best and trainer.best_state is not None:
        trainer.model.load_state_dict(trainer.best_state)
    ev = trainer.logits(trainer.test_split)
    cfg = trainer.cfg
    out: dict[str, Any] = {f"test/{k}": float(v)
                           for k, v in evaluate_logits(ev, cfg.w1, cfg.gamma).items()}
    fused_s, fused_u = fused_logits(ev, cfg.w1)
    sweep = gamma_sweep(fused_s, ev.y_seen, fused_u, ev.y_unseen, ev.seen, ev.unseen,
                        candidates=ev.candidates)
    out["test/ausuc"] = float(sweep["ausuc"])
    out["test/best_gamma"] = float(sweep["best_gamma"])
    out["test/H_best_gamma"] = float(sweep["best_H"])
    tuned = tune_eval_settings(ev)
    out.update({"tuned/w1": tuned["w1"], "tuned/gamma": tuned["gamma"], "tuned/H": tuned["H"],
                "tuned/U": tuned["U"], "tuned/S": tuned["S"]})
    return out
