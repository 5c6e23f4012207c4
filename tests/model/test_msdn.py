"""MSDN / MSDN++ model: published equations, checkpoint import, intervention, shapes, state_dict.

The reference below is written from docs/model.md §1.2-§1.3 in the published form (it builds
the B x A x D attribute features f and per-attribute bilinear forms), independently of the
model's contraction order and fused pooling.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from msdn_tune.errors import ConfigError, DataError
from msdn_tune.model import INTERVENTIONS, MSDN
from msdn_tune.model.msdn import _attention_pool, _AttentionPool, _counterfactual

DT = torch.float64


def reference_forward(x, w1, w2, w11, w21, v, att, *, normalize_f=True, normalize_v=False):
    """Published MSDN equations, computed directly (float64)."""
    x = x.flatten(2).to(DT)
    if normalize_f:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if normalize_v:
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    att_n = att / att.norm(dim=1, keepdim=True).clamp_min(1e-12)
    # AVA: attention over regions, attribute features f = Σ_r α x_r, score v_iᵀ W1 f_i
    alpha = torch.softmax(torch.einsum("iv,vd,bdr->bir", v, w2, x), dim=2)
    f = torch.einsum("bir,bdr->bid", alpha, x)
    s = torch.einsum("iv,vd,bid->bi", v, w1, f)
    # VAA: S'_ri = x_rᵀ W1' v_i, attention over attributes per region
    s1_map = torch.einsum("bdr,dv,iv->bri", x, w11, v)
    beta = torch.softmax(torch.einsum("iv,vd,bdr->bir", v, w21, x), dim=1)
    s1 = torch.stack(
        [
            torch.stack(
                [
                    sum(beta[b, i, r] * s1_map[b, r, i] for r in range(x.shape[2]))
                    for i in range(v.shape[0])
                ]
            )
            for b in range(x.shape[0])
        ]
    )
    return s @ att_n.T, s1 @ att_n.T, s, s1


def published_state_dict(n_cls=5, n_att=7, vec=6, d=10, seed=0, dtype=torch.float32):
    """A state dict with the published names and shapes (small vec / channel sizes)."""
    torch.set_default_dtype(dtype)
    try:
        return _published_state_dict(n_cls, n_att, vec, d, seed)
    finally:
        torch.set_default_dtype(torch.float32)


def _published_state_dict(n_cls, n_att, vec, d, seed):
    g = torch.Generator().manual_seed(seed)
    att = F.normalize(torch.rand(n_cls, n_att, generator=g), dim=1)
    mask = -torch.ones(1, n_cls)
    mask[0, -2:] = 1
    return {
        "W_1": torch.randn(vec, d, generator=g),
        "W_2": torch.randn(vec, d, generator=g),
        "W_3": torch.randn(vec, d, generator=g),
        "W_1_1": torch.randn(d, vec, generator=g),
        "W_2_1": torch.randn(vec, d, generator=g),
        "W_3_1": torch.randn(d, vec, generator=g),
        "V": torch.randn(n_att, vec, generator=g),
        "att": att,
        "weight_ce": torch.eye(n_cls),
        "bias": torch.tensor(1.0),
        "mask_bias": mask,
        "prob_prune": torch.tensor(0.0),
    }


def random_model(n_cls=5, n_att=7, d=10, vec=6, seed=0, dtype=torch.float32, **kw):
    """A model with all maps non-zero (the published init zeroes three of them)."""
    torch.manual_seed(seed)
    model = MSDN(torch.rand(n_cls, n_att), torch.randn(n_att, vec), d, vec_dim=vec, **kw)
    with torch.no_grad():
        for p in (model.W_2, model.W_1_1, model.W_2_1):
            p.normal_()
    model = model.to(dtype)
    model.att = F.normalize(model.att, dim=1)  # re-normalised at the working precision
    return model


@pytest.mark.parametrize("normalize_v", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_published_import_equals_reference(normalize_v, grad):
    sd = published_state_dict(dtype=DT)
    model = MSDN.from_published_state_dict(sd, normalize_v=normalize_v).to(DT)
    model.load_published_state_dict(sd)  # again at full precision
    assert not any("W_3" in k for k in model.state_dict())
    x = torch.rand(3, 10, 2, 2, dtype=DT)  # (B, D, H, W) is accepted and flattened
    with torch.set_grad_enabled(grad):
        out = model(x)
    ref = reference_forward(
        x,
        *(sd[k].to(DT) for k in ("W_1", "W_2", "W_1_1", "W_2_1", "V", "att")),
        normalize_v=normalize_v,
    )
    for got, want in zip((out.z_ava, out.z_vaa, out.s_ava, out.s_vaa), ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert out.z_ava_eff is None and out.z_vaa_eff is None


# (A, D, vec): (V W) x, V (W x), and one whose evaluation also uses the channel-major layout
@pytest.mark.parametrize("shape", [(7, 10, 6), (40, 16, 6), (300, 4, 300)])
def test_contraction_orders_and_paths_agree(shape):
    n_att, d, vec = shape
    model = random_model(n_att=n_att, d=d, vec=vec, normalize_f=True, dtype=DT)
    assert model.vw_first == (n_att * d <= vec * (n_att + d))
    assert model._big_maps == (n_att == 300)
    x = torch.rand(4, d, 5, dtype=DT)
    with torch.no_grad():
        fast = model(x)
    slow = model(x)
    sd = {k: p.detach() for k, p in model.named_parameters()}
    ref = reference_forward(x, sd["W_1"], sd["W_2"], sd["W_1_1"], sd["W_2_1"], sd["V"], model.att)
    for out in (fast, slow):
        torch.testing.assert_close(out.z_ava, ref[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out.z_vaa, ref[1], rtol=1e-10, atol=1e-10)


def test_without_feature_normalisation():
    model = random_model(normalize_f=False, dtype=DT)
    x = torch.rand(2, 10, 3, dtype=DT)
    sd = {k: p.detach() for k, p in model.named_parameters()}
    ref = reference_forward(
        x, sd["W_1"], sd["W_2"], sd["W_1_1"], sd["W_2_1"], sd["V"], model.att, normalize_f=False
    )
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            out = model(x)
        torch.testing.assert_close(out.z_ava, ref[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out.z_vaa, ref[1], rtol=1e-10, atol=1e-10)


def test_published_initialisation():
    torch.manual_seed(0)
    vectors = torch.randn(8, 300) * 5
    vectors[3] = 0.0  # SUN's attribute 88 is an all-zero vector
    model = MSDN(torch.rand(4, 8), vectors, 2048)
    names = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert names == {
        "V": (8, 300),
        "W_1": (300, 2048),
        "W_2": (300, 2048),
        "W_1_1": (2048, 300),
        "W_2_1": (300, 2048),
    }
    assert all(p.requires_grad for p in model.parameters())
    assert not model.att.requires_grad
    for p in (model.W_2, model.W_1_1, model.W_2_1):
        assert torch.count_nonzero(p) == 0
    assert 0.98 < model.W_1.std().item() < 1.02 and abs(model.W_1.mean().item()) < 0.01
    norms = model.V.norm(dim=1)
    assert norms[3] == 0.0
    torch.testing.assert_close(norms[torch.arange(8) != 3], torch.ones(7))
    torch.testing.assert_close(model.att.norm(dim=1), torch.ones(4))

    # At init the AVA attention is uniform (s = mean_r S) and the VAA scores are exactly 0.
    x = torch.rand(2, 2048, 3)
    out = model(x)
    assert torch.count_nonzero(out.s_vaa) == 0 and torch.count_nonzero(out.z_vaa) == 0
    xn = F.normalize(x, dim=1)
    s_ref = torch.einsum("iv,vd,bdr->bi", model.V.detach(), model.W_1.detach(), xn) / 3
    torch.testing.assert_close(out.s_ava, s_ref, rtol=1e-4, atol=1e-4)


def test_no_word_vectors_path_and_clip():
    torch.manual_seed(1)
    att = torch.randn(6, 9)
    model = MSDN(att, None, 12, vec_dim=5, normalize_v=True, clip_negative_att=True)
    assert model.V.shape == (9, 5) and model.V.std() > 0.5  # V ~ N(0, 1), not normalised
    assert (model.att >= 0).all()
    torch.testing.assert_close(model.att, F.normalize(att.clamp(min=0), dim=1))


def test_gradients_reach_every_trained_parameter():
    model = random_model(intervention="random")
    model.train()
    out = model(torch.rand(3, 10, 4))
    assert out.z_ava_eff is not None and out.z_vaa_eff is not None
    loss = sum(t.square().sum() for t in (out.z_ava, out.z_vaa, out.z_ava_eff, out.z_vaa_eff))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", [None, "random", "uniform", "shuffle"])
@pytest.mark.parametrize("temps", [(1.0, 1.0), (0.7, 2.5)])
def test_fused_backward_matches_autograd(kind, temps):
    """The hand-written pooling backward against autograd through the same forward ops."""
    torch.manual_seed(3)
    maps = torch.randn(4, 5, 3, 6, dtype=DT, requires_grad=True)
    weights = [torch.randn(5, 3, dtype=DT) for _ in range(4)]

    def run(fn):
        out = fn(maps, temps[0], temps[1], kind, torch.Generator().manual_seed(11))
        total = sum((o * w).sum() for o, w in zip(out, weights, strict=False))
        (grad,) = torch.autograd.grad(total, maps)
        return [o.detach() for o in out], grad

    fused_out, fused_grad = run(_AttentionPool.apply)
    ref_out, ref_grad = run(lambda *a: _attention_pool(*a)[0])
    assert len(fused_out) == (2 if kind is None else 4)
    for a, b in zip(fused_out, ref_out, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(fused_grad, ref_grad, rtol=1e-12, atol=1e-12)


def test_uniform_effect_logits_equal_reference():
    model = random_model(intervention="uniform", dtype=DT)
    x = torch.rand(3, 10, 4, dtype=DT)
    model.train()
    out = model(x)
    xn = F.normalize(x, dim=1)
    v, w1, w11 = model.V.detach(), model.W_1.detach(), model.W_1_1.detach()
    s_map = torch.einsum("iv,vd,bdr->bir", v, w1, xn)
    s1_map = torch.einsum("bdr,dv,iv->bir", xn, w11, v)
    e = out.s_ava.detach() - s_map.mean(2)  # α̃ = 1/R
    e1 = out.s_vaa.detach() - s1_map.sum(2) / v.shape[0]  # β̃ = 1/A
    torch.testing.assert_close(out.z_ava_eff.detach(), e @ model.att.T, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.z_vaa_eff.detach(), e1 @ model.att.T, rtol=1e-10, atol=1e-10)


def test_counterfactual_kinds():
    torch.manual_seed(0)
    attn = torch.softmax(torch.randn(6, 4, 9, dtype=DT), dim=2)
    # random: ε/R with ε ~ U(0, 2): within [0, 2/R], rows sum to 1 in expectation.
    g = torch.Generator().manual_seed(5)
    rnd = torch.stack([_counterfactual("random", attn, 2, g) for _ in range(200)])
    assert (rnd >= 0).all() and (rnd <= 2 / 9).all()
    assert abs(rnd.sum(-1).mean().item() - 1.0) < 0.01
    assert rnd[0].sum(-1).std() > 0  # resampled, not constant
    # uniform: 1/R
    uni = _counterfactual("uniform", attn, 2, None)
    torch.testing.assert_close(uni.expand_as(attn).sum(2), torch.ones(6, 4, dtype=DT))
    # shuffle: each map a permutation of the factual one, along the given axis
    for dim in (0, 2):
        shf = _counterfactual("shuffle", attn, dim, torch.Generator().manual_seed(1))
        torch.testing.assert_close(shf.sort(dim).values, attn.sort(dim).values, rtol=0, atol=0)
        assert not torch.equal(shf, attn)
    assert not _counterfactual("shuffle", attn.requires_grad_(), 2, None).requires_grad


@pytest.mark.parametrize("kind", ["random", "uniform", "shuffle"])
def test_intervention_leaves_factual_outputs_unchanged(kind):
    base = random_model()
    model = random_model(intervention=kind)
    model.load_state_dict(base.state_dict())
    x = torch.rand(3, 10, 4)
    base.train(), model.train()
    ref, out = base(x), model(x)
    assert ref.z_ava_eff is None and out.z_ava_eff is not None
    for name in ("z_ava", "z_vaa", "s_ava", "s_vaa"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=0, atol=0)
    model.eval()  # evaluation does not intervene by default
    assert model(x).z_ava_eff is None


def test_intervention_is_reproducible_and_paths_agree():
    model = random_model(intervention="random")
    x = torch.rand(2, 10, 5)
    torch.manual_seed(7)
    a = model(x, intervene=True)
    torch.manual_seed(7)
    b = model(x, intervene=True)
    torch.manual_seed(8)
    c = model(x, intervene=True)
    torch.testing.assert_close(a.z_ava_eff, b.z_ava_eff, rtol=0, atol=0)
    assert not torch.equal(a.z_ava_eff, c.z_ava_eff)
    with torch.no_grad():
        d = model(x, intervene=True, generator=torch.Generator().manual_seed(4))
    e = model(x, intervene=True, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(d.z_vaa_eff, e.z_vaa_eff.detach(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="intervention"):
        random_model()(x, intervene=True)


@pytest.mark.parametrize(
    "n_cls,n_att,vectors,d,r",
    [
        (102, 1024, False, 32, 4),  # FLO-like: 1024 attributes, no word vectors
        (200, 312, True, 16, 3),  # CUB-like
        (717, 102, True, 8, 2),  # SUN-like
        (50, 85, True, 8, 1),  # AWA2-like, a single region
        (2, 1, True, 3, 2),  # degenerate tiny
    ],
)
def test_shape_genericity(n_cls, n_att, vectors, d, r):
    torch.manual_seed(0)
    vec = 300 if n_att == 1024 else 7
    model = MSDN(
        torch.rand(n_cls, n_att),
        torch.randn(n_att, vec) if vectors else None,
        d,
        vec_dim=vec,
        normalize_v=not vectors,
        intervention="shuffle",
    )
    x = torch.rand(2, d, r)
    out = model(x)
    assert out.z_ava.shape == out.z_vaa.shape == out.z_ava_eff.shape == (2, n_cls)
    assert out.s_ava.shape == out.s_vaa.shape == (2, n_att)
    assert all(torch.isfinite(t).all() for t in (out.z_ava, out.z_vaa, out.z_vaa_eff))
    (out.z_ava.sum() + out.z_vaa_eff.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_state_dict_round_trip(tmp_path):
    model = random_model(intervention="random")
    keys = set(model.state_dict())
    assert keys == {"W_1", "W_2", "W_1_1", "W_2_1", "V", "att"}
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    loaded = torch.load(path, weights_only=True)
    fresh = random_model(seed=9, intervention="random")
    fresh.load_state_dict(loaded)
    model.eval(), fresh.eval()
    x = torch.rand(2, 10, 3)
    torch.testing.assert_close(fresh(x).z_ava, model(x).z_ava, rtol=0, atol=0)
    # also through an in-memory buffer with the published importer's strictness untouched
    buf = io.BytesIO()
    torch.save(published_state_dict(), buf)
    buf.seek(0)
    MSDN.from_published_state_dict(torch.load(buf, weights_only=True))


def test_published_import_errors():
    sd = published_state_dict()
    model = MSDN.from_published_state_dict(sd)
    with pytest.raises(DataError, match="missing"):
        model.load_published_state_dict({k: v for k, v in sd.items() if k != "W_2"})
    with pytest.raises(DataError, match="W_1_1 has shape"):
        model.load_published_state_dict({**sd, "W_1_1": sd["W_1_1"].t()})
    with pytest.raises(DataError, match="unexpected keys"):
        model.load_published_state_dict({**sd, "module.W_1": sd["W_1"]})
    with pytest.raises(DataError, match="att has shape"):
        model.load_published_state_dict({**sd, "att": sd["att"][:3]})
    with pytest.raises(DataError, match="channels"):
        MSDN.from_published_state_dict(sd, channels=2048)
    with pytest.raises(DataError, match="'att'"):
        MSDN.from_published_state_dict({k: v for k, v in sd.items() if k != "att"})
    # att from the checkpoint replaces the class matrix
    other = MSDN(torch.rand(5, 7), None, 10, vec_dim=6)
    other.load_published_state_dict(sd)
    torch.testing.assert_close(other.att, sd["att"])


def test_invalid_arguments():
    att = torch.rand(3, 4)
    with pytest.raises(ConfigError, match="intervention"):
        MSDN(att, None, 8, intervention="dropout")
    with pytest.raises(ConfigError, match="temp_vaa"):
        MSDN(att, None, 8, temp_vaa=0.0)
    with pytest.raises(DataError, match="attribute_vectors"):
        MSDN(att, torch.randn(5, 300), 8)
    with pytest.raises(DataError, match="class_attributes"):
        MSDN(torch.rand(4), None, 8)
    with pytest.raises(ValueError, match="expected features"):
        MSDN(att, None, 8)(torch.rand(2, 9, 3))
    assert INTERVENTIONS == ("none", "random", "uniform", "shuffle")


def test_fuse_and_bf16_autocast():
    z1, z2 = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(MSDN.fuse(z1, z2, 0.9), 0.9 * z1 + 0.1 * z2)
    torch.testing.assert_close(MSDN.fuse(z1, z2, 1.0), z1)
    model = random_model(d=64, intervention="random")
    x = torch.rand(2, 64, 9)
    ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.z_ava.dtype == torch.float32
    torch.testing.assert_close(
        out.z_ava, ref.z_ava, rtol=0.05, atol=0.05 * ref.z_ava.abs().max().item()
    )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        evaluated = model(x)
    tol = 0.05 * ref.z_vaa.abs().max().item()
    torch.testing.assert_close(evaluated.z_vaa, ref.z_vaa.detach(), rtol=0.05, atol=tol)
    (out.z_ava.sum() + out.z_vaa_eff.sum()).backward()
    assert all(
        p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters()
    )


def test_half_precision_features_and_feature_gradients():
    """Features stored as float16 are accepted; a differentiable input gets its gradient."""
    model = random_model(d=16)
    x = torch.rand(3, 16, 5)
    ref = model(x)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            out = model(x.half())
        torch.testing.assert_close(out.z_ava, ref.z_ava, rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(out.z_vaa, ref.z_vaa, rtol=2e-3, atol=2e-3)
    out = model(x.half().requires_grad_())
    torch.testing.assert_close(out.z_ava, ref.z_ava, rtol=2e-3, atol=2e-3)
    xg = x.clone().requires_grad_()
    out = model(xg)
    torch.testing.assert_close(out.z_vaa, ref.z_vaa)
    out.z_ava.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
