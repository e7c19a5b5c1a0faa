"""Make the demo datastore of paired CT/MR phantom cases (offline, seconds).

Layout (docs/architecture.md, "Modalities and companions"), for `--out demo_data`:

    demo_data/studies/case_000.nii.gz                    CT, the datastore image (reference)
    demo_data/studies/mr/case_000.nii.gz                 its MR companion
    demo_data/studies/labels/scribbles/case_000.nii.gz   simulated scribbles (first --scribbled cases)
    demo_data/studies/labels/final/case_000.nii.gz       dense truth as `final` (only with --final N)
    demo_data/truth/case_000.nii.gz                      dense ground truth, for evaluation only

Start the server with `--studies demo_data/studies`.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lib.data.cases import COMPANION, write_case
from lib.data.phantoms import DEMO_LABELS, make_case
from lib.data.scribbles import PROTOCOL, annotated_fraction, simulate_scribbles
from lib.labels import SCRIBBLES_TAG


def case_id(index: int) -> str:
    return f"case_{index:03d}"


def write_demo(out: Path, cases: int, scribbled: int, final: int, seed: int) -> dict:
    """Write the datastore; returns a summary (ids, annotated fraction)."""
    studies = out / "studies"
    for folder in (
        studies / COMPANION,
        studies / "labels" / SCRIBBLES_TAG,
        studies / "labels" / "final",
        out / "truth",
    ):
        folder.mkdir(parents=True, exist_ok=True)
    fractions = []
    for index in range(cases):
        case = make_case(seed + index)
        scribbles = None
        if index < scribbled:
            scribbles = simulate_scribbles(case.truth, len(DEMO_LABELS), seed + index, PROTOCOL, image=case.ct)
            fractions.append(annotated_fraction(scribbles))
        write_case(studies, case_id(index), case, scribbles, truth_dir=out / "truth", final=index < final)
    return {
        "studies": str(studies),
        "cases": [case_id(i) for i in range(cases)],
        "scribbled": [case_id(i) for i in range(scribbled)],
        "final": [case_id(i) for i in range(final)],
        "labels": DEMO_LABELS,
        "annotated_fraction": float(np.mean(fractions)) if fractions else 0.0,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_data"))
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--scribbled", type=int, default=4, help="cases that get simulated scribbles")
    parser.add_argument("--final", type=int, default=0, help="cases whose truth is stored as a `final` label")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rewrite an existing demo datastore")
    args = parser.parse_args(argv)

    summary_file = args.out / "demo.json"
    if summary_file.exists() and not args.force:
        print(f"Demo datastore already in {args.out} (use --force to rewrite)")
        return
    start = time.perf_counter()
    summary = write_demo(args.out, args.cases, args.scribbled, args.final, args.seed)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    summary_file.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
