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
        "Commands: "
        + "; ".join(f"`{c}`" for c in results.get("commands", [results["command"]]))
        + f" on {results['machine']}; each trained method gets the wall-clock minutes in its `budget` column"
        f" (data preparation included), seed {results['seed']}.",
        "",
    ]
    for name, meta in results["datasets"].items():
        classes = list(meta["labels"])
        lines += [
            f"**{name}**: {meta['protocol']}; {100 * meta['annotated_fraction']:.2f} % of the voxels stroked; "
            f"CT {'x'.join(str(n) for n in meta['ct_shape'])} at "
            f"{'x'.join(f'{s:.1f}' for s in meta['ct_spacing'])} mm.",
            "",
            f"| method | answer | {' | '.join(classes)} | mean Dice | budget (min) | train (s) | steps "
            "| infer (s/case) |",
            f"|---|---|{'---|' * len(classes)}---|---|---|---|---|",
        ]
        for row in (r for r in results["rows"] if r["dataset"] == name):
            for kind, label in (
                ("served", "served (strokes honoured)"),
                ("model_alone", "model alone"),
                ("ct_alone", "model alone, CT only (MR absent)"),
            ):
                if kind not in row:
                    continue
                result = row[kind]
                train = f"{row['train_seconds']:.0f}" if "train_seconds" in row else "-"
                lines.append(
                    f"| {row['title']} | {label} | {' | '.join(_class_means(result, classes))} | "
                    f"**{result['mean']:.3f}** | {row.get('minutes', '-')} | {train} | {row.get('steps') or '-'} | "
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
    methods = list(dict.fromkeys(row["method"] for row in results["rows"]))
    colours = {method: f"C{index % 10}" for index, method in enumerate(methods)}  # one colour per method, every panel
    handles = {}
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.6), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        for row in (r for r in results["rows"] if r["dataset"] == name):
            colour = colours[row["method"]]
            if row.get("curve"):
                minutes, means = [p["minutes"] for p in row["curve"]], [p["mean"] for p in row["curve"]]
                handles.setdefault(row["title"], axis.plot(minutes, means, "o-", color=colour)[0])
            elif "served" in row or "model_alone" in row:
                value = (row.get("served") or row["model_alone"])["mean"]
                handles.setdefault(row["title"], axis.axhline(value, linestyle="--", linewidth=1, color=colour))
        axis.set(title=name, xlabel="training minutes", ylabel="mean Dice", ylim=(0, 1))
        axis.grid(alpha=0.3)
    figure.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(4, len(handles)), fontsize=8)
    figure.tight_layout(rect=(0, 0.06 * (1 + (len(handles) - 1) // 4), 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _mean(result: dict | None) -> str:
    return "-" if result is None else f"{result['mean']:.3f}"


def annotator_markdown(results: dict) -> str:
    """benchmarks.annotator's tables: per data set, every arm's rounds, then the last round per class."""
    settings = results["settings"]
    steps = f" and {settings['max_steps']} steps" if settings["max_steps"] else ""
    lines = [
        f"Command: `{results['command']}` on {results['machine']}, {results['load_average']:.1f} at the end; "
        f"{results['minutes']:g} min in all. "
        f"{settings['rounds']} correction rounds after round 0 ({settings['first_strokes']} strokes per structure "
        f"in round 0); each retraining at most {settings['train_minutes']:g} min{steps}.",
        "",
    ]
    for name, meta in results["datasets"].items():
        budget = "; ".join(f"{c}: {b['strokes']} strokes, {b['voxels']} voxels" for c, b in meta["budget"].items())
        lines += [
            f"**{name}**: {meta['protocol']}. Budget of a correction round: {budget}.",
            "",
            "| arm | round | labelled voxels | wait (s) | Dice, annotated (unlabelled voxels) | Dice, model alone "
            "| Dice, never scribbled | retraining runs, steps |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in meta["rows"]:
            if "error" in row:
                lines.append(f"| {row['title']} | failed: {row['error'][:160]} | | | | | | |")
                continue
            training = row.get("training")
            runs = f"{training['runs']}, {training['step']}" if training and training["runs"] else "-"
            lines.append(
                f"| {row['title']} | {row['round']} | {row['labelled_voxels']} | {row['wall_seconds']:.0f} | "
                f"**{_mean(row['annotated'])}** | {_mean(row.get('model_alone'))} | {_mean(row.get('unseen'))} "
                f"| {runs} |"
            )
        classes = list(meta["labels"])
        last = [r for r in meta["rows"] if "error" not in r]
        last = [r for r in last if r["round"] == max(x["round"] for x in last)]
        lines += ["", f"Last round, Dice per class on the annotated cases ({name}):", ""]
        lines += [f"| arm | {' | '.join(classes)} |", f"|---|{'---|' * len(classes)}"]
        lines += [f"| {r['title']} | {' | '.join(_class_means(r['annotated'], classes))} |" for r in last]
        lines.append("")
    return "\n".join(lines)


def plot_annotator(results: dict, path: Path) -> None:
    """Mean Dice against round, labelled voxels and wall time, one row of panels per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullFormatter

    names = list(results["datasets"])
    figure, axes = plt.subplots(len(names), 3, figsize=(15, 4.2 * len(names)), squeeze=False, sharey="row")
    xs = (("round", "round"), ("labelled_voxels", "labelled voxels"), ("wall_seconds", "annotator's wait (s)"))
    for panels, name in zip(axes, names, strict=True):
        rows = [r for r in results["datasets"][name]["rows"] if "error" not in r]
        for index, arm in enumerate(dict.fromkeys(r["arm"] for r in rows)):
            mine = [r for r in rows if r["arm"] == arm]
            for axis, (x, _) in zip(panels, xs, strict=True):
                dice = [r["annotated"]["mean"] for r in mine]
                axis.plot([r[x] for r in mine], dice, "o-", color=f"C{index}", label=mine[0]["title"])
                unseen = [(r[x], r["unseen"]["mean"]) for r in mine if r.get("unseen")]
                if unseen:
                    axis.plot(*zip(*unseen, strict=True), "s--", color=f"C{index}", alpha=0.6)
        for axis, (_, label) in zip(panels, xs, strict=True):
            axis.set(xlabel=label, ylim=(0, 1))
            axis.grid(alpha=0.3)
        panels[0].xaxis.set_major_locator(MaxNLocator(integer=True))
        panels[1].set_xscale("log")  # dense slices hold many more voxels than strokes
        panels[1].xaxis.set_minor_formatter(NullFormatter())
        panels[0].set_ylabel(f"{name}: mean Dice")
    axes[0][1].set_title("solid: annotated cases (unlabelled voxels); dashed: never-scribbled cases", fontsize=9)
    handles = {line.get_label(): line for panels in axes for line in panels[0].lines}
    handles = {label: line for label, line in handles.items() if not label.startswith("_")}  # solid lines, per arm
    figure.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=8)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)
