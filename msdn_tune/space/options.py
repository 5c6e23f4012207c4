"""The study file's vocabulary and its option sections: metrics, modes, the sampler and
scheduler types with their options, resources and tracking, each with its doc and default.

The section models here are part of the one declarative description of the format
(:mod:`msdn_tune.space.document` assembles the rest): validation runs through them and
search_spaces/schema.json is generated from them, so the two cannot drift.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

FORMAT_VERSION = 1
"""The only version this msdn-tune reads; bump it (and keep a reader) when the format changes."""

OBJECTIVE_METRICS: tuple[str, ...] = (
    "best/H",
    "best/zsl_acc",
    "best/U",
    "best/S",
    "mean/H",
    "val/H",
    "val/zsl_acc",
    "val/U",
    "val/S",
    "eval/H_tuned",
    "test/H",
    "test/zsl_acc",
)
"""Metric names a study may optimise (ARCHITECTURE.md "Metric names"); all are accuracies."""

EPOCH_METRICS: tuple[str, ...] = tuple(
    m for m in OBJECTIVE_METRICS if m.startswith(("best/", "mean/", "val/"))
)
"""Objective metrics reported every epoch, so early stopping can compare trials on them
(`eval/*` and `test/*` arrive once, at the end of a trial)."""

PARAM_TYPES = ("float", "int", "categorical")
MODES = ("max", "min")

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
"""A study name: it names directories and MLflow runs."""

STARTUP_DEFAULT = {"tpe": 10, "gp": 10, "cmaes": 1}
"""n_startup_trials when the file leaves it out: the Optuna 5 constructor defaults, raised to
max_concurrent_trials (docs/search.md B4)."""

# ------------------------------------------------------------------------------------------------
# Bounds: every number a space file holds is bounded where something downstream has a bound, so
# a value is refused here rather than by torch, numpy, Optuna or Ray once the study is running.

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Integers are 64-bit downstream (torch, numpy, Arrow, MLflow)."""
FLOAT_MAX = sys.float_info.max
"""The largest finite 64-bit float: a longer integer cannot become a float."""
SEED_MAX = 2**32 - 1
"""numpy's legacy seeding and Optuna's samplers take 0..2**32-1 (torch takes more)."""
MAX_TRIALS = 1_000_000
"""num_samples, n_startup_trials and population_size: far beyond any real study."""
MAX_CONCURRENT = 10_000
MAX_EPOCHS = 100_000
MAX_THREADS = 4096
MAX_BATCH = 1 << 20
MAX_CPU = 4096
"""One trial's bundle must fit on one node."""
MAX_GPU = 256
MIN_RESOURCE = 0.0001
"""Ray's resource granularity: a smaller non-zero amount rounds to nothing."""
MAX_BRACKETS = 100
MIN_REDUCTION = 1.1
"""ASHA makes log(max_t / grace_period) / log(reduction_factor) rungs: bounded this way."""
MAX_CHOICES = 1000
"""Choices of a categorical parameter and values of a `when` list (kept small so checks that
compare them stay fast)."""

SETTING_BOUNDS: dict[str, tuple[int, int]] = {
    "seed": (0, SEED_MAX),
    "epochs": (1, MAX_EPOCHS),
    "threads": (0, MAX_THREADS),
    "batch_size": (2, MAX_BATCH),
    "eval_batch_size": (1, MAX_BATCH),
}
"""The integer trainer settings and the values they may take, fixed or searched. TrainConfig
checks the lower bounds itself; the upper ones are what torch, numpy and Optuna accept (seeds),
or sensible limits (a study of 10**9 epochs is a typo)."""

Int = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
"""An integer as torch and numpy hold it (64-bit)."""

Metric = Literal[OBJECTIVE_METRICS]  # type: ignore[valid-type]
EpochMetric = Literal[EPOCH_METRICS]  # type: ignore[valid-type]
Mode = Literal["max", "min"]
Number = Annotated[int | float, Field(ge=-FLOAT_MAX, le=FLOAT_MAX)]
"""A finite number as written: ints stay ints (`space show` prints what the file says), and an
integer too long to become a float is refused."""
Real = int | float
"""A number for a field that states both its bounds itself (pydantic's schema would show only
one of two `ge`s)."""


class Section(BaseModel):
    """A mapping of the space file: strict types (YAML gives typed values; "8" is not 8) and
    unknown keys rejected (a typo in a study file silently wastes hours of GPU time)."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, allow_inf_nan=False
    )


def tag_by_type(default: str | None) -> Any:
    """A discriminator for a section selected by its `type` key (`default` when it is left out).

    The tags are written <name> so error paths can drop them (they are not keys of the file).
    """

    def tag(value: Any) -> str | None:
        if not isinstance(value, dict):
            return None
        kind = value.get("type", default)
        if kind is None:
            return None
        return f"<{kind}>" if isinstance(kind, str) else f"<{kind!r}>"

    return Discriminator(tag)


# ------------------------------------------------------------------------------------------------
# Samplers

Seed = Annotated[
    int | None,
    Field(
        ge=0,
        le=SEED_MAX,
        description="Sampler seed, 0..2**32-1 (null: unseeded). Same seed, same first "
        "suggestions.",
    ),
]
NStartup = Annotated[
    int | None,
    Field(
        ge=0,
        le=MAX_TRIALS,
        description="Random trials before the model-based sampler starts. Default: the "
        "library's default, raised to max_concurrent_trials (docs/search.md B4).",
    ),
]


class TPESampler(Section):
    """Tree-structured Parzen estimator (default): good for conditional and categorical spaces."""

    type: Literal["tpe"] = "tpe"
    seed: Seed = 0
    n_startup_trials: NStartup = None
    multivariate: bool | None = Field(
        None, description="Multivariate TPE (null: Optuna's default, on for a single objective)."
    )
    group: bool | None = Field(
        None,
        description="Group-decomposed TPE for conditional spaces (null: on when some parameter "
        "has `when`).",
    )
    constant_liar: bool = Field(
        True, description="Avoid suggesting near running trials (parallel studies)."
    )


class RandomSampler(Section):
    """Independent random sampling: a baseline."""

    type: Literal["random"]
    seed: Seed = 0


class GPSampler(Section):
    """Gaussian-process Bayesian optimisation: small continuous spaces, few trials."""

    type: Literal["gp"]
    seed: Seed = 0
    n_startup_trials: NStartup = None
    deterministic_objective: bool = Field(False, description="Assume noise-free objective values.")


class CmaEsSampler(Section):
    """CMA-ES: many trials over continuous parameters, single objective; needs the `cmaes`
    package."""

    type: Literal["cmaes"]
    seed: Seed = 0
    n_startup_trials: NStartup = None
    sigma0: Real | None = Field(
        None, gt=0, le=FLOAT_MAX, description="Initial step size (null: Optuna's default)."
    )
    with_margin: bool = Field(False, description="CMA-ES with margin (better for int parameters).")


class NSGA2Sampler(Section):
    """NSGA-II genetic algorithm: multi-objective studies with many trials."""

    type: Literal["nsga2"]
    seed: Seed = 0
    population_size: int = Field(50, ge=2, le=MAX_TRIALS, description="Individuals per generation.")
    crossover_prob: Real = Field(0.9, ge=0, le=1, description="Crossover probability.")
    mutation_prob: Real | None = Field(
        None, ge=0, le=1, description="Mutation probability (null: 1/#params)."
    )


SAMPLER_OPTIONS: dict[str, type[Section]] = {
    "tpe": TPESampler,
    "random": RandomSampler,
    "gp": GPSampler,
    "cmaes": CmaEsSampler,
    "nsga2": NSGA2Sampler,
}
"""Sampler type -> its options (the model's fields, docs and defaults)."""

Sampler = Annotated[
    Annotated[TPESampler, Tag("<tpe>")]
    | Annotated[RandomSampler, Tag("<random>")]
    | Annotated[GPSampler, Tag("<gp>")]
    | Annotated[CmaEsSampler, Tag("<cmaes>")]
    | Annotated[NSGA2Sampler, Tag("<nsga2>")],
    tag_by_type("tpe"),
]


# ------------------------------------------------------------------------------------------------
# Schedulers


class ASHAScheduler(Section):
    """Asynchronous successive halving on our `epoch` counter: stops poor trials early."""

    type: Literal["asha"] = "asha"
    grace_period: int = Field(
        1, ge=1, le=MAX_EPOCHS, description="Epochs every trial runs before it can be stopped."
    )
    max_t: int | None = Field(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="Epochs of the top rung (null: the most epochs a trial runs).",
    )
    reduction_factor: Real = Field(
        4, ge=MIN_REDUCTION, le=FLOAT_MAX, description="Keep 1/reduction_factor of trials per rung."
    )
    brackets: int = Field(1, ge=1, le=MAX_BRACKETS, description="Number of ASHA brackets.")
    metric: EpochMetric | None = Field(
        None,
        description="Metric ASHA watches; it must be reported every epoch (null: the first "
        "objective if it is, else best/H).",
    )
    mode: Mode | None = Field(None, description="max or min (null: the watched objective's mode).")


class FIFOScheduler(Section):
    """Run every trial to the end (FIFO)."""

    type: Literal["none"]


SCHEDULER_OPTIONS: dict[str, type[Section]] = {"asha": ASHAScheduler, "none": FIFOScheduler}
"""Scheduler type -> its options."""

Scheduler = Annotated[
    Annotated[ASHAScheduler, Tag("<asha>")] | Annotated[FIFOScheduler, Tag("<none>")],
    tag_by_type("asha"),
]


# ------------------------------------------------------------------------------------------------
# Confirmation, resources and tracking

MAX_CONFIRM = 100
"""Most configurations, and most seeds each, a confirmation stage re-runs."""


class Confirm(Section):
    """The confirmation stage: {top_k, seeds}."""

    top_k: int = Field(
        3,
        ge=1,
        le=MAX_CONFIRM,
        description="How many of the best completed configurations are re-run after the search.",
    )
    seeds: int = Field(
        3,
        ge=1,
        le=MAX_CONFIRM,
        description="Fresh training seeds per configuration (the study's seed + 1, + 2, ...). "
        "The recommendation and the champion model are chosen by the mean over them.",
    )



class Resources(Section):
    """Resources per trial: {cpu, gpu}."""

    cpu: Real = Field(
        1,
        ge=MIN_RESOURCE,
        le=MAX_CPU,
        description="CPUs reserved per trial (fractions allowed, down to 0.0001).",
    )
    gpu: Annotated[Real, Field(ge=0, le=MAX_GPU)] | Literal["auto"] = Field(
        0,
        description="GPUs per trial: 0, a fraction < 1 to share a card (each trial's CUDA "
        "memory is capped at its share), a whole number, or auto: as many trials per GPU as "
        "fit its memory at the benchmark's shapes (`space validate` prints the rule).",
    )

    @field_validator("gpu", mode="before")
    @classmethod
    def _number_or_auto(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto":
            # not "space": that type marks rules beyond the JSON schema, and this one is in it
            raise PydanticCustomError(
                "number_or_auto", "{message}",
                {"message": f"expected a number or auto (got the string {value[:40]!r})"})
        return value

    @model_validator(mode="after")
    def _whole_or_fraction(self) -> Resources:
        if self.gpu == "auto":
            return self
        if 0 < self.gpu < MIN_RESOURCE:
            raise PydanticCustomError(
                "space",
                "{message}",
                {
                    "message": f"must be 0 or at least {MIN_RESOURCE} (Ray's smallest amount; "
                    f"got {self.gpu})",
                    "at": ("gpu",),
                },
            )
        if self.gpu > 1 and float(self.gpu) != int(self.gpu):
            raise PydanticCustomError(
                "space",
                "{message}",
                {
                    "message": f"must be a fraction below 1 or a whole number (got {self.gpu})",
                    "at": ("gpu",),
                },
            )
        return self


class Tracking(Section):
    """MLflow settings: {uri, experiment}."""

    uri: str | None = Field(
        None,
        description="MLflow tracking URI (null: the tracking layer's default). ${VAR} and "
        "${VAR:-default} are expanded.",
    )
    experiment: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="MLflow experiment, at most 256 characters (null: the tracking layer's "
        "default).",
    )
