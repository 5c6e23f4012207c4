"""`msdn-tune evaluate` (and `train --resume`) on hostile checkpoints (issue 14): a checkpoint
without a key, with a key of the wrong type, with tensors of the wrong shape, or a file that is
not a checkpoint at all, is one `error:` line naming the file and the key, exit 2, and the file
is left as it was."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from click.testing import CliRunner

from msdn_tune.cli import main
from msdn_tune.data.resolve import resolve_benchmark
from msdn_tune.data.store import BenchmarkStore
from msdn_tune.train.config import TrainConfig
from msdn_tune.train.trainer import Trainer
from tests.train.usererror import assert_user_error, checksums


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(store path, a real one-epoch checkpoint's state) on the tiny preset."""
    root = tmp_path_factory.mktemp("evaluate")
    store = resolve_benchmark("tiny", cache_dir=root)
    cfg = TrainConfig.from_dict(dict(dataset="synthetic", epochs=1, lr=1e-3, device="cpu",
                                     threads=1, seed=3))
    trainer = Trainer(cfg, BenchmarkStore.open(store))
    trainer.run_epoch()
    return store, trainer.state_dict()


def _evaluate(path, store):
    return CliRunner().invoke(main, ["evaluate", str(path), "--data", str(store),
                                     "--set", "threads=1"])


def _mutated(state, edit):
    state = copy.copy(state)
    for key in ("config", "benchmark", "model", "optimizer", "best_state", "best", "rng"):
        state[key] = copy.copy(state[key])
    edit(state)
    return state


def test_a_real_checkpoint_evaluates(trained, tmp_path):
    store, state = trained
    torch.save(state, tmp_path / "c.pt")
    res = _evaluate(tmp_path / "c.pt", store)
    assert res.exit_code == 0, res.output
    assert "test/H" in res.output


def _set(key, value):
    return lambda s: s.__setitem__(key, value)


def _reshape(part, name):
    def edit(s):
        s[part][name] = torch.zeros(3, 3)
    return edit


@pytest.mark.parametrize("edit, needles", [
    (lambda s: s.pop("benchmark"), ["key 'benchmark' is missing"]),
    (lambda s: s.pop("optimizer"), ["key 'optimizer' is missing"]),
    (_set("config", [1, 2]), ["key 'config' has a list, expected a dictionary"]),
    (_set("version", "1"), ["key 'version' has a string"]),
    (_set("epoch", 2**70), ["key 'epoch'"]),
    (_reshape("model", "W_1"), ["'model.W_1' has shape [3, 3]", "the model needs [300, 48]"]),
    (_reshape("best_state", "V"), ["'best_state.V' has shape [3, 3]"]),
    (lambda s: s["model"].pop("W_2"), ["key 'model' lacks 'W_2'"]),
    (lambda s: s["model"].__setitem__("att", s["model"]["att"].double()), ["'model.att'"]),
    (lambda s: s["model"].__setitem__("V", torch.full_like(s["model"]["V"], float("nan"))),
     ["'model.V' holds NaN"]),
    (lambda s: s["config"].update(lr=float("nan")), ["config is invalid: lr: must be finite"]),
    (lambda s: s["config"].update(seed=2**70), ["config is invalid: seed"]),
    (lambda s: s["benchmark"].update(n_classes="30"), ["'benchmark.n_classes'"]),
    (lambda s: s["benchmark"].update(channels=64), ["channels=64"]),
    (lambda s: s["best"].pop("best/H"), ["key 'best'"]),
    (_set("best_logits", {"z_ava_seen": 1}), ["'best_logits.z_ava_seen' has an integer"]),
    (_set("history", [1, 2]), ["key 'history'"]),
    (lambda s: s["rng"].update(torch=torch.zeros(3)), ["'rng.torch'"]),
    (lambda s: s["optimizer"].update(state={0: {"step": torch.tensor(1.0)}}),
     ["lacks 'momentum_buffer'", "not the state of rmsprop"]),
    (lambda s: s["optimizer"].update(state={99: {}}), ["'optimizer.state'"]),
    (lambda s: s["optimizer"].update(param_groups="x"), ["'optimizer'"]),
])
def test_hostile_checkpoint_is_one_line_naming_file_and_key(trained, tmp_path, edit, needles):
    store, state = trained
    path = tmp_path / "c.pt"
    torch.save(_mutated(state, edit), path)
    before = checksums(path, store)
    assert_user_error(_evaluate(path, store), str(path), *needles)
    assert checksums(path, store) == before


@pytest.mark.parametrize("content", [
    b"hello, I am a text file\n",
    bytes(range(256)) * 8,
    b"",
    pickle.dumps({"model": ValueError("x")}),
], ids=["text", "random bytes", "empty", "a pickle"])
def test_a_file_torch_cannot_load_safely_is_one_line(trained, tmp_path, content):
    store, _ = trained
    path = tmp_path / "c.pt"
    path.write_bytes(content)
    line = assert_user_error(_evaluate(path, store), f"{path}: not a msdn-tune checkpoint (")
    assert "weights_only" not in line and "allow_pickle" not in line


def test_a_checkpoint_of_arbitrary_objects_is_never_unpickled(trained, tmp_path):
    store, _ = trained
    path = tmp_path / "c.pt"
    torch.save({"model": Exception("x")}, path)
    line = assert_user_error(_evaluate(path, store), "not a msdn-tune checkpoint")
    assert "weights_only" not in line


def test_train_resume_from_a_hostile_checkpoint_changes_nothing(trained, tmp_path):
    store, state = trained
    run = tmp_path / "run"
    run.mkdir()
    for content in (b"not a checkpoint", None):
        if content is None:
            torch.save(_mutated(state, lambda s: s.pop("optimizer")), run / "checkpoint.pt")
        else:
            (run / "checkpoint.pt").write_bytes(content)
        before = checksums(run)
        res = CliRunner().invoke(main, ["train", "--data", str(store), "--resume", str(run),
                                        "--set", "threads=1"])
        assert_user_error(res, str(run / "checkpoint.pt"))
        assert checksums(run) == before


def test_the_checkpoint_name_is_checked_too(trained):
    store, _ = trained
    assert_user_error(_evaluate("c" * 300, store), "cannot read the checkpoint")
