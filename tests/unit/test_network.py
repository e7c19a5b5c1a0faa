"""CmFNet: shapes, missing-modality behaviour, gradients, modality dropout, presets."""

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from lib.networks import PRESETS, CmFNet, ModalityFusion, build_cmfnet, random_modality_mask

CHANNELS = (4, 8, 16)  # two downsamplings: spatial sizes must be multiples of 4


def _net(num_modalities: int) -> CmFNet:
    torch.manual_seed(0)
    return CmFNet(num_modalities=num_modalities, num_classes=3, channels=CHANNELS)


@pytest.mark.parametrize("num_modalities", [1, 2, 3])
def test_output_shapes(num_modalities):
    net = _net(num_modalities)
    x = torch.randn(2, num_modalities, 16, 16, 16)
    out = net.forward_all(x)
    assert out.fused.shape == (2, 3, 16, 16, 16)
    assert len(out.per_modality) == num_modalities
    assert all(logits.shape == (2, 3, 16, 16, 16) for logits in out.per_modality)
    assert len(out.features) == num_modalities
    assert all(f.shape == (2, 16, 4, 4, 4) for f in out.features)  # bottleneck: 16 / 2^2
    assert out.present.shape == (2, num_modalities) and out.present.all()
    assert torch.allclose(net(x), out.fused, atol=1e-6)


def test_fused_output_ignores_an_absent_modality_and_follows_a_present_one():
    net = _net(3)
    x = torch.randn(2, 3, 8, 8, 8)
    present = torch.tensor([[True, False, True], [True, True, True]])
    reference = net(x, present=present)

    changed_absent = x.clone()
    changed_absent[0, 1] = torch.randn(8, 8, 8) * 100
    assert torch.equal(net(changed_absent, present=present), reference)
    changed_absent[0, 1] = float("nan")
    assert torch.equal(net(changed_absent, present=present), reference)

    changed_present = x.clone()
    changed_present[0, 2] += 1.0
    assert not torch.allclose(net(changed_present, present=present)[0], reference[0])


def test_every_sample_needs_a_present_modality():
    net = _net(2)
    with pytest.raises(ValueError, match="at least one modality"):
        net(torch.randn(2, 2, 8, 8, 8), present=torch.tensor([[True, False], [False, False]]))


def test_input_checks():
    net = _net(2)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 2, 8, 8, 6))
    with pytest.raises(ValueError, match=r"\(B, 2, D, H, W\)"):
        net(torch.randn(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="bool"):
        net(torch.randn(1, 2, 8, 8, 8), present=torch.ones(1, 2))


def test_present_mask_broadcasts_over_the_batch_and_works_in_a_sliding_window():
    net = _net(2)
    x = torch.randn(3, 2, 8, 8, 8)
    only_first = torch.tensor([True, False])
    assert torch.equal(net(x, present=only_first), net(x, present=only_first.expand(3, 2)))

    # the inferer batches 2 windows at a time and passes `present` through unchanged
    image = torch.randn(1, 2, 12, 12, 8)
    inferer = SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=2, overlap=0.5)
    with torch.no_grad():
        out = inferer(image, net, present=only_first[None])
    assert out.shape == (1, 3, 12, 12, 8)


def test_gradients_reach_every_encoder_through_the_fused_output():
    net = _net(3)
    net(torch.randn(1, 3, 8, 8, 8)).square().mean().backward()
    for encoder in net.encoders:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_untrained_fusion_is_the_mean_of_the_present_modalities():
    fusion = ModalityFusion(num_modalities=3, channels=4)
    features = [torch.randn(2, 4, 3, 3, 3) for _ in range(3)]
    present = torch.tensor([[True, True, False], [False, False, True]])
    fused = fusion(features, present)
    assert torch.allclose(fused[0], (features[0][0] + features[1][0]) / 2, atol=1e-6)
    assert torch.allclose(fused[1], features[2][1], atol=1e-6)


@pytest.mark.parametrize("p_drop", [0.0, 0.5, 0.9, 1.0])
def test_random_modality_mask_keeps_at_least_one_modality(p_drop):
    generator = torch.Generator().manual_seed(0)
    mask = random_modality_mask(500, 3, p_drop, generator=generator)
    assert mask.shape == (500, 3) and mask.dtype == torch.bool
    assert mask.any(dim=1).all()
    if p_drop == 0.0:
        assert mask.all()
    if p_drop == 1.0:
        assert (mask.sum(dim=1) == 1).all()
    again = random_modality_mask(500, 3, p_drop, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    with pytest.raises(ValueError, match="p_drop"):
        random_modality_mask(2, 2, 1.5)


def test_presets():
    assert set(PRESETS) == {"small", "large"}
    small = build_cmfnet("small", num_modalities=2, num_classes=4)
    assert small.channels == (8, 16, 32, 64) and small.num_classes == 4
    assert build_cmfnet("large", 2, 4, channels=(4, 8)).channels == (4, 8)
    with pytest.raises(ValueError, match="large, small"):
        build_cmfnet("medium", 2, 4)
