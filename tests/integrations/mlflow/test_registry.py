"""The champion model: registered, promoted by the rule, loaded back (mlflow/registry)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from msdn_tune.data.resolve import open_benchmark
from msdn_tune.errors import TrackingError
from msdn_tune.integrations.mlflow.registry import load_model, log_champion
from msdn_tune.integrations.mlflow.runs import StudyTracker, TrialTracker
from msdn_tune.integrations.mlflow.store import ensure_experiment
from msdn_tune.model.msdn import MSDN
from msdn_tune.train.config import TrainConfig
from msdn_tune.train.trainer import build_model


def _tiny_msdn() -> MSDN:
    torch.manual_seed(0)
    return MSDN(torch.rand(6, 5), None, channels=8, vec_dim=4)



def _trial_run(uri, exp_id, i):
    tt = TrialTracker(
        uri, exp_id, "p", trial_id=f"t{i}", trial_name=f"trial_{i}", study="s", params={"i": i}
    )
    tt.finish("completed")
    return tt.run_id


def _champion(uri, exp_id, model, i, dataset, **kw):
    """Log ``model`` as the champion candidate of a new finished trial run ``t<i>``."""
    return log_champion(uri, model=model, dataset=dataset, study="s", trial_id=f"t{i}",
                        run_id=_trial_run(uri, exp_id, i), **{"metric": "val/H", **kw})


def test_champion_alias_logic_and_loading(sqlite_uri):
    exp = ensure_experiment(sqlite_uri, "champions")
    model = _tiny_msdn().eval()

    def champ(i, value, **kw):
        t0 = time.perf_counter()
        res = _champion(sqlite_uri, exp, model, i, "tiny", checkpoint=f"/ckpt/{i}", value=value,
                        **kw)
        return res, time.perf_counter() - t0

    r1, secs = champ(1, 0.50)
    print(f"log_champion took {secs:.2f} s")  # reported: ~0.6 s on the sqlite store
    assert secs < 5
    assert r1["promoted"] and r1["previous"] is None and r1["name"] == "msdn-tiny"
    artifacts = Path(sqlite_uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    assert list(artifacts.glob("**/code/msdn_tune/model/msdn.py"))  # the package travels along
    r2, _ = champ(2, 0.40)
    assert not r2["promoted"] and r2["previous"] == r1["version"]
    r3, _ = champ(3, 0.60)
    assert r3["promoted"] and r3["previous"] == r1["version"] and r3["previous_value"] == 0.5
    r4, _ = champ(4, 0.99, metric="val/zsl_acc")  # a different metric is not comparable
    assert not r4["promoted"]
    r5, _ = champ(5, 0.10, force_promote=True)
    assert r5["promoted"]
    r6, _ = champ(6, 0.05, mode="min")  # better under "min" on the same metric
    assert r6["promoted"] and r6["previous"] == r5["version"]
    r7, _ = champ(7, 0.01, mode="min", extra_tags={"benchmark": "tiny-v2"})  # another benchmark
    assert not r7["promoted"] and r7["previous"] == r6["version"]

    client = MlflowClient(sqlite_uri, registry_uri=sqlite_uri)
    mv = client.get_model_version_by_alias("msdn-tiny", "champion")
    assert str(mv.version) == r6["version"]
    assert mv.tags["trial_id"] == "t6" and mv.tags["checkpoint"] == "/ckpt/6"
    assert mv.tags["metric"] == "val/H" and mv.tags["benchmark"] == "tiny"

    loaded = load_model("models:/msdn-tiny@champion", tracking_uri=sqlite_uri)
    assert isinstance(loaded, MSDN)
    x = torch.rand(3, 8, 7)
    with torch.no_grad():
        a, b = model(x), loaded.eval()(x)
    assert torch.equal(a.z_ava, b.z_ava) and torch.equal(a.z_vaa, b.z_vaa)
    # the fluent globals were restored
    assert mlflow.get_tracking_uri() != sqlite_uri
    with pytest.raises(TrackingError, match="msdn-nope"):
        load_model("models:/msdn-nope@champion", tracking_uri=sqlite_uri)


@pytest.mark.slow  # a real server or Ray head: the fast tier starts none
def test_champion_through_the_server(server):
    exp = ensure_experiment(server, "champions-server")
    model = _tiny_msdn().eval()
    t0 = time.perf_counter()
    res = _champion(server, exp, model, 1, "cub", value=0.5)
    print(f"log_champion via server took {time.perf_counter() - t0:.2f} s")
    assert res["promoted"]
    loaded = load_model("models:/msdn-cub@champion", tracking_uri=server)
    x = torch.rand(2, 8, 7)
    with torch.no_grad():
        assert torch.equal(model(x).z_ava, loaded.eval()(x).z_ava)



def test_registered_model_on_a_benchmark_of_other_shapes_exits_2(tmp_path):
    """`evaluate models:/...` names the shape mismatch instead of a torch traceback."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    bench = open_benchmark("tiny")
    cfg = TrainConfig.from_dict({"dataset": "synthetic"})
    model = build_model(cfg, bench)
    model.msdn_tune_config = cfg.to_dict()
    study = StudyTracker(uri, "shapes")
    parent = study.start("shapes", space_file=None, resolved_config={}, search_settings={})
    trial = TrialTracker(uri, study.experiment_id, parent, trial_id="a", trial_name="a",
                         study="shapes", params={})
    log_champion(uri, model=model, dataset="synthetic", study="shapes", trial_id="a",
                 run_id=trial.run_id, metric="best/H", value=0.5)
    res = subprocess.run([sys.executable, "-m", "msdn_tune.cli", "evaluate",
                          "models:/msdn-synthetic@champion", "--data", "demo", "--tracking-uri",
                          uri], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "trained with n_classes=30" in res.stderr and "Traceback" not in res.stderr
