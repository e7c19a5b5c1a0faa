"""Tables (markdown), plots (PNG) and README sections from benchmark results; no number is typed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from benchmarks.common import write_between_markers

SCRIBBLE_TRAINED = ("cmfnet", "pce", "ct_only", "mr_only", "early_fusion")


def one_line(record: dict) -> str:
    dice = [v["dice"] for case in record["cases"].values() for v in case.values()]
    return (
        f"{record['method']}: mean Dice {np.mean(dice):.3f}, train {record['train_seconds']:.1f} s, "
        f"infer {record['infer_seconds_per_case']:.2f} s/case"
    )


def _stats(values) -> list[float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return [float("nan"), float("nan")]
    return [float(np.mean(values)), float(np.std(values))]


def summarize(rows: list[dict], context: dict) -> dict:
    """Per dataset and method: Dice/HD95 per class and their class means, as [mean, sd] over cases x seeds."""
    datasets = {}
    for name, meta in context["datasets"].items():
        classes = sorted(meta["labels"], key=meta["labels"].get)
        methods = {}
        for key in context["methods"]:
            records = [r for r in rows if r["dataset"] == name and r["method"] == key]
            if not records:
                continue
            samples = [case for r in records for case in r["cases"].values()]
            methods[key] = {
                "dice": {c: _stats([s[c]["dice"] for s in samples if c in s]) for c in classes},
                "hd95": {c: _stats([s[c]["hd95"] for s in samples if c in s]) for c in classes},
                "mean_dice": _stats([np.mean([v["dice"] for v in s.values()]) for s in samples]),
                "mean_hd95": _stats([np.mean([v["hd95"] for v in s.values()]) for s in samples]),
                "missed": int(sum(v["empty"] for s in samples for v in s.values())),
                "train_seconds": _stats([r["train_seconds"] for r in records]),
                "infer_seconds": _stats([r["infer_seconds_per_case"] for r in records]),
                "samples": len(samples),
                "seeds": sorted({r["seed"] for r in records}),
                "annotated_fraction": _stats([r.get("annotated_fraction") for r in records]),
            }
        datasets[name] = {"classes": classes, "methods": methods, "protocol": meta["protocol"]}
    return {"datasets": datasets, "goals": goals(datasets)}


def goals(datasets: dict) -> list[dict]:
    """The issue's targets, checked on every dataset where the methods involved ran."""
    found = []
    for name, data in datasets.items():
        m = data["methods"]
        if "cmfnet" in m and "full" in m:
            ratio = m["cmfnet"]["mean_dice"][0] / max(m["full"]["mean_dice"][0], 1e-9)
            above = [k for k in SCRIBBLE_TRAINED if k in m and m[k]["mean_dice"][0] > m["full"]["mean_dice"][0]]
            caveat = (
                f"; caveat: full supervision is below {', '.join(above)} here, so at this budget it is no upper bound"
                if above
                else ""
            )
            found.append(
                {
                    "dataset": name,
                    "goal": "CmFNet >= 90 % of full supervision's mean Dice",
                    "measured": f"{m['cmfnet']['mean_dice'][0]:.3f} / {m['full']['mean_dice'][0]:.3f} = "
                    f"{100 * ratio:.0f} %{caveat}",
                    "met": bool(ratio >= 0.9),
                }
            )
        if "cmfnet" in m and "pce" in m:
            gain = 100 * (m["cmfnet"]["mean_dice"][0] - m["pce"]["mean_dice"][0])
            found.append(
                {
                    "dataset": name,
                    "goal": "CmFNet >= 5 Dice points above pCE only",
                    "measured": f"{gain:+.1f} points",
                    "met": bool(gain >= 5),
                }
            )
        singles = [k for k in ("ct_only", "mr_only") if k in m]
        if "tumour" in data["classes"] and "cmfnet" in m and singles:
            best = max(singles, key=lambda k: m[k]["dice"]["tumour"][0])
            ours, theirs = m["cmfnet"]["dice"]["tumour"][0], m[best]["dice"]["tumour"][0]
            found.append(
                {
                    "dataset": name,
                    "goal": "CmFNet above the best single modality on the tumour",
                    "measured": f"{ours:.3f} vs {theirs:.3f} ({best})",
                    "met": bool(ours > theirs),
                }
            )
    return found


def _cell(stat: list[float], digits: int = 3) -> str:
    mean, sd = stat
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def dice_table(data: dict, titles: dict, with_hd: bool = True) -> str:
    classes = data["classes"]
    header = ["method", *classes, "mean Dice"]
    if with_hd:
        header.append("mean HD95 (mm)")
    header += ["train (s)", "infer (s/case)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, values in data["methods"].items():
        cells = [titles[key], *[_cell(values["dice"][c], 2) for c in classes], f"**{_cell(values['mean_dice'])}**"]
        if with_hd:
            cells.append(_cell(values["mean_hd95"], 1))
        cells += [f"{values['train_seconds'][0]:.0f}", f"{values['infer_seconds'][0]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def hd_table(data: dict, titles: dict) -> str:
    classes = data["classes"]
    header = ["method", *[f"{c} HD95" for c in classes], "classes missed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, values in data["methods"].items():
        cells = [titles[key], *[_cell(values["hd95"][c], 1) for c in classes], str(values["missed"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals_table(found: list[dict]) -> str:
    lines = ["| goal | data | measured | met |", "|---|---|---|---|"]
    lines += [f"| {g['goal']} | {g['dataset']} | {g['measured']} | {'yes' if g['met'] else '**no**'} |" for g in found]
    return "\n".join(lines)


def _settings_line(context: dict) -> str:
    s = context["settings"]
    return (
        f"CmFNet preset `{s['network']}`, {s['iterations']} iterations per method, patches "
        f"{'x'.join(map(str, s['patch_size']))} x {s['num_samples']} per step, AdamW lr {s['learning_rate']:g}, "
        f"seeds {', '.join(map(str, s['seeds']))}"
    )


def _timing(context: dict) -> str:
    text = f"training and scoring took {context['compute_seconds'] / 60:.1f} min"
    if context["wall_seconds"] < 0.9 * context["compute_seconds"]:
        text += f" (this invocation {context['wall_seconds'] / 60:.1f} min, reusing cached runs)"
    return text


def accuracy_markdown(summary: dict, context: dict, readme: bool) -> str:
    titles = context["methods"]
    out = []
    if readme:
        out.append(
            f"Command: `{context['command']}` on {context['machine']}: {_timing(context)}. {_settings_line(context)}."
        )
    else:
        out += [
            "# Accuracy benchmark",
            "",
            f"Command: `{context['command']}`",
            "",
            f"Machine: {context['machine']}; {_timing(context)}.",
            "",
            _settings_line(context) + ".",
            "",
        ]
    if context.get("preset") == "cpu":
        out += [
            "",
            "The `cpu` preset's budget (a few hundred iterations on a shared 2-core CPU) leaves every network far "
            "from converged, so these numbers compare early training, not the methods at their best; "
            "`--preset gpu` is the setting for conclusions. Details: benchmarks/README.md.",
        ]
    for reason in context.get("skipped", []):
        out += ["", f"Skipped: {reason}."]
    for name, data in summary["datasets"].items():
        fraction = next(iter(data["methods"].values()))["annotated_fraction"][0]
        samples = next(iter(data["methods"].values()))["samples"]
        out += [
            "",
            f"**{name}**: {data['protocol']}; {100 * fraction:.2f} % of the voxels annotated by the "
            f"simulated scribbles; Dice mean ± sd over {samples} (case, seed) pairs.",
            "",
        ]
        out.append(dice_table(data, titles))
        if not readme:
            out += ["", hd_table(data, titles)]
    if summary["goals"]:
        out += ["", goals_table(summary["goals"])]
    images = [p for p in context.get("images", []) if p]
    if images:
        out += ["", " ".join(f"![{Path(p).stem}]({p})" for p in images)]
    return "\n".join(out)


def write_accuracy(rows: list[dict], context: dict, out: Path, run_root: Path, datasets: dict, seed: int) -> dict:
    summary = summarize(rows, context)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    try:
        images.append(plot_dice(summary, context, out / "accuracy_dice.png"))
        for name, dataset in datasets.items():
            images.append(
                plot_overlay(
                    name, dataset, context, run_root / f"{name}_seed{seed}", out / f"accuracy_overlay_{name}.png"
                )
            )
    except ImportError as e:  # matplotlib is pinned, but a minimal install could lack it
        context["plots_skipped"] = str(e)
    context["images"] = [str(Path("results") / Path(p).name) for p in images if p]
    summary["markdown"] = accuracy_markdown(summary, context, readme=False)
    summary["readme"] = accuracy_markdown(summary, context, readme=True)
    (out / "accuracy.md").write_text(summary["markdown"] + "\n")
    (out / "accuracy.json").write_text(
        json.dumps(
            {
                "context": context,
                "summary": {k: v for k, v in summary.items() if k not in ("markdown", "readme")},
                "runs": rows,
            },
            indent=1,
        )
    )
    return summary


def update_readme(path: Path, section: str, content: str) -> bool:
    return write_between_markers(path, section, content)


# ---- plots ------------------------------------------------------------------------------------------


def plot_dice(summary: dict, context: dict, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = summary["datasets"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 4.2), squeeze=False)
    for ax, (name, data) in zip(axes[0], datasets.items(), strict=True):
        keys = list(data["methods"])
        classes = [*data["classes"], "mean"]
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            values = data["methods"][key]
            stats = [values["dice"][c] for c in data["classes"]] + [values["mean_dice"]]
            x = np.arange(len(classes)) + (i - (len(keys) - 1) / 2) * width
            ax.bar(
                x, [s[0] for s in stats], width, yerr=[s[1] for s in stats], capsize=2, label=context["methods"][key]
            )
        ax.set_xticks(np.arange(len(classes)), classes)
        ax.set_ylim(0, 1)
        ax.set_ylabel("Dice")
        ax.set_title(f"{name}: Dice per class (mean ± sd over cases and seeds)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def _radiological(slice2d: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """An axial slice (x, y) as radiologists view it: anterior up, the patient's right on the image's left."""
    if affine[0, 0] > 0:  # x runs towards the patient's right (RAS world): flip so that it runs to the left
        slice2d = slice2d[::-1, :]
    if affine[1, 1] < 0:  # y runs towards posterior: flip so that it runs to anterior
        slice2d = slice2d[:, ::-1]
    return np.rot90(slice2d)


def plot_overlay(name: str, dataset, context: dict, run_folder: Path, path: Path) -> str | None:
    """CT, MR (resampled onto the CT grid), scribbles, predictions and truth on three axial slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from benchmarks.methods import load_for_evaluation

    case = dataset.test[0]
    shown = [k for k in ("cmfnet", "pce", "mr_only", "full") if (run_folder / f"{k}_predictions.npz").exists()]
    if not shown:
        return None
    loaded = load_for_evaluation(case.item(dense=True), dataset.num_classes)
    affine = loaded["image"].affine.numpy()
    ct, mr = loaded["image"][0].numpy(), loaded["image"][1].numpy()
    truth = loaded["label"][0].numpy()
    scribbles = np.asarray(nib.load(case.scribbles).dataobj)
    predictions = {k: np.load(run_folder / f"{k}_predictions.npz")[case.case_id] for k in shown}
    z_with = np.flatnonzero((truth > 0).any(axis=(0, 1)))
    slices = [int(z_with[int(q * (len(z_with) - 1))]) for q in (0.3, 0.55, 0.8)]
    colors = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6"]
    k = dataset.num_classes
    cmap = ListedColormap([(0, 0, 0, 0)] + [colors[i % len(colors)] for i in range(k)] + ["#ffe119"])
    columns = [
        ("CT", None),
        ("MR (resampled onto the CT grid)", None),
        ("scribbles", scribbles),
        *[(context["methods"].get(key, key), predictions[key]) for key in shown],
        ("truth", truth),
    ]
    fig, axes = plt.subplots(
        len(slices), len(columns), figsize=(2.2 * len(columns), 2.3 * len(slices) + 0.6), squeeze=False
    )
    for row, z in enumerate(slices):
        for col, (title, labels) in enumerate(columns):
            ax = axes[row][col]
            background = mr if col == 1 else ct
            limits = (-2, 3) if col == 1 else (-1, 1)
            ax.imshow(_radiological(background[:, :, z], affine), cmap="gray", vmin=limits[0], vmax=limits[1])
            if labels is not None:
                ax.imshow(
                    _radiological(labels[:, :, z], affine),
                    cmap=cmap,
                    vmin=-0.5,
                    vmax=k + 1.5,
                    alpha=0.9 if col == 2 else 0.5,
                    interpolation="nearest",
                )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=7)
        axes[row][0].set_ylabel(f"axial slice {z}", fontsize=7)
    handles = [Patch(color=colors[(i - 1) % len(colors)], label=n) for n, i in dataset.labels.items()]
    handles.append(Patch(color="#ffe119", label="background stroke"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.suptitle(f"{name}: case {case.case_id}, seed {context['overlay_seed']} (radiological view)", fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)
