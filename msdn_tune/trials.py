"""Study results without Ray: trial rows and outcomes, the trials table (parquet), the best trial
or Pareto front, and the study's own metadata file.

The rows come from the study folder's Tune experiment (msdn_tune.integrations.ray.experiment's
`load_trials`) or from an MLflow experiment (warm starts); everything here works on the rows
alone, so it sits below the adapters. Column names equal the Tune config keys (parameters) and
the reported metric names, which are also the MLflow names.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from msdn_tune.errors import MsdnTuneError
from msdn_tune.safeload import load_json, shorten
from msdn_tune.space import StudySpec, parse_space
from msdn_tune.train.config import MAX_SEED

STUDY_FILE = "msdn_study.json"
TRIALS_FILE = "trials.parquet"
CONFIRM_DIR = "confirm"
"""The confirmation stage's own Tune experiment, a folder inside the study folder."""
_METRIC_PREFIXES = ("train/", "val/", "best/", "mean/", "test/", "eval/", "time/")
SEARCH, CONFIRM = "search", "confirm"
"""A trial's stage: proposed by the search, or re-run by the confirmation stage."""


def stage_tags(stage: str, source_trial_id: str | None = None,
               seed: int | None = None) -> dict[str, str]:
    """The MLflow tags that say a trial run's stage (and, for a confirmation run, which search
    trial it re-runs with which seed): the UI filters on them (`tags.msdn_tune.stage`)."""
    tags = {"msdn_tune.stage": stage}
    if stage == CONFIRM:
        tags.update({"msdn_tune.source_trial_id": str(source_trial_id),
                     "msdn_tune.seed": str(seed)})
    return tags


def trial_outcome(result: dict[str, Any] | None, error: bool = False) -> str:
    """completed, early_stopped or failed, from a trial's last result."""
    if error or not result:
        return "failed"
    if result.get("trial/diverged"):
        return "failed"
    epoch = float(result.get("epoch", 0))
    total = float(result.get("epochs_total", math.inf))
    return "completed" if epoch >= total else "early_stopped"


@dataclass
class TrialRow:
    """One trial as the results table shows it."""

    trial_id: str
    status: str  # completed, early_stopped, failed, running, pending
    params: dict[str, Any]
    metrics: dict[str, float]
    epochs_run: int
    epochs_total: int
    error: str | None
    checkpoint: str | None
    mlflow_run_id: str | None
    stage: str = SEARCH
    """`search`, or `confirm` for a re-run of a search trial's configuration with a fresh seed."""
    source_trial_id: str | None = None
    """The search trial a confirmation trial re-runs (None for a search trial)."""
    seed: int | None = None
    """A confirmation trial's training seed (search trials train with the study's own)."""

    def as_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"trial_id": self.trial_id, "status": self.status,
                               "stage": self.stage,
                               "epochs_run": self.epochs_run, "epochs_total": self.epochs_total}
        if self.stage == CONFIRM:
            rec.update({"source_trial_id": self.source_trial_id, "seed": self.seed})
        rec.update(self.params)
        rec.update(self.metrics)
        rec.update({"error": self.error, "checkpoint": self.checkpoint,
                    "mlflow_run_id": self.mlflow_run_id})
        return rec


NAME_MAX = 255
"""Longest study name, and longest name in any path we are given (bytes, the Linux limit)."""

#: The keys of the study metadata file (msdn_study.json) that we read, and their JSON types.
META_TYPES: dict[str, type] = {
    "name": str, "space_file": str, "space": dict, "data_path": str, "tracking_uri": str,
    "experiment_id": str, "parent_run_id": str, "created": str, "command": str,
    "complete": bool, "wall_s": float, "storage_path": str, "options": dict,
    "tracking_complete": bool, "champion": dict, "confirm": dict,
}
_JSON_NAMES = {str: "a string", dict: "an object", bool: "true or false", float: "a number"}


def check_path_text(value: str, what: str) -> None:
    """Refuse a path option the file system cannot even look up, in one line: empty, a NUL,
    a name over :data:`NAME_MAX` bytes (``OSError: File name too long`` otherwise)."""
    if not value:
        raise MsdnTuneError(f"{what}: empty")
    if "\x00" in value:
        raise MsdnTuneError(f"{what} {shorten(value)}: holds a NUL character")
    if any(len(part) > NAME_MAX for part in os.fsencode(value).split(b"/")):
        raise MsdnTuneError(f"{what} {shorten(value)}: a name in it is longer than {NAME_MAX} "
                            "bytes")


def _is_study(p: Path) -> bool:
    try:
        return p.is_dir() and ((p / STUDY_FILE).is_file()
                               or any(p.glob("experiment_state-*.json")))
    except OSError:  # unreadable, or vanished while we looked
        return False


def study_dir(study: str | Path, storage_path: str | Path | None = None,
              what: str = "study") -> Path:
    """Resolve a study given as a folder, or as a name under the storage path.

    Anything else is one :class:`MsdnTuneError` line: a file, a missing folder, a name with a
    path separator or over :data:`NAME_MAX` bytes, a storage path that is a file.
    """
    text = str(study)
    check_path_text(text, what)
    p = Path(text)
    if _is_study(p):
        return p.resolve()
    if p.is_file():
        raise MsdnTuneError(f"{what} {shorten(text)}: a file, not a study folder")
    if storage_path is not None:
        root = str(storage_path)
        check_path_text(root, "--storage-path")
        if Path(root).exists() and not Path(root).is_dir():
            raise MsdnTuneError(f"--storage-path {shorten(root)}: a file, not a folder")
        if "/" not in text and text not in (".", ".."):
            q = Path(root) / text
            if _is_study(q) and (q / STUDY_FILE).is_file():
                return q.resolve()
    where = "" if storage_path is None else f" or under {shorten(str(storage_path))}"
    raise MsdnTuneError(f"{what} {shorten(text)}: not a study folder (no {STUDY_FILE} or Ray "
                        f"experiment state there{where})")


def read_study_meta(path: Path) -> dict[str, Any]:
    """The study's own metadata written by `msdn-tune run` (space, tracking ids, data).

    Read through msdn_tune.safeload (bounded, one line when it is not JSON), and checked: a JSON
    object whose keys that we use have the types `msdn-tune run` writes (:data:`META_TYPES`), so
    a hand-edited or truncated file is one error naming the file and key, not a KeyError later.
    """
    f = path / STUDY_FILE
    if not f.exists():
        return {}
    meta = load_json(f, error=MsdnTuneError, what="study metadata file")
    if not isinstance(meta, dict):
        raise MsdnTuneError(f"{f}: corrupt study metadata (a JSON object expected, not a "
                            f"{type(meta).__name__})")
    for key, kind in META_TYPES.items():
        value = meta.get(key)
        if value is None:
            continue
        ok = _finite_number(value) if kind is float else isinstance(value, kind)
        if not ok:
            raise MsdnTuneError(f"{f}: corrupt study metadata: {key!r} is {shorten(value)}, "
                                f"expected {_JSON_NAMES[kind]}")
    return meta


def write_study_meta(exp_dir: Path, meta: dict[str, Any]) -> None:
    """Replace the study's metadata file whole (written beside, then renamed into place), so a
    kill never leaves half of it."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    tmp = exp_dir / (STUDY_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    tmp.replace(exp_dir / STUDY_FILE)


def study_space(study: str | Path, storage_path: str | Path | None = None
                ) -> tuple[Path, StudySpec]:
    """A study's folder and the search space it ran with (from its msdn-tune metadata)."""
    path = study_dir(study, storage_path)
    meta = read_study_meta(path)
    if "space" not in meta:
        raise MsdnTuneError(f"{path}: no msdn-tune study metadata (was it made by msdn-tune run?)")
    return path, parse_space(meta["space"], source=str(path))


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The metrics a trials row keeps from a reported result: numeric values under our metric
    prefixes (train/, val/, best/, test/, eval/, time/), not ids, flags or counters."""
    return {k: float(v) for k, v in result.items()
            if k.startswith(_METRIC_PREFIXES) and isinstance(v, int | float)
            and not isinstance(v, bool)}


def trials_table(rows: list[TrialRow]) -> pa.Table:
    """One row per trial; parameters and metrics as columns."""
    records = [r.as_record() for r in rows]
    keys: list[str] = []
    for rec in records:
        keys.extend(k for k in rec if k not in keys)
    return pa.Table.from_pylist([{k: rec.get(k) for k in keys} for rec in records])


def check_parquet_out(out: str | Path, what: str = "--parquet") -> None:
    """Refuse a table destination that cannot be written, or would replace what is not a table.

    A folder, a name the file system cannot hold, a parent that is a file, or an existing file
    that is not a parquet file (its first bytes are not ``PAR1``: a user's file is never
    overwritten) is one :class:`MsdnTuneError` line.
    """
    text = str(out)
    check_path_text(text, what)
    p = Path(text)
    if p.is_dir():
        raise MsdnTuneError(f"{what} {shorten(text)}: a folder; give a file name such as "
                            "trials.parquet")
    if p.exists():
        try:
            with open(p, "rb") as f:
                head = f.read(4)
        except OSError as exc:
            raise MsdnTuneError(f"{what} {shorten(text)}: cannot read ({exc.strerror})") from None
        if head != b"PAR1":
            raise MsdnTuneError(f"{what} {shorten(text)}: exists and is not a parquet file; "
                                "not overwriting it")
    parent = p.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MsdnTuneError(f"{what} {shorten(text)}: {shorten(str(parent))} is not a folder")


def write_parquet(rows: list[TrialRow], out: str | Path) -> Path:
    """Write the trials table with pyarrow (atomically); :class:`MsdnTuneError` when the file
    system refuses it (read-only, full, a pseudo filesystem)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(trials_table(rows), tmp)
        tmp.replace(out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise MsdnTuneError(f"{shorten(str(out))}: cannot write the trials table "
                            f"({shorten(str(exc), 160)})") from None
    return out


def best_trials(rows: list[TrialRow], objectives: list[tuple[str, str]]) -> list[TrialRow]:
    """Best completed trial (single objective) or the Pareto front (several).

    Only search trials that ran to the end count: an early-stopped trial's value is a
    low-fidelity estimate and would make the comparison meaningless (confirmation trials are
    ranked by :func:`confirmed_ranking`).
    """
    done = [r for r in rows if r.status == "completed" and r.stage == SEARCH
            and all(_finite(r.metrics.get(m)) for m, _ in objectives)]
    if not done:
        return []

    def signed(r: TrialRow, m: str, mode: str) -> float:
        v = r.metrics[m]
        return v if mode == "max" else -v

    if len(objectives) == 1:
        m, mode = objectives[0]
        return [max(done, key=lambda r: signed(r, m, mode))]
    front = []
    for r in done:
        dominated = any(
            all(signed(o, m, md) >= signed(r, m, md) for m, md in objectives)
            and any(signed(o, m, md) > signed(r, m, md) for m, md in objectives)
            for o in done)
        if not dominated:
            front.append(r)
    return front


def _finite_number(value: object) -> bool:
    """A JSON number that is finite as a float (a 400-digit integer is not: OverflowError)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


@dataclass
class Confirmed:
    """One search configuration as the confirmation stage measured it: its fresh-seed runs."""

    source: TrialRow
    """The search trial whose configuration was re-run."""
    runs: list[TrialRow]
    """Its completed confirmation trials, one per seed."""
    metric: str
    mean: float
    sd: float
    """Sample standard deviation over the seeds (0.0 with one seed)."""

    @property
    def n(self) -> int:
        return len(self.runs)

    def best_run(self, mode: str) -> TrialRow:
        """The seed whose model is kept (the configuration itself is chosen by the mean)."""
        return (max if mode == "max" else min)(self.runs, key=lambda r: r.metrics[self.metric])


def top_configurations(rows: list[TrialRow], metric: str, mode: str, k: int) -> list[TrialRow]:
    """The `k` best completed search trials by `metric`, best first, one per distinct
    configuration: what a confirmation stage re-runs. Only completed trials compete, as in
    :func:`best_trials`."""
    done = [r for r in rows if r.status == "completed" and r.stage == SEARCH
            and _finite(r.metrics.get(metric))]
    done.sort(key=lambda r: r.metrics[metric], reverse=mode == "max")
    top: dict[str, TrialRow] = {}  # a configuration the sampler proposed twice is re-run once
    for r in done:
        top.setdefault(json.dumps(r.params, sort_keys=True, default=str), r)
    return list(top.values())[:k]


def confirmed_ranking(rows: list[TrialRow], metric: str, mode: str) -> list[Confirmed]:
    """The confirmed configurations, best mean first.

    The mean is over the fresh-seed runs only. The search trial's own score is left out: it was
    selected for being high, so it is biased upwards by the seed's luck (the very bias that the
    confirmation stage exists to remove). A configuration none of whose runs completed is left
    out; one with fewer completed runs than seeds is ranked on those it has (`n` says how many).
    """
    by_id = {r.trial_id: r for r in rows if r.stage == SEARCH}
    runs: dict[str, list[TrialRow]] = {}
    for r in rows:
        if (r.stage == CONFIRM and r.status == "completed" and r.source_trial_id in by_id
                and _finite(r.metrics.get(metric))):
            runs.setdefault(str(r.source_trial_id), []).append(r)
    out = []
    for source_id, group in runs.items():
        values = [r.metrics[metric] for r in group]
        mean = sum(values) / len(values)
        sd = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
              if len(values) > 1 else 0.0)
        out.append(Confirmed(by_id[source_id], sorted(group, key=lambda r: r.seed or 0), metric,
                             mean, sd))
    out.sort(key=lambda c: c.mean, reverse=mode == "max")
    return out


def recommendation(rows: list[TrialRow], objectives: list[tuple[str, str]]
                   ) -> tuple[list[TrialRow], list[Confirmed]]:
    """What a study recommends: (best rows, confirmed ranking).

    With confirmation results (single objective), the configuration with the best mean over its
    fresh seeds wins, and its best seed's run is the row returned (its model is the one kept);
    otherwise the best completed search trial, or the Pareto front.
    """
    if len(objectives) == 1 and any(r.stage == CONFIRM for r in rows):
        metric, mode = objectives[0]
        ranked = confirmed_ranking(rows, metric, mode)
        if ranked:
            return [ranked[0].best_run(mode)], ranked
    return best_trials(rows, objectives), []


def confirm_seeds(study_seed: int, n: int) -> list[int]:
    """The fresh seeds of a confirmation stage: the study's training seed + 1, ..., + n (in the
    seed range), never the seed the search trials trained with."""
    return [(study_seed + i) % (MAX_SEED + 1) for i in range(1, n + 1)]
