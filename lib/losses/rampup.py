"""Ramp-up schedule for the regularizer weights."""

from __future__ import annotations

import math


def sigmoid_rampup(step: int | float, length: int | float) -> float:
    """exp(-5 (1 - t)^2) with t = clip(step / length, 0, 1) (Laine & Aila, 2017); 1.0 when length is 0."""
    if length < 0:
        raise ValueError(f"ramp-up length must be >= 0, got {length}")
    if length == 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)
