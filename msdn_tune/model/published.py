"""The state dicts the published MSDN code saves and loads, read and written.

The published repository has two model classes with the same head and different extras:

* its **core** class (``core/MSDN.py``, what the training scripts save): the head tensors
  ``W_1 W_2 W_3 W_1_1 W_2_1 W_3_1 V att``, the one-hot helper ``weight_ce`` (C x C identity),
  the margin ``bias`` (a scalar), ``mask_bias`` (1 x C: -1 on seen classes, +1 on unseen) and
  ``prob_prune``;
* its **root** class (``MSDN.py``, what its ``Test_*.py`` scripts load the saved files into):
  the same head without ``weight_ce``, plus the ResNet-101 backbone it runs images through,
  ``resnet101.<i>.*``, an ``nn.Sequential`` of torchvision's children up to ``layer4``.

Reading one gives what msdn-tune needs to use it honestly: the head weights our :class:`MSDN`
loads, the margin it was trained with (``bias``: scored with any other margin, its unseen/seen
balance would be wrong), which classes it treated as seen, and the backbone under torchvision's
names, ready for ``data extract --weights`` so that features come from the trunk the head was
trained on. Writing goes the other way, in the core class's layout. docs/model.md §1 describes
the tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from msdn_tune.errors import DataError

HEAD_KEYS = ("W_1", "W_2", "W_1_1", "W_2_1", "V", "att")
"""The head tensors msdn-tune uses."""
DEAD_KEYS = ("W_3", "W_3_1")
"""Head tensors the published classes allocate but never train (no gradient reaches them)."""
HELPER_KEYS = ("weight_ce", "bias", "mask_bias", "prob_prune")
"""Non-trainable tensors of the published classes (``weight_ce`` only in the core class)."""
BACKBONE_PREFIX = "resnet101."

# The root class keeps torchvision's resnet101 children [:-2] in an nn.Sequential: index -> name.
_TRUNK_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
                   "7": "layer4"}


@dataclass(frozen=True)
class PublishedWeights:
    """What a published MSDN state dict holds, in msdn-tune's terms."""

    head: dict[str, Tensor]
    """``W_1 W_2 W_1_1 W_2_1 V att``, as :meth:`MSDN.load_published_state_dict` takes them."""
    margin: float
    """The training margin: ``bias`` (0 when the file has none, i.e. trained without one)."""
    seen: Tensor | None
    """Indices of the classes ``mask_bias`` marks seen (-1), ascending; None without a mask."""
    backbone: dict[str, Tensor] = field(default_factory=dict)
    """The root class's ResNet-101 trunk under torchvision's names (empty for the core class)."""
    kind: str = "core"
    """``core`` or ``root``: which published class saved it."""

    @property
    def n_classes(self) -> int:
        return int(self.head["att"].shape[0])

    @property
    def n_attributes(self) -> int:
        return int(self.head["att"].shape[1])

    @property
    def channels(self) -> int:
        return int(self.head["W_1"].shape[1])

    @property
    def vec_dim(self) -> int:
        return int(self.head["W_1"].shape[0])


def is_published(state: Mapping[str, object]) -> bool:
    """Whether a loaded state dict looks like one of the published classes' (by its head keys)."""
    return all(isinstance(state.get(k), Tensor) for k in ("W_1", "W_2", "W_1_1", "W_2_1", "V"))


def read_published(state: Mapping[str, object], where: str = "checkpoint") -> PublishedWeights:
    """Split a published state dict (either class) into head, margin, seen classes, backbone.

    Every tensor is checked before it is used: the head's shapes against each other (V: A x vec,
    W_1 W_2 W_2_1: vec x D, W_1_1: D x vec, att: C x A, mask_bias: C signs), finite values,
    and no key outside the two classes' names. `where` names the file in messages.

    Raises:
        DataError: a key is missing, unknown, of the wrong type or shape, or not finite.
    """
    if not isinstance(state, Mapping):
        raise DataError(f"{where}: not a state dict (a mapping of names to tensors)")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise DataError(f"{where}: entry {str(key)[:60]!r} is not a named tensor")
    tensors: dict[str, Tensor] = dict(state)  # type: ignore[arg-type]
    backbone_raw = {k: v for k, v in tensors.items() if k.startswith(BACKBONE_PREFIX)}
    known = set(HEAD_KEYS + DEAD_KEYS + HELPER_KEYS)
    unknown = sorted(k for k in tensors if k not in known and k not in backbone_raw)
    if unknown:
        shown = ", ".join(unknown[:4]) + (" ..." if len(unknown) > 4 else "")
        raise DataError(f"{where}: keys {shown} are not in the published MSDN classes' state "
                        f"dicts (expected {', '.join(HEAD_KEYS + DEAD_KEYS + HELPER_KEYS)} "
                        f"and {BACKBONE_PREFIX}*)")
    missing = [k for k in HEAD_KEYS if k not in tensors]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)}; a published MSDN state dict "
                        f"has {', '.join(HEAD_KEYS)}")
    head = {k: tensors[k] for k in HEAD_KEYS}
    for key, t in head.items():
        if t.ndim != 2 or not t.is_floating_point():
            raise DataError(f"{where}: {key} must be a 2-D float tensor, got "
                            f"{t.dtype} of shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise DataError(f"{where}: {key} holds NaN or inf values")
    n_att, vec = head["V"].shape
    vec_w, d = head["W_1"].shape
    n_cls = head["att"].shape[0]
    expected = {"W_1": (vec, d), "W_2": (vec, d), "W_2_1": (vec, d), "W_1_1": (d, vec),
                "V": (n_att, vec), "att": (n_cls, n_att)}
    for key, shape in expected.items():
        if tuple(head[key].shape) != shape:
            raise DataError(f"{where}: {key} has shape {tuple(head[key].shape)}, expected "
                            f"{shape} (from V: {n_att} attributes x {vec}, W_1: {vec_w} x {d} "
                            f"channels, att: {n_cls} classes)")
    margin = 0.0
    if "bias" in tensors:
        bias = tensors["bias"]
        if bias.numel() != 1 or not math.isfinite(float(bias.reshape(()).item())):
            raise DataError(f"{where}: bias (the training margin) must be one finite number, "
                            f"got shape {tuple(bias.shape)}")
        margin = float(bias.reshape(()).item())
    seen = None
    if "mask_bias" in tensors:
        mask = tensors["mask_bias"].reshape(-1)
        if mask.numel() != n_cls or not bool(((mask == 1) | (mask == -1)).all()):
            raise DataError(f"{where}: mask_bias must hold {n_cls} values of -1 (seen) or +1 "
                            f"(unseen), one per class")
        seen = torch.nonzero(mask == -1).reshape(-1)
    if "weight_ce" in tensors and tuple(tensors["weight_ce"].shape) != (n_cls, n_cls):
        raise DataError(f"{where}: weight_ce has shape {tuple(tensors['weight_ce'].shape)}, "
                        f"expected ({n_cls}, {n_cls})")
    backbone = _trunk_names(backbone_raw, where)
    return PublishedWeights(head=head, margin=margin, seen=seen, backbone=backbone,
                            kind="root" if backbone_raw or "weight_ce" not in tensors else "core")


def _trunk_names(raw: Mapping[str, Tensor], where: str) -> dict[str, Tensor]:
    """``resnet101.<i>.rest`` -> torchvision's ``<child>.rest`` (conv1, bn1, layer1..4)."""
    out: dict[str, Tensor] = {}
    for key, value in raw.items():
        index, _, rest = key[len(BACKBONE_PREFIX):].partition(".")
        child = _TRUNK_CHILDREN.get(index)
        if child is None or not rest:
            raise DataError(f"{where}: {key} is not a ResNet-101 trunk weight (the published "
                            f"root class holds {BACKBONE_PREFIX}0 (conv1), 1 (bn1) and 4-7 "
                            "(layer1-layer4))")
        out[f"{child}.{rest}"] = value
    return out


def to_published(head: Mapping[str, Tensor], *, margin: float, seen: Tensor) -> dict[str, Tensor]:
    """A state dict in the published core class's layout, every key it has.

    `head` holds our model's ``W_1 W_2 W_1_1 W_2_1 V att`` (``att`` already normalised, as the
    core class keeps it); the dead W_3 / W_3_1 are written as zeros (the published initial
    value, never trained), ``weight_ce`` as the identity, ``bias`` as `margin` and ``mask_bias``
    from `seen` (class indices). The core class gives the same class scores with it: nothing it
    computes depends on a tensor left out. Its ``bias`` is a float tensor: for a margin that is
    not a whole number, build the published class with a float ``bias`` argument, or
    ``load_state_dict`` casts the value into its integer default.
    """
    att = head["att"].detach().float().cpu()
    n_cls = att.shape[0]
    mask = torch.ones(1, n_cls)
    mask[0, seen.long()] = -1.0
    out = {k: head[k].detach().float().cpu().clone() for k in ("W_1", "W_2", "W_1_1", "W_2_1",
                                                               "V")}
    out["att"] = att.clone()
    out["W_3"] = torch.zeros_like(out["W_2"])
    out["W_3_1"] = torch.zeros_like(out["W_1_1"])
    out["weight_ce"] = torch.eye(n_cls)
    out["bias"] = torch.tensor(float(margin))
    out["mask_bias"] = mask
    out["prob_prune"] = torch.tensor(0.0)
    return out
