"""The real CT with a simulated MR companion (lib.data.real_scans): geometry, registration, contrasts."""

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion, gaussian_filter, map_coordinates

from lib.data.cases import write_case
from lib.data.real_scans import (
    MR_CONTRAST,
    REAL_LABELS,
    load_abdomen,
    make_abdomen_case,
    missing_reason,
    mr_contrast,
    mr_intensity_map,
    regridded,
    sample,
    smooth_displacement,
)
from lib.transforms.modalities import LoadModalitiesd

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))

SEED = 0


@pytest.fixture(scope="module")
def native():
    return make_abdomen_case(SEED)


@pytest.fixture(scope="module")
def loaded(native, tmp_path_factory):
    """The case written as a datastore case and read back by the app's loader (MR resampled onto the CT)."""
    studies = tmp_path_factory.mktemp("real") / "studies"
    paths = write_case(studies, "abdomen", native)
    return LoadModalitiesd(["ct", "mr"])({"image": str(paths["image"])})


@pytest.fixture(scope="module")
def ideal():
    """The noise-free MR intensity map on the CT grid that the simulation renders from (same seed, same rng)."""
    ct, structures, _, names = load_abdomen()
    return mr_intensity_map(ct, structures, names, np.random.default_rng(SEED)), structures, names


def _corr(a, b, mask):
    """Correlation over `mask` where `a` has data (NaN: outside the MR's field of view)."""
    mask = mask & ~np.isnan(a)
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


def test_mr_has_its_own_grid_a_rotation_and_a_shift(native):
    ct_spacing = np.linalg.norm(native.ct_affine[:3, :3], axis=0)
    mr_spacing = np.linalg.norm(native.mr_affine[:3, :3], axis=0)
    assert not np.allclose(ct_spacing, mr_spacing) and native.mr.shape != native.ct.shape
    directions = native.mr_affine[:3, :3] / mr_spacing
    angle = np.degrees(np.arccos(np.clip((np.trace(directions) - 1) / 2, -1, 1)))
    assert 2.0 < angle < 8.0  # 2-4 degrees about each axis
    centre = lambda shape, affine: affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]  # noqa: E731
    shift = np.abs(centre(native.mr.shape, native.mr_affine) - centre(native.ct.shape, native.ct_affine))
    assert ((shift >= 3.0 - 1e-6) & (shift <= 6.0 + 1e-6)).all()


def test_resampled_onto_the_ct_grid_the_mr_lines_up_with_the_labels(native, loaded, ideal, tmp_path):
    ideal, _, _ = ideal
    mr_on_ct = loaded["image"][1].numpy()
    assert loaded["present"].tolist() == [True, True]
    assert (~torch.isnan(loaded["image"][1])).float().mean() > 0.99  # the MR covers the CT's field of view
    body = ideal > 0.05
    aligned = _corr(mr_on_ct, ideal, body)
    # the same MR written without its rigid offset (shift removed): the anatomy no longer lines up
    wrong = native.mr_affine.copy()
    wrong[:3, 3] += native.ct_affine[:3, 3] - native.mr_affine[:3, 3] + np.array([6.0, 6.0, 6.0])
    mr = native.mr
    write_case(tmp_path / "studies", "shifted", type(native)(native.ct, native.ct_affine, mr, wrong, native.truth))
    misplaced = LoadModalitiesd(["ct", "mr"])({"image": str(tmp_path / "studies" / "shifted.nii.gz")})["image"][1]
    assert aligned > 0.85
    assert aligned - _corr(misplaced.numpy(), ideal, body) > 0.1


def test_contrasts_as_specified(native, loaded, ideal):
    ct, mr = loaded["image"][0].numpy(), loaded["image"][1].numpy()  # normalized: CT window to [-1, 1], MR z-score
    truth = native.truth

    def inner(name):
        return binary_erosion(truth == REAL_LABELS[name])

    ct_mean = {name: float(native.ct[inner(name)].mean()) for name in REAL_LABELS}
    mr_mean = {name: float(mr[inner(name)].mean()) for name in REAL_LABELS}
    # liver and spleen alike on CT (within 15 HU), far apart on MR
    assert abs(ct_mean["liver"] - ct_mean["spleen"]) < 15
    assert mr_mean["spleen"] - mr_mean["liver"] > 0.8
    # kidneys: darker than the liver on CT, much brighter on MR
    for kidney in ("kidney_right", "kidney_left"):
        assert ct_mean[kidney] < ct_mean["liver"] and mr_mean[kidney] - mr_mean["liver"] > 1.0
    # vertebrae (not a class) bright on CT, like the muscles around them on MR (the other way round)
    _, structures, names = ideal
    muscle = binary_erosion(
        np.isin(structures, [i for i, n in names.items() if n.startswith(("autochthon", "iliopsoas"))])
    )
    vertebrae = binary_erosion(np.isin(structures, [i for i, n in names.items() if n.startswith("vertebrae_L")]))
    assert float(native.ct[vertebrae].mean()) - float(native.ct[muscle].mean()) > 100
    assert abs(float(mr[vertebrae].mean()) - float(mr[muscle].mean())) < 0.35
    assert float(np.std(ct[inner("liver")])) < 0.2


def test_every_structure_of_the_labels_has_an_mr_contrast_or_is_left_to_its_hu(ideal):
    _, _, names = ideal
    covered = {name for name in names.values() if mr_contrast(name) is not None}
    assert {"liver", "spleen", "kidney_left", "kidney_right", "stomach", "vertebrae_L3"} <= covered
    assert all(0.0 <= value <= 1.0 for _, value in MR_CONTRAST)


def test_coarser_ct_grid_keeps_field_of_view_and_classes(native):
    coarse = make_abdomen_case(SEED, ct_spacing=6.0)
    assert np.allclose(np.linalg.norm(coarse.ct_affine[:3, :3], axis=0), 6.0)
    assert coarse.ct.shape == tuple((np.asarray(native.ct.shape) - 1) * 3 // 6 + 1)
    assert set(np.unique(coarse.truth)) == {0, *REAL_LABELS.values()}
    # class volumes in mm^3 agree within 20 % between the grids
    for class_id in REAL_LABELS.values():
        native_volume = (native.truth == class_id).sum() * 27.0
        coarse_volume = (coarse.truth == class_id).sum() * 216.0
        assert abs(coarse_volume / native_volume - 1) < 0.2
    # the MR gets a grid as coarse as the CT's, with the same rigid pose (rotation and centre)
    mr_spacing = lambda case: np.linalg.norm(case.mr_affine[:3, :3], axis=0)  # noqa: E731
    np.testing.assert_allclose(mr_spacing(coarse), 2 * mr_spacing(native))
    np.testing.assert_allclose(
        coarse.mr_affine[:3, :3] / mr_spacing(coarse), native.mr_affine[:3, :3] / mr_spacing(native)
    )


def test_a_finer_anisotropic_ct_grid_keeps_the_classes_and_the_native_mr(native):
    fine = make_abdomen_case(SEED, ct_spacing=(1.5, 1.5, 2.0))
    assert np.allclose(np.linalg.norm(fine.ct_affine[:3, :3], axis=0), (1.5, 1.5, 2.0))
    assert fine.ct.shape == tuple((np.asarray(native.ct.shape) - 1) * 3 // np.array([1.5, 1.5, 2.0]) + 1)
    for class_id in REAL_LABELS.values():  # class volumes in mm^3 agree within 5 %
        ratio = (fine.truth == class_id).sum() * 4.5 / ((native.truth == class_id).sum() * 27.0)
        assert abs(ratio - 1) < 0.05
    # the MR is never simulated finer than the native labels: the same MR as beside the native CT
    np.testing.assert_array_equal(fine.mr, native.mr)
    np.testing.assert_allclose(fine.mr_affine, native.mr_affine)
    # CT and truth resampled alike: the liver's median HU within 2 HU of the native grid's
    liver = REAL_LABELS["liver"]
    assert abs(np.median(fine.ct[fine.truth == liver]) - np.median(native.ct[native.truth == liver])) < 2.0


def test_sample_is_identity_on_the_same_grid():
    volume = np.random.default_rng(0).normal(size=(6, 5, 4))
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    np.testing.assert_allclose(sample(volume, affine, volume.shape, affine, order=1), volume, atol=1e-6)
    shape, coarse = regridded(volume.shape, affine, 4.0)
    assert shape == (3, 4, 4) and np.allclose(np.linalg.norm(coarse[:3, :3], axis=0), 4.0)
    shape, fine = regridded(volume.shape, affine, (1.0, 1.5, 4.0))
    assert shape == (11, 9, 4) and np.allclose(np.linalg.norm(fine[:3, :3], axis=0), (1.0, 1.5, 4.0))
    # the same field of view: the grids' centres coincide
    centre = lambda shape, a: a[:3, :3] @ ((np.asarray(shape) - 1) / 2) + a[:3, 3]  # noqa: E731
    np.testing.assert_allclose(centre(shape, fine), centre(volume.shape, affine))


def test_written_case_has_two_affines_and_the_truth_on_the_ct_grid(native, tmp_path):
    paths = write_case(tmp_path / "studies", "abdomen", native, truth_dir=tmp_path / "truth")
    ct, mr, truth = (nib.load(paths[k]) for k in ("image", "mr", "truth"))
    assert np.allclose(truth.affine, ct.affine) and truth.shape == ct.shape
    assert not np.allclose(mr.affine, ct.affine)


def test_missing_folder_gives_a_reason(tmp_path):
    reason = missing_reason(tmp_path / "nowhere")
    assert reason and "not available" in reason
    with pytest.raises(FileNotFoundError, match="not available"):
        load_abdomen(tmp_path / "nowhere")


def test_a_partial_mr_keeps_the_upper_slices_of_the_same_mr_and_leaves_the_ct_below_without_data(native, tmp_path):
    partial = make_abdomen_case(SEED, mr_cover=0.5)
    kept = partial.mr.shape[2]
    assert kept == round(0.5 * native.mr.shape[2]) and partial.mr.shape[:2] == native.mr.shape[:2]
    np.testing.assert_array_equal(partial.mr, native.mr[..., -kept:])  # the same voxels, in the same place
    top = np.array([0, 0, kept - 1, 1.0])
    np.testing.assert_allclose(partial.mr_affine @ top, native.mr_affine @ (top + [0, 0, native.mr.shape[2] - kept, 0]))
    paths = write_case(tmp_path / "studies", "abdomen", partial)
    mr = LoadModalitiesd(["ct", "mr"])({"image": str(paths["image"])})["image"][1].numpy()
    has_data = ~np.isnan(mr).all(axis=(0, 1))
    assert not has_data[0] and has_data[-1]  # the CT's lowest slices have no MR, its highest do
    assert (native.truth[..., ~has_data] == 0).all()  # below the MR there is no organ of REAL_LABELS


def test_a_smooth_displacement_is_at_most_the_given_length_and_varies_slowly():
    field = smooth_displacement((60, 50, 40), (1.0, 2.0, 3.0), 6.0, np.random.default_rng(3))
    in_mm = field * np.array([1.0, 2.0, 3.0])[:, None, None, None]
    length = np.linalg.norm(in_mm, axis=0)
    assert field.shape == (3, 60, 50, 40) and length.max() == pytest.approx(6.0, rel=1e-4)
    assert length.mean() > 1.0  # not one vector of 6 mm in a field of zeros
    steps = [np.abs(np.diff(in_mm, axis=a)).max() for a in (1, 2, 3)]
    assert max(steps) < 1.0  # mm from one voxel to the next: a smooth field, not noise (0.76 here)


def test_residual_motion_moves_the_mr_anatomy_and_nothing_else(native, loaded, ideal, tmp_path):
    ideal, _, _ = ideal
    moving = make_abdomen_case(SEED, mr_motion_mm=6.0)
    np.testing.assert_array_equal(moving.ct, native.ct)
    np.testing.assert_array_equal(moving.truth, native.truth)
    np.testing.assert_array_equal(moving.mr_affine, native.mr_affine)
    paths = write_case(tmp_path / "studies", "moving", moving)
    mr_on_ct = LoadModalitiesd(["ct", "mr"])({"image": str(paths["image"])})["image"][1].numpy()
    # the anatomy the MR shows is the CT's moved by the field (voxels of the CT grid, as the docstring says)
    motion = smooth_displacement(ideal.shape, (3.0, 3.0, 3.0), 6.0, np.random.default_rng([SEED, 1]))
    voxels = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in ideal.shape], indexing="ij"))
    moved = map_coordinates(ideal, voxels + motion, order=1, mode="nearest")
    body = ideal > 0.05
    # both references blurred alike (the rendered MRs are blurred): the moving MR shows the moved anatomy,
    # the MR without motion the anatomy in place (0.968 against 0.944, and 0.967 against 0.941, on seed 0)
    ideal, moved = gaussian_filter(ideal, 1.0), gaussian_filter(moved, 1.0)
    assert _corr(mr_on_ct, moved, body) - _corr(mr_on_ct, ideal, body) > 0.015
    in_place = loaded["image"][1].numpy()
    assert _corr(in_place, ideal, body) - _corr(in_place, moved, body) > 0.015
