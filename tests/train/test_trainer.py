"""Trainer: learning on the tiny preset, exact resume, divergence, selection modes, config,
and the edge cases of resuming and of `msdn-tune train` on a diverging run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from msdn_tune.cli import main
from msdn_tune.data.resolve import open_benchmark
from msdn_tune.data.store import BenchmarkStore, StoreWriter
from msdn_tune.errors import ConfigError, DataError, DivergenceError
from msdn_tune.train.config import TrainConfig
from msdn_tune.train.trainer import Trainer, load_checkpoint


@pytest.fixture(scope="module")
def tiny():
    return open_benchmark("tiny")


def _cfg(**kw):
    # fp32 unless a test says otherwise: what these tests expect must not depend on what
    # precision auto measures on the machine (tests/train/test_precision.py tests auto)
    base = dict(dataset="synthetic", epochs=4, lr=1e-3, device="cpu", threads=1, seed=3,
                precision="fp32")
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_short_run_learns_far_above_chance(tiny):
    trainer = Trainer(_cfg(epochs=6), tiny)
    final = trainer.fit()
    chance = 1.0 / len(tiny.unseen_classes)
    assert final["best/zsl_acc"] > 3 * chance, final
    assert final["best/H"] > 0.0
    assert len(trainer.history) == 6
    for key in ("train/loss", "train/loss_ce", "val/zsl_acc", "val/U", "val/S", "val/H",
                "best/H", "epoch", "eval/H_tuned"):
        assert key in trainer.history[-1] or key in final, key
    # The loss went down over training.
    assert trainer.history[-1]["train/loss"] < trainer.history[0]["train/loss"]
    # mean/H, the steadier trial score: the running mean of val/H, never above best/H
    hs = [m["val/H"] for m in trainer.history]
    for i, m in enumerate(trainer.history):
        assert m["mean/H"] == pytest.approx(sum(hs[:i + 1]) / (i + 1))
        assert m["mean/H"] <= m["best/H"] + 1e-12
    assert final["mean/H"] == pytest.approx(sum(hs) / len(hs))
    assert min(hs) < max(hs)  # else the check above could not tell a mean from a maximum


def test_resume_equals_uninterrupted(tiny, tmp_path):
    cfg = _cfg(epochs=4, intervention="random", lambda_causal=0.5)
    straight = Trainer(cfg, tiny)
    straight.fit()

    first = Trainer(cfg, tiny)
    first.run_epoch()
    first.run_epoch()
    path = first.save(tmp_path / "checkpoint.pt")
    del first
    resumed = Trainer.from_checkpoint(path, tiny)
    assert resumed.epoch == 2
    resumed.fit()
    for a, b in zip(straight.history, resumed.history, strict=True):
        for key in a:
            if key.startswith("time/"):
                continue
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
    for (ka, va), (kb, vb) in zip(straight.model.state_dict().items(),
                                  resumed.model.state_dict().items(), strict=True):
        assert ka == kb
        assert torch.allclose(va, vb, atol=1e-6), ka


def test_checkpoint_is_weights_only_loadable(tiny, tmp_path):
    t = Trainer(_cfg(epochs=1), tiny)
    t.run_epoch()
    p = t.save(tmp_path / "c.pt")
    state = torch.load(p, weights_only=True)
    assert state["epoch"] == 1 and "model" in state and "optimizer" in state
    assert load_checkpoint(tmp_path / "c.pt")["config"]["epochs"] == 1


def _nan_store(path, rows_of) -> BenchmarkStore:
    """The tiny store with NaN features in the first rows of the split `rows_of`."""
    src = open_benchmark("tiny")
    with StoreWriter(path, n_images=src.n_images, channels=src.channels, regions=src.regions,
                     dtype="float32") as w:
        feats = src.gather(np.arange(src.n_images)).float().numpy()
        feats[src.splits[rows_of][:5]] = np.nan
        w.write(feats)
        w.finish(labels=src.labels, splits=src.splits, class_attributes=src.class_attributes,
                 attribute_vectors=src.attribute_vectors, class_names=src.class_names,
                 attribute_names=src.attribute_names, dataset="synthetic:nan", source="test")
    return BenchmarkStore.open(path)


def test_divergence_raises_specific_error(tmp_path):
    bad = _nan_store(tmp_path / "nan-store", "trainval")  # a corrupt map in the training data
    with pytest.raises(DivergenceError) as info:
        Trainer(_cfg(epochs=2, batch_size=512), bad).fit()
    assert info.value.epoch == 1


def test_clean_selection_touches_test_once(tiny):
    trainer = Trainer(_cfg(epochs=3, selection="clean"), tiny)
    final = trainer.fit()
    for key in ("test/zsl_acc", "test/U", "test/S", "test/H", "best/H"):
        assert key in final
    # Selection happened on validation classes, not the test classes.
    assert set(trainer.select_split.unseen) == set(tiny.val_unseen_classes)
    assert not set(trainer.select_split.unseen) & set(tiny.unseen_classes)


def test_balanced_sampler_draws_distinct_classes(tiny):
    trainer = Trainer(_cfg(sampler="balanced", batch_size=8), tiny)
    rows = trainer.select_split.train
    for pos in list(trainer._batches(1))[:5]:
        labels = tiny.labels[rows[pos]]
        assert len(set(labels.tolist())) == len(labels) == 8


@pytest.mark.parametrize("values, key", [
    ({"lrr": 1e-3}, "lrr"),
    ({"lr": -1.0}, "lr"),
    ({"lr": "fast"}, "lr"),
    ({"epochs": 0}, "epochs"),
    ({"momentum": 1.0}, "momentum"),
    ({"optimizer": "sgd"}, "optimizer"),
    ({"intervention": "dropout"}, "intervention"),
    ({"lambda_causal": 1.0, "intervention": "none"}, "lambda_causal"),
    ({"normalize_v": "maybe"}, "normalize_v"),
    ({"device": "tpu"}, "device"),
    ({"dataset": "imagenet"}, "dataset"),
    # values that used to pass and then fail or be ignored in the middle of a run
    ({"seed": -1}, "seed"),
    ({"kappa": -0.5, "intervention": "random"}, "kappa"),
    ({"kappa": 0.5, "intervention": "none"}, "kappa"),
    ({"batch_size": 1}, "batch_size"),
])
def test_config_rejects_with_key_in_message(values, key):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(values)
    assert str(info.value).startswith(key)


def test_published_defaults():
    cub, sun, awa2 = (TrainConfig.for_dataset(d) for d in ("cub", "sun", "awa2"))
    assert (cub.optimizer, cub.lr, cub.weight_decay, cub.momentum) == ("rmsprop", 1e-4, 1e-4, 0.9)
    assert (cub.lambda_sc, cub.lambda_d, cub.epochs, cub.w1) == (0.1, 1e-3, 30, 0.9)
    assert (sun.sampler, sun.lambda_sc, sun.lambda_d, sun.epochs, sun.w1) == \
        ("balanced", 1e-4, 1e-2, 70, 0.7)
    assert (awa2.momentum, awa2.normalize_v, awa2.w1, awa2.clip_negative_att) == \
        (0.0, True, 1.0, True)


def test_bf16_autocast_keeps_accuracy_within_noise(tiny):
    from msdn_tune.train.precision import bf16_supported

    if not bf16_supported(torch.device("cpu")):
        pytest.skip("this CPU has no bf16 support (avx512_bf16/amx)")
    fp32 = Trainer(_cfg(epochs=6), tiny).fit()
    bf16 = Trainer(_cfg(epochs=6, precision="bf16"), tiny).fit()
    chance = 1.0 / len(tiny.unseen_classes)
    assert bf16["best/zsl_acc"] > 3 * chance
    assert abs(bf16["best/zsl_acc"] - fp32["best/zsl_acc"]) < 0.08, (fp32, bf16)
    assert abs(bf16["best/H"] - fp32["best/H"]) < 0.08, (fp32, bf16)


def test_clean_selection_resume_equals_uninterrupted(tiny, tmp_path):
    cfg = _cfg(epochs=3, selection="clean")
    straight = Trainer(cfg, tiny)
    final_straight = straight.fit()

    first = Trainer(cfg, tiny)
    first.run_epoch()
    path = first.save(tmp_path / "checkpoint.pt")
    resumed = Trainer.from_checkpoint(path, tiny)
    assert resumed.best_logits is not None
    assert np.array_equal(resumed.best_logits.candidates, resumed.select_split.candidates)
    final_resumed = resumed.fit()
    for key, value in final_straight.items():
        assert final_resumed[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_checkpoint_for_another_benchmark_is_a_clear_error(tiny, tmp_path):
    t = Trainer(_cfg(epochs=1), tiny)
    t.run_epoch()
    state = load_checkpoint(t.save(tmp_path / "c.pt"))
    state["benchmark"]["n_classes"] += 1
    with pytest.raises(DataError, match="n_classes"):
        Trainer(_cfg(epochs=1), tiny).load_state_dict(state)


def test_evaluation_divergence_names_the_epoch_being_evaluated(tmp_path):
    bad = _nan_store(tmp_path / "nan-eval", "test_seen")  # training data is fine
    with pytest.raises(DivergenceError) as info:
        Trainer(_cfg(epochs=2), bad).fit()
    assert info.value.what == "evaluation logits"
    assert info.value.epoch == 1


def test_train_cli_reports_divergence_without_traceback(tmp_path):
    store = _nan_store(tmp_path / "nan-train", "trainval").path
    res = CliRunner().invoke(main, ["train", "--data", str(store), "--out", str(tmp_path / "r"),
                                    "--set", "epochs=1", "--set", "threads=1",
                                    "--set", "batch_size=512"])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "diverged at epoch 1" in res.stderr


def test_resume_with_other_benchmark_shapes_exits_2(tiny, tmp_path):
    t = Trainer(_cfg(epochs=1), tiny)
    t.run_epoch()
    state = t.state_dict()
    state["benchmark"]["channels"] += 8
    torch.save(state, tmp_path / "checkpoint.pt")
    res = CliRunner().invoke(main, ["train", "--data", "tiny", "--resume", str(tmp_path),
                                    "--set", "epochs=5"])
    assert res.exit_code == 2, res.output
    assert "channels" in res.stderr
    assert not (tmp_path / "config.yaml").exists()  # the refused resume changed nothing


def test_balanced_epoch_has_as_many_batches_as_a_uniform_one(tiny):
    # tiny's trainval has 22 classes: with bs 50 each balanced batch holds 22 images, but an
    # epoch is still n/bs batches (published AWA2: 40 images per batch, n/50 iterations).
    n = len(tiny.splits["trainval"])
    balanced = list(Trainer(_cfg(sampler="balanced", batch_size=50), tiny)._batches(1))
    uniform = list(Trainer(_cfg(sampler="uniform", batch_size=50), tiny)._batches(1))
    assert len(balanced) == len(uniform) == -(-n // 50)
    assert {len(b) for b in balanced} == {22}


def test_resume_cannot_switch_the_selection_mode(tiny, tmp_path):
    t = Trainer(_cfg(epochs=2), tiny)
    t.run_epoch()
    path = t.save(tmp_path / "c.pt")
    with pytest.raises(ConfigError, match="selection"):
        Trainer.from_checkpoint(path, tiny, {"selection": "clean"})
