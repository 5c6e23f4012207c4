"""`--set` values and TrainConfig bounds (issue 14): what used to be a traceback in the middle of a
run is one line naming the setting, before anything is written."""

from __future__ import annotations

import dataclasses
import math

import pytest
from click.testing import CliRunner

from msdn_tune.cli import main
from msdn_tune.errors import ConfigError
from msdn_tune.train.config import BOUNDS, TrainConfig, parse_set_options
from tests.train.usererror import assert_user_error


@pytest.mark.parametrize(
    "setting, needle",
    [
        ("lr=1" + "0" * 400, "lr: must be finite"),
        (f"seed={2**70}", "seed: must be in [0, 4294967295]"),
        (f"threads={2**70}", "threads: must be in [0, 1024]"),
        ("seed=2024-13-01", "--set seed: line 1, column 1: invalid YAML"),
        ("seed=2024-12-01", "seed: expected an integer"),
        ("lr=" + "9" * 5000, "--set lr"),
        ("epochs=1.0e+300", "epochs: must be in [1, 100000]"),
        ("batch_size=99999999", "batch_size: must be in [2, 65536]"),
        ("temp_ava=5e-324", "temp_ava: must be in [1e-06, 1e+06]"),
        ("margin=.inf", "margin: must be finite"),
        ("lr=[1, 2]", "lr: expected a number"),
        ("device=cuda:123456", "device: expected auto, cpu, cuda or cuda:N"),
        ("x" * 300 + "=1", "not a setting name"),
        ("lr", "expected key=value"),
        ("lr=&a [*a, *a]", "--set lr"),
    ],
)
def test_bad_set_values_are_one_line_before_anything_is_written(tmp_path, setting, needle):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--data", "tiny", "--out", str(out),
                                    "--set", setting],
                             env={"MSDN_TUNE_CACHE": str(tmp_path / "cache")})
    line = assert_user_error(res, needle)
    assert len(line) < 300
    assert not out.exists()


@pytest.mark.parametrize("field, value", [
    ("seed", 2**70), ("seed", -1), ("threads", 2**70), ("epochs", 0), ("lr", math.nan),
    ("lr", True), ("gamma", math.inf), ("batch_size", 1.5), ("eval_batch_size", 0),
    ("device", ["cpu"]), ("normalize_v", "maybe"), ("temp_vaa", 0.0),
])
def test_trainconfig_itself_rejects_out_of_range_values(field, value):
    """However a config is made (a space file's `fixed:` goes through TrainConfig too)."""
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value})
    assert str(info.value).startswith(f"{field}:")
    with pytest.raises(ConfigError):
        dataclasses.replace(TrainConfig(), **{field: value})


def test_trainconfig_coerces_ints_to_floats_and_bounds_every_number():
    cfg = TrainConfig(lr=1, seed=2**32 - 1, threads=1024)
    assert isinstance(cfg.lr, float) and cfg.seed == 2**32 - 1
    for name, (low, high, low_open, high_open) in BOUNDS.items():
        def make(**kw):
            return TrainConfig(intervention="random", **kw)  # kappa > 0 needs one

        is_int = isinstance(getattr(cfg, name), int)
        step = 1 if is_int else abs(low) * 1e-9 + 1e-12
        if not low_open:
            make(**{name: low})  # the bound itself is accepted
        with pytest.raises(ConfigError, match=f"^{name}:"):
            make(**{name: low if low_open else low - step})
        if math.isfinite(high):
            if not high_open:
                make(**{name: high})
            with pytest.raises(ConfigError, match=f"^{name}:"):
                make(**{name: high if high_open else high + (1 if is_int else high)})


def test_set_values_are_read_safely():
    assert parse_set_options(["lr=1.0e-3", "device=cuda:0", "normalize_v=true", "dataset="]) == {
        "lr": 1e-3, "device": "cuda:0", "normalize_v": True, "dataset": ""}
    with pytest.raises(ConfigError, match="--set seed"):
        parse_set_options(["seed=!!python/object:os.system x"])
