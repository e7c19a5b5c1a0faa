"""Speed of what the server ships (benchmarks/README.md).

    python -m benchmarks.speed            # every part
    python -m benchmarks.speed --parts step,networks
    python -m benchmarks.speed --smoke    # seconds: the suite runs it

1. `infer`: the product's infer task on a 512 x 512 x 200 CT (0.98 x 0.98 x 2 mm) with its MR, with a
   model planned for that grid: seconds per stage (load and move to the working grid, network, back to
   the CT grid, write), as the task reports them.
2. `networks`: on that working grid, with the same sliding-window inferer (lib.inference), CmFNet against a
   MONAI SegResNet and a MONAI UNet of about its parameter count.
3. `step`: one optimisation step of lib.training.hybrid_step on the plan's patch: CmFNet with the full
   hybrid loss against the early-fusion UNet with partial cross-entropy only (median of `--repeats`
   steps each, the two alternating).
4. `server`: a real server. `POST /infer/cmfnet` on an uploaded 512 x 512 x 200 CT + MR pair, end to end;
   and `make serve`'s path on a fresh demo datastore: seconds from `/info` answering to the first
   automatically trained model, that model's Dice on a demo case without strokes, and the Dice of the
   model served 2 minutes after `/info` answered (a later one may have replaced the first by then).

Writes results/speed.{json,md} (and the demo server's log, speed_server.log) and the README's `speed` section.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.networks.nets import SegResNet, UNet

from benchmarks.common import (
    RESULTS,
    ROOT,
    Stopwatch,
    describe_machine,
    pick_device,
    write_results,
)
from benchmarks.server import running_server
from lib.data.demo import write_demo
from lib.inference import build_network, sliding_window_inferer
from lib.infers.cmfnet import CmFNetSegmentation
from lib.labels import DEMO_LABELS, IGNORE, LabelSet
from lib.losses.hybrid import HybridLoss
from lib.markdown import write_between_markers
from lib.model_files import publish_model
from lib.planning import make_plan
from lib.settings import LossWeights
from lib.training import hybrid_step, optimizer_for

PARTS = ("infer", "networks", "step", "server")
CT_512 = ((512, 512, 200), (0.98, 0.98, 2.0))
NUM_CLASSES = len(DEMO_LABELS) + 1
SERVED_AFTER_SECONDS = 120.0  # the demo's goal: a useful model within 2 minutes of start


def big_case(folder: Path, shape, spacing) -> Path:
    """A CT (int16 HU) and its MR on their own grids: smooth random anatomy-like blobs, for timing only."""
    rng = np.random.default_rng(0)
    coarse = rng.normal(size=tuple(max(2, n // 32) for n in shape)).astype(np.float32)
    field = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None, None], size=shape, mode="trilinear")[0, 0]
    ct = (field.numpy() * 300).astype(np.int16)
    affine = np.diag([*spacing, 1.0])
    (folder / "mr").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(ct, affine), folder / "big.nii.gz")
    mr_affine = affine.copy()
    mr_affine[:3, :3] *= 1.2
    mr_shape = tuple(int(n / 1.2) for n in shape)
    nib.save(nib.Nifti1Image(rng.random(mr_shape, dtype=np.float32) * 1000, mr_affine), folder / "mr" / "big.nii.gz")
    return folder / "big.nii.gz"


def plan_for(shape, spacing, device: torch.device, network: str = "cmfnet", preset: str = "small"):
    kind = "gpu" if device.type == "cuda" else "cpu"
    return make_plan([spacing], [shape], 2, NUM_CLASSES, kind, preset=preset, network=network)


def part_infer(work: Path, device: torch.device, preset: str) -> dict:
    image = big_case(work / "big", *CT_512)
    plan = plan_for(*CT_512, device, preset=preset)
    publish_model(build_network(plan), plan, work / "model.pt")
    task = CmFNetSegmentation(str(work / "model.pt"), LabelSet(DEMO_LABELS), ["ct", "mr"])
    task({"image": str(image), "device": device.type})  # loads the model and the writer (ITK: 3-4 s once)
    watch = Stopwatch(device)
    _, result = task({"image": str(image), "device": device.type})
    return {"plan": plan.describe(), "seconds": watch(), "latencies": result["latencies"]}


def part_networks(device: torch.device, repeats: int, preset: str) -> dict:
    plan = plan_for(*CT_512, device, preset=preset)
    working = tuple(round(n * s / t) for n, s, t in zip(*CT_512, plan.spacing, strict=True))
    cmfnet = build_network(plan)
    count = sum(p.numel() for p in cmfnet.parameters())
    networks = {
        "cmfnet": cmfnet,
        "segresnet": _closest(lambda w: SegResNet(3, w, 2, NUM_CLASSES), range(8, 65, 8), count),
        "unet": _closest(lambda w: _unet(w, plan.strides), range(4, 65, 2), count),
    }
    image = torch.randn(1, 2, *working, device=device)
    present = torch.ones(1, 2, dtype=torch.bool, device=device)
    inferer = sliding_window_inferer(plan, device)
    results = {}
    for name, network in networks.items():
        network.to(device).eval()

        def forward(network=network, name=name):
            with torch.no_grad():
                kwargs = {"present": present} if name == "cmfnet" else {}
                inferer(image, network, **kwargs)

        forward()
        times = []
        for _ in range(repeats):
            watch = Stopwatch(device)
            forward()
            times.append(watch())
        results[name] = {"parameters": sum(p.numel() for p in network.parameters()), "seconds": min(times)}
    return {"working_grid": working, "plan": plan.describe(), "networks": results}


def _unet(width: int, strides) -> UNet:
    """A plain MONAI UNet with the plan's strides (so it takes the same windows)."""
    channels = tuple(width * 2**i for i in range(len(strides) + 1))
    return UNet(3, 2, NUM_CLASSES, channels, strides, num_res_units=2)


def _closest(build, widths, target: int):
    return min((build(w) for w in widths), key=lambda n: abs(sum(p.numel() for p in n.parameters()) - target))


def part_step(device: torch.device, repeats: int, preset: str) -> dict:
    real_scan = ((122, 101, 112), (3.0, 3.0, 3.0))  # the real abdominal CT at its working spacing
    plan = plan_for(*real_scan, device, preset=preset)
    batch = _batch(plan.patch_size, 2)
    runs = {}
    for name, network, weights in (
        ("cmfnet_hybrid", "cmfnet", LossWeights()),
        ("unet_pce", "unet", LossWeights(pseudo=0, affinity=0, consistency=0, alignment=0)),
    ):
        model = build_network(plan if network == "cmfnet" else plan_for(*real_scan, device, "unet", preset))
        model.to(device)
        optimizer = optimizer_for(model, 1e-3)
        runs[name] = (model, optimizer, HybridLoss(weights), [])
    # the two networks' steps alternate, so a shared machine's slower moments fall on both alike
    for round_ in range(repeats + 1):  # round 0 warms up
        for model, optimizer, loss, times in runs.values():
            watch = Stopwatch(device)
            hybrid_step(model, optimizer, loss, batch, 1000, 0.0, device, plan.spacing)
            if round_:
                times.append(watch())
    results = {
        name: {"seconds": statistics.median(times), "parameters": sum(p.numel() for p in model.parameters())}
        for name, (model, _, _, times) in runs.items()
    }
    results["ratio"] = results["cmfnet_hybrid"]["seconds"] / results["unet_pce"]["seconds"]
    return {"patch": plan.patch_size, "batch": 2, **results}


def _batch(patch, size: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    label = torch.full((size, 1, *patch), IGNORE)
    label[:, :, ::7, ::7, ::3] = torch.randint(0, NUM_CLASSES, label[:, :, ::7, ::7, ::3].shape, generator=generator)
    return {
        "image": torch.randn(size, 2, *patch, generator=generator),
        "label": label,
        "pseudo": torch.randint(0, NUM_CLASSES, (size, 1, *patch), generator=generator),
        "confidence": torch.rand(size, 1, *patch, generator=generator),
        "present": torch.ones(size, 2, dtype=torch.bool),
        "dense": torch.zeros(size, dtype=torch.bool),
    }


def part_server(work: Path, smoke: bool, out: Path) -> dict:
    """`out` keeps the demo server's log (speed_server.log): why a first model came late."""
    results = {}
    studies = work / "upload" / "studies"
    studies.mkdir(parents=True)
    with running_server(work / "upload", studies, {"auto_train": "false"}) as server:
        image = (
            big_case(work / "big_upload", *CT_512)
            if not smoke
            else big_case(work / "big_upload", (64, 64, 32), (3, 3, 3))
        )
        plan = plan_for(*((CT_512) if not smoke else ((64, 64, 32), (3.0, 3.0, 3.0))), torch.device("cpu"))
        publish_model(build_network(plan), plan, server.model_file)
        for path, params in ((image, {}), (image.parent / "mr" / image.name, {"modality": "mr"})):
            with open(path, "rb") as f:
                response = server.http.put(
                    "/datastore/image", params={"image": "big"}, data={"params": json.dumps(params)}, files={"file": f}
                )
            response.raise_for_status()
        server.http.post("/infer/cmfnet?image=big&output=json").raise_for_status()  # loads the model
        watch = Stopwatch()
        response = server.http.post("/infer/cmfnet?image=big&output=image")
        response.raise_for_status()
        results["infer_512_seconds"] = watch()
        label = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
        results["infer_512_on_ct_grid"] = label.shape == nib.load(image).shape
    demo = work / "demo"
    write_demo(demo, cases=8 if not smoke else 3, scribbled=4 if not smoke else 2, final=0, seed=0)
    conf = {} if not smoke else {"auto_train_minutes": "0.3"}
    with running_server(work / "demo_server", demo / "studies", conf) as server:
        watch = Stopwatch()
        while not server.model_file.exists() and watch() < 600:
            time.sleep(0.5)
        results["first_model_seconds"] = watch()
        # which step it is and how long a step took: what tells fewer steps from a faster machine (the run
        # writes its stats just after the model)
        while (stats := server.http.get("/info/").json()["train_stats"]["cmfnet"]).get("held_back", True) and (
            watch() < 600
        ):
            time.sleep(0.2)
        results["first_model_step"] = stats["best_step"]
        results["seconds_per_step"] = stats["seconds_per_step"]
        case = "case_007" if not smoke else "case_002"
        truth = np.asarray(nib.load(demo / "truth" / f"{case}.nii.gz").dataobj)
        results["first_model_dice"] = _dice(np.asarray(server.infer_label(case).dataobj), truth)
        results["first_model_case"] = case
        # what a user sees two minutes after start: the model served then (a later one may have replaced the first)
        time.sleep(max(0.0, (SERVED_AFTER_SECONDS if not smoke else 0.0) - watch()))
        results["served_at_2_minutes_dice"] = _dice(np.asarray(server.infer_label(case).dataobj), truth)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(server.log, out / "speed_server.log")
    return results


def _dice(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {
        name: float(2 * ((predicted == i) & (truth == i)).sum() / max((predicted == i).sum() + (truth == i).sum(), 1))
        for name, i in DEMO_LABELS.items()
    }


def markdown(results: dict) -> str:
    lines = [f"Command: `{results['command']}` on {results['machine']}.", ""]
    if "infer" in results:
        r = results["infer"]
        lat = r["latencies"]
        lines += [
            f"**Inference task** on a 512x512x200 CT + MR pair ({r['plan']}): {r['seconds']:.1f} s "
            f"(load and move to the working grid {lat['pre']:.1f} s, network {lat['infer']:.1f} s, back to the "
            f"CT grid {lat['post']:.1f} s, write {lat['write']:.1f} s).",
            "",
        ]
    if "networks" in results:
        r = results["networks"]
        base = r["networks"]["cmfnet"]["seconds"]
        lines += [
            f"**Networks** on the same working grid {'x'.join(map(str, r['working_grid']))} and sliding window:",
            "",
            "| network | parameters | seconds | x CmFNet |",
            "|---|---|---|---|",
        ]
        for name, v in r["networks"].items():
            lines.append(f"| {name} | {v['parameters'] / 1e6:.2f} M | {v['seconds']:.2f} | {v['seconds'] / base:.2f} |")
        lines.append("")
    if "step" in results:
        r = results["step"]
        lines += [
            f"**Training step** (lib.training.hybrid_step, patch {'x'.join(map(str, r['patch']))} x {r['batch']}): "
            f"CmFNet with the hybrid loss {r['cmfnet_hybrid']['seconds']:.2f} s, early-fusion UNet with partial CE "
            f"{r['unet_pce']['seconds']:.2f} s: **{r['ratio']:.2f}x**.",
            "",
        ]
    if "server" in results:
        r = results["server"]
        dice = ", ".join(f"{k} {v:.2f}" for k, v in r["first_model_dice"].items())
        served = ", ".join(f"{k} {v:.2f}" for k, v in r.get("served_at_2_minutes_dice", {}).items())
        lines += [
            f"**Server**: `POST /infer/cmfnet` on an uploaded 512x512x200 CT + MR pair, end to end: "
            f"{r['infer_512_seconds']:.1f} s (result on the CT grid: {r['infer_512_on_ct_grid']}). Demo datastore "
            f"with default settings: first automatic model {r['first_model_seconds']:.0f} s after `/info` answered "
            f"(step {r['first_model_step']}, {r['seconds_per_step']:.2f} s a step); its Dice on "
            f"{r['first_model_case']} (no strokes): {dice}."
            + (f" The model served 2 minutes after `/info`: {served}." if served else ""),
            "",
        ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help="the step part only, once")
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--preset", default="small", choices=["small", "large"], help="the network's widths")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for speed.{json,md}")
    args = parser.parse_args(argv)
    argv = argv if argv is not None else sys.argv[1:]
    parts = ["step"] if args.smoke else [p for p in args.parts.split(",") if p]
    device = pick_device(args.device)
    results = {"machine": describe_machine(device), "command": "python -m benchmarks.speed " + " ".join(argv)}
    repeats = 1 if args.smoke else args.repeats
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for part in parts:
            print(f"speed: {part} ...", flush=True)
            if part == "infer":
                results[part] = part_infer(work, device, args.preset)
            elif part == "networks":
                results[part] = part_networks(device, repeats, args.preset)
            elif part == "step":
                results[part] = part_step(device, repeats, args.preset)
            elif part == "server":
                results[part] = part_server(work, args.smoke, args.out)
    text = markdown(results)
    write_results("speed_smoke" if args.smoke else "speed", results, text, args.out)
    if not args.smoke and not args.no_readme:
        write_between_markers(ROOT / "README.md", "speed", text)
    print(text)
    return results


if __name__ == "__main__":
    main()
