"""Two methods compared run by run, from several runs of benchmarks.accuracy (benchmarks/README.md).

One run's mean Dice moves by about 0.005 from run to run (another seed: another simulated MR and
other strokes; the same seed: another machine load, so another number of steps). A lead smaller than
that shows only as a difference that holds over many runs: each run scores both methods on the same
data, and the differences are summed up as their mean with a 95 % confidence interval (Student's t).
A method run alone pairs with the other from a run of the same data set and seed (:func:`pairs`), so a
new variant can be set beside earlier runs of the baseline.

    for seed in 0 1 2 3 4; do
      python -m benchmarks.accuracy --data real --methods cmfnet,early_fusion --seed $seed \\
          --out results/cache/seeds/real_$seed
    done
    python -m benchmarks.paired results/cache/seeds/real_*/accuracy.json --methods cmfnet,early_fusion

Writes results/paired.{json,md} (`--out`: another folder) and the README's `paired` section
(`--no-readme` leaves it alone).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from benchmarks.common import RESULTS, ROOT, write_results
from lib.markdown import write_between_markers


def pairs(results: list[dict], first: str, second: str) -> list[dict]:
    """One pair per run and data set where both methods were scored: their mean Dice (model alone where
    there is one, else what was served) and steps, the run's seed, machine and command.

    A method scored without the other in its run pairs with the other one scored alone in another run
    of the same data set and seed (the seed makes the data: the same simulated MR and strokes), when
    each was so scored once; that pair gives both runs' machines and commands."""
    found = []
    alone: dict[str, dict[tuple, list]] = {first: {}, second: {}}  # method -> (dataset, seed) -> [(row, run)]
    for run in results:
        rows = {(r["dataset"], r["method"]): r for r in run["rows"]}
        for dataset in dict.fromkeys(r["dataset"] for r in run["rows"]):
            a, b = rows.get((dataset, first)), rows.get((dataset, second))
            if a is not None and b is not None:
                found.append(_pair(dataset, a, b, run, run))
            for method, row in ((first, a), (second, b)):
                if row is not None and (a is None or b is None):
                    alone[method].setdefault((dataset, run["seed"]), []).append((row, run))
    for (dataset, seed), firsts in alone[first].items():
        seconds = alone[second].get((dataset, seed), [])
        if len(firsts) == 1 and len(seconds) == 1:
            (a, run_a), (b, run_b) = firsts[0], seconds[0]
            found.append(_pair(dataset, a, b, run_a, run_b))
    return found


def _pair(dataset: str, a: dict, b: dict, run_a: dict, run_b: dict) -> dict:
    def both(key: str) -> str:
        return run_a[key] if run_a is run_b or run_a[key] == run_b[key] else f"{run_a[key]}; {run_b[key]}"

    return {
        "dataset": dataset,
        "seed": run_a["seed"],
        "machine": both("machine"),
        "command": both("command"),
        "dice": [_dice(a), _dice(b)],
        "steps": [a.get("steps"), b.get("steps")],
    }


def summary(differences: list[float]) -> dict:
    """Mean of the paired differences, their standard deviation and the mean's 95 % t interval (None
    with fewer than two pairs), and how many are above, level (a difference that rounds to 0.000) and below."""
    d = np.asarray(differences, dtype=float)
    level = np.round(d, 3) == 0
    result = {
        "pairs": len(d),
        "mean": float(d.mean()),
        "above": int(((d > 0) & ~level).sum()),
        "level": int(level.sum()),
        "below": int(((d < 0) & ~level).sum()),
        "sd": None,
        "interval": None,
    }
    if len(d) >= 2:
        sd = float(d.std(ddof=1))
        half = float(stats.t.ppf(0.975, len(d) - 1)) * sd / np.sqrt(len(d))
        result.update(sd=sd, interval=[result["mean"] - half, result["mean"] + half])
    return result


def compare(results: list[dict], first: str, second: str) -> dict:
    found = pairs(results, first, second)
    if not found:
        raise ValueError(f"no run (nor two runs of one seed) scored both {first} and {second} on one data set")
    by_dataset = {}
    for dataset in dict.fromkeys(p["dataset"] for p in found):
        mine = [p for p in found if p["dataset"] == dataset]
        by_dataset[dataset] = summary([p["dice"][0] - p["dice"][1] for p in mine])
    return {"methods": [first, second], "pairs": found, "summary": by_dataset}


def markdown(comparison: dict) -> str:
    first, second = comparison["methods"]
    lines = [
        f"`{first}` against `{second}`, mean Dice of each run (model alone; what is served for a method that "
        "does not train), one row per run of `python -m benchmarks.accuracy`; difference = first - second.",
        "",
        f"| data | seed | {first} | {second} | difference | steps | machine |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in comparison["pairs"]:
        (a, b), steps = p["dice"], " / ".join(str(s) for s in p["steps"])
        lines.append(f"| {p['dataset']} | {p['seed']} | {a:.3f} | {b:.3f} | {a - b:+.3f} | {steps} | {p['machine']} |")
    lines.append("")
    for dataset, s in comparison["summary"].items():
        spread = ""
        if s["interval"]:
            low, high = s["interval"]
            spread = f" (sd {s['sd']:.4f}; 95 % interval of the mean {low:+.4f} to {high:+.4f})"
        lines.append(
            f"- **{dataset}**: {s['pairs']} pairs, mean difference **{s['mean']:+.4f}**{spread}; "
            f"{first} above in {s['above']}, level in {s['level']}, below in {s['below']}."
        )
    return "\n".join(lines) + "\n"


def _dice(row: dict) -> float:
    return (row.get("model_alone") or row["served"])["mean"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="accuracy.json of each run")
    parser.add_argument("--methods", default="cmfnet,early_fusion", help="the two methods, comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for paired.{json,md}")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    if len(methods) != 2:
        parser.error(f"--methods takes two methods, not {methods}")
    results = []
    for file in args.files:
        try:
            result = json.loads(file.read_text())
        except (OSError, ValueError) as error:
            parser.error(f"{file}: not readable as JSON ({error})")
        if not isinstance(result, dict) or not {"rows", "seed", "machine", "command"} <= result.keys():
            parser.error(f"{file}: not a result of benchmarks.accuracy")
        results.append(result)
    try:
        comparison = compare(results, *methods)
    except ValueError as error:
        parser.exit(1, f"paired: {error}\n")
    comparison["command"] = "python -m benchmarks.paired " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(comparison)
    write_results("paired", comparison, text, args.out)
    if not args.no_readme:
        write_between_markers(ROOT / "README.md", "paired", f"Command: `{comparison['command']}`.\n\n{text}")
    print(text)
    return comparison


if __name__ == "__main__":
    main()
