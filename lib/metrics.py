"""Validation metrics that mean something without dense labels."""

import torch
from monai.metrics import CumulativeIterationMetric

from lib.labels import IGNORE


class StrokeAccuracy(CumulativeIterationMetric):
    """Balanced (soft) accuracy on annotated voxels: for each class, the mean probability the
    prediction gives that class on its annotated voxels, averaged over the classes that have annotations.

    `y_pred` is (B, C, ...) class probabilities, or (B, 1, ...) class indices (probability 1 for the
    predicted class: then it is the balanced accuracy); `y` is (B, 1, ...) class indices with IGNORE
    where nothing is annotated. On held-out strokes it tells whether the model generalizes from the
    strokes it trained on. Probabilities rather than argmax because a few hundred held-out voxels are
    all right early in a run: a hard accuracy then stays at 1.0, and a later, better model cannot beat it.
    `reduction="min"` gives the worst class's instead of the mean over classes, `"none"` each class's
    (NaN for a class without annotations).
    """

    def __init__(self, num_classes: int, reduction: str = "mean"):
        super().__init__()
        if reduction not in ("mean", "min", "none"):
            raise ValueError(f"reduction must be 'mean', 'min' or 'none', got {reduction!r}")
        self.num_classes = num_classes
        self.reduction = reduction

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y_pred.shape[1] > 1:
            probabilities = y_pred.float()
        else:
            probabilities = torch.nn.functional.one_hot(y_pred[:, 0].long(), self.num_classes).movedim(-1, 1).float()
        target = y[:, 0].long()
        annotated = target != IGNORE
        counts = torch.zeros(y.shape[0], 2, self.num_classes, device=y.device)
        for c in range(self.num_classes):
            of_class = annotated & (target == c)
            counts[:, 0, c] = (probabilities[:, c] * of_class).flatten(1).sum(1)
            counts[:, 1, c] = of_class.flatten(1).sum(1)
        return counts

    def aggregate(self) -> torch.Tensor:
        hits, totals = self.get_buffer().sum(0)
        annotated = totals > 0
        if self.reduction == "none":
            return torch.where(annotated, hits / totals.clamp(min=1), torch.nan)
        if not annotated.any():
            return torch.tensor(0.0)
        per_class = hits[annotated] / totals[annotated]
        return per_class.mean() if self.reduction == "mean" else per_class.min()


class WorstRegionDice(CumulativeIterationMetric):
    """The worst foreground class's Dice of the argmax of `y_pred` against regions `y` (B, 1, ...) of
    class indices, counted on the voxels where `y` is not IGNORE and pooled over every item; NaN when
    no item has regions (the aggregate of a validation that could not measure it).

    On a held-out case, `y` is the propagation of its strokes (lib.transforms.targets.PropagateHeldOutCased):
    whole organs, where held-out strokes only see their insides, so a model that finds a class's core but
    not its extent, or puts it elsewhere too, scores low. Hand-written because MONAI's DiceMetric averages
    per image and has no ignore value.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        predicted = y_pred.argmax(1) if y_pred.shape[1] > 1 else y_pred[:, 0].long()
        target = y[:, 0].long()
        counted = target != IGNORE
        counts = torch.zeros(y.shape[0], 3, self.num_classes, device=y.device)
        for c in range(1, self.num_classes):
            is_pred, is_true = counted & (predicted == c), target == c
            counts[:, 0, c] = (is_pred & is_true).flatten(1).sum(1)
            counts[:, 1, c] = is_pred.flatten(1).sum(1)
            counts[:, 2, c] = is_true.flatten(1).sum(1)
        return counts

    def aggregate(self) -> torch.Tensor:
        overlap, predicted, true = self.get_buffer().sum(0)
        present = true[1:] > 0
        if not present.any():
            return torch.tensor(float("nan"))
        dice = 2 * overlap[1:] / (predicted[1:] + true[1:]).clamp(min=1)
        return dice[present].min()
