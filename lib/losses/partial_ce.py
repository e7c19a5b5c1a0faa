"""Scribble and dense supervision terms."""

from __future__ import annotations

import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import Tensor

_DICE_CE = DiceCELoss(softmax=True, to_onehot_y=True)


def partial_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = -1) -> Tensor:
    """Mean cross-entropy over the annotated voxels only.

        pCE = -1/|S| * sum_{i in S} log softmax(z_i)[y_i],   S = {i : y_i != ignore_index}

    ``logits``: (B, C, D, H, W); ``target``: (B, D, H, W) or (B, 1, D, H, W) class indices 0..C-1,
    ``ignore_index`` where not annotated. With nothing annotated the result is 0, still attached to
    the graph (its gradient is zero), so ``backward()`` works on any batch.
    """
    if target.ndim == logits.ndim:
        target = target[:, 0]
    summed = F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction="sum")
    return summed / (target != ignore_index).sum().clamp(min=1)


def dense_loss(logits: Tensor, target: Tensor) -> Tensor:
    """MONAI ``DiceCELoss(softmax=True, to_onehot_y=True)``: CE + soft Dice for fully labelled samples.

    ``target``: (B, 1, D, H, W) or (B, D, H, W) class indices, every voxel labelled.
    """
    if target.ndim == logits.ndim - 1:
        target = target[:, None]
    return _DICE_CE(logits, target)
