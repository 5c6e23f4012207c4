"""The study file's vocabulary and its option sections: metrics, modes, the sampler and
scheduler types with their options, resources and tracking, each with its doc and default.

The section models here are part of the one declarative description of the format
(:mod:`msdn_tune.space.document` assembles the rest): validation runs through them and
search_spaces/schema.json is generated from them, so the two cannot drift.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator
from pydantic_core import PydanticCustomError

FORMAT_VERSION = 1
"""The only version this msdn-tune reads; bump it (and keep a reader) when the format changes."""

OBJECTIVE_METRICS: tuple[str, ...] = (
    "best/H",
    "best/zsl_acc",
    "best/U",
    "best/S",
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
    m for m in OBJECTIVE_METRICS if m.startswith(("best/", "val/"))
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

Metric = Literal[OBJECTIVE_METRICS]  # type: ignore[valid-type]
EpochMetric = Literal[EPOCH_METRICS]  # type: ignore[valid-type]
Mode = Literal["max", "min"]
Number = int | float
"""A number as written: ints stay ints (`space show` prints what the file says)."""


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

Seed = Annotated[int | None, Field(description="Sampler seed (null: unseeded). Same seed, same "
                                   "first suggestions.")]
NStartup = Annotated[
    int | None,
    Field(
        ge=0,
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
    sigma0: Number | None = Field(
        None, gt=0, description="Initial step size (null: Optuna's default)."
    )
    with_margin: bool = Field(False, description="CMA-ES with margin (better for int parameters).")


class NSGA2Sampler(Section):
    """NSGA-II genetic algorithm: multi-objective studies with many trials."""

    type: Literal["nsga2"]
    seed: Seed = 0
    population_size: int = Field(50, ge=2, description="Individuals per generation.")
    crossover_prob: Number = Field(0.9, ge=0, le=1, description="Crossover probability.")
    mutation_prob: Number | None = Field(
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
        1, ge=1, description="Epochs every trial runs before it can be stopped."
    )
    max_t: int | None = Field(
        None, ge=1, description="Epochs of the top rung (null: the most epochs a trial runs)."
    )
    reduction_factor: Number = Field(
        4, gt=1, description="Keep 1/reduction_factor of trials per rung."
    )
    brackets: int = Field(1, ge=1, description="Number of ASHA brackets.")
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
# Resources and tracking


class Resources(Section):
    """Resources per trial: {cpu, gpu}."""

    cpu: Number = Field(1, gt=0, description="CPUs reserved per trial (fractions allowed).")
    gpu: Number = Field(
        0,
        ge=0,
        description="GPUs per trial: 0, a fraction < 1 to share a card (nothing isolates memory: "
        "only when two trials fit), or a whole number.",
    )

    @model_validator(mode="after")
    def _whole_or_fraction(self) -> Resources:
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
        None, description="MLflow experiment (null: the tracking layer's default)."
    )
