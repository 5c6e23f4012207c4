"""MsdnOptunaSearch tells Optuna PRUNED for early-stopped and FAIL for diverged trials."""

from __future__ import annotations

from optuna.trial import TrialState

from msdn_tune.integrations.optuna import define_by_run, make_sampler
from msdn_tune.integrations.ray.searcher import MsdnOptunaSearch
from msdn_tune.space import parse_space
from msdn_tune.trials import trial_outcome

DOC = {
    "version": 1, "name": "s", "data": "tiny", "fixed": {"dataset": "synthetic", "epochs": 4},
    "params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    "objective": {"metric": "best/H", "mode": "max"}, "num_samples": 4,
}


def _searcher():
    space = parse_space(DOC)
    return MsdnOptunaSearch(space=define_by_run(space), metric="best/H", mode="max",
                            sampler=make_sampler(space))


def _result(epoch, total=4, h=0.5, **extra):
    return {"best/H": h, "epoch": float(epoch), "epochs_total": float(total),
            "training_iteration": epoch, **extra}


def test_states_follow_the_outcome():
    s = _searcher()
    for tid in ("full", "stopped", "diverged", "crashed"):
        assert s.suggest(tid)["lr"] > 0
    for e in range(1, 5):
        s.on_trial_result("full", _result(e, h=0.1 * e))
    s.on_trial_complete("full", _result(4, h=0.4))
    s.on_trial_result("stopped", _result(1, h=0.05))
    s.on_trial_complete("stopped", _result(1, h=0.05))
    s.on_trial_complete("diverged", _result(1, h=0.0, **{"trial/diverged": 1.0}))
    s.on_trial_complete("crashed", None, error=True)

    states = {t.number: t.state for t in s._ot_study.trials}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.PRUNED, 2: TrialState.FAIL,
                      3: TrialState.FAIL}
    full, stopped = s._ot_study.trials[0], s._ot_study.trials[1]
    assert full.value == 0.4
    assert full.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.30000000000000004, 4: 0.4}
    assert stopped.intermediate_values == {1: 0.05}
    # Only the full run can be the best trial.
    assert s._ot_study.best_trial.number == 0


def test_resumed_trial_rereporting_an_epoch_keeps_the_first_value():
    s = _searcher()
    s.suggest("t")
    s.on_trial_result("t", _result(1, h=0.2))
    s.on_trial_result("t", _result(1, h=0.9))  # after a restore from the epoch-1 checkpoint
    s.on_trial_result("t", _result(2, h=0.3))
    assert s._ot_trials["t"].storage.get_trial(s._ot_trials["t"]._trial_id) \
        .intermediate_values == {1: 0.2, 2: 0.3}


def test_trial_outcome():
    assert trial_outcome(_result(4)) == "completed"
    assert trial_outcome(_result(2)) == "early_stopped"
    assert trial_outcome(_result(1, **{"trial/diverged": 1.0})) == "failed"
    assert trial_outcome(None, error=True) == "failed"
