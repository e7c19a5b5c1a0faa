"""The plan from the data: deterministic, within the budgets, strides that respect anisotropy."""

import numpy as np
import pytest

from lib.planning import BUDGETS, Plan, make_plan

REAL = ([[3.0, 3.0, 3.0]], [[122, 101, 112]])
CT_1MM = ([[0.98, 0.98, 2.0]] * 3, [[512, 512, 200]] * 3)
BRAIN = ([[0.78, 0.78, 6.5]], [[256, 256, 25]])


def test_the_same_spacings_and_sizes_give_the_same_plan():
    assert make_plan(*CT_1MM, 2, 6) == make_plan(*CT_1MM, 2, 6)
    # the order of the images does not matter (medians)
    spacings, shapes = [[1.0, 1.0, 2.0], [0.8, 0.8, 3.0], [3.0, 3.0, 3.0]], [[300, 300, 100], [400, 400, 80], [100] * 3]
    assert make_plan(spacings, shapes, 2, 6) == make_plan(spacings[::-1], shapes[::-1], 2, 6)


def test_a_small_scan_keeps_its_spacing_and_a_large_one_is_coarsened_to_the_budget():
    assert make_plan(*REAL, 2, 6).spacing == (3.0, 3.0, 3.0)
    plan = make_plan(*CT_1MM, 2, 6)
    extent = np.array([512 * 0.98, 512 * 0.98, 200 * 2.0])
    voxels = np.prod(np.round(extent / np.array(plan.spacing)))
    assert voxels <= BUDGETS["cpu"]["case_voxels"]
    assert voxels > BUDGETS["cpu"]["case_voxels"] / 1.2  # not coarser than needed
    # the finer in-plane axes are coarsened first, towards isotropy
    assert max(plan.spacing) / min(plan.spacing) < 1.1
    gpu = make_plan(*CT_1MM, 2, 6, device="gpu", preset="large")
    assert max(gpu.spacing) < max(plan.spacing)


def test_patch_fits_the_budget_and_the_network():
    for spacings, shapes in (REAL, CT_1MM, BRAIN):
        plan = make_plan(spacings, shapes, 2, 3)
        divisor = plan.size_divisor
        assert all(p % d == 0 for p, d in zip(plan.patch_size, divisor, strict=True))
        assert np.prod(plan.patch_size) <= 1.3 * BUDGETS["cpu"]["patch_voxels"]
        assert len(plan.channels) == len(plan.strides) + 1 >= 2


def test_thick_slices_are_not_downsampled_until_the_others_catch_up():
    plan = make_plan(*BRAIN, 2, 2)
    assert plan.spacing == (0.78, 0.78, 6.5)
    # 0.78 mm in-plane, 6.5 mm slices: halve x and y three times (6.24 mm) before z
    assert plan.strides[:3] == ((2, 2, 1),) * 3
    assert plan.strides[3][2] == 2
    # and no level leaves fewer than 4 voxels along an axis
    assert all(size / d >= 4 for size, d in zip(plan.patch_size, plan.size_divisor, strict=True))


def test_plan_round_trips_through_json():
    plan = make_plan(*BRAIN, 2, 2)
    assert Plan.from_json(plan.to_json()) == plan


def test_planning_needs_geometry():
    with pytest.raises(ValueError, match="at least one image"):
        make_plan([], [], 2, 2)
