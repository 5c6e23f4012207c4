"""Images -> ResNet-101 layer-4 feature maps, as the published features were made.

``msdn-tune data extract`` reproduces the extraction of docs/model.md §4.2: the
torchvision ResNet-101 with the ImageNet **V1** weights, avgpool and fc dropped, eval mode, no
fine-tuning; each image converted to RGB, resized so its shorter side is 448 (bilinear, as
torchvision's ``Resize(448)`` does on a PIL image), centre-cropped to 448 x 448, scaled to
[0, 1] and normalised with the ImageNet mean and std; output 2048 x 14 x 14 per image. Image
paths come from ``res101.mat``'s ``image_files`` with the dataset's MATLAB prefix rule
(:func:`msdn_tune.data.registry.strip_matlab_path`).

Why no torchvision: the network is built in (:mod:`msdn_tune.data.resnet`) and preprocessing
uses Pillow directly, which is all this needs.

The output is a **feature folder** (:mod:`msdn_tune.data.sources.featuredir` describes its
files), the input of ``msdn-tune data import mat --features``. An interrupted extraction
(Ctrl-C, crash, ``kill -9``) keeps its finished parts; ``--resume`` continues at the first
missing one (any batch size), and the import refuses a folder that is not ``complete``. Memory
stays at one part plus a few batches whatever the dataset size. A non-empty folder that is not a
feature folder is refused before anything is written; ``--force`` writes the parts next to its
files only when none of the names an extraction writes is taken.

One concept: the extraction that writes a feature folder (preprocessing, the batched run, the
folder's resume rules).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msdn_tune.console import ProgressBar, progress_bar
from msdn_tune.data.registry import DatasetInfo, get_dataset, strip_matlab_path
from msdn_tune.data.resnet import V1_SHA256_PREFIX, WeightsInfo, find_weights, load_trunk
from msdn_tune.data.sources.featuredir import (
    FEATURES_JSON,
    FORMAT_NAME,
    FORMAT_VERSION,
    part_name,
    part_shape,
    read_manifest,
)
from msdn_tune.data.sources.xlsa17 import image_files_digest, read_res101
from msdn_tune.errors import ConfigError, DataError
from msdn_tune.safeload import load_json

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Bytes of one feature part (in the stored dtype).
PART_TARGET_BYTES = 64 << 20


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------


def _pil() -> Any:
    """PIL's Image module; Pillow is the optional ``images`` extra, so a missing one is a
    ConfigError saying how to install it (hence the import here, not at module level)."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise ConfigError(
            "feature extraction needs Pillow: pip install 'msdn-tune[images]' (or pillow)"
        ) from exc
    return Image


def preprocess(image: Any, size: int = 448) -> torch.Tensor:
    """A PIL image -> the normalised (3, size, size) float32 tensor the published features used.

    Shorter side to ``size`` (longer side ``int(size * long / short)``, bilinear with PIL's
    antialiasing, as torchvision's ``Resize`` on PIL images), centre crop ``size`` x ``size``
    (offsets rounded as torchvision's ``CenterCrop``), ``/255``, ImageNet mean/std.
    """
    image_mod = _pil()
    img = image.convert("RGB")
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), image_mod.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    x = x.to(torch.float32).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


class _Images(torch.utils.data.Dataset):
    """Preprocessed images by index; a failure is returned (not raised) so the error can name
    the entry even from a DataLoader worker."""

    def __init__(self, paths: Sequence[Path], indices: Sequence[int], size: int) -> None:
        self.paths, self.indices, self.size = paths, list(indices), size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        index = self.indices[i]
        try:
            with _pil().open(self.paths[index]) as img:
                return index, preprocess(img, self.size), ""
        except Exception as exc:  # noqa: BLE001 - any decoding failure names the image
            return index, torch.zeros(3, self.size, self.size), f"{type(exc).__name__}: {exc}"


def resolve_image_paths(
    image_files: Sequence[str],
    root: str | Path,
    info: DatasetInfo,
    strip: int | None = None,
) -> tuple[list[Path], int]:
    """Map res101.mat's MATLAB paths under ``root``; returns the paths and the strip count used.

    The dataset's published rule (CUB 6, SUN 7, AWA2 5 leading components) is used when it finds
    the first image; otherwise the smallest strip count that does (FLO has no published rule).
    ``strip`` forces a count. Every image must exist: DataError lists the first missing ones
    with their position in image_files (1-based, as in MATLAB).
    """
    root = Path(os.path.expanduser(root)).absolute()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    if not image_files:
        raise DataError("res101.mat lists no image_files")
    first = image_files[0]
    n_parts = len(str(first).replace("\\", "/").split("/"))
    if strip is None:
        candidates = ([info.path_strip] if info.path_strip is not None else []) + list(
            range(n_parts)
        )
        for k in candidates:
            if k < n_parts and (root / strip_matlab_path(first, k)).is_file():
                strip = k
                break
        else:
            rule = (
                f"the {info.name} rule strips {info.path_strip} leading components, giving "
                f"{root / strip_matlab_path(first, info.path_strip)}"
                if info.path_strip is not None and info.path_strip < n_parts
                else "no leading part of it"
            )
            raise DataError(
                f"image_files(1) = {first!r} is not under {root}: {rule}, and no shorter tail of "
                f"the path exists there either. --images must be {info.image_root_hint} "
                "(or pass --strip-components N)"
            )
    paths = [root / strip_matlab_path(f, strip) for f in image_files]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        shown = "; ".join(f"image_files({i + 1}) -> {paths[i]}" for i in missing[:5])
        raise DataError(
            f"{len(missing)} of {len(paths)} images are missing under {root} "
            f"(stripping {strip} leading path components): {shown}"
        )
    return paths, strip


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {name}: no CUDA device is available to torch {torch.__version__}"
        )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    return device


@dataclass
class ExtractResult:
    """What an extraction did (the CLI prints it)."""

    path: Path
    n_images: int
    extracted: int
    resumed_images: int
    seconds: float
    device: str
    strip_components: int
    weights: WeightsInfo
    warnings: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.extracted / max(self.seconds, 1e-9)


def _lock(out: Path) -> int:
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataError(f"another msdn-tune process is extracting into {out}") from None
    return fd


_OWN_NAME = re.compile(r"\.?part-\d+\.npy(?:\.tmp)?|\.?features\.json(?:\.tmp)?|\.lock")
"""Every name an extraction writes into its folder (parts and the manifest via ``.NAME.tmp``)."""


def _check_out(out: Path, *, force: bool) -> None:
    """Refuse an output folder that is not ours before anything is written (not even the lock).

    New, empty (a lock left by an earlier run aside) or a feature folder: go on (`_prepare_out`
    then checks complete / interrupted). A ``features.json`` that is not a feature folder's is
    never overwritten. Any other non-empty folder needs `force`, which writes the parts next to
    what is there, and only when none of the names an extraction writes is taken.
    """
    where = f"--out {str(out)[:200]}"
    try:
        entries = os.listdir(out) if out.is_dir() else []
    except OSError as exc:
        raise DataError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    if not [e for e in entries if e != ".lock"]:
        return
    if FEATURES_JSON in entries:
        try:
            meta = load_json(out / FEATURES_JSON, error=DataError, what="feature folder manifest")
        except DataError:
            meta = None
        if isinstance(meta, dict) and meta.get("format") == FORMAT_NAME:
            return
        raise DataError(
            f"{where}: its {FEATURES_JSON} was not written by msdn-tune data extract, and "
            "msdn-tune never overwrites such a file (not even with --force); move it away or "
            "choose another folder"
        )
    if not force:
        raise DataError(
            f"{where}: the folder is not empty and not a feature folder of msdn-tune data "
            f"extract (no {FEATURES_JSON}); choose a new or empty folder, or pass --force to "
            "write the feature parts next to what is there (it never overwrites a file "
            "msdn-tune did not write)"
        )
    taken = sorted(e for e in entries if _OWN_NAME.fullmatch(e))
    if taken:
        more = f" (+{len(taken) - 3} more)" if len(taken) > 3 else ""
        raise DataError(
            f"{where}: {', '.join(taken[:3])}{more} there {'was' if len(taken) == 1 else 'were'} "
            "not written by msdn-tune data extract, and msdn-tune never overwrites such files "
            "(not even with --force); move them away or choose another folder"
        )


def _prepare_out(
    out: Path, identity: dict[str, Any], *, resume: bool, force: bool, n_parts: int
) -> int:
    """Check the output folder (changing nothing); returns how many leading parts are done."""
    manifest = out / FEATURES_JSON
    if not manifest.is_file() and not force:  # with force, _check_out found no name taken
        if any(p for p in out.iterdir() if p.name != ".lock"):
            raise DataError(
                f"refusing to write into {out}: it is not empty and not a feature folder"
            )
    done = 0
    if manifest.is_file():
        meta = read_manifest(manifest)
        if meta.get("complete") and not force:
            raise DataError(f"{out} already holds a complete extraction; pass --force to redo it")
        if not meta.get("complete") and not (resume or force):
            raise DataError(
                f"{out} holds an interrupted extraction; pass --resume to continue it or "
                "--force to start over"
            )
        if resume and not meta.get("complete"):
            before = meta.get("identity", {})
            diff = [k for k in identity if before.get(k) != identity[k]]
            if diff:
                raise DataError(
                    f"cannot resume {out}: it was started with other {', '.join(diff)}; "
                    "pass --force instead of --resume to start over"
                )
            rows = identity["part_rows"]
            want_tail = (identity["channels"], *identity["grid"])
            while done < n_parts:
                n = min(rows, identity["n_images"] - done * rows)
                got = part_shape(out / part_name(done))
                if got != ((n, *want_tail), np.dtype(identity["dtype"])):
                    break
                done += 1
    return done


def _remove_parts_from(out: Path, done: int) -> None:
    """Delete parts ``done`` and later (and temporary files): they are redone."""
    for p in out.glob("part-*.npy"):
        with contextlib.suppress(ValueError):
            if int(p.stem.split("-")[1]) >= done:
                p.unlink()
    for p in out.glob(".part-*.tmp"):
        p.unlink()


def _write_part(out: Path, i: int, rows: np.ndarray, source: np.ndarray) -> None:
    if not np.isfinite(rows).all() and np.isfinite(source).all():
        raise DataError(
            f"feature values of part {i} overflow {rows.dtype} "
            f"(largest {float(np.abs(source).max()):g}); use --dtype float32"
        )
    tmp = out / f".{part_name(i)}.tmp"
    with open(tmp, "wb") as fh:
        np.lib.format.write_array(fh, rows, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out / part_name(i))


def extract_features(
    images: str | Path,
    res101: str | Path,
    dataset: str,
    out: str | Path,
    *,
    weights: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    resume: bool = False,
    force: bool = False,
    image_size: int = 448,
    dtype: str = "float16",
    strip_components: int | None = None,
    workers: int | None = None,
    part_rows: int | None = None,
    progress: bool = True,
) -> ExtractResult:
    """Extract layer-4 feature maps of every image of res101.mat into the feature folder ``out``.

    ``image_size`` (448 as published; multiple of 32) sets the crop and hence the grid
    (``image_size / 32``). ``workers``: image-decoding processes (default: up to 8 on CUDA, 0 on
    CPU, where the network is the bottleneck). ``part_rows`` defaults to about 64 MiB per part.
    """
    info = get_dataset(dataset)
    if image_size < 32 or image_size % 32:
        raise ConfigError(f"--image-size must be a positive multiple of 32, got {image_size}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if dtype not in ("float16", "float32"):
        raise ConfigError(f"--dtype must be float16 or float32, got {dtype!r}")
    dev = pick_device(device)
    res = read_res101(res101, need_images=True)
    assert res.image_files is not None
    paths, strip = resolve_image_paths(res.image_files, images, info, strip_components)
    warnings: list[str] = []
    if res.n_images != info.n_images:
        warnings.append(f"{res.path} lists {res.n_images} images; {info.name} has {info.n_images}")
    winfo = find_weights(weights)
    if not winfo.is_imagenet_v1:
        warnings.append(
            f"{winfo.path} is not torchvision's ImageNet V1 ResNet-101 file (SHA-256 "
            f"{winfo.sha256[:8]}..., V1 starts {V1_SHA256_PREFIX}); the features will differ "
            "from the published ones"
        )
    grid = (image_size // 32, image_size // 32)
    channels = 2048
    row_bytes = channels * grid[0] * grid[1] * np.dtype(dtype).itemsize
    part_rows = int(part_rows or max(1, PART_TARGET_BYTES // row_bytes))
    n = res.n_images
    n_parts = -(-n // part_rows)
    identity = {
        "dataset": info.name,
        "n_images": n,
        "image_files_sha256": image_files_digest(res.image_files),
        "image_size": image_size,
        "channels": channels,
        "grid": list(grid),
        "dtype": dtype,
        "part_rows": part_rows,
        "weights_sha256": winfo.sha256,
        "strip_components": strip,
    }
    out = Path(os.path.expanduser(out)).absolute()
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; expected a folder for the feature parts")
    _check_out(out, force=force)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    try:
        done = _prepare_out(out, identity, resume=resume, force=force, n_parts=n_parts)
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            **identity,
            "identity": identity,
            "images_root": str(Path(os.path.expanduser(images)).absolute()),
            "res101": str(res.path),
            "weights": str(winfo.path),
            "preprocessing": (
                f"RGB, resize shorter side {image_size} (bilinear), centre crop {image_size}, "
                "ImageNet mean/std; ResNet-101 layer4, eval mode"
            ),
            "complete": False,
        }
        model, _ = load_trunk(winfo)  # before any change: bad weights leave --out as it was
        _write_json(out / FEATURES_JSON, manifest)
        _remove_parts_from(out, done)
        t0 = time.perf_counter()
        start = done * part_rows
        _run(
            model,
            dev,
            paths,
            start,
            n,
            part_rows,
            grid,
            dtype,
            batch_size,
            workers,
            image_size,
            out,
            res.image_files,
            progress_bar(f"extract {info.name}", n, unit="images", enabled=progress),
        )
        manifest["complete"] = True
        _write_json(out / FEATURES_JSON, manifest)
        seconds = time.perf_counter() - t0
    finally:
        os.close(lock)
    with contextlib.suppress(FileNotFoundError):
        (out / ".lock").unlink()
    return ExtractResult(
        path=out,
        n_images=n,
        extracted=n - start,
        resumed_images=start,
        seconds=seconds,
        device=str(dev),
        strip_components=strip,
        weights=winfo,
        warnings=warnings,
    )


def _run(
    model: nn.Module,
    device: torch.device,
    paths: list[Path],
    start: int,
    n: int,
    part_rows: int,
    grid: tuple[int, int],
    dtype: str,
    batch_size: int,
    workers: int | None,
    image_size: int,
    out: Path,
    image_files: list[str],
    progress: ProgressBar,
) -> None:
    """Run the network over images ``start..n`` and write every part as it fills."""
    if start >= n:
        return
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    loader = torch.utils.data.DataLoader(
        _Images(paths, range(start, n), image_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    model = model.to(device).eval()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    part = start // part_rows
    buf = np.empty((part_rows, 2048, *grid), dtype=np.float32)
    fill = 0
    with progress as bar, torch.inference_mode():
        bar.advance(start)
        for index, x, errors in loader:
            bad = [(int(i), e) for i, e in zip(index.tolist(), errors, strict=True) if e]
            if bad:
                i, err = bad[0]
                raise DataError(
                    f"image_files({i + 1}) = {image_files[i]!r} -> {paths[i]} cannot be read: {err}"
                )
            feats = model(x.to(device, non_blocking=True)).float().cpu().numpy()
            pos = 0
            while pos < len(feats):
                take = min(len(feats) - pos, part_rows - fill)
                buf[fill : fill + take] = feats[pos : pos + take]
                fill += take
                pos += take
                rows_in_part = min(part_rows, n - part * part_rows)
                if fill == rows_in_part:
                    _write_part(out, part, buf[:fill].astype(dtype), buf[:fill])
                    part += 1
                    fill = 0
            bar.advance(len(feats))
