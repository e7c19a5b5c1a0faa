"""Load benchmark: REST latency with 1, 4 and 8 concurrent inference clients, with and without training.

Command (from the repository root): `python -m benchmarks.load` (`--help` for options).

It starts the real server (`monailabel start_server`, default settings but `auto_train false`) on a
demo datastore with a published model (an untrained CmFNet: inference costs the same as a trained
one). For each number of clients, that many threads each send `--requests` `POST /infer/cmfnet`
(JSON output) back to back, while one more client reads `GET /info/` and `GET /datastore/?output=all`
every 0.25 s. Then the same with a training run going (`POST /train/cmfnet`, stopped afterwards).
It reports p50/p95 latency of each and writes results/load.md and results/load.json.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch

from benchmarks.common import RESULTS, describe_machine

READ_INTERVAL = 0.25


def percentiles(seconds: list[float]) -> dict:
    return {
        "n": len(seconds),
        "p50": float(np.percentile(seconds, 50)),
        "p95": float(np.percentile(seconds, 95)),
        "max": float(max(seconds)),
    }


def run_phase(url: str, clients: int, requests_per_client: int, images: list[str]) -> dict:
    """Latencies of `clients` concurrent inference clients and of the reads made meanwhile."""
    done = threading.Event()
    reads: dict[str, list[float]] = {"info": [], "datastore": []}

    def timed(http: httpx.Client, method: str, path: str) -> float:
        start = time.monotonic()
        response = http.request(method, path)
        response.raise_for_status()
        return time.monotonic() - start

    def infer_client(index: int) -> list[float]:
        with httpx.Client(base_url=url, timeout=1800) as http:
            return [
                timed(http, "POST", f"/infer/cmfnet?image={images[(index + i) % len(images)]}&output=json")
                for i in range(requests_per_client)
            ]

    def reader() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while not done.is_set():
                reads["info"].append(timed(http, "GET", "/info/"))
                reads["datastore"].append(timed(http, "GET", "/datastore/?output=all"))
                done.wait(READ_INTERVAL)

    read_thread = threading.Thread(target=reader)
    start = time.monotonic()
    read_thread.start()
    with ThreadPoolExecutor(clients) as pool:
        inferences = [seconds for result in pool.map(infer_client, range(clients)) for seconds in result]
    wall = time.monotonic() - start
    done.set()
    read_thread.join()
    return {
        "clients": clients,
        "load_average": os.getloadavg()[0],  # the whole machine's, over the last minute
        "wall_s": wall,
        "infer_per_minute": 60 * len(inferences) / wall,
        "infer": percentiles(inferences),
        "info": percentiles(reads["info"]),
        "datastore": percentiles(reads["datastore"]),
    }


def training_running(http: httpx.Client) -> bool:
    return http.get("/train/", params={"check_if_running": True}).status_code == 200


def markdown(results: dict) -> str:
    lines = [
        f"Command: `{' '.join(['python -m benchmarks.load', *results['args']])}` on {results['machine']}; "
        f"server: {results['server']}. Latency in seconds (p50 / p95, max for the reads); the reads are "
        f"`GET /info/` and `GET /datastore/?output=all`, sent every {READ_INTERVAL} s while the inferences run. "
        "Load: the machine's 1-minute load average at the end of each phase (other work on it included).",
        "",
        "| training run | clients | /infer p50 | /infer p95 | inferences / min | /info p50 | /info p95 | /info max "
        "| datastore p50 | datastore p95 | datastore max | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in results["phases"]:
        i, info, ds = phase["infer"], phase["info"], phase["datastore"]
        training = {True: "going", False: "none"}[phase["training"]]
        if phase["training"] and not phase["training_still_running"]:
            training = "ended during the phase"
        lines.append(
            f"| {training} | {phase['clients']} | {i['p50']:.2f} | {i['p95']:.2f} | {phase['infer_per_minute']:.1f} "
            f"| {info['p50']:.3f} | {info['p95']:.3f} | {info['max']:.3f} "
            f"| {ds['p50']:.3f} | {ds['p95']:.3f} | {ds['max']:.3f} | {phase['load_average']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    from benchmarks.server import publish_untrained_model, running_server
    from lib.data.demo import write_demo

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,4,8", help="numbers of concurrent inference clients")
    parser.add_argument("--requests", type=int, default=2, help="inference requests per client")
    parser.add_argument("--cases", type=int, default=8, help="demo cases in the datastore")
    parser.add_argument("--no-training", action="store_true", help="skip the phases with a training run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for load.md and load.json")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]

    results = {
        "args": argv,
        "machine": f"{describe_machine(torch.device('cpu'))}, load average {os.getloadavg()[0]:.1f} at start",
        "server": "monailabel start_server, 1 model worker, 16 waiting places, CPU inference",
        "phases": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        write_demo(tmp / "demo", cases=args.cases, scribbled=args.cases, final=0, seed=0)
        images = [f"case_{i:03d}" for i in range(args.cases)]
        with running_server(tmp, tmp / "demo" / "studies", {"auto_train": "false"}) as server:
            publish_untrained_model(server)
            server.http.post(f"/infer/cmfnet?image={images[0]}&output=json").raise_for_status()  # model loaded
            for training in [False] if args.no_training else [False, True]:
                if training:
                    # a run longer than the phases (stopped below); a run is bounded by steps and minutes
                    long_run = {"max_steps": 10_000_000, "max_minutes": 60}
                    server.http.post("/train/cmfnet", json=long_run).raise_for_status()
                    while not training_running(server.http):
                        time.sleep(0.5)
                for count in clients:
                    phase = run_phase(server.url, count, args.requests, images)
                    phase["training"] = training
                    phase["training_still_running"] = training and training_running(server.http)
                    results["phases"].append(phase)
                    print(json.dumps(phase), flush=True)
                if training:
                    server.http.delete("/train/")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(results, indent=1))
    (args.out / "load.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
