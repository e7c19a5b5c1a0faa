"""Inter-modal consistency terms: predictions agree, modality features align."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def prediction_consistency(
    fused_logits: Tensor, per_modality_logits: Sequence[Tensor], present: Tensor, valid: Tensor | None = None
) -> Tensor:
    """Mean KL divergence from the (detached) fused prediction to each present modality's prediction.

        L = 1/|P| * sum_{(b,m) in P} mean_{i in V_bm} KL(q_bi || p_bmi),   KL(q || p) = sum_c q_c (log q_c - log p_c)

    with q = softmax(fused).detach(), p_m = softmax(per-modality logits m), P the present
    (sample, modality) pairs and V_bm the voxels where modality m has data (``valid``, (B, M, ...)
    bool; all voxels when None). Our choice: one-directional, with the fused prediction as the teacher,
    since it sees every present modality; each modality branch is pulled towards it, and the fused
    path benefits through the encoders it shares with the branches. 0 when all predictions are equal.
    """
    log_q = F.log_softmax(fused_logits.detach(), dim=1)
    per_voxel = [(log_q.exp() * (log_q - F.log_softmax(logits, dim=1))).sum(dim=1) for logits in per_modality_logits]
    if valid is None:
        kl = torch.stack([v.flatten(1).mean(dim=1) for v in per_voxel], dim=1)  # (B, M)
    else:
        kl = torch.stack(
            [
                torch.where(valid[:, m], v, 0.0).flatten(1).sum(dim=1) / valid[:, m].flatten(1).sum(dim=1).clamp(min=1)
                for m, v in enumerate(per_voxel)
            ],
            dim=1,
        )
    # where, not a product: an absent modality's output may hold NaN (from a NaN-filled channel).
    return torch.where(present, kl, 0.0).sum() / present.sum().clamp(min=1)


def feature_alignment(features: Sequence[Tensor], present: Tensor) -> Tensor:
    """Mean cosine distance between the features of every pair of present modalities.

        L = 1/|Q| * sum_{(b,m,n) in Q} mean_i (1 - <u_bmi, u_bni>),   u = f / ||f|| over channels

    where Q holds the sample b and pairs m < n with both modalities present in b. Features are
    normalized per voxel over channels, so only their direction is aligned, not their scale.
    0 when the features are equal, and exactly 0 when no sample has two modalities present.
    """
    units = [F.normalize(f, dim=1) for f in features]
    distances, pairs_present = [], []
    for m, n in itertools.combinations(range(len(features)), 2):
        distances.append((1.0 - (units[m] * units[n]).sum(dim=1)).flatten(1).mean(dim=1))  # (B,)
        pairs_present.append(present[:, m] & present[:, n])
    if not distances or not any(p.any() for p in pairs_present):
        return features[0].new_zeros(())
    both = torch.stack(pairs_present, dim=1)
    return torch.where(both, torch.stack(distances, dim=1), 0.0).sum() / both.sum()
