"""The simulated annotator end to end (`python -m benchmarks.annotator --smoke`): it starts a real server,
draws, sends strokes as 3D Slicer does, waits for the retraining, scores, and writes its report.
Tiny phantoms and a few training steps: the numbers mean nothing, the plumbing is what is tested."""

import json

import nibabel as nib
import numpy as np

from benchmarks import annotator


def test_the_annotator_runs_the_loop_end_to_end_and_writes_its_report(tmp_path):
    out = tmp_path / "results"
    arms = ["loop", "no_retraining", "propagation", "random_walker"]
    strokes = tmp_path / "strokes"
    results = annotator.main(["--smoke", "--arms", ",".join(arms), "--out", str(out), "--strokes-out", str(strokes)])
    rows = results["datasets"]["phantom"]["rows"]

    for name in ("annotator_smoke.json", "annotator_smoke.md", "annotator_smoke.png"):
        assert (out / name).stat().st_size > 0, name
    assert all("error" not in row for row in rows), [row for row in rows if "error" in row]
    by_arm = {arm: [row for row in rows if row["arm"] == arm] for arm in arms}
    for arm, mine in by_arm.items():
        assert [row["round"] for row in mine] == [0, 1], arm
        assert 0 < mine[0]["labelled_voxels"] < mine[1]["labelled_voxels"], "round 1 adds strokes"
        for row in mine:
            assert 0.0 <= row["annotated"]["mean"] <= 1.0 and row["wall_seconds"] >= 0
    for r in (0, 1):  # the same strokes for every arm
        assert len({mine[r]["labelled_voxels"] for mine in by_arm.values()}) == 1
    loop, fixed = by_arm["loop"], by_arm["no_retraining"]
    assert all(row["training"]["runs"] >= 1 and row["training"]["step"] for row in loop), "each round retrained"
    assert all(row["training"]["runs"] == 0 for row in fixed)
    assert all(0.0 <= row["unseen"]["mean"] <= 1.0 for row in loop + fixed)  # the never-scribbled case
    assert "unseen" not in by_arm["random_walker"][0]
    # the same model and strokes after round 0: the no-retraining server answers as the loop did
    assert fixed[0]["annotated"]["mean"] == loop[0]["annotated"]["mean"]

    # every round's strokes are kept for a look afterwards: as many voxels as the round's row says
    for r in (0, 1):
        kept = np.asarray(nib.load(strokes / "phantom" / f"train_0_round_{r}.nii.gz").dataobj)
        assert int((kept > 0).sum()) == loop[r]["labelled_voxels"]

    text = (out / "annotator_smoke.md").read_text()
    assert "CmFNet loop (retraining)" in text and "random walker" in text
    assert json.loads((out / "annotator_smoke.json").read_text())["machine"]
