"""The hybrid-supervised CmFNet loss: strokes, pseudo labels and dense labels, plus ramped-up regularizers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from lib.labels import IGNORE
from lib.losses.consistency import feature_alignment, prediction_consistency
from lib.losses.local_affinity import local_affinity_loss
from lib.losses.partial_ce import dense_loss, partial_cross_entropy
from lib.losses.pseudo import mixed_pseudo_labels, weighted_dice_ce
from lib.losses.rampup import sigmoid_rampup
from lib.networks.cmfnet import CmFNetOutput, data_on_grid, mixed_probabilities, usable_branches

if TYPE_CHECKING:
    from lib.settings import LossWeights


class HybridLoss:
    """Hybrid supervision of a :class:`~lib.networks.cmfnet.CmFNet` (our definition of the paper's).

        total = pce    * (pCE(fused) + b * sum_m pCE(m))                     samples with strokes
              + pseudo * (wDiceCE(fused) + b * sum_m wDiceCE(m))             samples with strokes
              + dense  * (DiceCE(fused) + b * sum_m DiceCE(m))               samples with a dense label
              + r(step) * (affinity * sum_m A_m + consistency * KL + alignment * F)

    - pCE: :func:`partial_cross_entropy` over the stroke voxels; per modality only where that
      modality is present and has data. Class-balanced on request (``balanced_strokes``): the train task
      asks for it while a run from scratch waits for its first model (lib.trainers.budget).
    - wDiceCE: :func:`weighted_dice_ce` towards the propagated pseudo labels, each voxel weighted
      by the propagation's confidence (lib.scribbles.propagation), 0 below ``weights.pseudo_min_confidence``
      (see LossWeights), mixed with the network's own prediction as r(step) * ``weights.self_training`` of
      the target (:func:`mixed_pseudo_labels`); that prediction mixes the fused and per-modality outputs
      with a weight drawn anew at every step, as DMSPS mixes its branches
      (:func:`~lib.networks.cmfnet.mixed_probabilities`).
    - DiceCE: :func:`dense_loss` on densely labelled samples; a dense sample is in neither pCE nor wCE.
    - A_m: :func:`local_affinity_loss` of modality m's own prediction on its own image, at the
      per-modality outputs' resolution, where m has data.
    - KL: :func:`prediction_consistency` at the per-modality resolution; F: :func:`feature_alignment`.
    - b: ``weights.branches``, the per-modality outputs' share of the supervision.
    - r: :func:`sigmoid_rampup` over ``weights.rampup_steps``.

    Per-modality logits come on a coarser grid than the patch (lib.networks.cmfnet.BRANCH_LEVEL) and
    every term of theirs is computed there, as nnU-Net supervises its low-resolution outputs: labels
    go down by :func:`downsample_labels`; pseudo-label weights, images and the fused logits are
    box-filtered.
    """

    def __init__(
        self,
        weights: LossWeights,
        kernel_size: int = 5,
        dilation: int = 1,
        sigma_intensity: float = 0.1,
        sigma_spatial: float = 5.0,
    ) -> None:
        self.weights = weights
        self.affinity_options = {
            "kernel_size": kernel_size,
            "dilation": dilation,
            "sigma_intensity": sigma_intensity,
            "sigma_spatial": sigma_spatial,
        }

    def __call__(
        self,
        output: CmFNetOutput,
        images: Tensor,
        target: Tensor,
        dense: Tensor,
        step: int,
        spacing: Sequence[float],
        pseudo: Tensor | None = None,
        confidence: Tensor | None = None,
        balanced_strokes: bool = False,
    ) -> tuple[Tensor, dict[str, float]]:
        """Total loss and the unweighted value of each computed term (plus ``rampup`` and ``total``).

        ``images``: (B, M, D, H, W), NaN where a modality has no data; ``target``: (B, 1, D, H, W)
        long, IGNORE where not annotated; ``dense``: (B,) bool, samples whose target is a dense label;
        ``spacing``: mm per spatial axis of the images; ``pseudo``/``confidence``: (B, 1, D, H, W)
        propagated labels and their weights (0 = none); ``balanced_strokes``: class-balanced pCE
        (:func:`partial_cross_entropy`).
        """
        w = self.weights
        present = output.present
        dense = dense.to(target.device)
        has_data = ~torch.isnan(images)  # (B, M, ...)
        images = torch.nan_to_num(images)
        ramp = sigmoid_rampup(step, w.rampup_steps)
        terms: dict[str, Tensor] = {}
        total = output.fused.new_zeros(())
        size = target.shape[2:]
        per_modality = output.per_modality
        num_classes = output.fused.shape[1]
        scribbled = ~dense[:, None, None, None, None]
        if per_modality:
            low = per_modality[0].shape[2:]
            low_valid = data_on_grid(has_data, low)
            usable = usable_branches(present, low_valid)
            low_target = downsample_labels(target, low, num_classes)

        if w.pce > 0:
            strokes = torch.where(scribbled, target, IGNORE)
            pce = partial_cross_entropy(output.fused, strokes, IGNORE, balanced_strokes)
            if per_modality:
                low_strokes = torch.where(scribbled, low_target, IGNORE)
                for logits, ok in zip(per_modality, usable, strict=True):
                    pce = pce + w.branches * partial_cross_entropy(
                        logits, torch.where(ok, low_strokes, IGNORE), IGNORE, balanced_strokes
                    )
            terms["pce"] = pce
            total = total + w.pce * pce

        if w.pseudo > 0 and pseudo is not None and confidence is not None:
            confidence = torch.where(confidence >= w.pseudo_min_confidence, confidence, 0.0)
            if w.self_training > 0:
                alpha = float(torch.rand(()))  # DMSPS draws the mixing weight anew at every step
                own = mixed_probabilities(
                    output.fused.detach(), [p.detach() for p in per_modality], usable if per_modality else [], alpha
                )
                pseudo, confidence = mixed_pseudo_labels(own, pseudo, confidence, ramp * w.self_training)
            weight = torch.where(scribbled, confidence, 0.0)
            term = weighted_dice_ce(output.fused, pseudo, weight)
            if per_modality:
                low_pseudo = downsample_labels(torch.where(weight > 0, pseudo, IGNORE), low, num_classes)
                low_weight = torch.where(low_pseudo != IGNORE, F.interpolate(weight, size=low, mode="area"), 0.0)
                for logits, ok in zip(per_modality, usable, strict=True):
                    term = term + w.branches * weighted_dice_ce(logits, low_pseudo, torch.where(ok, low_weight, 0.0))
            terms["pseudo"] = term
            total = total + w.pseudo * term

        if w.dense > 0 and dense.any():
            term = dense_loss(output.fused[dense], target[dense])
            for logits, ok in zip(per_modality, usable, strict=True):
                chosen = dense & ok.flatten(1).any(dim=1)
                if chosen.any():
                    term = term + w.branches * dense_loss(logits[chosen], torch.where(ok, low_target, IGNORE)[chosen])
            terms["dense"] = term
            total = total + w.dense * term

        regularized = w.affinity > 0 or w.consistency > 0
        if per_modality and regularized:
            factor = [s / n for s, n in zip(size, low, strict=True)]
            low_spacing = [s * f for s, f in zip(spacing, factor, strict=True)]
            low_images = F.interpolate(images, size=low, mode="area")

        if w.affinity > 0 and per_modality:
            affinity = total.new_zeros(())
            for m, logits in enumerate(per_modality):
                chosen = present[:, m]
                if chosen.any():
                    affinity = affinity + local_affinity_loss(
                        torch.softmax(logits[chosen], dim=1),
                        low_images[chosen, m : m + 1],
                        low_spacing,
                        valid=low_valid[chosen, m : m + 1],
                        **self.affinity_options,
                    )
            terms["affinity"] = affinity
            total = total + ramp * w.affinity * affinity

        if w.consistency > 0 and per_modality:
            fused_low = F.interpolate(output.fused, size=low, mode="area")
            terms["consistency"] = prediction_consistency(fused_low, per_modality, present, low_valid)
            total = total + ramp * w.consistency * terms["consistency"]

        if w.alignment > 0 and len(output.features) > 1:
            terms["alignment"] = feature_alignment(output.features, present)
            total = total + ramp * w.alignment * terms["alignment"]

        values = {name: float(value.detach()) for name, value in terms.items()}
        return total, {**values, "rampup": ramp, "total": float(total.detach())}


def downsample_labels(labels: Tensor, size: Sequence[int], num_classes: int) -> Tensor:
    """Class ids (B, 1, ...) with IGNORE where unlabelled, on a grid of ``size`` whose voxels cover whole
    blocks of the input: a block's class when it holds voxels of exactly one class, IGNORE otherwise.

    Written here because nearest-neighbour subsampling, the usual way to shrink a label map, drops
    one-voxel strokes on every other slice, and the mode of a block counts unlabelled voxels.
    """
    onehot = torch.stack([labels[:, 0] == c for c in range(num_classes)], dim=1).float()
    found = F.adaptive_max_pool3d(onehot, tuple(size)) > 0  # (B, C, *size)
    return torch.where(found.sum(dim=1, keepdim=True) == 1, found.float().argmax(dim=1, keepdim=True), IGNORE)
