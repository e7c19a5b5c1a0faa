"""The hybrid-supervised CmFNet loss: scribble/dense supervision plus ramped-up regularizers."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lib.labels import IGNORE
from lib.losses.consistency import feature_alignment, prediction_consistency
from lib.losses.local_affinity import local_affinity_loss
from lib.losses.partial_ce import dense_loss, partial_cross_entropy
from lib.losses.rampup import sigmoid_rampup
from lib.networks.cmfnet import CmFNetOutput


@dataclass(frozen=True)
class HybridLossWeights:
    """Weights of the hybrid loss terms (our defaults); a weight of 0 skips its term entirely.

    ``affinity`` is large because :func:`local_affinity_loss` is a mean over neighbour *pairs*
    (62 per voxel with the 5^3 window), where the gated CRF of WSL4MIS sums over ~120 neighbours
    per pixel with weight 0.1; 10 gives a similar pull per voxel. ``affinity``, ``consistency`` and
    ``alignment`` are multiplied by ``sigmoid_rampup(step, rampup_iterations)``; 100 iterations
    let them act within the server's short retraining runs and the CPU benchmark's 400 iterations.
    """

    pce: float = 1.0
    dense: float = 1.0
    affinity: float = 10.0
    consistency: float = 0.5
    alignment: float = 0.1
    rampup_iterations: int = 100

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 0:
                raise ValueError(f"loss weight {field.name} must be >= 0, got {getattr(self, field.name)}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> HybridLossWeights:
        """From a train request / config dict such as ``{"affinity": 0, "rampup_iterations": "200"}``."""
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown loss weight(s) {unknown}; valid keys: {names}")
        parsed: dict[str, Any] = {}
        for name, raw in values.items():
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"loss weight {name} must be a number, got {raw!r}") from None
            if name == "rampup_iterations":
                if not value.is_integer():
                    raise ValueError(f"rampup_iterations must be an integer, got {raw!r}")
                value = int(value)
            parsed[name] = value
        return cls(**parsed)


class HybridLoss:
    """Hybrid supervision of a :class:`~lib.networks.cmfnet.CmFNet` (our definition of the paper's).

        total = pce * (pCE(fused) + sum_m pCE(m))                       scribbled samples
              + dense * (DiceCE(fused) + sum_m DiceCE(m))               densely labelled samples
              + r(step) * (affinity * sum_m A_m + consistency * KL + alignment * F)

    - pCE: :func:`partial_cross_entropy` over annotated voxels of the samples without a dense label,
      for per-modality outputs only on samples where that modality is present.
    - DiceCE: :func:`dense_loss` on the samples with a dense label (over their labelled voxels),
      per-modality likewise only where present. A dense sample is not in pCE: one supervised term each.
    - A_m: :func:`local_affinity_loss` of modality m's own prediction on its own image channel,
      over the samples where m is present (and the ``valid`` voxels).
    - KL: :func:`prediction_consistency`; F: :func:`feature_alignment` of the bottleneck features.
    - r: :func:`sigmoid_rampup` over ``weights.rampup_iterations``.
    """

    def __init__(
        self,
        weights: HybridLossWeights | None = None,
        kernel_size: int = 5,
        dilation: int = 1,
        sigma_intensity: float = 0.1,
        sigma_spatial: float = 5.0,
    ) -> None:
        self.weights = weights or HybridLossWeights()
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
        valid: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Total loss and the unweighted value of each computed term (plus ``rampup`` and ``total``).

        ``images``: (B, M, D, H, W); ``target``: (B, 1, D, H, W) long, -1 = not annotated;
        ``dense``: (B,) bool, samples whose target is a dense label; ``spacing``: mm per spatial axis;
        ``valid``: optional (B, M, D, H, W) mask of where each modality has data, for the affinity term.
        """
        w = self.weights
        present = output.present
        dense = dense.to(target.device)
        ramp = sigmoid_rampup(step, w.rampup_iterations)
        terms: dict[str, Tensor] = {}
        total = output.fused.new_zeros(())

        if w.pce > 0:
            scribbles = target.masked_fill(dense[:, None, None, None, None], IGNORE)
            pce = partial_cross_entropy(output.fused, scribbles, IGNORE)
            for m, logits in enumerate(output.per_modality):
                absent = ~present[:, m, None, None, None, None]
                pce = pce + partial_cross_entropy(logits, scribbles.masked_fill(absent, IGNORE), IGNORE)
            terms["pce"] = pce
            total = total + w.pce * pce

        if w.dense > 0 and dense.any():
            dense_term = dense_loss(output.fused[dense], target[dense])
            for m, logits in enumerate(output.per_modality):
                chosen = dense & present[:, m]
                if chosen.any():
                    dense_term = dense_term + dense_loss(logits[chosen], target[chosen])
            terms["dense"] = dense_term
            total = total + w.dense * dense_term

        if w.affinity > 0:
            affinity = total.new_zeros(())
            for m, logits in enumerate(output.per_modality):
                chosen = present[:, m]
                if chosen.any():
                    affinity = affinity + local_affinity_loss(
                        torch.softmax(logits[chosen], dim=1),
                        images[chosen, m : m + 1],
                        spacing,
                        valid=None if valid is None else valid[chosen, m : m + 1].bool(),
                        **self.affinity_options,
                    )
            terms["affinity"] = affinity
            total = total + ramp * w.affinity * affinity

        if w.consistency > 0:
            terms["consistency"] = prediction_consistency(output.fused, output.per_modality, present)
            total = total + ramp * w.consistency * terms["consistency"]

        if w.alignment > 0:
            terms["alignment"] = feature_alignment(output.features, present)
            total = total + ramp * w.alignment * terms["alignment"]

        values = {name: float(value.detach()) for name, value in terms.items()}
        return total, {**values, "rampup": ramp, "total": float(total.detach())}
