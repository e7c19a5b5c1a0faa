"""Model work off the event loop, through a real server: reads stay fast while inferences run,
and a full queue is refused at once with 503 and Retry-After (nothing stored)."""

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import nibabel as nib
import numpy as np
import pytest

from benchmarks.load import run_phase
from tests.conftest import copy_of_demo, publish_untrained_model, running_server

CASES = ["case_000", "case_001", "case_002"]


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    studies = copy_of_demo(demo, tmp_path_factory.mktemp("load"))
    with running_server(studies.parent, studies, {"auto_train": "false"}) as server:
        publish_untrained_model(server)
        yield server


@pytest.fixture(scope="module")
def small_queue_server(demo, tmp_path_factory):
    """One model worker and one waiting place."""
    studies = copy_of_demo(demo, tmp_path_factory.mktemp("small_queue"))
    conf = {"auto_train": "false", "infer_workers": "1", "infer_queue": "1"}
    with running_server(studies.parent, studies, conf) as server:
        publish_untrained_model(server)
        yield server


def infer(server, image_id: str) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=600) as http:
        return http.post(f"/infer/cmfnet?image={image_id}&output=json")


def timed_get(http: httpx.Client, url: str, **params) -> float:
    start = time.monotonic()
    response = http.get(url, params=params)
    assert response.status_code == 200, response.text
    return time.monotonic() - start


def test_info_and_datastore_reads_answer_within_a_second_while_8_inferences_run(server):
    infer(server, "case_000")  # the model loaded once, as on a server in use
    with ThreadPoolExecutor(8) as clients:
        inferences = [clients.submit(infer, server, CASES[i % 3]) for i in range(8)]
        latencies = []
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not all(f.done() for f in inferences):
                latencies.append(timed_get(http, "/info/"))
                latencies.append(timed_get(http, "/datastore/", output="all"))
                latencies.append(timed_get(http, "/datastore/image", image="case_001"))
                time.sleep(0.2)
        assert all(f.result().status_code == 200 for f in inferences)
    assert len(latencies) >= 30, "the reads ran while the inferences did"
    assert max(latencies) < 1.0, f"slowest read {max(latencies):.2f} s; p95 {np.percentile(latencies, 95):.2f} s"


def test_full_queue_is_503_with_retry_after_and_stores_nothing(small_queue_server, tmp_path):
    server = small_queue_server
    stored = server.studies / "labels" / "scribbles" / "case_000.nii.gz"
    before = hashlib.sha256(stored.read_bytes()).hexdigest()
    ct = nib.load(server.studies / "case_000.nii.gz")
    strokes = np.zeros(ct.shape, np.uint8)
    strokes[10:20, 30, 20] = 1
    nib.save(nib.Nifti1Image(strokes, ct.affine), tmp_path / "strokes.nii.gz")

    with ThreadPoolExecutor(2) as clients:
        busy = [clients.submit(infer, server, image_id) for image_id in ("case_001", "case_002")]
        deadline = time.monotonic() + 60
        while server.http.get("/info/").json()["model_workers"]["in_flight"] < 2:  # one running, one waiting
            assert time.monotonic() < deadline, "the two inferences did not arrive"
            time.sleep(0.05)
        params = {"label_info": [{"name": "foreground_scribbles", "id": 1}], "selected_label_name": "liver"}
        start = time.monotonic()
        with open(tmp_path / "strokes.nii.gz", "rb") as f:
            response = server.http.post(
                "/infer/cmfnet_scribbles?image=case_000",
                data={"params": json.dumps(params)},
                files={"label": ("strokes.nii.gz", f)},
            )
        assert response.status_code == 503, response.text
        assert time.monotonic() - start < 1.0, "refused at once"
        assert int(response.headers["retry-after"]) >= 1
        assert "busy" in response.json()["detail"]
        assert all(f.result().status_code == 200 for f in busy)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == before, "a refused scribbles request stores nothing"
    assert infer(server, "case_001").status_code == 200, "places free again once the work is done"


def test_load_benchmark_phase_reports_percentiles(server):
    result = run_phase(server.url, clients=2, requests_per_client=1, images=CASES)
    assert result["clients"] == 2 and result["infer"]["n"] == 2
    for what in ("infer", "info", "datastore"):
        assert 0 < result[what]["p50"] <= result[what]["p95"]
