"""Reading Tune's experiment folder: its trials as results rows, its raw experiment state, and
repairing what a killed driver can leave inconsistent in it before a resume.

`load_trials` reads the study folder itself (Ray's `ExperimentAnalysis`), so results work after
the fact, for interrupted studies and without a running Ray; the rows it returns are
msdn_tune.trials' `TrialRow`s, which the rest of msdn-tune handles without Ray.

Ray Tune keeps `num_to_keep` checkpoints per trial and deletes older ones as soon as a newer one
is registered, while its experiment state (which names each trial's latest checkpoint) reaches
the study folder only at the next snapshot, copied there asynchronously. Tune forces that
snapshot once a trial has checkpointed `num_to_keep` times since the last one, which is exactly
when the checkpoint the folder's state still names is deleted. A driver killed in between leaves
a state whose trial would restore from a checkpoint that no longer exists: Tune fails it three
times and records it failed, so the resumed study loses a trial. Each trial's own folder still
holds its newer checkpoints, written by the trial itself.

`repair_lost_checkpoints` finds such trials and puts the newest readable newer checkpoint under
the missing name, so the trial continues from there (its epoch counter, which ASHA and MLflow
follow, comes from the checkpoint's contents). The older checkpoints the state still counts as
kept were deleted too; Tune deletes each again when the continued trial's next checkpoints push
it out, and a deletion that fails prints a traceback ("Error handling checkpoint ...
FileNotFoundError") and skips that checkpoint's snapshot. So each of those gets an empty
placeholder folder (with a note saying why) for Tune to delete. It reads Tune's state file
without unpickling anything; if that file's layout is not what it expects, it changes nothing.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msdn_tune.errors import DataError
from msdn_tune.integrations.ray.trainable import (
    CONFIRM_KEY,
    STATE_FILE,
    TRIAL_FILE,
    stage_settings,
)
from msdn_tune.trials import CONFIRM, CONFIRM_DIR, TrialRow, result_metrics, trial_outcome

log = logging.getLogger(__name__)

_CKPT = re.compile(rb"checkpoint_(\d{6})")
# Tune's status of a trial that did not terminate normally, as the results table names it.
_UNFINISHED = {"ERROR": "failed", "RUNNING": "running", "PENDING": "pending", "PAUSED": "running"}


def load_trials(path: Path) -> list[TrialRow]:
    """All trials of the study folder with their derived status ([] before Tune wrote any)."""
    # ray.tune takes seconds to import: kept off the start-up path of `msdn-tune run`
    from ray.tune import ExperimentAnalysis

    if not list(path.glob("experiment_state-*.json")):
        return []
    analysis = ExperimentAnalysis(str(Path(path).resolve()))  # Ray needs an absolute path
    rows = []
    for t in analysis.trials:
        last = dict(t.last_result or {})
        if t.status == "TERMINATED":
            status = trial_outcome(last)
        else:
            status = _UNFINISHED.get(t.status, t.status.lower())
        error = last.get("trial/error")
        if t.status == "ERROR":
            error = _error_text(t) or "trial raised an error"
        ckpt = t.checkpoint.path if t.checkpoint is not None else None
        row = TrialRow(
            trial_id=t.trial_id, status=status,
            params={k: v for k, v in (t.config or {}).items()},
            metrics=result_metrics(last), epochs_run=int(last.get("epoch", 0)),
            epochs_total=int(last.get("epochs_total", 0) or 0), error=error, checkpoint=ckpt,
            mlflow_run_id=last.get("trial/mlflow_run_id"))
        confirm = row.params.get(CONFIRM_KEY)
        if isinstance(confirm, dict):  # a confirmation trial: its settings, seed and source
            row.params, _ = stage_settings(row.params)
            row.stage, row.seed = CONFIRM, int(confirm["seed"])
            row.source_trial_id = str(confirm["source_trial_id"])
        rows.append(row)
    return rows


def load_study_trials(path: Path) -> list[TrialRow]:
    """A study's search trials, then its confirmation trials (when it has that stage)."""
    return load_trials(path) + load_trials(path / CONFIRM_DIR)


@dataclass
class TrialResults:
    """One trial's reported results as Tune's driver wrote them to its folder (result.json)."""

    name: str  # Tune's trial name, as the trial names its MLflow run
    results: list[dict[str, Any]]


def trial_results(exp_dir: Path) -> dict[str, TrialResults]:
    """Each trial's reported results, by trial id, in the order they were reported.

    Read from the JSON lines Tune's JsonLoggerCallback writes on the driver, which a tracking
    server that went away cannot have missed. A line cut short by a kill is skipped.
    """
    out: dict[str, TrialResults] = {}
    for path in sorted(exp_dir.glob("*/result.json")):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                result = json.loads(line)
                trial_id = str(result["trial_id"])
            except (ValueError, KeyError, TypeError):
                continue
            name = path.parent.name
            name = name[:name.index(trial_id) + len(trial_id)] if trial_id in name else name
            out.setdefault(trial_id, TrialResults(name, [])).results.append(result)
    return out


def _error_text(trial: Any) -> str | None:
    """The last line of a failed trial's error file (None when it cannot be read)."""
    try:
        f = trial.error_file
        if f and Path(f).exists():
            lines = [ln for ln in Path(f).read_text().strip().splitlines() if ln.strip()]
            return lines[-1][:500] if lines else None
    except Exception:  # noqa: BLE001 - a missing error file only loses the message
        return None
    return None


def trial_states(exp_dir: Path) -> list[tuple[dict, dict]]:
    """(config, run metadata) of every trial in the study folder's newest Tune experiment state,
    as JSON; [] when there is none or it cannot be read. Tune restores from the newest name."""
    states = sorted(exp_dir.glob("experiment_state-*.json"))
    try:
        return [(json.loads(c), json.loads(m))
                for c, m in json.loads(states[-1].read_text())["trial_data"]]
    except (IndexError, OSError, ValueError, KeyError, TypeError):
        return []


def recorded_checkpoints(exp_dir: Path, config: dict, meta: dict) -> list[Path]:
    """Every checkpoint folder Tune's state counts as kept for `config`'s trial, oldest first,
    found in the hex of its pickled checkpoint manager without unpickling it."""
    try:
        blob = bytes.fromhex(meta["checkpoint_manager"]["value"])
        trial_dir = exp_dir / config["relative_logdir"]
    except (ValueError, KeyError, TypeError):
        return []
    return [trial_dir / f"checkpoint_{i:06d}" for i in sorted({int(m) for m in
                                                                _CKPT.findall(blob)})]


def recorded_checkpoint(exp_dir: Path, config: dict, meta: dict) -> Path | None:
    """The checkpoint folder Tune would restore `config`'s trial from (None: none recorded)."""
    named = recorded_checkpoints(exp_dir, config, meta)
    return named[-1] if named else None


#: The note in a placeholder for a kept checkpoint that a killed driver left deleted.
PLACEHOLDER_NOTE = "LOST_CHECKPOINT.txt"


def repair_lost_checkpoints(exp_dir: Path) -> list[str]:
    """Restore missing latest checkpoints from newer ones (one line per repaired trial), and
    put placeholders where older kept ones are missing, for Tune to delete quietly."""
    done = []
    for config, meta in trial_states(exp_dir):
        named = recorded_checkpoints(exp_dir, config, meta)
        if not named or not named[-1].parent.is_dir():
            continue
        latest = named[-1]
        if not latest.exists():
            line = _fill_from_newer(str(config.get("trial_id", latest.parent.name)), latest)
            if line is None:
                continue  # left for Tune to report: the trial cannot continue anyway
            done.append(line)
        for older in named[:-1]:
            if not older.exists():
                older.mkdir()
                (older / PLACEHOLDER_NOTE).write_text(
                    f"{older.name} was deleted before a killed driver recorded that it was; "
                    "msdn-tune put this placeholder back so that Ray Tune can delete it again "
                    "without an error. It holds no model.\n")
    return done


def _index(checkpoint: Path) -> int | None:
    m = _CKPT.fullmatch(checkpoint.name.encode())
    return int(m.group(1)) if m else None


def _fill_from_newer(trial_id: str, missing: Path) -> str | None:
    # torch takes seconds to import: kept off the start-up path of `msdn-tune run`
    from msdn_tune.train.trainer import load_checkpoint

    index = _index(missing)
    if index is None:
        return None
    newer = sorted((p for p in missing.parent.glob("checkpoint_*")
                    if (_index(p) or -1) > index), key=lambda p: _index(p) or -1, reverse=True)
    for source in newer:  # the newest may be half-written if the kill came mid-copy
        try:
            state = load_checkpoint(source / STATE_FILE)
            json.loads((source / TRIAL_FILE).read_text())
        except (DataError, OSError, ValueError):
            continue
        tmp = missing.with_name(missing.name + ".restoring")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        tmp.rename(missing)
        epoch = state.get("epoch", "?")
        return (f"trial {trial_id}: its last recorded checkpoint ({missing.name}) was deleted "
                f"before the killed driver recorded a newer one; continuing from {source.name} "
                f"(epoch {epoch})")
    log.warning("%s: recorded checkpoint %s is missing and no newer readable one exists",
                missing.parent, missing.name)
    return None
