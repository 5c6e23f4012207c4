"""The names of the MSDN++ counterfactual interventions (docs/model.md §2.3), defined once.

A module of its own, free of torch, so the trainer's configuration (and through it
`msdn-tune space validate`) can check an intervention name without importing torch.
"""

from __future__ import annotations

__all__ = ["INTERVENTIONS"]

INTERVENTIONS: tuple[str, ...] = ("none", "random", "uniform", "shuffle")
"""none: plain MSDN; random: ε/N attention with ε ~ U(0, 2); uniform: 1/N attention;
shuffle: the factual attention permuted along its softmax axis."""
