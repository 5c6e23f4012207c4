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

from msdn_tune.space.options import (
    FORMAT_VERSION,
    NAME_PATTERN,
    ASHAScheduler,
    Metric,
    Mode,
    Number,
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
}
"""Settings that make no sense to search: one study is one benchmark under one selection
protocol on one kind of device, otherwise its trials are not comparable."""

if TYPE_CHECKING:  # the Literals are built from TrainConfig at run time; mypy sees str
    Setting = str
    Searchable = str
else:
    Setting = Literal[TrainConfig.field_names()]
    Searchable = Literal[tuple(f for f in TrainConfig.field_names() if f not in NOT_SEARCHABLE)]
Scalar = str | int | float | bool
When = Annotated[
    dict[Setting, Annotated[list[Scalar], Field(min_length=1)]],
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
    step: Number | None = Field(None, gt=0, description="Grid step (not with log).")
    when: When | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step, is_int=False)
        return self


class IntParam(Section):
    """An int parameter: low..high, on a log scale or every step-th value."""

    type: Literal["int"]
    low: int = Field(description="Lower bound (inclusive).")
    high: int = Field(description="Upper bound (inclusive); > low.")
    log: bool = Field(False, description="Sample on a log scale.")
    step: int = Field(1, ge=1, description="Grid step (1 with log).")
    when: When | None = None

    @model_validator(mode="after")
    def _consistent(self) -> IntParam:
        _check_range(self.low, self.high, self.log, self.step, is_int=True)
        return self


class CategoricalParam(Section):
    """A categorical parameter: one of the listed values."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(
        min_length=1, json_schema_extra={"uniqueItems": True}, description="The values to try."
    )
    when: When | None = None

    @model_validator(mode="after")
    def _unique(self) -> CategoricalParam:
        for i, c in enumerate(self.choices):
            if any(same(c, d) for d in self.choices[:i]):
                raise _space_error(f"duplicate choice {c!r}", "choices", i, kind="unique_items")
        return self


Param = Annotated[
    Annotated[FloatParam, Tag("<float>")]
    | Annotated[IntParam, Tag("<int>")]
    | Annotated[CategoricalParam, Tag("<categorical>")],
    tag_by_type(None),
]


class ObjectiveDoc(Section):
    """One metric to optimise, and its direction."""

    metric: Metric
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
    num_samples: int = Field(ge=1, description="Number of trials.")
    max_concurrent_trials: int = Field(
        1, ge=1, description="Trials run at once (always set with Optuna: docs/search.md B3)."
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


def _check_range(
    low: float, high: float, log: bool, step: float | None, *, is_int: bool
) -> None:
    """Rules between a numeric parameter's keys (a schema checks each key alone)."""
    if low >= high:
        raise _space_error(f"must be < high (got {low} >= {high})", "low")
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
    if step is not None:
        n = (high - low) / step
        if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)) or not math.isfinite(n):
            raise _space_error(
                f"high - low must be a multiple of step (got ({high} - {low}) / {step} = "
                f"{n:.4g})",
                "step",
            )
