"""Feature extraction from images: a dozen generated JPEGs in the CUB folder layout, res101.mat
with MATLAB paths, a randomly initialised ResNet-101 saved as a plain state_dict; checked
against the published preprocessing, through a real kill and resume, and into the store."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from msdn_tune.cli import main
from msdn_tune.data.extract import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    extract_features,
    preprocess,
    resolve_image_paths,
)
from msdn_tune.data.ingest import import_mat
from msdn_tune.data.registry import get_dataset
from msdn_tune.data.resnet import ResNet101Trunk, load_trunk
from msdn_tune.data.sources import FeatureDir
from msdn_tune.data.store import BenchmarkStore
from msdn_tune.errors import DataError
from tests.helpers.formats import assert_clean_error, make_bench, make_mat, matlab_path

ROOT = Path(__file__).resolve().parents[2]
SIZE = 64  # image size for tests: grid 2 x 2 (448 -> 14 x 14 in real use)
SIZES = [(80, 60), (60, 90), (64, 64), (100, 70)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Images under a CUB-like root, the .mat files listing them, random ResNet-101 weights."""
    tmp = tmp_path_factory.mktemp("extract")
    bench = make_bench(n_classes=3, n_unseen=1, per_class=4, n_attr=5)
    files = [matlab_path(k, int(lab) + 1) for k, lab in enumerate(bench["labels"])]
    root = tmp / "CUB"
    rng = np.random.default_rng(0)
    for k, f in enumerate(files):
        p = root / f.split("/", 6)[6]
        p.parent.mkdir(parents=True, exist_ok=True)
        w, h = SIZES[k % len(SIZES)]
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        img = Image.fromarray(pixels)
        (img.convert("L") if k == 3 else img).save(p, quality=90)  # one greyscale JPEG
    att, res101 = make_mat(tmp, bench, image_files=files)
    torch.manual_seed(0)
    state = ResNet101Trunk().state_dict()
    state["fc.weight"] = torch.randn(1000, 2048) * 0.01
    state["fc.bias"] = torch.zeros(1000)
    weights = tmp / "random_resnet101.pth"
    torch.save(state, weights)
    return {
        "tmp": tmp,
        "bench": bench,
        "files": files,
        "root": root,
        "att": att,
        "res101": res101,
        "weights": weights,
    }


@pytest.fixture(scope="module")
def extracted(world):
    out = world["tmp"] / "features"
    result = extract_features(
        world["root"],
        world["res101"],
        "CUB",
        out,
        weights=world["weights"],
        batch_size=4,
        device="cpu",
        image_size=SIZE,
        dtype="float32",
        part_rows=4,
        progress=False,
    )
    return out, result


def test_trunk_is_torchvision_resnet101_layout():
    model = ResNet101Trunk()
    state = model.state_dict()
    # torchvision resnet101 has 44,549,160 parameters, of which fc 2,049,000
    assert sum(p.numel() for p in model.parameters()) == 44_549_160 - 2_049_000
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer3.22.conv3.weight"].shape == (1024, 256, 1, 1)
    assert state["layer4.0.downsample.0.weight"].shape == (2048, 1024, 1, 1)
    assert state["layer4.0.conv2.weight"].shape == (512, 512, 3, 3)  # V1.5: stride on the 3x3
    assert "layer4.2.bn3.num_batches_tracked" in state


def test_preprocess_follows_the_published_transform():
    # 90 x 60 (w x h) at size 32: shorter side -> 32, longer int(32 * 90 / 60) = 48, crop from 8
    pixels = np.random.default_rng(1).integers(0, 256, size=(60, 90, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    got = preprocess(img, 32)
    ref = np.asarray(img.resize((48, 32), Image.BILINEAR).crop((8, 0, 40, 32)), dtype=np.float32)
    ref = (ref / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert got.shape == (3, 32, 32) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref.transpose(2, 0, 1), atol=1e-5)
    # white is (1 - mean) / std in every channel; greyscale input becomes three channels
    white = preprocess(Image.new("L", (40, 50), 255), 32)
    np.testing.assert_allclose(
        white[:, 0, 0].numpy(), (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD), rtol=1e-6
    )


def test_extraction_matches_the_network_image_by_image(world, extracted):
    out, result = extracted
    assert result.extracted == 12 and result.strip_components == 6 and result.device == "cpu"
    assert any("not torchvision's ImageNet V1" in w for w in result.warnings)
    meta = json.loads((out / "features.json").read_text())
    assert meta["complete"] and meta["grid"] == [2, 2] and meta["n_images"] == 12
    feats = FeatureDir.open(out)
    got = feats.read(0, 12, np.empty((12, 2048, 4), dtype=np.float32))
    model, _ = load_trunk(world["weights"])
    order = [11, 3, 7, 0]  # another batch composition and order; 3 is the greyscale image
    batch = []
    for k in order:
        with Image.open(world["root"] / world["files"][k].split("/", 6)[6]) as img:
            batch.append(preprocess(img, SIZE))
    with torch.no_grad():
        want = model(torch.stack(batch)).reshape(4, 2048, 4).numpy()
    np.testing.assert_allclose(got[order], want, rtol=1e-4, atol=1e-5)
    assert np.abs(got).max() > 0 and got.shape == (12, 2048, 4)  # 64 px -> 2 x 2 (448 -> 14)


def test_import_mat_from_extracted_features(world, extracted, tmp_path):
    out, _ = extracted
    store_dir = tmp_path / "cub"
    res = CliRunner().invoke(
        main,
        [
            "data",
            "import",
            "mat",
            "--dataset",
            "CUB",
            "--att-splits",
            str(world["att"]),
            "--res101",
            str(world["res101"]),
            "--features",
            str(out),
            "--out",
            str(store_dir),
            "--allow-mismatch",
            "-q",
            "--dtype",
            "float32",
        ],
    )
    assert res.exit_code == 0, res.output
    feats = FeatureDir.open(out).read(0, 12, np.empty((12, 2048, 4), dtype=np.float32))
    with BenchmarkStore.open(store_dir) as store:
        assert store.meta["grid"] == [2, 2]
        np.testing.assert_array_equal(store.gather_numpy(np.arange(12)), feats)
        np.testing.assert_array_equal(store.labels, world["bench"]["labels"])
    # features of another image list are refused
    other = world["files"][::-1]
    _, res101 = make_mat(tmp_path, world["bench"], image_files=other)
    with pytest.raises(DataError, match="another image list"):
        import_mat(
            "CUB", world["att"], res101, out, tmp_path / "x", allow_mismatch=True, progress=False
        )


def test_resume_after_kill_and_incomplete_folders_are_refused(world, extracted, tmp_path):
    out = tmp_path / "features"
    code = textwrap.dedent(
        f"""
        import msdn_tune.data.extract as extract
        from tests.helpers.interrupt import interrupt_after
        interrupt_after(extract, "_write_part", 1)  # SIGKILL once the first part is on disk
        extract.extract_features({str(world["root"])!r}, {str(world["res101"])!r}, "CUB",
                                 {str(out)!r}, weights={str(world["weights"])!r}, batch_size=4,
                                 device="cpu", image_size={SIZE}, dtype="float32", part_rows=4,
                                 progress=False)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert sorted(p.name for p in out.glob("part-*.npy")) == ["part-000000.npy"]
    with pytest.raises(DataError, match="not complete \\(1 of 3 parts\\)"):
        FeatureDir.open(out)
    with pytest.raises(DataError, match="--resume"):
        import_mat(
            "CUB",
            world["att"],
            world["res101"],
            out,
            tmp_path / "s",
            allow_mismatch=True,
            progress=False,
        )
    common = dict(
        weights=world["weights"],
        device="cpu",
        image_size=SIZE,
        dtype="float32",
        part_rows=4,
        progress=False,
    )
    with pytest.raises(DataError, match="--resume to continue it or --force"):
        extract_features(world["root"], world["res101"], "CUB", out, batch_size=4, **common)
    result = extract_features(
        world["root"], world["res101"], "CUB", out, batch_size=4, resume=True, **common
    )
    assert (result.resumed_images, result.extracted) == (4, 8)
    a = FeatureDir.open(out).read(0, 12, np.empty((12, 2048, 4), dtype=np.float32))
    b = FeatureDir.open(extracted[0]).read(0, 12, np.empty((12, 2048, 4), dtype=np.float32))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="already holds a complete extraction"):
        extract_features(world["root"], world["res101"], "CUB", out, **common)


def _cli_extract(world, out, *extra):
    return CliRunner().invoke(
        main,
        [
            "data",
            "extract",
            "--images",
            str(world["root"]),
            "--res101",
            str(world["res101"]),
            "--dataset",
            "CUB",
            "--out",
            str(out),
            "--weights",
            str(world["weights"]),
            "--device",
            "cpu",
            "--image-size",
            str(SIZE),
            "-q",
            *map(str, extra),
        ],
    )


def test_missing_and_unreadable_images_name_the_entry(world, tmp_path):
    rel = world["files"][4].split("/", 6)[6]
    path = world["root"] / rel
    data = path.read_bytes()
    try:
        path.unlink()
        res = _cli_extract(world, tmp_path / "a")
        assert_clean_error(res, "1 of 12 images are missing", "image_files(5)", rel)
        path.write_bytes(b"\xff\xd8 this is not a JPEG")
        res = _cli_extract(world, tmp_path / "b", "--batch-size", "12")
        assert_clean_error(res, "image_files(5)", "cannot be read")
    finally:
        path.write_bytes(data)


def test_image_paths_rule_and_autodetection(world, tmp_path):
    cub, flo = get_dataset("CUB"), get_dataset("FLO")
    paths, strip = resolve_image_paths(world["files"], world["root"], cub)
    assert strip == 6 and paths[0] == world["root"] / world["files"][0].split("/", 6)[6]
    # FLO has no published rule: the shortest tail of the path that exists is found
    paths, strip = resolve_image_paths(world["files"], world["root"] / "CUB_200_2011", flo)
    assert strip == 7 and all(p.is_file() for p in paths)
    with pytest.raises(DataError, match="strips 6 leading components.*--strip-components"):
        resolve_image_paths(world["files"], tmp_path, cub)


def test_weights_errors_and_devices(world, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(DataError, match="resnet101-63fe2227.pth.*never downloads"):
        load_trunk()
    (tmp_path / "code.pth").write_bytes(b"")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.pth")
    with pytest.raises(DataError, match="not a ResNet-101 state_dict \\(missing: bn1.weight"):
        load_trunk(tmp_path / "partial.pth")
    torch.save({"x": object()}, tmp_path / "obj.pth")
    with pytest.raises(DataError, match="weights_only=True"):
        load_trunk(tmp_path / "obj.pth")
    res = _cli_extract(world, tmp_path / "o", "--device", "cuda:0")
    if not torch.cuda.is_available():
        assert_clean_error(res, "no CUDA device")
    res = _cli_extract(world, tmp_path / "o2", "--image-size", "50")
    assert_clean_error(res, "multiple of 32")


def test_one_command_from_images_to_store(world, extracted, tmp_path):
    """`data extract --store --att-splits`: images → features (resumable staging) → store."""
    feats, _ = extracted
    store_dir = tmp_path / "cub-store"
    args = ["data", "extract", "--images", str(world["root"]), "--res101", str(world["res101"]),
            "--dataset", "CUB", "--out", str(tmp_path / "staging"), "--weights",
            str(world["weights"]), "--batch-size", "4", "--device", "cpu", "--image-size",
            str(SIZE), "--dtype", "float32", "-q", "--store", str(store_dir), "--att-splits",
            str(world["att"]), "--allow-mismatch"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    expected = FeatureDir.open(feats).read(0, 12, np.empty((12, 2048, 4), dtype=np.float32))
    with BenchmarkStore.open(store_dir) as store:
        np.testing.assert_allclose(store.gather_numpy(np.arange(12)), expected, rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_array_equal(store.labels, world["bench"]["labels"])
    missing = CliRunner().invoke(main, args[:-3] + ["--force"])
    assert missing.exit_code == 2 and "--store needs --att-splits" in missing.output


def test_out_folder_of_someone_elses_files(world, tmp_path):
    """Issue 14: a non-empty folder that is not a feature folder is refused before anything is
    written (not even the lock); --force writes next to the files only when no name is taken."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert_clean_error(_cli_extract(world, out, "--batch-size", "4"), "not empty", "--force",
                       "--out")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    for name in ("features.json", "part-000000.npy"):
        (out / name).write_text("the user's")
        taken = {p.name: p.read_bytes() for p in out.iterdir()}
        res = _cli_extract(world, out, "--batch-size", "4", "--force")
        assert_clean_error(res, name, "never overwrites")
        assert {p.name: p.read_bytes() for p in out.iterdir()} == taken
        (out / name).unlink()
    res = _cli_extract(world, out, "--batch-size", "4", "--dtype", "float32", "--force")
    assert res.exit_code == 0, res.output
    assert (out / "notes.txt").read_text() == "mine"
    assert FeatureDir.open(out).n_images == 12
    # re-run on its own output: as before, --force redoes it and keeps the user's file
    assert_clean_error(_cli_extract(world, out, "--batch-size", "4", "--dtype", "float32"),
                       "already holds a complete extraction")
    res = _cli_extract(world, out, "--batch-size", "4", "--dtype", "float32", "--force")
    assert res.exit_code == 0, res.output
    assert (out / "notes.txt").read_text() == "mine"
