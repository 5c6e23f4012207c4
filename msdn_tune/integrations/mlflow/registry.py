"""The champion model: logged under its trial's run, registered per benchmark, loaded back.

A study's best model is logged with ``mlflow.pytorch`` and registered as ``msdn-<dataset>``; the
alias ``champion`` moves to it only when it beats the current champion on the same metric and
benchmark. Model logging and registration exist only in MLflow's fluent form, which reads the
process-global tracking and registry URIs: they run inside :func:`_scoped_mlflow_uris`, which
points those globals at the study's store and restores them, so a caller's own configuration and
the other modules' explicit-URI clients are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

# Private API of mlflow, checked against mlflow 3.17.2: the modules that hold the fluent tracking
# and registry URIs, so that _scoped_mlflow_uris can restore them exactly.
from mlflow.tracking._model_registry import utils as reg_utils
from mlflow.tracking._tracking_service import utils as trk_utils
from mlflow.utils.requirements_utils import (
    _init_packages_to_modules_map,  # private API of mlflow, checked against mlflow 3.17.2
)

import msdn_tune
from msdn_tune.errors import ConfigError, TrackingError
from msdn_tune.integrations.mlflow.guard import quick_http
from msdn_tune.integrations.mlflow.params import MAX_TAG_VALUE, flatten_params, truncate
from msdn_tune.integrations.mlflow.store import ensure_experiment, resolve_tracking_uri, slug

if TYPE_CHECKING:
    import torch


CHAMPION_ALIAS = "champion"


@contextlib.contextmanager
def _scoped_mlflow_uris(uri: str) -> Iterator[None]:
    """Point MLflow's fluent tracking and registry URIs at ``uri`` for a block, then restore them.

    ``mlflow.pytorch.log_model``/``load_model`` and ``mlflow.register_model`` only read the
    globals. Restoring uses the module variables MLflow keeps them in (3.17) and the env vars
    ``set_tracking_uri`` exports, so a caller's own configuration survives.
    """
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved_trk = getattr(trk_utils, "_tracking_uri", None)
    saved_reg = getattr(reg_utils, "_registry_uri", None)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        # private API of mlflow, checked against mlflow 3.17.2: where the globals are kept
        if hasattr(trk_utils, "_tracking_uri"):
            trk_utils._tracking_uri = saved_trk
        if hasattr(reg_utils, "_registry_uri"):
            reg_utils._registry_uri = saved_reg
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise one library logger's level for a block."""
    log = logging.getLogger(name)
    saved = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(saved)


def registered_model_name(dataset: str) -> str:
    """``msdn-<dataset>``, with characters a registry name should not hold replaced by '-'."""
    return f"msdn-{slug(dataset)}"


def _pip_requirements() -> list[str]:
    # Explicit and short: inferring requirements costs ~4 s per log_model (docs/search.md S4). The
    # msdn_tune code itself travels in code_paths, so only its runtime dependencies are listed.
    import torch  # not at the top: `msdn-tune ui` and the start of `msdn-tune run` do without it

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}"]


def _package_dir() -> Path:
    """The msdn_tune package folder, which travels with a logged model (``code_paths``)."""
    return Path(msdn_tune.__file__).resolve().parent


def _version_tags(version: Any) -> dict[str, str]:
    return dict(getattr(version, "tags", None) or {})


def log_champion(
    uri: str,
    *,
    model: torch.nn.Module,
    dataset: str,
    study: str,
    trial_id: str,
    run_id: str,
    metric: str,
    value: float,
    mode: str = "max",
    checkpoint: str | None = None,
    extra_tags: Mapping[str, Any] | None = None,
    force_promote: bool = False,
) -> dict[str, Any]:
    """Log ``model`` under the trial's run, register it as ``msdn-<dataset>``, maybe promote it.

    The model is saved with ``serialization_format="pickle"`` plus the msdn_tune package in
    ``code_paths``: MSDN's forward takes keyword options and returns a dataclass, which the
    default ``pt2`` (torch.export) format cannot take without an input example. Pickle runs code
    when loaded, which is acceptable here because the user's own study created the model; only
    load registry models you (or your team) logged.

    The alias ``champion`` moves to the new version when there is no champion yet, or the new
    ``value`` is better (``mode``) on the *same* metric and benchmark (the version tag
    ``benchmark``: ``dataset``, or ``extra_tags["benchmark"]`` when given), or ``force_promote``.
    Values of different metrics are never compared, nor a single run's value with a mean over
    seeds (the tag ``seeds``, from ``extra_tags``; absent means one run). Returns ``{"name",
    "version", "promoted", "previous", "previous_value", "model_uri"}`` (``previous``: the
    champion version before, or None). Not atomic: promote from one process (the driver).
    """
    if mode not in ("max", "min"):
        raise ConfigError(f"champion mode must be 'max' or 'min', got {mode!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"champion {metric} value must be finite, got {value}")
    name = registered_model_name(dataset)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    tags = {
        "study": study,
        "trial_id": str(trial_id),
        "metric": metric,
        "value": repr(value),
        "mode": mode,
        "benchmark": dataset,
        "run_id": run_id,
        **({"checkpoint": checkpoint} if checkpoint else {}),
        **{str(k): str(v) for k, v in (extra_tags or {}).items()},
    }
    tags = {k: truncate(v, MAX_TAG_VALUE) for k, v in tags.items()}
    benchmark = tags["benchmark"]  # extra_tags may name the benchmark more precisely
    try:
        with quick_http(timeout_s=60.0), _scoped_mlflow_uris(uri):
            model_uri = _log_model(client, model, run_id,
                                   {"msdn_tune.study": study, "msdn_tune.trial_id": str(trial_id)})
            version = mlflow.register_model(model_uri, name, tags=tags)
            try:
                previous = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    raise
                previous = None
            prev_tags = _version_tags(previous)
            try:
                prev_value = float(prev_tags["value"]) if previous is not None else None
            except (KeyError, ValueError):
                prev_value = None
            # a mean over seeds (confirmed) is compared only with a mean over as many
            comparable = (
                prev_tags.get("metric") == metric and prev_tags.get("benchmark") == benchmark
                and prev_tags.get("seeds", "1") == tags.get("seeds", "1")
            )
            better = (
                comparable
                and prev_value is not None
                and (value > prev_value if mode == "max" else value < prev_value)
            )
            promoted = bool(force_promote or previous is None or better)
            if promoted:
                client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
    except MlflowException as exc:
        raise TrackingError(
            f"cannot log or register the champion model {name!r} at {uri}: {exc}"
        ) from exc
    return {
        "name": name,
        "version": str(version.version),
        "promoted": promoted,
        "previous": None if previous is None else str(previous.version),
        "previous_value": prev_value,
        "model_uri": f"models:/{name}/{version.version}",
    }


def _log_model(client: MlflowClient, model: torch.nn.Module, run_id: str,
               tags: Mapping[str, str]) -> str:
    """Log ``model`` under ``run_id`` (pickle + the msdn_tune package); its ``runs:/`` URI.

    Call inside :func:`_scoped_mlflow_uris`: ``log_model`` only reads MLflow's globals.
    """
    import mlflow.pytorch  # not at the top: it imports torch, off `msdn-tune run`'s start-up path

    run = client.get_run(run_id)
    # Created explicitly in the run's experiment: without an active fluent run, log_model
    # would file the LoggedModel under the default experiment "0".
    logged = client.create_logged_model(run.info.experiment_id, name="model",
                                        source_run_id=run_id, tags=dict(tags))
    with warnings.catch_warnings(), _quiet_logger("mlflow.pytorch"):
        # pickle is chosen on purpose (see log_champion): its generic caution is noise here
        warnings.simplefilter("ignore", FutureWarning)
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            serialization_format="pickle",
            pip_requirements=_pip_requirements(),
            code_paths=[str(_package_dir())],
            model_id=logged.model_id,
            run_id=run_id,
        )
    return str(info.model_uri)


IMPORTS_EXPERIMENT = "msdn-published-checkpoints"
"""The experiment that holds one run per imported published checkpoint."""


def register_imported(
    uri: str,
    *,
    model: torch.nn.Module,
    dataset: str,
    alias: str,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
) -> dict[str, Any]:
    """Record a model that was not trained here (a published checkpoint) and register it.

    One run in :data:`IMPORTS_EXPERIMENT` holds its settings, the metrics it was scored with
    (if any) and the logged model; the model becomes a new version of ``msdn-<dataset>``
    (tags: ``tags`` plus the metrics) and ``alias`` moves to it. The champion alias is not
    touched: a study's champion is chosen by its own rule. Returns ``{"name", "version",
    "alias", "model_uri", "run_id", "experiment_id"}``.
    """
    name = registered_model_name(dataset)
    experiment_id = ensure_experiment(uri, IMPORTS_EXPERIMENT)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version_tags = {**{k: truncate(str(v), MAX_TAG_VALUE) for k, v in tags.items()},
                    **{k: repr(float(v)) for k, v in metrics.items()}}
    try:
        with quick_http(timeout_s=60.0), _scoped_mlflow_uris(uri):
            run = client.create_run(experiment_id, run_name=run_name,
                                    tags={"msdn_tune.kind": "import", **version_tags})
            run_id = run.info.run_id
            now = int(time.time() * 1000)
            client.log_batch(
                run_id,
                params=[Param(k, v) for k, v in flatten_params(params).items()],
                metrics=[Metric(k, float(x), now, 0) for k, x in metrics.items()
                         if math.isfinite(float(x))])
            model_uri = _log_model(client, model, run_id, {"msdn_tune.kind": "import"})
            version = mlflow.register_model(model_uri, name, tags=version_tags)
            client.set_registered_model_alias(name, alias, version.version)
            client.set_terminated(run_id, "FINISHED")
    except MlflowException as exc:
        raise TrackingError(f"cannot log or register the imported model {name!r} at {uri}: "
                            f"{exc}") from exc
    return {"name": name, "version": str(version.version), "alias": alias,
            "model_uri": f"models:/{name}@{alias}", "run_id": run_id,
            "experiment_id": experiment_id}



def load_model(
    model_uri: str, *, tracking_uri: str | None = None, map_location: str | None = "cpu"
) -> torch.nn.Module:
    """Load a logged model, e.g. ``models:/msdn-cub@champion`` or ``runs:/<run_id>/model``.

    Uses ``tracking_uri`` (default :func:`resolve_tracking_uri`) for the store and registry.
    The model is unpickled (see :func:`log_champion`): load only models your own studies logged.
    ``map_location`` defaults to the CPU so a model trained on a GPU loads anywhere.
    """
    import mlflow.pytorch  # not at the top: it imports torch, off `msdn-tune run`'s start-up path

    uri = tracking_uri or resolve_tracking_uri()
    try:
        with quick_http(timeout_s=60.0), _scoped_mlflow_uris(uri):
            return mlflow.pytorch.load_model(model_uri, map_location=map_location)
    except MlflowException as exc:
        raise TrackingError(f"cannot load model {model_uri!r} from {uri}: {exc}") from exc


def prepare_model_logging() -> None:
    """Do ahead what the first :func:`log_champion` of a process would otherwise wait for.

    Imports ``mlflow.pytorch`` (and with it torch) and builds the map of installed packages that
    ``log_model`` checks a model's requirements against (0.6 s; MLflow caches it for the
    process). A study calls it in a background thread during its last trial, so that the
    champion is logged without that wait when the study ends.
    """
    import mlflow.pytorch  # noqa: F401 - the import is the point; kept off the start-up path

    _init_packages_to_modules_map()
