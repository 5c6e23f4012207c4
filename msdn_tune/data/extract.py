"""Images -> ResNet-101 layer-4 feature maps, as the published features were made.

``msdn-tune data extract`` reproduces the extraction of docs/model.md §4.2: the
torchvision ResNet-101 with the ImageNet **V1** weights, avgpool and fc dropped, eval mode, no
fine-tuning; each image converted to RGB, resized so its shorter side is 448 (bilinear, as
torchvision's ``Resize(448)`` does on a PIL image), centre-cropped to 448 x 448, scaled to
[0, 1] and normalised with the ImageNet mean and std; output 2048 x 14 x 14 per image. Image
paths come from ``res101.mat``'s ``image_files`` with the dataset's MATLAB prefix rule
(:func:`msdn_tune.data.registry.strip_matlab_path`).

Why no torchvision: the network is defined here (:class:`ResNet101Trunk`, the torchvision module
layout and parameter names, so torchvision's weight file loads as is) and preprocessing uses
Pillow directly. torchvision wheels are built against one exact torch build (a CUDA torchvision
does not even import next to a CPU torch), which would make the optional ``images`` extra fight
the main torch install; Pillow is all this needs. Weights are never downloaded: they are read
from torchvision's cache (``$TORCH_HOME/hub/checkpoints/resnet101-63fe2227.pth``) or from
``--weights FILE``, with ``torch.load(weights_only=True)``.

The output is a **feature folder**, the input of ``msdn-tune data import mat --features``:

``features.json``
    format marker, image count, shape, dtype, image size, the SHA-256 of the weights and of
    ``res101.mat``'s image list (so the import can refuse features of other images), the path
    rule used, and ``complete``.
``part-NNNNNN.npy``
    ``part_rows`` consecutive images each (the last part shorter), ``(n, 2048, 14, 14)`` in the
    chosen dtype, written to a temporary name, fsync'ed and renamed: a part either exists whole
    or not at all.

An interrupted extraction (Ctrl-C, crash, ``kill -9``) keeps its finished parts; ``--resume``
continues at the first missing one (any batch size), and the import refuses a folder that is not
``complete``. Memory stays at one part plus a few batches whatever the dataset size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msdn_tune.data.importers import (
    _maybe_kill,
    _Progress,
    image_files_digest,
    read_res101,
)
from msdn_tune.data.registry import DatasetInfo, get_dataset, strip_matlab_path
from msdn_tune.errors import ConfigError, DataError

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

FEATURES_JSON = "features.json"
FORMAT_NAME = "msdn-tune-features"
FORMAT_VERSION = 1
#: torchvision's file name for ``ResNet101_Weights.IMAGENET1K_V1`` (its SHA-256 starts 63fe2227).
V1_WEIGHTS_FILE = "resnet101-63fe2227.pth"
V1_SHA256_PREFIX = "63fe2227"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Bytes of one feature part (in the stored dtype).
PART_TARGET_BYTES = 64 << 20


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------


class _Bottleneck(nn.Module):
    """torchvision's ResNet V1.5 bottleneck: the stride sits on the 3 x 3 convolution."""

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: bool) -> None:
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
            if downsample
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet101Trunk(nn.Module):
    """ResNet-101 without avgpool and fc: images (B, 3, S, S) -> layer-4 maps (B, 2048, S/32, S/32).

    Module names and parameter shapes are torchvision's ``resnet101`` ones (``conv1``, ``bn1``,
    ``layer1`` ... ``layer4``, ``downsample.0/1``), so its state_dict loads directly (``fc.*``
    entries are ignored).
    """

    LAYERS = ((64, 3, 1), (128, 4, 2), (256, 23, 2), (512, 3, 2))

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks, stride) in enumerate(self.LAYERS, start=1):
            layer = [_Bottleneck(inplanes, planes, stride, downsample=True)]
            inplanes = planes * 4
            layer += [_Bottleneck(inplanes, planes, 1, downsample=False) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def default_weights_path() -> Path:
    """Where torchvision caches the ImageNet V1 weights (``torch.hub.get_dir()``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / V1_WEIGHTS_FILE


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class WeightsInfo:
    """A weights file and its content hash (recorded so a resume uses the same weights)."""

    path: Path
    sha256: str

    @property
    def is_imagenet_v1(self) -> bool:
        """Whether these are torchvision's IMAGENET1K_V1 weights (by content hash prefix)."""
        return self.sha256.startswith(V1_SHA256_PREFIX)


def find_weights(weights: str | Path | None = None) -> WeightsInfo:
    """The weights file (``weights`` or torchvision's cached V1 file) and its SHA-256.

    Nothing is downloaded: a missing file raises DataError saying where it is expected.
    """
    path = Path(weights).expanduser() if weights is not None else default_weights_path()
    if not path.is_file():
        if weights is not None:
            raise DataError(f"weights file {path} does not exist")
        raise DataError(
            f"the ResNet-101 ImageNet V1 weights are not in torchvision's cache ({path}); "
            "msdn-tune never downloads them. Copy torchvision's file "
            f"{V1_WEIGHTS_FILE} (ResNet101_Weights.IMAGENET1K_V1, "
            f"https://download.pytorch.org/models/{V1_WEIGHTS_FILE}) to that path "
            "(or set TORCH_HOME), or pass --weights FILE"
        )
    return WeightsInfo(path.absolute(), _sha256(path))


def load_trunk(
    weights: str | Path | WeightsInfo | None = None,
) -> tuple[ResNet101Trunk, WeightsInfo]:
    """The ResNet-101 trunk with weights from ``weights`` or torchvision's cache, in eval mode.

    The file is read with ``torch.load(weights_only=True)`` (a plain state_dict, possibly under
    ``state_dict``/``model`` or with DataParallel's ``module.`` prefix); ``fc.*`` is ignored. A
    file that is not such a state_dict, or whose parameters do not fit ResNet-101, raises
    DataError naming the keys.
    """
    info = weights if isinstance(weights, WeightsInfo) else find_weights(weights)
    path = info.path
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError (bad zip), ...
        raise DataError(
            f"weights file {path} cannot be loaded as a plain state_dict "
            f"(torch.load weights_only=True): {exc}"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"weights file {path} does not hold a state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file
        model = ResNet101Trunk()
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not k.startswith("fc.")]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for what, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        ):
            if keys:
                parts.append(f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}")
        raise DataError(f"weights file {path} is not a ResNet-101 state_dict ({'; '.join(parts)})")
    model.load_state_dict(
        {k: state[k].float() if state[k].is_floating_point() else state[k] for k in own},
        assign=True,
    )
    model.eval()
    return model, info


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------


def _pil() -> Any:
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
    root = Path(root).expanduser().absolute()
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


# --------------------------------------------------------------------------------------------
# the feature folder
# --------------------------------------------------------------------------------------------


def _part_name(i: int) -> str:
    return f"part-{i:06d}.npy"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} cannot be read as JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise DataError(f"{path} is not a msdn-tune feature folder description")
    if data.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: version {data.get('version')!r} is not {FORMAT_VERSION}")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _part_shape(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype from a .npy header (cheap), or None if unreadable."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
            header = fh.tell()
        if path.stat().st_size != header + int(np.prod(shape)) * np.dtype(dtype).itemsize:
            return None
        return tuple(shape), np.dtype(dtype)
    except (OSError, ValueError):
        return None


class FeatureDir:
    """A complete feature folder opened for reading (a ``FeatureSource`` for the importers)."""

    def __init__(self) -> None:
        raise TypeError("use FeatureDir.open(path)")

    @classmethod
    def open(cls, path: str | Path) -> FeatureDir:
        """Open a folder written by :func:`extract_features`; DataError if it is incomplete."""
        self = object.__new__(cls)
        self.path = Path(path).expanduser().absolute()
        meta = _read_json(self.path / FEATURES_JSON)
        self.meta = meta
        try:
            self.n_images = int(meta["n_images"])
            self.channels = int(meta["channels"])
            self.grid = (int(meta["grid"][0]), int(meta["grid"][1]))
            self.dtype = np.dtype(meta["dtype"])
            self.part_rows = int(meta["part_rows"])
            self.image_files_digest = str(meta["image_files_sha256"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise DataError(f"{self.path / FEATURES_JSON} is malformed: {exc!r}") from exc
        if min(self.n_images, self.channels, *self.grid, self.part_rows) < 1:
            raise DataError(f"{self.path / FEATURES_JSON}: sizes must be positive")
        self.regions = self.grid[0] * self.grid[1]
        self.align = self.part_rows
        n_parts = -(-self.n_images // self.part_rows)
        if not meta.get("complete"):
            done = sum(1 for i in range(n_parts) if (self.path / _part_name(i)).is_file())
            raise DataError(
                f"{self.path}: the extraction is not complete ({done} of {n_parts} parts); "
                "run 'msdn-tune data extract ... --resume' to finish it"
            )
        for i in range(n_parts):
            rows = min(self.part_rows, self.n_images - i * self.part_rows)
            want = (rows, self.channels, *self.grid)
            got = _part_shape(self.path / _part_name(i))
            if got is None or got != (want, self.dtype):
                raise DataError(
                    f"{self.path / _part_name(i)} is missing or damaged: expected {want} "
                    f"{self.dtype}, found {got}"
                )
        self._part_index = -1
        self._part: np.ndarray | None = None
        return self

    def identity(self) -> dict[str, Any]:
        st = (self.path / FEATURES_JSON).stat()
        return {"kind": "feature-dir", "path": str(self.path), "mtime_ns": st.st_mtime_ns}

    def _load(self, i: int) -> np.ndarray:
        if i != self._part_index:
            self._part = None  # unmap the previous part before mapping the next
            self._part = np.load(self.path / _part_name(i), mmap_mode="r", allow_pickle=False)
            self._part_index = i
        assert self._part is not None
        return self._part

    def read(self, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
        view = out[: hi - lo]
        pos = lo
        while pos < hi:
            i = pos // self.part_rows
            part = self._load(i)
            a = pos - i * self.part_rows
            b = min(hi - i * self.part_rows, len(part))
            view[pos - lo : pos - lo + (b - a)] = part[a:b].reshape(b - a, self.channels, -1)
            pos += b - a
        return view

    def close(self) -> None:
        self._part = None
        self._part_index = -1


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


def _prepare_out(
    out: Path, identity: dict[str, Any], *, resume: bool, force: bool, n_parts: int
) -> int:
    """Check the output folder (changing nothing); returns how many leading parts are done."""
    manifest = out / FEATURES_JSON
    if not manifest.is_file():
        if any(p for p in out.iterdir() if p.name != ".lock"):
            raise DataError(
                f"refusing to write into {out}: it is not empty and not a feature folder"
            )
    done = 0
    if manifest.is_file():
        meta = _read_json(manifest)
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
                got = _part_shape(out / _part_name(done))
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
    tmp = out / f".{_part_name(i)}.tmp"
    with open(tmp, "wb") as fh:
        np.lib.format.write_array(fh, rows, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out / _part_name(i))


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
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; expected a folder for the feature parts")
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    try:
        done = _prepare_out(out, identity, resume=resume, force=force, n_parts=n_parts)
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            **identity,
            "identity": identity,
            "images_root": str(Path(images).expanduser().absolute()),
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
            progress,
            f"extract {info.name}",
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
    progress: bool,
    label: str,
) -> None:
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
    with _Progress(progress, label, n, "images") as bar, torch.inference_mode():
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
                    _maybe_kill(part - start // part_rows)
            bar.advance(len(feats))
