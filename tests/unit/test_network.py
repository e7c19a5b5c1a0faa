"""CmFNet: shapes, missing modalities and missing data, gradients, modality dropout, anisotropic strides."""

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer

from lib.networks.cmfnet import SERVED_FUSED_SHARE, CmFNet, ModalityFusion, mixed_probabilities, random_modality_mask

CHANNELS = (4, 8, 16, 32)  # three downsamplings: spatial sizes must be multiples of 8


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
    assert all(logits.shape == (2, 3, 4, 4, 4) for logits in out.per_modality)  # level 1's grid
    assert len(out.features) == num_modalities
    assert all(f.shape == (2, 32, 2, 2, 2) for f in out.features)  # bottom: 16 / 2^3
    assert out.present.shape == (2, num_modalities) and out.present.all()
    # served: the fused softmax mixed with the mean of the per-modality ones, brought up to the fused grid
    branches = sum(F.interpolate(p.softmax(1), size=(16, 16, 16), mode="trilinear") for p in out.per_modality)
    served = SERVED_FUSED_SHARE * out.fused.softmax(1) + (1 - SERVED_FUSED_SHARE) * branches / num_modalities
    assert torch.allclose(net(x).exp(), served, atol=1e-5)


def test_fused_output_ignores_an_absent_modality_and_follows_a_present_one():
    net = _net(3)
    x = torch.randn(2, 3, 16, 16, 16)
    present = torch.tensor([[True, False, True], [True, True, True]])
    reference = net(x, present=present)

    changed_absent = x.clone()
    changed_absent[0, 1] = torch.randn(16, 16, 16) * 100
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
    with pytest.raises(ValueError, match=r"multiple of \(8, 8, 8\)"):
        net(torch.randn(1, 2, 8, 8, 12))
    with pytest.raises(ValueError, match=r"\(B, 2, D, H, W\)"):
        net(torch.randn(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="bool"):
        net(torch.randn(1, 2, 8, 8, 8), present=torch.ones(1, 2))


def test_present_mask_broadcasts_over_the_batch_and_works_in_a_sliding_window():
    net = _net(2)
    x = torch.randn(3, 2, 16, 16, 16)
    only_first = torch.tensor([True, False])
    assert torch.equal(net(x, present=only_first), net(x, present=only_first.expand(3, 2)))

    # the inferer batches 2 windows at a time and passes `present` through unchanged
    image = torch.randn(1, 2, 20, 20, 12)  # not a multiple of 8: the inferer pads
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.5)
    with torch.no_grad():
        out = inferer(image, net, present=only_first[None])
    assert out.shape == (1, 3, 20, 20, 12)


def test_gradients_reach_every_encoder_through_the_fused_output():
    net = _net(3)
    net(torch.randn(1, 3, 16, 16, 16)).square().mean().backward()
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


def test_voxels_where_a_companion_has_no_data_take_the_other_modality_only():
    net = _net(2)
    torch.manual_seed(1)
    for fusion in net.fusions:  # non-trivial gates, so the fusion weights depend on the features
        for gate in fusion.spatial_gates:
            torch.nn.init.normal_(gate.weight)
    x = torch.randn(1, 2, 16, 16, 16)
    x[0, 1, 8:] = float("nan")  # the MR's field of view ends half-way along the first axis
    out = net(x)
    assert torch.isfinite(out).all()
    changed = x.clone()
    changed[0, 1, :4] += 5.0  # MR data where it exists still matters
    assert not torch.allclose(net(changed)[0, :, :4], out[0, :, :4])
    # a sample whose companion has no data anywhere is served as if the companion were absent
    all_missing = x.clone()
    all_missing[0, 1] = float("nan")
    assert torch.allclose(net(all_missing), net(x, present=torch.tensor([True, False])), atol=1e-6)


def test_anisotropic_strides_keep_the_few_slices():
    net = CmFNet(num_modalities=2, num_classes=3, channels=(4, 8, 16, 32), strides=[(2, 2, 1), (2, 2, 1), (2, 2, 2)])
    assert net.size_divisor == (8, 8, 2)
    out = net.forward_all(torch.randn(1, 2, 16, 16, 4))
    assert out.fused.shape == (1, 3, 16, 16, 4)
    assert out.per_modality[0].shape == (1, 3, 4, 4, 4)  # level 1: strides (2, 2, 1) twice
    assert out.features[0].shape == (1, 32, 2, 2, 2)


def test_the_top_level_runs_channels_last_on_the_cpu_with_the_plain_layers_results():
    """lib.networks.cmfnet._TopLevel (a speed-up) changes neither the output, the gradients nor the weights' keys."""
    torch.manual_seed(0)
    top = _net(2).fused_decoder.ups[-1]
    plain = torch.nn.Sequential(*top)
    assert type(top).forward is not torch.nn.Sequential.forward
    assert top.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 2 * CHANNELS[0], 8, 8, 8)  # a level's skip and the level below, concatenated
    outputs, grads = [], []
    for module in (top, plain):
        module.zero_grad()
        output = module(x)
        (output * torch.linspace(-1, 1, output.numel()).view_as(output)).sum().backward()
        outputs.append(output)
        grads.append([p.grad.clone() for p in module.parameters()])
    assert outputs[0].is_contiguous() and outputs[0].shape == (2, 3, 16, 16, 16)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    # at the scale of the largest gradient: a bias before an instance norm has a gradient of zero up to rounding
    scale = max(g.abs().max().item() for g in grads[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * scale)
    # its convolution sees a channels-last input (what makes it fast)
    seen = []
    hook = top[1].register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    top(x)
    hook.remove()
    assert seen[0].is_contiguous(memory_format=torch.channels_last_3d)


def test_mixed_probabilities_by_hand():
    # two classes on a 1 x 1 x 4 grid; the per-modality outputs come on a 1 x 1 x 2 grid (each voxel covers two)
    fused = torch.log(torch.tensor([0.8, 0.2])).view(1, 2, 1, 1, 1).expand(1, 2, 1, 1, 4).clone()
    ct = torch.log(torch.tensor([0.4, 0.6])).view(1, 2, 1, 1, 1).expand(1, 2, 1, 1, 2).clone()
    mr = torch.log(torch.tensor([0.2, 0.8])).view(1, 2, 1, 1, 1).expand(1, 2, 1, 1, 2).clone()
    both, ct_only = torch.ones(1, 1, 1, 1, 2, dtype=torch.bool), torch.tensor([True, False]).view(1, 1, 1, 1, 2)
    mixed = mixed_probabilities(fused, [ct, mr], [both, ct_only], 0.25)
    # first half: 0.25 * 0.8 + 0.75 * (0.4 + 0.2) / 2 = 0.425 for class 0; second half: the CT branch alone,
    # 0.25 * 0.8 + 0.75 * 0.4 = 0.5
    assert mixed[0, 0, 0, 0].tolist() == pytest.approx([0.425, 0.425, 0.5, 0.5])
    assert mixed.sum(dim=1).flatten().tolist() == pytest.approx([1.0] * 4)
    nowhere = [torch.zeros(1, 1, 1, 1, 2, dtype=torch.bool)] * 2
    assert torch.allclose(mixed_probabilities(fused, [ct, mr], nowhere, 0.25), fused.softmax(1))
    assert torch.allclose(mixed_probabilities(fused, [], [], 0.25), fused.softmax(1))  # early fusion
