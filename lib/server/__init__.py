"""What this app adds to MONAI Label's web server: a request guard, its own routes, a CORS policy.

MONAI Label builds its FastAPI app (`monailabel.app.app`) when uvicorn imports it, before the
app's code runs, and it offers no hook. So at start-up (`on_init_complete`, called from the
server's lifespan) :func:`install` changes that app in place, with FastAPI's and Starlette's
own means: routes put first in the router, a dependency override, the middleware stack built
again.

- Middleware: CORS only for the sites in `CMFNET_CORS_ORIGINS` (MONAI Label allows every origin
  with credentials unless told otherwise; here none means same-origin only), then the
  request guard (lib.server.guard): names, and with `MONAI_LABEL_AUTH_ENABLE` tokens and roles.
- With authentication on, MONAI Label's `get_current_user` (whose token check rejects every
  valid token under PyJWT 2; see lib.security.tokens) is overridden by the user the guard
  verified, so MONAI Label's own role checks see our verified roles.
- Routes: lib.server.routes, with model work on the app's worker pool (lib.workers).
- MONAI Label's own errors (`MONAILabelException`, which it raises and leaves to become a bare
  500) answer with their message: 404 for an image or label not found, 422 for invalid input.
"""

import functools
import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.middleware import Middleware
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from monailabel.config import settings
from monailabel.endpoints.user.auth import User, get_current_user
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)
from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.security.roles import ROUTE_RULES
from lib.security.settings import CmfnetSecuritySettings
from lib.security.tokens import TokenVerifier
from lib.server.guard import RequestGuard
from lib.server.route_table import route_entries
from lib.server.routes import build_router
from lib.workers import WorkerPool

logger = logging.getLogger(__name__)


def install(app: FastAPI, instance: MONAILabelApp, pool: WorkerPool) -> None:
    """Add the guard, the routes (model work on `pool`) and the CORS policy to MONAI Label's FastAPI app."""
    app.include_router(build_router(instance, pool))
    app.router.routes.insert(0, app.router.routes.pop())  # first: the router serves the first match

    verifier = None
    if settings.MONAI_LABEL_AUTH_ENABLE:
        verifier = TokenVerifier.from_settings()
        app.dependency_overrides[get_current_user] = user_verified_by_guard

    # MONAI Label's own registry of the app's infer tasks
    scribbles_models = {name for name, task in instance._infers.items() if task.type == InferType.SCRIBBLES}
    middleware = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    origins = CmfnetSecuritySettings().cors_origins
    if origins:
        cors = Middleware(
            CORSMiddleware, allow_origins=origins, allow_credentials=True, allow_methods=["*"], allow_headers=["*"]
        )
        middleware.insert(0, cors)
    routes = functools.cache(lambda: checked_route_entries(app))
    middleware.append(Middleware(RequestGuard, routes=routes, scribbles_models=scribbles_models, verifier=verifier))
    app.user_middleware = middleware
    app.exception_handlers[MONAILabelException] = monailabel_error
    app.middleware_stack = app.build_middleware_stack()
    logger.info(
        f"Server guard installed: authentication {'on' if verifier else 'off'}, CORS origins {origins or 'none'}, "
        f"{pool.workers} model worker(s) with {pool.capacity - pool.workers} waiting places"
    )


def checked_route_entries(app: FastAPI):
    """The route table, with a warning for each route that has no rule (it then needs admin)."""
    entries = route_entries(app)
    for key in dict.fromkeys(entry.key for entry in entries):
        if key not in ROUTE_RULES:
            logger.warning(f"route {key} has no rule in lib/security/roles.py: only admins may use it")
    return entries


async def monailabel_error(request: Request, error: MONAILabelException) -> JSONResponse:
    if isinstance(error, ImageNotFoundException | LabelNotFoundException):
        status = 404
    else:
        status = 422 if error.error == MONAILabelError.INVALID_INPUT else 500
    return JSONResponse({"detail": error.msg}, status)


async def user_verified_by_guard(request: Request) -> User:
    user = getattr(request.state, "user", None)
    if user is None:
        raise HTTPException(401, "not authenticated", headers={"WWW-Authenticate": "Bearer"})
    return user
