"""The published code's two state-dict layouts: read (head, margin, seen classes, backbone under
torchvision's names), checked, and written back in the core class's layout.

State dicts are built here with the published names and shapes (small sizes): the core class's
(with `weight_ce`) and the root class's (without it, with `resnet101.<i>.*` backbone keys)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from msdn_tune.errors import DataError
from msdn_tune.model import MSDN
from msdn_tune.model.published import (
    DEAD_KEYS,
    HEAD_KEYS,
    HELPER_KEYS,
    read_published,
    to_published,
)

N_CLS, N_ATT, VEC, D = 6, 7, 5, 9
SEEN = [0, 1, 3, 4]


def core_dict(margin=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(1, N_CLS)
    mask[0, SEEN] = -1
    return {
        "V": torch.randn(N_ATT, VEC, generator=g),
        "att": F.normalize(torch.rand(N_CLS, N_ATT, generator=g), dim=1),
        "W_1": torch.randn(VEC, D, generator=g),
        "W_2": torch.randn(VEC, D, generator=g),
        "W_3": torch.zeros(VEC, D),
        "W_1_1": torch.randn(D, VEC, generator=g),
        "W_2_1": torch.randn(VEC, D, generator=g),
        "W_3_1": torch.zeros(D, VEC),
        "weight_ce": torch.eye(N_CLS),
        "bias": torch.tensor(margin),
        "mask_bias": mask,
        "prob_prune": torch.tensor(0),
    }


def root_dict(margin=1.0):
    sd = core_dict(margin)
    del sd["weight_ce"]
    sd["bias"] = torch.tensor(int(margin)) if float(margin).is_integer() else sd["bias"]
    sd["resnet101.0.weight"] = torch.randn(64, 3, 7, 7)
    sd["resnet101.1.running_mean"] = torch.randn(64)
    sd["resnet101.7.2.conv3.weight"] = torch.randn(2048, 512, 1, 1)
    return sd


def test_core_class_dict_gives_head_margin_and_seen_classes():
    sd = core_dict(margin=0.5)
    pw = read_published(sd)
    assert pw.kind == "core" and pw.backbone == {}
    assert pw.margin == 0.5
    assert pw.seen.tolist() == SEEN
    assert set(pw.head) == set(HEAD_KEYS)
    assert (pw.n_classes, pw.n_attributes, pw.channels, pw.vec_dim) == (N_CLS, N_ATT, D, VEC)
    for k in HEAD_KEYS:
        assert torch.equal(pw.head[k], sd[k])


def test_root_class_dict_maps_the_backbone_to_torchvision_names():
    sd = root_dict(margin=2)
    pw = read_published(sd)
    assert pw.kind == "root" and pw.margin == 2.0  # an integer bias, as the root class keeps it
    assert set(pw.backbone) == {"conv1.weight", "bn1.running_mean", "layer4.2.conv3.weight"}
    assert torch.equal(pw.backbone["layer4.2.conv3.weight"], sd["resnet101.7.2.conv3.weight"])


def test_a_dict_without_bias_was_trained_without_a_margin():
    sd = core_dict()
    del sd["bias"], sd["mask_bias"]
    pw = read_published(sd)
    assert pw.margin == 0.0 and pw.seen is None


@pytest.mark.parametrize("edit, says", [
    (lambda sd: sd.__setitem__("emb_func.0.weight", torch.zeros(2, 2)), "emb_func.0.weight"),
    (lambda sd: sd.pop("W_2_1"), "missing W_2_1"),
    (lambda sd: sd.__setitem__("W_1_1", torch.zeros(VEC, D)), "W_1_1 has shape"),
    (lambda sd: sd.__setitem__("att", torch.zeros(N_CLS, N_ATT + 1)), "att has shape"),
    (lambda sd: sd.__setitem__("mask_bias", torch.zeros(1, N_CLS)), "mask_bias"),
    (lambda sd: sd.__setitem__("bias", torch.ones(2)), "bias"),
    (lambda sd: sd["V"].__setitem__((0, 0), float("nan")), "V holds NaN"),
    (lambda sd: sd.__setitem__("resnet101.9.weight", torch.zeros(1)), "resnet101.9.weight"),
    (lambda sd: sd.__setitem__("W_1", torch.zeros(VEC, D, dtype=torch.long)), "W_1 must be"),
])
def test_bad_dicts_are_refused_naming_the_key(edit, says):
    sd = core_dict()
    edit(sd)
    with pytest.raises(DataError, match="file.pth") as err:
        read_published(sd, where="file.pth")
    assert says in str(err.value)


def test_not_a_dict_of_tensors_is_refused():
    with pytest.raises(DataError, match="not a named tensor"):
        read_published({"W_1": [1, 2]}, where="f")


def test_written_dict_has_every_core_class_key_and_reads_back_the_same():
    pw = read_published(core_dict(margin=0.25))
    model = MSDN.from_published_state_dict(pw.head)
    out = to_published(dict(model.state_dict()), margin=0.25, seen=torch.tensor(SEEN))
    assert set(out) == set(HEAD_KEYS + DEAD_KEYS + HELPER_KEYS)
    assert all(v.dtype == torch.float32 for v in out.values())
    back = read_published(out)
    assert back.margin == 0.25 and back.seen.tolist() == SEEN
    again = MSDN.from_published_state_dict(back.head)
    x = torch.rand(3, D, 4)
    with torch.no_grad():
        a, b = model(x), again(x)
    assert torch.equal(a.z_ava, b.z_ava) and torch.equal(a.z_vaa, b.z_vaa)
    assert not torch.equal(out["W_1"], torch.zeros_like(out["W_1"]))
    assert torch.count_nonzero(out["W_3"]) == 0 and torch.equal(out["weight_ce"], torch.eye(N_CLS))
