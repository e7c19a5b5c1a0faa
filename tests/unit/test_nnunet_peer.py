"""The nnU-Net v2 peer (benchmarks.nnunet_peer) without nnunetv2: label conversion, dataset files, skipping.

Training nnU-Net itself is not part of the test suite (CI has 2 cores and no nnunetv2); run
`python -m benchmarks.nnunet_peer` from the nnU-Net venv for that (benchmarks/README.md).
"""

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmarks import nnunet_peer

ROOT = Path(__file__).resolve().parents[2]
K = 2  # classes 1..2; our background stroke is 3, nnU-Net's ignore label is 3


def test_strokes_to_nnunet_labels_and_back():
    # ours: 0 = not annotated, 1..K = class stroke, K+1 = background stroke
    strokes = np.array([[[0, 1], [2, 3]], [[3, 0], [1, 0]]], dtype=np.uint8)
    labels = nnunet_peer.strokes_to_nnunet(strokes, K)
    # nnU-Net: 0 = background, 1..K = classes, K+1 = ignore (the highest label)
    expected = np.array([[[3, 1], [2, 0]], [[0, 3], [1, 3]]], dtype=np.uint8)
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.uint8
    assert nnunet_peer.ignore_label(K) == K + 1 == labels.max()
    np.testing.assert_array_equal(nnunet_peer.nnunet_to_strokes(labels, K), strokes)
    assert strokes[0, 0, 0] == 0, "the input is not modified"


def test_prediction_keeps_our_class_ids():
    prediction = np.array([[0, 1], [2, 0]], dtype=np.int64)  # nnU-Net predicts 0..K, never the ignore label
    labels = nnunet_peer.prediction_to_labels(prediction, K)
    np.testing.assert_array_equal(labels, prediction)
    assert labels.dtype == np.uint8
    with pytest.raises(ValueError):
        nnunet_peer.prediction_to_labels(np.array([0, K + 1]), K)


@pytest.mark.parametrize("bad", [np.array([0, K + 2]), np.array([-1, 1])])
def test_strokes_outside_the_convention_are_refused(bad):
    with pytest.raises(ValueError):
        nnunet_peer.strokes_to_nnunet(bad, K)


def test_dataset_json_has_the_ignore_label_last_and_ct_mr_channels():
    description = nnunet_peer.dataset_json(K, nnunet_peer.default_channel_names(2), ["liver", "spleen"])
    assert description["labels"] == {"background": 0, "liver": 1, "spleen": 2, "ignore": 3}
    assert max(description["labels"].values()) == description["labels"]["ignore"]
    assert description["channel_names"] == {"0": "CT", "1": "MR"}
    assert description["overwrite_image_reader_writer"] == "NibabelIO"
    with pytest.raises(ValueError):
        nnunet_peer.dataset_json(K, ["CT"], ["liver"])


def test_raw_dataset_files(tmp_path):
    shape = (4, 3, 2)
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    ct = np.full(shape, -100.0, np.float32)
    mr = np.ones(shape, np.float32)
    mr[0] = np.nan  # outside the MR's field of view
    strokes = np.zeros(shape, np.uint8)
    strokes[1, 1, 1], strokes[2, 2, 0] = 1, K + 1
    labels = nnunet_peer.strokes_to_nnunet(strokes, K)
    description = nnunet_peer.dataset_json(K, ["CT", "MR"])
    images, label_path = nnunet_peer.write_raw_dataset(tmp_path, [ct, mr], labels, affine, description)

    folder = tmp_path / nnunet_peer.DATASET_NAME
    assert [p.name for p in images] == ["case_000_0000.nii.gz", "case_000_0001.nii.gz"]
    assert (folder / "dataset.json").is_file()
    written_mr = nib.load(images[1])
    assert np.isfinite(written_mr.get_fdata()).all() and written_mr.get_fdata()[0].max() == 0.0
    np.testing.assert_allclose(written_mr.header.get_zooms(), (0.8, 0.9, 2.5))
    written_labels = np.asarray(nib.load(label_path).dataobj)
    np.testing.assert_array_equal(written_labels, labels)
    assert written_labels[1, 1, 1] == 1 and written_labels[2, 2, 0] == 0 and written_labels[0, 0, 0] == K + 1


def test_available_gives_a_reason_without_nnunetv2(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # import nnunetv2 now fails, installed or not
    reason = nnunet_peer.available()
    assert isinstance(reason, str) and "nnunetv2" in reason
    assert "requirements-nnunet.txt" in reason
    with pytest.raises(RuntimeError, match="requirements-nnunet.txt"):
        nnunet_peer.train_and_predict(
            [np.zeros((2, 2, 2), np.float32)], np.zeros((2, 2, 2), np.uint8), np.eye(4), K, 0.1, tmp_path
        )
    assert not any(tmp_path.iterdir()), "nothing is written when nnU-Net is missing"


def test_the_module_imports_without_nnunetv2():
    # nnunetv2 is imported lazily: with it blocked, the module imports and says why it cannot run
    code = (
        "import sys; sys.modules['nnunetv2'] = None; "
        "from benchmarks import nnunet_peer; "
        "assert nnunet_peer.available(); "
        "assert not any(name.startswith('nnunetv2.') for name in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_the_planner_is_sized_for_the_cpu_unless_told_otherwise():
    assert nnunet_peer.planner_memory_gb("cpu", None) == nnunet_peer.CPU_MEMORY_TARGET_GB
    assert nnunet_peer.planner_memory_gb("cuda:0", None) is None  # nnU-Net's own default on a GPU
    assert nnunet_peer.planner_memory_gb("cpu", 8.0) == 8.0
    assert nnunet_peer.planner_memory_gb("cuda", 4.0) == 4.0


def test_the_peer_autocasts_on_the_cpu_as_our_own_training_does():
    from lib.precision import autocast_dtype

    assert nnunet_peer.cpu_autocast_dtype("cpu") == autocast_dtype("cpu")  # bf16 where the CPU has it, else None
    assert nnunet_peer.cpu_autocast_dtype("cuda") is None  # nnU-Net autocasts on CUDA itself
