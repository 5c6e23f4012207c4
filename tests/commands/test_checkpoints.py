"""Published MSDN checkpoints through the CLI, against a real MLflow (SQLite) store:
`import-checkpoint` of both published classes' state dicts (with and without backbone keys,
with a non-default margin), `evaluate models:/msdn-cub@published`, `export --published` and
back, `train --init`.

The checkpoints are built here with the published names and CUB's shapes (200 classes, 312
attributes, 300 x 2048 maps); the store is a CUB-shaped synthetic one with one region per image,
so that scoring is cheap while every shape check is the real one.
"""

from __future__ import annotations

import hashlib
import re

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from mlflow import MlflowClient

from msdn_tune.cli import main
from msdn_tune.commands.evaluate import evaluate_source
from msdn_tune.data.resnet import ResNet101Trunk, load_trunk
from msdn_tune.data.store import BenchmarkStore
from msdn_tune.data.synth import CUB_GROUPS, SynthSpec, generate
from msdn_tune.integrations.mlflow import load_model
from msdn_tune.model import MSDN
from msdn_tune.model.published import DEAD_KEYS, HEAD_KEYS, HELPER_KEYS
from tests.train.usererror import assert_user_error

SPEC = SynthSpec(name="cub-shape", n_classes=200, n_unseen=50, groups=CUB_GROUPS, channels=2048,
                 grid=1, n_images=1000)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    store = generate(SPEC, root / "store", progress=False)
    with BenchmarkStore.open(store) as bench:
        seen = [int(c) for c in bench.seen_classes]
        att = torch.tensor(bench.class_attributes, dtype=torch.float32)
    return {"root": root, "store": str(store), "seen": seen, "att": att,
            "uri": f"sqlite:///{root / 'mlflow.db'}"}


def published_dict(env, *, margin=1.0, root_class=False, seed=0):
    """A state dict with the published names and CUB shapes; trained-looking random weights."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(1, 200)
    mask[0, env["seen"]] = -1
    sd = {
        "att": F.normalize(env["att"], dim=1),
        "V": torch.randn(312, 300, generator=g) * 0.1,
        "W_1": torch.randn(300, 2048, generator=g) * 0.05,
        "W_2": torch.randn(300, 2048, generator=g) * 0.05,
        "W_3": torch.zeros(300, 2048),
        "W_1_1": torch.randn(2048, 300, generator=g) * 0.05,
        "W_2_1": torch.randn(300, 2048, generator=g) * 0.05,
        "W_3_1": torch.zeros(2048, 300),
        "bias": torch.tensor(margin),
        "mask_bias": mask,
        "prob_prune": torch.tensor(0),
    }
    if root_class:  # the root class: no weight_ce, the backbone under resnet101.<i>.*
        names = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6",
                 "layer4": "7"}
        torch.manual_seed(seed)
        for key, value in ResNet101Trunk().state_dict().items():
            child, _, rest = key.partition(".")
            sd[f"resnet101.{names[child]}.{rest}"] = value
    else:
        sd["weight_ce"] = torch.eye(200)
    return sd


def _cli(env, *args):
    return CliRunner().invoke(main, [*args], catch_exceptions=True)


def _import(env, path, *extra):
    return _cli(env, "import-checkpoint", str(path), "--dataset", "CUB", "--tracking-uri",
                env["uri"], *extra)


def _logits(model, x):
    with torch.no_grad():
        out = model(x)
    return out.z_ava, out.z_vaa


def test_import_core_class_with_its_margin_scores_registers_and_evaluates(env):
    sd = published_dict(env, margin=0.5)
    path = env["root"] / "CUB_MSDN_GZSL.pth"
    torch.save(sd, path)
    res = _import(env, path, "--data", env["store"])
    assert res.exit_code == 0, res.output
    assert "core class" in res.output and "margin: 0.5" in res.output
    assert "scored on" in res.output and "H " in res.output
    assert "msdn-tune evaluate models:/msdn-cub@published" in res.output

    client = MlflowClient(tracking_uri=env["uri"], registry_uri=env["uri"])
    version = client.get_model_version_by_alias("msdn-cub", "published")
    assert version.tags["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert version.tags["margin"] == "0.5" and "test/H" in version.tags

    # the registered model gives the published head's own logits
    model = load_model("models:/msdn-cub@published", tracking_uri=env["uri"])
    x = torch.rand(4, 2048, 3)
    for got, want in zip(_logits(model, x), _logits(MSDN.from_published_state_dict(sd), x),
                         strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert model.msdn_tune_config["margin"] == 0.5

    # evaluate through the registry scores with the checkpoint's margin, not the default 1
    got = evaluate_source("models:/msdn-cub@published", env["store"], {"threads": 1},
                          tracking_uri=env["uri"])
    assert got["test/H"] == pytest.approx(float(version.tags["test/H"]), abs=1e-9)
    res = _cli(env, "evaluate", "models:/msdn-cub@published", "--data", env["store"],
               "--tracking-uri", env["uri"])
    assert res.exit_code == 0, res.output
    assert "test/H" in res.output


def test_import_root_class_writes_its_backbone_for_data_extract(env, tmp_path):
    sd = published_dict(env, root_class=True, seed=1)
    path = tmp_path / "CUB_MSDN_CZSL.pth"
    torch.save(sd, path)
    backbone = tmp_path / "trunk.pth"
    res = _import(env, path, "--backbone-out", str(backbone), "--alias", "root-test")
    assert res.exit_code == 0, res.output
    assert "root class" in res.output and f"--weights {backbone}" in res.output
    trunk, _info = load_trunk(backbone)
    torch.testing.assert_close(trunk.state_dict()["layer4.2.conv3.weight"],
                               sd["resnet101.7.2.conv3.weight"], rtol=0, atol=0)
    model = load_model("models:/msdn-cub@root-test", tracking_uri=env["uri"])
    x = torch.rand(2, 2048, 3)
    torch.testing.assert_close(_logits(model, x)[0],
                               _logits(MSDN.from_published_state_dict(sd), x)[0], rtol=0, atol=0)
    # a second import does not overwrite the backbone file it wrote, unless told to
    res = _import(env, path, "--backbone-out", str(backbone), "--alias", "root-test")
    assert_user_error(res, "--backbone-out", "already exists")


@pytest.mark.parametrize("case, needle", [
    ("other dataset", "AWA2 has 50"),
    ("unknown key", "emb_func.0.weight"),
    ("other split", "not the seen classes"),
    ("not a state dict", "not a weights file"),
])
def test_bad_checkpoints_are_one_error_and_register_nothing(env, tmp_path, case, needle):
    path = tmp_path / "bad.pth"
    sd = published_dict(env)
    args = []
    if case == "other dataset":
        args = ["--dataset", "AWA2"]
    elif case == "unknown key":
        sd["emb_func.0.weight"] = torch.zeros(2, 2)
    elif case == "other split":
        mask = torch.ones(1, 200)
        mask[0, :150] = -1
        assert sorted(env["seen"]) != list(range(150))
        sd["mask_bias"] = mask
        args = ["--data", env["store"]]
    torch.save(sd, path)
    if case == "not a state dict":
        path.write_text("not torch")
    uri = f"sqlite:///{tmp_path / 'bad.db'}"
    cmd = ["import-checkpoint", str(path), "--tracking-uri", uri]
    cmd += args if "--dataset" in args else ["--dataset", "CUB", *args]
    assert_user_error(CliRunner().invoke(main, cmd), needle)
    if (tmp_path / "bad.db").exists():
        assert MlflowClient(tracking_uri=uri).search_registered_models() == []


def test_export_then_import_gives_identical_logits(env, tmp_path):
    sd = published_dict(env, margin=0.75, seed=2)
    path = tmp_path / "first.pth"
    torch.save(sd, path)
    assert _import(env, path, "--alias", "roundtrip").exit_code == 0
    out = tmp_path / "exported.pth"
    res = _cli(env, "export", "models:/msdn-cub@roundtrip", "--published", str(out),
               "--tracking-uri", env["uri"])
    assert res.exit_code == 0, res.output
    exported = torch.load(out, weights_only=True)
    assert set(exported) == set(HEAD_KEYS + DEAD_KEYS + HELPER_KEYS)  # the core class's keys
    assert float(exported["bias"]) == 0.75
    assert torch.equal(exported["mask_bias"], sd["mask_bias"])
    assert _import(env, out, "--alias", "roundtrip2").exit_code == 0
    a = load_model("models:/msdn-cub@roundtrip", tracking_uri=env["uri"])
    b = load_model("models:/msdn-cub@roundtrip2", tracking_uri=env["uri"])
    x = torch.rand(3, 2048, 2)
    for got, want in zip(_logits(b, x), _logits(a, x), strict=True):
        assert torch.equal(got, want)
    # an existing file is never overwritten without --force
    res = _cli(env, "export", "models:/msdn-cub@roundtrip", "--published", str(out),
               "--tracking-uri", env["uri"])
    assert_user_error(res, "already exists")


def test_export_of_our_checkpoint_needs_to_know_the_seen_classes(tmp_path):
    res = CliRunner().invoke(main, ["train", "--data", "tiny", "--out", str(tmp_path / "run"),
                                    "--set", "epochs=1", "--set", "threads=1",
                                    "--set", "dataset=synthetic"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "tiny.pth"
    res = CliRunner().invoke(main, ["export", str(tmp_path / "run"), "--published", str(out)])
    assert res.exit_code == 0, res.output  # the store it was trained on is still there
    state = torch.load(out, weights_only=True)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    weights = ckpt["best_state"] or ckpt["model"]
    for key in ("W_1", "W_2", "W_1_1", "W_2_1", "V"):
        assert torch.equal(state[key], weights[key])
    assert float(state["bias"]) == ckpt["config"]["margin"]


def test_train_init_starts_from_the_published_model(env, tmp_path):
    sd = published_dict(env, seed=3)
    path = tmp_path / "init.pth"
    torch.save(sd, path)
    assert _import(env, path, "--alias", "init").exit_code == 0
    common = ["--data", env["store"], "--set", "epochs=1", "--set", "threads=1",
              "--set", "lr=1e-12", "--set", "selection=official"]
    for source, folder in (("models:/msdn-cub@init", "from-registry"), (str(path), "from-file")):
        res = CliRunner().invoke(main, ["train", *common, "--out", str(tmp_path / folder),
                                        "--init", source, "--tracking-uri", env["uri"]])
        assert res.exit_code == 0, res.output
        assert f"starting from the weights of {source}" in res.output
        ckpt = torch.load(tmp_path / folder / "checkpoint.pt", weights_only=True)
        assert ckpt["config"]["init"] == source
        for key in ("W_1", "W_2", "W_1_1", "W_2_1", "V"):  # lr 1e-12: still the init weights
            torch.testing.assert_close(ckpt["model"][key], sd[key], rtol=0, atol=1e-6)
    # a fine-tuned run can start another: from a run folder
    res = CliRunner().invoke(main, ["train", *common, "--out", str(tmp_path / "from-run"),
                                    "--init", str(tmp_path / "from-file")])
    assert res.exit_code == 0, res.output
    # and an init that does not fit the benchmark is one error, before a folder is made
    res = CliRunner().invoke(main, ["train", "--data", "tiny", "--out", str(tmp_path / "no"),
                                    "--set", "dataset=synthetic", "--init", str(path)])
    line = assert_user_error(res, str(path))
    assert re.search(r"W_1 has shape|V has shape", line), line
    assert not (tmp_path / "no" / "checkpoint.pt").exists()


def test_a_trainer_told_to_init_never_trains_a_random_model_in_its_name(tmp_path):
    from msdn_tune.data.resolve import open_benchmark
    from msdn_tune.errors import ConfigError
    from msdn_tune.train.config import TrainConfig
    from msdn_tune.train.trainer import Trainer

    cfg = TrainConfig.from_dict({"dataset": "synthetic", "epochs": 1, "threads": 1,
                                 "init": "models:/msdn-synthetic@x"})
    trainer = Trainer(cfg, open_benchmark("tiny"))
    with pytest.raises(ConfigError, match="never loaded"):
        trainer.run_epoch()


def test_init_cannot_be_searched(tmp_path):
    from msdn_tune.errors import ConfigError
    from msdn_tune.space import parse_space
    from tests.helpers.study import small_doc

    doc = small_doc(tmp_path, params={"init": {"type": "categorical", "choices": ["a", "b"]}})
    with pytest.raises(ConfigError, match="read once, before the search"):
        parse_space(doc)
