"""Dice and HD95 per class with MONAI's metrics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks import one_hot


def per_class_metrics(
    prediction: np.ndarray, truth: np.ndarray, num_classes: int, spacing
) -> dict[int, dict[str, float | bool]]:
    """{class id: {"dice", "hd95", "empty"}} for classes 1..K present in the truth.

    Dice: MONAI DiceMetric. HD95: MONAI HausdorffDistanceMetric(percentile=95) in mm with the CT's
    spacing. When a class is missing from the prediction, MONAI's HD is undefined; we then score the
    image diagonal in mm (the worst possible distance) and mark the class `empty`, so a method that
    misses a structure is not rewarded by leaving it out of the mean.
    """
    y_pred = one_hot(torch.as_tensor(prediction.astype(np.int64))[None, None], num_classes + 1)
    y = one_hot(torch.as_tensor(truth.astype(np.int64))[None, None], num_classes + 1)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(y_pred, y)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty predictions; handled below
        hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
            y_pred, y, spacing=[float(s) for s in spacing]
        )[0]
    diagonal = float(np.linalg.norm(np.asarray(truth.shape) * np.asarray(spacing, dtype=float)))
    results = {}
    for c in range(1, num_classes + 1):
        if not (truth == c).any():
            continue
        empty = not (prediction == c).any()
        distance = float(hd95[c - 1])
        results[c] = {
            "dice": float(dice[c - 1]),
            "hd95": diagonal if empty or not math.isfinite(distance) else distance,
            "empty": empty,
        }
    return results
