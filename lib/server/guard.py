"""The request guard: ASGI middleware in front of every route of the server.

For each HTTP request it finds the route that will serve it (lib.server.route_table), then

1. when authentication is on (`MONAI_LABEL_AUTH_ENABLE`), checks the bearer token
   (lib.security.tokens) against the level the route needs (lib.security.roles): 401 without
   a valid token, 403 when its roles rank too low, 503 when the identity provider's keys
   cannot be fetched. The verified user is left in the request's state for MONAI Label's own
   role checks (see lib.server.install);
2. checks every id the request names as a name (lib.names): the route's path parameters
   and the `image`, `id`, `label`, `tag` and `session_id` query parameters; 422 otherwise.
"""

import asyncio
import logging
from collections.abc import Callable

from monailabel.endpoints.user.auth import User
from starlette._utils import get_route_path  # the path the routers match (without a --root_path prefix)
from starlette.datastructures import Headers, QueryParams
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from lib.errors import InvalidInput
from lib.names import check_name
from lib.security.roles import Level, implied_roles, level_of, required_level
from lib.security.tokens import InvalidToken, KeysUnavailable, TokenVerifier
from lib.server.route_table import RouteEntry, match

logger = logging.getLogger(__name__)

NAME_PATH_PARAMS = ("model", "strategy", "method", "session_id")
NAME_QUERY_PARAMS = ("image", "id", "label", "tag", "session_id")


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        routes: Callable[[], list[RouteEntry]],
        scribbles_models: set[str],
        verifier: TokenVerifier | None,
    ):
        self.app = app
        self.routes = routes
        self.scribbles_models = scribbles_models
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        key, path_params = match(self.routes(), scope["method"], get_route_path(scope))
        refusal = None
        if self.verifier is not None:
            refusal = await self._authorize(scope, key, path_params)
        refusal = refusal or _bad_names(path_params, QueryParams(scope.get("query_string", b"")))
        if refusal is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, receive, send)

    async def _authorize(self, scope: Scope, key: str | None, path_params: dict[str, str]) -> JSONResponse | None:
        needed = required_level(key, path_params, self.scribbles_models)
        if needed == Level.PUBLIC:
            return None
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _unauthorized("no bearer token: log in and send 'Authorization: Bearer <token>'")
        try:
            identity = await asyncio.to_thread(self.verifier.verify, token.strip())
        except InvalidToken as e:
            logger.info(f"{scope['method']} {scope['path']}: token refused: {e}")
            return _unauthorized(f"invalid token: {e}")
        except KeysUnavailable as e:
            logger.error(f"{scope['method']} {scope['path']}: {e}")
            return JSONResponse({"detail": f"cannot verify tokens now: {e}"}, 503, {"Retry-After": "30"})
        level = level_of(identity.roles)
        if level < needed:
            logger.info(f"{scope['method']} {scope['path']}: {identity.username} ({level}) refused")
            return JSONResponse(
                {
                    "detail": f"{key or scope['path']} needs the {needed} role or above; "
                    f"{identity.username or 'this token'} has {identity.roles or 'no roles'}"
                },
                403,
            )
        user = User(
            username=identity.username, email=identity.email, name=identity.name, roles=implied_roles(identity.roles)
        )
        scope.setdefault("state", {})["user"] = user
        return None


def _bad_names(path_params: dict[str, str], query: QueryParams) -> JSONResponse | None:
    try:
        for name in NAME_PATH_PARAMS:
            if name in path_params:
                check_name(path_params[name], name)
        for name in NAME_QUERY_PARAMS:
            for value in query.getlist(name):
                if value:  # MONAI Label takes an empty `image` as "none" (an uploaded file instead)
                    check_name(value, name)
    except InvalidInput as e:
        return JSONResponse({"detail": e.detail}, e.status_code)
    return None


def _unauthorized(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
