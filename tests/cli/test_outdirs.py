"""Output folders (issue 14): `train --out`, `report --out` and `data synth --out` never overwrite
or append to a file msdn-tune did not write; a non-empty folder that is not ours is refused with
one `error:` line naming --force (or --resume); re-running on our own output works as before.

The import and extract commands have the same tests next to their other tests
(tests/data/test_importers.py, tests/data/test_extract.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from msdn_tune import outdir
from msdn_tune.cli import main
from msdn_tune.commands.report import _plots_into, is_plot_name
from msdn_tune.errors import ConfigError

TRAIN = ["train", "--data", "tiny", "--set", "epochs=1", "--set", "threads=1"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def users_folder(path: Path, *names: str) -> dict[str, str]:
    """A folder of a user's files (some with the names a run writes); returns its snapshot."""
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        (path / name).write_text(f"the user's own {name}\n")
    return snapshot(path)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_refused(res, *needles: str) -> None:
    """Exit 2, no traceback, and exactly one line on stderr: `error: ...` naming `needles`."""
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ------------------------------------------------------------------------------------- train


def test_train_refuses_a_folder_holding_a_users_run_files(tmp_path):
    """The issue's case: config.yaml, final.json, metrics.jsonl of the user's: not touched."""
    out = tmp_path / "mine"
    before = users_folder(out, "config.yaml", "final.json", "metrics.jsonl")
    assert_refused(invoke(*TRAIN, "--out", str(out)), str(out), "--force", "--resume")
    assert snapshot(out) == before
    # --force adds files next to others only when no name is taken: here all three are
    res = invoke(*TRAIN, "--out", str(out), "--force")
    assert_refused(res, "config.yaml, final.json, metrics.jsonl", "never overwrites")
    assert snapshot(out) == before


def test_train_force_writes_next_to_a_users_other_files(tmp_path):
    out = tmp_path / "project"
    before = users_folder(out, "notes.txt", "data.csv")
    assert_refused(invoke(*TRAIN, "--out", str(out)), "not empty", "--force")
    assert snapshot(out) == before
    res = invoke(*TRAIN, "--out", str(out), "--force")
    assert res.exit_code == 0, res.output
    after = snapshot(out)
    assert {k: after[k] for k in before} == before
    assert {"checkpoint.pt", "config.yaml", "final.json", "metrics.jsonl",
            outdir.MARKER} <= set(after)
    marker = json.loads((out / outdir.MARKER).read_text())
    assert marker["command"] == "train" and "notes.txt" not in marker["files"]


def test_train_rerun_on_its_own_output_and_force_replaces_only_that_run(tmp_path):
    out = tmp_path / "run"
    assert invoke(*TRAIN, "--out", str(out)).exit_code == 0
    (out / "notes.txt").write_text("added by the user\n")
    kept = snapshot(out)
    # as before: a folder holding a run is refused without --resume
    assert_refused(invoke(*TRAIN, "--out", str(out)), "already holds a run", "--resume",
                   "--force")
    assert snapshot(out) == kept
    res = invoke("train", "--data", "tiny", "--set", "epochs=2", "--set", "threads=1",
                 "--out", str(out), "--force")
    assert res.exit_code == 0, res.output
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1.0, 2.0]  # started afresh: the replaced run's log is not appended to
    assert (out / "notes.txt").read_text() == "added by the user\n"


def test_train_into_an_empty_folder_and_resume_of_an_unmarked_run(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert invoke(*TRAIN, "--out", str(out)).exit_code == 0
    # a run folder written before folders were marked: its files are a run's, so it resumes
    (out / outdir.MARKER).unlink()
    res = invoke("train", "--data", "tiny", "--resume", str(out), "--set", "epochs=2")
    assert res.exit_code == 0, res.output
    assert json.loads((out / outdir.MARKER).read_text())["command"] == "train"
    # ... but not one that also holds files of someone else's: which are the run's is unknown
    (out / outdir.MARKER).unlink()
    (out / "notes.txt").write_text("x")
    before = snapshot(out)
    res = invoke("train", "--data", "tiny", "--resume", str(out), "--set", "epochs=3")
    assert_refused(res, "--resume", "--force")
    assert snapshot(out) == before


def test_train_out_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    res = invoke(*TRAIN, "--out", str(path))  # click's own check of the option
    assert res.exit_code == 2 and "is a file" in res.output
    with pytest.raises(ConfigError, match="is a file, expected a folder"):
        outdir.inspect(path, command="train", owns=lambda n: False, force=True)
    assert path.read_text() == "x"


# ------------------------------------------------------------------------------------ report


@pytest.fixture(scope="module")
def optuna_study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2) + t.suggest_float("m", 0, 1),
                   n_trials=4)
    return study


def _report(path: Path, study, *, force: bool = False) -> list[Path]:
    target = outdir.inspect(path, command="report", owns=is_plot_name, force=force)
    return _plots_into(target, study, ["best/H"])


def test_report_plot_names():
    for name in ("history.png", "history_best_H.html", "parallel_coordinate.png",
                 "param_importances_val_U.png", "pareto_front.html"):
        assert is_plot_name(name), name
    for name in ("notes.txt", "history.txt", "my_history.png", "pareto_front_2.png"):
        assert not is_plot_name(name), name


def test_report_out_refuses_a_users_folder_and_reruns_on_its_own(tmp_path, optuna_study):
    out = tmp_path / "figures"
    before = users_folder(out, "history.png", "notes.txt")
    with pytest.raises(ConfigError, match="not empty.*--force"):
        _report(out, optuna_study)
    with pytest.raises(ConfigError, match="history.png there was not written.*not even with"):
        _report(out, optuna_study, force=True)
    assert snapshot(out) == before

    (out / "history.png").unlink()
    before = snapshot(out)
    plots = _report(out, optuna_study, force=True)
    assert {p.name for p in plots} >= {"history.png", "parallel_coordinate.png"}
    assert {k: snapshot(out)[k] for k in before} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".msdn-tune-report.tmp")]
    # our own output: drawn again over the same files, no --force needed
    again = _report(out, optuna_study)
    assert sorted(again) == sorted(plots)
    assert (out / "notes.txt").read_text() == "the user's own notes.txt\n"


def test_report_cli_has_force_and_explains_it():
    res = invoke("report", "--help")
    assert res.exit_code == 0 and "--force" in res.output and "Never" in res.output


# --------------------------------------------------------------------------------- data synth


def test_synth_refuses_a_users_folder_even_with_force(tmp_path):
    out = tmp_path / "stuff"
    before = users_folder(out, "notes.txt", "meta.json")
    for extra in ([], ["--force"]):
        res = invoke("data", "synth", "--preset", "tiny", "--out", str(out), *extra)
        assert_refused(res, str(out), "--force")
        assert snapshot(out) == before
    assert not list(tmp_path.glob(".stuff*"))


def test_synth_force_keeps_a_store_holding_a_users_file(tmp_path):
    out = tmp_path / "store"
    assert invoke("data", "synth", "--preset", "tiny", "--out", str(out)).exit_code == 0
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    res = invoke("data", "synth", "--preset", "tiny", "--out", str(out), "--force")
    assert_refused(res, "notes.txt", "never deletes")
    assert snapshot(out) == before


def test_synth_writes_into_an_empty_folder(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    res = invoke("data", "synth", "--preset", "tiny", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert (out / "meta.json").is_file()


# ---------------------------------------------------------------------------- the rules alone


def test_marker_of_another_command_or_a_hostile_one_is_not_ours(tmp_path):
    def owns(name: str) -> bool:
        return name == "a.txt"

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / outdir.MARKER).write_text(json.dumps({"format": 1, "command": "report",
                                                    "files": ["a.txt"]}))
    (folder / "a.txt").write_text("x")
    with pytest.raises(ConfigError, match="made by msdn-tune report, not train"):
        outdir.inspect(folder, command="train", owns=owns, force=False)
    with pytest.raises(ConfigError, match="never overwrites"):  # the marker's name is taken
        outdir.inspect(folder, command="train", owns=owns, force=True)
    for hostile in ("[" * 100_000, "1" * 5000, '{"format": 1, "command": [], "files": []}',
                    "\xff\xfe"):
        (folder / outdir.MARKER).write_text(hostile, errors="surrogateescape")
        assert outdir.read_marker(folder) is None
        with pytest.raises(ConfigError, match="not empty"):
            outdir.inspect(folder, command="report", owns=owns, force=False)


def test_claim_records_a_file_before_it_is_written(tmp_path):
    target = outdir.inspect(tmp_path / "new" / "deeper", command="train",
                            owns=lambda n: n == "a.txt", force=False)
    target.create()
    path = target.claim("a.txt")
    assert not path.exists()
    assert outdir.read_marker(target.path)["files"] == ["a.txt"]
    path.write_text("ours")
    again = outdir.inspect(target.path, command="train", owns=lambda n: n == "a.txt",
                           force=False)
    assert again.marked and again.ours == {"a.txt"}


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path):
    """Found by the review of every command's options: /proc (or any unwritable place) as
    `train --out` was a traceback from mkdir."""
    from msdn_tune.cli import main

    res = CliRunner().invoke(main, ["train", "--data", "tiny", "--set", "epochs=1",
                                    "--out", "/proc/msdn-tune-out"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "cannot write there" in errors[0], res.output


def test_ui_port_out_of_range_is_a_usage_error():
    from msdn_tune.cli import main

    for port in ("99999", "-1", "0"):
        res = CliRunner().invoke(main, ["ui", "--port", port])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert "not in the range 1<=x<=65535" in res.output
