"""repair_lost_checkpoints: it fills a checkpoint Tune's state names but a killed driver left
deleted from the newest readable newer one, and leaves a study folder alone otherwise.

The repair is built here deterministically from real trainer checkpoints; the kill/resume test
in tests/commands/test_study_run.py runs it end to end through `msdn-tune run --resume`."""

from __future__ import annotations

import json
import pickle

from msdn_tune.data.resolve import open_benchmark
from msdn_tune.integrations.ray.experiment import PLACEHOLDER_NOTE, repair_lost_checkpoints
from msdn_tune.integrations.ray.trainable import STATE_FILE, TRIAL_FILE
from msdn_tune.train.config import TrainConfig
from msdn_tune.train.trainer import Trainer, load_checkpoint


def _state(exp, trial_dir, *recorded: str) -> None:
    """A Tune experiment state naming `recorded` as the trial's kept checkpoints, the last one
    latest (in the hex of its pickled checkpoint manager, as Tune writes it)."""
    manager = pickle.dumps({"kept": [str(trial_dir / r) for r in recorded],
                            "latest_checkpoint": str(trial_dir / recorded[-1])})
    config = {"trial_id": "abc", "status": "RUNNING", "relative_logdir": trial_dir.name}
    state = {"trial_data": [[json.dumps(config),
                             json.dumps({"checkpoint_manager": {"value": manager.hex()}})]]}
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))


def test_a_lost_checkpoint_is_refilled_from_the_newest_readable_newer_one(tmp_path):
    """The state names checkpoint_000001 (epoch 2), which Tune deleted for num_to_keep; the trial
    wrote checkpoint_000002 (epoch 3) and was killed writing checkpoint_000003. The trial then
    restores from epoch 3's state under the recorded name. The state also counts
    checkpoint_000000 as kept: it gets an empty placeholder, so that Tune's deleting it again
    when the trial's next checkpoint arrives is not an error with a traceback."""
    cfg = TrainConfig.from_dict(dict(dataset="synthetic", epochs=6, lr=1e-3, device="cpu",
                                     threads=1, seed=3))
    bench = open_benchmark("tiny")
    trainer = Trainer(cfg, bench)
    trial = tmp_path / "msdn_trial_abc_00000"
    for index in range(3):  # Tune's checkpoint_00000k holds epoch k + 1
        trainer.run_epoch()
        ckpt = trial / f"checkpoint_{index:06d}"
        trainer.save(ckpt / STATE_FILE)
        (ckpt / TRIAL_FILE).write_text(json.dumps({"trial_id": "abc", "epoch": trainer.epoch}))
    for lost in (trial / "checkpoint_000000", trial / "checkpoint_000001"):  # num_to_keep
        for f in lost.iterdir():
            f.unlink()
        lost.rmdir()
    half = trial / "checkpoint_000003"
    half.mkdir()
    (half / STATE_FILE).write_bytes(b"half-written")
    _state(tmp_path, trial, "checkpoint_000000", "checkpoint_000001")

    lines = repair_lost_checkpoints(tmp_path)

    assert lines == ["trial abc: its last recorded checkpoint (checkpoint_000001) was deleted "
                     "before the killed driver recorded a newer one; continuing from "
                     "checkpoint_000002 (epoch 3)"]
    restored = Trainer(cfg, bench)
    restored.load_state_dict(load_checkpoint(trial / "checkpoint_000001" / STATE_FILE))
    assert restored.epoch == 3
    assert json.loads((trial / "checkpoint_000001" / TRIAL_FILE).read_text())["epoch"] == 3
    assert sorted(p.name for p in trial.iterdir()) == [
        "checkpoint_000000", "checkpoint_000001", "checkpoint_000002", "checkpoint_000003"]
    assert [p.name for p in (trial / "checkpoint_000000").iterdir()] == [PLACEHOLDER_NOTE]
    assert repair_lost_checkpoints(tmp_path) == []  # repaired once: nothing left to do
    assert [p.name for p in (trial / "checkpoint_000000").iterdir()] == [PLACEHOLDER_NOTE]


def test_older_kept_checkpoints_a_kill_left_deleted_get_placeholders_for_tune_to_delete(
        tmp_path):
    """The latest recorded checkpoint survived but the two before it did not: nothing to
    continue from differently (no line), only placeholders; checkpoints that exist are untouched."""
    trial = tmp_path / "msdn_trial_abc_00000"
    (trial / "checkpoint_000004").mkdir(parents=True)
    (trial / "checkpoint_000004" / STATE_FILE).write_bytes(b"kept as is")
    _state(tmp_path, trial, "checkpoint_000002", "checkpoint_000003", "checkpoint_000004")

    assert repair_lost_checkpoints(tmp_path) == []

    for name in ("checkpoint_000002", "checkpoint_000003"):
        [note] = (trial / name).iterdir()
        assert note.name == PLACEHOLDER_NOTE
        assert note.read_text().startswith(f"{name} was deleted before a killed driver")
    assert (trial / "checkpoint_000004" / STATE_FILE).read_bytes() == b"kept as is"


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


def test_trial_results_are_read_from_each_trials_result_json_in_order(tmp_path):
    from msdn_tune.integrations.ray.experiment import trial_results

    folder = tmp_path / "msdn_trial_4f2a1_00003_3_lr=0.0012_2026-12-03_10-00-00"
    folder.mkdir()
    lines = [json.dumps({"trial_id": "4f2a1_00003", "epoch": e, "val/H": e / 10})
             for e in (1, 2)]
    (folder / "result.json").write_text("\n".join(lines) + '\n{"trial_id": "4f2a1_000')  # cut
    (tmp_path / "not-a-trial").mkdir()

    found = trial_results(tmp_path)

    assert list(found) == ["4f2a1_00003"]
    assert found["4f2a1_00003"].name == "msdn_trial_4f2a1_00003"
    assert [r["epoch"] for r in found["4f2a1_00003"].results] == [1, 2]
