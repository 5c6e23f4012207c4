"""repair_lost_checkpoints leaves a study folder alone unless Tune's state names a lost checkpoint.

The repair itself is exercised end to end in tests/tune/test_run.py (kill, lose, resume)."""

from __future__ import annotations

import json

from msdn_tune.integrations.ray.experiment import repair_lost_checkpoints


def test_nothing_to_repair_without_a_state_file_or_with_one_it_cannot_read(tmp_path):
    assert repair_lost_checkpoints(tmp_path) == []
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text("{not json")
    assert repair_lost_checkpoints(tmp_path) == []
    (tmp_path / "experiment_state-2026-01-02_00-00-00.json").write_text(
        json.dumps({"trial_data": [["{}", json.dumps({"checkpoint_manager": {"value": "zz"}})]]}))
    assert repair_lost_checkpoints(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "experiment_state-2026-01-01_00-00-00.json", "experiment_state-2026-01-02_00-00-00.json"]


def test_a_lost_checkpoint_without_a_readable_newer_one_is_left_for_tune_to_report(tmp_path):
    trial = tmp_path / "msdn_trial_abc_1"
    (trial / "checkpoint_000003").mkdir(parents=True)
    (trial / "checkpoint_000003" / "checkpoint.pt").write_bytes(b"half-written")
    blob = b"...checkpoint_000002..."
    state = {"trial_data": [[json.dumps({"trial_id": "abc", "relative_logdir": trial.name}),
                             json.dumps({"checkpoint_manager": {"value": blob.hex()}})]]}
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    assert repair_lost_checkpoints(tmp_path) == []
    assert sorted(p.name for p in trial.iterdir()) == ["checkpoint_000003"]
