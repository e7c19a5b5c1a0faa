"""A real abdominal CT paired with an MR simulated from its own labels (the benchmarks' `real` data).

No public CT + MR pair of one patient with labels fits here (../shared/data/README.md), so the
second modality is simulated, and every choice below is ours:

- **CT**: the real scan (``abdomen_ct/ct.nii.gz``, 3 mm, HU), optionally resampled to a coarser
  grid for small CPUs (Gaussian prefilter + trilinear; labels nearest neighbour) or to a finer one
  with a clinical scan's voxel size (trilinear; the benchmarks' `real_fine`).
- **Classes** (``REAL_LABELS``): spleen, right kidney, left kidney, liver, stomach, the five organs
  of the scribble benchmarks (WORD's large abdominal organs). They make fusion matter on this
  non-contrast CT: liver (~46 HU) and spleen (~35 HU) look alike on CT, and the kidneys (~15 HU)
  like the muscles and bowel around them, but they differ clearly on the simulated MR. Left and
  right kidney are different classes, as in WORD and TotalSegmentator. The pancreas (695 voxels)
  and gallbladder were left out as too small to score at 3 mm.
- **MR** (T2-weighted-like, arbitrary units): an intensity per TotalSegmentator structure
  (``MR_CONTRAST``), unlabelled tissue from the CT's HU (air dark, fat bright, soft tissue grey),
  a smooth +-8 % texture, rendered by trilinear sampling of that intensity map (built on the CT's
  native grid) onto the MR's own grid: another spacing (x 0.9 in-plane, x 1.3 through-plane), a
  rotation of 2-4 degrees about each axis and a 3-6 mm shift per axis, in world coordinates,
  written with its own affine. Then a point-spread blur, a smooth multiplicative bias field
  (+-20 %) and Rician noise (sigma 3 % of the intensity scale), as in lib.data.phantoms.
- **Residual motion** (optional, ``mr_motion_mm``): the MR's anatomy displaced by a smooth random field
  of up to that many mm before it is rendered, as breathing and bowel move the organs between a CT and
  an MR taken minutes apart, which a rigid registration cannot undo.

The MR grid covers the CT's field of view with a margin, so resampled onto the CT grid (as
lib.transforms.modalities does) it has data everywhere the CT has.
"""

import argparse
import fnmatch
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.spatial.transform import Rotation

from lib.data.cases import write_case
from lib.data.phantoms import PhantomCase, grid_affine, world_coordinates
from lib.data.scribbles import PROTOCOL, ScribbleSettings, annotated_fraction, simulate_scribbles

# ../shared/data relative to the project root (the folder above lib/), or $CMFNET_SHARED_DATA
SHARED_DATA = Path(
    os.environ.get("CMFNET_SHARED_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data"
)
ABDOMEN_CT = SHARED_DATA / "abdomen_ct"

# our class -> the TotalSegmentator structures it is made of (names as in labels.json)
CLASS_SOURCES: dict[str, tuple[str, ...]] = {
    "spleen": ("spleen",),
    "kidney_right": ("kidney_right",),
    "kidney_left": ("kidney_left",),
    "liver": ("liver",),
    "stomach": ("stomach",),
}
REAL_LABELS = {name: index for index, name in enumerate(CLASS_SOURCES, start=1)}

MUSCLE_MR = 0.30
# TotalSegmentator structure (fnmatch pattern, first match wins) -> simulated MR intensity
MR_CONTRAST: list[tuple[str, float]] = [
    ("liver", 0.25),
    ("spleen", 0.60),
    ("kidney_*", 0.70),
    ("stomach", 0.80),  # fluid-filled
    ("gallbladder", 0.95),
    ("urinary_bladder", 0.95),
    ("pancreas", 0.45),
    ("duodenum", 0.55),
    ("small_bowel", 0.55),
    ("colon", 0.45),
    ("adrenal_gland_*", 0.40),
    ("prostate", 0.60),
    ("spinal_cord", 0.65),
    ("lung_*", 0.02),
    ("aorta", 0.08),  # flowing blood: flow voids
    ("inferior_vena_cava", 0.08),
    ("portal_vein_and_splenic_vein", 0.08),
    ("iliac_*", 0.08),
    # bone and muscle alike on MR (bright vs grey on CT): only CT separates the vertebrae
    ("vertebrae_*", MUSCLE_MR),
    ("sacrum", MUSCLE_MR),
    ("hip_*", MUSCLE_MR),
    ("femur_*", MUSCLE_MR),
    ("rib_*", MUSCLE_MR),
    ("costal_cartilages", MUSCLE_MR),
    ("gluteus_*", MUSCLE_MR),
    ("autochthon_*", MUSCLE_MR),
    ("iliopsoas_*", MUSCLE_MR),
]
# unlabelled tissue: MR intensity as a piecewise-linear function of CT HU (air, fat, soft tissue, bone)
UNLABELLED_HU = [-1000.0, -600.0, -200.0, -60.0, 0.0, 120.0, 250.0]
UNLABELLED_MR = [0.0, 0.0, 0.85, 0.85, 0.35, 0.35, MUSCLE_MR]

MR_SPACING_FACTOR = (0.9, 0.9, 1.3)  # MR spacing = CT spacing x this
MR_MARGIN = 0.08  # MR field of view = CT field of view x (1 + this)
RICIAN_SIGMA = 0.03


def missing_reason(data_dir: Path = ABDOMEN_CT) -> str | None:
    """Why the real scan cannot be used (a sentence), or None when it can."""
    for name in ("ct.nii.gz", "labels.nii.gz", "labels.json"):
        if not (Path(data_dir) / name).is_file():
            return f"real scan not available: {Path(data_dir) / name} is missing (see ../shared/data/README.md)"
    return None


def load_abdomen(data_dir: Path = ABDOMEN_CT) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """The real CT (float32 HU), its TotalSegmentator labels (int), affine and id -> structure name."""
    reason = missing_reason(data_dir)
    if reason:
        raise FileNotFoundError(reason)
    data_dir = Path(data_dir)
    ct = nib.load(data_dir / "ct.nii.gz")
    labels = nib.load(data_dir / "labels.nii.gz")
    if labels.shape != ct.shape or not np.allclose(labels.affine, ct.affine, atol=1e-3):
        raise ValueError(f"{data_dir}: labels and CT are not on the same grid")
    names = {int(k): v["name"] for k, v in json.loads((data_dir / "labels.json").read_text()).items()}
    return (
        np.asarray(ct.dataobj, dtype=np.float32),
        np.asarray(labels.dataobj).astype(np.int32),
        ct.affine.astype(np.float64),
        names,
    )


def class_map(structures: np.ndarray, names: dict[int, str]) -> np.ndarray:
    """TotalSegmentator ids -> our class ids (REAL_LABELS), 0 elsewhere."""
    truth = np.zeros(structures.shape, np.uint8)
    for name, sources in CLASS_SOURCES.items():
        ids = [i for i, n in names.items() if n in sources]
        truth[np.isin(structures, ids)] = REAL_LABELS[name]
    return truth


def mr_contrast(name: str) -> float | None:
    for pattern, value in MR_CONTRAST:
        if fnmatch.fnmatchcase(name, pattern):
            return value
    return None


def mr_intensity_map(ct: np.ndarray, structures: np.ndarray, names: dict[int, str], rng) -> np.ndarray:
    """Noise-free MR intensity on the CT grid: per structure, else from HU; with a smooth texture."""
    image = np.interp(ct, UNLABELLED_HU, UNLABELLED_MR).astype(np.float32)
    for label_id, name in names.items():
        value = mr_contrast(name)
        if value is not None:
            image[structures == label_id] = value
    texture = gaussian_filter(rng.normal(size=ct.shape).astype(np.float32), sigma=2.0)
    texture /= np.abs(texture).max() + 1e-6
    return image * (1.0 + 0.08 * texture)


def _smooth_noise(shape, rng) -> np.ndarray:
    """A smooth random field on a grid of `shape`: standard normal values on a 4 x 4 x 4 lattice spanning
    the grid, interpolated (cubic)."""
    coarse = rng.normal(size=(4, 4, 4))
    grids = np.meshgrid(*[np.linspace(0, 3, n) for n in shape], indexing="ij")
    return map_coordinates(coarse, grids, order=3, mode="nearest")


def smooth_displacement(shape, spacing, max_mm: float, rng) -> np.ndarray:
    """(3, *shape) displacement in voxels of a grid of `spacing` mm: smooth random vectors
    (:func:`_smooth_noise` per axis), scaled so that the longest is `max_mm` long."""
    field = np.stack([_smooth_noise(shape, rng) for _ in range(3)])
    field *= max_mm / (np.linalg.norm(field, axis=0).max() + 1e-6)
    return (field / np.asarray(spacing, float)[:, None, None, None]).astype(np.float32)


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(affine[:3, :3], axis=0)


def _center(shape, affine) -> np.ndarray:
    return affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + affine[:3, 3]


def sample(volume: np.ndarray, volume_affine: np.ndarray, shape, affine: np.ndarray, order: int) -> np.ndarray:
    """`volume` sampled at the voxel centres of the grid (`shape`, `affine`), in world coordinates; 0 outside."""
    world = world_coordinates(shape, affine)
    voxels = (world - volume_affine[:3, 3]) @ np.linalg.inv(volume_affine[:3, :3]).T
    return map_coordinates(volume, np.moveaxis(voxels, -1, 0), order=order, mode="constant", cval=0.0)


def bias_field(shape, rng, strength: float = 0.2) -> np.ndarray:
    """Smooth multiplicative field, 1 +- `strength`."""
    field = _smooth_noise(shape, rng)
    return (1.0 + strength * field / (np.abs(field).max() + 1e-6)).astype(np.float32)


def regridded(shape, affine: np.ndarray, spacing: float | Sequence[float]) -> tuple[tuple[int, ...], np.ndarray]:
    """A grid of `spacing` mm (one for all axes, or one per axis) over the same field of view, axes and centre."""
    old = _spacing(affine)
    spacing = np.broadcast_to(np.asarray(spacing, float), (3,))
    new_shape = tuple(int(np.floor((n - 1) * s / t)) + 1 for n, s, t in zip(shape, old, spacing, strict=True))
    directions = affine[:3, :3] / old
    return new_shape, grid_affine(new_shape, tuple(spacing), directions, _center(shape, affine))


def make_abdomen_case(
    seed: int = 0,
    ct_spacing: float | Sequence[float] | None = None,
    data_dir: Path = ABDOMEN_CT,
    mr_cover: float = 1.0,
    mr_motion_mm: float = 0.0,
) -> PhantomCase:
    """The real CT (optionally on a grid of `ct_spacing` mm, one for all axes or one per axis) with a
    simulated MR companion.

    `mr_cover` < 1 keeps that fraction of the MR's slices, from its superior end: an MR of the upper
    abdomen beside a CT that reaches further down, so the resampled MR has no data below its field of view.
    `mr_motion_mm` > 0 moves the MR's anatomy against the CT's by a smooth field of up to that many mm
    (:func:`smooth_displacement`, drawn from its own generator, so the rest of the case stays as without it).

    `truth` holds our classes (REAL_LABELS) on the CT grid. The MR is simulated from the native
    3 mm labels whatever `ct_spacing` is, on a grid as coarse as the CT's but never finer than the
    native one (a finer MR would show nothing more); the same seed always gives the same MR. A finer
    CT grid (1 x 1 x 2 mm, as clinical abdominal CTs) is the native CT interpolated: it holds the same
    anatomy in more voxels.
    """
    rng = np.random.default_rng(seed)
    ct, structures, affine, names = load_abdomen(data_dir)

    intensity = mr_intensity_map(ct, structures, names, rng)
    if mr_motion_mm > 0:
        motion = smooth_displacement(ct.shape, _spacing(affine), mr_motion_mm, np.random.default_rng([seed, 1]))
        voxels = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in ct.shape], indexing="ij"))
        intensity = map_coordinates(intensity, voxels + motion, order=1, mode="nearest")
    angles = rng.uniform(2.0, 4.0, 3) * rng.choice([-1.0, 1.0], 3)
    shift = rng.uniform(3.0, 6.0, 3) * rng.choice([-1.0, 1.0], 3)
    native = _spacing(affine)
    mr_spacing = np.mean(native if ct_spacing is None else np.maximum(ct_spacing, native)) * np.array(MR_SPACING_FACTOR)
    extent = (np.asarray(ct.shape) - 1) * native * (1.0 + MR_MARGIN)
    mr_shape = tuple(int(np.ceil(e / s)) + 1 for e, s in zip(extent, mr_spacing, strict=True))
    rotation = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    mr_affine = grid_affine(mr_shape, mr_spacing, rotation, _center(ct.shape, affine) + shift)
    mr = sample(intensity, affine, mr_shape, mr_affine, order=1)
    mr = gaussian_filter(mr, sigma=0.5) * bias_field(mr_shape, rng)
    noise = rng.normal(0.0, RICIAN_SIGMA, (2, *mr_shape)).astype(np.float32)
    mr = np.sqrt((mr + noise[0]) ** 2 + noise[1] ** 2) * 1000.0
    dropped = int(round((1.0 - mr_cover) * mr_shape[2]))  # the MR's last axis points up (RAS)
    mr, mr_affine = mr[..., dropped:], mr_affine.copy()
    mr_affine[:3, 3] += mr_affine[:3, 2] * dropped

    if ct_spacing is not None:
        shape, ct_affine = regridded(ct.shape, affine, ct_spacing)
        sigma = np.maximum(np.asarray(ct_spacing) / native - 1.0, 0.0) / 2.0  # a prefilter only where coarser
        ct = sample(gaussian_filter(ct, sigma), affine, shape, ct_affine, order=1)
        structures = sample(structures, affine, shape, ct_affine, order=0).astype(np.int32)
        affine = ct_affine
    return PhantomCase(
        ct=ct.astype(np.float32),
        ct_affine=affine,
        mr=mr.astype(np.float32),
        mr_affine=mr_affine,
        truth=class_map(structures, names),
    )


def abdomen_scribbles(case: PhantomCase, seed: int, settings: ScribbleSettings = PROTOCOL) -> np.ndarray:
    """WORD-style scribbles for the real case (background strokes inside the body)."""
    return simulate_scribbles(case.truth, len(REAL_LABELS), seed, settings, image=case.ct)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the real abdominal CT with a simulated MR as a datastore.")
    parser.add_argument("--out", type=Path, default=Path("results/cache/abdomen_datastore"))
    parser.add_argument("--data", type=Path, default=ABDOMEN_CT, help="folder of ct.nii.gz, labels.nii.gz, labels.json")
    parser.add_argument(
        "--ct-spacing", type=float, nargs="+", help="resample the CT to this spacing (mm): one for all axes, or three"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case-id", default="abdomen")
    parser.add_argument("--no-scribbles", action="store_true", help="do not store simulated scribbles")
    args = parser.parse_args(argv)

    reason = missing_reason(args.data)
    if reason:
        parser.exit(1, reason + "\n")
    start = time.perf_counter()
    if args.ct_spacing is not None and len(args.ct_spacing) not in (1, 3):
        parser.error("--ct-spacing takes one spacing or three")
    case = make_abdomen_case(args.seed, args.ct_spacing, args.data)
    scribbles = None if args.no_scribbles else abdomen_scribbles(case, args.seed)
    write_case(args.out / "studies", args.case_id, case, scribbles, truth_dir=args.out / "truth")
    summary = {
        "studies": str(args.out / "studies"),
        "labels": REAL_LABELS,
        "ct_shape": list(case.ct.shape),
        "mr_shape": list(case.mr.shape),
        "annotated_fraction": None if scribbles is None else annotated_fraction(scribbles),
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
