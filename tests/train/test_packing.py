"""The GPU packing rule behind `resources: {gpu: auto}` (no GPU needed): one trial's memory at a
benchmark's shapes, trials per card, the share each gets, and `space validate` printing it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from msdn_tune.cli import main
from msdn_tune.data.resolve import open_benchmark
from msdn_tune.train.config import TrainConfig
from msdn_tune.train.packing import (
    MAX_TRIALS_PER_GPU,
    TrialShapes,
    gpu_fraction,
    packing_table,
    trial_memory,
    trials_per_gpu,
    working_bytes,
)
from msdn_tune.train.trainer import trial_shapes

CUB = TrialShapes(n_train=7057, n_eval=1764 + 2967, channels=2048, regions=196,
                  n_attributes=312, n_classes=200)


def test_features_are_counted_exactly_and_working_memory_grows_with_the_step():
    mem = trial_memory(CUB)
    assert mem.train_features == 7057 * 2048 * 196 * 2  # fp16 on the GPU
    assert mem.eval_features == 4731 * 2048 * 196 * 2
    assert mem.total == mem.train_features + mem.eval_features + mem.working
    bigger = TrialShapes(**{**CUB.__dict__, "batch_size": 200})
    assert working_bytes(bigger) > working_bytes(CUB)


def test_cub_packs_at_least_eight_trials_on_an_h200_and_fewer_on_smaller_cards():
    mem = trial_memory(CUB)
    counts = [trials_per_gpu(gb * 10**9, mem) for gb in (24, 40, 80, 141)]
    assert counts == sorted(counts)  # never fewer trials on a larger card
    assert counts[-1] >= 8
    assert counts[0] < counts[-1]


def test_tiny_trials_are_capped_and_a_trial_that_does_not_fit_is_zero():
    tiny = trial_memory(TrialShapes(n_train=10, n_eval=10, channels=8, regions=4,
                                    n_attributes=5, n_classes=6))
    assert trials_per_gpu(141 * 10**9, tiny) == MAX_TRIALS_PER_GPU
    assert trials_per_gpu(2 * 10**9, trial_memory(CUB)) == 0


@pytest.mark.parametrize("n", [1, 2, 3, 6, 7, 11, 16])
def test_each_trial_gets_a_share_that_lets_all_n_fit(n):
    share = gpu_fraction(n)
    assert share * n <= 1.0
    assert round(share, 4) == share  # Ray's smallest step
    assert 1.0 - share * n < 0.0001 * n + 1e-12
    if n == 1:
        assert share == 1.0


def test_zero_trials_has_no_share():
    with pytest.raises(ValueError):
        gpu_fraction(0)


def test_table_rows_follow_the_rule():
    mem = trial_memory(CUB)
    for gb, n, share in packing_table(mem):
        assert n == trials_per_gpu(gb * 10**9, mem)
        assert share == (gpu_fraction(n) if n else 0.0)


def test_a_trainer_counts_its_store_the_same_under_both_selections():
    """Clean selection splits trainval into train and validation: the images kept on the GPU
    are the same in all."""
    bench = open_benchmark("tiny")
    official = trial_shapes(bench, TrainConfig.from_dict({"dataset": "synthetic"}))
    clean = trial_shapes(bench, TrainConfig.from_dict({"dataset": "synthetic",
                                                       "selection": "clean"}))
    assert official.n_train == len(bench.splits["trainval"])
    assert official.n_eval == len(bench.splits["test_seen"]) + len(bench.splits["test_unseen"])
    assert clean.n_train < official.n_train
    assert clean.n_train + clean.n_eval == official.n_train + official.n_eval


@pytest.mark.parametrize("name", ["cub", "sun", "awa2", "flo"])
def test_shipped_spaces_pack_trials_and_validate_prints_the_rule(name):
    res = CliRunner().invoke(main, ["space", "validate", f"search_spaces/{name}.yaml"])
    assert res.exit_code == 0, res.output
    assert "auto gpu per trial" in res.output
    line = next(x for x in res.output.splitlines() if x.startswith("gpu: auto packs"))
    assert "141 GB:" in line and "80 GB:" in line


def test_gpu_accepts_auto_and_refuses_other_words(tmp_path):
    from msdn_tune.errors import ConfigError
    from msdn_tune.space import parse_space
    from tests.helpers.study import small_doc

    assert parse_space(small_doc(tmp_path, resources={"cpu": 1, "gpu": "auto"})
                       ).resources["gpu"] == "auto"
    with pytest.raises(ConfigError, match="gpu"):
        parse_space(small_doc(tmp_path, resources={"cpu": 1, "gpu": "all"}))
