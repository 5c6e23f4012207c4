"""All of msdn-tune's Optuna: the define-by-run function and sampler a study space asks for,
its distributions, finished trials as FrozenTrials (warm starts) and in-memory studies (plots).

The only module besides the Ray searcher that wraps it (integrations/ray/searcher.py) that
imports optuna.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from msdn_tune.errors import SpaceError
from msdn_tune.safeload import shorten
from msdn_tune.space import ParamSpec, StudySpec

if TYPE_CHECKING:  # trials imports pyarrow, which `space validate` must not wait for
    from msdn_tune.trials import TrialRow

log = logging.getLogger(__name__)


class _DefineByRun:
    """Optuna define-by-run function for Ray's OptunaSearch.

    A class instance rather than a closure because OptunaSearch.save() pickles its search space
    with plain `pickle` when a study is checkpointed or resumed.
    """

    def __init__(self, params: tuple[ParamSpec, ...]) -> None:
        self.params = params

    def __call__(self, trial: optuna.Trial) -> None:
        values: dict[str, Any] = {}
        for p in self.params:
            if not p.active(values):
                continue
            if p.type == "categorical":
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices or ()))
            elif p.type == "int":
                low, high = int(p.low or 0), int(p.high or 0)
                values[p.name] = trial.suggest_int(
                    p.name, low, high, step=int(p.step or 1), log=p.log
                )
            else:
                low_f, high_f = float(p.low or 0.0), float(p.high or 0.0)
                values[p.name] = trial.suggest_float(p.name, low_f, high_f, step=p.step, log=p.log)
        # Ray's contract: return None or a dict of constants. Fixed settings are not returned:
        # the Tune layer passes them in param_space, so Optuna's study holds only searched values.
        return None

    def __repr__(self) -> str:
        return f"define_by_run({', '.join(p.name for p in self.params)})"


def define_by_run(space: StudySpec) -> Callable[[optuna.Trial], dict | None]:
    """An Optuna define-by-run function suggesting the space's parameters.

    Parameters are suggested in dependency order, and a conditional one only when its `when`
    holds, so a trial's config holds exactly its active parameters. The function returns None,
    as Ray's `OptunaSearch` accepts; fixed settings are for the caller to merge. It is
    picklable, because `OptunaSearch.save()` pickles it.
    """
    return _DefineByRun(tuple(space.params[n] for n in space.suggestion_order))


def make_sampler(space: StudySpec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the space asks for, seeded from `sampler.seed`."""
    s = space.sampler
    with warnings.catch_warnings():
        # `group` and a few samplers are flagged experimental; choosing them is deliberate.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s["type"] == "tpe":
            multivariate = True if s["group"] and s["multivariate"] is None else s["multivariate"]
            return optuna.samplers.TPESampler(
                seed=s["seed"],
                n_startup_trials=s["n_startup_trials"],
                multivariate=multivariate,
                group=s["group"],
                constant_liar=s["constant_liar"],
            )
        if s["type"] == "random":
            return optuna.samplers.RandomSampler(seed=s["seed"])
        if s["type"] == "gp":
            return optuna.samplers.GPSampler(
                seed=s["seed"],
                n_startup_trials=s["n_startup_trials"],
                deterministic_objective=s["deterministic_objective"],
            )
        if s["type"] == "cmaes":
            return optuna.samplers.CmaEsSampler(
                seed=s["seed"],
                n_startup_trials=s["n_startup_trials"],
                sigma0=s["sigma0"],
                with_margin=s["with_margin"],
            )
        if s["type"] == "nsga2":
            return optuna.samplers.NSGAIISampler(
                seed=s["seed"],
                population_size=s["population_size"],
                crossover_prob=s["crossover_prob"],
                mutation_prob=s["mutation_prob"],
            )
    raise AssertionError(f"unhandled sampler type {s['type']!r}")  # parse() rejects others


def optuna_distributions(space: StudySpec) -> dict[str, Any]:
    """Optuna distributions of the searched parameters (for warm starts and plots)."""
    out: dict[str, Any] = {}
    for name, p in space.params.items():
        # parse_space guarantees low/high for numeric parameters and choices for categorical
        if p.type == "float":
            out[name] = optuna.distributions.FloatDistribution(
                float(p.low or 0.0), float(p.high or 0.0), log=bool(p.log), step=p.step)
        elif p.type == "int":
            out[name] = optuna.distributions.IntDistribution(
                int(p.low or 0), int(p.high or 0), log=bool(p.log), step=int(p.step or 1))
        else:
            out[name] = optuna.distributions.CategoricalDistribution(list(p.choices or ()))
    return out


_REFUSALS = (ValueError, TypeError, ArithmeticError, ImportError)
"""What Optuna raises when it refuses a distribution or sampler setting (ValueError is the
documented one; numbers and missing optional packages surface as the others)."""


def check_space(space: StudySpec) -> None:
    """Build what a study builds from `space` (each distribution, the sampler, a study) and
    suggest one trial with the define-by-run function, so `space validate` rejects here what
    Optuna would refuse once Ray runs the study.

    Raises:
        SpaceError: naming the file and the key Optuna refused, in one line.
    """
    source = str(space.path) if space.path else "<dict>"

    def refused(key: str, exc: BaseException) -> SpaceError:
        detail = shorten(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 160)
        return SpaceError(f"{source}: {key}: Optuna refuses this: {detail}")

    dists: dict[str, Any] = {}
    for name in space.params:
        try:
            dists.update(optuna_distributions(_only(space, name)))
        except _REFUSALS as exc:
            raise refused(f"params.{name}", exc) from None
    try:
        sampler = make_sampler(space)
    except _REFUSALS as exc:
        raise refused("sampler", exc) from None
    directions = [optuna.study.StudyDirection.MAXIMIZE if o.mode == "max"
                  else optuna.study.StudyDirection.MINIMIZE for o in space.objectives]
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(directions=directions, sampler=sampler)
            trial = study.ask()
            define_by_run(space)(trial)
    except _REFUSALS as exc:
        raise refused("params", exc) from None
    finally:
        optuna.logging.set_verbosity(previous)
    for name, value in trial.params.items():
        if not dists[name]._contains(dists[name].to_internal_repr(value)):
            # Distribution._contains: private API of optuna, checked against optuna 5.0.0
            raise SpaceError(f"{source}: params.{name}: Optuna suggested {shorten(value)}, "
                             "outside the range")


def _only(space: StudySpec, name: str) -> StudySpec:
    """`space` with one parameter, so a refused distribution is named."""
    return dataclasses.replace(space, params={name: space.params[name]})


def frozen_trials(space: StudySpec, rows: list[TrialRow], *, include_pruned: bool = False
                  ) -> list[Any]:
    """Finished trials as Optuna FrozenTrials in this space (outside-range points skipped)."""

    dists = optuna_distributions(space)
    metrics = [o.metric for o in space.objectives]
    out = []
    for r in rows:
        if r.status == "completed":
            state = optuna.trial.TrialState.COMPLETE
        elif r.status == "early_stopped" and include_pruned:
            state = optuna.trial.TrialState.PRUNED
        else:
            continue
        # Only the parameters that exist for this trial (rows read back from MLflow carry every
        # training setting, including inactive conditional ones at their defaults).
        params = {k: v for k, v in r.params.items()
                  if k in dists and v is not None and space.params[k].active(r.params)}
        try:
            for k, v in params.items():
                # Distribution._contains: private API of optuna, checked against optuna 5.0.0
                if not dists[k]._contains(dists[k].to_internal_repr(v)):
                    raise ValueError(k)
            complete = state == optuna.trial.TrialState.COMPLETE
            values = [r.metrics[m] for m in metrics] if complete else None
            out.append(optuna.trial.create_trial(
                params=params, distributions={k: dists[k] for k in params},
                values=values, state=state))
        except (KeyError, ValueError):
            log.warning("skipping trial %s: outside this search space", r.trial_id)
    return out


def optuna_study(space: StudySpec, rows: list[TrialRow]) -> Any:
    """An in-memory Optuna study holding a finished study's trials (for plots and reports)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [optuna.study.StudyDirection.MAXIMIZE if o.mode == "max"
                  else optuna.study.StudyDirection.MINIMIZE for o in space.objectives]
    study = optuna.create_study(directions=directions, study_name=space.name)
    study.add_trials(frozen_trials(space, rows))
    return study


def study_plots(study: optuna.Study, out_dir: Path, *, objective_names: list[str]) -> list[Path]:
    """Write optimisation history, parameter importances, parallel coordinates and (for 2 or 3
    objectives) the Pareto front as PNG; also as HTML when plotly is installed.

    Plots that cannot be drawn (no complete trial; importances with < 2 complete trials or a
    single parameter; a failing importance fit) are skipped with a log line, never raised:
    plotting is the last step of a study that already succeeded. Returns the written paths.
    """
    n_obj = len(study.directions)
    if len(objective_names) != n_obj:
        raise ValueError(f"{len(objective_names)} objective names for a {n_obj}-objective study")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        log.info("no complete trial: no study plots")
        return []
    param_names = {p for t in complete for p in t.params}

    if "matplotlib.pyplot" not in sys.modules:  # don't switch the backend of a running session
        import matplotlib

        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vmpl

    vplotly: Any = None
    if importlib.util.find_spec("plotly") is not None:
        from optuna import visualization as vplotly

    jobs: list[tuple[str, str, dict[str, Any]]] = []  # (file stem, plot function name, kwargs)
    for i, obj in enumerate(objective_names):
        suffix = "" if n_obj == 1 else f"_{_slug(obj)}"
        kw: dict[str, Any] = {"target_name": obj}
        imp_kw: dict[str, Any] = {"target_name": obj}
        if n_obj > 1:
            kw["target"] = lambda t, i=i: t.values[i]
            # importance evaluators rank params by how they reach *low* target values when a
            # target is given, so maximised objectives are negated for that plot only
            sign = -1.0 if study.directions[i] == optuna.study.StudyDirection.MAXIMIZE else 1.0
            imp_kw["target"] = lambda t, i=i, sign=sign: sign * t.values[i]
        jobs.append((f"history{suffix}", "plot_optimization_history", kw))
        if param_names:
            jobs.append((f"parallel_coordinate{suffix}", "plot_parallel_coordinate", kw))
        if len(complete) >= 2 and len(param_names) >= 2:
            jobs.append((f"param_importances{suffix}", "plot_param_importances", imp_kw))
    if n_obj in (2, 3):
        jobs.append(("pareto_front", "plot_pareto_front", {"target_names": list(objective_names)}))

    written: list[Path] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*computes the importances of params.*")
        # a parameter every complete trial shares one value of: matplotlib widens the axis itself
        warnings.filterwarnings("ignore", message="Attempting to set identical low and high")
        for stem, fn_name, kw in jobs:
            try:
                ax = getattr(vmpl, fn_name)(study, **kw)
                first = ax.flat[0] if hasattr(ax, "flat") else ax
                fig = first.figure
                path = out_dir / f"{stem}.png"
                fig.savefig(path, dpi=110, bbox_inches="tight")
                plt.close(fig)
                written.append(path)
                if vplotly is not None:
                    html = out_dir / f"{stem}.html"
                    getattr(vplotly, fn_name)(study, **kw).write_html(html, include_plotlyjs="cdn")
                    written.append(html)
            except Exception as exc:  # noqa: BLE001 - a plot must never fail a finished study
                log.warning("study plot %s skipped: %s", stem, exc)
                plt.close("all")
    return written


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "experiment"
