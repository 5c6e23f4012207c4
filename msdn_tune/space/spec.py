"""The study spec: a validated study description with every default resolved, and how a space
file's document becomes one.

It holds what a study searches (parameters, objectives, sampler, scheduler) and where it runs and
reports (data, resources, storage, tracking); `run`, `space show` and the Optuna and Ray
adapters read it.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from msdn_tune.safeload import shorten
from msdn_tune.space.checks import Checker, max_epochs
from msdn_tune.space.document import (
    CategoricalParam,
    FloatParam,
    IntParam,
    ObjectiveDoc,
    SpaceDocument,
)
from msdn_tune.space.env import absolute_if_path, absolute_storage, check_path, expand
from msdn_tune.space.messages import describe, fail, raise_validation_error
from msdn_tune.space.options import (
    EPOCH_METRICS,
    NAME_PATTERN,
    STARTUP_DEFAULT,
    Confirm,
    Section,
)
from msdn_tune.space.params import Objective, ParamSpec, dependency_order
from msdn_tune.train.config import FIELD_TYPES

_OVERRIDABLE = ("num_samples", "max_concurrent_trials", "storage_path", "name", "data",
                "confirm")


@dataclass(frozen=True)
class StudySpec:
    """A validated study description, every default resolved."""

    path: Path | None
    version: int
    name: str
    data: str
    fixed: dict[str, Any]
    params: dict[str, ParamSpec]
    objectives: tuple[Objective, ...]
    sampler: dict[str, Any]
    scheduler: dict[str, Any]
    num_samples: int
    max_concurrent_trials: int
    resources: dict[str, Any]
    storage_path: str
    tracking: dict[str, Any]
    confirm: dict[str, int] | None = None
    """The confirmation stage ({top_k, seeds}), None when the study has none."""
    # The document as written, so overrides re-derive defaults (e.g. n_startup_trials) properly.
    source_doc: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_document(cls, doc: Any, *, source: str, path: Path | None = None) -> StudySpec:
        """Validate a parsed space document and resolve its defaults.

        Raises:
            SpaceError: naming `source` and the key path of the first problem found.
        """
        if not isinstance(doc, dict):
            fail(source, (), f"expected a mapping (got {describe(doc)})")
        try:
            model = SpaceDocument.model_validate(doc)
        except ValidationError as exc:
            raise_validation_error(exc, doc, source)
        return _resolve(cls, model, doc, source, path)

    @property
    def multi_objective(self) -> bool:
        """True when the study optimises more than one metric (Pareto front, no single best)."""
        return len(self.objectives) > 1

    @property
    def suggestion_order(self) -> tuple[str, ...]:
        """Parameter names with every `when` parent before its children (else file order)."""
        return dependency_order(self.params)

    def to_dict(self) -> dict[str, Any]:
        """The resolved space as plain data: what `space show` prints, and parses back equal."""
        objective: Any = [dataclasses.asdict(o) for o in self.objectives]
        return {
            "version": self.version,
            "name": self.name,
            "data": self.data,
            "fixed": dict(self.fixed),
            "params": {name: spec.to_dict() for name, spec in self.params.items()},
            "objective": objective if self.multi_objective else objective[0],
            "sampler": dict(self.sampler),
            "scheduler": dict(self.scheduler),
            "num_samples": self.num_samples,
            "max_concurrent_trials": self.max_concurrent_trials,
            "resources": dict(self.resources),
            "storage_path": self.storage_path,
            "tracking": dict(self.tracking),
            "confirm": dict(self.confirm) if self.confirm else None,
        }

    def with_overrides(self, **overrides: Any) -> StudySpec:
        """A copy with command-line overrides applied and validated like the file itself.

        Accepted keys: num_samples, max_concurrent_trials, storage_path, name, tracking_uri, data,
        confirm (a {top_k, seeds} mapping, or False for none).
        A value of None means "not given" and changes nothing.

        Raises:
            TypeError: for a key that is not overridable (a programming error).
            SpaceError: when an override value is invalid.
        """
        doc = copy.deepcopy(self.source_doc or self.to_dict())
        changed = False
        for key, value in overrides.items():
            if key not in (*_OVERRIDABLE, "tracking_uri"):
                raise TypeError(f"with_overrides() got an unexpected key {key!r}")
            if value is None:
                continue
            changed = True
            if key == "tracking_uri":
                tracking = doc.get("tracking")
                doc["tracking"] = {**(tracking if isinstance(tracking, dict) else {}), "uri": value}
            elif key == "confirm":
                doc["confirm"] = value or None
            else:
                doc[key] = value
        if not changed:
            return self
        source = f"{self.path if self.path else '<dict>'} (with overrides)"
        return StudySpec.from_document(doc, source=source, path=self.path)

    def to_yaml(self) -> str:
        """`to_dict()` as YAML, one line per parameter, as a user would write it."""
        doc = self.to_dict()
        doc["params"] = {name: _Flow(spec) for name, spec in doc["params"].items()}
        return yaml.dump(doc, Dumper=_FlowDumper, sort_keys=False, allow_unicode=True, width=1000)

    def summary(self) -> str:
        """One line for `space validate`: what the study will do."""
        n_cond = sum(1 for p in self.params.values() if p.when)
        objs = ", ".join(f"{o.mode} {o.metric}" for o in self.objectives)
        sched = self.scheduler["type"]
        if sched == "asha":
            sched += f" (grace {self.scheduler['grace_period']}, max_t {self.scheduler['max_t']})"
        gpu = self.resources["gpu"]
        res = f"{self.resources['cpu']:g} cpu + {gpu if gpu == 'auto' else format(gpu, 'g')} gpu"
        return (
            f"{self.name}: {len(self.params)} params ({n_cond} conditional), objective {objs}, "
            f"sampler {self.sampler['type']} (seed {self.sampler['seed']}), scheduler {sched}, "
            f"{self.num_samples} trials, {self.max_concurrent_trials} at a time, {res} per trial, "
            f"dataset {self.fixed['dataset']}, data {self.data}"
            + (f", then the best {self.confirm['top_k']} confirmed with "
               f"{self.confirm['seeds']} fresh seeds each" if self.confirm else "")
        )


def confirm_override(current: dict[str, int] | None, top_k: int | None,
                     seeds: int | None) -> dict[str, int] | bool | None:
    """The `confirm` override that `--confirm-top` / `--confirm-seeds` make of the file's own
    (`current`): None when neither is given, False for `--confirm-top 0` (no confirmation),
    else the file's section (or the defaults) with the given values in place."""
    if top_k is None and seeds is None:
        return None
    if top_k == 0:
        return False
    base = dict(current or Confirm.model_validate({}).model_dump())
    if top_k is not None:
        base["top_k"] = top_k
    if seeds is not None:
        base["seeds"] = seeds
    return base


class _Flow(dict[str, Any]):
    """A mapping `to_yaml` writes on one line ({type: float, low: ...})."""


class _FlowDumper(yaml.SafeDumper):
    """SafeDumper that writes `_Flow` mappings (and the lists inside them) in flow style."""


_FlowDumper.add_representer(
    _Flow, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)
)


# ------------------------------------------------------------------------------------------------
# Resolution: the validated document plus the rules between sections and the derived defaults.


def _resolve(
    cls: type[StudySpec], model: SpaceDocument, doc: dict[str, Any], source: str, path: Path | None
) -> StudySpec:
    check = Checker(source)
    name = model.name if model.name is not None else (path.stem if path else "study")
    if model.name is None and not re.fullmatch(NAME_PATTERN, name):
        fail(
            source,
            ("name",),
            f"the file name {shorten(name)} is not a valid study name (it names directories and "
            "MLflow runs): add `name:` with letters, digits, '.', '_' or '-', at most 100 "
            "characters",
        )
    data = expand(model.data, source, ("data",))
    if not data:
        fail(source, ("data",), "must not be empty")
    check_path(data, source, ("data",))
    fixed_model = model.fixed
    fixed = {key: getattr(fixed_model, key) for key in doc["fixed"]}
    params: dict[str, ParamSpec] = {}
    for pname, raw in model.params.items():
        spec = _param(pname, raw)
        check.not_also_fixed({pname: spec}, fixed)
        check.param_kind(spec, ("params", pname))
        check.within_bounds(spec, ("params", pname))
        params[pname] = spec
    check.conditions(params, fixed)
    check.reachable(params)
    check.against_trainer(fixed, params)
    objectives = _objectives(model.objective, check)
    mct = model.max_concurrent_trials
    sampler = _sampler(model.sampler, objectives, params, mct, check)
    scheduler = _scheduler(model.scheduler, objectives, max_epochs(fixed, params), check)
    storage = expand(model.storage_path, source, ("storage_path",))
    if not storage:
        fail(source, ("storage_path",), "must not be empty")
    check_path(storage, source, ("storage_path",))
    confirm = model.confirm.model_dump() if model.confirm is not None else None
    if confirm is not None and len(objectives) > 1:
        fail(source, ("confirm",), "ranks configurations by one objective's mean over seeds: a "
             "multi-objective study has no single best to confirm (remove `confirm`)")
    if confirm is not None and "seed" in params:
        fail(source, ("confirm",), "re-runs configurations with fresh seeds, so `seed` cannot "
             "also be searched (fix it under `fixed`, or remove `confirm`)")
    tracking = model.tracking.model_dump()
    if tracking["uri"] is not None:
        tracking["uri"] = expand(tracking["uri"], source, ("tracking", "uri")) or None
    return cls(
        path=Path(os.path.abspath(path)) if path else None,
        version=model.version,
        name=name,
        data=absolute_if_path(data),
        fixed=fixed,
        params=params,
        objectives=objectives,
        sampler=sampler,
        scheduler=scheduler,
        num_samples=model.num_samples,
        max_concurrent_trials=mct,
        resources=model.resources.model_dump(),
        storage_path=absolute_storage(storage),
        tracking=tracking,
        confirm=confirm,
        source_doc=copy.deepcopy(doc),
    )


def _param(name: str, raw: FloatParam | IntParam | CategoricalParam) -> ParamSpec:
    when = {k: tuple(v) for k, v in raw.when.items()} if raw.when else None
    if isinstance(raw, CategoricalParam):
        choices = list(raw.choices)
        if FIELD_TYPES[name] is float and all(
            isinstance(c, int | float) and not isinstance(c, bool) for c in choices
        ):
            choices = [float(c) for c in choices]
        return ParamSpec(name, raw.type, choices=tuple(choices), when=when)
    if isinstance(raw, FloatParam):
        step = float(raw.step) if raw.step is not None else None
        return ParamSpec(
            name, raw.type, low=float(raw.low), high=float(raw.high), log=raw.log, step=step,
            when=when,
        )
    return ParamSpec(
        name, raw.type, low=raw.low, high=raw.high, log=raw.log, step=raw.step or 1, when=when
    )


def _objectives(value: ObjectiveDoc | list[ObjectiveDoc], check: Checker) -> tuple[Objective, ...]:
    items = value if isinstance(value, list) else [value]
    out: list[Objective] = []
    for i, item in enumerate(items):
        if any(o.metric == item.metric for o in out):
            where = ("objective", i) if isinstance(value, list) else ("objective",)
            check.fail((*where, "metric"), f"{item.metric} is listed twice")
        out.append(Objective(item.metric, item.mode))
    return tuple(out)


def _sampler(
    model: Section,
    objectives: tuple[Objective, ...],
    params: dict[str, ParamSpec],
    mct: int,
    check: Checker,
) -> dict[str, Any]:
    out = model.model_dump()
    stype = out["type"]
    if "n_startup_trials" in out and out["n_startup_trials"] is None:
        out["n_startup_trials"] = max(STARTUP_DEFAULT[stype], mct)
    if stype == "tpe" and out["group"] is None:
        out["group"] = out["multivariate"] is not False and any(p.when for p in params.values())
    if stype == "tpe" and out["group"] and out["multivariate"] is False:
        check.fail(("sampler", "group"), "needs multivariate: true (or multivariate left out)")
    if stype == "cmaes":
        if len(objectives) > 1:
            check.fail(
                ("sampler", "type"),
                "cmaes optimises a single objective; use tpe or nsga2 for a multi-objective study",
            )
        if importlib.util.find_spec("cmaes") is None:
            check.fail(
                ("sampler", "type"),
                "the cmaes sampler needs the `cmaes` package (pip install cmaes)",
            )
    return out


def _scheduler(
    model: Section, objectives: tuple[Objective, ...], most_epochs: int, check: Checker
) -> dict[str, Any]:
    out = model.model_dump()
    if out["type"] != "asha":
        return out
    if out["max_t"] is None:
        out["max_t"] = most_epochs
    if out["max_t"] > most_epochs:
        check.fail(
            ("scheduler", "max_t"),
            f"must be <= {most_epochs}, the most epochs a trial runs (got {out['max_t']}); no "
            "trial would ever reach the top rung",
        )
    if out["max_t"] < most_epochs:
        check.fail(
            ("scheduler", "max_t"),
            f"must be {most_epochs}, the most epochs a trial runs (got {out['max_t']}): ASHA "
            "stops every trial at max_t, so a trial with more epochs would never count as "
            "completed; leave max_t out (null) to use that value",
        )
    if out["grace_period"] > out["max_t"]:
        check.fail(
            ("scheduler", "grace_period"),
            f"must be <= max_t (got {out['grace_period']} > {out['max_t']})",
        )
    if out["metric"] is None:
        first = objectives[0].metric
        out["metric"] = first if first in EPOCH_METRICS else "best/H"
    if out["mode"] is None:
        out["mode"] = next((o.mode for o in objectives if o.metric == out["metric"]), "max")
    return out
