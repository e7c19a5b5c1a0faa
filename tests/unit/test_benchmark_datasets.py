"""The benchmarks' dataset cache: written once, read again from wherever the folder now is, and written
anew when a file it records is gone (an earlier cache recorded absolute paths, which broke a run once the
worktree that wrote it was removed)."""

import json
import shutil

import nibabel as nib
import numpy as np

from benchmarks import datasets


def test_a_dataset_is_reused_read_after_a_move_and_rewritten_when_a_file_is_gone(tmp_path):
    first = datasets.build("phantom", tmp_path / "a")
    summary = tmp_path / "a" / "phantom_seed0" / "dataset.json"
    written = summary.stat().st_mtime_ns
    recorded = json.loads(summary.read_text())["cases"]
    assert all(not v.startswith("/") for c in recorded for k, v in c.items() if k != "case_id" and v)

    assert datasets.build("phantom", tmp_path / "a").cases == first.cases  # reused, not written again
    assert summary.stat().st_mtime_ns == written

    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = datasets.build("phantom", tmp_path / "b")
    assert [c.case_id for c in moved.cases] == [*(f"train_{i}" for i in range(4)), *(f"test_{i}" for i in range(3))]
    assert all(c.truth.startswith(str(tmp_path / "b")) for c in moved.cases)
    truth_before = np.asarray(nib.load(moved.cases[0].truth).dataobj)

    (tmp_path / "b" / "phantom_seed0" / recorded[0]["truth"]).unlink()
    rebuilt = datasets.build("phantom", tmp_path / "b")
    assert np.array_equal(np.asarray(nib.load(rebuilt.cases[0].truth).dataobj), truth_before)
    assert rebuilt.cases[0].strokes is not None and rebuilt.cases[-1].strokes is None  # train, then test phantoms
