"""Loss terms of the hybrid CmFNet loss; expected values are worked out by hand in the comments."""

import math

import pytest
import torch
import torch.nn.functional as F

from lib.losses.consistency import feature_alignment, prediction_consistency
from lib.losses.hybrid import HybridLoss, downsample_labels
from lib.losses.local_affinity import local_affinity_loss
from lib.losses.partial_ce import dense_loss, partial_cross_entropy
from lib.losses.pseudo import mixed_pseudo_labels, weighted_cross_entropy, weighted_dice_ce
from lib.losses.rampup import sigmoid_rampup
from lib.networks.cmfnet import CmFNet, CmFNetOutput, mixed_probabilities
from lib.settings import LossWeights


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# ---------------------------------------------------------------- partial cross-entropy


def _four_voxels() -> tuple[torch.Tensor, torch.Tensor]:
    """2 classes, 4 voxels in a row; voxels 0 and 1 annotated (class 0, class 1), 2 and 3 not."""
    logits = torch.tensor([[2.0, 0.0, 1.0, 3.0], [0.0, 1.0, 1.0, -1.0]]).reshape(1, 2, 1, 1, 4)
    target = torch.tensor([0, 1, -1, -1]).reshape(1, 1, 1, 1, 4)
    return logits.requires_grad_(), target


def test_partial_ce_matches_hand_value_and_ignores_unannotated_voxels():
    logits, target = _four_voxels()
    loss = partial_cross_entropy(logits, target)
    # voxel 0, class 0 of (2, 0): -log(e^2 / (e^2 + 1)) = log(1 + e^-2) = 0.126928
    # voxel 1, class 1 of (0, 1): -log(e^1 / (1 + e^1)) = log(1 + e^-1) = 0.313262
    # mean over the 2 annotated voxels: 0.220095
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.220095, abs=1e-6)

    loss.backward()
    grad = logits.grad.reshape(2, 4)
    # d/dz of the mean = (softmax - onehot) / 2 on annotated voxels, exactly 0 elsewhere:
    # voxel 0: softmax = (sigmoid(2), 1 - sigmoid(2)) = (0.880797, 0.119203) -> (-0.059601, +0.059601)
    # voxel 1: softmax = (1 - sigmoid(1), sigmoid(1)) = (0.268941, 0.731059) -> (+0.134471, -0.134471)
    g0 = (1 - _sigmoid(2)) / 2
    g1 = (1 - _sigmoid(1)) / 2
    expected_grad = torch.tensor([[-g0, g1, 0.0, 0.0], [g0, -g1, 0.0, 0.0]])
    assert torch.allclose(grad, expected_grad, atol=1e-6)
    assert torch.all(grad[:, 2:] == 0)
    assert torch.all(grad[:, :2] != 0)


def test_balanced_partial_ce_gives_each_annotated_class_the_same_say_whatever_its_number_of_voxels():
    # 2 classes; voxels 0-2 annotated class 0, voxel 3 class 1
    logits = torch.tensor([[2.0, 0.0, 1.0, 3.0], [0.0, 1.0, 1.0, -1.0]]).reshape(1, 2, 1, 1, 4)
    target = torch.tensor([0, 0, 0, 1]).reshape(1, 1, 1, 1, 4)
    ce = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(1)), math.log(2), math.log(1 + math.exp(4))]
    assert partial_cross_entropy(logits, target).item() == pytest.approx(sum(ce) / 4, abs=1e-6)
    balanced = ((ce[0] + ce[1] + ce[2]) / 3 + ce[3]) / 2
    assert partial_cross_entropy(logits, target, balanced=True).item() == pytest.approx(balanced, abs=1e-6)
    # unannotated voxels count in neither
    target[0, 0, 0, 0, 1] = -1
    balanced = ((ce[0] + ce[2]) / 2 + ce[3]) / 2
    assert partial_cross_entropy(logits, target, balanced=True).item() == pytest.approx(balanced, abs=1e-6)


def test_partial_ce_accepts_target_without_channel_axis():
    logits, target = _four_voxels()
    assert partial_cross_entropy(logits, target[:, 0]).item() == partial_cross_entropy(logits, target).item()


def test_partial_ce_is_zero_with_a_graph_when_nothing_is_annotated():
    logits = torch.randn(1, 3, 2, 2, 2, requires_grad=True)
    loss = partial_cross_entropy(logits, torch.full((1, 1, 2, 2, 2), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_dense_loss_is_small_for_a_confident_correct_prediction_and_large_for_a_wrong_one():
    target = torch.zeros(1, 1, 2, 2, 2, dtype=torch.long)
    target[..., 1] = 1
    correct = torch.where(torch.cat([target == 0, target == 1], dim=1), 20.0, -20.0)
    # CE ~ log(1 + e^-40) ~ 0 and both Dice scores ~ 1, so DiceCE ~ 0; swapped classes: CE ~ 40.
    assert dense_loss(correct, target).item() < 1e-3
    assert dense_loss(-correct, target[:, 0]).item() > 1.0


# ---------------------------------------------------------------- local affinity


def _two_classes(split: torch.Tensor) -> torch.Tensor:
    """One-hot probabilities (1, 2, ...) from a bool map (1, 1, ...): class 1 where True."""
    return torch.cat([~split, split], dim=1).float()


@pytest.mark.parametrize(
    ("size", "intensities", "dilation", "expected"),
    [
        # voxels 0 | 1 along the last axis (2 mm apart), same intensity: one pair,
        # w = exp(-2^2 / (2 * 2^2)) = exp(-0.5) = 0.606531, disagreement 1 -> loss 0.606531
        (2, [0.0, 0.0], 1, math.exp(-0.5)),
        # intensities 0 and 0.1 add exp(-0.1^2 / (2 * 0.1^2)) = exp(-0.5) -> exp(-1) = 0.367879
        (2, [0.0, 0.1], 1, math.exp(-1.0)),
        # classes 0, 0 | 1 with dilation 2 and a 3-window: only the pair (0, 2), 4 mm apart:
        # w = exp(-4^2 / 8) = exp(-2) = 0.135335, one pair -> loss 0.135335
        (3, [0.0, 0.0, 0.0], 2, math.exp(-2.0)),
    ],
)
def test_affinity_matches_hand_value(size, intensities, dilation, expected):
    split = torch.zeros(1, 1, 1, 1, size, dtype=torch.bool)
    split[..., -1] = True
    image = torch.tensor(intensities).reshape(1, 1, 1, 1, size)
    loss = local_affinity_loss(
        _two_classes(split), image, (1.0, 1.0, 2.0), kernel_size=3, dilation=dilation, sigma_spatial=2.0
    )
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_affinity_is_zero_for_a_constant_prediction():
    probs = _two_classes(torch.ones(1, 1, 6, 6, 6, dtype=torch.bool))
    assert local_affinity_loss(probs, torch.rand(1, 1, 6, 6, 6), (1.0, 1.0, 1.0)).item() == 0.0


def test_affinity_split_costs_more_inside_a_homogeneous_region_than_along_an_edge():
    split = torch.zeros(1, 1, 8, 8, 8, dtype=torch.bool)
    split[..., 4:] = True
    flat = torch.full((1, 1, 8, 8, 8), 0.5)
    edge = split.float()  # intensity 0 | 1 exactly where the labels change
    inside = local_affinity_loss(_two_classes(split), flat, (1.0, 1.0, 1.0))
    along_edge = local_affinity_loss(_two_classes(split), edge, (1.0, 1.0, 1.0))
    # across the edge w carries exp(-1 / (2 * 0.1^2)) = exp(-50) ~ 2e-22
    assert inside.item() > 0.01
    assert along_edge.item() < 1e-15


def test_affinity_larger_spacing_along_an_axis_lowers_the_cost_of_a_split_across_it():
    across_first = torch.zeros(1, 1, 8, 8, 8, dtype=torch.bool)
    across_first[:, :, 4:] = True  # label change along axis 0
    across_last = across_first.transpose(2, 4)  # the same split along axis 2
    image = torch.zeros(1, 1, 8, 8, 8)

    def cost(split, spacing):
        return local_affinity_loss(_two_classes(split), image, spacing).item()

    # isotropic: the two splits are mirror images of each other
    assert cost(across_first, (1.0, 1.0, 1.0)) == pytest.approx(cost(across_last, (1.0, 1.0, 1.0)), rel=1e-5)
    # 3 mm along axis 0: pairs across the first split are further apart, so they weigh less
    assert cost(across_first, (3.0, 1.0, 1.0)) < cost(across_first, (1.0, 1.0, 1.0))
    assert cost(across_first, (3.0, 1.0, 1.0)) < cost(across_last, (3.0, 1.0, 1.0))


def test_affinity_ignores_invalid_voxels():
    split = torch.zeros(1, 1, 8, 8, 8, dtype=torch.bool)
    split[..., 6:] = True  # the label change lies between x = 5 and x = 6
    valid = torch.zeros(1, 1, 8, 8, 8, dtype=torch.bool)
    valid[..., :4] = True  # x >= 4 invalid: every pair across the change has an invalid end
    image = torch.zeros(1, 1, 8, 8, 8)
    assert local_affinity_loss(_two_classes(split), image, (1.0, 1.0, 1.0)).item() > 0
    assert local_affinity_loss(_two_classes(split), image, (1.0, 1.0, 1.0), valid=valid).item() == 0.0


def test_affinity_rejects_an_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        ones = torch.ones(1, 1, 4, 4, 4)
        local_affinity_loss(ones, ones, (1.0, 1.0, 1.0), kernel_size=4)


# ---------------------------------------------------------------- consistency


def test_prediction_consistency_hand_value_and_zero_for_equal_predictions():
    fused = torch.zeros(1, 2, 1, 1, 1)  # q = (0.5, 0.5)
    other = torch.tensor([math.log(3.0), 0.0]).reshape(1, 2, 1, 1, 1)  # p = (0.75, 0.25)
    present = torch.tensor([[True, True]])
    # KL(q || p) = 0.5 log(0.5 / 0.75) + 0.5 log(0.5 / 0.25) = 0.5 log(4/3) = 0.143841;
    # the second modality equals the fused prediction (KL 0): mean over 2 modalities = 0.071921
    loss = prediction_consistency(fused, [other, fused.clone()], present)
    assert loss.item() == pytest.approx(0.5 * math.log(4 / 3) / 2, abs=1e-6)
    assert prediction_consistency(fused, [fused.clone(), fused.clone()], present).item() == 0.0


def test_prediction_consistency_ignores_absent_modalities_and_does_not_train_the_fused_output():
    fused = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    first = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    present = torch.tensor([[True, False], [True, False]])
    reference = prediction_consistency(fused, [first, torch.randn(2, 3, 4, 4, 4)], present)
    changed = prediction_consistency(fused, [first, torch.randn(2, 3, 4, 4, 4) * 10], present)
    assert reference.item() > 0
    assert changed.item() == reference.item()
    all_present = torch.ones(2, 2, dtype=torch.bool)
    assert prediction_consistency(fused, [first, fused.detach()], all_present).item() > 0
    reference.backward()
    assert fused.grad is None
    assert first.grad.abs().sum() > 0


def test_feature_alignment_hand_values():
    a = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1, 1)
    b = torch.tensor([0.0, 3.0]).reshape(1, 2, 1, 1, 1)
    both = torch.tensor([[True, True]])
    assert feature_alignment([a, 2 * a], both).item() == pytest.approx(0.0, abs=1e-6)  # same direction
    assert feature_alignment([a, b], both).item() == pytest.approx(1.0, abs=1e-6)  # orthogonal: 1 - 0
    assert feature_alignment([a, -a], both).item() == pytest.approx(2.0, abs=1e-6)  # opposite: 1 - (-1)


def test_feature_alignment_zero_for_equal_features_and_ignores_absent_modalities():
    f = torch.randn(2, 4, 2, 2, 2)
    g = torch.randn(2, 4, 2, 2, 2)
    all_present = torch.ones(2, 3, dtype=torch.bool)
    assert feature_alignment([f, f.clone(), f.clone()], all_present).item() == pytest.approx(0.0, abs=1e-6)
    third_absent = torch.tensor([[True, True, False], [True, True, False]])
    assert feature_alignment([f, f.clone(), g], third_absent).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_alignment([f, g, f], third_absent).item() == pytest.approx(
        feature_alignment([f, g], torch.ones(2, 2, dtype=torch.bool)).item(), abs=1e-6
    )
    one_each = torch.tensor([[True, False, False], [False, False, True]])
    assert feature_alignment([f, g, -f], one_each).item() == 0.0


# ---------------------------------------------------------------- ramp-up


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))  # t = 0: exp(-5 * 1^2)
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))  # t = 0.5: exp(-5 * 0.25)
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(250, 100) == 1.0  # clipped
    assert sigmoid_rampup(3, 0) == 1.0


# ---------------------------------------------------------------- pseudo labels


def test_weighted_cross_entropy_hand_value_and_zero_gradient_without_weight():
    logits, _ = _four_voxels()
    pseudo = torch.tensor([0, 1, 1, 0]).reshape(1, 1, 1, 1, 4)
    weight = torch.tensor([1.0, 0.5, 0.0, 0.0]).reshape(1, 1, 1, 1, 4)
    loss = weighted_cross_entropy(logits, pseudo, weight)
    # (1 * log(1 + e^-2) + 0.5 * log(1 + e^-1)) / 1.5
    expected = (math.log(1 + math.exp(-2)) + 0.5 * math.log(1 + math.exp(-1))) / 1.5
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert torch.all(logits.grad.reshape(2, 4)[:, 2:] == 0)
    assert weighted_cross_entropy(logits, pseudo, torch.zeros_like(weight)).item() == 0.0


def test_weighted_dice_ce_ignores_unweighted_voxels_and_samples():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 2, 2, 2, requires_grad=True)
    pseudo = torch.randint(0, 3, (2, 1, 2, 2, 2))
    weight = torch.rand(2, 1, 2, 2, 2)
    weight[0, 0, 0] = 0.0  # half of the first sample has no pseudo label
    weight[1] = 0.0  # the second sample has none at all
    loss = weighted_dice_ce(logits, pseudo, weight)
    first = logits[:1].softmax(1) * weight[:1]
    onehot = F.one_hot(pseudo[:1, 0], 3).permute(0, 4, 1, 2, 3) * weight[:1]
    dice = 1 - (2 * (first * onehot).sum((2, 3, 4)) + 1e-5) / (first.sum((2, 3, 4)) + onehot.sum((2, 3, 4)) + 1e-5)
    expected = weighted_cross_entropy(logits, pseudo, weight) + dice.mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() > weighted_cross_entropy(logits, pseudo, weight).item()  # the Dice part is there
    loss.backward()
    assert torch.all(logits.grad[0, :, 0] == 0) and torch.all(logits.grad[1] == 0)


# ---------------------------------------------------------------- hybrid loss

OFF = {"affinity": 0, "consistency": 0, "alignment": 0, "self_training": 0}
BRANCHES = LossWeights().branches  # the per-modality outputs' share of the supervision, by default


def _batch(num_modalities: int = 2):
    """A tiny net's output on a 2-sample batch with scribbles on a few voxels of each sample."""
    torch.manual_seed(0)
    net = CmFNet(num_modalities=num_modalities, num_classes=3, channels=(4, 8))
    images = torch.rand(2, num_modalities, 8, 8, 8)
    target = torch.full((2, 1, 8, 8, 8), -1)
    target[0, 0, 1:3, 2, 2] = 1
    target[0, 0, 5, 5, 1:6] = 0
    target[1, 0, 2, 1:4, 6] = 2
    target[1, 0, 6, 6, 6] = 0
    return net, images, target


def _low_target():
    """_batch's strokes at the per-modality outputs' 4x4x4 grid, worked out by hand: each 2x2x2 block
    takes the one class its strokes hold."""
    low = torch.full((2, 1, 4, 4, 4), -1)
    low[0, 0, 0:2, 1, 1] = 1
    low[0, 0, 2, 2, 0:3] = 0
    low[1, 0, 1, 0:2, 3] = 2
    low[1, 0, 3, 3, 3] = 0
    return low


def _blocks(small):
    """A label or weight map on the 8x8x8 grid that is constant on each 2x2x2 block."""
    return small.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)


def test_downsampled_labels_keep_thin_strokes_and_drop_mixed_blocks():
    labels = torch.full((1, 1, 4, 4, 2), -1)
    labels[0, 0, 1, 0:4, 1] = 2  # a one-voxel stroke on an odd slice: nearest subsampling loses it
    labels[0, 0, 2, 0, 0], labels[0, 0, 3, 1, 1] = 1, 0  # two classes in one block
    labels[0, 0, 2:4, 2:4, :] = 1  # a block of one class, partly overwritten below
    labels[0, 0, 3, 3, 1] = -1
    low = downsample_labels(labels, (2, 2, 1), num_classes=3)
    assert low[0, 0, :, :, 0].tolist() == [[2, 2], [-1, 1]]
    assert _low_target().equal(downsample_labels(_batch()[2], (4, 4, 4), num_classes=3))


def test_hybrid_loss_is_finite_and_backpropagates():
    net, images, target = _batch()
    images[1, 1, :, :, 5:] = float("nan")  # the second modality has no data there
    output = net.forward_all(images, torch.tensor([[True, True], [False, True]]))
    pseudo, confidence = target.clamp(min=0), torch.rand(2, 1, 8, 8, 8)
    total, terms = HybridLoss(LossWeights(affinity=1.0, consistency=0.5, alignment=0.1))(
        output, images, target, torch.zeros(2, dtype=torch.bool), 10, (1.0, 1.0, 2.0), pseudo, confidence
    )
    assert torch.isfinite(total)
    assert set(terms) == {"pce", "pseudo", "affinity", "consistency", "alignment", "rampup", "total"}
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.encoders[1].parameters())


def test_hybrid_loss_without_regularizers_is_the_sum_of_partial_ce_terms():
    net, images, target = _batch()
    present = torch.tensor([[True, True], [True, False]])
    output = net.forward_all(images, present)
    total, terms = HybridLoss(LossWeights(**OFF))(
        output, images, target, torch.zeros(2, dtype=torch.bool), 0, (1.0, 1.0, 1.0)
    )
    # per-modality outputs are supervised at their own grid; modality 1 is absent in sample 1
    first, second = output.per_modality
    low = _low_target()
    expected = partial_cross_entropy(output.fused, target) + BRANCHES * (
        partial_cross_entropy(first, low) + partial_cross_entropy(second[:1], low[:1])
    )
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(terms) == {"pce", "rampup", "total"}


def test_pseudo_labels_count_only_for_scribbled_samples_and_where_the_modality_has_data():
    net, images, target = _batch()
    images[0, 1, :4] = float("nan")
    output = net.forward_all(images)
    low_pseudo, low_confidence = torch.randint(0, 3, (2, 1, 4, 4, 4)), torch.rand(2, 1, 4, 4, 4)
    pseudo, confidence = _blocks(low_pseudo), _blocks(low_confidence)
    dense = torch.tensor([False, True])
    loss = HybridLoss(LossWeights(pce=0, dense=0, **OFF))
    total, terms = loss(output, images, target, dense, 0, (1.0, 1.0, 1.0), pseudo, confidence)
    floor = LossWeights().pseudo_min_confidence  # less sure pseudo labels are left out
    weight, low_weight = (torch.where(c >= floor, c, 0.0) for c in (confidence, low_confidence))
    weight[1], low_weight[1] = 0.0, 0.0  # the dense sample has no pseudo labels
    second_weight = low_weight.clone()
    second_weight[0, :, :2] = 0.0  # no MR data there
    first, second = output.per_modality  # supervised at their own grid
    expected = weighted_dice_ce(output.fused, pseudo, weight) + BRANCHES * (
        weighted_dice_ce(first, low_pseudo, low_weight) + weighted_dice_ce(second, low_pseudo, second_weight)
    )
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["pseudo"] == pytest.approx(expected.item(), rel=1e-5)


def test_pseudo_labels_below_the_confidence_floor_get_no_gradient():
    # no strokes, a 2x2x2 patch; the walker says class 1 everywhere, sure of it (0.9) in the first half
    # and unsure (0.5) in the second: with the floor at 0.6 only the first half is learned from
    logits = torch.zeros(1, 2, 2, 2, 2, requires_grad=True)
    output = CmFNetOutput(fused=logits, per_modality=[], features=[], present=torch.ones(1, 1, dtype=torch.bool))
    pseudo = torch.ones(1, 1, 2, 2, 2, dtype=torch.long)
    confidence = torch.full((1, 1, 2, 2, 2), 0.9)
    confidence[:, :, 1] = 0.5
    target = torch.full((1, 1, 2, 2, 2), -1)
    loss = HybridLoss(LossWeights(pce=0, dense=0, pseudo_min_confidence=0.6, **OFF))
    dense = torch.zeros(1, dtype=torch.bool)
    total, _ = loss(output, torch.zeros(1, 1, 2, 2, 2), target, dense, 0, (1.0,) * 3, pseudo, confidence)
    total.backward()
    assert logits.grad[:, :, 1].abs().sum() == 0  # the unsure half
    assert (logits.grad[:, 1, 0] < 0).all()  # the sure half is pushed towards class 1
    sure_half = torch.where(confidence >= 0.6, confidence, 0.0)
    assert total.item() == pytest.approx(weighted_dice_ce(logits, pseudo, sure_half).item(), rel=1e-6)


def test_mixed_pseudo_labels_by_hand():
    # two classes, three voxels: the walker says class 1 with confidence 0.6, 0.9 and 0 (no pseudo label);
    # the network says class 0 with probability 0.8 everywhere
    own = torch.tensor([0.8, 0.2]).view(1, 2, 1, 1, 1).expand(1, 2, 3, 1, 1)
    pseudo = torch.ones(1, 1, 3, 1, 1, dtype=torch.long)
    confidence = torch.tensor([0.6, 0.9, 0.0]).view(1, 1, 3, 1, 1)
    label, weight = mixed_pseudo_labels(own, pseudo, confidence, 0.5)
    # voxel 0: class 0 gets 0.5 * 0.4 + 0.5 * 0.8 = 0.6 against 0.4; voxel 1: class 1 gets 0.5 * 0.9 + 0.5 * 0.2 = 0.55
    assert label.flatten().tolist()[:2] == [0, 1]
    assert weight.flatten().tolist() == pytest.approx([0.6, 0.55, 0.0])
    unchanged = mixed_pseudo_labels(own, pseudo, confidence, 0.0)
    assert unchanged[0] is pseudo and unchanged[1] is confidence


def test_self_training_mixes_the_networks_own_prediction_into_the_pseudo_labels_once_ramped_up():
    net, images, target = _batch()
    output = net.forward_all(images)
    pseudo, confidence = torch.randint(0, 3, (2, 1, 8, 8, 8)), torch.full((2, 1, 8, 8, 8), 0.7)
    dense = torch.zeros(2, dtype=torch.bool)
    weights = {"pce": 0, "dense": 0, **OFF}
    walker_only = HybridLoss(LossWeights(**weights))(output, images, target, dense, 0, (1.0,) * 3, pseudo, confidence)
    mixed = HybridLoss(LossWeights(**{**weights, "self_training": 1.0, "rampup_steps": 10}))
    before = mixed(output, images, target, dense, 0, (1.0,) * 3, pseudo, confidence)
    after = mixed(output, images, target, dense, 10, (1.0,) * 3, pseudo, confidence)
    # at step 0 the ramp (exp(-5)) leaves the walker's labels in charge; once ramped up the targets are the
    # network's own argmax (fused and per-modality outputs mixed), which it fits better than random labels
    own, _ = mixed_pseudo_labels(output.fused.softmax(1), pseudo, confidence, 1.0)
    assert torch.equal(own, output.fused.argmax(1, keepdim=True))
    assert before[1]["pseudo"] == pytest.approx(walker_only[1]["pseudo"], rel=0.05)
    assert after[1]["pseudo"] < walker_only[1]["pseudo"]


def test_self_training_targets_mix_the_per_modality_outputs_with_the_weight_drawn_at_that_step():
    net, images, target = _batch()
    output = net.forward_all(images)
    pseudo, confidence = torch.randint(0, 3, (2, 1, 8, 8, 8)), torch.full((2, 1, 8, 8, 8), 0.7)
    dense = torch.zeros(2, dtype=torch.bool)
    # branches 0: only the fused output's pseudo-label term, so the expected value is one call by hand
    loss = HybridLoss(LossWeights(pce=0, dense=0, branches=0, rampup_steps=0, **{**OFF, "self_training": 1.0}))
    torch.manual_seed(7)
    alpha = float(torch.rand(()))
    torch.manual_seed(7)
    _, terms = loss(output, images, target, dense, 10, (1.0,) * 3, pseudo, confidence)
    usable = [torch.ones(2, 1, 4, 4, 4, dtype=torch.bool)] * 2  # every modality present, with data

    def fused_term(own):
        label, weight = mixed_pseudo_labels(own, pseudo, confidence, 1.0)
        return weighted_dice_ce(output.fused, label, weight).item()

    mixed = mixed_probabilities(output.fused, output.per_modality, usable, alpha)
    assert terms["pseudo"] == pytest.approx(fused_term(mixed), rel=1e-5)
    assert terms["pseudo"] != pytest.approx(fused_term(output.fused.softmax(1)), rel=1e-3)  # the branches count


def test_branch_weight_scales_the_per_modality_terms_only():
    net, images, target = _batch()
    output = net.forward_all(images)
    dense = torch.zeros(2, dtype=torch.bool)

    def pce(branches: float) -> float:
        loss = HybridLoss(LossWeights(branches=branches, **OFF))
        return loss(output, images, target, dense, 0, (1.0,) * 3)[1]["pce"]

    fused = partial_cross_entropy(output.fused, target).item()
    assert pce(0.0) == pytest.approx(fused)
    assert pce(1.0) > fused
    assert pce(0.25) == pytest.approx(fused + 0.25 * (pce(1.0) - fused))


def test_hybrid_loss_scales_regularizers_by_the_rampup():
    net, images, target = _batch()
    output = net.forward_all(images)
    dense = torch.zeros(2, dtype=torch.bool)
    weights = LossWeights(affinity=2.0, consistency=3.0, alignment=4.0, rampup_steps=100)
    for step, ramp in [(0, math.exp(-5)), (100, 1.0)]:
        total, terms = HybridLoss(weights)(output, images, target, dense, step, (1.0, 1.0, 1.0))
        regularizers = 2.0 * terms["affinity"] + 3.0 * terms["consistency"] + 4.0 * terms["alignment"]
        assert regularizers > 0
        assert terms["rampup"] == pytest.approx(ramp)
        assert total.item() == pytest.approx(terms["pce"] + ramp * regularizers, rel=1e-5)


def test_hybrid_loss_uses_dice_ce_for_densely_labelled_samples_only():
    net, images, target = _batch()
    low = _low_target()
    low[1] = torch.randint(0, 3, (1, 4, 4, 4))
    target[1] = _blocks(low)[1]  # sample 1 has a dense label
    dense = torch.tensor([False, True])
    output = net.forward_all(images)
    supervised = HybridLoss(LossWeights(dense=0.5, **OFF))
    total, terms = supervised(output, images, target, dense, 0, (1.0, 1.0, 1.0))
    outputs = [(1.0, output.fused, target), *((BRANCHES, logits, low) for logits in output.per_modality)]
    pce = sum(w * partial_cross_entropy(logits[:1], labels[:1]) for w, logits, labels in outputs)
    dice_ce = sum(w * dense_loss(logits[1:], labels[1:]) for w, logits, labels in outputs)
    assert terms["pce"] == pytest.approx(pce.item(), rel=1e-5)
    assert terms["dense"] == pytest.approx(dice_ce.item(), rel=1e-5)
    assert total.item() == pytest.approx(pce.item() + 0.5 * dice_ce.item(), rel=1e-5)
    # class-balanced strokes on request, for every output
    _, terms = supervised(output, images, target, dense, 0, (1.0, 1.0, 1.0), balanced_strokes=True)
    balanced = sum(w * partial_cross_entropy(logits[:1], labels[:1], balanced=True) for w, logits, labels in outputs)
    assert terms["pce"] == pytest.approx(balanced.item(), rel=1e-5) and balanced.item() != pytest.approx(pce.item())


def test_dense_loss_over_labelled_voxels_equals_the_loss_of_the_labelled_part_alone():
    logits = torch.randn(1, 3, 4, 4, 4)
    target = torch.randint(0, 3, (1, 1, 4, 4, 4))
    target[..., 2:] = -1  # the second half along the last axis is outside the label
    assert dense_loss(logits, target).item() == pytest.approx(
        dense_loss(logits[..., :2], target[..., :2]).item(), rel=1e-6
    )
