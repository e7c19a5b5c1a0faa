"""Labels -> training targets, held-out strokes and regions, and the validation metrics."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from lib.errors import InvalidInput
from lib.labels import IGNORE, LabelSet
from lib.metrics import StrokeAccuracy, WorstRegionDice
from lib.transforms.targets import (
    CASE_SPLIT_FROM,
    HoldOutStrokesd,
    LoadTargetd,
    PropagateHeldOutCased,
    held_out_blocks,
    split_cases,
)


def test_label_to_target_for_scribbles_and_dense_labels(tmp_path):
    path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.array([0, 1, 2, 3, 4, 0, 1, 2], np.uint8).reshape(2, 2, 2), np.eye(4)), path)
    data = {"image": torch.zeros(2, 2, 2, 2), "label": str(path), "reference_shape": (2, 2, 2)}
    scribbled = LoadTargetd(num_classes=2)({**data, "dense": False})["label"]
    np.testing.assert_array_equal(scribbled.flatten(), [IGNORE, 1, 2, 0, IGNORE, IGNORE, 1, 2])
    dense = LoadTargetd(num_classes=2)({**data, "dense": True})["label"]
    np.testing.assert_array_equal(dense.flatten(), [0, 1, 2, IGNORE, IGNORE, 0, 1, 2])
    with pytest.raises(InvalidInput, match="differ in shape"):
        LoadTargetd(num_classes=2)({**data, "reference_shape": (3, 3, 3), "dense": False})


def test_held_out_strokes_split_the_annotations_in_two_disjoint_parts():
    target = torch.full((1, 32, 32, 16), IGNORE)
    target[0, ::3, ::3, ::2] = 1
    train = HoldOutStrokesd("train")({"label": target})["label"]
    validation = HoldOutStrokesd("validation")({"label": target})["label"]
    annotated = target != IGNORE
    in_train, in_validation = train != IGNORE, validation != IGNORE
    assert not (in_train & in_validation).any()
    assert torch.equal(in_train | in_validation, annotated)
    held = torch.from_numpy(held_out_blocks((32, 32, 16)))
    assert torch.equal(in_validation[0], annotated[0] & held)
    assert 0.1 < in_validation.sum() / annotated.sum() < 0.35  # about one block in five


def test_from_four_cases_on_whole_cases_are_held_out_and_keep_all_their_strokes():
    few = [{"case": f"case_{i}"} for i in range(CASE_SPLIT_FROM - 1)]
    assert split_cases(few) == (few, few)  # too few cases to spare one: held-out blocks of every case
    cases = [{"case": f"case_{i}"} for i in range(10)]
    train, validation = split_cases(cases)
    assert len(validation) == 2 and len(train) == 8  # a fifth
    assert all(d["held_out_case"] for d in validation)
    assert {d["case"] for d in train} | {d["case"] for d in validation} == {d["case"] for d in cases}
    assert not {d["case"] for d in train} & {d["case"] for d in validation}
    # fixed by the case ids, not by their order
    assert split_cases(cases[::-1])[1] == validation
    target = torch.full((1, 32, 32, 16), IGNORE)
    target[0, ::3, ::3, ::2] = 1
    kept = HoldOutStrokesd("validation")({"label": target, "held_out_case": True})["label"]
    assert torch.equal(kept, target)


def test_a_case_with_strokes_on_one_side_only_keeps_them_all_for_both():
    target = torch.full((1, 32, 32, 16), IGNORE)
    held = torch.from_numpy(held_out_blocks((32, 32, 16)))
    target[0][~held] = 1  # strokes only outside held-out blocks
    assert torch.equal(HoldOutStrokesd("validation")({"label": target})["label"], target)


def test_stroke_accuracy_is_balanced_over_annotated_classes():
    # 3 classes; class 0: 2 voxels, 1 right; class 1: 1 voxel, right; class 2: none annotated
    y = torch.tensor([0, 0, 1, IGNORE]).reshape(1, 1, 4, 1, 1)
    predicted = torch.tensor([0, 2, 1, 2]).reshape(1, 1, 4, 1, 1)
    metric = StrokeAccuracy(num_classes=3)
    metric(predicted, y)
    assert metric.aggregate().item() == pytest.approx((1 / 2 + 1 / 1) / 2)
    metric.reset()
    metric(torch.zeros(1, 1, 4, 1, 1), torch.full((1, 1, 4, 1, 1), IGNORE))
    assert metric.aggregate().item() == 0.0


def test_stroke_accuracy_of_probabilities_is_the_mean_probability_of_each_annotated_class():
    # the same strokes as above; voxel probabilities of classes 0, 1, 2
    y = torch.tensor([0, 0, 1, IGNORE]).reshape(1, 1, 4, 1, 1)
    probabilities = torch.tensor([[0.9, 0.1, 0.0], [0.3, 0.2, 0.5], [0.4, 0.6, 0.0], [0.0, 0.0, 1.0]])
    metric = StrokeAccuracy(num_classes=3)
    metric(probabilities.T.reshape(1, 3, 4, 1, 1), y)
    # class 0: (0.9 + 0.3) / 2, class 1: 0.6; class 2 has no strokes
    assert metric.aggregate().item() == pytest.approx(((0.9 + 0.3) / 2 + 0.6) / 2)
    # surer of the same argmax: a higher score, where the hard accuracy would not move
    metric.reset()
    surer = torch.tensor([[1.0, 0.0, 0.0], [0.3, 0.2, 0.5], [0.1, 0.9, 0.0], [0.0, 0.0, 1.0]])
    metric(surer.T.reshape(1, 3, 4, 1, 1), y)
    assert metric.aggregate().item() == pytest.approx(((1.0 + 0.3) / 2 + 0.9) / 2)


def test_label_set_parses_conf_and_rejects_bad_ids():
    assert LabelSet.parse('{"liver":1,"spleen":2}').classes == {"liver": 1, "spleen": 2}
    assert LabelSet.parse('{"spleen":2,"tumour":3,"liver":1}').names == ["liver", "spleen", "tumour"]  # id order
    with pytest.raises(ValueError, match="1..K"):
        LabelSet({"liver": 1, "spleen": 3})
    with pytest.raises(ValueError, match="JSON"):
        LabelSet.parse("{liver:1}")


def test_stroke_accuracy_with_min_reduction_is_the_worst_annotated_class():
    y = torch.tensor([0, 0, 1, IGNORE]).reshape(1, 1, 4, 1, 1)
    probabilities = torch.tensor([[0.9, 0.1, 0.0], [0.3, 0.2, 0.5], [0.4, 0.6, 0.0], [0.0, 0.0, 1.0]])
    metric = StrokeAccuracy(num_classes=3, reduction="min")
    metric(probabilities.T.reshape(1, 3, 4, 1, 1), y)
    assert metric.aggregate().item() == pytest.approx(min((0.9 + 0.3) / 2, 0.6))  # class 2 has no strokes


def test_stroke_accuracy_without_reduction_is_each_classs_and_nan_without_strokes():
    y = torch.tensor([0, 0, 1, IGNORE]).reshape(1, 1, 4, 1, 1)
    probabilities = torch.tensor([[0.9, 0.1, 0.0], [0.3, 0.2, 0.5], [0.4, 0.6, 0.0], [0.0, 0.0, 1.0]])
    metric = StrokeAccuracy(num_classes=3, reduction="none")
    metric(probabilities.T.reshape(1, 3, 4, 1, 1), y)
    accuracy = metric.aggregate()
    assert accuracy[:2].tolist() == pytest.approx([(0.9 + 0.3) / 2, 0.6]) and accuracy[2].isnan()


def test_a_held_out_case_gets_the_regions_its_strokes_outline_and_other_items_none():
    # two flat halves, one stroke in each: the propagation fills each half with its stroke's class
    image = MetaTensor(torch.zeros(1, 16, 8, 8), affine=torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0])))
    image[0, 8:] = 1.0
    strokes = torch.full((1, 16, 8, 8), IGNORE)
    strokes[0, 2:6, 4, 4] = 0
    strokes[0, 10:14, 4, 4] = 1
    regions = PropagateHeldOutCased(num_classes=1, reference_modality="mr")
    held_out = regions({"image": image, "label": strokes, "held_out_case": True})["pseudo"]
    expected = torch.zeros(1, 16, 8, 8, dtype=torch.long)
    expected[0, 8:] = 1
    assert torch.equal(held_out, expected)
    other = regions({"image": image, "label": strokes})["pseudo"]
    assert other.shape == strokes.shape and (other == IGNORE).all()


def test_worst_region_dice_is_the_worst_foreground_class_over_labelled_voxels_pooled_over_items():
    regions = torch.tensor([[[0, 1, 1, 2, 2, 2, IGNORE, IGNORE]], [[0, 0, 1, 1, 2, 2, IGNORE, IGNORE]]])
    predicted = torch.tensor([[[0, 1, 2, 2, 2, 2, 1, 1]], [[0, 1, 1, 1, 2, 2, 0, 0]]])
    metric = WorstRegionDice(num_classes=3)
    metric(y_pred=predicted[:, None], y=regions[:, None])
    # class 1: overlap 1 + 2, predicted 1 + 3 (IGNORE voxels not counted), true 2 + 2 -> 6 / 8
    # class 2: overlap 3 + 2, predicted 4 + 2, true 3 + 2 -> 10 / 11; background does not count
    assert metric.aggregate().item() == pytest.approx(6 / 8)
    probabilities = torch.nn.functional.one_hot(predicted, 3).movedim(-1, 1).float()
    metric.reset()
    metric(y_pred=probabilities, y=regions[:, None])
    assert metric.aggregate().item() == pytest.approx(6 / 8)  # probabilities are taken by their argmax


def test_worst_region_dice_is_nan_without_regions():
    metric = WorstRegionDice(num_classes=2)
    metric(y_pred=torch.ones(1, 1, 4, dtype=torch.long), y=torch.full((1, 1, 4), IGNORE))
    assert torch.isnan(metric.aggregate())
