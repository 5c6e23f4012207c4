"""The search-space file format: one versioned YAML file per study.

A study is described by data, not code, so the same format serves `msdn-tune space validate`,
`space show`, `run` and the JSON Schema that editors use for completion. A minimal file::

    version: 1
    data: ${MSDN_DATA_ROOT:-data}/cub
    fixed: {dataset: cub}
    params:
      lr: {type: float, low: 5.0e-5, high: 5.0e-4, log: true}
      intervention: {type: categorical, choices: [none, random, shuffle]}
      lambda_causal: {type: float, low: 0.1, high: 3.0, log: true,
                      when: {intervention: [random, shuffle]}}
    num_samples: 32

Everything else has a default (see :data:`DEFAULTS` and :func:`json_schema`). Validation is
strict because a typo in a study file silently wastes hours of GPU time: unknown keys (with a
"did you mean" hint), wrong types, empty ranges, unknown metrics and trainer settings the trainer
would reject are all :class:`~msdn_tune.errors.SpaceError` naming the file and the key path.
Searched and fixed values are checked against :class:`~msdn_tune.train.config.TrainConfig`
itself, for every combination of categorical values a trial can draw (up to a cap), so a
cross-setting rule such as "a causal loss needs an intervention" is caught before the study
starts rather than in trial 17.

Conditional parameters use ``when: {parent: [values]}``: the parameter exists only while every
named categorical parent is active and takes one of the listed values. :func:`define_by_run`
turns a space into an Optuna define-by-run function that suggests parameters in dependency
order, which is how Ray's ``OptunaSearch`` supports conditional spaces.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.util
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from msdn_tune.errors import ConfigError, SpaceError
from msdn_tune.train import config as train_config
from msdn_tune.train.config import TrainConfig

__all__ = [
    "EPOCH_METRICS",
    "FORMAT_VERSION",
    "OBJECTIVE_METRICS",
    "Objective",
    "ParamSpec",
    "SearchSpace",
    "json_schema",
    "load_space",
    "parse_space",
]

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

# Settings that make no sense to search: one study is one benchmark under one selection protocol
# on one kind of device, otherwise its trials are not comparable.
_NOT_SEARCHABLE = {
    "dataset": "one study trains on one benchmark; write one space file per dataset",
    "selection": "trials selected under different protocols are not comparable",
    "device": "the device comes from the trial's resources, not from the search",
}

# Enumerating every combination of categorical values to check them against TrainConfig is
# cheap (microseconds each) but exponential; past this many only the first ones are checked.
_MAX_COMBINATIONS = 4096

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_ENV_RE = re.compile(r"\$\{([^}]*)\}")
_ENV_BODY_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


# ------------------------------------------------------------------------------------------------
# Option tables: one source for validation, defaults and the JSON Schema.


@dataclass(frozen=True)
class _Opt:
    """One scalar option of a section (sampler, scheduler, resources, tracking)."""

    kind: str  # "int" | "number" | "bool" | "str"
    default: Any
    doc: str
    min: float | None = None
    min_open: bool = False
    max: float | None = None
    max_open: bool = False
    nullable: bool = False
    choices: tuple[str, ...] | None = None


_SEED = _Opt(
    "int", 0, "Sampler seed (null: unseeded). Same seed, same first suggestions.", nullable=True
)
_N_STARTUP = _Opt(
    "int",
    None,
    "Random trials before the model-based sampler starts. Default: the library's "
    "default, raised to max_concurrent_trials (docs/search.md B4).",
    min=0,
    nullable=True,
)

SAMPLER_OPTIONS: dict[str, dict[str, _Opt]] = {
    "tpe": {
        "seed": _SEED,
        "n_startup_trials": _N_STARTUP,
        "multivariate": _Opt(
            "bool",
            None,
            "Multivariate TPE (null: Optuna's default, on for a single objective).",
            nullable=True,
        ),
        "group": _Opt(
            "bool",
            None,
            "Group-decomposed TPE for conditional spaces (null: on when "
            "some parameter has `when`).",
            nullable=True,
        ),
        "constant_liar": _Opt(
            "bool", True, "Avoid suggesting near running trials (parallel studies)."
        ),
    },
    "random": {"seed": _SEED},
    "gp": {
        "seed": _SEED,
        "n_startup_trials": _N_STARTUP,
        "deterministic_objective": _Opt("bool", False, "Assume noise-free objective values."),
    },
    "cmaes": {
        "seed": _SEED,
        "n_startup_trials": _N_STARTUP,
        "sigma0": _Opt(
            "number",
            None,
            "Initial step size (null: Optuna's default).",
            min=0,
            min_open=True,
            nullable=True,
        ),
        "with_margin": _Opt("bool", False, "CMA-ES with margin (better for int parameters)."),
    },
    "nsga2": {
        "seed": _SEED,
        "population_size": _Opt("int", 50, "Individuals per generation.", min=2),
        "crossover_prob": _Opt("number", 0.9, "Crossover probability.", min=0, max=1),
        "mutation_prob": _Opt(
            "number", None, "Mutation probability (null: 1/#params).", min=0, max=1, nullable=True
        ),
    },
}
SAMPLER_DOCS = {
    "tpe": "Tree-structured Parzen estimator (default): good for conditional and categorical "
    "spaces.",
    "random": "Independent random sampling: a baseline.",
    "gp": "Gaussian-process Bayesian optimisation: small continuous spaces, few trials.",
    "cmaes": "CMA-ES: many trials over continuous parameters, single objective; needs the "
    "`cmaes` package.",
    "nsga2": "NSGA-II genetic algorithm: multi-objective studies with many trials.",
}
_STARTUP_DEFAULT = {"tpe": 10, "gp": 10, "cmaes": 1}  # the Optuna 5 constructor defaults

SCHEDULER_OPTIONS: dict[str, dict[str, _Opt]] = {
    "asha": {
        "grace_period": _Opt("int", 1, "Epochs every trial runs before it can be stopped.", min=1),
        "max_t": _Opt(
            "int",
            None,
            "Epochs of the top rung (null: the most epochs a trial runs).",
            min=1,
            nullable=True,
        ),
        "reduction_factor": _Opt(
            "number", 4, "Keep 1/reduction_factor of trials per rung.", min=1, min_open=True
        ),
        "brackets": _Opt("int", 1, "Number of ASHA brackets.", min=1),
        "metric": _Opt(
            "str",
            None,
            "Metric ASHA watches; it must be reported every epoch (null: the first objective "
            "if it is, else best/H).",
            nullable=True,
            choices=EPOCH_METRICS,
        ),
        "mode": _Opt(
            "str",
            None,
            "max or min (null: the watched objective's mode).",
            nullable=True,
            choices=MODES,
        ),
    },
    "none": {},
}
SCHEDULER_DOCS = {
    "asha": "Asynchronous successive halving on our `epoch` counter: stops poor trials early.",
    "none": "Run every trial to the end (FIFO).",
}

RESOURCE_OPTIONS: dict[str, _Opt] = {
    "cpu": _Opt("number", 1, "CPUs reserved per trial (fractions allowed).", min=0, min_open=True),
    "gpu": _Opt(
        "number",
        0,
        "GPUs per trial: 0, a fraction < 1 to share a card (nothing "
        "isolates memory: only when two trials fit), or a whole number.",
        min=0,
    ),
}
TRACKING_OPTIONS: dict[str, _Opt] = {
    "uri": _Opt(
        "str",
        None,
        "MLflow tracking URI (null: the tracking layer's default). "
        "${VAR} and ${VAR:-default} are expanded.",
        nullable=True,
    ),
    "experiment": _Opt(
        "str", None, "MLflow experiment (null: the tracking layer's default).", nullable=True
    ),
}

DEFAULTS: dict[str, Any] = {
    "objective": {"metric": "best/H", "mode": "max"},
    "sampler": {"type": "tpe"},
    "scheduler": {"type": "asha"},
    "max_concurrent_trials": 1,
    "resources": {"cpu": 1, "gpu": 0},
    "storage_path": "./msdn_results",
    "tracking": {"uri": None, "experiment": None},
}
"""Defaults of the optional top-level keys (name defaults to the file's stem)."""

_TOP_DOCS: dict[str, str] = {
    "version": f"Format version; this msdn-tune reads {FORMAT_VERSION}.",
    "name": "Study name: Ray experiment directory and MLflow parent run (default: file stem).",
    "data": "Benchmark store path, or a synthetic preset name (demo). ${VAR} and ${VAR:-default} "
    "are expanded; relative paths are made absolute.",
    "fixed": "Trainer settings (TrainConfig fields) held fixed; unset ones take the dataset's "
    "published defaults.",
    "params": "Searched trainer settings: name -> {type: float|int|categorical, ...}.",
    "objective": "What to optimise: {metric, mode}, or a list of them for a multi-objective study.",
    "sampler": "Optuna sampler: {type: tpe|random|gp|cmaes|nsga2, seed, ...}.",
    "scheduler": "Early stopping: {type: asha, grace_period, max_t, ...} or {type: none}.",
    "num_samples": "Number of trials.",
    "max_concurrent_trials": "Trials run at once (always set with Optuna: docs/search.md B3).",
    "resources": "Resources per trial: {cpu, gpu}.",
    "storage_path": "Where Ray Tune keeps results; a shared mount or URI on a multi-node "
    "cluster. ${VAR} expanded; relative paths are made absolute.",
    "tracking": "MLflow settings: {uri, experiment}.",
}
_TOP_KEYS = tuple(_TOP_DOCS)


# ------------------------------------------------------------------------------------------------
# The parsed objects.


@dataclass(frozen=True)
class ParamSpec:
    """One searched trainer setting.

    `low`/`high`/`log`/`step` describe float and int parameters, `choices` categorical ones.
    `when` maps a categorical parent parameter to the values for which this one exists.
    """

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None
    when: dict[str, tuple[Any, ...]] | None = None

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether this parameter exists given the values suggested so far for its parents."""
        return all(
            parent in values and _is_member(values[parent], allowed)
            for parent, allowed in (self.when or {}).items()
        )

    def to_dict(self) -> dict[str, Any]:
        """The YAML form of this parameter."""
        out: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            out["choices"] = list(self.choices or ())
        else:
            out.update(low=self.low, high=self.high, log=self.log, step=self.step)
        if self.when:
            out["when"] = {k: list(v) for k, v in self.when.items()}
        return out


@dataclass(frozen=True)
class Objective:
    """One metric to optimise, and its direction."""

    metric: str
    mode: str = "max"


@dataclass(frozen=True)
class SearchSpace:
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
    # The document as written, so overrides re-derive defaults (e.g. n_startup_trials) properly.
    source_doc: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def multi_objective(self) -> bool:
        """True when the study optimises more than one metric (Pareto front, no single best)."""
        return len(self.objectives) > 1

    @property
    def suggestion_order(self) -> tuple[str, ...]:
        """Parameter names with every `when` parent before its children (else file order)."""
        return _dependency_order(self.params)

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
        }

    def with_overrides(self, **overrides: Any) -> SearchSpace:
        """A copy with command-line overrides applied and validated like the file itself.

        Accepted keys: num_samples, max_concurrent_trials, storage_path, name, tracking_uri, data.
        A value of None means "not given" and changes nothing.

        Raises:
            TypeError: for a key that is not overridable (a programming error).
            SpaceError: when an override value is invalid.
        """
        allowed = {"num_samples", "max_concurrent_trials", "storage_path", "name", "data"}
        doc = _deep_copy(self.source_doc or self.to_dict())
        changed = False
        for key, value in overrides.items():
            if key not in allowed | {"tracking_uri"}:
                raise TypeError(f"with_overrides() got an unexpected key {key!r}")
            if value is None:
                continue
            changed = True
            if key == "tracking_uri":
                tracking = doc.get("tracking")
                doc["tracking"] = {**(tracking if isinstance(tracking, dict) else {}), "uri": value}
            else:
                doc[key] = value
        if not changed:
            return self
        source = f"{self.path if self.path else '<dict>'} (with overrides)"
        return _Parser(source, self.path).parse(doc)

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
        res = f"{self.resources['cpu']:g} cpu + {self.resources['gpu']:g} gpu"
        return (
            f"{self.name}: {len(self.params)} params ({n_cond} conditional), objective {objs}, "
            f"sampler {self.sampler['type']} (seed {self.sampler['seed']}), scheduler {sched}, "
            f"{self.num_samples} trials, {self.max_concurrent_trials} at a time, {res} per trial, "
            f"dataset {self.fixed['dataset']}, data {self.data}"
        )


# ------------------------------------------------------------------------------------------------
# Loading.


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file.

    Raises:
        SpaceError: when the file is missing, unreadable, not YAML or not a valid space; the
            message starts with the file name and the key path.
    """
    p = Path(path)
    source = str(path)
    if not p.exists():
        raise SpaceError(f"{source}: no such file")
    if not p.is_file():
        raise SpaceError(f"{source}: not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpaceError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SpaceError(f"{source}: cannot read ({exc.strerror})") from None
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise SpaceError(f"{source}: {where}invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise SpaceError(f"{source}: invalid YAML: {exc}") from None
    if doc is None:
        raise SpaceError(
            f"{source}: the file is empty; expected a mapping with version, data, "
            "fixed, params, ..."
        )
    return _Parser(source, p).parse(doc)


def parse_space(doc: dict, *, source: str = "<dict>") -> SearchSpace:
    """Validate a search space given as plain data (the YAML document, already parsed).

    Raises:
        SpaceError: naming `source` and the key path of the first problem found.
    """
    return _Parser(source, None).parse(doc)


class _Flow(dict):
    """A mapping `to_yaml` writes on one line ({type: float, low: ...})."""


class _FlowDumper(yaml.SafeDumper):
    """SafeDumper that writes `_Flow` mappings (and the lists inside them) in flow style."""


_FlowDumper.add_representer(
    _Flow, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)
)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden: fine
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: let PyYAML report it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# ------------------------------------------------------------------------------------------------
# Validation.

_FIELD_KINDS: dict[str, str] = {
    f.name: {"bool": "bool", "int": "int", "float": "number", "str": "str"}.get(
        f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""), "any"
    )
    for f in dataclasses.fields(TrainConfig)
}
_FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    name: tuple(getattr(train_config, const))
    for name, const in (
        ("dataset", "DATASETS"),
        ("optimizer", "OPTIMIZERS"),
        ("sampler", "SAMPLERS"),
        ("intervention", "INTERVENTIONS"),
        ("precision", "PRECISIONS"),
        ("selection", "SELECTIONS"),
    )
    if hasattr(train_config, const)
}
_KIND_WORDS = {
    "int": "an integer",
    "number": "a number",
    "bool": "true or false",
    "str": "a string",
    "any": "a value",
}


class _Parser:
    """Validates one document; every error names the source and the key path."""

    def __init__(self, source: str, path: Path | None) -> None:
        self.source = source
        self.path = path

    def fail(self, where: tuple[str | int, ...], message: str) -> NoReturn:
        raise SpaceError(
            f"{self.source}: {_fmt(where)}: {message}" if where else f"{self.source}: {message}"
        )

    # -- generic checks ----------------------------------------------------------------------
    def mapping(self, value: Any, where: tuple[str | int, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, f"expected a mapping (got {_describe(value)})")
        for key in value:
            if not isinstance(key, str):
                self.fail(where, f"keys must be text (got {_describe(key)})")
        return value

    def keys(
        self,
        value: dict[str, Any],
        where: tuple[str | int, ...],
        allowed: tuple[str, ...],
        required: tuple[str, ...] = (),
        what: str = "key",
    ) -> None:
        for key in value:
            if key not in allowed:
                hint = _hint(key, allowed)
                self.fail(
                    where + (key,),
                    f"unknown {what}{hint}; expected one of: "
                    f"{', '.join(allowed) if allowed else '(none)'}",
                )
        for key in required:
            if key not in value:
                self.fail(where + (key,), "required")

    def scalar(self, value: Any, kind: str, where: tuple[str | int, ...]) -> Any:
        """Check a value's kind strictly (YAML gives typed values; strings are not numbers)."""
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, int | float) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
            "any": isinstance(value, str | int | float | bool),
        }[kind]
        if not ok:
            hint = ""
            if kind in ("int", "number") and isinstance(value, str) and _looks_numeric(value):
                hint = _yaml_number_hint(value)
            elif kind == "int" and isinstance(value, float):
                hint = "; this setting takes whole numbers"
            self.fail(where, f"expected {_KIND_WORDS[kind]} (got {_describe(value)}{hint})")
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(where, f"must be finite (got {value})")
        return value

    def options(
        self,
        value: dict[str, Any],
        table: dict[str, _Opt],
        where: tuple[str | int, ...],
        skip: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """Read a section's scalar options against its table, filling defaults."""
        self.keys(value, where, tuple(skip) + tuple(table), what="option")
        out: dict[str, Any] = {}
        for name, opt in table.items():
            v = value.get(name, opt.default)
            out[name] = v
            if v is None:
                if name in value and not opt.nullable:
                    self.fail(where + (name,), f"expected {_KIND_WORDS[opt.kind]} (got null)")
                continue
            self.scalar(v, opt.kind, where + (name,))
            if opt.choices is not None and v not in opt.choices:
                self.fail(
                    where + (name,),
                    f"unknown value {v!r}{_hint(str(v), opt.choices)}; "
                    f"expected one of: {', '.join(opt.choices)}",
                )
            if opt.min is not None and (v <= opt.min if opt.min_open else v < opt.min):
                self.fail(
                    where + (name,),
                    f"must be {'>' if opt.min_open else '>='} {opt.min:g} (got {v})",
                )
            if opt.max is not None and (v >= opt.max if opt.max_open else v > opt.max):
                self.fail(
                    where + (name,),
                    f"must be {'<' if opt.max_open else '<='} {opt.max:g} (got {v})",
                )
        return out

    def expand(self, value: Any, where: tuple[str | int, ...]) -> str:
        """A string with ${VAR} / ${VAR:-default} expanded from the environment."""
        self.scalar(value, "str", where)

        def sub(match: re.Match[str]) -> str:
            body = _ENV_BODY_RE.fullmatch(match.group(1))
            if body is None:
                self.fail(
                    where,
                    f"bad variable reference {match.group(0)!r}; write ${{NAME}} or "
                    "${NAME:-default}",
                )
            name, default = body.group(1), body.group(2)
            env = os.environ.get(name)
            if env:  # like the shell's :- , an empty variable counts as unset
                return env
            if default is not None:
                return default
            if env is not None:
                return env
            self.fail(
                where,
                f"environment variable {name} is not set (in {value!r}); set it, "
                f"or give a default: ${{{name}:-...}}",
            )

        out = _ENV_RE.sub(sub, value)
        if "${" in _ENV_RE.sub("", value):
            self.fail(where, f"unclosed variable reference in {value!r}; write ${{NAME}}")
        return out

    # -- the document --------------------------------------------------------------------------
    def parse(self, doc: Any) -> SearchSpace:
        doc = self.mapping(doc, ())
        if "version" not in doc:
            self.fail(
                ("version",),
                f"required; this msdn-tune reads version {FORMAT_VERSION} "
                f"(add `version: {FORMAT_VERSION}` at the top)",
            )
        version = self.scalar(doc["version"], "int", ("version",))
        if version != FORMAT_VERSION:
            self.fail(
                ("version",),
                f"unsupported version {version}; this msdn-tune reads version {FORMAT_VERSION}",
            )
        self.keys(doc, (), _TOP_KEYS, required=("data", "fixed", "params", "num_samples"))

        name = doc.get("name", self.path.stem if self.path else "study")
        self.scalar(name, "str", ("name",))
        if not _NAME_RE.fullmatch(name):
            self.fail(
                ("name",),
                f"{name!r} is not a valid study name: use letters, digits, '.', "
                "'_' or '-' (it names directories and MLflow runs), at most 100 characters",
            )
        data = self.expand(doc["data"], ("data",))
        if not data:
            self.fail(("data",), "must not be empty")
        data = _absolute_if_path(data)

        fixed = self.fixed(doc["fixed"])
        params = self.params(doc["params"], fixed)
        self.check_reachable(params)
        self.check_against_trainer(fixed, params)
        objectives = self.objectives(doc.get("objective", DEFAULTS["objective"]))

        num_samples = self.scalar(doc["num_samples"], "int", ("num_samples",))
        if num_samples < 1:
            self.fail(("num_samples",), f"must be >= 1 (got {num_samples})")
        mct = self.scalar(
            doc.get("max_concurrent_trials", DEFAULTS["max_concurrent_trials"]),
            "int",
            ("max_concurrent_trials",),
        )
        if mct < 1:
            self.fail(("max_concurrent_trials",), f"must be >= 1 (got {mct})")

        sampler = self.sampler(doc.get("sampler", DEFAULTS["sampler"]), objectives, params, mct)
        max_epochs = _max_epochs(fixed, params)
        scheduler = self.scheduler(
            doc.get("scheduler", DEFAULTS["scheduler"]), objectives, max_epochs
        )
        resources = self.resources(doc.get("resources", DEFAULTS["resources"]))
        storage = self.expand(doc.get("storage_path", DEFAULTS["storage_path"]), ("storage_path",))
        if not storage:
            self.fail(("storage_path",), "must not be empty")
        storage = _absolute_storage(storage)
        tracking_doc = self.mapping(doc.get("tracking", DEFAULTS["tracking"]), ("tracking",))
        tracking = self.options(tracking_doc, TRACKING_OPTIONS, ("tracking",))
        if tracking["uri"] is not None:
            tracking["uri"] = self.expand(tracking["uri"], ("tracking", "uri")) or None

        return SearchSpace(
            path=Path(os.path.abspath(self.path)) if self.path else None,
            version=version,
            name=name,
            data=data,
            fixed=fixed,
            params=params,
            objectives=objectives,
            sampler=sampler,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=mct,
            resources=resources,
            storage_path=storage,
            tracking=tracking,
            source_doc=_deep_copy(doc),
        )

    def fixed(self, value: Any) -> dict[str, Any]:
        where: tuple[str | int, ...] = ("fixed",)
        value = self.mapping(value, where)
        self.keys(
            value, where, TrainConfig.field_names(), required=("dataset",), what="trainer setting"
        )
        out = {}
        for key, v in value.items():
            kind = _FIELD_KINDS.get(key, "any")
            self.scalar(v, kind, where + (key,))
            self.known_choice(key, v, where + (key,))
            out[key] = float(v) if kind == "number" else v
        return out

    def known_choice(self, setting: str, value: Any, where: tuple[str | int, ...]) -> None:
        """Values of enumerated trainer settings, checked early for a "did you mean" hint."""
        options = _FIELD_CHOICES.get(setting)
        if options is not None and value not in options:
            self.fail(
                where,
                f"unknown {setting} {value!r}{_hint(str(value), options)}; "
                f"expected one of: {', '.join(options)}",
            )

    def params(self, value: Any, fixed: dict[str, Any]) -> dict[str, ParamSpec]:
        where: tuple[str | int, ...] = ("params",)
        value = self.mapping(value, where)
        if not value:
            self.fail(where, "no parameters to search; add at least one")
        self.keys(value, where, TrainConfig.field_names(), what="trainer setting")
        out: dict[str, ParamSpec] = {}
        for name, raw in value.items():
            if name in _NOT_SEARCHABLE:
                self.fail(
                    where + (name,),
                    f"cannot be searched: {_NOT_SEARCHABLE[name]}; set it under fixed:",
                )
            if name in fixed:
                self.fail(
                    where + (name,),
                    "also set under fixed:; a setting is either fixed or searched, not both",
                )
            out[name] = self.param(name, raw, where + (name,))
        for name, spec in out.items():
            self.conditions(spec, out, fixed, where + (name,))
        _dependency_order(
            out,
            on_cycle=lambda cycle: self.fail(
                where + (cycle[0], "when"), f"conditions form a cycle: {' -> '.join(cycle)}"
            ),
        )
        return out

    def param(self, name: str, raw: Any, where: tuple[str | int, ...]) -> ParamSpec:
        raw = self.mapping(raw, where)
        if "type" not in raw:
            self.fail(where + ("type",), f"required: one of {', '.join(PARAM_TYPES)}")
        ptype = raw["type"]
        if ptype not in PARAM_TYPES:
            self.fail(
                where + ("type",),
                f"unknown parameter type {ptype!r}"
                f"{_hint(str(ptype), PARAM_TYPES)}; expected one of: "
                f"{', '.join(PARAM_TYPES)}",
            )
        field_kind = _FIELD_KINDS.get(name, "any")
        when = raw.get("when")
        if ptype == "categorical":
            self.keys(raw, where, ("type", "choices", "when"), required=("choices",))
            choices = raw["choices"]
            if not isinstance(choices, list):
                self.fail(where + ("choices",), f"expected a list (got {_describe(choices)})")
            if not choices:
                self.fail(where + ("choices",), "must not be empty")
            kind = field_kind if field_kind != "any" else "any"
            for i, c in enumerate(choices):
                self.scalar(c, kind, where + ("choices", i))
                self.known_choice(name, c, where + ("choices", i))
                if any(_same(c, d) for d in choices[:i]):
                    self.fail(where + ("choices", i), f"duplicate choice {c!r}")
            if field_kind == "number":
                choices = [float(c) for c in choices]
            return ParamSpec(name, ptype, choices=tuple(choices), when=self.when_(when, where))

        self.keys(
            raw, where, ("type", "low", "high", "log", "step", "when"), required=("low", "high")
        )
        if field_kind in ("bool", "str"):
            example = (
                "[false, true]"
                if field_kind == "bool"
                else list(_FIELD_CHOICES.get(name, ("...",)))
            )
            what = "a true/false" if field_kind == "bool" else "a text"
            self.fail(
                where + ("type",),
                f"{name} is {what} setting; search it as type: categorical with choices: {example}",
            )
        if field_kind == "int" and ptype == "float":
            self.fail(where + ("type",), f"{name} takes whole numbers; use type: int")
        num_kind = "int" if ptype == "int" else "number"
        low = self.scalar(raw["low"], num_kind, where + ("low",))
        high = self.scalar(raw["high"], num_kind, where + ("high",))
        if low >= high:
            self.fail(where + ("low",), f"must be < high (got {low} >= {high})")
        log = raw.get("log", False)
        self.scalar(log, "bool", where + ("log",))
        step = raw.get("step", 1 if ptype == "int" else None)
        if step is not None:
            step = self.scalar(step, num_kind, where + ("step",))
            if step <= 0:
                self.fail(where + ("step",), f"must be > 0 (got {step})")
        if log:
            if low <= 0:
                self.fail(where + ("low",), f"log scale needs low > 0 (got {low})")
            if ptype == "float" and step is not None:
                self.fail(
                    where + ("step",),
                    "cannot be combined with log: true (Optuna samples "
                    "either on a log scale or on a grid)",
                )
            if ptype == "int" and step != 1:
                self.fail(where + ("step",), f"must be 1 with log: true (got {step})")
        if step is not None:
            n = (high - low) / step
            if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
                self.fail(
                    where + ("step",),
                    f"high - low must be a multiple of step (got "
                    f"({high} - {low}) / {step} = {n:.4g})",
                )
        if ptype == "float":
            low, high = float(low), float(high)
            step = float(step) if step is not None else None
        return ParamSpec(
            name, ptype, low=low, high=high, log=log, step=step, when=self.when_(when, where)
        )

    def when_(self, when: Any, where: tuple[str | int, ...]) -> dict[str, tuple[Any, ...]] | None:
        if when is None:
            return None
        when = self.mapping(when, where + ("when",))
        if not when:
            self.fail(where + ("when",), "must name at least one parameter (or be left out)")
        out = {}
        for parent, values in when.items():
            if not isinstance(values, list) or not values:
                self.fail(
                    where + ("when", parent),
                    f"expected a non-empty list of values of {parent} (got {_describe(values)})",
                )
            for i, v in enumerate(values):
                self.scalar(v, "any", where + ("when", parent, i))
            out[parent] = tuple(values)
        return out

    def conditions(
        self,
        spec: ParamSpec,
        params: dict[str, ParamSpec],
        fixed: dict[str, Any],
        where: tuple[str | int, ...],
    ) -> None:
        for parent, values in (spec.when or {}).items():
            at = where + ("when", parent)
            if parent == spec.name:
                self.fail(at, "a parameter cannot depend on itself")
            if parent not in params:
                if parent in fixed:
                    self.fail(
                        at,
                        f"{parent} is held fixed, not searched; conditions can only "
                        "refer to searched categorical parameters",
                    )
                self.fail(
                    at,
                    f"condition on unknown parameter {parent!r}"
                    f"{_hint(parent, tuple(params))}; searched parameters: "
                    f"{', '.join(params)}",
                )
            target = params[parent]
            if target.type != "categorical":
                self.fail(
                    at,
                    f"conditions can only refer to categorical parameters "
                    f"({parent} is {target.type})",
                )
            for i, v in enumerate(values):
                if not _is_member(v, target.choices or ()):
                    self.fail(
                        at + (i,),
                        f"{v!r} is not one of {parent}'s choices {list(target.choices or ())}",
                    )

    def objectives(self, value: Any) -> tuple[Objective, ...]:
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not value:
            self.fail(("objective",), "must name at least one metric")
        out: list[Objective] = []
        for i, item in enumerate(items):
            where: tuple[str | int, ...] = (
                ("objective", i) if isinstance(value, list) else ("objective",)
            )
            item = self.mapping(item, where)
            self.keys(item, where, ("metric", "mode"), required=("metric",))
            metric = self.scalar(item["metric"], "str", where + ("metric",))
            if metric not in OBJECTIVE_METRICS:
                self.fail(
                    where + ("metric",),
                    f"unknown metric {metric!r}"
                    f"{_hint(metric, OBJECTIVE_METRICS)}; expected one of: "
                    f"{', '.join(OBJECTIVE_METRICS)}",
                )
            if any(o.metric == metric for o in out):
                self.fail(where + ("metric",), f"{metric} is listed twice")
            mode = self.scalar(item.get("mode", "max"), "str", where + ("mode",))
            if mode not in MODES:
                self.fail(where + ("mode",), f"expected max or min (got {mode!r})")
            out.append(Objective(metric, mode))
        return tuple(out)

    def sampler(
        self, value: Any, objectives: tuple[Objective, ...], params: dict[str, ParamSpec], mct: int
    ) -> dict[str, Any]:
        where: tuple[str | int, ...] = ("sampler",)
        value = self.mapping(value, where)
        stype = value.get("type", "tpe")
        if stype not in SAMPLER_OPTIONS:
            self.fail(
                where + ("type",),
                f"unknown sampler {stype!r}"
                f"{_hint(str(stype), tuple(SAMPLER_OPTIONS))}; expected one of: "
                f"{', '.join(SAMPLER_OPTIONS)}",
            )
        out = {"type": stype, **self.options(value, SAMPLER_OPTIONS[stype], where, skip=("type",))}
        if "n_startup_trials" in out and out["n_startup_trials"] is None:
            out["n_startup_trials"] = max(_STARTUP_DEFAULT[stype], mct)
        if stype == "tpe" and out["group"] is None:
            out["group"] = out["multivariate"] is not False and any(p.when for p in params.values())
        if stype == "tpe" and out["group"] and out["multivariate"] is False:
            self.fail(where + ("group",), "needs multivariate: true (or multivariate left out)")
        if stype == "cmaes":
            if len(objectives) > 1:
                self.fail(
                    where + ("type",),
                    "cmaes optimises a single objective; use tpe or "
                    "nsga2 for a multi-objective study",
                )
            if importlib.util.find_spec("cmaes") is None:
                self.fail(
                    where + ("type",),
                    "the cmaes sampler needs the `cmaes` package (pip install cmaes)",
                )
        return out

    def scheduler(
        self, value: Any, objectives: tuple[Objective, ...], max_epochs: int
    ) -> dict[str, Any]:
        where: tuple[str | int, ...] = ("scheduler",)
        value = self.mapping(value, where)
        stype = value.get("type", "asha")
        if stype not in SCHEDULER_OPTIONS:
            self.fail(
                where + ("type",),
                f"unknown scheduler {stype!r}"
                f"{_hint(str(stype), tuple(SCHEDULER_OPTIONS))}; expected one of: "
                f"{', '.join(SCHEDULER_OPTIONS)}",
            )
        watched = value.get("metric")
        if watched in OBJECTIVE_METRICS and watched not in EPOCH_METRICS:
            self.fail(
                where + ("metric",),
                f"{watched} arrives once, at the end of a trial, but ASHA compares trials every "
                f"epoch; use one of: {', '.join(EPOCH_METRICS)}",
            )
        out = {
            "type": stype,
            **self.options(value, SCHEDULER_OPTIONS[stype], where, skip=("type",)),
        }
        if stype != "asha":
            return out
        if out["max_t"] is None:
            out["max_t"] = max_epochs
        if out["max_t"] > max_epochs:
            self.fail(
                where + ("max_t",),
                f"must be <= {max_epochs}, the most epochs a trial "
                f"runs (got {out['max_t']}); no trial would ever reach the top rung",
            )
        if out["max_t"] < max_epochs:
            self.fail(
                where + ("max_t",),
                f"must be {max_epochs}, the most epochs a trial runs (got {out['max_t']}): ASHA "
                "stops every trial at max_t, so a trial with more epochs would never count as "
                "completed; leave max_t out (null) to use that value",
            )
        if out["grace_period"] > out["max_t"]:
            self.fail(
                where + ("grace_period",),
                f"must be <= max_t (got {out['grace_period']} > {out['max_t']})",
            )
        if out["metric"] is None:
            first = objectives[0].metric
            out["metric"] = first if first in EPOCH_METRICS else "best/H"
        if out["mode"] is None:
            out["mode"] = next((o.mode for o in objectives if o.metric == out["metric"]), "max")
        return out

    def resources(self, value: Any) -> dict[str, Any]:
        where: tuple[str | int, ...] = ("resources",)
        out = self.options(self.mapping(value, where), RESOURCE_OPTIONS, where)
        gpu = out["gpu"]
        if gpu > 1 and float(gpu) != int(gpu):
            self.fail(where + ("gpu",), f"must be a fraction below 1 or a whole number (got {gpu})")
        return out

    def check_reachable(self, params: dict[str, ParamSpec]) -> None:
        """Reject a parameter whose chained conditions can never all hold (it would never run)."""
        parents = {parent for spec in params.values() for parent in spec.when or {}}
        order = _dependency_order(params)
        gates = [params[n] for n in order if n in parents]
        combos = itertools.islice(_categorical_assignments(gates, {}), _MAX_COMBINATIONS + 1)
        reached: set[str] = set()
        for count, combo in enumerate(combos):
            if count == _MAX_COMBINATIONS:
                return  # too many to enumerate: give the benefit of the doubt
            reached.update(name for name, spec in params.items() if spec.active(combo))
        for name in order:
            if name not in reached:
                self.fail(
                    ("params", name, "when"),
                    "this parameter can never be active: its conditions cannot all hold at once",
                )

    def check_against_trainer(self, fixed: dict[str, Any], params: dict[str, ParamSpec]) -> None:
        """Build the trainer config for the corners of the space; TrainConfig has the last word.

        Every combination of categorical values a trial can draw (the first few thousand, if
        there are more) is combined with all numeric parameters at their lows, then at their
        highs, so range rules and cross-setting rules are both exercised.
        """
        order = _dependency_order(params)
        categorical = [params[n] for n in order if params[n].type == "categorical"]
        numeric = [params[n] for n in order if params[n].type != "categorical"]

        def combos() -> Iterator[dict[str, Any]]:
            return itertools.islice(_categorical_assignments(categorical, {}), _MAX_COMBINATIONS)

        def attempt(combo: dict[str, Any], end: str, pin: dict[str, Any]) -> ConfigError | None:
            values = {p.name: getattr(p, end) for p in numeric if p.active(combo)}
            try:
                TrainConfig.from_dict({**fixed, **combo, **values, **pin})
            except ConfigError as exc:
                return exc
            return None

        for combo in combos():
            for end in ("low", "high"):
                exc = attempt(combo, end, {})
                if exc is None:
                    continue
                key = str(exc).partition(": ")[0]
                value = combo[key] if key in combo else getattr(params.get(key), end, None)
                pin = {key: value} if key in params else {}
                # Name the other categorical values only when they matter, i.e. when some other
                # combination accepts the same value.
                depends = any(attempt(other, end, pin) is None for other in combos())
                self._blame(exc, fixed, params, combo, end, depends)

    def _blame(
        self,
        exc: ConfigError,
        fixed: dict[str, Any],
        params: dict[str, ParamSpec],
        combo: dict[str, Any],
        end: str,
        depends: bool,
    ) -> NoReturn:
        message = str(exc)
        key, _, rest = message.partition(": ")
        context = {k: v for k, v in combo.items() if k != key} if depends else {}
        suffix = ""
        if context:
            shown = ", ".join(f"{k}={v!r}" for k, v in context.items())
            advice = f"; make {key} conditional with `when:`" if key in params else ""
            suffix = f" (with {shown}{advice})"
        if key in params:
            spec = params[key]
            if spec.type == "categorical":
                i = next(i for i, c in enumerate(spec.choices or ()) if _same(c, combo[key]))
                self.fail(("params", key, "choices", i), f"rejected by the trainer: {rest}{suffix}")
            self.fail(("params", key, end), f"rejected by the trainer: {rest}{suffix}")
        if key in fixed:
            self.fail(("fixed", key), f"{rest}{suffix}")
        self.fail(("params",), f"the trainer rejects a combination: {message}{suffix}")


# ------------------------------------------------------------------------------------------------
# JSON Schema (editor completion; search_spaces/schema.json is generated from this).


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the file format, for editors and CI.

    It checks shape and types; `load_space` additionally checks what a schema cannot (ranges
    against each other, conditions, the trainer's own rules). Regenerate the shipped file with
    ``python -m msdn_tune.space > search_spaces/schema.json``.
    """
    fields = TrainConfig.field_names()

    def fixed_value(name: str) -> dict[str, Any]:
        kind = _FIELD_KINDS.get(name, "any")
        out: dict[str, Any] = {"type": _JSON_TYPES[kind]}
        if name in _FIELD_CHOICES:
            out["enum"] = list(_FIELD_CHOICES[name])
        return out

    scalar = {"type": ["string", "number", "boolean"]}
    when = {
        "description": "Exists only while each named categorical parameter takes one of the "
        "listed values.",
        "type": "object",
        "minProperties": 1,
        "propertyNames": {"enum": list(fields)},
        "additionalProperties": {"type": "array", "minItems": 1, "items": scalar},
    }
    numeric = {
        "low": {"type": "number", "description": "Lower bound (inclusive)."},
        "high": {"type": "number", "description": "Upper bound (inclusive); > low."},
        "log": {"type": "boolean", "default": False, "description": "Sample on a log scale."},
    }
    float_spec = {
        "type": "object",
        "required": ["type", "low", "high"],
        "additionalProperties": False,
        "properties": {
            "type": {"const": "float"},
            **numeric,
            "step": {
                "type": ["number", "null"],
                "exclusiveMinimum": 0,
                "description": "Grid step (not with log).",
            },
            "when": {"$ref": "#/$defs/when"},
        },
    }
    int_spec = {
        "type": "object",
        "required": ["type", "low", "high"],
        "additionalProperties": False,
        "properties": {
            "type": {"const": "int"},
            "low": {"type": "integer"},
            "high": {"type": "integer"},
            "log": numeric["log"],
            "step": {"type": "integer", "minimum": 1, "default": 1},
            "when": {"$ref": "#/$defs/when"},
        },
    }
    cat_spec = {
        "type": "object",
        "required": ["type", "choices"],
        "additionalProperties": False,
        "properties": {
            "type": {"const": "categorical"},
            "choices": {"type": "array", "minItems": 1, "uniqueItems": True, "items": scalar},
            "when": {"$ref": "#/$defs/when"},
        },
    }
    objective = {
        "type": "object",
        "required": ["metric"],
        "additionalProperties": False,
        "properties": {
            "metric": {"enum": list(OBJECTIVE_METRICS)},
            "mode": {"enum": list(MODES), "default": "max"},
        },
    }

    def section(
        types: dict[str, dict[str, _Opt]], docs: dict[str, str], default: str
    ) -> dict[str, Any]:
        branches = []
        for tname, table in types.items():
            branches.append(
                {
                    "type": "object",
                    "description": docs[tname],
                    "additionalProperties": False,
                    "required": [] if tname == default else ["type"],
                    "properties": {"type": {"const": tname}, **_opts_schema(table)},
                }
            )
        return {"oneOf": branches}

    searchable = [f for f in fields if f not in _NOT_SEARCHABLE]
    properties: dict[str, Any] = {
        "version": {"const": FORMAT_VERSION},
        "name": {"type": "string", "pattern": f"^{_NAME_RE.pattern}$"},
        "data": {"type": "string", "minLength": 1},
        "fixed": {
            "type": "object",
            "required": ["dataset"],
            "additionalProperties": False,
            "properties": {name: fixed_value(name) for name in fields},
        },
        "params": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"enum": searchable},
            "additionalProperties": {"$ref": "#/$defs/param"},
        },
        "objective": {
            "oneOf": [
                {"$ref": "#/$defs/objective"},
                {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/objective"}},
            ]
        },
        "sampler": section(SAMPLER_OPTIONS, SAMPLER_DOCS, "tpe"),
        "scheduler": section(SCHEDULER_OPTIONS, SCHEDULER_DOCS, "asha"),
        "num_samples": {"type": "integer", "minimum": 1},
        "max_concurrent_trials": {
            "type": "integer",
            "minimum": 1,
            "default": DEFAULTS["max_concurrent_trials"],
        },
        "resources": {
            "type": "object",
            "additionalProperties": False,
            "properties": _opts_schema(RESOURCE_OPTIONS),
        },
        "storage_path": {"type": "string", "minLength": 1, "default": DEFAULTS["storage_path"]},
        "tracking": {
            "type": "object",
            "additionalProperties": False,
            "properties": _opts_schema(TRACKING_OPTIONS),
        },
    }
    for key, doc in _TOP_DOCS.items():
        properties[key] = {"description": doc, **properties[key]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://msdn-tune.invalid/search-space-v{FORMAT_VERSION}.json",
        "title": f"msdn-tune search space (version {FORMAT_VERSION})",
        "type": "object",
        "required": ["version", "data", "fixed", "params", "num_samples"],
        "additionalProperties": False,
        "properties": properties,
        "$defs": {
            "param": {"oneOf": [float_spec, int_spec, cat_spec]},
            "when": when,
            "objective": objective,
        },
    }


_JSON_TYPES = {
    "int": "integer",
    "number": "number",
    "bool": "boolean",
    "str": "string",
    "any": ["string", "number", "boolean"],
}


def _opts_schema(table: dict[str, _Opt]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, opt in table.items():
        s: dict[str, Any] = {"description": opt.doc}
        s["type"] = [_JSON_TYPES[opt.kind], "null"] if opt.nullable else _JSON_TYPES[opt.kind]
        if opt.choices is not None:
            s["enum"] = [*opt.choices, None] if opt.nullable else list(opt.choices)
        if opt.min is not None:
            s["exclusiveMinimum" if opt.min_open else "minimum"] = opt.min
        if opt.max is not None:
            s["exclusiveMaximum" if opt.max_open else "maximum"] = opt.max
        s["default"] = opt.default
        out[name] = s
    return out


# ------------------------------------------------------------------------------------------------
# Small helpers.


def _fmt(where: tuple[str | int, ...]) -> str:
    out = ""
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _hint(word: str, options: tuple[str, ...] | list[str]) -> str:
    """A "did you mean" suffix; case is ignored so best/h suggests best/H."""
    by_lower = {o.lower(): o for o in options}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _yaml_number_hint(text: str) -> str:
    """Why a number arrived as text: quotes, or YAML 1.1's exponent-needs-a-dot rule."""
    mantissa, sep, exponent = text.strip().lower().partition("e")
    if sep and "." not in mantissa:
        return (
            f"; YAML reads {text} as text because it has no decimal point: write "
            f"{mantissa}.0e{exponent}"
        )
    return "; write the number without quotes"


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps true apart from 1 (YAML booleans are not numbers here)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _is_member(value: Any, options: tuple[Any, ...] | list[Any]) -> bool:
    return any(_same(value, o) for o in options)


def _deep_copy(doc: Any) -> Any:
    return copy.deepcopy(doc)


def _absolute_if_path(value: str) -> str:
    """Absolute path for anything path-like; preset names (no separator) stay names.

    Ray runs each trial in its own working directory, so a relative data path would break
    inside trials (docs/search.md B13); the driver resolves it once, here.
    """
    if "://" in value:
        return value
    if "/" in value or os.sep in value or value.startswith((".", "~")) or Path(value).is_dir():
        return os.path.abspath(os.path.expanduser(value))
    return value


def _absolute_storage(value: str) -> str:
    """Ray refuses relative storage paths; URIs (s3://, gs://, file://) pass unchanged."""
    if "://" in value:
        return value
    return os.path.abspath(os.path.expanduser(value))


def _dependency_order(
    params: dict[str, ParamSpec], on_cycle: Callable[[list[str]], None] | None = None
) -> tuple[str, ...]:
    """Topological order of `when` dependencies, stable with respect to file order."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(name: str, stack: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = stack[stack.index(name) :] + [name]
            if on_cycle is not None:
                on_cycle(cycle)
            raise SpaceError(f"conditions form a cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for parent in params[name].when or {}:
            if parent in params:
                visit(parent, stack + [name])
        state[name] = 2
        order.append(name)

    for name in params:
        visit(name, [])
    return tuple(order)


def _categorical_assignments(
    cats: list[ParamSpec], values: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """Every assignment of the categorical parameters a trial can draw (inactive ones absent)."""
    if not cats:
        yield dict(values)
        return
    head, rest = cats[0], cats[1:]
    if not head.active(values):
        yield from _categorical_assignments(rest, values)
        return
    for choice in head.choices or ():
        yield from _categorical_assignments(rest, {**values, head.name: choice})


def _max_epochs(fixed: dict[str, Any], params: dict[str, ParamSpec]) -> int:
    """The most epochs any trial can run: fixed, searched, or the dataset's published default."""
    if "epochs" in params:
        spec = params["epochs"]
        if spec.type == "categorical":
            return int(max(spec.choices or (1,)))
        return int(spec.high or 1)
    if "epochs" in fixed:
        return int(fixed["epochs"])
    return TrainConfig.for_dataset(str(fixed["dataset"])).epochs


if __name__ == "__main__":  # python -m msdn_tune.space > search_spaces/schema.json
    print(json.dumps(json_schema(), indent=2))
