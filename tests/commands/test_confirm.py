"""The confirmation stage end to end: the real `msdn-tune run` CLI through real Ray, Optuna and
MLflow (SQLite), killed in the middle of confirmation and resumed with `--resume` alone."""

from __future__ import annotations

import json
import os
import signal
import statistics

import pyarrow.parquet as pq
import pytest

from tests.helpers.study import _run, _space, driver, wait_for_checkpoints

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory, ray_address):
    """3 search trials, then the best 2 re-run with 2 fresh seeds each; the driver is SIGKILLed
    once confirmation trials have checkpointed, and the study is resumed to its end."""
    tmp = tmp_path_factory.mktemp("confirm")
    space = _space(tmp, "conf", num_samples=3, scheduler={"type": "none"},
                   fixed={"dataset": "synthetic", "epochs": 6, "device": "cpu"})
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    exp = tmp / "results" / "conf"
    args = ["run", "--space", str(space), "--address", ray_address, "--tracking-uri", uri,
            "--confirm-top", "2", "--confirm-seeds", "2"]  # the file has no confirm section
    with driver(args, cwd=tmp) as proc:
        wait_for_checkpoints(proc, exp / "confirm", 2)
        os.killpg(proc.pid, signal.SIGKILL)
    killed_meta = json.loads((exp / "msdn_study.json").read_text())
    res = _run(["run", "--space", str(space), "--resume"], cwd=tmp, timeout=900)
    return tmp, exp, uri, res, killed_meta


def test_killed_mid_confirmation_resumes_into_it(confirmed):
    _, exp, _, res, killed_meta = confirmed
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # the kill came after the configurations and seeds were fixed in the study record
    assert len(killed_meta["confirm"]["configs"]) == 4
    assert "search complete; resuming its confirmation stage" in res.stdout
    assert "resuming with the study's own" in res.stdout and "confirm=" in res.stdout
    meta = json.loads((exp / "msdn_study.json").read_text())
    assert meta["complete"] is True
    assert meta["confirm"] == killed_meta["confirm"]  # the same configurations and seeds


def test_rows_carry_stage_seed_and_source(confirmed):
    _, exp, _, _, killed_meta = confirmed
    rows = pq.read_table(exp / "trials.parquet").to_pylist()
    search = [r for r in rows if r["stage"] == "search"]
    confirm = [r for r in rows if r["stage"] == "confirm"]
    assert len(search) == 3 and len(confirm) == 4
    assert all(r["status"] == "completed" for r in rows), [r["status"] for r in rows]
    # the two best search trials, each with both fresh seeds, once
    top2 = sorted(search, key=lambda r: r["best/H"], reverse=True)[:2]
    assert sorted((r["source_trial_id"], r["seed"]) for r in confirm) == sorted(
        (t["trial_id"], s) for t in top2 for s in killed_meta["confirm"]["seeds"])
    assert 0 not in {r["seed"] for r in confirm}  # fresh: the search trained with seed 0
    for r in confirm:  # a confirmation trial trains its source's configuration
        source = next(t for t in search if t["trial_id"] == r["source_trial_id"])
        assert r["lr"] == source["lr"]


def _means(exp):
    rows = pq.read_table(exp / "trials.parquet").to_pylist()
    by_source: dict[str, list[float]] = {}
    for r in rows:
        if r["stage"] == "confirm":
            by_source.setdefault(r["source_trial_id"], []).append(r["best/H"])
    return {k: statistics.mean(v) for k, v in by_source.items()}, rows


def test_runs_one_per_trial_tagged_with_their_stage(confirmed):
    from mlflow.tracking import MlflowClient

    _, exp, uri, _, _ = confirmed
    client = MlflowClient(uri)
    e = client.get_experiment_by_name("conf")
    runs = client.search_runs([e.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 7
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    stages = [r.data.tags.get("msdn_tune.stage") for r in children]
    assert stages.count("confirm") == 4 and stages.count("search") == 3
    for r in children:
        if r.data.tags["msdn_tune.stage"] == "confirm":
            assert r.data.params["seed"] == r.data.tags["msdn_tune.seed"]
    means, _ = _means(exp)
    winner = max(means, key=means.get)
    parent = parents[0]
    assert parent.data.tags["msdn_tune.recommended_trial_id"] == winner
    assert parent.data.metrics["confirm/best/H/mean"] == pytest.approx(means[winner])
    assert parent.data.metrics["confirm/seeds"] == 2


def test_champion_is_chosen_by_the_mean_over_seeds(confirmed):
    from mlflow.tracking import MlflowClient

    _, exp, uri, _, _ = confirmed
    means, rows = _means(exp)
    winner = max(means, key=means.get)
    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version_by_alias("msdn-synthetic", "champion")
    tags = version.tags
    assert tags["source_trial_id"] == winner
    assert float(tags["value"]) == pytest.approx(means[winner])
    assert tags["seeds"] == "2"
    # its model is the winning configuration's best seed
    runs = [r for r in rows if r["stage"] == "confirm" and r["source_trial_id"] == winner]
    best_seed = max(runs, key=lambda r: r["best/H"])
    assert tags["trial_id"] == best_seed["trial_id"]
    assert float(tags["seed_value"]) == pytest.approx(best_seed["best/H"])


def test_best_prints_mean_sd_and_seeds(confirmed):
    tmp, exp, _, _, _ = confirmed
    means, _ = _means(exp)
    winner = max(means, key=means.get)
    res = _run(["best", str(exp)], cwd=tmp, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"recommended: the configuration of search trial {winner}" in res.stdout
    assert f"best/H {100 * means[winner]:.2f} ± " in res.stdout
    assert "mean ± SD over 2 fresh seeds" in res.stdout


def test_a_warm_start_from_its_experiment_takes_the_search_trials_only(confirmed):
    """Confirmation runs re-ran configurations the sampler is given already."""
    from msdn_tune.commands.study import _warm_start_rows
    from msdn_tune.integrations.mlflow import trial_rows_from_experiment

    tmp, _, uri, _, _ = confirmed
    rows = trial_rows_from_experiment(uri, "conf")
    assert sorted(r.stage for r in rows) == ["confirm"] * 4 + ["search"] * 3
    assert {r.seed for r in rows if r.stage == "confirm"} == {1, 2}
    warm = _warm_start_rows("conf", tmp / "nowhere", uri)  # not on disk: from MLflow
    assert len(warm) == 3 and {r.stage for r in warm} == {"search"}
