"""`precision: auto`: the decision rule, the per-machine cache (written, reused, re-measured for
another key, a corrupt file replaced), explicit precisions left alone, and what a run records.

A few tests run the real probe (about a second each); none asserts a time, only what was decided
and whether it was measured or read from the cache.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from msdn_tune.cli import main
from msdn_tune.data.resolve import open_benchmark
from msdn_tune.errors import ConfigError
from msdn_tune.train.config import TrainConfig, parse_set_options
from msdn_tune.train.precision import (
    CACHE_VERSION,
    MIN_SPEEDUP,
    Measurement,
    choose,
    machine_key,
    read_cached,
    resolve_precision,
    write_cached,
)
from msdn_tune.train.trainer import Trainer, bf16_supported

CPU = torch.device("cpu")
HAS_BF16 = bf16_supported(CPU)
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 instructions, so "
                                "auto is fp32 without measuring")

CPUINFO = """processor\t: 0
model name\t: Example CPU 9000 @ 2.00GHz
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16 xsave
"""


@pytest.fixture(scope="module")
def tiny():
    return open_benchmark("tiny")


def _doc(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------- the rule

@pytest.mark.parametrize("fp32_s, bf16_s, expected", [
    (1.0, 1.0, "fp32"),                   # as fast: nothing to gain
    (1.14, 1.0, "fp32"),                  # faster, but within what noise can fake
    (MIN_SPEEDUP, 1.0, "bf16"),           # the margin itself
    (3.2, 1.0, "bf16"),                   # an AMX CPU
    (0.4, 1.0, "fp32"),                   # bf16 slower (avx512_bf16 without AMX on a Xeon)
    (1.0, 0.0, "fp32"),                   # impossible times are no evidence for bf16
    (1.0, -1.0, "fp32"),
    (math.inf, 1.0, "fp32"),
    (math.nan, 1.0, "fp32"),
    (1.0, math.nan, "fp32"),
])
def test_choose_takes_bf16_only_when_clearly_faster(fp32_s, bf16_s, expected):
    assert choose(fp32_s, bf16_s) == expected


def test_choose_margin_is_a_parameter():
    assert choose(1.3, 1.0, min_speedup=1.5) == "fp32"
    assert choose(1.3, 1.0, min_speedup=1.2) == "bf16"
    assert Measurement(2.0, 1.0).precision == "bf16" and Measurement(2.0, 1.0).speedup == 2.0


# ---------------------------------------------------------------------------- the key

def test_machine_key_holds_the_model_and_only_the_flags_that_matter():
    key = machine_key(threads=3, torch_version="9.9", cpuinfo=CPUINFO)
    assert key.cpu == "Example CPU 9000 @ 2.00GHz"
    assert key.flags == ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    assert (key.torch, key.threads) == ("9.9", 3)
    assert machine_key(cpuinfo="").cpu == "unknown"
    # every part of the key names another file
    names = {machine_key(threads=t, torch_version=v, cpuinfo=c).file_name()
             for t in (1, 2) for v in ("2.13.0", "2.12.0") for c in (CPUINFO, "")}
    assert len(names) == 8


# ---------------------------------------------------------------------------- explicit values

@pytest.mark.parametrize("value", ["fp32", "bf16"])
def test_explicit_precision_is_taken_as_written_without_a_probe(tmp_path, value):
    choice = resolve_precision(value, CPU, cache_dir=tmp_path)
    assert (choice.requested, choice.precision, choice.measurement) == (value, value, None)
    assert list(tmp_path.iterdir()) == []


def test_explicit_bf16_on_a_cpu_without_it_is_still_refused(tiny):
    if HAS_BF16:
        pytest.skip("this CPU has bf16 instructions")
    with pytest.raises(ConfigError, match="bf16 is not supported"):
        Trainer(TrainConfig.from_dict({"dataset": "synthetic", "device": "cpu",
                                       "precision": "bf16"}), tiny)


def test_auto_on_a_cpu_without_bf16_is_fp32_without_a_probe(tmp_path):
    if HAS_BF16:
        pytest.skip("this CPU has bf16 instructions")
    choice = resolve_precision("auto", CPU, cache_dir=tmp_path)
    assert choice.precision == "fp32" and choice.measurement is None
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- auto and its cache

@needs_bf16
def test_auto_measures_once_then_reads_the_cache(tmp_path):
    key = machine_key(threads=1)
    first = resolve_precision("auto", CPU, key=key, cache_dir=tmp_path)
    assert first.precision in ("fp32", "bf16") and first.requested == "auto"
    assert first.measurement is not None and not first.cached
    assert first.precision == first.measurement.precision
    assert first.cache_file == tmp_path / key.file_name()
    doc = _doc(first.cache_file)
    assert doc["version"] == CACHE_VERSION and doc["key"] == key.as_dict()
    assert (doc["fp32_s"], doc["bf16_s"]) == (first.measurement.fp32_s, first.measurement.bf16_s)
    assert doc["chose"] == first.precision
    assert [p.name for p in tmp_path.iterdir()] == [key.file_name()]  # no temporary file left
    written = first.cache_file.read_bytes()

    second = resolve_precision("auto", CPU, key=key, cache_dir=tmp_path)
    assert second.cached and second.measurement == first.measurement
    assert second.precision == first.precision
    assert first.cache_file.read_bytes() == written


@needs_bf16
@pytest.mark.parametrize("fp32_s, bf16_s, expected", [(1.0, 0.5, "bf16"), (0.5, 1.0, "fp32")])
def test_auto_decides_from_the_cached_times(tmp_path, fp32_s, bf16_s, expected):
    """What the cache holds decides, whatever this machine would measure: nothing is probed."""
    key = machine_key(threads=1)
    path = tmp_path / key.file_name()
    assert write_cached(path, key, Measurement(fp32_s, bf16_s))
    choice = resolve_precision("auto", CPU, key=key, cache_dir=tmp_path)
    assert choice.cached and choice.precision == expected
    assert choice.measurement == Measurement(fp32_s, bf16_s)


@needs_bf16
def test_another_key_measures_again(tmp_path):
    old = machine_key(threads=1, torch_version="1.0.0-another-torch")
    assert write_cached(tmp_path / old.file_name(), old, Measurement(1.0, 0.5))
    before = (tmp_path / old.file_name()).read_bytes()
    new = machine_key(threads=1)
    choice = resolve_precision("auto", CPU, key=new, cache_dir=tmp_path)
    assert not choice.cached  # measured: the other torch's times do not count here
    assert _doc(tmp_path / new.file_name())["key"] == new.as_dict()
    assert (tmp_path / old.file_name()).read_bytes() == before


@needs_bf16
def test_a_corrupt_cache_file_is_measured_again_and_replaced(tmp_path):
    key = machine_key(threads=1)
    path = tmp_path / key.file_name()
    path.write_bytes(b"\xff{ not json")
    choice = resolve_precision("auto", CPU, key=key, cache_dir=tmp_path)
    assert not choice.cached and choice.measurement is not None
    assert read_cached(path, key) == choice.measurement


@needs_bf16
def test_an_unwritable_cache_is_no_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    key = machine_key(threads=1)
    choice = resolve_precision("auto", CPU, key=key, cache_dir=blocker / "precision")
    assert choice.precision in ("fp32", "bf16") and not choice.cached
    assert blocker.read_text().startswith("a file")


def _valid(key) -> dict:
    return {"version": CACHE_VERSION, "key": key.as_dict(), "fp32_s": 0.2, "bf16_s": 0.1}


@pytest.mark.parametrize("content", [
    b"", b"\x00\x01binary", b"[1, 2]", b"{\"version\": 1", b"null",
    json.dumps({**_valid(machine_key(threads=1)), "version": 99}).encode(),
    json.dumps({**_valid(machine_key(threads=1)), "key": {"cpu": "other"}}).encode(),
    json.dumps({**_valid(machine_key(threads=1)), "fp32_s": -1.0}).encode(),
    json.dumps({**_valid(machine_key(threads=1)), "bf16_s": "fast"}).encode(),
    json.dumps({**_valid(machine_key(threads=1)), "bf16_s": True}).encode(),
    b"{\"fp32_s\": NaN}",
    b"{" * 10_000,
])
def test_read_cached_refuses_anything_but_a_measurement_for_this_key(tmp_path, content):
    key = machine_key(threads=1)
    path = tmp_path / key.file_name()
    path.write_bytes(content)
    assert read_cached(path, key) is None
    assert read_cached(tmp_path / "missing.json", key) is None
    assert read_cached(tmp_path, key) is None  # a folder
    path.write_text(json.dumps(_valid(key)))
    assert read_cached(path, key) == Measurement(0.2, 0.1)


def test_write_cached_replaces_whole_files_and_says_when_it_cannot(tmp_path):
    key = machine_key(threads=1)
    path = tmp_path / "precision" / key.file_name()
    assert write_cached(path, key, Measurement(1.0, 2.0))
    assert write_cached(path, key, Measurement(3.0, 1.0))
    assert read_cached(path, key) == Measurement(3.0, 1.0)
    assert _doc(path)["chose"] == "bf16" and _doc(path)["speedup"] == 3.0
    assert sorted(p.name for p in path.parent.iterdir()) == [key.file_name()]
    (tmp_path / "blocked").write_text("")
    assert not write_cached(tmp_path / "blocked" / "x.json", key, Measurement(1.0, 1.0))


# ---------------------------------------------------------------------------- where it shows

def test_auto_is_the_default_and_accepted_everywhere_precision_is():
    assert TrainConfig().precision == "auto"
    assert TrainConfig.for_dataset("cub").precision == "auto"
    assert TrainConfig.from_dict(parse_set_options(["precision=auto"])).precision == "auto"
    with pytest.raises(ConfigError, match="expected one of auto, fp32, bf16"):
        TrainConfig.from_dict({"precision": "fp16"})
    schema = json.loads((Path(__file__).parents[2] / "search_spaces" / "schema.json").read_text())
    assert "auto" in json.dumps(schema)


def _cached_choice(cache: Path, threads: int, bf16_faster: bool) -> None:
    key = machine_key(threads=threads)
    times = Measurement(1.0, 0.5) if bf16_faster else Measurement(0.5, 1.0)
    assert write_cached(cache / "precision" / key.file_name(), key, times)


@pytest.mark.parametrize("bf16_faster", [True, False])
def test_trainer_records_what_auto_chose(tiny, tmp_path, monkeypatch, bf16_faster):
    monkeypatch.setenv("MSDN_TUNE_CACHE", str(tmp_path))
    _cached_choice(tmp_path, 1, bf16_faster)
    cfg = TrainConfig.from_dict({"dataset": "synthetic", "device": "cpu", "threads": 1,
                                 "epochs": 1})
    trainer = Trainer(cfg, tiny)
    want = "bf16" if bf16_faster and HAS_BF16 else "fp32"
    assert trainer.precision == want
    assert trainer.precision_choice.requested == "auto"
    metrics = trainer.run_epoch()
    assert metrics["time/bf16"] == (1.0 if want == "bf16" else 0.0)
    assert trainer.finish()["time/bf16"] == metrics["time/bf16"]
    assert trainer.state_dict()["config"]["precision"] == "auto"  # as the user wrote it


def test_explicit_fp32_trainer_ignores_the_cache(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MSDN_TUNE_CACHE", str(tmp_path))
    _cached_choice(tmp_path, 1, bf16_faster=True)
    trainer = Trainer(TrainConfig.from_dict({"dataset": "synthetic", "device": "cpu",
                                             "threads": 1, "precision": "fp32"}), tiny)
    assert trainer.precision == "fp32" and trainer.precision_choice.measurement is None
    assert trainer.run_epoch()["time/bf16"] == 0.0


def test_train_command_says_which_precision_ran(tmp_path):
    _cached_choice(tmp_path / "cache", 1, bf16_faster=True)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--data", "tiny", "--out", str(out),
                                    "--set", "epochs=1", "--set", "threads=1",
                                    "--set", "precision=auto"],
                             env={"MSDN_TUNE_CACHE": str(tmp_path / "cache")})
    assert res.exit_code == 0, res.output
    want = "bf16" if HAS_BF16 else "fp32"
    line = next(x for x in res.output.splitlines() if x.startswith("precision "))
    assert line.startswith(f"precision {want} (auto: ")
    assert yaml.safe_load((out / "config.yaml").read_text())["precision"] == "auto"
    epoch = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert epoch["time/bf16"] == (1.0 if want == "bf16" else 0.0)
    assert json.loads((out / "final.json").read_text())["time/bf16"] == epoch["time/bf16"]
