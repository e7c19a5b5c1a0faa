"""A key metric that means something without dense labels."""

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
    `reduction="min"` gives the worst class's instead of the mean over classes.
    """

    def __init__(self, num_classes: int, reduction: str = "mean"):
        super().__init__()
        if reduction not in ("mean", "min"):
            raise ValueError(f"reduction must be 'mean' or 'min', got {reduction!r}")
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
        if not annotated.any():
            return torch.tensor(0.0)
        per_class = hits[annotated] / totals[annotated]
        return per_class.mean() if self.reduction == "mean" else per_class.min()
