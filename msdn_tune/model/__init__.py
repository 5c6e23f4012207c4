"""The MSDN++ network and its training losses (pure torch: no I/O, tracking or Ray)."""

from msdn_tune.model.losses import (
    LossWeights,
    attribute_regression,
    cross_entropy_all,
    distillation,
    margin_vector,
    msdn_loss,
    self_calibration,
)
from msdn_tune.model.msdn import INTERVENTIONS, MSDN, MSDNOutput

__all__ = [
    "INTERVENTIONS",
    "MSDN",
    "LossWeights",
    "MSDNOutput",
    "attribute_regression",
    "cross_entropy_all",
    "distillation",
    "margin_vector",
    "msdn_loss",
    "self_calibration",
]
