"""The confirmation stage of a study: its best configurations retrained with fresh seeds.

A search's best trial is the maximum over many noisy runs, so it is partly the seed that was
lucky. After a complete search, `run_confirmation` retrains the `confirm.top_k` best completed
configurations with `confirm.seeds` fresh seeds each, as ordinary trials of the study in a second
Tune experiment (`<study>/confirm`), and the recommendation goes by the mean over those seeds
(msdn_tune.trials.recommendation). The study use case (msdn_tune.commands.study) calls it between
the search and the study's end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from msdn_tune.integrations.ray.experiment import load_trials, repair_lost_checkpoints
from msdn_tune.integrations.ray.trainable import TrialStatic, confirm_config
from msdn_tune.integrations.ray.tuner import build_confirm_tuner, can_restore, fit
from msdn_tune.space import StudySpec
from msdn_tune.train.config import TrainConfig
from msdn_tune.trials import (
    CONFIRM,
    CONFIRM_DIR,
    TrialRow,
    confirm_seeds,
    read_study_meta,
    top_configurations,
    write_study_meta,
)


def run_confirmation(space: StudySpec, static: TrialStatic, store: Any, exp_dir: Path, *,
                     resume: bool, console: Console,
                     init_weights: dict[str, Any] | None = None) -> int:
    """Run (or resume) the confirmation stage: the search's best `top_k` completed
    configurations, each retrained with `seeds` fresh seeds as ordinary trials of the study
    (`<study>/confirm`). Returns how many of its trials did not end (0: the stage is done).

    Which configurations and seeds are fixed once, in the study record, before any trial
    starts: a resumed stage re-runs exactly those, whatever the search's table says by then.
    """
    meta = read_study_meta(exp_dir)
    record = meta.get("confirm") or {}
    configs = record.get("configs")
    if not configs:
        store.pull(space.name)
        objective = space.objectives[0]
        top = top_configurations(load_trials(exp_dir), objective.metric, objective.mode,
                                 int(space.confirm["top_k"]))  # type: ignore[index]
        if not top:
            console.print("confirmation stage: no search trial completed, nothing to confirm")
            return 0
        study_seed = TrainConfig.from_dict(dict(space.fixed)).seed
        seeds = confirm_seeds(study_seed, int(space.confirm["seeds"]))  # type: ignore[index]
        configs = [confirm_config(r.trial_id, seed, {k: v for k, v in r.params.items()
                                                     if v is not None})
                   for r in top for seed in seeds]
        record = {"configs": configs, "sources": [r.trial_id for r in top], "seeds": seeds}
        write_study_meta(exp_dir, {**meta, "confirm": record})
        store.push(space.name)
        resume = False
    path = store.ray_path(space.name) + "/" + CONFIRM_DIR
    restore = resume and can_restore(path)
    if restore and store.uri is None:
        for line in repair_lost_checkpoints(exp_dir / CONFIRM_DIR):
            console.print(line, markup=False, soft_wrap=True)
    sources, seeds = record["sources"], record["seeds"]
    console.print(f"confirmation stage: the best {len(sources)} configuration(s) of the search "
                  f"({', '.join(sources)}), each retrained with seeds "
                  f"{', '.join(map(str, seeds))} → {exp_dir / CONFIRM_DIR}", soft_wrap=True)
    tuner = build_confirm_tuner(space, static, exp_dir=exp_dir, configs=configs,
                                resume=restore, init_weights=init_weights,
                                ray_storage=store.ray_storage())
    return max(len(configs) - fit(tuner), 0)


def say_failed_confirmations(rows: list[TrialRow], confirmed: list[Any],
                             console: Console) -> None:
    """A confirmation trial that failed shrinks its configuration's mean to fewer seeds, and
    with none completed there is no confirmed recommendation at all: said, never silent."""
    failed = [r for r in rows if r.stage == CONFIRM and r.status == "failed"]
    if not failed:
        return
    if not confirmed:
        console.print(f"warning: all {len(failed)} confirmation trial(s) failed (see the table); "
                      "the recommendation is the best search trial, unconfirmed",
                      style="yellow", markup=False, soft_wrap=True)
    else:
        console.print(f"warning: {len(failed)} confirmation trial(s) failed "
                      f"({', '.join(r.trial_id for r in failed)}): their configurations' means "
                      "are over the seeds that completed (the `seeds` column)",
                      style="yellow", markup=False, soft_wrap=True)
