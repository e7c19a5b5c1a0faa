"""A key metric that means something without dense labels."""

import torch
from monai.metrics import CumulativeIterationMetric

from lib.labels import IGNORE


class StrokeAccuracy(CumulativeIterationMetric):
    """Balanced accuracy on annotated voxels: for each class, the fraction of its annotated
    voxels predicted as that class, averaged over the classes that have annotations.

    `y_pred` is (B, C, ...) scores or (B, 1, ...) class indices; `y` is (B, 1, ...) class
    indices with IGNORE where nothing is annotated. On held-out strokes it tells whether the
    model generalizes from the strokes it trained on; with dense labels it is mean recall.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        predicted = y_pred.argmax(1) if y_pred.shape[1] > 1 else y_pred[:, 0].long()
        target = y[:, 0].long()
        annotated = target != IGNORE
        counts = torch.zeros(y.shape[0], 2, self.num_classes, device=y.device)
        for c in range(self.num_classes):
            of_class = annotated & (target == c)
            counts[:, 0, c] = (of_class & (predicted == c)).flatten(1).sum(1)
            counts[:, 1, c] = of_class.flatten(1).sum(1)
        return counts

    def aggregate(self) -> torch.Tensor:
        hits, totals = self.get_buffer().sum(0)
        annotated = totals > 0
        if not annotated.any():
            return torch.tensor(0.0)
        return (hits[annotated] / totals[annotated]).mean()
