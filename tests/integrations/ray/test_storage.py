"""Where a study's files live: node-local storage refused on a multi-node cluster, a cloud URI
mirrored locally without its checkpoints, and the working-directory upload scanned with Ray's
own rules and size limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from msdn_tune.errors import ClusterError
from msdn_tune.integrations.ray.storage import (
    DEFAULT_EXCLUDES,
    NodeInfo,
    StudyStorage,
    check_cluster_storage,
    check_upload_size,
    mount_fstype,
    scan_working_dir,
)

ONE_CPU = {"cpu": 1, "gpu": 0}


def test_node_local_storage_is_refused_on_a_multi_node_cluster(tmp_path, monkeypatch):
    monkeypatch.delenv("MSDN_TUNE_SHARED_STORAGE", raising=False)
    two = [NodeInfo(2, 0), NodeInfo(4, 1)]
    with pytest.raises(ClusterError, match="2 alive nodes.*--storage-shared"):
        check_cluster_storage(str(tmp_path), ONE_CPU, nodes=two)
    with pytest.raises(ClusterError):
        check_cluster_storage(f"file://{tmp_path}", ONE_CPU, nodes=two)  # still this disk
    # A CPU-less head alone: trials will run on autoscaled workers, so the same rule holds.
    with pytest.raises(ClusterError, match="autoscaled"):
        check_cluster_storage(str(tmp_path), ONE_CPU, nodes=[NodeInfo(0, 0)])
    with pytest.raises(ClusterError):
        check_cluster_storage(str(tmp_path), {"cpu": 1, "gpu": 1}, nodes=[NodeInfo(8, 0)])
    # Accepted: one node that hosts the trials, a URI, the conventional mount, a declaration.
    assert check_cluster_storage(str(tmp_path), ONE_CPU, nodes=[NodeInfo(2, 0)]) is None
    assert "s3://" in check_cluster_storage("s3://bucket/studies", ONE_CPU, nodes=two)
    assert "/mnt/cluster_storage" in check_cluster_storage(
        "/mnt/cluster_storage/studies", ONE_CPU, nodes=two
    )
    assert "declared" in check_cluster_storage(
        str(tmp_path), ONE_CPU, nodes=two, declared_shared=True
    )
    monkeypatch.setenv("MSDN_TUNE_SHARED_STORAGE", "1")
    assert "declared" in check_cluster_storage(str(tmp_path), ONE_CPU, nodes=two)


def test_mount_type_comes_from_proc_mounts():
    assert mount_fstype("/proc/self/status") == "proc"
    assert mount_fstype("/") is not None


def test_uri_storage_keeps_a_mirror_without_checkpoints(tmp_path):
    """pyarrow's in-memory filesystem stands in for a bucket: real pyarrow calls throughout."""
    store = StudyStorage.from_spec("mock://bucket/studies", mirror_root=tmp_path / "mirror")
    assert store.ray_storage() == "mock://bucket/studies"
    assert store.ray_path("s1") == "mock://bucket/studies/s1"
    fs, base = store.fs, store.base
    for rel, data in {
        "s1/experiment_state-1.json": b"{}",
        "s1/t1/result.json": b"r",
        "s1/t1/checkpoint_000002/checkpoint.pt": b"weights",
    }.items():
        fs.create_dir(f"{base}/{rel}".rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(f"{base}/{rel}") as out:
            out.write(data)
    local = store.local_root / "s1"
    (local / "stale.json").parent.mkdir(parents=True)
    (local / "stale.json").write_text("old")
    store.pull("s1")
    assert (local / "t1" / "result.json").read_bytes() == b"r"
    assert (local / "experiment_state-1.json").exists()
    assert not (local / "t1" / "checkpoint_000002").exists()  # checkpoints stay remote
    assert not (local / "stale.json").exists()  # the mirror is a cache of the bucket
    store.fetch([local / "t1" / "checkpoint_000002"])
    assert (local / "t1" / "checkpoint_000002" / "checkpoint.pt").read_bytes() == b"weights"
    (local / "msdn_study.json").write_text('{"parent_run_id": "p"}')
    (local / "plots").mkdir()
    (local / "plots" / "history.png").write_bytes(b"png")
    store.push("s1")
    with fs.open_input_stream(f"{base}/s1/msdn_study.json") as f:
        assert f.read() == b'{"parent_run_id": "p"}'
    with fs.open_input_stream(f"{base}/s1/plots/history.png") as f:
        assert f.read() == b"png"
    # A path, or a file:// URI, is used in place.
    plain = StudyStorage.from_spec(f"file://{tmp_path}/res")
    assert plain.uri is None and plain.ray_path("s") == f"{tmp_path}/res/s"
    plain.pull("s")  # no-op


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    files = {
        "pyproject.toml": "x",
        "search_spaces/s.yaml": "x",
        "msdn_tune/data/store.py": "x" * 100,
        "data/cub/features.arrows": "x",
        "msdn_results/s/trial/result.json": "x",
        ".venv/lib/x.py": "x",
        "mlflow.db": "x",
        "model.pt": "x",
        "secret/key.txt": "x",
        "notes.txt": "x",
        "pkg/__pycache__/m.pyc": "x",
        ".gitignore": "secret/\n",
        ".rayignore": "notes.txt\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_upload_scan_follows_rays_rules(tmp_path):
    rep = scan_working_dir(_project(tmp_path), DEFAULT_EXCLUDES)
    names = {f for f, _ in rep.largest_files}
    # The package's own data/ subpackage stays: only the top-level data/ folder is left out.
    assert names == {
        "pyproject.toml",
        "search_spaces/s.yaml",
        "msdn_tune/data/store.py",
        ".gitignore",
        ".rayignore",
    }
    assert rep.largest_files[0] == ("msdn_tune/data/store.py", 100)


def test_this_project_uploads_small():
    root = Path(__file__).resolve().parents[3]
    rep = scan_working_dir(root, DEFAULT_EXCLUDES)
    names = {f for f, _ in rep.largest_files}
    assert rep.total_bytes < 20 * 1024 * 1024, rep.offenders()
    assert not any(n.startswith((".venv/", "msdn_results/")) for n in names)
    assert check_upload_size(rep) == []


def test_an_upload_over_the_limit_is_refused_and_over_half_of_it_warned(tmp_path):
    root = _project(tmp_path)
    (root / "assets").mkdir()
    with open(root / "assets" / "huge.bin", "wb") as f:  # sparse: no disk used
        f.truncate(600 * 1024 * 1024)
    rep = scan_working_dir(root, DEFAULT_EXCLUDES)
    with pytest.raises(ClusterError, match=r"over Ray's 512\.0 MiB limit.*assets/ \(600\.0 MiB"):
        check_upload_size(rep)
    warn = check_upload_size(scan_working_dir(root, []), limit=1024 * 1024 * 1024)
    assert len(warn) == 1 and "over half" in warn[0] and "huge.bin" in warn[0]



# --- the storage path checked before Ray starts (issue 14) --------------------------------------


def test_a_storage_path_ray_could_not_write_is_refused_in_one_line(tmp_path):
    from msdn_tune.errors import MsdnTuneError
    from msdn_tune.integrations.ray.storage import checked_storage

    (tmp_path / "afile").write_text("a user's file")
    refused = {
        str(tmp_path / "afile"): "is a file",
        str(tmp_path / "afile" / "deeper" / "studies"): "is a file",
        "/proc/studies": "proc filesystem",
        "/sys/kernel/studies": "sysfs filesystem",
        f"file://{tmp_path}/afile/x": "is a file",
        str(tmp_path / ("n" * 256)): "longer than 255 bytes",
        str(tmp_path / "a\x00b"): "NUL",
        "bogus://bucket/x": "pyarrow cannot open",
    }
    for spec, expected in refused.items():
        with pytest.raises(MsdnTuneError) as err:
            checked_storage(spec)
        text = str(err.value)
        assert expected in text and "\n" not in text and len(text) < 400, (spec, text)
    assert (tmp_path / "afile").read_text() == "a user's file"
    # Accepted: an existing folder, one still to be created, a file:// URI; nothing is left
    # behind by the check (its probe folder is removed, the new folder not made).
    for spec in (str(tmp_path), str(tmp_path / "new" / "studies"), f"file://{tmp_path}/x"):
        store = checked_storage(spec)
        assert store.uri is None and store.local_root.is_absolute()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.slow  # pyarrow's S3 client retries a refused connection for about 6 s
def test_a_storage_uri_that_does_not_answer_is_refused_before_ray_starts():
    """An S3 endpoint where nothing listens (pyarrow retries for seconds), and one that accepts
    but never answers (pyarrow would wait much longer): one line each, within the stated
    timeout."""
    import socket

    from msdn_tune.integrations.ray.storage import checked_storage
    from tests.helpers.raynodes import free_port

    refused = (f"s3://bucket/studies?endpoint_override=127.0.0.1:{free_port()}&scheme=http"
               "&region=us-east-1")
    with pytest.raises(ClusterError, match=r"storage_path .*: cannot be read \(.*connect"):
        checked_storage(refused)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        silent = (f"s3://bucket/studies?endpoint_override=127.0.0.1:{server.getsockname()[1]}"
                  "&scheme=http&region=us-east-1")
        with pytest.raises(ClusterError, match="no answer within 1 s"):
            StudyStorage.from_spec(silent).probe(timeout_s=1.0)
