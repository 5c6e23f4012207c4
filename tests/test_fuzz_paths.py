"""Property-based fuzzing of every command option that takes a path or a URI (issue 14).

Each example runs one command in-process (click's CliRunner on ``msdn_tune.cli.main``) in a
fresh sandbox folder that is also its HOME, cwd and msdn-tune cache, holding a user's file, a
user's folder with a file in it, and a valid study file. The option values mix those, ``/proc``
and ``/sys`` paths, ``/dev/null``, names over 255 bytes, NUL-free unicode, and URIs with random
schemes. Every example must end with exit code 0 or 2 (the CLI's code for a user error), no
traceback, exactly one ``error:`` line when it is 2, within the hypothesis deadline, and with
every file that was in the sandbox before unchanged (SHA-256).

Ray must never start here, so the examples are built not to reach it: `run` always gets a
storage path or a tracking URI drawn from values it must refuse (checked before Ray starts, and
asserted: ``ray.is_initialized()`` stays False); `train` and `evaluate` always get a ``--data``
that is neither a store nor a preset, so they never train.

Budget: about 30 s on 2 loaded cores with the default 25 examples per command. A larger run:
``MSDN_TUNE_FUZZ_SCALE=20 pytest tests/test_fuzz_paths.py`` (20 times the default examples).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import ray
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msdn_tune.cli.main import main
from msdn_tune.data.resolve import parse_preset
from tests.helpers.study import _space

# Property-based fuzzing: part of the full suite (.ci/run), not of the fast tier.
pytestmark = pytest.mark.slow

EXAMPLES = int(25 * float(os.environ.get("MSDN_TUNE_FUZZ_SCALE", "1")))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=20),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# --- values ------------------------------------------------------------------------------------

#: Paths relative to the sandbox (the cwd), and system paths no command may write to.
FIXED_PATHS = [
    "afile", "afile/x", "afile/x/y", "adir", "adir/notes.txt", "adir/new", "new/deeper", ".",
    "..", "~", "~/x", "study.yaml", "/proc", "/proc/self/status", "/proc/studies",
    "/proc/1/x", "/sys/kernel", "/sys/x", "/dev/null", "/dev/null/x", "/", "",
]

#: Schemes some library resolves (pyarrow's file systems, MLflow's stores, model URIs): a random
#: scheme is none of these, so it is certainly refused and never opens a network connection.
KNOWN_SCHEMES = {
    "file", "mock", "local", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az", "http",
    "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc",
    "models", "runs", "hf",
}

_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
unicode_text = st.text(_chars, max_size=40)
long_name = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"),
                    min_size=256, max_size=300)
scheme = st.from_regex(r"\A[A-Za-z][A-Za-z0-9+.-]{0,12}\Z").filter(
    lambda s: s.lower().split("+")[0] not in KNOWN_SCHEMES)
random_uri = st.builds(lambda s, rest: f"{s}://{rest}", scheme, unicode_text)

#: A path of many short names, over 1,000 characters: quoted in a message, it must be cut short.
deep_path = st.builds(lambda names: "adir/" + "/".join(names),
                      st.lists(st.text(st.characters(blacklist_categories=("Cs",),
                                                     blacklist_characters="\x00/"),
                                       min_size=100, max_size=120), min_size=10, max_size=12))

paths = st.one_of(
    st.sampled_from(FIXED_PATHS),
    deep_path,
    unicode_text,
    long_name,
    st.builds(lambda a, b: f"{a}/{b}", st.sampled_from(FIXED_PATHS), unicode_text),
    st.builds(lambda a, b: f"{a}/{b}", st.sampled_from(FIXED_PATHS), long_name),
    random_uri,
)

#: Storage paths `run` must refuse before Ray starts.
bad_storage = st.one_of(
    st.builds(lambda p: f"afile/{p}", deep_path),
    st.sampled_from(["afile", "afile/x", "adir/notes.txt/x", "/proc/studies", "/proc", "/sys/x",
                     "/dev/null", "/dev/null/x"]),
    st.builds(lambda a: f"adir/{a}", long_name),
    random_uri,
)

#: Tracking URIs `run` must refuse before Ray starts.
bad_tracking = st.one_of(
    st.sampled_from(["sqlite:////proc/m.db", "sqlite:///afile/m.db", "sqlite:///adir",
                     "sqlite:////dev/null/m.db", "file:///tmp/mlruns", "adir", "./mlruns"]),
    # a name over 255 bytes; without '?', which would start the URI's query and end the name
    st.builds(lambda a: f"sqlite:///adir/{a}.db", long_name.filter(lambda n: "?" not in n)),
    random_uri,
    unicode_text.filter(lambda s: "://" not in s and not s.strip().endswith(
        (".db", ".sqlite", ".sqlite3")) and s.strip() not in ("databricks", "databricks-uc")
        and s.strip() and not s.strip().startswith("sqlite:")),
)

#: Benchmarks that are neither a store nor a preset: `train` and `evaluate` never train.
not_data = paths.filter(lambda s: parse_preset(s) is None)

#: Longest error line accepted: our messages with two or three values cut to 80 characters fit;
#: a path of over 1,000 characters (`deep_path`) printed whole does not.
MAX_ERROR_LINE = 800

# --- one example -------------------------------------------------------------------------------


@contextlib.contextmanager
def sandbox() -> Iterator[Path]:
    """A fresh folder as cwd, HOME and cache, with a user's files and a valid study file."""
    root = Path(tempfile.mkdtemp(prefix="msdn-fuzz-")).resolve()
    (root / "home").mkdir()
    (root / "afile").write_text("a user's file\n")
    (root / "adir").mkdir()
    (root / "adir" / "notes.txt").write_text("a user's notes\n")
    _space(root, "study")  # study.yaml: a valid study whose storage is root/results
    saved_env = {k: os.environ.get(k) for k in ("HOME", "MSDN_TUNE_CACHE", "MLFLOW_TRACKING_URI",
                                                 "MLFLOW_ALLOW_FILE_STORE", "XDG_CACHE_HOME")}
    os.environ.update({"HOME": str(root / "home"), "MSDN_TUNE_CACHE": str(root / "cache"),
                       "XDG_CACHE_HOME": str(root / "cache")})
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)


def _checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def check(args: list[str], codes: tuple[int, ...] = (0, 2)) -> None:
    """Run `msdn-tune ARGS` in a sandbox and assert the properties of the module docstring."""
    with sandbox() as root:
        before = _checksums(root)
        res = CliRunner().invoke(main, args)
        out = res.output
        shown = f"msdn-tune {args!r} -> {res.exit_code}:\n{out[-2000:]}"
        errors = [ln for ln in out.splitlines() if ln.lower().startswith("error:")]
        assert res.exception is None or isinstance(res.exception, SystemExit), (
            f"{shown}\n{type(res.exception).__name__}: {res.exception}")
        assert "Traceback" not in out, shown
        assert res.exit_code in codes, shown
        if res.exit_code == 2:
            assert len(errors) == 1, shown
            assert len(errors[0]) <= MAX_ERROR_LINE, f"an unbounded message: {shown}"
        assert not ray.is_initialized(), shown
        after = _checksums(root)
        changed = [f for f, digest in before.items() if after.get(f) != digest]
        assert not changed, f"{shown}\nchanged or removed: {changed}"


# --- the commands ------------------------------------------------------------------------------


@FUZZ
@given(space=paths, valid_space=st.integers(0, 3), storage=st.one_of(st.none(), paths),
       tracking=st.one_of(st.none(), paths), warm=st.one_of(st.none(), paths),
       bad=st.sampled_from(["storage", "tracking"]), storage_bad=bad_storage,
       tracking_bad=bad_tracking)
def test_run(space, valid_space, storage, tracking, warm, bad, storage_bad, tracking_bad):
    space = "study.yaml" if valid_space else space  # most examples get past the space file
    storage = storage_bad if bad == "storage" else storage
    tracking = tracking_bad if bad == "tracking" else tracking
    args = ["run", "--space", space]
    for option, value in (("--storage-path", storage), ("--tracking-uri", tracking),
                          ("--warm-start", warm)):
        if value is not None:
            args += [option, value]
    check(args, codes=(2,))  # never reaches Ray: the storage or the tracking URI is refused


@FUZZ
@given(study=paths, storage=st.one_of(st.none(), paths), parquet=st.one_of(st.none(), paths))
def test_results(study, storage, parquet):
    args = ["results", study]
    if storage is not None:
        args += ["--storage-path", storage]
    if parquet is not None:
        args += ["--parquet", parquet]
    check(args, codes=(2,))  # the sandbox holds no study


@FUZZ
@given(study=paths, storage=st.one_of(st.none(), paths))
def test_best(study, storage):
    args = ["best", study] + (["--storage-path", storage] if storage is not None else [])
    check(args, codes=(2,))


@FUZZ
@given(study=paths, out=st.one_of(st.none(), paths), storage=st.one_of(st.none(), paths))
def test_report(study, out, storage):
    args = ["report", study, "--no-log"]
    if out is not None:
        args += ["--out", out]
    if storage is not None:
        args += ["--storage-path", storage]
    check(args, codes=(2,))


@FUZZ
@given(data=not_data, out=st.one_of(st.none(), paths))
def test_train(data, out):
    check(["train", "--data", data] + (["--out", out] if out is not None else []), codes=(2,))


@FUZZ
@given(checkpoint=paths, data=not_data)
def test_evaluate(checkpoint, data):
    check(["evaluate", checkpoint, "--data", data], codes=(2,))


@FUZZ
@given(store=paths)
def test_data_info(store):
    check(["data", "info", store], codes=(2,))


@settings(FUZZ, max_examples=max(3, EXAMPLES // 3))  # a valid --out writes a store (~1 s)
@given(out=paths)
def test_data_synth(out):
    check(["data", "synth", "--preset", "tiny", "--out", out])


@pytest.fixture(autouse=True, scope="module")
def _warm_imports():
    """Import what the commands import, once, so the first example's deadline measures the
    command and not torch's import."""
    import msdn_tune.commands.data  # noqa: F401
    import msdn_tune.commands.results  # noqa: F401
    import msdn_tune.commands.study  # noqa: F401
    import msdn_tune.commands.train  # noqa: F401
    import msdn_tune.space  # noqa: F401
