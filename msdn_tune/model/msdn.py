"""MSDN / MSDN++ network: two mutually distilled attention sub-nets over a region feature map.

The maths follows docs/model.md §1.2-§1.3 (what the published MSDN code trains) plus the
causal intervention of §2.3 (our MSDN++ design). This module is pure torch: no I/O, no tracking.

Notation (per image): x_r is region r of the feature map (D channels, R regions), v_i is row i of
the attribute vectors V (A x vec), Ẑ the L2-normalised class-attribute matrix (C x A).

    AVA (attribute -> visual):  S_ir  = v_iᵀ W1 x_r,   α_ir = softmax_r(v_iᵀ W2 x_r / T),
                                s_i   = Σ_r α_ir S_ir,  z = Ẑ s
    VAA (visual -> attribute):  S'_ri = x_rᵀ W1' v_i,  β_ir = softmax_i(v_iᵀ W2' x_r / T'),
                                s'_i  = Σ_r β_ir S'_ri, z' = Ẑ s'

All four maps are bilinear in (v_i, x_r) through a vec x D matrix, so they are computed together:
either as (V Wk) x (A·D MACs per region per map, after a batch-independent V Wk) or as V (Wk x)
(vec·(A+D) per region per map), whichever is cheaper for the shapes. Nothing the published code
computes but never uses (W3 / A_p, the uniform-attention ablation logits, Pred_att, the
B x A x D attribute features f, the B x R x vec features u) is computed here: s = Σ_r α_r S_r
equals v_iᵀ W1 f_i exactly, so f is never needed.

One concept: the MSDN / MSDN++ network, its attention and its published-checkpoint form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from msdn_tune.errors import ConfigError, DataError
from msdn_tune.model.interventions import INTERVENTIONS
from msdn_tune.model.published import BACKBONE_PREFIX

__all__ = ["INTERVENTIONS", "MSDN", "MSDNOutput"]

# Names in the published MSDN state_dict that carry no trained information we use: the dead W3
# branches (never receive a gradient), the one-hot helper, the margin (we take it from the
# caller) and the pruning scalar.
_PUBLISHED_IGNORED = ("W_3", "W_3_1", "weight_ce", "bias", "mask_bias", "prob_prune")
_PUBLISHED_USED = ("W_1", "W_2", "W_1_1", "W_2_1", "V")


@dataclass(frozen=True)
class MSDNOutput:
    """Per-batch outputs of :class:`MSDN`.

    Class logits carry **no margin**: which classes are unseen depends on the split being
    evaluated, so the caller adds the margin vector (see ``losses.margin_vector``).

    Attributes:
        z_ava: (B, C) class logits of the attribute->visual sub-net, Ẑ s.
        z_vaa: (B, C) class logits of the visual->attribute sub-net, Ẑ s'.
        s_ava: (B, A) attribute scores s.
        s_vaa: (B, A) attribute scores s'.
        z_ava_eff: (B, C) effect logits Ẑ(s - s̃) under the counterfactual attention; only when
            the forward pass intervened, else None.
        z_vaa_eff: (B, C) effect logits Ẑ(s' - s̃') of the VAA sub-net, or None.
    """

    z_ava: Tensor
    z_vaa: Tensor
    s_ava: Tensor
    s_vaa: Tensor
    z_ava_eff: Tensor | None = None
    z_vaa_eff: Tensor | None = None


def _normalize_rows(t: Tensor) -> Tensor:
    """L2-normalise rows; an all-zero row stays zero (SUN's attribute 88 has a zero vector)."""
    return F.normalize(t, p=2.0, dim=1, eps=1e-12)


def _inv_region_norm(x: Tensor, dtype: torch.dtype) -> Tensor:
    """1/‖x_r‖ over channels for (B, D, R) features, as (B, 1, R); F.normalize's eps guards 0."""
    acc = torch.promote_types(x.dtype, torch.float32)  # accumulate fp16/bf16 features in fp32
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=acc)
    return norm.clamp_min(1e-12).reciprocal_().to(dtype)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype when autocast is on for this device type, else None."""
    if not hasattr(torch, "get_autocast_dtype"):  # torch < 2.4
        return None
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _counterfactual(kind: str, attn: Tensor, dim: int, generator: torch.Generator | None) -> Tensor:
    """Counterfactual attention α̃ along the softmax axis ``dim``; a constant (no gradient).

    random: ε/N with ε ~ U(0, 2) i.i.d. (CAL's pooling normalisation; sums to 1 in expectation);
    uniform: 1/N; shuffle: the factual attention with every map independently permuted along
    ``dim`` (the same values, the region/attribute association broken).
    """
    n = attn.shape[dim]
    attn = attn.detach()
    if kind == "uniform":
        return torch.full((), 1.0 / n, dtype=attn.dtype, device=attn.device)
    noise = torch.rand(attn.shape, generator=generator, dtype=attn.dtype, device=attn.device)
    if kind == "random":
        return noise.mul_(2.0 / n)
    return attn.gather(dim, noise.argsort(dim=dim))


def _attention_pool(
    maps: Tensor, temp_a: float, temp_b: float, kind: str | None, generator: torch.Generator | None
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Attention pooling of both sub-nets over maps (4, A, B, R) = (S, AVA logits, S', VAA logits).

    Returns ((s, s', [e, e']), saved): attribute scores (A, B), with the effect scores
    e = Σ_r (α - α̃) S and e' = Σ_r (β - β̃) S' when ``kind`` names an intervention, and the
    attention tensors the backward pass needs. Pooling runs in at least float32 (bf16 maps under
    autocast are promoted), since the softmax and the R-term sums are where precision matters.
    """
    s_map, a_logit, s1_map, b_logit = maps.unbind(0)
    ftype = torch.promote_types(maps.dtype, torch.float32)
    alpha = torch.softmax(a_logit if temp_a == 1.0 else a_logit / temp_a, dim=2, dtype=ftype)
    beta = torch.softmax(b_logit if temp_b == 1.0 else b_logit / temp_b, dim=0, dtype=ftype)
    s = (alpha * s_map).sum(2)
    # Σ_r β_ir is not 1 (β normalises over attributes), so s' scales with R: as published.
    s1 = (beta * s1_map).sum(2)
    if kind is None:
        return (s, s1), (alpha, beta)
    # do(α := α̃) over the SAME score map: only the attention is intervened on.
    alpha_cf = _counterfactual(kind, alpha, 2, generator)
    beta_cf = _counterfactual(kind, beta, 0, generator)
    e = s - (alpha_cf * s_map).sum(2)
    e1 = s1 - (beta_cf * s1_map).sum(2)
    return (s, s1, e, e1), (alpha, beta, alpha_cf, beta_cf)


class _AttentionPool(torch.autograd.Function):
    """:func:`_attention_pool` with a hand-written backward that writes the gradient of all four
    maps straight into one (4, A, B, R) buffer, the layout the weight-gradient GEMM consumes.

    With G = g + g_e (the gradients of s and of e), for AVA (softmax over r):
        dS_ir = G_i α_ir - g_e,i α̃_ir,    dLa_ir = G_i α_ir (S_ir - s_i) / T
    and for VAA (softmax over i, per region r), with dβ_ir = G'_i S'_ir:
        dS'_ir = G'_i β_ir - g'_e,i β̃_ir,  dLb_ir = β_ir (dβ_ir - Σ_j β_jr dβ_jr) / T'
    The counterfactual attention is a constant of the intervention, so it gets no gradient.
    """

    @staticmethod
    def forward(
        ctx: Any,  # FunctionCtx, which declares none of the attributes set on it here
        maps: Tensor,
        temp_a: float,
        temp_b: float,
        kind: str | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, ...]:
        out, saved = _attention_pool(maps, temp_a, temp_b, kind, generator)
        ctx.save_for_backward(maps, out[0], out[1], *saved)
        ctx.temps = (temp_a, temp_b)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        maps, s, s1, alpha, beta, *cf = ctx.saved_tensors
        temp_a, temp_b = ctx.temps
        g, g1 = grads[0], grads[1]
        ge, ge1 = (grads[2], grads[3]) if cf else (None, None)
        big_g = (g if ge is None else g + ge).unsqueeze(2)
        big_g1 = (g1 if ge1 is None else g1 + ge1).unsqueeze(2)
        s_map, _, s1_map, _ = maps.unbind(0)

        grad = torch.empty_like(maps, memory_format=torch.contiguous_format)
        d_s, d_la, d_s1, d_lb = grad.unbind(0)
        # AVA
        torch.mul(alpha, big_g, out=d_s)
        torch.sub(s_map, s.unsqueeze(2), out=d_la)
        d_la.mul_(alpha).mul_(big_g if temp_a == 1.0 else big_g / temp_a)
        # VAA: the softmax runs over attributes, so its backward needs a per-region reduction.
        torch.mul(beta, big_g1, out=d_s1)
        torch.mul(s1_map, big_g1, out=d_lb)
        d_lb.sub_((beta * d_lb).sum(0, keepdim=True)).mul_(beta)
        if temp_b != 1.0:
            d_lb.div_(temp_b)
        if cf:
            alpha_cf, beta_cf = cf
            d_s.addcmul_(alpha_cf, ge.unsqueeze(2), value=-1.0)  # type: ignore[union-attr]
            d_s1.addcmul_(beta_cf, ge1.unsqueeze(2), value=-1.0)  # type: ignore[union-attr]
        return grad, None, None, None, None


class MSDN(nn.Module):
    """The MSDN two-sub-net model, with the optional MSDN++ counterfactual intervention.

    Parameter names and shapes match the published state_dict (W_1, W_2: vec x D; W_1_1: D x vec,
    the transposed layout the published code uses; W_2_1: vec x D; V: A x vec), and the
    normalised class matrix is the buffer ``att`` (C x A). The dead W_3 / W_3_1 are not allocated.

    Args:
        class_attributes: (C, A) class-attribute matrix, raw; rows are L2-normalised here (after
            clipping negatives to 0 when ``clip_negative_att``, as the published AWA2 script does).
        attribute_vectors: (A, vec_dim) attribute word vectors, L2-normalised per row to
            initialise the trainable V; None draws V ~ N(0, 1) (FLO has no attribute names).
        channels: D, the number of feature-map channels (2048 for ResNet-101).
        vec_dim: width of the attribute vectors (300).
        normalize_v: re-normalise V's rows at every forward pass (published AWA2 setting).
        normalize_f: L2-normalise each region vector over channels (published: always).
        temp_ava: softmax temperature of the AVA attention (published: 1).
        temp_vaa: softmax temperature of the VAA attention (published: 1).
        intervention: counterfactual attention used by MSDN++ when intervening: "none"
            (plain MSDN), "random" (ε/N with ε ~ U(0, 2)), "uniform" (1/N) or "shuffle"
            (the factual attention permuted along its softmax axis).
        clip_negative_att: clip negative class-attribute entries to 0 before normalising.

    Raises:
        ConfigError: unknown intervention or a non-positive temperature / size.
        DataError: class_attributes / attribute_vectors of the wrong rank or shape.
    """

    att: Tensor  # the registered buffer (nn.Module's __getattr__ is typed Tensor | Module)

    def __init__(
        self,
        class_attributes: Tensor,
        attribute_vectors: Tensor | None,
        channels: int,
        *,
        vec_dim: int = 300,
        normalize_v: bool = False,
        normalize_f: bool = True,
        temp_ava: float = 1.0,
        temp_vaa: float = 1.0,
        intervention: str = "none",
        clip_negative_att: bool = False,
    ) -> None:
        super().__init__()
        if intervention not in INTERVENTIONS:
            raise ConfigError(
                f"intervention: got {intervention!r}, expected one of {', '.join(INTERVENTIONS)}"
            )
        for name, value in (("temp_ava", temp_ava), ("temp_vaa", temp_vaa)):
            if not value > 0:
                raise ConfigError(f"{name}: got {value!r}, expected a positive number")
        for name, value in (("channels", channels), ("vec_dim", vec_dim)):
            if int(value) != value or value < 1:
                raise ConfigError(f"{name}: got {value!r}, expected a positive integer")
        if class_attributes.dim() != 2 or 0 in class_attributes.shape:
            raise DataError(
                "class_attributes: expected a non-empty (classes, attributes) matrix, "
                f"got shape {tuple(class_attributes.shape)}"
            )
        n_att = class_attributes.shape[1]
        if attribute_vectors is not None and tuple(attribute_vectors.shape) != (n_att, vec_dim):
            raise DataError(
                f"attribute_vectors: expected shape ({n_att}, {vec_dim}) to match "
                f"{n_att} attributes, got {tuple(attribute_vectors.shape)}"
            )

        self.channels = int(channels)
        self.vec_dim = int(vec_dim)
        self.n_attributes = int(n_att)
        self.n_classes = int(class_attributes.shape[0])
        self.normalize_v = bool(normalize_v)
        self.normalize_f = bool(normalize_f)
        self.temp_ava = float(temp_ava)
        self.temp_vaa = float(temp_vaa)
        self.intervention = intervention
        self.clip_negative_att = bool(clip_negative_att)

        self.register_buffer("att", self._prepare_att(class_attributes).float())
        if attribute_vectors is None:
            v0 = torch.randn(n_att, vec_dim)
        else:
            v0 = _normalize_rows(attribute_vectors.detach().to(torch.float32))
        self.V = nn.Parameter(v0)
        # Published initialisation: W1 ~ N(0, 1); everything else zero, so at the start the AVA
        # attention is uniform over regions and the VAA scores (hence logits) are exactly 0.
        self.W_1 = nn.Parameter(torch.randn(vec_dim, channels))
        self.W_2 = nn.Parameter(torch.zeros(vec_dim, channels))
        self.W_1_1 = nn.Parameter(torch.zeros(channels, vec_dim))
        self.W_2_1 = nn.Parameter(torch.zeros(vec_dim, channels))

    # ------------------------------------------------------------------ helpers

    def _prepare_att(self, class_attributes: Tensor) -> Tensor:
        att = class_attributes.detach()
        att = att.to(torch.promote_types(att.dtype, torch.float32))
        if self.clip_negative_att:
            att = att.clamp(min=0.0)
        norms = torch.linalg.vector_norm(att, dim=1)
        if bool(((norms - 1).abs() <= 1e-6).all()):
            # Already normalised (a published or exported matrix): kept bit for bit, so that a
            # model written out and read back gives exactly the same logits.
            return att.contiguous()
        return _normalize_rows(att).contiguous()

    @property
    def vw_first(self) -> bool:
        """Whether (V Wk) x is cheaper than V (Wk x): A·D MACs per region versus vec·(A+D)."""
        a, d = self.n_attributes, self.channels
        return a * d <= self.vec_dim * (a + d)

    @property
    def _big_maps(self) -> bool:
        """Whether each map costs >= 200 multiply-adds per feature element (CUB, FLO: yes; SUN,
        AWA2: no): from there on the single channel-major GEMM measured faster in evaluation
        than batched GEMMs on the stored layout, copy included (2-core AVX-512 CPU)."""
        a, d = self.n_attributes, self.channels
        return min(a * d, self.vec_dim * (a + d)) >= 200 * d

    def _stacked_weights(self) -> Tensor:
        """The four vec x D bilinear matrices as one (4, vec, D) tensor (W1' is stored D x vec)."""
        return torch.stack((self.W_1, self.W_2, self.W_1_1.t(), self.W_2_1))

    def _maps_channel_major(self, x: Tensor, v: Tensor) -> Tensor:
        """All four maps as a contiguous (4, A, B, R) tensor (training, and autocast inference).

        x is copied once into the channel-major (D, B·R) layout, with the normalisation fused
        into that copy (which moves contiguous runs of R floats), so that the forward and the
        weight gradient are each ONE large GEMM over all B·R regions and the map gradient needs
        no re-layout.
        """
        b, d, r = x.shape
        # Work in the parameters' dtype; under autocast the GEMM casts its inputs. (Writing a
        # bf16 copy directly is slower on CPU: mixed-dtype elementwise kernels are not
        # vectorised, while a plain dtype conversion is.)
        x = x.to(self.W_1.dtype)
        if x.requires_grad:  # not our use, but keep it differentiable
            xn = x * _inv_region_norm(x, x.dtype) if self.normalize_f else x
            xr = xn.transpose(0, 1).reshape(d, b * r)
        else:
            x_t = x.transpose(0, 1)
            buf = torch.empty((d, b, r), dtype=x.dtype, device=x.device)
            if self.normalize_f:
                # Square into the buffer and reduce over its leading (channel) axis, which
                # streams contiguous rows (a strided norm over the middle axis of (B, D, R) is
                # several times slower), then overwrite it with the normalised copy.
                torch.mul(x_t, x_t, out=buf)
                inv = buf.sum(0, keepdim=True).sqrt_().clamp_min_(1e-12).reciprocal_()
                torch.mul(x_t, inv, out=buf)
            else:
                buf.copy_(x_t)
            xr = buf.view(d, b * r)
        w = self._stacked_weights()
        if self.vw_first:
            p = torch.bmm(v.expand(4, -1, -1), w).view(4 * self.n_attributes, d)  # (4A, D)
            maps = torch.mm(p, xr)
        else:
            q = torch.mm(w.reshape(4 * self.vec_dim, d), xr)  # (4·vec, B·R)
            maps = torch.bmm(v.expand(4, -1, -1), q.view(4, self.vec_dim, b * r))
        return maps.view(4, self.n_attributes, b, r)

    def _maps_batched(self, x: Tensor, v: Tensor) -> Tensor:
        """All four maps as a (4, A, B, R) view, without autograd (full-precision evaluation).

        No weight gradient is needed, so x is used in its stored (B, D, R) layout (batched
        GEMMs, no copy of the features), and the per-region normalisation is applied to the
        maps instead, which are linear in x_r.
        """
        b, d, r = x.shape
        w = self._stacked_weights()
        x = x.to(w.dtype)  # no-op for float32 features
        if self.vw_first:
            p = torch.bmm(v.expand(4, -1, -1), w).view(4 * self.n_attributes, d)
            maps = torch.bmm(p.expand(b, -1, -1), x)  # (B, 4A, R)
        else:
            q = torch.bmm(w.view(4 * self.vec_dim, d).expand(b, -1, -1), x)  # (B, 4·vec, R)
            maps = torch.bmm(v.expand(4 * b, -1, -1), q.view(4 * b, self.vec_dim, r))
        maps = maps.view(b, 4, self.n_attributes, r)
        if self.normalize_f:
            maps.mul_(_inv_region_norm(x, maps.dtype).unsqueeze(1))
        return maps.permute(1, 2, 0, 3)

    # ------------------------------------------------------------------ forward

    def forward(
        self, x: Tensor, *, intervene: bool | None = None, generator: torch.Generator | None = None
    ) -> MSDNOutput:
        """Score a batch of feature maps.

        Args:
            x: (B, D, R) or (B, D, H, W) region features.
            intervene: also compute the MSDN++ effect logits under the counterfactual attention.
                Defaults to ``self.training and self.intervention != "none"``.
            generator: RNG for the counterfactual attention (torch's global RNG when None).

        Returns:
            The factual logits and attribute scores of both sub-nets, plus effect logits when
            intervening.
        """
        if intervene is None:
            intervene = self.training and self.intervention != "none"
        if intervene and self.intervention == "none":
            raise ConfigError("intervene=True needs an intervention other than 'none'")
        if x.dim() == 4:
            x = x.flatten(2)
        if x.dim() != 3 or x.shape[1] != self.channels:
            raise ValueError(
                f"expected features of shape (B, {self.channels}, R) or (B, {self.channels}, H, W),"
                f" got {tuple(x.shape)}"
            )
        v = _normalize_rows(self.V) if self.normalize_v else self.V
        kind = self.intervention if intervene else None
        grad = torch.is_grad_enabled()
        # Training needs the channel-major copy for its weight gradient. Without autograd it
        # pays off when the GEMM is large enough for one big GEMM (instead of B batched ones
        # with only R columns) to win back the copy, or under autocast, where the features are
        # converted anyway; otherwise keep the stored layout.
        if grad or self._big_maps or _autocast_dtype(x.device.type) is not None:
            maps = self._maps_channel_major(x, v)
        else:
            maps = self._maps_batched(x, v)
        if grad:
            pooled = _AttentionPool.apply(maps, self.temp_ava, self.temp_vaa, kind, generator)
        else:
            pooled = _attention_pool(maps, self.temp_ava, self.temp_vaa, kind, generator)[0]
        # Class logits in full precision even under autocast: (B x A)(A x C) is tiny.
        att_t = self.att.t()
        with torch.autocast(x.device.type, enabled=False):
            s_ava, s_vaa = pooled[0].t().to(att_t.dtype), pooled[1].t().to(att_t.dtype)
            z_ava, z_vaa = torch.mm(s_ava, att_t), torch.mm(s_vaa, att_t)
            if kind is None:
                return MSDNOutput(z_ava=z_ava, z_vaa=z_vaa, s_ava=s_ava, s_vaa=s_vaa)
            return MSDNOutput(
                z_ava=z_ava,
                z_vaa=z_vaa,
                s_ava=s_ava,
                s_vaa=s_vaa,
                z_ava_eff=torch.mm(pooled[2].t().to(att_t.dtype), att_t),
                z_vaa_eff=torch.mm(pooled[3].t().to(att_t.dtype), att_t),
            )

    @staticmethod
    def fuse(z_ava: Tensor, z_vaa: Tensor, w1: float) -> Tensor:
        """Inference logits w1·z + (1 - w1)·z' (published w1: CUB 0.9, SUN 0.7, AWA2 1.0)."""
        return w1 * z_ava + (1.0 - w1) * z_vaa

    # ------------------------------------------------------------------ published weights

    def load_published_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load weights saved by the published MSDN code.

        Uses W_1, W_2, W_1_1, W_2_1 and V; ``att`` (if present) replaces the class matrix after
        the same clip/normalisation (a no-op on the published, already normalised matrix). The
        dead W_3 / W_3_1, the non-trainable helpers and the root class's backbone
        (``resnet101.*``, see :mod:`msdn_tune.model.published`) are ignored.

        Raises:
            DataError: a required key is missing, a shape does not match, or a key is not one
                the published model has.
        """
        known = set(_PUBLISHED_USED + _PUBLISHED_IGNORED + ("att",))
        unknown = sorted(k for k in state_dict
                         if k not in known and not str(k).startswith(BACKBONE_PREFIX))
        if unknown:
            shown = ", ".join(map(str, unknown[:4])) + (" ..." if len(unknown) > 4 else "")
            raise DataError(
                f"published MSDN state_dict: unexpected keys {shown}; expected only "
                f"{', '.join(_PUBLISHED_USED + _PUBLISHED_IGNORED + ('att',))} and the root "
                f"class's backbone {BACKBONE_PREFIX}*"
            )
        missing = [k for k in _PUBLISHED_USED if k not in state_dict]
        if missing:
            raise DataError(f"published MSDN state_dict: missing keys {missing}")
        own = dict(self.named_parameters())
        for key in _PUBLISHED_USED:
            src = state_dict[key]
            if tuple(src.shape) != tuple(own[key].shape):
                raise DataError(
                    f"published MSDN state_dict: {key} has shape {tuple(src.shape)}, "
                    f"expected {tuple(own[key].shape)}"
                )
        if "att" in state_dict and tuple(state_dict["att"].shape) != tuple(self.att.shape):
            raise DataError(
                f"published MSDN state_dict: att has shape {tuple(state_dict['att'].shape)}, "
                f"expected {tuple(self.att.shape)}"
            )
        with torch.no_grad():
            for key in _PUBLISHED_USED:
                own[key].copy_(state_dict[key])
            if "att" in state_dict:
                self.att.copy_(self._prepare_att(state_dict["att"]))

    @classmethod
    def from_published_state_dict(
        cls,
        state_dict: Mapping[str, Tensor],
        attribute_vectors: Tensor | None = None,
        channels: int | None = None,
        **kw: object,
    ) -> MSDN:
        """Build a model whose shapes are read from a published MSDN state_dict and load it.

        Args:
            state_dict: the published checkpoint's tensors (needs ``att`` for the class matrix).
            attribute_vectors: unused by the loaded weights (V comes from the checkpoint); only
                checked for shape when given.
            channels: expected D; checked against W_1 when given.
            **kw: further constructor options (normalize_v, temp_ava, intervention, ...).

        Raises:
            DataError: keys or shapes do not form a published MSDN state_dict.
        """
        for key in (*_PUBLISHED_USED, "att"):
            if key not in state_dict:
                raise DataError(f"published MSDN state_dict: missing key {key!r}")
        vec_dim, d = state_dict["W_1"].shape
        if channels is not None and channels != d:
            raise DataError(f"published MSDN state_dict: W_1 has {d} channels, expected {channels}")
        model = cls(
            state_dict["att"],
            attribute_vectors,
            int(d),
            vec_dim=int(vec_dim),
            **kw,  # type: ignore[arg-type]
        )
        model.load_published_state_dict(state_dict)
        return model
