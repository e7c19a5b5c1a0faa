"""Tables (markdown) and plots (PNG) from benchmark results; no number is typed by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np

GOALS = {"liver": 0.90, "spleen": 0.85, "kidney_right": 0.80, "kidney_left": 0.80, "stomach": 0.75}


def _class_means(result: dict, classes: list[str]) -> list[str]:
    values = []
    for name in classes:
        found = [case[name] for case in result["cases"].values() if name in case]
        values.append(f"{np.mean(found):.3f}" if found else "-")
    return values


def accuracy_markdown(results: dict) -> str:
    lines = [
        f"Command: `{results['command']}` on {results['machine']}; every trained method gets "
        f"{results['minutes']:g} minutes of wall-clock time (data preparation included), seed {results['seed']}.",
        "",
    ]
    for name, meta in results["datasets"].items():
        classes = list(meta["labels"])
        lines += [
            f"**{name}**: {meta['protocol']}; {100 * meta['annotated_fraction']:.2f} % of the voxels stroked; "
            f"CT {'x'.join(str(n) for n in meta['ct_shape'])} at "
            f"{'x'.join(f'{s:.1f}' for s in meta['ct_spacing'])} mm.",
            "",
            f"| method | answer | {' | '.join(classes)} | mean Dice | train (s) | steps | infer (s/case) |",
            f"|---|---|{'---|' * len(classes)}---|---|---|---|",
        ]
        for row in (r for r in results["rows"] if r["dataset"] == name):
            for kind, label in (("served", "served (strokes honoured)"), ("model_alone", "model alone")):
                if kind not in row:
                    continue
                result = row[kind]
                train = f"{row['train_seconds']:.0f}" if "train_seconds" in row else "-"
                lines.append(
                    f"| {row['title']} | {label} | {' | '.join(_class_means(result, classes))} | "
                    f"**{result['mean']:.3f}** | {train} | {row.get('steps') or '-'} | "
                    f"{result['seconds_per_case']:.1f} |"
                )
        lines.append("")
    return "\n".join(lines)


def plot_curves(results: dict, path: Path) -> None:
    """Mean Dice of the published model (model alone) against training minutes, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        for row in (r for r in results["rows"] if r["dataset"] == name):
            if row.get("curve"):
                axis.plot(
                    [p["minutes"] for p in row["curve"]], [p["mean"] for p in row["curve"]], "o-", label=row["title"]
                )
            elif "served" in row or "model_alone" in row:
                value = (row.get("served") or row["model_alone"])["mean"]
                axis.axhline(value, linestyle="--", linewidth=1, label=row["title"], color=f"C{len(axis.lines)}")
        axis.set(title=name, xlabel="training minutes", ylabel="mean Dice", ylim=(0, 1))
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
