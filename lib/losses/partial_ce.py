"""Scribble and dense supervision terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks import one_hot
from torch import Tensor

SOFT_DICE = DiceLoss()  # on probabilities and one-hot targets, per sample and class


def partial_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = -1, balanced: bool = False) -> Tensor:
    """Mean cross-entropy over the annotated voxels only.

        pCE = -1/|S| * sum_{i in S} log softmax(z_i)[y_i],   S = {i : y_i != ignore_index}

    ``balanced``: instead the mean over the annotated classes of each class's mean over its voxels, so a
    class with few stroke voxels (a small tumour) counts as much as one with many (a liver).

    ``logits``: (B, C, D, H, W); ``target``: (B, D, H, W) or (B, 1, D, H, W) class indices 0..C-1,
    ``ignore_index`` where not annotated. With nothing annotated the result is 0, still attached to
    the graph (its gradient is zero), so ``backward()`` works on any batch.
    """
    if target.ndim == logits.ndim:
        target = target[:, 0]
    target = target.long()
    if not balanced:
        summed = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
        return summed / (target != ignore_index).sum().clamp(min=1)
    counts = torch.bincount(target[target != ignore_index], minlength=logits.shape[1])
    annotated = counts > 0
    weight = torch.where(annotated, 1.0 / counts.clamp(min=1), 0.0) / annotated.sum().clamp(min=1)
    return F.cross_entropy(logits, target, weight=weight.to(logits.dtype), ignore_index=ignore_index, reduction="sum")


def dense_loss(logits: Tensor, target: Tensor, ignore_index: int = -1) -> Tensor:
    """CE + soft Dice (MONAI DiceLoss) for densely labelled samples, over the labelled voxels.

    ``target``: (B, 1, D, H, W) or (B, D, H, W) class indices; ``ignore_index`` marks voxels outside
    the label (padding, held-out blocks). Probabilities and one-hot targets are zeroed there before
    the Dice, so those voxels count in neither its numerator nor its denominator (MONAI's
    MaskedDiceLoss masks before its softmax, which would leave them in).
    """
    if target.ndim == logits.ndim - 1:
        target = target[:, None]
    labelled = (target != ignore_index).to(logits.dtype)
    ce = F.cross_entropy(logits, target[:, 0].long(), ignore_index=ignore_index)
    probabilities = logits.softmax(dim=1) * labelled
    onehot = one_hot(target.clamp(min=0), num_classes=logits.shape[1]) * labelled
    return ce + SOFT_DICE(probabilities, onehot)
