"""The trainer's configuration: every hyperparameter of the MSDN++ training recipe, typed.

Defaults per dataset equal the settings of the published MSDN training scripts
(docs/model.md §3), so `TrainConfig.for_dataset("cub")` reproduces the published CUB
recipe and a search only has to say what it changes. Unknown keys and out-of-range values are
rejected with a message naming the key, because a silently ignored typo in a search space wastes a
whole study. A `TrainConfig` checks itself when it is made (however it is made: `from_dict`,
`replace`, a space file's `fixed:` section, a checkpoint's config), and every number is bounded
where anything downstream has a bound (:data:`BOUNDS`), so a value that would only fail in the
middle of a run (a seed torch refuses, 2**70 threads) is refused up front with its key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from msdn_tune.errors import ConfigError
from msdn_tune.model.interventions import INTERVENTIONS
from msdn_tune.safeload import parse_yaml, shorten

DATASETS = ("cub", "sun", "awa2", "flo", "synthetic")
OPTIMIZERS = ("rmsprop", "adam")
SAMPLERS = ("uniform", "balanced")
PRECISIONS = ("auto", "fp32", "bf16")
SELECTIONS = ("official", "clean")

MAX_SEED = 2**32 - 1
"""Largest seed: the range numpy, torch and Optuna all accept."""
MAX_THREADS = 1024
"""Most torch CPU threads (torch.set_num_threads takes a C int; no machine has more cores)."""
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 16
"""Largest training or evaluation batch (65,536 feature maps: far past any GPU's memory)."""
MAX_WEIGHT = 1e6
"""Largest margin, |gamma|, kappa or attention temperature: they enter float32 logits directly,
and far larger values only overflow them (3.4e38)."""
MIN_TEMP = 1e-6
"""Smallest attention temperature: logits divided by less overflow float32."""
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

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
    precision: str = "auto"
    """auto: bf16 autocast where it is faster on this machine (measured once per CPU, see
    msdn_tune.train.precision; on CUDA where the GPU has native bf16), else fp32; fp32; or bf16
    autocast (GPU, or CPUs with bf16 instructions)."""
    selection: str = "official"
    """official: best of per-epoch test evaluations (as published); clean: select on validation."""
    eval_batch_size: int = 100
    threads: int = 0
    """torch CPU threads; 0 = the CPUs this process may use."""
    init: str = ""
    """Start from these weights instead of a random draw: one of our checkpoints, a models:/ or
    runs:/ URI, or a published MSDN .pth ("" = a fresh model). The caller loads them (see
    `Trainer`'s init_weights); the class matrix always comes from the benchmark."""

    # ----------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        """Check every field's type and range however the config was made (see the module)."""
        for name, kind in FIELD_TYPES.items():
            value = getattr(self, name)
            # floats always: NaN and inf are floats too
            typed = _coerce(name, value) if kind is float or not _exact(value, kind) else value
            if typed is not value:
                object.__setattr__(self, name, typed)
        self.validate()

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Public setting names (what search spaces and `--set` may use)."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def for_dataset(cls, dataset: str) -> TrainConfig:
        """The published recipe for a dataset."""
        if dataset not in DATASETS:
            raise ConfigError(f"dataset: unknown dataset {shorten(dataset)}; expected one of "
                              f"{DATASETS}")
        return cls(dataset=dataset, **_PUBLISHED[dataset])

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, dataset: str | None = None) -> TrainConfig:
        """Build a config from user settings on top of the dataset's published defaults.

        The dataset comes from `values["dataset"]`, else the `dataset` argument, else cub.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"settings: expected a mapping of setting names to values "
                              f"(got {shorten(values)})")
        names = set(cls.field_names())
        for key in values:
            if key not in names:
                hint = (difflib.get_close_matches(key, sorted(names), n=1)
                        if isinstance(key, str) and len(key) <= 64 else [])
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                shown = key if isinstance(key, str) and _KEY.fullmatch(key) else shorten(key, 40)
                raise ConfigError(f"{shown}: unknown setting{extra}; known settings: "
                                  f"{', '.join(sorted(names))}")
        ds = values.get("dataset", dataset or "cub")
        if not isinstance(ds, str):
            raise ConfigError(f"dataset: expected one of {', '.join(DATASETS)} "
                              f"(got {shorten(ds)})")
        base = cls.for_dataset(ds)
        typed = {k: _coerce(k, v) for k, v in values.items()}
        return dataclasses.replace(base, **typed)

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
        for name, (low, high, low_open, high_open) in BOUNDS.items():
            _range(name, getattr(self, name), low=low, high=high, low_open=low_open,
                   high_open=high_open)
        if not re.fullmatch(r"auto|cpu|cuda(:\d{1,4})?", self.device):
            raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N "
                              f"(got {shorten(self.device)})")
        if len(self.init) > 4096 or "\n" in self.init or "\x00" in self.init:
            raise ConfigError(f"init: expected a checkpoint path or model URI on one line "
                              f"(got {shorten(self.init)})")
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

BOUNDS: dict[str, tuple[int | float, int | float, bool, bool]] = {
    "lr": (0.0, 1.0, True, False),
    "momentum": (0.0, 1.0, False, True),
    "w1": (0.0, 1.0, False, False),
    # loss weights scale a loss (too large a one diverges at the first step, which a run
    # reports): finite is enough; margin, gamma and kappa enter float32 logits directly
    **{name: (0.0, math.inf, False, False)
       for name in ("weight_decay", "lambda_sc", "lambda_d", "lambda_causal", "lambda_ar")},
    "margin": (0.0, MAX_WEIGHT, False, False),
    "kappa": (0.0, MAX_WEIGHT, False, False),
    "gamma": (-MAX_WEIGHT, MAX_WEIGHT, False, False),
    "temp_ava": (MIN_TEMP, MAX_WEIGHT, False, False),
    "temp_vaa": (MIN_TEMP, MAX_WEIGHT, False, False),
    # the sampler skips one-image batches: with batch_size 1 nothing would train
    "batch_size": (2, MAX_BATCH, False, False),
    "eval_batch_size": (1, MAX_BATCH, False, False),
    "epochs": (1, MAX_EPOCHS, False, False),
    "seed": (0, MAX_SEED, False, False),
    "threads": (0, MAX_THREADS, False, False),
}
"""Every numeric setting's range: (low, high, low excluded, high excluded)."""

FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASETS,
    "optimizer": OPTIMIZERS,
    "sampler": SAMPLERS,
    "intervention": INTERVENTIONS,
    "precision": PRECISIONS,
    "selection": SELECTIONS,
}
"""The enumerated settings and their values, as `validate` checks them."""


def _exact(value: Any, kind: type) -> bool:
    """Whether `value` already is a `kind` (a bool is not an int here)."""
    if kind is not bool and isinstance(value, bool):
        return False
    return isinstance(value, kind)


def _coerce(key: str, value: Any) -> Any:
    """Coerce YAML/CLI values to the field's type, rejecting what does not fit."""
    kind = FIELD_TYPES[key]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false (got {shorten(value)})")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer (got {shorten(value)})")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and len(value) <= 64:
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer (got {shorten(value)})")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{key}: expected a number (got {shorten(value)})")
        if isinstance(value, str) and len(value) > 64:
            raise ConfigError(f"{key}: expected a number (got {shorten(value)})")
        try:
            out = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number (got {shorten(value)})") from None
        except OverflowError:  # an int past float's range (e.g. 1 followed by 400 zeros)
            raise ConfigError(f"{key}: must be finite (got {shorten(value)})") from None
        if not math.isfinite(out):
            raise ConfigError(f"{key}: must be finite (got {shorten(value)})")
        return out
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string (got {shorten(value)})")
    return value


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{key}: expected one of {', '.join(options)} (got {shorten(value)})")


def _range(key: str, value: float, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> None:
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        lo_s = "-inf" if low is None else _bound(low)
        hi_s = "inf" if high is None or high == math.inf else _bound(high)
        raise ConfigError(f"{key}: must be in {lo}{lo_s}, {hi_s}{hi} (got {shorten(value)})")


def _bound(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def parse_set_options(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Parse `--set key=value` pairs; values are YAML scalars (1e-4, true, rmsprop).

    Values are read by the safe loader (msdn_tune.safeload), so an impossible date, a
    5,000-digit integer or an alias bomb is one ConfigError naming the option; whether the value
    fits the setting is TrainConfig's to say.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"--set {shorten(pair)}: expected key=value")
        if not _KEY.fullmatch(key):
            raise ConfigError(f"--set {shorten(key)}: not a setting name (letters, digits and _, "
                              "at most 64)")
        if not raw.isprintable():  # PyYAML's reader refuses them with its own error
            raise ConfigError(f"--set {key}: the value {shorten(raw)} holds a control character")
        out[key] = parse_yaml(raw, source=f"--set {key}", error=ConfigError) if raw.strip() else ""
    return out
