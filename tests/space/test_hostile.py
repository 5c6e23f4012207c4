"""Issue 14, space files: one regression test per class of hostile input found by mutating
space files. Each goes through the command line (`msdn-tune space validate`, in-process), which
must answer with one `error:` line and exit 2: never a traceback, a hang, or a file accepted that
fails once a study runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from msdn_tune.space import json_schema
from tests.space.cli import assert_refused, space
from tests.space.test_space import base_doc

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, doc: dict | str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def _with(path: str, value: object) -> dict:
    doc = base_doc()
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[p]
    node[last] = value
    return doc


def _text_with(line: str) -> str:
    """The base document with one raw YAML line appended (tags, dates, odd scalars)."""
    return yaml.safe_dump(base_doc(), sort_keys=False) + line + "\n"


# ------------------------------------------------------------------------------------------------
# PyYAML's constructor errors (safeload), checked through the command line


@pytest.mark.parametrize(
    "line",
    [
        "extra: 2024-02-30",
        "extra: !!bool maybe",
        "extra: 0x_",
        "extra: " + "9" * 5000,
        "extra: !!float x",
        "extra: !!int x",
        "extra: !!timestamp x",
        "unknown_key: {a: !!int 1.5}",
    ],
)
def test_yaml_constructor_errors_are_one_line(tmp_path, line):
    assert_refused(space("validate", _write(tmp_path, _text_with(line))), "s.yaml")


def test_deep_nesting_is_refused(tmp_path):
    text = _text_with("extra: " + "[" * 300 + "]" * 300)
    assert_refused(space("validate", _write(tmp_path, text)), "nested deeper")


def test_alias_bomb_as_parameter_type_is_refused_quickly(tmp_path):
    bomb = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    bomb += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    doc = base_doc()
    doc["params"]["lr"]["type"] = "PLACEHOLDER"
    text = yaml.safe_dump(doc, sort_keys=False)
    text = text.replace("PLACEHOLDER", "*a8")
    text = "bombs:\n" + "\n".join("  " + b for b in bomb) + "\n" + text
    start = time.monotonic()
    assert_refused(space("validate", _write(tmp_path, text)), "s.yaml")
    assert time.monotonic() - start < 5


def test_did_you_mean_never_stringifies_a_huge_value(tmp_path):
    doc = _with("params.lr.type", ["float"] * 50_000)
    line = assert_refused(space("validate", _write(tmp_path, doc)), "params.lr.type")
    assert len(line) < 400
    doc = _with("sampler.type", "t" * 200_000)
    line = assert_refused(space("validate", _write(tmp_path, doc)), "sampler.type")
    assert len(line) < 400


# ------------------------------------------------------------------------------------------------
# Library exceptions that escaped validation


@pytest.mark.parametrize("key", ["sampler.type", "scheduler.type"])
@pytest.mark.parametrize("value", [["tpe"], {"type": "tpe"}, [["a"]]])
def test_unhashable_section_type(tmp_path, key, value):
    assert_refused(space("validate", _write(tmp_path, _with(key, value))), key, "unknown")


def test_400_digit_integer_in_a_float_setting(tmp_path):
    doc = _with("fixed.w1", 10**400)
    assert_refused(space("validate", _write(tmp_path, doc)), "fixed.w1", "digits")


def test_denormal_step(tmp_path):
    doc = _with("params.margin.step", 5.0e-324)
    assert_refused(space("validate", _write(tmp_path, doc)), "params.margin.step", "too small")


@pytest.mark.parametrize("data", ["x" * 300, "/tmp/" + "y" * 256 + "/z", "/a" * 2100, "a\0b"])
def test_data_too_long_for_the_file_system(tmp_path, data):
    assert_refused(space("validate", _write(tmp_path, _with("data", data))), "data:")


def test_storage_path_too_long_for_the_file_system(tmp_path):
    doc = _with("storage_path", "./" + "s" * 300)
    assert_refused(space("validate", _write(tmp_path, doc)), "storage_path:")


def test_space_file_name_too_long(tmp_path):
    line = assert_refused(space("validate", tmp_path / ("n" * 300 + ".yaml")))
    assert "cannot read" in line or "no such file" in line


@pytest.mark.parametrize("key", ["\r", "a\nb", "\u2028", "k" * 5000])
def test_unknown_key_is_shown_on_one_bounded_line(tmp_path, key):
    doc = base_doc()
    doc[key] = 1
    assert_refused(space("validate", _write(tmp_path, doc)), "unknown key")
    doc = base_doc()
    doc["sampler"][key] = 1
    assert_refused(space("validate", _write(tmp_path, doc)), "sampler.", "unknown option")


def test_file_name_that_is_no_study_name(tmp_path):
    doc = base_doc()
    del doc["name"]
    path = _write(tmp_path, doc, "my study (copy).yaml")
    assert_refused(space("validate", path), "name:", "not a valid study name")


# ------------------------------------------------------------------------------------------------
# Accepted, then broken once a study ran


def test_step_larger_than_the_range(tmp_path):
    doc = _with("params.margin.step", 1.0e10)
    assert_refused(space("validate", _write(tmp_path, doc)), "params.margin.step", "at most")


def test_int_step_beyond_64_bits(tmp_path):
    doc = _with("params.batch_size.step", 10**400)
    assert_refused(space("validate", _write(tmp_path, doc)), "params.batch_size.step")


def test_int_step_larger_than_the_range(tmp_path):
    doc = _with("params.batch_size.step", 64)
    assert_refused(space("validate", _write(tmp_path, doc)), "params.batch_size.step", "at most")


def test_nested_default_is_expanded_like_the_shell(tmp_path, monkeypatch):
    monkeypatch.delenv("MSDN_T_A", raising=False)
    monkeypatch.setenv("MSDN_T_B", str(tmp_path / "b"))
    path = _write(tmp_path, _with("data", "${MSDN_T_A:-${MSDN_T_B:-/x}}"))
    result = space("validate", path)
    assert result.exit_code == 0, result.output
    assert f"data {tmp_path / 'b'}" in result.output
    monkeypatch.delenv("MSDN_T_B")
    assert "data /x" in space("validate", path).output


def test_unclosed_nested_default_is_refused(tmp_path):
    doc = _with("data", "${MSDN_T_A:-${MSDN_T_B:-/x}")
    assert_refused(space("validate", _write(tmp_path, doc)), "data:", "unclosed")


@pytest.mark.parametrize("seed", [2**70, -1, 2**32])
def test_fixed_seed_out_of_range(tmp_path, seed):
    assert_refused(space("validate", _write(tmp_path, _with("fixed.seed", seed))), "fixed.seed")


def test_searched_seed_out_of_range(tmp_path):
    doc = base_doc()
    doc["params"]["seed"] = {"type": "categorical", "choices": [1, 2**40]}
    assert_refused(space("validate", _write(tmp_path, doc)), "params.seed.choices[1]")
    doc["params"]["seed"] = {"type": "int", "low": 0, "high": 2**33}
    assert_refused(space("validate", _write(tmp_path, doc)), "params.seed.high")


@pytest.mark.parametrize("seed", [-1, 2**40])
def test_sampler_seed_out_of_range(tmp_path, seed):
    doc = _with("sampler.seed", seed)
    assert_refused(space("validate", _write(tmp_path, doc)), "sampler.seed")


@pytest.mark.parametrize(
    "key,value",
    [
        ("num_samples", 10**7),
        ("max_concurrent_trials", 10**6),
        ("fixed.epochs", 10**9),
        ("fixed.threads", 2**70),
        ("fixed.batch_size", 2**40),
        ("fixed.lr", 10**400),
        ("resources.cpu", 10**6),
        ("resources.cpu", 1e-9),
        ("resources.gpu", 1e-9),
        ("resources.gpu", 10**4),
        ("scheduler.brackets", 10**9),
        ("scheduler.reduction_factor", 1.0000001),
        ("sampler.n_startup_trials", 10**12),
        ("params.lr.low", -(10**400)),
        ("params.batch_size.high", 2**64),
        ("tracking.experiment", "e" * 300),
    ],
)
def test_numbers_are_bounded(tmp_path, key, value):
    assert_refused(space("validate", _write(tmp_path, _with(key, value))), key)


def test_range_wider_than_the_largest_float(tmp_path):
    doc = base_doc()
    doc["params"]["gamma"] = {"type": "float", "low": -1.7e308, "high": 1.7e308}
    assert_refused(space("validate", _write(tmp_path, doc)), "params.gamma.high", "largest float")
    doc["params"]["gamma"] = {"type": "float", "low": 0.0, "high": 1.7e308, "step": 0.5}
    assert_refused(space("validate", _write(tmp_path, doc)), "params.gamma.step", "too small")


def test_space_show_output_loads_back_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("MSDN_T_D", "${MSDN_T_UNSET}")  # shown expanded: `${` would read back
    monkeypatch.delenv("MSDN_T_UNSET", raising=False)
    path = _write(tmp_path, _with("data", "${MSDN_T_D}/x"))
    assert_refused(space("validate", path), "does not load back")
    good = _write(tmp_path, base_doc(), "good.yaml")
    shown = space("show", good)
    assert shown.exit_code == 0
    again = space("validate", _write(tmp_path, shown.output, "again.yaml"))
    assert again.exit_code == 0, again.output


def test_int_step_null_means_one_in_validator_and_schema(tmp_path):
    doc = _with("params.batch_size.step", None)
    result = space("validate", _write(tmp_path, doc))
    assert result.exit_code == 0, result.output
    jsonschema.validate(json.loads(json.dumps(doc)), json_schema())


def test_run_with_a_bad_space_stops_before_ray(tmp_path):
    """`run --space BAD`: one error line and exit 2, and Ray never started."""
    bad = {
        "unhashable": _with("sampler.type", ["tpe"]),
        "overflow": _with("params.margin.step", 5.0e-324),
        "long-data": _with("data", "x" * 300),
        "seed": _with("fixed.seed", 2**70),
        "step": _with("params.margin.step", 1.0e10),
        "sampler-seed": _with("sampler.seed", -1),
    }
    paths = [str(_write(tmp_path, doc, f"{name}.yaml")) for name, doc in bad.items()]
    code = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from msdn_tune.cli.main import main\n"
        "out = []\n"
        f"for p in {paths!r}:\n"
        "    r = CliRunner().invoke(main, ['run', '--space', p, '--no-tracking'])\n"
        "    out.append([r.exit_code, r.stderr, repr(r.exception)])\n"
        "ray = sys.modules.get('ray')\n"
        "print(json.dumps({'runs': out, 'ray': bool(ray and ray.is_initialized())}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=120, check=True,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ray"] is False
    for path, (exit_code, stderr, _exc) in zip(paths, report["runs"], strict=True):
        assert exit_code == 2, (path, stderr)
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (path, stderr)


def test_space_validate_stays_light():
    """`space validate` gives the file to Optuna but loads no torch, Ray, MLflow or pyarrow."""
    demo = str(ROOT / "search_spaces" / "demo.yaml")
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from msdn_tune.cli.main import main\n"
        f"r = CliRunner().invoke(main, ['space', 'validate', {demo!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print([m for m in ('torch', 'ray', 'mlflow', 'pyarrow') if m in sys.modules])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
