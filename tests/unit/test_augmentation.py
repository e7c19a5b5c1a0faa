"""The MR bias-field augmentation: companions only, smooth and bounded, NaN kept."""

import torch
from monai.data import MetaTensor

from lib.transforms.intensity import RandCompanionBiasFieldd


def test_bias_field_scales_the_companion_about_its_floor_and_leaves_the_ct_alone():
    torch.manual_seed(0)
    ct = torch.randn(1, 16, 16, 8)
    mr = torch.rand(1, 16, 16, 8) * 3 - 1  # z-scores from -1 to 2
    mr[0, :4] = float("nan")  # outside the MR's field of view
    image = MetaTensor(torch.cat([ct, mr]), affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    out = RandCompanionBiasFieldd(prob=1.0).set_random_state(3)({"image": image})["image"]

    assert out.shape == image.shape and torch.equal(out.affine, image.affine)
    assert torch.equal(out[0], ct[0])  # the CT's values are absolute: never biased
    assert torch.isnan(out[1, :4]).all() and not torch.isnan(out[1, 4:]).any()
    floor = mr[0, 4:].min()
    gain = (out[1, 4:] - floor) / (mr[0, 4:] - floor).clamp(min=1e-3)
    assert not torch.allclose(out[1, 4:], mr[0, 4:])
    assert gain[mr[0, 4:] - floor > 0.1].min() > 0.6 and gain.max() < 1.6  # about +-20 %, never a sign flip
    # smooth: neighbouring voxels get almost the same gain
    assert (gain[1:] - gain[:-1]).abs()[(mr[0, 5:] - floor > 0.1) & (mr[0, 4:-1] - floor > 0.1)].max() < 0.05


def test_bias_field_with_probability_zero_or_a_single_modality_changes_nothing():
    image = MetaTensor(torch.randn(2, 8, 8, 8))
    assert torch.equal(RandCompanionBiasFieldd(prob=0.0)({"image": image})["image"], image)
    ct_only = MetaTensor(torch.randn(1, 8, 8, 8))
    assert torch.equal(RandCompanionBiasFieldd(prob=1.0)({"image": ct_only})["image"], ct_only)
