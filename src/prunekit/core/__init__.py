"""The core: prunable tensors, scores, allocations, masks and their enforcement, accounting.

Import light: this package needs only torch.
"""
from . import accounting
from .allocation import ALLOCATIONS, PrunableTensor, erk_densities
from .mask import Mask, MaskEnforcer, enforce
from .prune import check_sparsity, prune
from .scores import CALIBRATED_SCORES, SCORES
from .targets import default_types, prunable_parameters

__all__ = [
    "ALLOCATIONS", "CALIBRATED_SCORES", "SCORES", "Mask", "MaskEnforcer", "PrunableTensor", "check_sparsity",
    "default_types", "enforce", "erk_densities", "prunable_parameters", "prune",
]
