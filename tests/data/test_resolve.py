"""Resolving a benchmark spec: store paths, cached presets, concurrent first use, bad specs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from msdn_tune.data.resolve import (
    check_spec,
    default_cache_dir,
    open_benchmark,
    parse_preset,
    resolve_benchmark,
)
from msdn_tune.data.store import FORMAT_VERSION, BenchmarkStore
from msdn_tune.errors import DataError


def test_preset_is_generated_once_into_the_cache(tmp_path):
    path = resolve_benchmark("tiny", cache_dir=tmp_path)
    assert path == tmp_path / f"tiny-seed0-v{FORMAT_VERSION}" and path.is_absolute()
    stamp = (path / "meta.json").stat().st_mtime_ns
    assert resolve_benchmark("synth:tiny", cache_dir=tmp_path) == path
    assert (path / "meta.json").stat().st_mtime_ns == stamp  # reused, not regenerated
    other = resolve_benchmark("tiny@seed=3", cache_dir=tmp_path)
    assert other.name == "tiny-seed3-v1"
    a, b = BenchmarkStore.open(path), open_benchmark("tiny@seed=3", cache_dir=tmp_path)
    assert not np.array_equal(a.gather([0]).numpy(), b.gather([0]).numpy())
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        "tiny-seed0-v1",
        "tiny-seed3-v1",
    ]


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MSDN_TUNE_CACHE", str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root" / "benchmarks"
    path = resolve_benchmark("tiny")
    assert path == tmp_path / "root" / "benchmarks" / "tiny-seed0-v1"
    monkeypatch.delenv("MSDN_TUNE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "msdn-tune" / "benchmarks"


def test_store_directories_resolve_to_their_absolute_path(tmp_path, monkeypatch):
    path = resolve_benchmark("tiny", cache_dir=tmp_path)
    monkeypatch.chdir(tmp_path)
    assert resolve_benchmark(path.name) == path
    assert open_benchmark(str(path)).path == path
    (path / "arrays.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="arrays.npz"):
        resolve_benchmark(path)
    with pytest.raises(DataError, match="unusable.*delete the directory"):
        resolve_benchmark("tiny", cache_dir=tmp_path)


@pytest.mark.parametrize("spec", ["tinyy", "/no/such/store", "synth:huge", "tiny@seed=x"])
def test_unknown_specs_name_the_spec_and_list_presets(tmp_path, spec):
    presets = "confounded, confounded-tiny, cub-like, demo, tiny"
    with pytest.raises(DataError, match=f"{spec}.*presets: {presets}"):
        resolve_benchmark(spec, cache_dir=tmp_path)


def test_a_file_is_not_a_store(tmp_path):
    (tmp_path / "f.arrow").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        resolve_benchmark(tmp_path / "f.arrow")


def test_parse_preset():
    assert parse_preset("demo") == ("demo", 0)
    assert parse_preset("synth:cub-like@seed=12") == ("cub-like", 12)
    assert parse_preset("nope") is None


def test_concurrent_first_use_agrees_on_one_store(tmp_path):
    script = textwrap.dedent(
        f"""
        from msdn_tune.data.resolve import open_benchmark
        st = open_benchmark("tiny@seed=7", cache_dir={str(tmp_path)!r})
        print(st.path, float(st.gather([0, 1]).float().sum()))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert len(set(outs)) == 1, outs
    assert outs[0].startswith(str(tmp_path / "tiny-seed7-v1"))
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


# issue 14: `--data` values that cannot name anything were an OSError traceback
@pytest.mark.parametrize(
    "spec, needle",
    [
        ("x" * 300, "longer than the 255 bytes"),
        ("dir/" + "y" * 256 + "/store", "longer than the 255 bytes"),
        ("z" * 5000, "longer than any path"),
        ("a\0b", "NUL"),
        ("   ", "empty"),
        ("tiny@seed=" + "9" * 30, "seed must be from 0 to 4294967295"),
    ],
    ids=["300-character name", "long part", "5000 characters", "NUL", "blank", "huge seed"],
)
def test_impossible_data_values_are_one_line(tmp_path, spec, needle):
    from click.testing import CliRunner

    from msdn_tune.cli import main

    with pytest.raises(DataError, match=needle):
        resolve_benchmark(spec, cache_dir=tmp_path)
    for args in (["data", "info", spec], ["train", "--data", spec, "--out", str(tmp_path / "r")]):
        res = CliRunner().invoke(main, args, env={"MSDN_TUNE_CACHE": str(tmp_path / "cache")})
        assert res.exit_code == 2, res.output
        assert res.exception is None or isinstance(res.exception, SystemExit)
        errors = [line for line in res.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0] and len(errors[0]) < 300, res.output
    assert not (tmp_path / "r").exists()


def test_a_tilde_naming_no_user_stays_literal_and_is_a_clean_error():
    """`--data ~0` (hypothesis found it): pathlib's expanduser raises RuntimeError for a user
    that does not exist; the shell, and os.path.expanduser, leave the text as it is, so the
    spec is an unknown benchmark (DataError, exit 2), not a traceback."""
    assert str(check_spec("~0")) == "~0"
    with pytest.raises(DataError, match="'~0' is neither an existing store directory"):
        open_benchmark("~0")
