"""MSDN++ losses against plain numpy / loop references written from docs/model.md §1.4."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from msdn_tune.model import (
    MSDN,
    LossWeights,
    MSDNOutput,
    attribute_regression,
    cross_entropy_all,
    distillation,
    margin_vector,
    msdn_loss,
    self_calibration,
)

B, C, A = 6, 9, 5
UNSEEN = [2, 5, 7]


def np_softmax(row):
    e = np.exp(row - row.max())
    return e / e.sum()


def ref_ce(z, y):
    return float(np.mean([-math.log(np_softmax(z[b])[y[b]]) for b in range(len(y))]))


def ref_sc(z, m, unseen):
    mass = [sum(np_softmax(z[b] + m)[u] for u in unseen) for b in range(len(z))]
    return -math.log(np.mean(mass))


def ref_distill(z1, z2, m):
    l1 = 0.0
    for b in range(len(z1)):
        d = z1[b] - z2[b]
        norm = math.sqrt(sum(v * v for v in d))
        l1 += 0.0 if norm == 0 else sum(abs(v) ** 3 for v in d) / norm
    kl_p = kl_q = 0.0
    for b in range(len(z1)):
        p, q = np_softmax(z1[b] + m), np_softmax(z2[b] + m)
        mid = (p + q) / 2
        kl_p += sum(p[k] * math.log(p[k] / mid[k]) for k in range(len(p)))
        kl_q += sum(q[k] * math.log(q[k] / mid[k]) for k in range(len(q)))
    n = len(z1)
    return l1 / n + 0.5 * (kl_p / n + kl_q / n)


def ref_mse(s, t):
    return float(np.mean((s - t) ** 2))


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return {
        "z1": torch.randn(B, C, generator=g, dtype=torch.float64) * 3,
        "z2": torch.randn(B, C, generator=g, dtype=torch.float64) * 3,
        "e1": torch.randn(B, C, generator=g, dtype=torch.float64),
        "e2": torch.randn(B, C, generator=g, dtype=torch.float64),
        "s1": torch.randn(B, A, generator=g, dtype=torch.float64),
        "s2": torch.randn(B, A, generator=g, dtype=torch.float64),
        "att": torch.nn.functional.normalize(torch.rand(C, A, generator=g, dtype=torch.float64)),
        "y": torch.tensor([0, 1, 3, 4, 6, 8]),
        "m": margin_vector(C, UNSEEN, 1.0).double(),
        "mask": torch.isin(torch.arange(C), torch.tensor(UNSEEN)),
    }


def test_margin_vector():
    m = margin_vector(6, torch.tensor([1, 4]), 0.5)
    assert m.tolist() == [-0.5, 0.5, -0.5, -0.5, 0.5, -0.5]
    assert margin_vector(3, [], 1.0).tolist() == [-1.0, -1.0, -1.0]
    mask = torch.tensor([False, True, False, False, True, False])
    assert margin_vector(6, mask, 0.5).tolist() == m.tolist()


def test_cross_entropy_all_classes(data):
    got = cross_entropy_all(data["z1"], data["y"]).item()
    assert got == pytest.approx(ref_ce(data["z1"].numpy(), data["y"].numpy()), rel=1e-12)


def test_self_calibration(data):
    got = self_calibration(data["z1"], data["m"], data["mask"]).item()
    want = ref_sc(data["z1"].numpy(), data["m"].numpy(), UNSEEN)
    assert got == pytest.approx(want, rel=1e-12)
    # stays finite when the unseen mass underflows in float32
    z = torch.zeros(2, C)
    z[:, 0] = 200.0
    val = self_calibration(z.requires_grad_(), margin_vector(C, UNSEEN, 1.0), data["mask"])
    val.backward()
    assert math.isfinite(val.item()) and torch.isfinite(z.grad).all()


def test_distillation(data):
    got = distillation(data["z1"], data["z2"], data["m"]).item()
    want = ref_distill(data["z1"].numpy(), data["z2"].numpy(), data["m"].numpy())
    assert got == pytest.approx(want, rel=1e-12)


def test_distillation_zero_difference_guard(data):
    z1 = data["z1"].float().clone().requires_grad_()
    z2 = data["z1"].float().clone()
    z2[0] += 0.5  # one differing row next to identical rows
    z2.requires_grad_()
    val = distillation(z1, z2, data["m"].float())
    val.backward()
    assert math.isfinite(val.item()) and val.item() > 0
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    assert z1.grad[1:].abs().max() < 1e-6  # identical rows: no pull either way (up to rounding)
    z = data["z1"].float().clone().requires_grad_()
    same = distillation(z, z.detach().clone().requires_grad_(), data["m"].float())
    same.backward()
    assert same.item() == pytest.approx(0.0, abs=1e-7)
    assert torch.isfinite(z.grad).all()


def test_attribute_regression(data):
    got = attribute_regression(data["s1"], data["att"][data["y"]]).item()
    assert got == pytest.approx(ref_mse(data["s1"].numpy(), data["att"][data["y"]].numpy()))


def _output(data, effect=True):
    return MSDNOutput(
        z_ava=data["z1"],
        z_vaa=data["z2"],
        s_ava=data["s1"],
        s_vaa=data["s2"],
        z_ava_eff=data["e1"] if effect else None,
        z_vaa_eff=data["e2"] if effect else None,
    )


def test_msdn_loss_total_against_reference(data):
    w = LossWeights(
        lambda_sc=0.3, lambda_d=0.02, lambda_causal=0.7, lambda_ar=0.4, distill_effect=True
    )
    total, parts = msdn_loss(_output(data), data["y"], data["m"], data["mask"], w, data["att"])
    n = {k: v.numpy() for k, v in data.items()}
    ce = ref_ce(n["z1"], n["y"]) + ref_ce(n["z2"], n["y"])
    sc = ref_sc(n["z1"], n["m"], UNSEEN) + ref_sc(n["z2"], n["m"], UNSEEN)
    d = ref_distill(n["z1"], n["z2"], n["m"]) + ref_distill(n["e1"], n["e2"], np.zeros(C))
    causal = ref_ce(n["e1"], n["y"]) + ref_ce(n["e2"], n["y"])
    target = n["att"][n["y"]]
    ar = ref_mse(n["s1"], target) + ref_mse(n["s2"], target)
    want = ce + 0.3 * sc + 0.02 * d + 0.7 * causal + 0.4 * ar
    assert set(parts) == {"loss", "loss_ce", "loss_sc", "loss_d", "loss_causal", "loss_ar"}
    assert total.item() == pytest.approx(want, rel=1e-10)
    for key, value in (
        ("loss_ce", ce),
        ("loss_sc", sc),
        ("loss_d", d),
        ("loss_causal", causal),
        ("loss_ar", ar),
    ):
        assert parts[key].item() == pytest.approx(value, rel=1e-10), key
        assert not parts[key].requires_grad
    assert parts["loss"].item() == total.item()


def test_msdn_loss_reduces_to_msdn(data):
    """Published weights and λ_causal = 0: exactly the MSDN objective; off terms report 0."""
    w = LossWeights()  # CUB: λ_SC 0.1, λ_D 0.001
    total, parts = msdn_loss(_output(data, effect=False), data["y"], data["m"], data["mask"], w)
    n = {k: v.numpy() for k, v in data.items()}
    want = (
        ref_ce(n["z1"], n["y"])
        + 0.1 * ref_sc(n["z1"], n["m"], UNSEEN)
        + ref_ce(n["z2"], n["y"])
        + 0.1 * ref_sc(n["z2"], n["m"], UNSEEN)
        + 0.001 * ref_distill(n["z1"], n["z2"], n["m"])
    )
    assert total.item() == pytest.approx(want, rel=1e-10)
    assert parts["loss_causal"].item() == 0.0 and parts["loss_ar"].item() == 0.0
    # effect logits present but λ_causal = 0: the same loss
    total2, _ = msdn_loss(_output(data), data["y"], data["m"], data["mask"], w)
    assert total2.item() == total.item()
    only_ce, parts = msdn_loss(
        _output(data), data["y"], data["m"], data["mask"], LossWeights(lambda_sc=0.0, lambda_d=0.0)
    )
    assert parts["loss_sc"].item() == 0.0 and parts["loss_d"].item() == 0.0
    assert only_ce.item() == pytest.approx(ref_ce(n["z1"], n["y"]) + ref_ce(n["z2"], n["y"]))


def test_model_reduction_and_causal_gradients():
    """Intervention on with λ_causal = 0 trains exactly MSDN; with λ_causal > 0 all params learn."""
    torch.manual_seed(0)
    att, vec = torch.rand(C, A), torch.randn(A, 4)
    x, y = torch.rand(B, 12, 5), torch.tensor([0, 1, 3, 4, 6, 8])
    m, mask = margin_vector(C, UNSEEN, 1.0), torch.isin(torch.arange(C), torch.tensor(UNSEEN))
    plain = MSDN(att, vec, 12, vec_dim=4)
    with torch.no_grad():
        for p in (plain.W_2, plain.W_1_1, plain.W_2_1):
            p.normal_()
    causal = MSDN(att, vec, 12, vec_dim=4, intervention="random")
    causal.load_state_dict(plain.state_dict())
    w = LossWeights()
    loss_plain, _ = msdn_loss(plain(x), y, m, mask, w)
    loss_causal_off, _ = msdn_loss(causal(x), y, m, mask, w)
    assert loss_causal_off.item() == loss_plain.item()
    loss_on, parts = msdn_loss(causal(x), y, m, mask, LossWeights(lambda_causal=1.0))
    assert parts["loss_causal"].item() > 0
    loss_on.backward()
    for name, p in causal.named_parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_msdn_loss_errors(data):
    with pytest.raises(ValueError, match="effect logits"):
        msdn_loss(
            _output(data, effect=False),
            data["y"],
            data["m"],
            data["mask"],
            LossWeights(lambda_causal=1.0),
        )
    with pytest.raises(ValueError, match="class_attributes_normed"):
        msdn_loss(_output(data), data["y"], data["m"], data["mask"], LossWeights(lambda_ar=0.1))
