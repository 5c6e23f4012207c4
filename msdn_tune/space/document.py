"""The space file's format as pydantic models: the one description both validation and
search_spaces/schema.json come from.

The models check shape, types, ranges and choices: everything a JSON Schema can say. What a
schema cannot say (ranges against each other, conditions, the trainer's own rules) is checked by
:mod:`msdn_tune.space.checks` on the validated document. Model validators here raise
``PydanticCustomError("space", ...)`` with the message and the key path below the model ("at"),
which :mod:`msdn_tune.space.messages` turns into our error text.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from msdn_tune.safeload import shorten
from msdn_tune.space.options import (
    FLOAT_MAX,
    FORMAT_VERSION,
    INT64_MAX,
    MAX_CHOICES,
    MAX_CONCURRENT,
    MAX_TRIALS,
    NAME_PATTERN,
    SETTING_BOUNDS,
    ASHAScheduler,
    Confirm,
    Int,
    Metric,
    Mode,
    Number,
    Real,
    Resources,
    Sampler,
    Scheduler,
    Section,
    TPESampler,
    Tracking,
    tag_by_type,
)
from msdn_tune.train.config import FIELD_CHOICES, FIELD_TYPES, TrainConfig

NOT_SEARCHABLE = {
    "dataset": "one study trains on one benchmark; write one space file per dataset",
    "selection": "trials selected under different protocols are not comparable",
    "device": "the device comes from the trial's resources, not from the search",
    "init": "the weights every trial starts from are read once, before the search",
}
"""Settings that make no sense to search: one study is one benchmark under one selection
protocol on one kind of device, otherwise its trials are not comparable."""

if TYPE_CHECKING:  # the Literals are built from TrainConfig at run time; mypy sees str
    Setting = str
    Searchable = str
else:
    Setting = Literal[TrainConfig.field_names()]
    Searchable = Literal[tuple(f for f in TrainConfig.field_names() if f not in NOT_SEARCHABLE)]
Scalar = str | Number | bool
When = Annotated[
    dict[Setting, Annotated[list[Scalar], Field(min_length=1, max_length=MAX_CHOICES)]],
    Field(
        min_length=1,
        description="Exists only while each named categorical parameter takes one of the "
        "listed values.",
    ),
]


def _space_error(message: str, *at: str | int, kind: str = "space") -> PydanticCustomError:
    """Our message for a rule the fields' types cannot say, with the key path below the model.

    `kind` "space" marks a rule between keys that no JSON Schema expresses; another kind names
    a rule the schema does express (uniqueItems), so the two can be compared.
    """
    return PydanticCustomError(kind, "{message}", {"message": message, "at": at})


class FloatParam(Section):
    """A float parameter: low..high, on a log scale or a grid."""

    type: Literal["float"]
    low: Number = Field(description="Lower bound (inclusive).")
    high: Number = Field(description="Upper bound (inclusive); > low.")
    log: bool = Field(False, description="Sample on a log scale.")
    step: Real | None = Field(
        None, gt=0, le=FLOAT_MAX, description="Grid step (not with log); at most high - low."
    )
    when: When | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step, is_int=False)
        return self


class IntParam(Section):
    """An int parameter: low..high, on a log scale or every step-th value."""

    type: Literal["int"]
    low: Int = Field(description="Lower bound (inclusive).")
    high: Int = Field(description="Upper bound (inclusive); > low.")
    log: bool = Field(False, description="Sample on a log scale.")
    step: Int | None = Field(
        1, ge=1, description="Grid step (1 with log; null: 1); at most high - low."
    )
    when: When | None = None

    @model_validator(mode="after")
    def _consistent(self) -> IntParam:
        _check_range(self.low, self.high, self.log, self.step or 1, is_int=True)
        return self


class CategoricalParam(Section):
    """A categorical parameter: one of the listed values."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(
        min_length=1,
        max_length=MAX_CHOICES,
        json_schema_extra={"uniqueItems": True},
        description="The values to try.",
    )
    when: When | None = None

    @model_validator(mode="after")
    def _unique(self) -> CategoricalParam:
        seen: set[tuple[bool, Any]] = set()
        for i, c in enumerate(self.choices):
            key = identity(c)
            if key in seen:
                raise _space_error(
                    f"duplicate choice {shorten(c)}", "choices", i, kind="unique_items"
                )
            seen.add(key)
        return self


Param = Annotated[
    Annotated[FloatParam, Tag("<float>")]
    | Annotated[IntParam, Tag("<int>")]
    | Annotated[CategoricalParam, Tag("<categorical>")],
    tag_by_type(None),
]


class ObjectiveDoc(Section):
    """One metric to optimise, and its direction."""

    metric: Metric = Field(
        description="best/H: the best epoch's validation H (as MSDN reports); mean/H: the mean "
        "over the trial's epochs, steadier against lucky epochs; val/*: the last epoch's; "
        "eval/H_tuned and test/* arrive once, at the end."
    )
    mode: Mode = "max"


def _objective_tag(value: Any) -> str:
    return "<list>" if isinstance(value, list) else "<one>"


ObjectiveField = Annotated[
    Annotated[ObjectiveDoc, Tag("<one>")]
    | Annotated[list[ObjectiveDoc], Field(min_length=1), Tag("<list>")],
    Discriminator(_objective_tag),
]


def _setting_type(name: str) -> Any:
    if name in FIELD_CHOICES:
        return Literal[FIELD_CHOICES[name]]
    if name in SETTING_BOUNDS:
        low, high = SETTING_BOUNDS[name]
        return Annotated[FIELD_TYPES[name], Field(ge=low, le=high)]
    if FIELD_TYPES[name] is float:
        return Annotated[float, Field(ge=-FLOAT_MAX, le=FLOAT_MAX)]
    if FIELD_TYPES[name] is int:  # an integer setting added without bounds: 64-bit at least
        return Int
    return FIELD_TYPES[name]


FixedSettings: type[Section] = create_model(  # type: ignore[call-overload]
    "FixedSettings",
    __base__=Section,
    __doc__="Trainer settings (TrainConfig fields) held fixed; unset ones take the dataset's "
    "published defaults.",
    **{
        name: (_setting_type(name), ... if name == "dataset" else None)
        for name in TrainConfig.field_names()
    },
)


class SpaceDocument(Section):
    """One study: what to search, how, and where its results go."""

    version: Literal[FORMAT_VERSION] = Field(  # type: ignore[valid-type]
        description=f"Format version; this msdn-tune reads {FORMAT_VERSION}."
    )
    @field_validator("version", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        if isinstance(value, bool):  # Literal[1] would take true (true == 1 in Python)
            raise PydanticCustomError("literal_error", "a boolean is not a version")
        return value

    name: str | None = Field(
        None,
        pattern=f"^{NAME_PATTERN}$",
        description="Study name: Ray experiment directory and MLflow parent run (default: file "
        "stem).",
    )
    data: str = Field(
        min_length=1,
        description="Benchmark store path, or a synthetic preset name (demo). ${VAR} and "
        "${VAR:-default} are expanded; relative paths are made absolute.",
    )
    fixed: FixedSettings = Field(  # type: ignore[valid-type]
        description="Trainer settings (TrainConfig fields) held fixed; unset ones take the "
        "dataset's published defaults."
    )
    params: dict[Searchable, Param] = Field(
        min_length=1,
        description="Searched trainer settings: name -> {type: float|int|categorical, ...}.",
    )
    objective: ObjectiveField = Field(
        default_factory=lambda: ObjectiveDoc.model_validate({"metric": "best/H"}),
        description="What to optimise: {metric, mode}, or a list of them for a multi-objective "
        "study.",
    )
    sampler: Sampler = Field(
        default_factory=lambda: TPESampler.model_validate({}),
        description="Optuna sampler: {type: tpe|random|gp|cmaes|nsga2, seed, ...}.",
    )
    scheduler: Scheduler = Field(
        default_factory=lambda: ASHAScheduler.model_validate({}),
        description="Early stopping: {type: asha, grace_period, max_t, ...} or {type: none}.",
    )
    num_samples: int = Field(ge=1, le=MAX_TRIALS, description="Number of trials.")
    max_concurrent_trials: int = Field(
        1,
        ge=1,
        le=MAX_CONCURRENT,
        description="Trials run at once (always set with Optuna: docs/search.md B3).",
    )
    confirm: Confirm | None = Field(
        None,
        description="After the search, re-run the top_k best completed configurations with "
        "`seeds` fresh training seeds each and choose by the mean: {top_k, seeds}. null: off.",
    )
    resources: Resources = Field(
        default_factory=lambda: Resources.model_validate({}),
        description="Resources per trial: {cpu, gpu}.",
    )
    storage_path: str = Field(
        "./msdn_results",
        min_length=1,
        description="Where Ray Tune keeps results; a shared mount or URI on a multi-node "
        "cluster. ${VAR} expanded; relative paths are made absolute.",
    )
    tracking: Tracking = Field(
        default_factory=lambda: Tracking.model_validate({}),
        description="MLflow settings: {uri, experiment}.",
    )


def same(a: Any, b: Any) -> bool:
    """Equality that keeps true apart from 1 (YAML booleans are not numbers here)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def identity(value: Any) -> tuple[bool, Any]:
    """A hashable key with the equality of :func:`same` (1 and 1.0 alike, true apart), so
    duplicates among many values are found in linear time."""
    return (isinstance(value, bool), value)


def _check_range(
    low: float, high: float, log: bool, step: float | None, *, is_int: bool
) -> None:
    """Rules between a numeric parameter's keys (a schema checks each key alone).

    Each one is a range Optuna would refuse, or silently change: a step larger than the range
    collapses it to [low, low], a width beyond the largest float makes every draw infinite.
    """
    if low >= high:
        raise _space_error(f"must be < high (got {shorten(low)} >= {shorten(high)})", "low")
    if log:
        if low <= 0:
            raise _space_error(f"log scale needs low > 0 (got {low})", "low")
        if not is_int and step is not None:
            raise _space_error(
                "cannot be combined with log: true (Optuna samples either on a log scale or on "
                "a grid)",
                "step",
            )
        if is_int and step != 1:
            raise _space_error(f"must be 1 with log: true (got {step})", "step")
    if is_int:
        istep = int(step or 1)
        width = int(high) - int(low)
        if istep > width:
            raise _space_error(
                f"must be at most high - low = {width} (got {shorten(istep)}): a larger step "
                "leaves only low",
                "step",
            )
        if width % istep:
            raise _space_error(
                f"high - low must be a multiple of step (got ({high} - {low}) / {istep} = "
                f"{width / istep:.4g})",
                "step",
            )
        return
    width_f = float(high) - float(low)
    if not math.isfinite(width_f):
        raise _space_error(
            f"high - low must be at most {FLOAT_MAX:.4g}, the largest float (got {low} .. "
            f"{high})",
            "high",
        )
    if step is not None:
        if step > width_f:
            raise _space_error(
                f"must be at most high - low = {width_f:g} (got {step:g}): Optuna would "
                "collapse the range to low",
                "step",
            )
        n = width_f / float(step)
        if not math.isfinite(n) or n > INT64_MAX:
            raise _space_error(
                f"too small for the range: (high - low) / step = {n:.4g} grid points (at most "
                f"{INT64_MAX:.4g})",
                "step",
            )
        if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
            raise _space_error(
                f"high - low must be a multiple of step (got ({high} - {low}) / {step} = "
                f"{n:.4g})",
                "step",
            )
