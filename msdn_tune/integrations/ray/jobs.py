"""Studies on a Ray cluster: job submission, shared-storage checks, token-auth messages.

A study on a cluster fails in ways a local one cannot: a working directory over Ray's upload
limit, a node-local results folder that trials on other nodes never see, a dashboard that wants
a token. Each of these is caught here, before anything runs, with a message that names the fix
(docs/search.md B10, C2, C4, S2). `msdn-tune submit` and `msdn-tune jobs ...` are thin
wrappers over :func:`submit_study`, :func:`follow_job` and :func:`job_client`; `run_study` calls
:func:`check_cluster_storage` and uses :class:`StudyStorage` for cloud URIs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from msdn_tune.console import human_bytes
from msdn_tune.errors import ClusterError

# --- shared storage (docs/search.md B10, C4) -----------------------------------------------------

SHARED_ENV = "MSDN_TUNE_SHARED_STORAGE"
# Mount points that are shared by convention: KubeRay's and Anyscale's samples mount the
# cluster's bucket or NFS volume here.
SHARED_PREFIXES = ("/mnt/cluster_storage",)
# Filesystem types (/proc/mounts) that every node of a cluster can mount.
SHARED_FS_TYPES = frozenset(
    "nfs nfs4 cifs smb3 lustre gpfs beegfs glusterfs ceph cephfs fuse.gcsfuse fuse.s3fs "
    "fuse.mountpoint-s3 fuse.juicefs fuse.ceph-fuse fuse.glusterfs fuse.sshfs fuse.rclone "
    "fuse.goofys".split()
)


def is_uri(path: str) -> bool:
    """True for `scheme://...` storage (s3, gs, hdfs, file, ...), which pyarrow resolves."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


def _local_part(storage_path: str) -> str | None:
    """The local filesystem path of a storage spec, or None for a remote URI."""
    if storage_path.startswith("file://"):
        return urlparse(storage_path).path
    return None if is_uri(storage_path) else storage_path


def mount_fstype(path: str | Path) -> str | None:
    """Filesystem type of the mount holding `path` (longest matching mount point), Linux only."""
    real = Path(os.path.realpath(os.path.expanduser(str(path))))
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, fstype = -1, None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].encode().decode("unicode_escape")  # /proc/mounts escapes spaces as \040
        if (real == Path(mnt) or Path(mnt) in real.parents) and len(mnt) > best:
            best, fstype = len(mnt), parts[2]
    return fstype


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def shared_storage_reason(storage_path: str, *, declared: bool = False) -> str | None:
    """Why `storage_path` is visible from every node, or None when nothing says it is."""
    local = _local_part(storage_path)
    if local is None:
        return f"{urlparse(storage_path).scheme}:// URI"
    if declared or _env_flag(SHARED_ENV):
        return f"declared shared (--storage-shared or {SHARED_ENV}=1)"
    real = os.path.realpath(os.path.expanduser(local))
    for prefix in SHARED_PREFIXES:
        if real == prefix or real.startswith(prefix + "/"):
            return f"under {prefix}"
    fstype = mount_fstype(real)
    if fstype in SHARED_FS_TYPES:
        return f"on a {fstype} mount"
    return None


@dataclass(frozen=True)
class NodeInfo:
    """An alive Ray node's schedulable resources (what trials could use)."""

    cpu: float
    gpu: float


def alive_nodes() -> list[NodeInfo]:
    """The alive nodes of the connected Ray cluster (needs `ray.init` first)."""
    import ray

    return [
        NodeInfo(
            float(n.get("Resources", {}).get("CPU", 0)), float(n.get("Resources", {}).get("GPU", 0))
        )
        for n in ray.nodes()
        if n.get("Alive")
    ]


def trials_span_nodes(nodes: Sequence[NodeInfo], trial: Mapping[str, Any]) -> bool:
    """Whether trials will run on more than one node, or on a node other than this one.

    Two or more alive nodes, or a single node (an autoscaling cluster's CPU-only head) that
    cannot host a trial, so its trials will run on workers that do not exist yet.
    """
    if len(nodes) != 1:
        return len(nodes) > 1
    cpu, gpu = float(trial.get("cpu") or 0), float(trial.get("gpu") or 0)
    return nodes[0].cpu < cpu or nodes[0].gpu < gpu


def check_cluster_storage(
    storage_path: str,
    trial: Mapping[str, Any],
    *,
    declared_shared: bool = False,
    nodes: Sequence[NodeInfo] | None = None,
) -> str | None:
    """Refuse node-local results storage on a multi-node cluster, before any trial starts.

    Since Ray 2.7 trials write checkpoints straight to `storage_path` from whatever node they
    run on, and a restored trial reads them back from another node (ray-project/ray#37177): a
    path only one node sees loses checkpoints and results. Returns why the storage is accepted
    as shared (None on a single node); raises ClusterError otherwise.
    """
    nodes = alive_nodes() if nodes is None else nodes
    if not trials_span_nodes(nodes, trial):
        return None
    reason = shared_storage_reason(storage_path, declared=declared_shared)
    if reason is not None:
        return reason
    local = _local_part(storage_path) or storage_path
    fstype = mount_fstype(local) or "unknown"
    where = (
        f"{len(nodes)} alive nodes"
        if len(nodes) > 1
        else "one alive node that cannot host a trial, so trials run on other (autoscaled) nodes"
    )
    raise ClusterError(
        f"storage_path {storage_path}: this Ray cluster has {where}, but that path is on this "
        f"node's own disk ({fstype} filesystem), where trials on other nodes cannot write "
        "checkpoints or read them back. Use storage every node sees: a cloud URI "
        "(--storage-path s3://bucket/studies or gs://...), a shared mount such as "
        "/mnt/cluster_storage, or, for an NFS or other shared mount msdn-tune does not "
        f"recognise, declare it with --storage-shared (or {SHARED_ENV}=1)."
    )


def default_mirror_root() -> Path:
    """Where the driver keeps its copy of studies stored under a URI."""
    root = os.environ.get("MSDN_TUNE_CACHE")
    base = (
        Path(root).expanduser()
        if root
        else (Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "msdn-tune")
    )
    return base / "storage"


@dataclass
class StudyStorage:
    """Where study folders live: a local or shared path, or a URI that Ray writes to directly.

    For a URI (s3://, gs://, hdfs://...) Ray gets the URI as `storage_path` (resolved with
    pyarrow, docs/search.md C4), and the driver keeps a local mirror of each study's small files
    (Ray's experiment state, per-trial results, msdn_study.json, trials.parquet): it reads
    results from the mirror and pushes its own files back, so a restarted driver anywhere finds
    them. Checkpoints stay in the bucket; only the ones the driver needs are fetched.
    """

    spec: str
    uri: str | None = None
    local_root: Path = field(default_factory=Path)
    fs: Any = None  # the pyarrow filesystem of a URI
    base: str = ""  # the URI's path inside `fs`

    PUSHED = ("msdn_study.json", "trials.parquet", "plots")

    @classmethod
    def from_spec(cls, spec: str, mirror_root: Path | None = None) -> StudyStorage:
        """A local path (or file:// URI) is used as is; another URI gets a local mirror."""
        local = _local_part(spec)
        if local is not None:
            return cls(spec=spec, local_root=Path(os.path.abspath(os.path.expanduser(local))))
        import pyarrow.fs as pafs

        try:
            fs, base = pafs.FileSystem.from_uri(spec)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad URIs
            raise ClusterError(
                f"storage_path {spec}: pyarrow cannot open this URI ({exc})"
            ) from None
        parsed = urlparse(spec)
        mirror = (
            (mirror_root or default_mirror_root())
            / parsed.scheme
            / (parsed.netloc + parsed.path).strip("/")
        )
        return cls(spec=spec, uri=spec.rstrip("/"), local_root=mirror, fs=fs, base=base.rstrip("/"))

    def ray_storage(self) -> str:
        """What `RunConfig(storage_path=...)` gets."""
        return self.uri or str(self.local_root)

    def ray_path(self, name: str) -> str:
        """The study folder as Ray addresses it (`Tuner.can_restore`, `Tuner.restore`)."""
        return f"{self.uri}/{name}" if self.uri else str(self.local_root / name)

    def pull(self, name: str) -> None:
        """Refresh the local mirror of study `name`, checkpoints left out (no-op for paths)."""
        if self.uri is None:
            return
        import pyarrow.fs as pafs

        local = self.local_root / name
        if local.exists():
            shutil.rmtree(local)  # a cache of the bucket: stale state files must not linger
        src = f"{self.base}/{name}"
        if self.fs.get_file_info(src).type != pafs.FileType.Directory:
            return
        for info in self.fs.get_file_info(pafs.FileSelector(src, recursive=True)):
            rel = info.path[len(src) + 1 :]
            if info.type != pafs.FileType.File or any(
                part.startswith("checkpoint_") for part in rel.split("/")
            ):
                continue
            self._download(info.path, local / rel)

    def fetch(self, paths: Sequence[str | Path]) -> None:
        """Download checkpoint folders (given as mirror paths) the driver needs locally."""
        if self.uri is None:
            return
        import pyarrow.fs as pafs

        for p in paths:
            rel = Path(p).resolve().relative_to(self.local_root.resolve()).as_posix()
            src = f"{self.base}/{rel}"
            for info in self.fs.get_file_info(
                pafs.FileSelector(src, recursive=True, allow_not_found=True)
            ):
                if info.type == pafs.FileType.File:
                    self._download(info.path, Path(p) / info.path[len(src) + 1 :])

    def push(self, name: str) -> None:
        """Upload the driver's own files of study `name` (metadata, table, plots) to the URI."""
        if self.uri is None:
            return
        local = self.local_root / name
        for entry in self.PUSHED:
            src = local / entry
            files = [src] if src.is_file() else sorted(f for f in src.rglob("*") if f.is_file())
            for f in files:
                dst = f"{self.base}/{name}/{f.relative_to(local).as_posix()}"
                self.fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
                with self.fs.open_output_stream(dst) as out:
                    out.write(f.read_bytes())

    def _download(self, src: str, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".part")
        with self.fs.open_input_stream(src) as inp, open(tmp, "wb") as out:
            while chunk := inp.read(1 << 20):
                out.write(chunk)
        tmp.replace(dst)


# --- working directory (docs/search.md C2) -------------------------------------------------------

MIB = 1024 * 1024
try:  # the limit Ray enforces on the zipped working_dir (512 MiB unless overridden)
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE as UPLOAD_LIMIT
except ImportError:  # pragma: no cover - a future Ray moved it
    UPLOAD_LIMIT = 512 * MIB

# gitignore-style patterns (relative to the working dir; a leading / anchors at its top) for
# what never belongs in a job upload: environments, data, results, tracking stores, caches,
# weights. Ray adds its own (.git, .venv, venv, __pycache__) and honours .gitignore/.rayignore.
DEFAULT_EXCLUDES = [
    "/.venv/",
    "/venv/",
    "/env/",
    ".git/",
    "__pycache__/",
    "*.egg-info/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".mypy_cache/",
    "/data/",
    "/msdn_results/",
    "/runs/",
    "/mlflow.db",
    "/mlflow.db-*",
    "/mlartifacts/",
    "/mlruns/",
    "/tmp/",
    "/.cache/",
    "/dist/",
    "/build/",
    "*.arrows",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.h5",
    "*.mat",
    "*.npz",
]


@dataclass
class UploadReport:
    """What Ray would upload from a working directory (sizes before compression)."""

    root: Path
    total_bytes: int
    n_files: int
    largest_files: list[tuple[str, int]]
    largest_dirs: list[tuple[str, int]]

    def offenders(self) -> str:
        """The biggest top-level folders and files, for error messages."""
        items = self.largest_dirs[:5] + self.largest_files[:5]
        return ", ".join(f"{name} ({human_bytes(size)})" for name, size in items)


def scan_working_dir(root: str | Path, excludes: Sequence[str] = ()) -> UploadReport:
    """Walk `root` with Ray's own packaging rules: the given excludes, Ray's default excludes,
    and every .gitignore/.rayignore on the way (as `ray job submit` zips it)."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    root = Path(root).resolve()
    include_gitignore = os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
    patterns = ray_constants.get_runtime_env_default_excludes() + list(excludes)
    sizes: dict[str, int] = {}

    def handler(path: Path) -> None:
        if path.is_file():  # symlinks are followed, as Ray's zip does
            sizes[path.relative_to(root).as_posix()] = path.stat().st_size

    quiet = _QuietLogger()
    _dir_travel(root, [_get_excludes(root, patterns)], handler, include_gitignore, quiet)
    tops: dict[str, int] = {}
    for rel, size in sizes.items():
        if "/" in rel:
            top = rel.split("/", 1)[0] + "/"
            tops[top] = tops.get(top, 0) + size
    return UploadReport(
        root=root,
        total_bytes=sum(sizes.values()),
        n_files=len(sizes),
        largest_files=sorted(sizes.items(), key=lambda kv: -kv[1])[:10],
        largest_dirs=sorted(tops.items(), key=lambda kv: -kv[1])[:10],
    )


class _QuietLogger:
    """Ray's walker logs every ignore file it honours; that is noise for a size check."""

    def info(self, *args: Any, **kwargs: Any) -> None:
        """Dropped."""

    def error(self, *args: Any, **kwargs: Any) -> None:
        """Dropped: the walker re-raises the error itself."""


def check_upload_size(report: UploadReport, limit: int = UPLOAD_LIMIT) -> list[str]:
    """Raise when the working dir cannot be uploaded; warnings (as text) from half the limit."""
    total = report.total_bytes
    if total >= limit:
        raise ClusterError(
            f"working directory {report.root} holds {human_bytes(total)} to upload "
            f"({report.n_files} files), over Ray's {human_bytes(limit)} limit for a job's "
            f"working_dir. Largest: {report.offenders()}. Data, results and checkpoints belong "
            "on shared storage, not in the upload: add them to .rayignore (or --exclude), or "
            "choose a smaller --working-dir."
        )
    if total >= limit // 2:
        return [
            f"working directory {report.root} is {human_bytes(total)}, over half of Ray's "
            f"{human_bytes(limit)} upload limit; largest: {report.offenders()}"
        ]
    return []


# --- job submission (docs/search.md C2, S2) ------------------------------------------------------

AUTH_HINT = (
    "set RAY_AUTH_MODE=token and provide the cluster's token in RAY_AUTH_TOKEN, in a file named "
    "by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token (on the head node, `ray get-auth-token` "
    "prints it); a cluster started with RAY_AUTH_MODE=disabled needs none"
)


def dashboard_url(address: str | None) -> str:
    """The job server's URL from --address (HOST:PORT or http[s]://HOST:PORT) or the env."""
    addr = (
        address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or ""
    ).strip()
    if not addr:
        raise ClusterError(
            "no --address: give the Ray dashboard's address, e.g. "
            "http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)"
        )
    if "://" not in addr:
        addr = "http://" + addr
    parsed = urlparse(addr)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ClusterError(
            f"--address {address}: expected the dashboard's http://HOST:8265 "
            "(Ray jobs are submitted to the dashboard, not to ray:// or the GCS)"
        )
    if parsed.port == 6379:
        raise ClusterError(
            f"--address {address}: 6379 is the GCS port; jobs are submitted to the "
            "dashboard, usually http://HEAD:8265"
        )
    return addr.rstrip("/")


def check_reachable(url: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds (not after the OS's TCP timeout) when the dashboard cannot be reached."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ClusterError(
            f"--address {url}: cannot reach the Ray dashboard ({reason}). Is the cluster up and "
            f"port {port} reachable from here (`ray dashboard cluster.yaml`, or "
            "`kubectl port-forward svc/CLUSTER-head-svc 8265:8265`)?"
        ) from None


@contextlib.contextmanager
def ray_api_errors(url: str) -> Iterator[None]:
    """Turn the job SDK's auth, connection and HTTP errors into one clear ClusterError."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        text = str(exc)
        if "Authentication failed" in text or "invalid" in text.lower():
            raise ClusterError(
                f"the Ray cluster at {url} rejected the authentication token: "
                f"use that cluster's token; {AUTH_HINT}"
            ) from None
        raise ClusterError(
            f"the Ray cluster at {url} requires token authentication (Ray's default): {AUTH_HINT}"
        ) from None
    except ConnectionError as exc:
        raise ClusterError(f"--address {url}: {exc}") from None
    except RuntimeError as exc:
        text = str(exc)
        if text.startswith("Version check returned"):
            raise ClusterError(
                f"--address {url}: this is not a Ray dashboard (no job API there: {text})"
            ) from None
        if text.startswith("Request failed with status code"):
            raise ClusterError(f"{url}: {text}") from None
        raise


@dataclass(frozen=True)
class JobServer:
    """A connected Ray job server: its URL (for messages) and the SDK client."""

    url: str
    sdk: Any


def job_client(address: str | None, timeout_s: float = 5.0) -> JobServer:
    """Connect to the job server, or raise a ClusterError saying why not (unreachable, auth)."""
    from ray.job_submission import JobSubmissionClient

    url = dashboard_url(address)
    check_reachable(url, timeout_s)
    with ray_api_errors(url):
        return JobServer(url, JobSubmissionClient(url))


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding pyproject.toml, else cwd."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file():
            return d
    return here


def job_storage_path(storage_path: str | None, space_doc: Mapping[str, Any]) -> str:
    """The study's storage for a job: must mean the same place on the cluster as here.

    The job runs in a temporary copy of the working directory on the head node, so a relative
    path would put results there and lose them with the job.
    """
    raw = storage_path or space_doc.get("storage_path") or "./msdn_results"
    if is_uri(raw) or raw.startswith(("/", "~", "$")):
        return raw
    raise ClusterError(
        f"storage_path {raw!r} is relative: a job runs in a temporary copy of the working "
        "directory on the head node, so results would be lost with it. Give --storage-path a "
        "shared mount (/mnt/cluster_storage/studies) or a URI (s3://bucket/studies, gs://...)."
    )


def job_tracking_uri(
    tracking_uri: str | None, space_doc: Mapping[str, Any], tracking: bool
) -> str | None:
    """The MLflow URI for a job: a server (or absolute SQLite file) every node reaches.

    None when neither --tracking-uri nor the space file gives one: the job then uses the
    cluster's own $MLFLOW_TRACKING_URI (the cluster/ configs set it on the head).
    """
    if not tracking:
        return None
    tdoc = space_doc.get("tracking")
    uri = tracking_uri or (tdoc.get("uri") if isinstance(tdoc, dict) else None)
    if not uri:
        return None
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        raise ClusterError(
            f"--tracking-uri {uri}: a relative SQLite path would live in the job's "
            "temporary working directory; use an absolute path "
            "(sqlite:////mnt/...) or an MLflow server (http://HEAD:5000)"
        )
    if uri.startswith(("file:", "./", "/")) or "://" not in uri:
        raise ClusterError(
            f"--tracking-uri {uri}: give an MLflow server (http://HOST:5000) or "
            "a database URI (sqlite:////abs/path/mlflow.db, postgresql://...)"
        )
    return uri


@dataclass
class JobPlan:
    """Everything `submit_study` sends: printed by --dry-run, asserted by tests."""

    entrypoint: str
    runtime_env: dict[str, Any]
    submission_id: str
    metadata: dict[str, str]
    upload: UploadReport
    warnings: list[str]


def plan_job(
    space_file: str | Path,
    *,
    working_dir: str | Path | None = None,
    storage_path: str | None = None,
    tracking_uri: str | None = None,
    tracking: bool = True,
    name: str | None = None,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    resume: bool = False,
    resume_if_exists: bool = False,
    storage_shared: bool = False,
    pip: Sequence[str] = (),
    excludes: Sequence[str] = (),
    submission_id: str | None = None,
) -> JobPlan:
    """Validate a study locally and build its Ray Job: entrypoint, runtime_env, id.

    The entrypoint is `python -m msdn_tune.cli run ... --address auto`: `python` is whatever the
    cluster's PATH gives (the image or the venv that ran `ray start`), which must have msdn-tune
    installed unless `pip` installs it into the job's environment.
    """
    from msdn_tune.space import load_space

    space_path = Path(space_file).resolve()
    space = load_space(space_path).with_overrides(
        num_samples=num_samples, max_concurrent_trials=max_concurrent, name=name
    )
    wd = Path(working_dir).resolve() if working_dir else project_root()
    if not wd.is_dir():
        raise ClusterError(f"--working-dir {wd}: not a directory")
    try:
        space_rel = space_path.relative_to(wd).as_posix()
    except ValueError:
        raise ClusterError(
            f"--space {space_file}: the file is outside the working directory "
            f"{wd}, so the job would not see it; move it into the project or "
            "pass --working-dir"
        ) from None
    doc = space.source_doc or {}
    storage = job_storage_path(storage_path, doc)
    uri = job_tracking_uri(tracking_uri, doc, tracking)
    all_excludes = DEFAULT_EXCLUDES + list(excludes)
    report = scan_working_dir(wd, all_excludes)
    warnings = check_upload_size(report)
    if tracking and uri is None:
        warnings.append(
            "no --tracking-uri: the job tracks to the cluster's $MLFLOW_TRACKING_URI (set on the "
            "head by cluster/*.yaml); on a cluster without one, runs land in a SQLite file in the "
            "job's temporary working directory and are lost with it"
        )

    args = [
        "python",
        "-m",
        "msdn_tune.cli",
        "run",
        "--space",
        space_rel,
        "--address",
        "auto",
        "--storage-path",
        storage,
    ]
    for flag, value in (
        ("--name", name),
        ("--num-samples", num_samples),
        ("--max-concurrent", max_concurrent),
        ("--tracking-uri", uri),
    ):
        if value is not None:
            args += [flag, str(value)]
    for flag, on in (
        ("--resume", resume),
        ("--resume-if-exists", resume_if_exists),
        ("--storage-shared", storage_shared),
        ("--no-tracking", not tracking),
    ):
        if on:
            args.append(flag)

    # PYTHONUNBUFFERED: the driver's output reaches `submit`'s log tail as it is printed.
    env_vars = {"PYTHONUNBUFFERED": "1"}
    if uri:
        env_vars["MLFLOW_TRACKING_URI"] = uri
    for key in ("RAY_AUTH_MODE", "MLFLOW_DISABLE_TELEMETRY"):
        if os.environ.get(key):
            env_vars[key] = os.environ[key]
    runtime_env: dict[str, Any] = {
        "working_dir": str(wd),
        "excludes": all_excludes,
        "env_vars": env_vars,
    }
    if pip:
        runtime_env["pip"] = {"packages": list(pip), "pip_check": False}
    sid = submission_id or (
        f"msdn-{re.sub(r'[^A-Za-z0-9_-]+', '-', space.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    return JobPlan(
        entrypoint=shlex.join(args),
        runtime_env=runtime_env,
        submission_id=sid,
        metadata={"msdn_tune.study": space.name, "msdn_tune.storage": storage},
        upload=report,
        warnings=warnings,
    )


def submit_study(server: JobServer, plan: JobPlan) -> str:
    """Submit a planned study as a Ray Job; returns its submission id."""
    with ray_api_errors(server.url):
        return server.sdk.submit_job(
            entrypoint=plan.entrypoint,
            runtime_env=plan.runtime_env,
            submission_id=plan.submission_id,
            metadata=plan.metadata,
        )


TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def follow_job(
    server: JobServer, job_id: str, echo: Callable[[str], None], *, poll_s: float = 1.0
) -> str:
    """Stream a job's logs until it ends; returns its final status (SUCCEEDED, FAILED, STOPPED).

    The dashboard's websocket tail is used first; if a proxy drops it, the logs are polled and
    only their new part printed, so nothing is shown twice.
    """
    shown = 0

    async def tail() -> None:
        nonlocal shown
        async for chunk in server.sdk.tail_job_logs(job_id):
            echo(chunk)
            shown += len(chunk)

    with ray_api_errors(server.url):
        tailed = True
        try:
            asyncio.run(tail())
        except (TimeoutError, RuntimeError, OSError):
            tailed = False
        except Exception as exc:  # noqa: BLE001 - aiohttp's own errors; polling still works
            if type(exc).__module__.split(".")[0] != "aiohttp":
                raise
            tailed = False
        while True:
            status = str(server.sdk.get_job_status(job_id))
            if not tailed:
                logs = server.sdk.get_job_logs(job_id)
                if len(logs) > shown:
                    echo(logs[shown:])
                    shown = len(logs)
            if status in TERMINAL:
                return status
            time.sleep(poll_s)


def job_exit_code(status: str) -> int:
    """0 when the job succeeded, 1 when it failed or was stopped."""
    return 0 if status == "SUCCEEDED" else 1


def list_jobs(server: JobServer) -> list[dict[str, Any]]:
    """All jobs of the cluster, newest first, as plain dicts."""
    with ray_api_errors(server.url):
        jobs = server.sdk.list_jobs()
    rows = [
        {
            "submission_id": j.submission_id or j.job_id,
            "status": str(j.status),
            "study": (j.metadata or {}).get("msdn_tune.study", ""),
            "start_time": j.start_time,
            "end_time": j.end_time,
            "entrypoint": j.entrypoint,
            "message": j.message or "",
        }
        for j in jobs
    ]
    return sorted(rows, key=lambda r: -(r["start_time"] or 0))


def job_info(server: JobServer, job_id: str) -> dict[str, Any]:
    """One job's status and details."""
    with ray_api_errors(server.url):
        j = server.sdk.get_job_info(job_id)
    return {
        "submission_id": j.submission_id or j.job_id,
        "status": str(j.status),
        "message": j.message or "",
        "entrypoint": j.entrypoint,
        "start_time": j.start_time,
        "end_time": j.end_time,
        "metadata": j.metadata or {},
    }


def job_logs(server: JobServer, job_id: str) -> str:
    """A job's logs so far."""
    with ray_api_errors(server.url):
        return server.sdk.get_job_logs(job_id)


def stop_job(server: JobServer, job_id: str) -> bool:
    """Ask Ray to stop a job (SIGTERM to the driver, then SIGKILL); False if already ended."""
    with ray_api_errors(server.url):
        return bool(server.sdk.stop_job(job_id))


def format_time(ms: int | None) -> str:
    """Ray's epoch milliseconds as local time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"
