"""Supervision from propagated pseudo labels, weighted by how sure the propagation is."""

from __future__ import annotations

import torch
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
    if not chosen.all():  # (indexing copies the logits, and its backward scatters their gradient back)
        logits, pseudo, weight = logits[chosen], pseudo[chosen], weight[chosen]
    probabilities = logits.softmax(dim=1) * weight
    onehot = one_hot(pseudo.long().clamp(min=0), num_classes=logits.shape[1]) * weight
    return ce + SOFT_DICE(probabilities, onehot)


def mixed_pseudo_labels(own: Tensor, pseudo: Tensor, confidence: Tensor, model_share: float) -> tuple[Tensor, Tensor]:
    """Pseudo labels and weights from the propagation mixed with the network's own (detached) prediction:

        q = (1 - s) * p_walker + s * p_own,  label argmax q, weight max q,   s = ``model_share``

    ``own``: (B, C, ...) class probabilities. ``p_walker`` is rebuilt from the propagation's label and
    confidence (the rest of its mass spread evenly over the other classes). In the spirit of DMSPS
    (Han et al., 2024: pseudo labels dynamically mixed from the network's own branches): the walker's
    labels cap a network trained on them at the walker's accuracy (its own errors become the targets),
    and a network that has seen every case knows, where the walker is unsure, more than the walker on
    one case does. Voxels without a pseudo label (weight 0) stay without one.
    """
    classes = own.shape[1]
    if model_share <= 0:
        return pseudo, confidence
    walker = one_hot(pseudo.long().clamp(min=0), num_classes=classes)
    walker = walker * confidence + (1 - walker) * (1 - confidence) / max(classes - 1, 1)
    mixed = (1 - model_share) * walker + model_share * own.detach().float()
    weight, label = mixed.max(dim=1, keepdim=True)
    return label, torch.where(confidence > 0, weight, 0.0)
