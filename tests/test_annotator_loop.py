"""The simulated annotator end to end (`python -m benchmarks.annotator --smoke`): it starts a real server,
draws, sends strokes as 3D Slicer does, waits for the retraining, scores, and writes its report.
Tiny phantoms and seconds of training: the numbers mean nothing, the plumbing is what is tested."""

import json

from benchmarks import annotator


def test_the_annotator_runs_the_loop_end_to_end_and_writes_its_report(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- annotator-phantom:start -->\nold\n<!-- annotator-phantom:end -->\nafter\n")
    out = tmp_path / "results"
    arms = "loop,random_walker,graph_cut"
    rows = annotator.main(["--smoke", "--arms", arms, "--out", str(out), "--readme", str(readme)])["phantom"]

    for name in ("annotator_phantom.json", "annotator_phantom.md", "annotator_phantom.png"):
        assert (out / name).stat().st_size > 0, name
    assert all("error" not in row for row in rows), [row for row in rows if "error" in row]
    by_arm = {arm: [row for row in rows if row["arm"] == arm] for arm in arms.split(",")}
    for arm, mine in by_arm.items():
        assert [row["round"] for row in mine] == [0, 1], arm
        assert 0 < mine[0]["labelled_voxels"] < mine[1]["labelled_voxels"], "round 1 adds strokes"
        for row in mine:
            assert 0.0 <= row["annotated_dice"] <= 1.0 and row["wall_seconds"] >= 0
    for r in (0, 1):  # the same strokes for every arm
        assert len({mine[r]["labelled_voxels"] for mine in by_arm.values()}) == 1
    loop = by_arm["loop"]
    assert loop[0]["training"]["runs"] >= 1, "the strokes started a retraining that the annotator waited for"
    assert all(0.0 <= row["unseen_dice"] <= 1.0 for row in loop)  # the never-scribbled case is scored
    assert all(row["unseen_dice"] is None for row in by_arm["random_walker"] + by_arm["graph_cut"])

    text = readme.read_text()
    assert "old" not in text and "after" in text and "CmFNet loop (retraining)" in text
    assert json.loads((out / "annotator_phantom.json").read_text())["context"]["machine"]
