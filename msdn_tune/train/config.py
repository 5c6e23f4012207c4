"""The trainer's configuration: every hyperparameter of the MSDN++ training recipe, typed.

Defaults per dataset equal the settings of the published MSDN training scripts
(docs/model.md §3), so `TrainConfig.for_dataset("cub")` reproduces the published CUB
recipe and a search only has to say what it changes. Unknown keys and out-of-range values are
rejected with a message naming the key, because a silently ignored typo in a search space wastes a
whole study.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, fields
from typing import Any

import yaml

from msdn_tune.errors import ConfigError
from msdn_tune.model.interventions import INTERVENTIONS

DATASETS = ("cub", "sun", "awa2", "flo", "synthetic")
OPTIMIZERS = ("rmsprop", "adam")
SAMPLERS = ("uniform", "balanced")
PRECISIONS = ("fp32", "bf16")
SELECTIONS = ("official", "clean")

# Published settings (MSDN_cub.py / MSDN_sun.py / MSDN_awa2.py). FLO has no official script: it
# uses CUB's optimiser settings with re-normalised random attribute vectors (reference §2.3).
_PUBLISHED: dict[str, dict[str, Any]] = {
    "cub": dict(momentum=0.9, sampler="uniform", epochs=30, lambda_sc=0.1, lambda_d=1e-3,
                normalize_v=False, w1=0.9, seed=214),
    "sun": dict(momentum=0.9, sampler="balanced", epochs=70, lambda_sc=1e-4, lambda_d=1e-2,
                normalize_v=False, w1=0.7, seed=2339),
    "awa2": dict(momentum=0.0, sampler="balanced", epochs=50, lambda_sc=0.12, lambda_d=1e-7,
                 normalize_v=True, w1=1.0, seed=87778, clip_negative_att=True),
    "flo": dict(momentum=0.9, sampler="uniform", epochs=30, lambda_sc=0.1, lambda_d=1e-3,
                normalize_v=True, w1=0.9, seed=214),
    # The synthetic benchmarks are small: shorter runs, otherwise CUB's recipe.
    "synthetic": dict(momentum=0.9, sampler="uniform", epochs=8, lambda_sc=0.1, lambda_d=1e-3,
                      normalize_v=False, w1=0.9, seed=0, lr=1e-3),
}


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one MSDN++ training run. Field docs say what each one is for."""

    dataset: str = "cub"
    """Which published recipe the defaults come from: cub, sun, awa2, flo or synthetic."""
    optimizer: str = "rmsprop"
    """rmsprop (published) or adam (TransZero's choice)."""
    lr: float = 1e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9
    """RMSprop momentum (published: 0.9 on CUB/SUN, 0 on AWA2); ignored by Adam."""
    batch_size: int = 50
    sampler: str = "uniform"
    """uniform: random batches; balanced: one image per distinct seen class (SUN, AWA2)."""
    epochs: int = 30
    lambda_sc: float = 0.1
    """Self-calibration weight (same for both sub-nets)."""
    lambda_d: float = 1e-3
    """Semantic-distillation weight."""
    lambda_causal: float = 0.0
    """MSDN++ causal (counterfactual-effect) loss weight; 0 with intervention none is MSDN."""
    lambda_ar: float = 0.0
    """Attribute-regression weight (TransZero's loss; off for MSDN fidelity)."""
    intervention: str = "none"
    """Counterfactual attention: none, random, uniform or shuffle."""
    distill_effect: bool = False
    """Also distil the effect logits between the sub-nets."""
    margin: float = 1.0
    """Training margin: +margin on unseen logits, -margin on seen (published 1, gamma_eff 2)."""
    w1: float = 0.9
    """Fusion weight of the AVA sub-net at inference (evaluation-only)."""
    gamma: float = 0.0
    """Extra calibrated-stacking bias added to unseen logits at evaluation (evaluation-only)."""
    kappa: float = 0.0
    """Weight of fused effect logits added at inference (0 = factual logits only, like CAL)."""
    temp_ava: float = 1.0
    """Softmax temperature of the attribute->visual attention over regions (1 = MSDN)."""
    temp_vaa: float = 1.0
    """Softmax temperature of the visual->attribute attention over attributes (1 = MSDN)."""
    normalize_v: bool = False
    """Re-normalise attribute vectors at every forward pass (published: AWA2 only)."""
    normalize_f: bool = True
    """L2-normalise each region's feature vector over channels (published: always)."""
    clip_negative_att: bool = False
    """Clip negative class-attribute entries to 0 before normalising (AWA2)."""
    seed: int = 214
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N."""
    precision: str = "fp32"
    """fp32, or bf16 autocast (GPU, or CPUs with bf16 support)."""
    selection: str = "official"
    """official: best of per-epoch test evaluations (as published); clean: select on validation."""
    eval_batch_size: int = 100
    threads: int = 0
    """torch CPU threads; 0 = the CPUs this process may use."""

    # ----------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Public setting names (what search spaces and `--set` may use)."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def for_dataset(cls, dataset: str) -> TrainConfig:
        """The published recipe for a dataset."""
        if dataset not in DATASETS:
            raise ConfigError(f"dataset: unknown dataset {dataset!r}; expected one of {DATASETS}")
        return cls(dataset=dataset, **_PUBLISHED[dataset])

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, dataset: str | None = None) -> TrainConfig:
        """Build a config from user settings on top of the dataset's published defaults.

        The dataset comes from `values["dataset"]`, else the `dataset` argument, else cub.
        """
        names = set(cls.field_names())
        for key in values:
            if key not in names:
                hint = difflib.get_close_matches(str(key), sorted(names), n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(f"{key}: unknown setting{extra}; known settings: "
                                  f"{', '.join(sorted(names))}")
        ds = values.get("dataset", dataset or "cub")
        base = cls.for_dataset(str(ds))
        typed = {k: _coerce(k, v) for k, v in values.items()}
        cfg = dataclasses.replace(base, **typed)
        cfg.validate()
        return cfg

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some settings changed."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """All public settings as plain Python values."""
        return {k: getattr(self, k) for k in self.field_names()}

    def validate(self) -> None:
        """Reject out-of-range values with a message naming the key."""
        for name, options in FIELD_CHOICES.items():
            _choice(name, getattr(self, name), options)
        _range("lr", self.lr, low=0.0, high=1.0, low_open=True)
        _range("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        _range("w1", self.w1, low=0.0, high=1.0)
        for name in ("weight_decay", "lambda_sc", "lambda_d", "lambda_causal", "lambda_ar",
                     "margin", "kappa"):
            _range(name, getattr(self, name), low=0.0)
        for name in ("temp_ava", "temp_vaa"):
            _range(name, getattr(self, name), low=0.0, low_open=True)
        for name in ("batch_size", "epochs", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1 (got {getattr(self, name)})")
        if self.batch_size < 2:  # the sampler skips one-image batches: nothing would train
            raise ConfigError(f"batch_size: must be >= 2 (got {self.batch_size})")
        if self.seed < 0:  # numpy's seed sequence (batch order) takes non-negative seeds only
            raise ConfigError(f"seed: must be >= 0 (got {self.seed})")
        if self.threads < 0:
            raise ConfigError(f"threads: must be >= 0 (got {self.threads})")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N (got {self.device!r})")
        if self.lambda_causal > 0 and self.intervention == "none":
            raise ConfigError("lambda_causal: a causal loss needs an intervention "
                              "(set intervention to random, uniform or shuffle)")
        if self.kappa > 0 and self.intervention == "none":
            raise ConfigError("kappa: effect logits at inference need an intervention "
                              "(set intervention to random, uniform or shuffle)")


FIELD_TYPES: dict[str, type] = {
    f.name: {"str": str, "float": float, "int": int, "bool": bool}[str(f.type)]
    for f in fields(TrainConfig)
}
"""Each setting's Python type (str, float, int or bool): what YAML and `--set` values become."""

FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASETS,
    "optimizer": OPTIMIZERS,
    "sampler": SAMPLERS,
    "intervention": INTERVENTIONS,
    "precision": PRECISIONS,
    "selection": SELECTIONS,
}
"""The enumerated settings and their values, as `validate` checks them."""


def _coerce(key: str, value: Any) -> Any:
    """Coerce YAML/CLI values to the field's type, rejecting what does not fit."""
    kind = FIELD_TYPES[key]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false (got {value!r})")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer (got {value!r})")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer (got {value!r})")
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number (got {value!r})")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number (got {value!r})") from None
        if out != out or out in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: must be finite (got {value!r})")
        return out
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string (got {value!r})")
    return value


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{key}: expected one of {', '.join(options)} (got {value!r})")


def _range(key: str, value: float, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> None:
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        lo_s = "-inf" if low is None else f"{low:g}"
        hi_s = "inf" if high is None else f"{high:g}"
        raise ConfigError(f"{key}: must be in {lo}{lo_s}, {hi_s}{hi} (got {value!r})")


def parse_set_options(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Parse `--set key=value` pairs; values are YAML scalars (1e-4, true, rmsprop)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, raw = pair.split("=", 1)
        key = key.strip()
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out
