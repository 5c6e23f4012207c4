"""The search-space format: shipped files, every validation error, env expansion, Optuna glue."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import jsonschema
import optuna
import pytest
import yaml
from click.testing import CliRunner

from msdn_tune.cli import main
from msdn_tune.errors import SpaceError
from msdn_tune.integrations.optuna import define_by_run, make_sampler
from msdn_tune.space import (
    OBJECTIVE_METRICS,
    StudySpec,
    json_schema,
    load_space,
    parse_space,
)
from msdn_tune.train.config import TrainConfig

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
SHIPPED = sorted(SPACES.glob("*.yaml"))
DATASET_SPACES = ["cub", "sun", "awa2", "flo"]

optuna.logging.set_verbosity(optuna.logging.WARNING)


def base_doc() -> dict:
    """A small valid space; each error case below breaks one thing in it."""
    return {
        "version": 1,
        "name": "t",
        "data": "demo",
        "fixed": {"dataset": "synthetic", "epochs": 6},
        "params": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "batch_size": {"type": "int", "low": 8, "high": 64, "step": 8},
            "margin": {"type": "float", "low": 0.0, "high": 2.0, "step": 0.5},
            "intervention": {"type": "categorical", "choices": ["none", "random", "shuffle"]},
            "lambda_causal": {
                "type": "float",
                "low": 0.1,
                "high": 3.0,
                "log": True,
                "when": {"intervention": ["random", "shuffle"]},
            },
        },
        "objective": {"metric": "best/H", "mode": "max"},
        "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 2},
        "scheduler": {"type": "asha", "grace_period": 2, "max_t": 6, "reduction_factor": 2},
        "num_samples": 4,
        "max_concurrent_trials": 2,
        "resources": {"cpu": 1, "gpu": 0},
        "storage_path": "./msdn_results",
        "tracking": {"uri": None, "experiment": None},
    }


# ------------------------------------------------------------------------------------------------
# Shipped files


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_space_loads_and_round_trips(path):
    space = load_space(path)
    assert space.name and space.params and space.num_samples >= 1
    again = parse_space(yaml.safe_load(space.to_yaml()))
    assert again == space.__class__(**{**space.__dict__, "path": None})
    assert again.to_dict() == space.to_dict()


def test_schema_file_is_generated_from_space_py():
    shipped = json.loads((SPACES / "schema.json").read_text())
    assert shipped == json_schema(), (
        "regenerate: python -m msdn_tune.space > search_spaces/schema.json"
    )
    jsonschema.Draft202012Validator.check_schema(shipped)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_space_validates_against_schema(path):
    validator = jsonschema.Draft202012Validator(json_schema())
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


def test_schema_rejects_what_load_space_rejects():
    validator = jsonschema.Draft202012Validator(json_schema())
    assert validator.is_valid(base_doc())
    for breaker in (
        lambda d: d.update(num_sample=3),
        lambda d: d["params"]["lr"].update(lo=1),
        lambda d: d["params"].update(not_a_setting={"type": "int", "low": 1, "high": 2}),
        lambda d: d["objective"].update(metric="best/h"),
        lambda d: d["sampler"].update(type="bayes"),
        lambda d: d["fixed"].update(epochs="six"),
        lambda d: d.update(version=2),
    ):
        doc = base_doc()
        breaker(doc)
        assert not validator.is_valid(doc)


@pytest.mark.parametrize("dataset", DATASET_SPACES)
def test_dataset_space_is_centred_on_the_published_recipe(dataset):
    space = load_space(SPACES / f"{dataset}.yaml")
    published = TrainConfig.for_dataset(dataset)
    assert space.fixed["dataset"] == dataset
    assert space.data.endswith(f"/{dataset}")
    for key, value in space.fixed.items():
        if key != "selection":
            assert getattr(published, key) == value, key
    for name, spec in space.params.items():
        if spec.when:  # MSDN++ additions: inactive under the published MSDN (intervention none)
            assert published.intervention not in spec.when["intervention"]
            continue
        value = getattr(published, name)
        if spec.type == "categorical":
            assert value in spec.choices, name
        else:
            assert spec.low <= value <= spec.high, name
    assert space.scheduler["type"] == "asha" and space.scheduler["max_t"] == published.epochs
    assert space.objectives[0].metric == "best/H"
    assert space.sampler["type"] == "tpe" and space.sampler["seed"] is not None
    assert space.resources["gpu"] == "auto"  # trials packed per GPU (train/packing.py)
    assert space.params["lambda_causal"].when == {"intervention": ("random", "uniform", "shuffle")}


def test_demo_space_is_the_cub_search_on_cpu_and_small():
    """The demo searches what the CUB study searches, on CPU, with ASHA keeping it short."""
    def conditions(s):
        return {n: p.when for n, p in s.params.items()}

    space = load_space(SPACES / "demo.yaml")
    cub = load_space(SPACES / "cub.yaml")
    assert space.data == "demo" and space.fixed["dataset"] == "synthetic"
    assert set(space.params) == set(cub.params)
    assert conditions(space) == conditions(cub)
    assert space.max_concurrent_trials == 2 and space.resources == {"cpu": 1, "gpu": 0}
    assert space.scheduler["type"] == "asha" and space.scheduler["max_t"] == space.fixed["epochs"]
    assert space.num_samples * space.fixed["epochs"] <= 64 * 30


def test_a_multi_objective_example_ships():
    multi = [s for s in map(load_space, SHIPPED) if s.multi_objective]
    assert multi
    assert {o.metric for o in multi[0].objectives} == {"best/H", "best/zsl_acc"}


# ------------------------------------------------------------------------------------------------
# Defaults and resolution


def test_defaults_are_filled_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = base_doc()
    for key in (
        "name",
        "objective",
        "sampler",
        "scheduler",
        "max_concurrent_trials",
        "resources",
        "storage_path",
        "tracking",
    ):
        del doc[key]
    path = tmp_path / "my-study.yaml"
    path.write_text(yaml.safe_dump(doc))
    space = load_space(path)
    assert space.name == "my-study"
    assert space.objectives[0].metric == "best/H" and space.objectives[0].mode == "max"
    assert not space.multi_objective
    assert space.sampler["type"] == "tpe" and space.sampler["seed"] == 0
    assert space.sampler["n_startup_trials"] == 10
    assert space.sampler["group"] is True  # a conditional parameter is present
    assert space.scheduler["max_t"] == 6 and space.scheduler["metric"] == "best/H"
    assert space.max_concurrent_trials == 1
    assert space.resources == {"cpu": 1, "gpu": 0}
    assert space.storage_path == str(tmp_path / "msdn_results")
    assert space.tracking == {"uri": None, "experiment": None}
    assert space.params["batch_size"].step == 8 and space.params["lr"].step is None


def test_asha_max_t_defaults_to_published_epochs_when_epochs_not_fixed():
    doc = base_doc()
    doc["fixed"] = {"dataset": "sun"}
    doc["scheduler"] = {"type": "asha"}
    assert parse_space(doc).scheduler["max_t"] == TrainConfig.for_dataset("sun").epochs
    doc["params"]["epochs"] = {"type": "categorical", "choices": [20, 30, 50]}
    assert parse_space(doc).scheduler["max_t"] == 50


def test_asha_watches_a_per_epoch_metric():
    doc = base_doc()
    doc["objective"] = {"metric": "eval/H_tuned", "mode": "max"}
    assert parse_space(doc).scheduler["metric"] == "best/H"
    doc["objective"] = {"metric": "val/zsl_acc", "mode": "min"}
    assert parse_space(doc).scheduler["metric"] == "val/zsl_acc"
    assert parse_space(doc).scheduler["mode"] == "min"
    # mean/H (the mean validation H so far) is reported every epoch: ASHA compares on it
    doc["objective"] = {"metric": "mean/H", "mode": "max"}
    assert parse_space(doc).scheduler["metric"] == "mean/H"


def test_n_startup_default_follows_concurrency():
    doc = base_doc()
    del doc["sampler"]["n_startup_trials"]
    doc["max_concurrent_trials"] = 16
    assert parse_space(doc).sampler["n_startup_trials"] == 16


def test_env_vars_are_expanded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MSDN_TEST_ROOT", "/srv/stores")
    monkeypatch.setenv("MSDN_TEST_EMPTY", "")
    monkeypatch.delenv("MSDN_TEST_UNSET", raising=False)
    doc = base_doc()
    doc["data"] = "${MSDN_TEST_ROOT}/cub"
    doc["storage_path"] = "${MSDN_TEST_UNSET:-results}/x"
    doc["tracking"]["uri"] = "${MSDN_TEST_EMPTY:-sqlite:///mlflow.db}"
    space = parse_space(doc)
    assert space.data == "/srv/stores/cub"
    assert space.storage_path == str(tmp_path / "results" / "x")
    assert space.tracking["uri"] == "sqlite:///mlflow.db"
    doc["tracking"]["uri"] = "${MSDN_TEST_UNSET:-}"
    assert parse_space(doc).tracking["uri"] is None


def test_data_paths_are_made_absolute_but_presets_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = base_doc()
    assert parse_space(doc).data == "demo"
    doc["data"] = "data/cub"
    assert parse_space(doc).data == str(tmp_path / "data" / "cub")
    doc["data"] = "s3://bucket/cub"
    doc["storage_path"] = "s3://bucket/results"
    space = parse_space(doc)
    assert space.data == "s3://bucket/cub" and space.storage_path == "s3://bucket/results"


def test_with_overrides_revalidates_and_keeps_the_rest(tmp_path):
    path = tmp_path / "s.yaml"
    doc = base_doc()
    del doc["sampler"]["n_startup_trials"]
    path.write_text(yaml.safe_dump(doc))
    space = load_space(path)
    assert space.with_overrides() is space
    assert space.with_overrides(num_samples=None) is space
    new = space.with_overrides(
        num_samples=9,
        max_concurrent_trials=12,
        name="other",
        tracking_uri="sqlite:///x.db",
        storage_path=str(tmp_path / "r"),
        data="tiny",
    )
    assert (new.num_samples, new.max_concurrent_trials, new.name) == (9, 12, "other")
    assert new.tracking["uri"] == "sqlite:///x.db" and new.data == "tiny"
    assert new.storage_path == str(tmp_path / "r")
    assert new.sampler["n_startup_trials"] == 12  # the default is re-derived, not frozen
    assert new.params == space.params and new.path == space.path
    with pytest.raises(SpaceError, match=r"with overrides\): num_samples: must be >= 1"):
        space.with_overrides(num_samples=0)
    with pytest.raises(TypeError):
        space.with_overrides(epochs=3)


# ------------------------------------------------------------------------------------------------
# Errors: every one names the source and the key path


def _set(path: str, value):
    def apply(doc):
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value

    return apply


def _del(path: str):
    def apply(doc):
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[p]
        del node[last]

    return apply


ERRORS = [
    ("version missing", _del("version"), "version: required"),
    ("version unsupported", _set("version", 2), "version: unsupported version 2"),
    (
        "unknown top key",
        _set("num_sample", 3),
        "num_sample: unknown key (did you mean 'num_samples'?)",
    ),
    (
        "unknown param key",
        _set("params.lr.lo", 1e-3),
        "params.lr.lo: unknown key (did you mean 'low'?)",
    ),
    (
        "unknown sampler option",
        _set("sampler.sed", 1),
        "sampler.sed: unknown option (did you mean 'seed'?)",
    ),
    (
        "unknown resource",
        _set("resources.gpus", 1),
        "resources.gpus: unknown option (did you mean 'gpu'?)",
    ),
    (
        "unknown tracking key",
        _set("tracking.url", "x"),
        "tracking.url: unknown option (did you mean 'uri'?)",
    ),
    (
        "unknown confirm key",
        _set("confirm", {"top_k": 2, "seed": 3}),
        "confirm.seed: unknown option (did you mean 'seeds'?); expected one of: top_k, seeds$",
    ),
    (
        "unknown objective key",
        _set("objective.direction", "max"),
        "objective.direction: unknown key",
    ),
    ("data not string", _set("data", ["a"]), "data: expected a string (got a list)"),
    ("data missing", _del("data"), "data: required"),
    ("fixed missing", _del("fixed"), "fixed: required"),
    ("params missing", _del("params"), "params: required"),
    ("num_samples missing", _del("num_samples"), "num_samples: required"),
    ("params empty", _set("params", {}), "params: no parameters to search"),
    ("params not mapping", _set("params", ["lr"]), "params: expected a mapping (got a list)"),
    (
        "unknown setting",
        _set("params.lerning_rate", {"type": "float", "low": 0.1, "high": 0.2}),
        "params.lerning_rate: unknown trainer setting",
    ),
    (
        "setting hint",
        _set("params.lamda_d", {"type": "float", "low": 0.1, "high": 0.2}),
        "(did you mean 'lambda_d'?)",
    ),
    ("type missing", _del("params.lr.type"), "params.lr.type: required"),
    (
        "type unknown",
        _set("params.lr.type", "loguniform"),
        "params.lr.type: unknown parameter type",
    ),
    (
        "low not number",
        _set("params.lr.low", "small"),
        "params.lr.low: expected a number (got the string 'small')",
    ),
    ("yaml exponent pitfall", _set("params.lr.low", "5e-5"), "write 5.0e-5"),
    (
        "int low float",
        _set("params.batch_size.low", 8.5),
        "params.batch_size.low: expected an integer",
    ),
    ("low >= high", _set("params.lr.low", 0.1), "params.lr.low: must be < high (got 0.1 >= 0.01)"),
    (
        "log low <= 0",
        _set("params.margin", {"type": "float", "low": 0.0, "high": 1.0, "log": True}),
        "params.margin.low: log scale needs low > 0 (got 0.0)",
    ),
    ("log not bool", _set("params.lr.log", "yes"), "params.lr.log: expected true or false"),
    (
        "step does not fit",
        _set("params.margin.step", 0.3),
        "params.margin.step: high - low must be a multiple of step",
    ),
    (
        "int step does not fit",
        _set("params.batch_size.step", 5),
        "params.batch_size.step: high - low must be a multiple",
    ),
    ("step <= 0", _set("params.margin.step", 0), "params.margin.step: must be > 0"),
    ("step with log", _set("params.lr.step", 1e-4), "params.lr.step: cannot be combined with log"),
    (
        "choices empty",
        _set("params.intervention.choices", []),
        "params.intervention.choices: must not be empty",
    ),
    (
        "choices not list",
        _set("params.intervention.choices", "none"),
        "params.intervention.choices: expected a list",
    ),
    (
        "choices duplicate",
        _set("params.intervention.choices", ["none", "random", "none"]),
        "params.intervention.choices[2]: duplicate choice 'none'",
    ),
    (
        "choice unknown value",
        _set("params.intervention.choices", ["none", "randm"]),
        "params.intervention.choices[1]: unknown intervention 'randm' (did you mean 'random'?)",
    ),
    ("categorical low", _set("params.intervention.low", 1), "params.intervention.low: unknown key"),
    (
        "float for int setting",
        _set("params.batch_size.type", "float"),
        "params.batch_size.type: batch_size takes whole numbers",
    ),
    (
        "float for bool setting",
        _set("params.normalize_v", {"type": "float", "low": 0.0, "high": 1.0}),
        "params.normalize_v.type: normalize_v is a true/false setting; "
        "search it as type: categorical",
    ),
    (
        "bool choice of number setting",
        _set("params.momentum", {"type": "categorical", "choices": [True]}),
        "params.momentum.choices[0]: expected a number",
    ),
    (
        "out of trainer range",
        _set("params.lr.high", 2.0),
        "params.lr.high: rejected by the trainer: must be in (0, 1] (got 2.0)$",
    ),
    (
        "cross-setting rule",
        _del("params.lambda_causal.when"),
        "params.lambda_causal.low: rejected by the trainer: a causal loss needs an intervention "
        "(set intervention to random, uniform or shuffle) (with intervention='none'; make "
        "lambda_causal conditional with `when:`)",
    ),
    (
        "cross-setting rule, fixed",
        lambda d: d["fixed"].update(lambda_causal=1.0) or d["params"].pop("lambda_causal"),
        "fixed.lambda_causal: a causal loss needs an intervention (set intervention to random, "
        "uniform or shuffle) (with intervention='none')",
    ),
    (
        "cross-setting rule, no choice helps",
        lambda d: d["params"].pop("intervention") and d["params"]["lambda_causal"].pop("when"),
        "params.lambda_causal.low: rejected by the trainer: a causal loss needs an intervention "
        "(set intervention to random, uniform or shuffle)$",
    ),
    (
        "condition unknown param",
        _set("params.lambda_causal.when", {"interventon": ["random"]}),
        "params.lambda_causal.when.interventon: condition on unknown parameter 'interventon' "
        "(did you mean 'intervention'?)",
    ),
    (
        "condition on fixed",
        lambda d: d["params"]["lambda_causal"].update(when={"epochs": [6]}),
        "params.lambda_causal.when.epochs: epochs is held fixed",
    ),
    (
        "condition on numeric",
        _set("params.lambda_causal.when", {"lr": [0.001]}),
        "params.lambda_causal.when.lr: conditions can only refer to categorical parameters "
        "(lr is float)",
    ),
    (
        "condition value not a choice",
        _set("params.lambda_causal.when", {"intervention": ["uniform"]}),
        "params.lambda_causal.when.intervention[0]: 'uniform' is not one of intervention's choices",
    ),
    (
        "condition not list",
        _set("params.lambda_causal.when", {"intervention": "random"}),
        "params.lambda_causal.when.intervention: expected a non-empty list",
    ),
    (
        "condition on itself",
        _set("params.intervention.when", {"intervention": ["none"]}),
        "params.intervention.when.intervention: a parameter cannot depend on itself",
    ),
    (
        "condition cycle",
        lambda d: d["params"].update(
            normalize_v={
                "type": "categorical",
                "choices": [True, False],
                "when": {"normalize_f": [True]},
            },
            normalize_f={
                "type": "categorical",
                "choices": [True, False],
                "when": {"normalize_v": [True]},
            },
        ),
        "conditions form a cycle: normalize_v -> normalize_f -> normalize_v",
    ),
    (
        "never active",
        lambda d: d["params"].update(
            normalize_v={
                "type": "categorical",
                "choices": [True, False],
                "when": {"intervention": ["random"]},
            },
            normalize_f={
                "type": "categorical",
                "choices": [True, False],
                "when": {"intervention": ["none"], "normalize_v": [True]},
            },
        ),
        "params.normalize_f.when: this parameter can never be active",
    ),
    ("param also fixed", _set("fixed.lr", 0.001), "params.lr: also set under fixed:"),
    (
        "dataset searched",
        _set("params.dataset", {"type": "categorical", "choices": ["cub"]}),
        "params.dataset: cannot be searched",
    ),
    (
        "fixed unknown key",
        _set("fixed.epoch", 3),
        "fixed.epoch: unknown trainer setting (did you mean 'epochs'?)",
    ),
    ("fixed dataset missing", _del("fixed.dataset"), "fixed.dataset: required"),
    (
        "fixed dataset unknown",
        _set("fixed.dataset", "cubb"),
        "fixed.dataset: unknown dataset 'cubb' (did you mean 'cub'?)",
    ),
    (
        "fixed wrong type",
        _set("fixed.epochs", "six"),
        "fixed.epochs: expected an integer (got the string 'six')",
    ),
    (
        "fixed out of range",
        _set("fixed.weight_decay", -1.0),
        "fixed.weight_decay: must be in [0, inf] (got -1.0)$",
    ),
    (
        "objective unknown metric",
        _set("objective.metric", "best/h"),
        "objective.metric: unknown metric 'best/h' (did you mean 'best/H'?)",
    ),
    (
        "objective bad mode",
        _set("objective.mode", "maximize"),
        "objective.mode: expected max or min",
    ),
    (
        "objective list unknown metric",
        _set("objective", [{"metric": "best/H"}, {"metric": "val/hm"}]),
        "objective[1].metric: unknown metric",
    ),
    (
        "objective duplicate",
        _set("objective", [{"metric": "best/H"}, {"metric": "best/H"}]),
        "objective[1].metric: best/H is listed twice",
    ),
    ("objective empty list", _set("objective", []), "objective: must name at least one metric"),
    ("sampler unknown", _set("sampler.type", "bayes"), "sampler.type: unknown sampler 'bayes'"),
    (
        "sampler option of other type",
        _set("sampler", {"type": "random", "n_startup_trials": 3}),
        "sampler.n_startup_trials: unknown option",
    ),
    ("sampler seed type", _set("sampler.seed", 1.5), "sampler.seed: expected an integer"),
    (
        "tpe group without multivariate",
        _set("sampler", {"type": "tpe", "group": True, "multivariate": False}),
        "sampler.group: needs multivariate: true",
    ),
    (
        "cmaes multi-objective",
        lambda d: d.update(
            objective=[{"metric": "best/H"}, {"metric": "best/zsl_acc"}], sampler={"type": "cmaes"}
        ),
        "sampler.type: cmaes optimises a single objective",
    ),
    (
        "nsga2 population",
        _set("sampler", {"type": "nsga2", "population_size": 1}),
        "sampler.population_size: must be >= 2",
    ),
    (
        "scheduler unknown",
        _set("scheduler.type", "hyperband"),
        "scheduler.type: unknown scheduler 'hyperband'",
    ),
    (
        "grace > max_t",
        _set("scheduler.grace_period", 7),
        "scheduler.grace_period: must be <= max_t (got 7 > 6)",
    ),
    (
        "max_t > epochs",
        _set("scheduler.max_t", 10),
        "scheduler.max_t: must be <= 6, the most epochs a trial runs",
    ),
    (
        "max_t < epochs",
        _set("scheduler.max_t", 4),
        "scheduler.max_t: must be 6, the most epochs a trial runs (got 4)",
    ),
    (
        "reduction factor",
        _set("scheduler.reduction_factor", 1),
        "scheduler.reduction_factor: must be >= 1.1",
    ),
    (
        "scheduler metric",
        _set("scheduler.metric", "val/h"),
        "scheduler.metric: unknown value 'val/h' (did you mean 'val/H'?)",
    ),
    (
        "scheduler metric not per epoch",
        _set("scheduler.metric", "test/H"),
        "scheduler.metric: test/H arrives once, at the end of a trial",
    ),
    (
        "none scheduler options",
        _set("scheduler", {"type": "none", "grace_period": 2}),
        "scheduler.grace_period: unknown option",
    ),
    ("num_samples < 1", _set("num_samples", 0), "num_samples: must be >= 1 (got 0)"),
    (
        "num_samples type",
        _set("num_samples", "8"),
        "num_samples: expected an integer (got the string '8'; write the number without quotes)",
    ),
    (
        "max_concurrent < 1",
        _set("max_concurrent_trials", 0),
        "max_concurrent_trials: must be >= 1 (got 0)",
    ),
    ("cpu <= 0", _set("resources.cpu", 0), "resources.cpu: must be >= 0.0001"),
    ("gpu < 0", _set("resources.gpu", -1), "resources.gpu: must be >= 0"),
    (
        "gpu fractional > 1",
        _set("resources.gpu", 1.5),
        "resources.gpu: must be a fraction below 1 or a whole number",
    ),
    ("resources not mapping", _set("resources", 2), "resources: expected a mapping"),
    ("bad name", _set("name", "my study"), "name: 'my study' is not a valid study name"),
    ("empty data", _set("data", ""), "data: must not be empty"),
    (
        "unset env var",
        _set("data", "${MSDN_TEST_SURELY_UNSET}/cub"),
        "data: environment variable MSDN_TEST_SURELY_UNSET is not set",
    ),
    ("bad env reference", _set("storage_path", "${1BAD}"), "storage_path: bad variable reference"),
    (
        "unclosed env reference",
        _set("tracking.uri", "${HOME"),
        "tracking.uri: unclosed variable reference",
    ),
]


@pytest.mark.parametrize("mutate,expected", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_invalid_space_is_rejected_with_key_path(mutate, expected, monkeypatch):
    monkeypatch.delenv("MSDN_TEST_SURELY_UNSET", raising=False)
    doc = base_doc()
    mutate(doc)
    with pytest.raises(SpaceError) as info:
        parse_space(doc, source="s.yaml")
    message = str(info.value)
    assert message.startswith("s.yaml: ")
    if expected.endswith("$"):  # the message must end there (no misleading context appended)
        assert message.endswith(expected[:-1])
    else:
        assert expected in message


def test_base_doc_is_valid():
    space = parse_space(base_doc())
    assert isinstance(space, StudySpec) and len(space.params) == 5


@pytest.mark.parametrize(
    "text,expected",
    [
        ("version: 1\nparams: [1, 2\n", r"line 3, column 1: invalid YAML"),
        ("version: 1\nname: a\nname: b\n", r"line 3, column 1: invalid YAML: duplicate key 'name'"),
        ("version: 1\n  data: x\n", r"line 2, column 7: invalid YAML"),
        ("", r"the file is empty"),
        ("- version: 1\n", r"expected a mapping \(got a list\)"),
    ],
    ids=["unclosed", "duplicate-key", "bad-indent", "empty", "top-level-list"],
)
def test_file_errors(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=rf"^{path}: .*{expected}"):
        load_space(path)


def test_yaml_anchors_and_merge_keys_work(tmp_path):
    # Anchors are plain YAML: reuse one `when` and merge a mapping into a parameter.
    text = yaml.safe_dump(base_doc(), sort_keys=False).replace("    when:\n", "    when: &active\n")
    text = text.replace(
        "objective:",
        "  distill_effect: {type: categorical, choices: [false, true], when: *active}\n"
        "  temp_ava:\n    <<: {type: float, low: 0.5, high: 2.0}\n    log: true\nobjective:",
    )
    path = tmp_path / "anchors.yaml"
    path.write_text(text)
    space = load_space(path)
    assert space.params["distill_effect"].when == space.params["lambda_causal"].when
    assert space.params["temp_ava"].log and space.params["temp_ava"].high == 2.0


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SpaceError, match="nope.yaml: no such file"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(SpaceError, match="not a file"):
        load_space(tmp_path)


def test_objective_metrics_match_the_architecture_names():
    assert "best/H" in OBJECTIVE_METRICS and "eval/H_tuned" in OBJECTIVE_METRICS
    assert all(m.count("/") == 1 for m in OBJECTIVE_METRICS)


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli_validate_ok():
    result = CliRunner().invoke(main, ["space", "validate", str(SPACES / "demo.yaml")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: demo: 13 params (2 conditional)")


def test_cli_validate_invalid_exits_2_without_traceback(tmp_path):
    doc = base_doc()
    doc["params"]["lr"]["low"] = 0.1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(main, ["space", "validate", str(path)])
    assert result.exit_code == 2
    assert "params.lr.low: must be < high (got 0.1 >= 0.01)" in result.output
    assert "Traceback" not in result.output
    missing = CliRunner().invoke(main, ["space", "show", str(tmp_path / "missing.yaml")])
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_cli_show_prints_resolved_yaml():
    result = CliRunner().invoke(main, ["space", "show", str(SPACES / "cub.yaml")])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown == load_space(SPACES / "cub.yaml").to_dict()
    assert shown["scheduler"]["brackets"] == 1  # a default the file does not spell out


# ------------------------------------------------------------------------------------------------
# Optuna


def _ask(space: StudySpec, n: int, sampler=None) -> list[dict]:
    study = optuna.create_study(
        sampler=sampler or make_sampler(space),
        directions=[o.mode + "imize" for o in space.objectives],
    )
    fn = define_by_run(space)
    out = []
    for i in range(n):
        trial = study.ask()
        assert fn(trial) is None
        out.append(dict(trial.params))
        values = [float(i % 3)] * len(space.objectives)
        study.tell(trial, values)
    return out


def test_define_by_run_honours_ranges_and_conditions():
    doc = base_doc()
    # The child is listed before its parent: suggestion order must still put the parent first.
    params = doc["params"]
    doc["params"] = {"lambda_causal": params.pop("lambda_causal"), **params}
    space = parse_space(doc)
    assert space.suggestion_order.index("intervention") < space.suggestion_order.index(
        "lambda_causal"
    )
    configs = _ask(space, 40, optuna.samplers.RandomSampler(seed=1))
    for cfg in configs:
        assert ("lambda_causal" in cfg) == (cfg["intervention"] in ("random", "shuffle"))
        assert 1e-4 <= cfg["lr"] <= 1e-2
        assert cfg["batch_size"] % 8 == 0 and 8 <= cfg["batch_size"] <= 64
        assert cfg["margin"] in (0.0, 0.5, 1.0, 1.5, 2.0)
        TrainConfig.from_dict({**space.fixed, **cfg})  # every suggestion is a valid trainer config
    assert {c["intervention"] for c in configs} == {"none", "random", "shuffle"}


@pytest.mark.parametrize("kind", ["tpe", "random", "gp", "nsga2"])
def test_sampler_is_seeded(kind):
    doc = base_doc()
    doc["sampler"] = {"type": kind, "seed": 3}
    if kind == "tpe":
        doc["sampler"]["n_startup_trials"] = 2
    if kind == "gp":
        doc["sampler"]["n_startup_trials"] = 2
        doc["params"] = {k: v for k, v in doc["params"].items() if k in ("lr", "margin")}
    same = parse_space(doc)
    doc["sampler"]["seed"] = 4
    other = parse_space(doc)
    n = 4
    assert _ask(same, n) == _ask(same, n)
    assert _ask(same, n) != _ask(other, n)


def test_tpe_uses_group_decomposition_for_conditional_spaces():
    sampler = make_sampler(parse_space(base_doc()))
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._group is True  # no public accessor; the flag decides conditional handling


def test_multi_objective_study_runs():
    doc = base_doc()
    doc["objective"] = [{"metric": "best/H"}, {"metric": "best/zsl_acc", "mode": "max"}]
    doc["sampler"] = {"type": "nsga2", "seed": 0, "population_size": 4}
    space = parse_space(doc)
    assert space.multi_objective and space.scheduler["metric"] == "best/H"
    assert len(_ask(space, 6)) == 6


def test_cmaes_needs_its_package():
    import importlib.util

    doc = base_doc()
    doc["sampler"] = {"type": "cmaes", "seed": 0}
    if importlib.util.find_spec("cmaes") is None:
        with pytest.raises(SpaceError, match="sampler.type: the cmaes sampler needs the `cmaes`"):
            parse_space(doc)
    else:
        assert isinstance(make_sampler(parse_space(doc)), optuna.samplers.CmaEsSampler)


def test_define_by_run_survives_ray_optuna_search_checkpoint(tmp_path):
    """OptunaSearch.save() pickles the space function: it must not be a closure."""
    from ray.tune.search.optuna import OptunaSearch

    space = parse_space(base_doc())
    fn = define_by_run(space)
    assert pickle.loads(pickle.dumps(fn)).params == fn.params
    search = OptunaSearch(space=fn, metric="best/H", mode="max", sampler=make_sampler(space))
    first = search.suggest("t1")
    assert set(first) <= set(space.params) and "intervention" in first
    search.save(str(tmp_path / "searcher.pkl"))
    restored = OptunaSearch(space=copy.deepcopy(fn), metric="best/H", mode="max")
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert set(restored.suggest("t2")) <= set(space.params)


def test_confirm_section_defaults_overrides_and_refusals(tmp_path):
    from msdn_tune.space import confirm_override, parse_space
    from tests.helpers.study import small_doc

    space = parse_space(small_doc(tmp_path, confirm={}))
    assert space.confirm == {"top_k": 3, "seeds": 3}
    assert parse_space(space.to_dict()).confirm == space.confirm  # round trip
    assert "confirmed with 3 fresh seeds" in space.summary()
    assert parse_space(small_doc(tmp_path)).confirm is None
    assert confirm_override(None, None, None) is None
    assert confirm_override(space.confirm, 0, None) is False
    assert confirm_override(None, 5, None) == {"top_k": 5, "seeds": 3}
    assert space.with_overrides(confirm=False).confirm is None
    with pytest.raises(SpaceError, match=r"confirm.*top_k"):
        space.with_overrides(confirm={"top_k": 1000, "seeds": 3})
    with pytest.raises(SpaceError, match=r"confirm.*multi-objective"):
        parse_space(small_doc(tmp_path, confirm={}, objective=[
            {"metric": "best/H"}, {"metric": "best/U"}]))
    with pytest.raises(SpaceError, match=r"confirm.*seed"):
        parse_space(small_doc(tmp_path, confirm={}, params={
            "seed": {"type": "int", "low": 0, "high": 9}}))
