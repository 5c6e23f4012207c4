"""The MSDN++ network and its training losses (pure torch: no I/O, tracking or Ray).

The torch-backed names are imported on first use (PEP 562), so importing
`msdn_tune.model.interventions` (train.config does, on `msdn-tune space validate`'s start-up
path) does not cost the ~2 s torch import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from msdn_tune.model.interventions import INTERVENTIONS

if TYPE_CHECKING:
    from msdn_tune.model.losses import (
        LossWeights,
        attribute_regression,
        cross_entropy_all,
        distillation,
        margin_vector,
        msdn_loss,
        self_calibration,
    )
    from msdn_tune.model.msdn import MSDN, MSDNOutput

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

_LAZY = {
    "MSDN": "msdn",
    "MSDNOutput": "msdn",
    "LossWeights": "losses",
    "attribute_regression": "losses",
    "cross_entropy_all": "losses",
    "distillation": "losses",
    "margin_vector": "losses",
    "msdn_loss": "losses",
    "self_calibration": "losses",
}


def __getattr__(name: str) -> Any:
    """Import a torch-backed name from its module the first time it is asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
