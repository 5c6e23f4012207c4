"""Repairing what a killed driver can leave inconsistent in a study folder, before a resume.

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
follow, comes from the checkpoint's contents). It reads Tune's state file without unpickling
anything; if that file's layout is not what it expects, it changes nothing.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

_CKPT = re.compile(rb"checkpoint_(\d{6})")


def repair_lost_checkpoints(exp_dir: Path) -> list[str]:
    """Restore missing latest checkpoints from newer ones; one line per repaired trial."""
    states = sorted(exp_dir.glob("experiment_state-*.json"))  # Tune restores the newest name
    if not states:
        return []
    try:
        trials = json.loads(states[-1].read_text())["trial_data"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    done = []
    for config_json, meta_json in trials:
        try:
            config, meta = json.loads(config_json), json.loads(meta_json)
            blob = bytes.fromhex(meta["checkpoint_manager"]["value"])
            trial_dir = exp_dir / config["relative_logdir"]
        except (ValueError, KeyError, TypeError):
            continue
        named = [int(m) for m in _CKPT.findall(blob)]
        if not named or not trial_dir.is_dir():
            continue
        latest = trial_dir / f"checkpoint_{max(named):06d}"
        if latest.exists():
            continue
        line = _fill_from_newer(str(config.get("trial_id", trial_dir.name)), trial_dir, latest,
                                max(named))
        if line:
            done.append(line)
    return done


def _fill_from_newer(trial_id: str, trial_dir: Path, missing: Path, index: int) -> str | None:
    from msdn_tune.errors import DataError
    from msdn_tune.train.trainer import load_checkpoint
    from msdn_tune.tune.trainable import STATE_FILE, TRIAL_FILE

    newer = sorted((p for p in trial_dir.glob("checkpoint_*")
                    if p.name[11:].isdigit() and int(p.name[11:]) > index), reverse=True)
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
                trial_dir, missing.name)
    return None
