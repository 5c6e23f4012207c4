"""The built-in ResNet-101 trunk and its ImageNet V1 weights: find, verify, load.

Why no torchvision: the network is defined here (:class:`ResNet101Trunk`, the torchvision module
layout and parameter names, so torchvision's weight file loads as is). torchvision wheels are
built against one exact torch build (a CUDA torchvision does not even import next to a CPU
torch), which would make the optional ``images`` extra fight the main torch install. Weights are
never downloaded: they are read from torchvision's cache
(``$TORCH_HOME/hub/checkpoints/resnet101-63fe2227.pth``) or from ``--weights FILE``, with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from msdn_tune.errors import DataError

#: torchvision's file name for ``ResNet101_Weights.IMAGENET1K_V1`` (its SHA-256 starts 63fe2227).
V1_WEIGHTS_FILE = "resnet101-63fe2227.pth"
V1_SHA256_PREFIX = "63fe2227"


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
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

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


def file_sha256(path: Path) -> str:
    """A file's SHA-256, read in 8 MiB blocks (weights files are hundreds of MB)."""
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
    path = Path(os.path.expanduser(weights)) if weights is not None else default_weights_path()
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
    return WeightsInfo(path.absolute(), file_sha256(path))


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
