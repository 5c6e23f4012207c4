"""How many trials share one GPU: what one trial needs of its memory, and the rule behind
`resources: {gpu: auto}`.

A trial of this model is small next to a GPU: a CUB training step is about 100 GFLOP, a fraction
of a millisecond of a large GPU's bf16 throughput, and its weights are 10 MB. What it does need
is its benchmark's features close at hand: the Trainer keeps the training split, and the
evaluation sets when they fit, on the GPU in fp16 (``Trainer._place_resident``), so that no step
waits for the host. So trials are packed by memory:

    per trial = features kept on the GPU + working memory (model, gradients, optimizer state,
                the activations of one training step and one evaluation batch, CUDA's context)
    trials per GPU = how many such trials fit in 90% of the card, at most 16

Each trial then gets ``1/n`` of the GPU from Ray and its allocator is capped at that share (a
trial that outgrows it fails alone). The working-memory figures are estimates from the shapes;
``benchmarks/gpu.py`` measures the real peak per trial, and a trial reports its own peak as
``gpu/peak_mb``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CUDA_CONTEXT_BYTES = 600 * 2**20
"""What a process's CUDA context and cuBLAS workspaces take before any tensor (typical)."""
USABLE = 0.9
"""The share of a card's memory packed with trials (the rest: fragmentation, other users)."""
MAX_TRIALS_PER_GPU = 16
"""Beyond this, trials only queue on the GPU's compute (and each still pays its CUDA context)."""
COMMON_GPUS_GB = (24, 40, 48, 80, 94, 141)
"""Card sizes the rule is printed for by `space validate`."""


@dataclass(frozen=True)
class TrialShapes:
    """What sizes one trial's memory: the benchmark's shapes and the batch sizes."""

    n_train: int
    n_eval: int
    channels: int
    regions: int
    n_attributes: int
    n_classes: int
    vec_dim: int = 300
    batch_size: int = 50
    eval_batch_size: int = 100


@dataclass(frozen=True)
class TrialMemory:
    """One trial's GPU memory, in bytes, by what it is for."""

    train_features: int
    eval_features: int
    working: int

    @property
    def total(self) -> int:
        return self.train_features + self.eval_features + self.working


def working_bytes(s: TrialShapes) -> int:
    """Model, gradients, RMSprop/Adam state, one step's and one eval batch's activations,
    CUDA's context.

    Weights: four vec x D maps and V (A x vec), each with a gradient and two optimizer buffers,
    fp32. A step holds the batch's fp32 features (B x D x R, and their normalised copy) and the
    four attention maps (4 x A x B x R) with their gradients, about three copies; an evaluation
    batch the same without gradients.
    """
    params = 4 * s.vec_dim * s.channels + s.n_attributes * s.vec_dim
    weights = 4 * params * 4
    step = 4 * s.batch_size * s.regions * (2 * s.channels + 3 * 4 * s.n_attributes)
    evaluation = 4 * s.eval_batch_size * s.regions * (2 * s.channels + 4 * s.n_attributes)
    logits = 4 * 2 * s.n_eval * s.n_classes
    return CUDA_CONTEXT_BYTES + weights + step + evaluation + logits


def trial_memory(s: TrialShapes) -> TrialMemory:
    """One trial's memory when its training split and evaluation sets are kept on the GPU."""
    row = s.channels * s.regions * 2  # fp16 on the GPU
    return TrialMemory(train_features=s.n_train * row, eval_features=s.n_eval * row,
                       working=working_bytes(s))


def trials_per_gpu(gpu_bytes: int, mem: TrialMemory,
                   max_trials: int = MAX_TRIALS_PER_GPU) -> int:
    """How many trials fit on a card of `gpu_bytes` with all their features resident (0: not
    even one)."""
    return max(0, min(max_trials, math.floor(USABLE * gpu_bytes / mem.total)))


def gpu_fraction(n: int) -> float:
    """Ray's `gpu` per trial for `n` trials on a card: 1/n rounded down to Ray's 0.0001 steps,
    so that n of them always fit."""
    if n < 1:
        raise ValueError(f"trials per GPU must be >= 1, got {n}")
    return 1.0 if n == 1 else math.floor(10000 / n) / 10000


def packing_table(mem: TrialMemory,
                  sizes_gb: tuple[int, ...] = COMMON_GPUS_GB) -> list[tuple[int, int, float]]:
    """(card GB, trials per GPU, gpu per trial) for common card sizes; 0 trials: does not fit."""
    rows = []
    for gb in sizes_gb:
        n = trials_per_gpu(gb * 10**9, mem)
        rows.append((gb, n, gpu_fraction(n) if n else 0.0))
    return rows
