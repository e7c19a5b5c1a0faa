"""The OHIF 3 viewer at /viewer/ of a real server: its files under that path, its config on the DICOMweb proxy."""

import re

import pytest

from lib.viewer import DIST
from tests.conftest import copy_of_demo, running_server
from tests.orthanc import require


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    require(DIST / "index.html", "the OHIF viewer (run `make viewer-deps`)")
    studies = copy_of_demo(demo, tmp_path_factory.mktemp("viewer"))
    with running_server(studies.parent, studies, conf={"auto_train": "false"}) as server:
        yield server


def test_index_loads_everything_from_the_viewer_path(server):
    for path in ("/viewer/", "/viewer/segmentation?StudyInstanceUIDs=1.2.3"):  # OHIF's routes are its index.html
        response = server.http.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        html = response.text
        assert 'window.PUBLIC_URL="/viewer/"' in html
        assert re.findall(r'(?:src|href)="(/[^"]*)"', html), "index.html references its files"
        assert all(ref.startswith("/viewer/") for ref in re.findall(r'(?:src|href)="(/[^"]*)"', html))
        bundle = re.search(r'src="(/viewer/app\.bundle\.[^"]+\.js)"', html).group(1)
    script = server.http.get(bundle)
    assert script.status_code == 200 and script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert '__webpack_require__.p = "/viewer/";' in script.text  # chunks load from /viewer/ too
    assert "url(/viewer/" in server.http.get("/viewer/app.bundle.css").text
    wasm = next(DIST.glob("*.wasm")).name
    assert server.http.get(f"/viewer/{wasm}").headers["content-type"] == "application/wasm"


def test_app_config_points_ohif_at_the_dicomweb_proxy(server):
    response = server.http.get("/viewer/app-config.js")
    assert response.status_code == 200
    config = response.text
    assert 'routerBasename": "/viewer"' in config
    for root in ("qidoRoot", "wadoRoot", "wadoUriRoot"):
        assert re.search(rf'"{root}": window.location.origin \+ "/proxy/dicom/(qido|wado)"', config), root


def test_paths_outside_the_viewer_are_not_served(server):
    response = server.http.get("/viewer/..%2F..%2F..%2Fpackage.json")
    assert response.status_code == 200 and "PUBLIC_URL" in response.text  # index.html, not the file
    assert server.http.get("/viewer", follow_redirects=False).headers["location"] == "/viewer/"
