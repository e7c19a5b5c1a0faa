"""Supervision from propagated pseudo labels, weighted by how sure the propagation is."""

from __future__ import annotations

import torch.nn.functional as F
from monai.networks import one_hot
from torch import Tensor

from lib.losses.partial_ce import SOFT_DICE


def weighted_cross_entropy(logits: Tensor, pseudo: Tensor, weight: Tensor) -> Tensor:
    """Cross-entropy towards ``pseudo`` labels, each voxel weighted, normalized by the total weight.

        L = sum_i w_i * CE(z_i, y_i) / sum_i w_i

    ``logits``: (B, C, ...); ``pseudo``: (B, 1, ...) class indices; ``weight``: (B, 1, ...) >= 0
    (0 = no pseudo label there). 0, still attached to the graph, when every weight is 0.
    """
    ce = F.cross_entropy(logits, pseudo[:, 0].long().clamp(min=0), reduction="none")
    return (ce * weight[:, 0]).sum() / weight.sum().clamp(min=1e-6)


def weighted_dice_ce(logits: Tensor, pseudo: Tensor, weight: Tensor) -> Tensor:
    """:func:`weighted_cross_entropy` plus a soft Dice in which each voxel counts by its weight.

    The Dice term (MONAI's DiceLoss on weighted probabilities and weighted one-hot targets) gives a
    small organ as much say as a large one: with cross-entropy alone the small ones were learned last.
    Samples without any weight are left out of the Dice (not counted as perfect).
    """
    ce = weighted_cross_entropy(logits, pseudo, weight)
    chosen = weight.flatten(1).sum(dim=1) > 0
    if not chosen.any():
        return ce
    logits, pseudo, weight = logits[chosen], pseudo[chosen], weight[chosen]
    probabilities = logits.softmax(dim=1) * weight
    onehot = one_hot(pseudo.long().clamp(min=0), num_classes=logits.shape[1]) * weight
    return ce + SOFT_DICE(probabilities, onehot)
