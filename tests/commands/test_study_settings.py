"""Study set-up without a Ray instance: a resume whose settings differ from the study's own is
refused before anything starts, and importing the use case neither pulls in the heavy libraries
nor changes the environment."""

from __future__ import annotations

import json
import os

import pytest

from msdn_tune.commands.study import run_study
from msdn_tune.errors import MsdnTuneError
from msdn_tune.space import parse_space
from msdn_tune.trials import STUDY_FILE
from tests.helpers.study import small_doc


def test_resume_with_another_num_samples_is_refused(tmp_path):
    space = parse_space(small_doc(tmp_path))
    exp = tmp_path / "results" / "s"
    exp.mkdir(parents=True)
    (exp / STUDY_FILE).write_text(json.dumps({"space": {**space.to_dict(), "num_samples": 2}}))
    with pytest.raises(MsdnTuneError, match=r"num_samples: 2 -> 4.*--warm-start s"):
        run_study(space, resume=True, tracking=False)


def test_resume_with_changed_trial_settings_is_refused_naming_each_change(tmp_path):
    """Ray's restore would ignore a new concurrency and rebuild trials with new fixed settings:
    both are refused, every changed key named, nothing written."""
    first = parse_space(small_doc(tmp_path))
    exp = tmp_path / "results" / "s"
    exp.mkdir(parents=True)
    stored = json.dumps({"space": first.to_dict()})
    (exp / STUDY_FILE).write_text(stored)
    changed = parse_space(small_doc(
        tmp_path, fixed={"dataset": "synthetic", "epochs": 6, "margin": 0.5},
        max_concurrent_trials=3,
        params={"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}))
    with pytest.raises(MsdnTuneError) as err:
        run_study(changed, resume=True, tracking=False)
    text = str(err.value)
    assert "fixed.margin: (not set) -> 0.5" in text
    assert "max_concurrent_trials: 1 -> 3" in text
    assert "params.lr.high: 0.01 -> 0.1" in text
    assert "num_samples" not in text and "fixed.epochs" not in text  # unchanged: not listed
    assert (exp / STUDY_FILE).read_text() == stored and sorted(p.name for p in exp.iterdir()) == [
        STUDY_FILE]


def test_next_steps_name_the_configured_storage_and_never_offer_a_resume_that_extends(tmp_path):
    from rich.console import Console

    from msdn_tune.cli.display import print_next_steps

    console = Console(record=True, width=300)
    mirror = tmp_path / "mirror" / "s"
    for complete in (False, True):
        print_next_steps(console, path=mirror, space_file="s.yaml", name="s", complete=complete,
                         best=None, data="tiny", fixed={}, tracking_uri=None,
                         storage="s3://bucket/studies")
    text = console.export_text()
    assert "--storage-path s3://bucket/studies --resume" in text
    assert str(tmp_path / "mirror") + " --resume" not in text
    assert "--resume --num-samples" not in text and f"--warm-start {mirror}" in text


def test_importing_the_study_driver_leaves_ray_tune_and_torch_for_later():
    """`msdn-tune run` starts Ray first and imports Ray Tune, Optuna and MLflow while Ray comes up
    (seconds each): importing the driver module, or resolving a store, must not pull them in."""
    import subprocess
    import sys

    code = ("import sys; import msdn_tune.cli, msdn_tune.commands.study, msdn_tune.data.resolve; "
            "heavy = [m for m in ('ray.tune', 'torch', 'mlflow', 'optuna') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_importing_the_study_driver_leaves_the_environment_alone_until_a_study_starts(
        tmp_path, monkeypatch):
    """Ray's defaults for a study (msdn_tune._startup.RAY_ENV_DEFAULTS) are set by run_study, not
    by importing it; what the environment already says wins."""
    import subprocess
    import sys

    from msdn_tune import _startup

    code = ("import os, ray; before = dict(os.environ); import msdn_tune.commands.study; "
            "print(sorted(set(os.environ.items()) ^ set(before.items())))")
    env = {k: v for k, v in os.environ.items() if k not in dict(_startup.RAY_ENV_DEFAULTS)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.strip() == "[]", out.stdout

    for key, _ in _startup.RAY_ENV_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_CHDIR_TO_TRIAL_DIR", "1")
    space = parse_space(small_doc(tmp_path))
    exp = tmp_path / "results" / "s"
    exp.mkdir(parents=True)
    (exp / STUDY_FILE).write_text(json.dumps({"space": {**space.to_dict(), "num_samples": 2}}))
    with pytest.raises(MsdnTuneError):  # refused before Ray starts: only the defaults are set
        run_study(space, resume=True, tracking=False)
    assert os.environ["RAY_CHDIR_TO_TRIAL_DIR"] == "1"
    assert all(os.environ[k] == v for k, v in _startup.RAY_ENV_DEFAULTS
               if k != "RAY_CHDIR_TO_TRIAL_DIR")
