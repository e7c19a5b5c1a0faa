"""A current OHIF 3 (npm `@ohif/app`, installed into viewer/ by `make viewer-deps`) served at /viewer/.

The package's prebuilt `dist/` is built for the site root: index.html, the stylesheet and the
webpack runtime of its entry bundles load everything from "/". It is served here under
`/viewer/` by rewriting that public path in those files as they are served (the installed files
are left as they are). `app-config.js` is ours: OHIF's DICOMweb data source points at MONAI
Label's DICOMweb proxy on this server (`/proxy/dicom/...`), so the PACS needs no CORS and its
credentials stay on the server. OHIF stores DICOM SEG (its segmentation mode's "Store") through
the same proxy (STOW-RS to the wado root).

Every route here is a read route (GET): the viewer's static files and its configuration.
"""

import functools
import json
import re
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse, Response
from monailabel.utils.others.generic import get_mime_type

VIEWER_PATH = "/viewer/"
DIST = Path(__file__).resolve().parents[1] / "viewer" / "node_modules" / "@ohif" / "app" / "dist"
PROXY = "/proxy/dicom"

# (file suffix, pattern, replacement): where the build hard-codes the site root
_REWRITES = [
    (".html", re.compile(r'PUBLIC_URL="/"'), f'PUBLIC_URL="{VIEWER_PATH}"'),
    (".html", re.compile(r'(href|src)="/(?!/)'), rf'\1="{VIEWER_PATH}'),
    (".css", re.compile(r"url\(/(?!/)"), f"url({VIEWER_PATH}"),
    (".js", re.compile(r'__webpack_require__\.p = "/";'), f'__webpack_require__.p = "{VIEWER_PATH}";'),
]

router = APIRouter(tags=["Viewer"])


def app_config() -> str:
    """OHIF's runtime configuration: one DICOMweb data source, the server's proxy, at this page's origin."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "PACS (through the CmFNet Label server)",
            "name": "pacs",
            "qidoRoot": "__ORIGIN__/qido",
            "wadoRoot": "__ORIGIN__/wado",
            "wadoUriRoot": "__ORIGIN__/wado",
            "qidoSupportsIncludeField": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "dicomUploadEnabled": False,
            "singlepart": "pdf,video",
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": VIEWER_PATH.rstrip("/"),
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    text = json.dumps(config, indent=2).replace('"__ORIGIN__', f'window.location.origin + "{PROXY}')
    return f"// CmFNet Label (lib/viewer.py): OHIF reads the PACS through this server\nwindow.config = {text};\n"


@functools.lru_cache(maxsize=32)
def _rewritten(path: Path) -> bytes | None:
    """The file with the site root replaced by VIEWER_PATH, or None when it has nothing to rewrite."""
    rules = [(pattern, replacement) for suffix, pattern, replacement in _REWRITES if path.suffix == suffix]
    if not rules:
        return None
    text = path.read_text(encoding="utf-8")
    new = text
    for pattern, replacement in rules:
        new = pattern.sub(replacement, new)
    return new.encode("utf-8") if new != text else None


def _file(relative: str) -> Path | None:
    """A file inside dist/, or None (also for paths that leave it)."""
    path = (DIST / relative).resolve()
    return path if path.is_file() and path.is_relative_to(DIST.resolve()) else None


@router.get(VIEWER_PATH.rstrip("/"), include_in_schema=False)
def viewer_root():
    return RedirectResponse(VIEWER_PATH)


@router.get(VIEWER_PATH + "app-config.js", include_in_schema=False)
def viewer_config():
    return Response(app_config(), media_type="application/javascript", headers={"Cache-Control": "no-cache"})


@router.get(VIEWER_PATH + "{path:path}", include_in_schema=False)
def viewer_file(path: str):
    """A file of the viewer; any other path is one of OHIF's routes (e.g. /viewer/segmentation): its index.html."""
    if not (DIST / "index.html").is_file():
        raise HTTPException(404, f"the OHIF viewer is not installed ({DIST} missing): run `make viewer-deps`")
    file = _file(path) or DIST / "index.html"
    media_type = get_mime_type(str(file))
    content = _rewritten(file)
    if content is not None:
        return Response(content, media_type=media_type)
    return FileResponse(file, media_type=media_type)


def serve_viewer() -> None:
    """Add the viewer's routes to the running MONAI Label server."""
    from monailabel.app import app  # the server's FastAPI app (imported only in the server)

    app.include_router(router)
