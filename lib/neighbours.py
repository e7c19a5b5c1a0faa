"""Pairs of neighbouring voxels within a window, as tensor views (for the affinity loss and the CRF)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import Tensor


def half_window(kernel_size: int, dilation: int = 1) -> list[tuple[int, int, int]]:
    """One offset of each +/- pair in a kernel_size^3 window (the lexicographically positive ones)."""
    radius = range(-(kernel_size // 2), kernel_size // 2 + 1)
    return [
        (dz * dilation, dy * dilation, dx * dilation)
        for dz, dy, dx in itertools.product(radius, repeat=3)
        if (dz, dy, dx) > (0, 0, 0)
    ]


def pair_views(t: Tensor, offset: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Views of ``t`` (..., D, H, W) at voxels i and at i + offset, over the i for which both lie inside."""
    first: list[slice] = [slice(None)] * (t.ndim - 3)
    second: list[slice] = [slice(None)] * (t.ndim - 3)
    for d, size in zip(offset, t.shape[-3:], strict=True):
        first.append(slice(max(0, -d), size - max(0, d)))
        second.append(slice(max(0, d), size - max(0, -d)))
    return t[tuple(first)], t[tuple(second)]
