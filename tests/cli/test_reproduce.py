"""`msdn-tune reproduce` prints what `msdn-tune train` prints (MLflow replaced by a fixture)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from msdn_tune.cli import main
from msdn_tune.commands import reproduce as reproduce_module
from msdn_tune.train.config import TrainConfig


@pytest.fixture
def logged(monkeypatch):
    """A trial run as `logged_trial` reads it back, without a tracking store."""
    trial = reproduce_module.LoggedTrial(
        run_id="0123456789abcdef", tracking_uri="sqlite:///nowhere.db",
        config=TrainConfig.from_dict({"dataset": "synthetic", "epochs": 1, "threads": 1}),
        data="tiny", study="s", trial_id="t1", metrics={})
    monkeypatch.setattr(reproduce_module, "logged_trial", lambda run_id, uri=None: trial)
    return trial


def test_reproduce_prints_the_training_summary(logged, tmp_path):
    out = tmp_path / "again"
    res = CliRunner().invoke(main, ["reproduce", logged.run_id, "--out", str(out)],
                             env={"COLUMNS": "300"})  # no line wrapped inside a path
    assert res.exit_code == 0, res.output
    text = res.output
    assert text.startswith("reproducing trial t1 of study s (MLflow run 0123456789abcdef) on tiny")
    assert "synthetic:tiny · official selection" in text
    assert "final metrics" in text and f"checkpoint: {(out / 'checkpoint.pt').resolve()}" in text
    assert f"evaluate:   msdn-tune evaluate {out / 'checkpoint.pt'} --data tiny" in text
    assert (out / "final.json").exists() and (out / "reproduced_from.json").exists()
