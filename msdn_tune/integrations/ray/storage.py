"""Where a study's files live, checked before anything runs: shared storage and upload size.

Two cluster failures are about storage rather than about Ray jobs: a node-local results folder
that trials on other nodes never see (docs/search.md B10, C4), and a working directory over Ray's
upload limit (docs/search.md C2). This module owns both checks, and :class:`StudyStorage`, the
study folder under a path or a cloud URI with the driver's local mirror of its small files.
`run_study` uses :class:`StudyStorage` and :func:`check_cluster_storage`; `plan_job` (jobs.py)
uses the upload scan.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs
import ray

# private Ray APIs, checked against ray 2.60.0: the upload limit, the walker and the exclude
# rules `ray job submit` zips a working_dir with, so the size check counts what Ray would upload
from ray._private import ray_constants
from ray._private.runtime_env.packaging import (
    GCS_STORAGE_MAX_SIZE,
    _dir_travel,
    _get_excludes,
)

from msdn_tune.cache import cache_root
from msdn_tune.console import human_bytes
from msdn_tune.errors import ClusterError, ConfigError
from msdn_tune.safeload import shorten

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
    return [
        NodeInfo(
            float(n.get("Resources", {}).get("CPU", 0)), float(n.get("Resources", {}).get("GPU", 0))
        )
        for n in ray.nodes()
        if n.get("Alive")
    ]


MIN_GPU_SHARE = 0.0001
"""What `gpu: auto` asks of a node at least (it resolves to a share of one GPU)."""


def trials_span_nodes(nodes: Sequence[NodeInfo], trial: Mapping[str, Any]) -> bool:
    """Whether trials will run on more than one node, or on a node other than this one.

    Two or more alive nodes, or a single node (an autoscaling cluster's CPU-only head) that
    cannot host a trial, so its trials will run on workers that do not exist yet.
    """
    if len(nodes) != 1:
        return len(nodes) > 1
    g = trial.get("gpu")
    cpu, gpu = float(trial.get("cpu") or 0), MIN_GPU_SHARE if g == "auto" else float(g or 0)
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


# --- the storage path itself, checked before Ray starts ------------------------------------------

#: Filesystems that hold no files of ours: the kernel's views (/proc, /sys, /dev and the like).
#: As root a permission check passes there, and Ray fails only after it has started.
PSEUDO_FS_TYPES = frozenset(
    "proc sysfs devtmpfs devpts cgroup cgroup2 securityfs debugfs tracefs bpf pstore configfs "
    "mqueue hugetlbfs fusectl binfmt_misc autofs efivarfs rpc_pipefs nsfs".split()
)
NAME_MAX = 255  # bytes in one path component (Linux)
#: How long a storage URI gets to answer one look-up before a study refuses to start.
STORAGE_PROBE_TIMEOUT_S = 10.0
PATH_MAX = 4095


def checked_storage(spec: str, what: str = "storage_path") -> StudyStorage:
    """The :class:`StudyStorage` of `spec`, refused in one line (ConfigError, ClusterError) when
    Ray could not write there: checked before Ray starts, which otherwise fails with a traceback
    after it has started.

    A local path (or file:// URI) must be a folder, or one that can be created: its nearest
    existing ancestor is a folder on a real filesystem that takes a new entry (tried by making
    and removing a temporary folder there, since a permission check says yes to root even in
    /proc). Another URI must be one pyarrow can open (:meth:`StudyStorage.from_spec`).
    """
    where = f"{what} {shorten(spec)}"
    if "\x00" in spec:
        raise ConfigError(f"{where}: holds a NUL character")
    local = _local_part(spec)
    if local is None:
        store = StudyStorage.from_spec(spec)
        store.probe()
        return store
    path = os.path.abspath(os.path.expanduser(local))
    raw = os.fsencode(path)
    if len(raw) > PATH_MAX:
        raise ConfigError(f"{where}: the path is longer than {PATH_MAX} bytes")
    if any(len(part) > NAME_MAX for part in raw.split(b"/")):
        raise ConfigError(f"{where}: a name in the path is longer than {NAME_MAX} bytes")
    existing = path
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        kind = "a file" if os.path.isfile(existing) else "not a folder"
        raise ConfigError(f"{where}: {shorten(existing)} is {kind}; storage_path must be a folder")
    fstype = mount_fstype(existing)
    if fstype in PSEUDO_FS_TYPES:
        raise ConfigError(
            f"{where}: {shorten(existing)} is on the kernel's {fstype} filesystem, which holds "
            "no files; choose a folder on a disk or a shared mount"
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".msdn-tune-probe-", dir=existing))
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot create folders in {shorten(existing)} ({exc.strerror or exc})"
        ) from None
    return StudyStorage.from_spec(spec)


def default_mirror_root() -> Path:
    """Where the driver keeps its copy of studies stored under a URI."""
    return cache_root() / "storage"


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
        try:
            fs, base = pafs.FileSystem.from_uri(spec)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad URIs
            detail = " ".join(str(exc).split())  # pyarrow's messages may span lines
            raise ClusterError(
                f"storage_path {shorten(spec)}: pyarrow cannot open this URI "
                f"({shorten(detail, 200)})"
            ) from None
        parsed = urlparse(spec)
        mirror = (
            (mirror_root or default_mirror_root())
            / parsed.scheme
            / (parsed.netloc + parsed.path).strip("/")
        )
        return cls(spec=spec, uri=spec.rstrip("/"), local_root=mirror, fs=fs, base=base.rstrip("/"))

    def probe(self, timeout_s: float = STORAGE_PROBE_TIMEOUT_S) -> None:
        """Refuse, in one line within `timeout_s`, a storage URI that does not answer.

        pyarrow retries a connection it cannot make (6 s for a refused one, much longer for one
        that never answers), and Ray would only fail after it has started. The look-up runs in
        a daemon thread so that a store that never answers cannot hold the study past the
        timeout. A path needs no probe (`checked_storage` tries it).
        """
        if self.fs is None:
            return
        failed: list[BaseException] = []

        def look() -> None:
            try:
                self.fs.get_file_info(self.base or "/")
            except Exception as exc:  # noqa: BLE001 - reported below, whatever pyarrow raised
                failed.append(exc)

        worker = threading.Thread(target=look, name="storage-probe", daemon=True)
        worker.start()
        worker.join(timeout_s)
        where = f"storage_path {shorten(self.spec)}"
        if worker.is_alive():
            raise ClusterError(f"{where}: no answer within {timeout_s:g} s; check the URI, the "
                               "network and the credentials this machine uses for it")
        if failed:
            detail = " ".join(str(failed[0]).split())
            raise ClusterError(f"{where}: cannot be read ({shorten(detail, 240)})")

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
# The limit Ray enforces on the zipped working_dir (512 MiB unless overridden).
UPLOAD_LIMIT: int = GCS_STORAGE_MAX_SIZE

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
    root = Path(root).resolve()
    include_gitignore = os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
    patterns = ray_constants.get_runtime_env_default_excludes() + list(excludes)
    sizes: dict[str, int] = {}

    def handler(path: Path) -> None:
        if path.is_file():  # symlinks are followed, as Ray's zip does
            sizes[path.relative_to(root).as_posix()] = path.stat().st_size

    # Ray's walker logs every ignore file it honours: noise for a size check. A logger of our
    # own, detached from logging's tree and above every level, drops that (the walker re-raises
    # its errors itself).
    quiet = logging.Logger("msdn_tune.upload_scan", level=logging.CRITICAL + 1)
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
