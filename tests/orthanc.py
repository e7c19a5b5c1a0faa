"""A real Orthanc PACS for tests: its own config, ports and storage in a temp folder.

Orthanc and its DICOMweb plugin come from Debian (`make system-deps`, run by .ci/run).
Where they are missing, tests that need them skip with that instruction, except in CI
(`CI` set), where they fail: CI must never pass without exercising them.
"""

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client import DICOMwebClient

from tests.conftest import free_port, wait_until_serving

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def require(path: str | Path, what: str) -> None:
    """Skip (fail in CI) with the install command when a system dependency is missing."""
    if Path(path).exists():
        return
    message = f"{what} is not installed ({path} missing): run `make system-deps` as root (apt-get, see Makefile)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class Orthanc:
    def __init__(self, url: str, log: Path):
        self.url = url
        self.dicomweb = f"{url}/dicom-web"
        self.log = log
        # no kept-alive connections: Orthanc drops idle ones after 1 s, racing a test's polls
        self.http = httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0))

    def series(self, **filters) -> list[dict]:
        """QIDO-RS series search, as DICOM JSON."""
        return self.http.get("/dicom-web/series", params=filters).json()


def seg_series(orthanc: Orthanc, study_uid: str, description: str) -> pydicom.Dataset | None:
    """The first instance of the study's SEG series with this SeriesDescription, if there is one."""
    found = orthanc.series(Modality="SEG", StudyInstanceUID=study_uid)
    uids = [s["0020000E"]["Value"][0] for s in found if s.get("0008103E", {}).get("Value") == [description]]
    return DICOMwebClient(orthanc.dicomweb).retrieve_series(study_uid, uids[0])[0] if uids else None


@contextlib.contextmanager
def running_orthanc(folder: Path, startup_timeout: float = 60):
    """Start `Orthanc <config>` with fresh storage under `folder`; stopped (and its storage left) on exit."""
    require(ORTHANC, "Orthanc")
    require(DICOMWEB_PLUGIN, "Orthanc's DICOMweb plugin (orthanc-dicomweb)")
    folder.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    config = {
        "Name": "cmfnet-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": free_port(),
        "DicomAet": "CMFNETTEST",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado", "Ssl": False},
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = open(folder / "orthanc.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_until_serving(process, f"{url}/dicom-web/studies", folder / "orthanc.log", startup_timeout, "Orthanc")
        yield Orthanc(url, folder / "orthanc.log")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
