"""Supervision from propagated pseudo labels, weighted by how sure the propagation is."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def weighted_cross_entropy(logits: Tensor, pseudo: Tensor, weight: Tensor) -> Tensor:
    """Cross-entropy towards ``pseudo`` labels, each voxel weighted, normalized by the total weight.

        L = sum_i w_i * CE(z_i, y_i) / sum_i w_i

    ``logits``: (B, C, ...); ``pseudo``: (B, 1, ...) class indices; ``weight``: (B, 1, ...) >= 0
    (0 = no pseudo label there). 0, still attached to the graph, when every weight is 0.
    """
    ce = F.cross_entropy(logits, pseudo[:, 0].long().clamp(min=0), reduction="none")
    return (ce * weight[:, 0]).sum() / weight.sum().clamp(min=1e-6)
