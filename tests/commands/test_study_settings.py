"""Study set-up without a Ray instance: a resume whose settings differ from the study's own is
refused before anything starts, and importing the use case neither pulls in the heavy libraries
nor changes the environment. Bad path and URI options of `run`, `results`, `best`, `ui` and
`reproduce` (issue 14) are one `error:` line and exit 2, from the CLI in-process, before Ray
starts and with nothing written."""

from __future__ import annotations

import io
import json
import os

import pytest
from rich.console import Console

from msdn_tune.commands.study import run_study
from msdn_tune.errors import MsdnTuneError
from msdn_tune.space import parse_space
from msdn_tune.trials import STUDY_FILE
from tests.helpers.study import small_doc


def test_resume_with_another_num_samples_is_refused(tmp_path):
    space = parse_space(small_doc(tmp_path))
    exp = tmp_path / "results" / "s"
    exp.mkdir(parents=True)
    (exp / STUDY_FILE).write_text(json.dumps({"space": {**space.to_dict(), "num_samples": 2}}))
    with pytest.raises(MsdnTuneError, match=r"num_samples: 2 -> 4.*--warm-start s"):
        run_study(space, resume=True, tracking=False)


def test_resume_with_changed_trial_settings_is_refused_naming_each_change(tmp_path):
    """Ray's restore would ignore a new concurrency and rebuild trials with new fixed settings:
    both are refused, every changed key named, nothing written."""
    first = parse_space(small_doc(tmp_path))
    exp = tmp_path / "results" / "s"
    exp.mkdir(parents=True)
    stored = json.dumps({"space": first.to_dict()})
    (exp / STUDY_FILE).write_text(stored)
    changed = parse_space(small_doc(
        tmp_path, fixed={"dataset": "synthetic", "epochs": 6, "margin": 0.5},
        max_concurrent_trials=3,
        params={"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}))
    with pytest.raises(MsdnTuneError) as err:
        run_study(changed, resume=True, tracking=False)
    text = str(err.value)
    assert "fixed.margin: (not set) -> 0.5" in text
    assert "max_concurrent_trials: 1 -> 3" in text
    assert "params.lr.high: 0.01 -> 0.1" in text
    assert "num_samples" not in text and "fixed.epochs" not in text  # unchanged: not listed
    assert (exp / STUDY_FILE).read_text() == stored and sorted(p.name for p in exp.iterdir()) == [
        STUDY_FILE]


def test_next_steps_name_the_configured_storage_and_never_offer_a_resume_that_extends(tmp_path):
    from rich.console import Console

    from msdn_tune.cli.display import print_next_steps

    console = Console(record=True, width=300)
    mirror = tmp_path / "mirror" / "s"
    for complete in (False, True):
        print_next_steps(console, path=mirror, space_file="s.yaml", name="s", complete=complete,
                         best=None, data="tiny", fixed={}, tracking_uri=None,
                         storage="s3://bucket/studies")
    text = console.export_text()
    assert "--storage-path s3://bucket/studies --resume" in text
    assert str(tmp_path / "mirror") + " --resume" not in text
    assert "--resume --num-samples" not in text and f"--warm-start {mirror}" in text


def test_importing_the_study_driver_leaves_ray_tune_and_torch_for_later():
    """`msdn-tune run` starts Ray first and imports Ray Tune, Optuna and MLflow while Ray comes up
    (seconds each): importing the driver module, or resolving a store, must not pull them in."""
    import subprocess
    import sys

    code = ("import sys; import msdn_tune.cli, msdn_tune.commands.study, msdn_tune.data.resolve, "
            "msdn_tune.integrations.tracking_uri; "
            "heavy = [m for m in ('ray.tune', 'torch', 'mlflow', 'optuna') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_importing_the_study_driver_leaves_the_environment_alone_until_a_study_starts(
        tmp_path, monkeypatch):
    """Ray's defaults for a study (msdn_tune._startup.RAY_ENV_DEFAULTS) are set by run_study, not
    by importing it; what the environment already says wins."""
    import subprocess
    import sys

    from msdn_tune import _startup

    code = ("import os, ray; before = dict(os.environ); import msdn_tune.commands.study; "
            "print(sorted(set(os.environ.items()) ^ set(before.items())))")
    env = {k: v for k, v in os.environ.items() if k not in dict(_startup.RAY_ENV_DEFAULTS)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.strip() == "[]", out.stdout

    for key, _ in _startup.RAY_ENV_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_CHDIR_TO_TRIAL_DIR", "1")
    space = parse_space(small_doc(tmp_path))
    exp = tmp_path / "results" / "s"
    exp.mkdir(parents=True)
    (exp / STUDY_FILE).write_text(json.dumps({"space": {**space.to_dict(), "num_samples": 2}}))
    with pytest.raises(MsdnTuneError):  # refused before Ray starts: only the defaults are set
        run_study(space, resume=True, tracking=False)
    assert os.environ["RAY_CHDIR_TO_TRIAL_DIR"] == "1"
    assert all(os.environ[k] == v for k, v in _startup.RAY_ENV_DEFAULTS
               if k != "RAY_CHDIR_TO_TRIAL_DIR")


# --- path and URI options refused before Ray starts (issue 14) ----------------------------------


def _invoke(args, cwd):
    """`msdn-tune ARGS` in-process, in `cwd`; (exit code, output, error lines)."""
    from click.testing import CliRunner

    from msdn_tune.cli.main import main

    old = os.getcwd()
    os.chdir(cwd)
    try:
        res = CliRunner().invoke(main, args)
    finally:
        os.chdir(old)
    out = res.output
    assert "Traceback" not in out and (res.exception is None
                                       or isinstance(res.exception, SystemExit)), out
    return res.exit_code, out, [ln for ln in out.splitlines() if ln.startswith("error:")]


def _snapshot(root):
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else b"")
                  for p in root.rglob("*"))


BAD_RUN_OPTIONS = {
    "storage under a file": (["--storage-path", "{tmp}/afile/studies"], "is a file"),
    "storage in /proc": (["--storage-path", "/proc/studies"], "proc filesystem"),
    "storage is /proc itself": (["--storage-path", "/proc"], "proc filesystem"),
    "storage name too long": (["--storage-path", "{tmp}/" + "n" * 300], "longer than the 255"),
    "storage URI pyarrow cannot open": (["--storage-path", "bogus://x"], "pyarrow cannot open"),
    "unknown tracking scheme": (["--tracking-uri", "bogus://x"], "no tracking store"),
    "tracking database in /proc": (["--tracking-uri", "sqlite:////proc/m.db"], "cannot create"),
    "tracking database under a file": (["--tracking-uri", "sqlite:///{tmp}/afile/m.db"],
                                       "does not exist"),
    "tracking file store": (["--tracking-uri", "file:///{tmp}/mlruns"], "file store"),
    "warm start from a file": (["--warm-start", "{tmp}/afile", "--no-tracking"], "a file"),
    "warm start from nothing": (["--warm-start", "nope", "--no-tracking"], "not a study folder"),
    "space file is a folder": (["--space", "{tmp}"], "not a file"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUN_OPTIONS))
def test_run_refuses_a_bad_path_or_uri_option_in_one_line_before_ray_starts(tmp_path, case,
                                                                              monkeypatch):
    import ray

    from tests.helpers.study import _space

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    space = _space(tmp_path, "s")
    (tmp_path / "afile").write_text("a user's file\n")
    options, expected = BAD_RUN_OPTIONS[case]
    args = ["run", "--space", str(space)] + [o.format(tmp=tmp_path) for o in options]
    before = _snapshot(tmp_path)
    code, out, errors = _invoke(args, tmp_path)
    assert code == 2 and len(errors) == 1 and expected in errors[0], out
    assert len(errors[0]) < 400, errors[0]  # the value is quoted cut short
    assert not ray.is_initialized()
    assert _snapshot(tmp_path) == before  # nothing written: no storage, study or database


@pytest.mark.parametrize("args, expected", [
    (["results", "x" * 300], "longer than 255"),
    (["results", "a/b"], "not a study folder"),
    (["results", "afile"], "a file, not a study folder"),
    (["results", "s", "--storage-path", "afile"], "a file, not a folder"),
    (["best", "s", "--storage-path", "/proc"], "not a study folder"),
    (["best", "s", "--storage-path", "n" * 300], "longer than 255"),
    (["results", "s", "--parquet", "."], "a folder"),
    (["results", "s", "--parquet", "afile"], "not a parquet file"),
    (["ui", "--tracking-uri", "bogus://x"], "no tracking store"),
    (["reproduce", "0123abc", "--tracking-uri", "bogus://x"], "no tracking store"),
    (["reproduce", "0123abc", "--tracking-uri", "http://[::1"], "not a valid URL"),
])
def test_study_commands_refuse_bad_folders_names_and_uris_in_one_line(tmp_path, args, expected,
                                                                      monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "afile").write_text("a user's file\n")
    before = _snapshot(tmp_path)
    code, out, errors = _invoke(args, tmp_path)
    assert code == 2 and len(errors) == 1 and expected in errors[0], out
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("content, expected", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "a JSON object expected"),
    ('{"space": "a string"}', "'space' is 'a string', expected an object"),
    ('{"parent_run_id": 7, "space": {}}', "'parent_run_id' is 7, expected a string"),
    ('{"wall_s": ' + "9" * 400 + "}", "'wall_s' is <an integer of about"),
    ('{"complete": "yes"}', "expected true or false"),
    ("[" * 200 + "]" * 200, "nested deeper"),
    ('{"x": ' + "1" * 5000 + "}", "invalid JSON"),
])
def test_corrupt_study_metadata_is_one_line_naming_the_file(tmp_path, content, expected):
    from msdn_tune.trials import read_study_meta

    exp = tmp_path / "results" / "s"
    exp.mkdir(parents=True)
    (exp / STUDY_FILE).write_text(content)
    with pytest.raises(MsdnTuneError) as err:
        read_study_meta(exp)
    text = str(err.value)
    assert str(exp / STUDY_FILE) in text and expected in text and "\n" not in text
    assert len(text) < 400
    # the commands that read it say the same in one line
    code, out, errors = _invoke(["best", str(exp)], tmp_path)
    assert code == 2 and len(errors) == 1 and expected in errors[0], out


def test_a_resume_over_corrupt_metadata_is_refused_before_ray_starts(tmp_path):
    import ray

    space = parse_space(small_doc(tmp_path))
    exp = tmp_path / "results" / "s"
    exp.mkdir(parents=True)
    (exp / STUDY_FILE).write_text('{"space": [1]}')
    with pytest.raises(MsdnTuneError, match="'space' is \\[1\\], expected an object"):
        run_study(space, resume=True, tracking=False)
    assert not ray.is_initialized()
    assert (exp / STUDY_FILE).read_text() == '{"space": [1]}'


def test_a_study_folder_that_is_a_file_is_refused_before_ray_starts(tmp_path):
    import ray

    space = parse_space(small_doc(tmp_path))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "s").write_text("mine")
    with pytest.raises(MsdnTuneError, match="is a file, not a study folder"):
        run_study(space, tracking=False)
    assert not ray.is_initialized()
    assert (tmp_path / "results" / "s").read_text() == "mine"


def test_a_resume_takes_the_options_its_command_line_leaves_out_from_the_study(tmp_path):
    """The study ran with --num-samples 2 (the file says 4): `--resume` alone passes the settings
    check (it stops only at the missing Ray state of this fake study), while a file whose
    num_samples changed is still refused (test above) because the file, not the command line,
    set it."""
    space = parse_space(small_doc(tmp_path))
    exp = tmp_path / "results" / "s"
    exp.mkdir(parents=True)
    (exp / STUDY_FILE).write_text(json.dumps({
        "space": {**space.to_dict(), "num_samples": 2},
        "options": {"num_samples": 2, "address": None}, "tracking_uri": None}))
    with pytest.raises(MsdnTuneError, match="--resume: no study to resume at"):
        run_study(space, resume=True)
    with pytest.raises(MsdnTuneError, match=r"num_samples: 2 -> 3"):  # given: never overridden
        run_study(space.with_overrides(num_samples=3), resume=True, given={"num_samples": 3})


def test_the_resume_command_spells_out_every_option_of_the_study():
    import shlex

    from msdn_tune.commands.study import resume_command

    meta = {"name": "cub run", "space_file": "/s/cub.yaml", "storage_path": "s3://b/studies",
            "space": {"num_samples": 64, "max_concurrent_trials": 8},
            "tracking_uri": "http://127.0.0.1:5000",
            "options": {"address": "10.0.0.1:6379", "storage_shared": True}}
    assert shlex.split(resume_command(meta)) == [
        "msdn-tune", "run", "--space", "/s/cub.yaml", "--name", "cub run",
        "--storage-path", "s3://b/studies", "--num-samples", "64", "--max-concurrent", "8",
        "--tracking-uri", "http://127.0.0.1:5000", "--address", "10.0.0.1:6379",
        "--storage-shared", "--resume"]
    untracked = resume_command({**meta, "tracking_uri": None, "options": {}})
    assert "--no-tracking" in untracked and "--address" not in untracked


def test_the_resume_command_spells_out_the_confirmation_stage():
    import shlex

    from msdn_tune.commands.study import resume_command

    meta = {"name": "s", "storage_path": "/r", "tracking_uri": None,
            "space": {"num_samples": 4, "confirm": {"top_k": 2, "seeds": 5}}}
    words = shlex.split(resume_command(meta))
    assert words[words.index("--confirm-top") + 1] == "2"
    assert words[words.index("--confirm-seeds") + 1] == "5"
    assert "--confirm-top" not in resume_command({**meta, "space": {"confirm": None}})


def test_a_resume_takes_the_confirmation_stage_its_command_line_gave_from_the_study(tmp_path):
    """`run --confirm-top 2` then `--resume` alone: the study's own confirm section is used, not
    refused as a change (the file has none)."""
    space = parse_space(small_doc(tmp_path))
    exp = tmp_path / "results" / "s"
    exp.mkdir(parents=True)
    confirm = {"top_k": 2, "seeds": 3}
    (exp / STUDY_FILE).write_text(json.dumps({
        "space": {**space.to_dict(), "confirm": confirm},
        "options": {"confirm": confirm}, "tracking_uri": None}))
    with pytest.raises(MsdnTuneError, match="--resume: no study to resume at"):
        run_study(space, resume=True)
    with pytest.raises(MsdnTuneError, match=r"confirm.top_k: 2 -> 1"):  # given: never overridden
        run_study(space.with_overrides(confirm={"top_k": 1, "seeds": 3}), resume=True,
                  given={"confirm": {"top_k": 1, "seeds": 3}})


def test_a_study_run_with_confirm_top_0_resumes_without_the_files_confirmation(tmp_path):
    """`run --confirm-top 0` over a file that confirms: the printed resume command and
    `--resume` alone both keep it off, instead of being refused as a change."""
    from msdn_tune.commands.study import resume_command

    space = parse_space(small_doc(tmp_path, confirm={"top_k": 2, "seeds": 2}))
    exp = tmp_path / "results" / "s"
    exp.mkdir(parents=True)
    meta = {"space": space.with_overrides(confirm=False).to_dict(),
            "options": {"confirm": False}, "tracking_uri": None}
    (exp / STUDY_FILE).write_text(json.dumps(meta))
    with pytest.raises(MsdnTuneError, match="--resume: no study to resume at"):
        run_study(space, resume=True)  # the settings check passed
    assert "--confirm-top 0 " in resume_command({**meta, "name": "s", "storage_path": "/r"})


def test_a_study_from_before_the_confirmation_stage_resumes_without_one(tmp_path):
    space = parse_space(small_doc(tmp_path, confirm={}))
    exp = tmp_path / "results" / "s"
    exp.mkdir(parents=True)
    old = {k: v for k, v in space.to_dict().items() if k != "confirm"}
    (exp / STUDY_FILE).write_text(json.dumps({"space": old, "tracking_uri": None}))
    shown = io.StringIO()
    with pytest.raises(MsdnTuneError, match="--resume: no study to resume at"):
        run_study(space, resume=True, console=Console(file=shown, width=300))
    assert "resuming with the study's own confirm=False" in shown.getvalue()
