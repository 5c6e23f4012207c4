"""MSDN / MSDN++ training losses (docs/model.md §1.4 and §2.3).

Convention (ARCHITECTURE.md): the model returns raw logits z = Ẑ s. The margin vector m (+margin
on unseen columns, -margin on seen ones) is the split's calibration; cross-entropy removes it (so
it takes raw logits), while self-calibration and the JSD of the distillation use z + m, exactly as
the published code trains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from msdn_tune.model.msdn import MSDNOutput

__all__ = [
    "LossWeights",
    "attribute_regression",
    "cross_entropy_all",
    "distillation",
    "margin_vector",
    "msdn_loss",
    "self_calibration",
]


def margin_vector(
    n_classes: int,
    unseen: Tensor | Sequence[int],
    margin: float,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """The (C,) calibration margin: +margin on unseen columns, -margin on all others.

    ``unseen`` holds class ids, or is a (C,) bool mask.

    With margin 1 this is the published ``mask_bias * bias`` (an effective stacking γ of 2).
    """
    m = torch.full((n_classes,), -float(margin), device=device)
    idx = torch.as_tensor(unseen, device=device)
    m[idx if idx.dtype == torch.bool else idx.long()] = float(margin)  # a (C,) mask or ids
    return m


def cross_entropy_all(z_raw: Tensor, y: Tensor) -> Tensor:
    """Batch-mean cross-entropy over all C classes (seen and unseen) on margin-free logits."""
    return F.cross_entropy(z_raw, y)


def self_calibration(z_raw: Tensor, m: Tensor, unseen_mask: Tensor) -> Tensor:
    """DAZLE's self-calibration -log( mean_b Σ_{u∈U} softmax(z_b + m)[u] ).

    Pushes probability mass onto unseen classes; computed in log space so that a batch whose
    unseen mass underflows still gives a finite loss and gradient. With no unseen class the loss
    is +inf (there is nothing to calibrate towards).
    """
    zm = z_raw + m
    lse_all = torch.logsumexp(zm, dim=1)
    lse_unseen = torch.logsumexp(zm.masked_fill(~unseen_mask.bool(), float("-inf")), dim=1)
    # log mean_b exp(log p_b(U)) = logsumexp_b(...) - log B
    return math.log(z_raw.shape[0]) - torch.logsumexp(lse_unseen - lse_all, dim=0)


def distillation(z1_raw: Tensor, z2_raw: Tensor, m: Tensor, eps: float = 1e-8) -> Tensor:
    """Semantic distillation between the two sub-nets (published ``compute_contrastive_loss``).

    mean_b Σ_k |d_bk|³/‖d_b‖₂ with d = z1 - z2 (margins cancel), plus the Jensen-Shannon
    divergence ½[KL(p‖M) + KL(q‖M)] of p = softmax(z1 + m), q = softmax(z2 + m), M = (p + q)/2.
    No stop-gradient: both sub-nets teach each other.

    The weighted-L1 term is at most ‖d‖², so rows with ‖d‖ <= eps contribute 0 (an error below
    eps²); the square root only ever sees sums above eps², so values and gradients stay finite
    where the published code would produce NaN (z1 == z2).
    """
    d = z1_raw - z2_raw
    sq = d.square().sum(dim=1)
    ok = sq > eps * eps
    norm = torch.where(ok, sq, torch.ones_like(sq)).sqrt()
    l1 = torch.where(ok, d.abs().pow(3).sum(dim=1) / norm, torch.zeros_like(sq)).mean()

    logp = F.log_softmax(z1_raw + m, dim=1)
    logq = F.log_softmax(z2_raw + m, dim=1)
    logm = torch.logaddexp(logp, logq) - math.log(2.0)
    kl_pm = (logp.exp() * (logp - logm)).sum(dim=1).mean()
    kl_qm = (logq.exp() * (logq - logm)).sum(dim=1).mean()
    return l1 + 0.5 * (kl_pm + kl_qm)


def attribute_regression(s: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between attribute scores and the class attribute vectors (TransZero's
    L_AR; not used by MSDN, hence off by default)."""
    return F.mse_loss(s, target)


def _full(t: Tensor) -> Tensor:
    """At least float32: losses are never computed in bf16/fp16 (float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


@dataclass(frozen=True)
class LossWeights:
    """Weights of the MSDN++ objective (defaults: the published CUB values, causal term off).

    Attributes:
        lambda_sc: self-calibration weight, the same for both sub-nets.
        lambda_d: semantic distillation weight.
        lambda_causal: weight of the MSDN++ effect cross-entropies (0 = plain MSDN).
        lambda_ar: attribute-regression weight (0 = MSDN fidelity).
        distill_effect: also distil the effect logits, λ_D·D(z_eff, z'_eff).
    """

    lambda_sc: float = 0.1
    lambda_d: float = 0.001
    lambda_causal: float = 0.0
    lambda_ar: float = 0.0
    distill_effect: bool = False


def msdn_loss(
    out: MSDNOutput,
    y: Tensor,
    m: Tensor,
    unseen_mask: Tensor,
    weights: LossWeights,
    class_attributes_normed: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The MSDN++ training objective.

    total = [CE(z) + λ_SC·SC(z)] + [CE(z') + λ_SC·SC(z')] + λ_D·D(z, z')
            + λ_causal·(CE(z_eff) + CE(z'_eff))  (+ λ_D·D(z_eff, z'_eff) if distill_effect)
            + λ_AR·(MSE(s, Ẑ[y]) + MSE(s', Ẑ[y]))

    Terms whose weight is 0 are not computed. Logits are promoted to at least float32 first, so
    the loss is computed in full precision under bf16 autocast. The effect logits carry no margin
    (§2.3), so their distillation uses a zero margin.

    Args:
        out: the model's outputs (effect logits needed when lambda_causal > 0).
        y: (B,) class ids in 0..C-1.
        m: (C,) margin vector, see :func:`margin_vector`.
        unseen_mask: (C,) bool, True on unseen classes.
        weights: loss weights.
        class_attributes_normed: (C, A) Ẑ, needed when lambda_ar > 0 (``model.att``).

    Returns:
        The total loss, and detached scalars "loss", "loss_ce", "loss_sc", "loss_d",
        "loss_causal", "loss_ar": each component summed over the two sub-nets, unweighted, 0.0
        when its weight is 0 (so loss = ce + λ_SC·sc + λ_D·d + λ_causal·causal + λ_AR·ar).

    Raises:
        ValueError: lambda_causal > 0 without effect logits, or lambda_ar > 0 without Ẑ.
    """
    z1, z2 = _full(out.z_ava), _full(out.z_vaa)
    m = m.to(z1.dtype)
    zero = z1.new_zeros(())
    ce = cross_entropy_all(z1, y) + cross_entropy_all(z2, y)
    total = ce
    sc = d = causal = ar = zero

    if weights.lambda_sc != 0.0:
        sc = self_calibration(z1, m, unseen_mask) + self_calibration(z2, m, unseen_mask)
        total = total + weights.lambda_sc * sc
    eff: tuple[Tensor, Tensor] | None = None
    if weights.lambda_causal != 0.0 or (weights.distill_effect and weights.lambda_d != 0.0):
        if out.z_ava_eff is None or out.z_vaa_eff is None:
            raise ValueError(
                "msdn_loss: the causal terms need effect logits; run the model with an "
                "intervention other than 'none' in training mode (or intervene=True)"
            )
        eff = (_full(out.z_ava_eff), _full(out.z_vaa_eff))
    if weights.lambda_d != 0.0:
        d = distillation(z1, z2, m)
        if weights.distill_effect and eff is not None:
            d = d + distillation(eff[0], eff[1], torch.zeros_like(m))
        total = total + weights.lambda_d * d
    if weights.lambda_causal != 0.0 and eff is not None:
        causal = cross_entropy_all(eff[0], y) + cross_entropy_all(eff[1], y)
        total = total + weights.lambda_causal * causal
    if weights.lambda_ar != 0.0:
        if class_attributes_normed is None:
            raise ValueError("msdn_loss: lambda_ar > 0 needs class_attributes_normed (model.att)")
        target = class_attributes_normed[y].to(z1.dtype)
        ar = attribute_regression(_full(out.s_ava), target) + attribute_regression(
            _full(out.s_vaa), target
        )
        total = total + weights.lambda_ar * ar

    parts = {
        "loss": total.detach(),
        "loss_ce": ce.detach(),
        "loss_sc": sc.detach(),
        "loss_d": d.detach(),
        "loss_causal": causal.detach(),
        "loss_ar": ar.detach(),
    }
    return total, parts
