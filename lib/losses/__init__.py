"""The CmFNet loss terms, one module each, and the hybrid loss that combines them."""

from lib.losses.consistency import feature_alignment, prediction_consistency
from lib.losses.hybrid import HybridLoss, HybridLossWeights
from lib.losses.local_affinity import local_affinity_loss
from lib.losses.partial_ce import dense_loss, partial_cross_entropy
from lib.losses.rampup import sigmoid_rampup

__all__ = [
    "HybridLoss",
    "HybridLossWeights",
    "dense_loss",
    "feature_alignment",
    "local_affinity_loss",
    "partial_cross_entropy",
    "prediction_consistency",
    "sigmoid_rampup",
]
