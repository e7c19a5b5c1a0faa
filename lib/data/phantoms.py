"""Synthetic paired CT/MR abdomen phantoms with known ground truth, deterministic by seed.

The anatomy is defined once in world coordinates (mm, RAS) and rasterized separately on
each modality's own grid, so the CT and MR of a case are co-registered in scanner space
while their spacing, field of view, axis directions and a small rigid offset differ.
Contrasts are chosen so that fusion matters: liver and spleen look alike on CT but not
on MR, the tumour is faint on CT and clear on MR, bone is bright on CT and dark on MR.
"""

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.spatial.transform import Rotation

from lib.labels import DEMO_LABELS

# Tissue -> (CT in HU, MR in arbitrary T2-like units). "soft" is unlabelled soft tissue.
CONTRAST = {
    "air": (-1000.0, 0.0),
    "fat": (-100.0, 0.85),
    "soft": (40.0, 0.35),
    "kidney": (30.0, 0.70),
    "liver": (60.0, 0.25),
    "spleen": (52.0, 0.60),
    "tumour": (74.0, 0.95),
    "bone": (700.0, 0.06),
}

CT_SHAPE = (96, 96, 48)
CT_SPACING = (3.5, 3.5, 5.0)
MR_SHAPE = (80, 84, 56)
MR_SPACING = (4.2, 4.0, 4.5)


@dataclass
class PhantomCase:
    """One case: volumes as float32/uint8 arrays with their 4x4 voxel -> world (RAS mm) affines."""

    ct: np.ndarray
    ct_affine: np.ndarray
    mr: np.ndarray
    mr_affine: np.ndarray
    truth: np.ndarray  # dense labels on the CT grid, ids of DEMO_LABELS


def grid_affine(shape, spacing, directions: np.ndarray, center_mm) -> np.ndarray:
    """Affine whose voxel grid of `shape` is centred on `center_mm` with the given axis directions."""
    affine = np.eye(4)
    affine[:3, :3] = directions @ np.diag(spacing)
    affine[:3, 3] = np.asarray(center_mm) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def world_coordinates(shape, affine) -> np.ndarray:
    """(X, Y, Z, 3) world coordinates of every voxel centre."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _ellipsoid(xyz, center, radii) -> np.ndarray:
    return (((xyz - np.asarray(center)) / np.asarray(radii)) ** 2).sum(-1) <= 1.0


class _Anatomy:
    """Random but plausible organ placement for one case, evaluated at any world points."""

    def __init__(self, rng: np.random.Generator):
        def jitter(scale):
            return rng.uniform(-scale, scale, 3)

        self.body_radii = np.array([150.0, 110.0]) * rng.uniform(0.92, 1.05)
        self.fat_thickness = rng.uniform(10.0, 18.0)
        self.liver = (
            np.array([-55.0, 5.0, 10.0]) + jitter(8),
            np.array([70.0, 60.0, 75.0]) * rng.uniform(0.9, 1.1),
        )
        self.spleen = (
            np.array([75.0, -25.0, 30.0]) + jitter(8),
            np.array([28.0, 38.0, 45.0]) * rng.uniform(0.85, 1.15),
        )
        self.kidneys = [
            (np.array([side * 60.0, -45.0, -35.0]) + jitter(5), np.array([24.0, 26.0, 45.0])) for side in (-1, 1)
        ]
        self.spine_center = np.array([0.0, -70.0]) + rng.uniform(-4, 4, 2)
        self.spine_radius = rng.uniform(16.0, 20.0)
        # tumour: a sphere well inside the liver
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        self.tumour_radius = rng.uniform(14.0, 20.0)
        offset = direction * (self.liver[1] - self.tumour_radius) * rng.uniform(0.0, 0.45)
        self.tumour = (self.liver[0] + offset, np.full(3, self.tumour_radius))

    def tissues(self, xyz) -> tuple[np.ndarray, np.ndarray]:
        """Tissue name per point (object array) and the ground-truth label id per point."""
        x, y = xyz[..., 0], xyz[..., 1]
        rx, ry = self.body_radii
        r = np.sqrt((x / rx) ** 2 + (y / ry) ** 2)
        tissue = np.full(xyz.shape[:-1], "air", dtype=object)
        tissue[r <= 1.0] = "fat"
        inner = 1.0 - self.fat_thickness / rx
        tissue[r <= inner] = "soft"
        for kidney in self.kidneys:
            tissue[_ellipsoid(xyz, *kidney) & (r <= inner)] = "kidney"
        labels = np.zeros(xyz.shape[:-1], np.uint8)
        for name in ("liver", "spleen", "tumour"):
            inside = _ellipsoid(xyz, *getattr(self, name)) & (r <= inner)
            tissue[inside] = name
            labels[inside] = DEMO_LABELS[name]
        spine = np.hypot(x - self.spine_center[0], y - self.spine_center[1]) <= self.spine_radius
        tissue[spine] = "bone"
        labels[spine] = DEMO_LABELS["bone"]
        return tissue, labels


def _render(tissue: np.ndarray, modality: int) -> np.ndarray:
    image = np.zeros(tissue.shape, np.float32)
    for name, values in CONTRAST.items():
        image[tissue == name] = values[modality]
    return image


def _bias_field(shape, rng) -> np.ndarray:
    """Smooth multiplicative MR bias field, about +-20 %."""
    coarse = rng.normal(size=(4, 4, 4))
    grids = np.meshgrid(*[np.linspace(0, 3, n) for n in shape], indexing="ij")
    field = map_coordinates(coarse, grids, order=3, mode="nearest")  # cubic upsampling of a 4^3 grid
    return (1.0 + 0.2 * field / (np.abs(field).max() + 1e-6)).astype(np.float32)


def scaled_grid(shape, spacing, grid_scale: float) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """`shape` scaled by `grid_scale` and `spacing` by its inverse: the same field of view, coarser or finer."""
    if grid_scale <= 0:
        raise ValueError(f"grid_scale must be > 0, got {grid_scale}")
    new_shape = tuple(max(1, round(n * grid_scale)) for n in shape)
    return new_shape, tuple(s * n / m for s, n, m in zip(spacing, shape, new_shape, strict=True))


def make_case(seed: int, grid_scale: float = 1.0) -> PhantomCase:
    """One paired CT/MR case; the same seed always gives the same volumes.

    `grid_scale` < 1 rasterizes the same anatomy (same seed, same field of view) on coarser grids,
    e.g. 0.5 gives a 48 x 48 x 24 CT at 7 x 7 x 10 mm, for benchmarks on a small CPU.
    """
    rng = np.random.default_rng(seed)
    anatomy = _Anatomy(rng)
    ct_shape, ct_spacing = scaled_grid(CT_SHAPE, CT_SPACING, grid_scale)
    mr_shape, mr_spacing = scaled_grid(MR_SHAPE, MR_SPACING, grid_scale)

    # CT: LPS-ordered voxel axes (as DICOM-converted NIfTI usually are), centred on the origin.
    ct_affine = grid_affine(ct_shape, ct_spacing, np.diag([-1.0, -1.0, 1.0]), rng.uniform(-5, 5, 3))
    tissue, truth = anatomy.tissues(world_coordinates(ct_shape, ct_affine))
    ct = gaussian_filter(_render(tissue, 0), sigma=0.7)
    ct += rng.normal(0.0, 12.0, ct.shape).astype(np.float32)

    # MR: RAS-ordered axes, its own spacing and field of view, rotated a few degrees and shifted.
    rotation = Rotation.from_euler("xyz", rng.uniform(-4, 4, 3), degrees=True).as_matrix()
    mr_affine = grid_affine(mr_shape, mr_spacing, rotation, rng.uniform(-8, 8, 3))
    mr_tissue, _ = anatomy.tissues(world_coordinates(mr_shape, mr_affine))
    mr = gaussian_filter(_render(mr_tissue, 1), sigma=0.8) * _bias_field(mr_shape, rng)
    # Rician noise: magnitude of the signal plus complex Gaussian noise
    noise = rng.normal(0.0, 0.03, (2, *mr_shape)).astype(np.float32)
    mr = np.sqrt((mr + noise[0]) ** 2 + noise[1] ** 2) * 1000.0

    return PhantomCase(
        ct=ct.astype(np.float32),
        ct_affine=ct_affine,
        mr=mr.astype(np.float32),
        mr_affine=mr_affine,
        truth=truth,
    )
