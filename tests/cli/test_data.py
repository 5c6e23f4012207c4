"""`msdn-tune data synth` and `msdn-tune data info`: output and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from msdn_tune.cli import main


def run(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env)


def test_synth_then_info(tmp_path):
    out = tmp_path / "store"
    res = run("data", "synth", "--preset", "tiny", "--out", str(out), "--seed", "2")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == str(out)
    assert "synthetic:tiny" in res.output and "800 x 48 x 16" in res.output

    res = run("data", "info", str(out))
    assert res.exit_code == 0, res.output
    for text in (
        "msdn-tune synth",
        "format version: 1",
        "float16",
        "8 unseen",
        "trainval",
        "word vectors:   yes, dim 300",
        "attributes:     24",
    ):
        assert text in res.output, text

    res = run("data", "info", str(out), "--json", "--verify")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["n_unseen"] == 8 and info["split_sizes"]["test_unseen"] > 0


def test_info_resolves_presets_through_the_cache(tmp_path):
    res = run("data", "info", "tiny", env={"MSDN_TUNE_CACHE": str(tmp_path)})
    assert res.exit_code == 0, res.output
    assert str(tmp_path / "benchmarks" / "tiny-seed0-v1") in res.output


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "store"
    assert run("data", "synth", "--preset", "tiny", "--out", str(out)).exit_code == 0
    res = run("data", "synth", "--preset", "tiny", "--out", str(out))
    assert res.exit_code == 2 and str(out) in res.output and "--force" in res.output
    res = run(
        "data", "synth", "--preset", "tiny", "--out", str(out), "--force", "--dtype", "float32"
    )
    assert res.exit_code == 0 and "float32" in res.output


def test_bad_input_exits_2_with_a_message_and_no_traceback(tmp_path):
    cases = [
        (["data", "info", str(tmp_path / "missing")],
         "presets: confounded, confounded-tiny, cub-like, demo, tiny"),
        (["data", "synth", "--preset", "huge", "--out", str(tmp_path / "x")], "unknown synthetic"),
    ]
    store = tmp_path / "s"
    run("data", "synth", "--preset", "tiny", "--out", str(store))
    (store / "meta.json").write_text("{")
    cases.append((["data", "info", str(store)], "meta.json: line 1, column 2: invalid JSON"))
    for args, message in cases:
        res = run(*args)
        assert res.exit_code == 2, (args, res.output)
        assert "error: " in res.output and message in res.output, res.output
    # And as a real process: one clean line on stderr, no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "msdn_tune.cli", *cases[-1][0]], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
