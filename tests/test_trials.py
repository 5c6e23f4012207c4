"""The rows-only results logic of msdn_tune.trials: the confirmation stage's ranking."""

from __future__ import annotations

import pytest

from msdn_tune.trials import (
    CONFIRM,
    TrialRow,
    confirm_seeds,
    confirmed_ranking,
    recommendation,
    top_configurations,
    trials_table,
)


def _row(trial_id, h, status="completed", stage="search", source=None, seed=None):
    lr = {"lucky": 0.1, "steady": 0.2, "short": 0.3}.get(source or trial_id, 0.4)
    return TrialRow(trial_id=trial_id, status=status, params={"lr": lr}, metrics={"best/H": h},
                    epochs_run=4, epochs_total=4, error=None, checkpoint=None,
                    mlflow_run_id=None, stage=stage, source_trial_id=source, seed=seed)


def _study():
    # "lucky" won the search, but its configuration is worse over fresh seeds than "steady"
    return [_row("lucky", 0.60), _row("steady", 0.55), _row("short", 0.90, "early_stopped"),
            _row("c1", 0.48, stage=CONFIRM, source="lucky", seed=1),
            _row("c2", 0.52, stage=CONFIRM, source="lucky", seed=2),
            _row("c3", 0.56, stage=CONFIRM, source="steady", seed=1),
            _row("c4", 0.54, stage=CONFIRM, source="steady", seed=2),
            _row("c5", 0.99, "failed", stage=CONFIRM, source="steady", seed=3)]


def test_the_best_mean_over_fresh_seeds_wins_not_the_luckiest_search_trial():
    best, ranked = recommendation(_study(), [("best/H", "max")])
    assert [c.source.trial_id for c in ranked] == ["steady", "lucky"]
    top = ranked[0]
    assert top.mean == pytest.approx(0.55) and top.n == 2  # the failed seed is left out
    assert top.sd == pytest.approx(0.0141421356, rel=1e-6)  # sample SD
    assert [r.seed for r in top.runs] == [1, 2]
    assert best == [next(r for r in _study() if r.trial_id == "c3")]  # its best seed's model
    # the search trial's own (selected, so lucky) score is not part of the mean
    assert ranked[1].mean == pytest.approx(0.50)


def test_min_objectives_rank_the_other_way():
    ranked = confirmed_ranking(_study(), "best/H", "min")
    assert ranked[0].source.trial_id == "lucky"
    assert ranked[0].best_run("min").trial_id == "c1"


def test_without_confirmation_results_the_best_completed_search_trial_is_recommended():
    rows = [r for r in _study() if r.stage != CONFIRM]
    best, ranked = recommendation(rows, [("best/H", "max")])
    assert ranked == [] and [r.trial_id for r in best] == ["lucky"]
    # confirmation trials never compete as search trials
    best, _ = recommendation(_study(), [("best/H", "max"), ("best/U", "max")])
    assert {r.stage for r in best} <= {"search"}


def test_only_completed_search_trials_are_confirmed_best_first():
    top = top_configurations(_study(), "best/H", "max", 5)
    assert [r.trial_id for r in top] == ["lucky", "steady"]
    assert [r.trial_id for r in top_configurations(_study(), "best/H", "max", 1)] == ["lucky"]
    # a configuration proposed twice is confirmed once, as its better trial
    twice = [*_study(), _row("again", 0.58)]
    twice[-1].params = dict(twice[0].params)
    assert [r.trial_id for r in top_configurations(twice, "best/H", "max", 5)] == [
        "lucky", "steady"]


def test_fresh_seeds_follow_the_studys_seed_and_stay_in_range():
    assert confirm_seeds(214, 3) == [215, 216, 217]
    assert confirm_seeds(2**32 - 1, 2) == [0, 1]


def test_the_table_has_stage_for_every_row_and_seed_and_source_for_confirmation_rows():
    table = trials_table(_study()).to_pylist()
    assert {r["stage"] for r in table} == {"search", "confirm"}
    c1 = next(r for r in table if r["trial_id"] == "c1")
    assert (c1["source_trial_id"], c1["seed"]) == ("lucky", 1)
    assert next(r for r in table if r["trial_id"] == "lucky")["seed"] is None


def test_a_trials_row_keeps_every_metric_a_study_may_optimise():
    """A study ranks its rows by its objective: a metric the rows dropped would leave `best`
    with no best trial (mean/H was dropped when it was first added)."""
    from msdn_tune.space import OBJECTIVE_METRICS
    from msdn_tune.trials import result_metrics

    reported = {m: 0.5 for m in OBJECTIVE_METRICS} | {"trial_id": "t", "done": False}
    assert set(result_metrics(reported)) == set(OBJECTIVE_METRICS)
