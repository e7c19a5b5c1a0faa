"""The simulated annotator on tiny volumes (no server): strokes land inside the error region with its true
label, respect the round's budget, go out in 3D Slicer's segment convention, and scores leave out what an
arm was given."""

from types import SimpleNamespace

import nibabel as nib
import numpy as np
from scipy.ndimage import label

from benchmarks.annotator import Data, given_cases, scored, server_conf
from benchmarks.datasets import Case, Dataset
from benchmarks.slicer import scribbles_request
from benchmarks.strokes import Budget, dense_slices, error_strokes, first_strokes
from lib.labels import LabelSet
from lib.scribbles.slicer import strokes_from_segments
from lib.settings import parse_conf

LABELS = {"liver": 1, "spleen": 2}
K = len(LABELS)
BACKGROUND = K + 1


def two_organs() -> np.ndarray:
    truth = np.zeros((40, 40, 10), np.uint8)
    truth[4:20, 4:20, :] = 1
    truth[24:34, 24:34, 2:8] = 2
    return truth


def strokes_of(new: np.ndarray) -> int:
    """Separate strokes: connected groups of stroke voxels (the error components here are far apart)."""
    return label(new > 0, structure=np.ones((3, 3, 3)))[1]


def stored_value(truth: np.ndarray) -> np.ndarray:
    return np.where(truth == 0, BACKGROUND, truth)


def test_strokes_land_in_the_largest_errors_with_their_true_label_on_one_slice_each():
    truth = two_organs()
    result = truth.copy()
    result[4:12, 4:12, 2:6] = 0  # a false negative of the liver: 256 voxels
    result[24:30, 4:10, 1:7] = 1  # a false positive of the liver on background: 216 voxels
    result[24:27, 24:27, 4] = 0  # a speck of missed spleen: 9 voxels, below what is worth a stroke
    new = error_strokes(truth, result, np.zeros_like(truth), K, Budget(strokes=2, voxels=1000), seed=0)

    drawn = new > 0
    assert drawn.any()
    np.testing.assert_array_equal(new[drawn], stored_value(truth)[drawn])  # the true label, K+1 for background
    assert (result[drawn] != truth[drawn]).all()  # only where the result is wrong
    assert (new[4:12, 4:12, 2:6] == 1).any() and (new[24:30, 4:10, 1:7] == BACKGROUND).any()
    assert not new[24:27, 24:27, 4].any()
    for region in ((slice(4, 12), slice(4, 12)), (slice(24, 30), slice(4, 10))):
        assert len(np.flatnonzero(new[region].any(axis=(0, 1)))) == 1  # one axial slice per stroke


def test_the_round_budget_of_strokes_and_voxels_holds():
    truth = np.zeros((60, 60, 6), np.uint8)
    result = truth.copy()
    for i in range(6):  # six false positives of class 1, the first the largest
        size = 9 - i
        result[2 + 10 * i : 2 + 10 * i + size, 5 : 5 + size, 1:5] = 1
    labelled = np.zeros_like(truth)

    generous = error_strokes(truth, result, labelled, K, Budget(strokes=6, voxels=10_000), seed=0)
    assert strokes_of(generous) == 6  # one stroke per component before any gets a second
    few = error_strokes(truth, result, labelled, K, Budget(strokes=3, voxels=10_000), seed=0)
    assert strokes_of(few) == 3 and few[2:20].any() and not few[42:].any()  # the largest first
    tight = error_strokes(truth, result, labelled, K, Budget(strokes=6, voxels=12), seed=0)
    assert 0 < (tight > 0).sum() <= 12
    assert set(np.unique(tight)) <= {0, BACKGROUND}


def test_nothing_is_drawn_where_the_result_is_right_or_strokes_already_lie():
    truth = two_organs()
    assert not error_strokes(truth, truth, np.zeros_like(truth), K, Budget(10, 1000), seed=0).any()
    result = truth.copy()
    result[4:12, 4:12, :] = 0
    labelled = np.zeros_like(truth)
    labelled[4:12, 4:12, :] = 1  # the whole error is already stroked
    assert not error_strokes(truth, result, labelled, K, Budget(10, 1000), seed=0).any()


def test_first_strokes_draw_a_few_strokes_inside_every_structure():
    truth = two_organs()
    body = np.zeros(truth.shape, bool)
    body[2:38, 2:38, :] = True
    strokes = first_strokes(truth, K, per_structure=3, body=body, seed=0)
    for value in (1, 2, BACKGROUND):
        mask = strokes == value
        assert mask.any(), value
        assert 1 <= len(np.flatnonzero(mask.any(axis=(0, 1)))) <= 3  # a few axial slices
        np.testing.assert_array_equal(stored_value(truth)[mask], value)
    assert body[strokes > 0].all()  # background strokes in the body, not the air


def test_the_request_is_what_slicer_sends_and_the_server_reads_back_exactly_the_strokes():
    truth = two_organs()
    new = np.zeros_like(truth)
    new[6:14, 10, 4] = 1  # 8 liver voxels: the selected class
    new[28, 26:30, 4] = 2  # 4 spleen voxels
    new[36, 2:8, 4] = BACKGROUND
    labelmap, label_info, selected = scribbles_request(new, truth, LABELS)

    assert selected == "liver"
    names = [segment["name"] for segment in label_info]
    assert names == ["liver", "spleen", "background_scribbles", "foreground_scribbles", "spleen_scribbles"]
    assert [segment["id"] for segment in label_info] == [1, 2, 3, 4, 5]  # positional, as Slicer numbers them
    assert labelmap.dtype == np.uint8 and labelmap.max() == 5
    strokes, erase = strokes_from_segments(labelmap, label_info, selected, LabelSet(LABELS))
    np.testing.assert_array_equal(strokes, new)  # the result's class segments are not taken for strokes
    assert not erase.any()

    first = scribbles_request(new, None, LABELS)[1]  # round 0: no result shown yet
    assert [s["name"] for s in first] == ["background_scribbles", "foreground_scribbles", "spleen_scribbles"]


def test_dense_slices_are_whole_slices_in_the_body_through_the_structures_and_grow_with_the_voxels():
    truth = np.zeros((40, 40, 20), np.uint8)
    truth[..., 5:15] = two_organs()  # slices 0-4 and 15-19 hold no structure
    body = np.zeros(truth.shape, bool)
    body[2:38, 2:38, :] = True
    one = dense_slices(truth, body, K, voxels=10)  # fewer voxels than a slice: still one slice
    more = dense_slices(truth, body, K, voxels=4 * 36 * 36)
    assert len(np.flatnonzero(one.any(axis=(0, 1)))) == 1
    assert len(np.flatnonzero(more.any(axis=(0, 1)))) == 4
    assert ((one > 0) <= (more > 0)).all()  # later rounds add slices
    assert set(np.flatnonzero(more.any(axis=(0, 1)))) <= set(range(5, 15))
    assert (one == 1).any() and (one == 2).any()  # the first slice goes through both organs
    labelled = more > 0
    np.testing.assert_array_equal(labelled, body & more.any(axis=(0, 1)))
    np.testing.assert_array_equal(more[labelled], stored_value(truth)[labelled])


def test_scores_leave_out_the_voxels_given_to_the_arm_and_only_those(tmp_path):
    truth = two_organs()
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    paths = {}
    for kind, values in (("image", np.zeros_like(truth)), ("truth", truth), ("scored", np.ones_like(truth))):
        paths[kind] = tmp_path / f"{kind}.nii.gz"
        nib.save(nib.Nifti1Image(values, affine), paths[kind])
    case = Case("c", str(paths["image"]), str(paths["truth"]), None, str(paths["scored"]))
    data = Data(Dataset("tiny", LABELS, tmp_path, tmp_path, [case], "", 0.0), [case], [])
    given = np.zeros_like(truth)
    given[4:8, 4:8, :] = 1
    prediction = truth.copy()
    prediction[4:8, 4:8, :] = 2  # wrong only where the arm was given the answer

    cases = given_cases(data, {"c": given}, tmp_path / "round_0")
    np.testing.assert_array_equal(nib.load(cases[0].strokes).dataobj, given)
    assert scored(data, cases, {"c": prediction})["mean"] == 1.0
    prediction[12:16, 12:16, :] = 2  # and wrong where it was not
    assert scored(data, cases, {"c": prediction})["cases"]["c"]["liver"] < 1.0
    assert scored(data, [case], {"c": truth})["mean"] == 1.0  # a never-scribbled case: every voxel scored


def test_conf_from_the_command_line_reaches_every_arm_but_cannot_undo_what_makes_an_arm():
    data = SimpleNamespace(dataset=SimpleNamespace(labels=LABELS))
    given = [["loss", '{"branches": 1}'], ["modalities", "ct,mr"], ["auto_train", "false"], ["max_steps", "7"]]
    args = SimpleNamespace(train_delay=3.0, train_minutes=1.5, max_steps=40, conf=given)
    arms = {arm: server_conf(data, args, arm) for arm in ("loop", "ct_only", "no_retraining")}
    assert {arm: (c["modalities"], c["auto_train"]) for arm, c in arms.items()} == {
        "loop": ("ct,mr", "true"),
        "ct_only": ("ct", "true"),
        "no_retraining": ("ct,mr", "false"),
    }
    server, train = parse_conf(arms["loop"])  # what the server parses at start
    assert train.loss.branches == 1.0 and train.max_steps == 7 and train.val_every == 20
    assert server.modality_list == ["ct", "mr"] and server.auto_train_minutes == 1.5
