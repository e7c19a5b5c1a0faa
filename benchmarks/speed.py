"""Speed and memory benchmark (issue 5).

    python -m benchmarks.speed                  # --preset cpu (device auto: cuda when available)
    python -m benchmarks.speed --preset gpu     # CmFNet `large` against matched MONAI networks

1. Inference: sliding-window inference as the server runs it (window 96x96x48, overlap 0.25, gaussian,
   then argmax) on volumes of the demo size (96x96x48), 256x256x128 and 512x512x200 (CT + MR channels),
   for CmFNet and, in the same run, a MONAI SegResNet and a MONAI UNet whose widths are chosen to match
   CmFNet's parameter count (benchmarks.common); seconds per volume and peak memory, with ratios to CmFNet.
2. Training: iterations per second of `lib.training.hybrid_step` at the train task's default patch
   (64x64x32, 4 samples per step): CmFNet with the hybrid loss and with pCE only, and the two MONAI
   networks with pCE.
3. The real server with default settings (`monailabel start_server` on a generated demo datastore
   without annotations): latency of a scribbles request sent as 3D Slicer sends it, before any model
   and once a model exists, and the time from that first scribbles request until the auto-retrained
   model is published and until an inference request is answered by it.

Memory: on CPU every configuration runs in a fresh subprocess and reports its peak resident set size
(getrusage max RSS) and the increase over its RSS just before the measured work; on GPU
torch.cuda.max_memory_allocated. Writes results/speed.{json,md} and the README's `speed` section.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (
    RESULTS,
    ROOT,
    SingleStream,
    describe_machine,
    matched_segresnet,
    matched_unet,
    parameter_count,
    pick_device,
    set_threads,
    timed,
    write_between_markers,
)

logger = logging.getLogger("benchmarks.speed")

NUM_CLASSES = 5  # background + the demo's four classes
# the smoke test's server: retrain 1 s after strokes, one epoch on small patches
SMOKE_SERVER = {"auto_train_delay": "1", "auto_train_epochs": "1", "patch_size": "32,32,16", "roi_size": "48,48,24"}
MODALITIES = 2
SIZES = {"demo": (96, 96, 48), "256": (256, 256, 128), "512": (512, 512, 200)}
PRESETS = {
    # network preset, volumes, inference repeats, train patch, samples, train steps, server conf
    "cpu": {
        "network": "small",
        "sizes": ["demo", "256", "512"],
        "repeats": 1,
        "patch": (64, 64, 32),
        "samples": 4,
        "steps": 3,
        "server": {},
        "threads": None,
    },
    "gpu": {
        "network": "large",
        "sizes": ["demo", "256", "512"],
        "repeats": 3,
        "patch": (64, 64, 32),
        "samples": 4,
        "steps": 20,
        "server": {},
        "threads": None,
    },
    "smoke": {
        "network": "small",
        "sizes": ["tiny"],
        "repeats": 1,
        "patch": (16, 16, 8),
        "samples": 1,
        "steps": 1,
        "server": SMOKE_SERVER,
        "threads": 1,
        "in_process": True,
    },
}
ROI = (96, 96, 48)  # the server's default sliding window (lib/configs/cmfnet.py)
SMOKE_ROI = (16, 16, 8)


def build(model: str, network: str) -> torch.nn.Module:
    from lib.networks.cmfnet import build_cmfnet

    cmfnet = build_cmfnet(network, MODALITIES, NUM_CLASSES)
    if model == "cmfnet":
        return cmfnet
    depth = len(cmfnet.channels)
    if model == "unet":
        return SingleStream(matched_unet(parameter_count(cmfnet), MODALITIES, NUM_CLASSES, depth=depth))
    if model == "segresnet":
        return SingleStream(matched_segresnet(parameter_count(cmfnet), MODALITIES, NUM_CLASSES))
    raise ValueError(model)


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---- worker: one configuration in this process --------------------------------------------------------


def run_inference(config: dict, device: torch.device) -> dict:
    from monai.inferers import SlidingWindowInferer

    network = build(config["model"], config["network"]).to(device).eval()
    roi = tuple(config["roi"])
    inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=1, overlap=0.25, mode="gaussian")
    present = torch.ones(1, MODALITIES, dtype=torch.bool, device=device)

    def infer(volume):
        with torch.no_grad():
            return inferer(volume, network, present=present).argmax(1).to(torch.uint8)

    with torch.no_grad():  # warm-up on a small input: it must not set the peak the measured work is compared to
        network(torch.randn(1, MODALITIES, 16, 16, 16, device=device), present=present)
    generator = torch.Generator().manual_seed(0)
    volume = torch.randn(1, MODALITIES, *config["size"], generator=generator).to(device)
    baseline = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = [timed(lambda: infer(volume), device)[1] for _ in range(config["repeats"])]
    return {
        "seconds": float(np.median(seconds)),
        "parameters": parameter_count(network),
        **_memory(device, baseline),
    }


def run_training(config: dict, device: torch.device) -> dict:
    from monai.data import MetaTensor

    from lib.losses.hybrid import HybridLoss, HybridLossWeights
    from lib.training import hybrid_step

    network = build(config["model"], config["network"]).to(device)
    weights = (
        HybridLossWeights() if config["loss"] == "hybrid" else HybridLossWeights(affinity=0, consistency=0, alignment=0)
    )
    loss = HybridLoss(weights)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    b, patch = config["samples"], tuple(config["patch"])
    generator = torch.Generator().manual_seed(0)
    affine = torch.diag(torch.tensor([3.5, 3.5, 5.0, 1.0], dtype=torch.float64))
    target = torch.randint(0, NUM_CLASSES, (b, 1, *patch), generator=generator)
    target[torch.rand(target.shape, generator=generator) > 0.01] = -1  # ~1 % annotated, like scribbles
    batch = {
        "image": MetaTensor(torch.randn(b, MODALITIES, *patch, generator=generator), affine=affine),
        "label": target,
        "present": torch.ones(b, MODALITIES, dtype=torch.bool),
        "dense": torch.zeros(b, dtype=torch.bool),
        "valid": torch.ones(b, MODALITIES, *patch),
    }
    step = 1000  # past the ramp-up: every regularizer at full weight

    def one():
        return hybrid_step(network, optimizer, loss, batch, step, 0.2, device)

    one()  # warm-up
    baseline = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _, seconds = timed(lambda: [one() for _ in range(config["steps"])], device)
    return {
        "iterations_per_second": config["steps"] / seconds,
        "seconds_per_iteration": seconds / config["steps"],
        "parameters": parameter_count(network),
        **_memory(device, baseline),
    }


def _memory(device: torch.device, baseline_mb: float) -> dict:
    if device.type == "cuda":
        return {"peak_mb": torch.cuda.max_memory_allocated(device) / 2**20, "memory_kind": "cuda max allocated"}
    peak = _peak_rss_mb()
    return {"peak_mb": peak, "increase_mb": max(peak - baseline_mb, 0.0), "memory_kind": "process max RSS"}


def worker(config: dict) -> dict:
    set_threads(config.get("threads"))
    device = pick_device(config["device"])
    return run_inference(config, device) if config["kind"] == "infer" else run_training(config, device)


def in_subprocess(config: dict, timeout: float, in_process: bool = False) -> dict:
    """Run one configuration in a fresh Python process (so its peak memory is its own); `in_process` runs it
    here instead (the smoke test: seconds, but the memory figures then include what ran before)."""
    if in_process:
        return worker(config)
    command = [sys.executable, "-m", "benchmarks.speed", "--worker", json.dumps(config)]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


# ---- the real server ---------------------------------------------------------------------------------


def server_timings(conf: dict, device: torch.device, timeout: float = 1800) -> dict:
    """Scribbles latency and scribbles-to-new-model time through `monailabel start_server`."""
    import httpx
    import nibabel as nib
    from monai.transforms import LoadImage
    from monailabel.client import MONAILabelClient
    from monailabel.transform.writer import write_itk

    from lib.data.demo import write_demo
    from lib.data.phantoms import DEMO_LABELS
    from lib.data.scribbles import simulate_scribbles
    from tests.conftest import running_server

    case, other = "case_000", "case_001"
    k = len(DEMO_LABELS)
    results: dict = {"conf": conf or "defaults"}
    with tempfile.TemporaryDirectory(prefix="cmfnet-speed-") as folder:
        tmp = Path(folder)
        write_demo(tmp / "demo", cases=3, scribbled=0, final=0, seed=0)  # no annotations, no model
        studies = tmp / "demo" / "studies"
        start = time.perf_counter()
        with running_server(tmp, studies, dict(conf)) as server:
            results["server_start_seconds"] = time.perf_counter() - start
            truth = np.asarray(nib.load(tmp / "demo" / "truth" / f"{case}.nii.gz").dataobj)
            ct = nib.load(studies / f"{case}.nii.gz")
            client = MONAILabelClient(server.url, tmpdir=folder)

            def scribbles_request(seed: int) -> tuple[float, dict]:
                """Strokes exported as Slicer does (one labelmap, positional ids) and sent with label_info."""
                strokes = simulate_scribbles(truth, k, seed=seed)
                labelmap = np.zeros(ct.shape, np.uint8)
                labelmap[strokes == k + 1] = 1
                labelmap[strokes == DEMO_LABELS["liver"]] = 2
                path = str(tmp / f"strokes_{seed}.nrrd")
                write_itk(labelmap, path, ct.affine, np.uint8, compress=True)
                params = {
                    "label_info": [
                        {"name": "background_scribbles", "id": 1},
                        {"name": "foreground_scribbles", "id": 2},
                    ],
                    "selected_label_name": "liver",
                    "roi": [],
                    "result_extension": ".nrrd",
                    "result_dtype": "uint8",
                }
                begin = time.perf_counter()
                result_file, result = client.infer("cmfnet_scribbles", case, params, label_in=path)
                seconds = time.perf_counter() - begin
                LoadImage(image_only=True)(result_file)  # the answer is a readable label volume
                return seconds, result

            results["scribbles_latency_no_model_seconds"], first = scribbles_request(seed=1)
            sent = time.perf_counter() - results["scribbles_latency_no_model_seconds"]
            results["first_request_model_used"] = first.get("model_used")
            deadline = time.monotonic() + timeout
            while not server.model_file.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("no model published after the scribbles request")
                time.sleep(0.5)
            results["scribbles_to_published_model_seconds"] = time.perf_counter() - sent
            while True:
                response = server.http.post(f"/infer/cmfnet?image={other}&output=json")
                if response.status_code == 200:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the published model was not served: {response.status_code} {response.text}")
                time.sleep(0.5)
            results["scribbles_to_model_in_use_seconds"] = time.perf_counter() - sent
            # the run goes on (it publishes its best model after every epoch): wait for its end
            while any(t.get("status") in ("SUBMITTED", "RUNNING") for t in _train_tasks(server)):
                if time.monotonic() > deadline:
                    raise TimeoutError("the training run did not finish")
                time.sleep(0.5)
            results["scribbles_to_training_done_seconds"] = time.perf_counter() - sent
            begin = time.perf_counter()
            response = server.http.post(f"/infer/cmfnet?image={other}&output=image")
            results["infer_latency_seconds"] = time.perf_counter() - begin
            assert response.status_code == 200, response.text
            results["scribbles_latency_with_model_seconds"], second = scribbles_request(seed=2)
            results["second_request_model_used"] = second.get("model_used")
            tasks = _train_tasks(server)
            results["training_runs"] = len(tasks)
            # stop the retraining the second request triggered before the server goes down
            with_runs = [t for t in tasks if t.get("status") in ("SUBMITTED", "RUNNING")]
            if with_runs:
                with contextlib.suppress(httpx.HTTPError):
                    server.http.delete("/train/")
    results["server_device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return results


def _train_tasks(server) -> list[dict]:
    response = server.http.get("/train/", params={"all": True})
    return response.json() if response.status_code == 200 else []


# ---- report ---------------------------------------------------------------------------------------


def _fmt(value, digits=2, unit=""):
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def _conf_text(conf) -> str:
    if not conf or conf == "defaults":
        return "default settings"
    return " ".join(f"--conf {k} {v}" for k, v in conf.items())


def markdown(results: dict, readme: bool) -> str:
    lines = []
    head = (
        f"Command: `{results['command']}` (wall time {results['wall_seconds'] / 60:.1f} min on {results['machine']})."
    )
    lines += [head if readme else f"# Speed and memory\n\n{head}", ""]
    memory = (
        "peak GPU memory allocated"
        if results["device"] == "cuda"
        else "peak process RSS (increase over the RSS before the measured work)"
    )  # noqa: E501
    lines += [
        f"Inference (sliding window {'x'.join(map(str, results['roi']))}, overlap 0.25, as the server runs it); "
        f"memory: {memory}.",
        "",
    ]
    params = results["parameters"]
    header = "| volume | model | parameters | seconds | x CmFNet time | memory (MB) | x CmFNet memory |"
    lines += [header, "|---|---|---|---|---|---|---|"]
    for row in results["inference"]:
        if "error" in row:
            lines.append(
                f"| {row['size_name']} | {row['model']} | {params.get(row['model'], 0) / 1e6:.2f} M | "
                f"{row['error']} | | | |"
            )
            continue
        memory_cell = f"{row['peak_mb']:.0f}" + (f" (+{row['increase_mb']:.0f})" if "increase_mb" in row else "")
        lines.append(
            f"| {'x'.join(map(str, row['size']))} | {row['model']} | {row['parameters'] / 1e6:.2f} M | "
            f"{row['seconds']:.2f} | {_fmt(row.get('time_ratio'), 2, 'x')} | {memory_cell} | "
            f"{_fmt(row.get('memory_ratio'), 2, 'x')} |"
        )
    lines += [
        "",
        f"Training (`lib.training.hybrid_step`, patch {'x'.join(map(str, results['patch']))} x "
        f"{results['samples']} samples per step):",
        "",
    ]
    lines += ["| model | loss | iterations/s | s/iteration | memory (MB) |", "|---|---|---|---|---|"]
    for row in results["training"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['loss']} | {row['error']} | | |")
            continue
        memory_cell = f"{row['peak_mb']:.0f}" + (f" (+{row['increase_mb']:.0f})" if "increase_mb" in row else "")
        lines.append(
            f"| {row['model']} | {row['loss']} | {row['iterations_per_second']:.3f} | "
            f"{row['seconds_per_iteration']:.2f} | {memory_cell} |"
        )
    server = results.get("server")
    if server:
        lines += [
            "",
            f"Real server (`monailabel start_server`, {_conf_text(server['conf'])}; the defaults retrain 5 s after new "
            "strokes, 10 epochs per run) on a demo datastore of 3 cases without annotations or model; the "
            "scribbles request is sent as 3D Slicer sends it (liver and background strokes on one case):",
            "",
        ]
        if "error" in server:
            lines.append(f"Server measurement failed: {server['error']}")
        else:
            rows = [
                ("server start (until /info answers)", server["server_start_seconds"]),
                (
                    "scribbles request, no model yet (graph cut on strokes + CT + MR)",
                    server["scribbles_latency_no_model_seconds"],
                ),
                ("scribbles request with a model (CmFNet + graph cut)", server["scribbles_latency_with_model_seconds"]),
                ("auto-segmentation request (/infer/cmfnet)", server["infer_latency_seconds"]),
                (
                    "first scribbles -> first retrained model published (best model after the run's first epoch)",
                    server["scribbles_to_published_model_seconds"],
                ),
                (
                    "first scribbles -> an inference answered by the new model",
                    server["scribbles_to_model_in_use_seconds"],
                ),
                (
                    "first scribbles -> the whole retraining run finished",
                    server.get("scribbles_to_training_done_seconds", float("nan")),
                ),
            ]
            lines += ["| step | seconds |", "|---|---|"] + [f"| {name} | {value:.1f} |" for name, value in rows]
    elif results.get("server_skipped"):
        lines += ["", f"Real server: skipped ({results['server_skipped']})."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    parser.add_argument("--sizes", help="comma-separated volumes: demo, 256, 512 (default: the preset's)")
    parser.add_argument("--no-server", action="store_true", help="skip the real-server measurements")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per configuration")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    start = time.perf_counter()
    preset = PRESETS[args.preset]
    device = pick_device(args.device)
    set_threads(preset["threads"])
    smoke = args.preset == "smoke"
    roi = SMOKE_ROI if smoke else ROI
    sizes = args.sizes.split(",") if args.sizes else preset["sizes"]
    shapes = {**SIZES, "tiny": (32, 32, 16)}
    base = {"device": str(device), "network": preset["network"], "threads": preset["threads"], "roi": roi}
    results: dict = {
        "command": "python -m benchmarks.speed" + (f" --preset {args.preset}" if args.preset != "cpu" else ""),
        "machine": describe_machine(device),
        "device": device.type,
        "roi": roi,
        "patch": preset["patch"],
        "samples": preset["samples"],
        "parameters": {m: parameter_count(build(m, preset["network"])) for m in ("cmfnet", "segresnet", "unet")},
        "inference": [],
        "training": [],
    }
    for size_name in sizes:
        rows = []
        for model in ("cmfnet", "segresnet", "unet"):
            config = {**base, "kind": "infer", "model": model, "size": shapes[size_name], "repeats": preset["repeats"]}
            row = {
                "size_name": size_name,
                "size": shapes[size_name],
                "model": model,
                **in_subprocess(config, args.timeout),
            }
            logger.info(f"inference {size_name} {model}: {row}")
            rows.append(row)
        reference = rows[0]
        for row in rows:
            if "error" not in row and "error" not in reference:
                row["time_ratio"] = row["seconds"] / reference["seconds"]
                # CPU: the working memory (RSS increase) of the inference; GPU: peak allocated
                memory = "increase_mb" if "increase_mb" in row else "peak_mb"
                row["memory_ratio"] = row[memory] / max(reference[memory], 1e-6)
        results["inference"] += rows
    for model, loss in (("cmfnet", "hybrid"), ("cmfnet", "pCE"), ("segresnet", "pCE"), ("unet", "pCE")):
        config = {
            **base,
            "kind": "train",
            "model": model,
            "loss": loss,
            "patch": preset["patch"],
            "samples": preset["samples"],
            "steps": preset["steps"],
        }
        row = {"model": model, "loss": loss, **in_subprocess(config, args.timeout, preset.get("in_process", False))}
        logger.info(f"training {model} {loss}: {row}")
        results["training"].append(row)
    if preset["server"] is None or args.no_server:
        results["server_skipped"] = "--no-server" if args.no_server else f"not part of --preset {args.preset}"
    else:
        try:
            results["server"] = server_timings(preset["server"], device, args.timeout)
        except Exception as e:  # report what failed rather than losing the other measurements
            logger.exception("server measurement failed")
            results["server"] = {"conf": preset["server"] or "defaults", "error": f"{type(e).__name__}: {e}"}
        logger.info(f"server: {results['server']}")
    results["wall_seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(results, indent=1))
    text = markdown(results, readme=False)
    (args.out / "speed.md").write_text(text + "\n")
    if not args.no_readme and not smoke:
        if write_between_markers(args.readme, "speed", markdown(results, readme=True)):
            logger.info(f"README tables updated: {args.readme}")
        else:
            logger.warning(f"no speed markers in {args.readme}: README not updated")
    print(text)
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
