"""Who may do what: role levels and one rule per route of the server.

MONAI Label's roles (names from its `MONAI_LABEL_AUTH_ROLE_*` settings) rank as levels:

| level | roles | may |
| --- | --- | --- |
| user | `monailabel-user` | read (info, datastore, status) and infer |
| annotator | `monailabel-annotator`, `-reviewer` | also save labels and scribbles (a scribbles request stores them) |
| admin | `monailabel-admin` | also train, batch-infer, upload or delete images, labels and models |

A token's level is the highest of its roles, and each level includes those below it (MONAI Label
itself asks for one exact role per endpoint). `ROUTE_RULES` names the level of every route that
MONAI Label 0.8.5 and this app serve, keyed `"METHOD /path"` (`MOUNT /path` for a mounted
folder); the request guard applies it, a route missing from it needs `admin`, and
`python -m lib.server` lists the routes and their levels.
"""

from collections.abc import Iterable
from enum import IntEnum

from monailabel.config import settings


class Level(IntEnum):
    PUBLIC = 0  # no token needed
    AUTHENTICATED = 1  # any valid token, whatever its roles
    USER = 2
    ANNOTATOR = 3
    ADMIN = 4

    def __str__(self) -> str:
        return self.name.lower()


def role_levels() -> dict[str, Level]:
    """MONAI Label role name -> level (the names are MONAI Label settings)."""
    return {
        settings.MONAI_LABEL_AUTH_ROLE_USER: Level.USER,
        settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR: Level.ANNOTATOR,
        settings.MONAI_LABEL_AUTH_ROLE_REVIEWER: Level.ANNOTATOR,
        settings.MONAI_LABEL_AUTH_ROLE_ADMIN: Level.ADMIN,
    }


def level_of(roles: Iterable[str]) -> Level:
    """The highest level among `roles`; AUTHENTICATED when none is a MONAI Label role."""
    levels = role_levels()
    return max((levels[role] for role in roles if role in levels), default=Level.AUTHENTICATED)


def implied_roles(roles: Iterable[str]) -> list[str]:
    """`roles` plus every MONAI Label role at or below their level, so MONAI Label's own checks agree."""
    level = level_of(roles)
    return sorted(set(roles) | {role for role, role_level in role_levels().items() if role_level <= level})


class InferRule:
    """Inference is for users; a scribbles model stores the request's strokes, so it is for annotators."""

    def __call__(self, path_params: dict[str, str], scribbles_models: set[str]) -> Level:
        return Level.ANNOTATOR if path_params.get("model") in scribbles_models else Level.USER

    def __str__(self) -> str:
        return "user; annotator for a scribbles model"


Rule = Level | InferRule


PUBLIC, AUTHENTICATED, USER, ANNOTATOR, ADMIN = Level

ROUTE_RULES: dict[str, Rule] = {
    # API documentation, static files, login
    "GET /": PUBLIC,
    "GET /docs": PUBLIC,
    "HEAD /docs": PUBLIC,
    "GET /openapi.json": PUBLIC,
    "HEAD /openapi.json": PUBLIC,
    "GET /favicon.ico": PUBLIC,
    "MOUNT /static": PUBLIC,
    "GET /auth/": PUBLIC,
    "POST /auth/token": PUBLIC,
    "GET /auth/token/valid": AUTHENTICATED,
    # reading
    "GET /info/": USER,
    "GET /datastore/": USER,
    "GET /datastore/image": USER,
    "HEAD /datastore/image": USER,
    "GET /datastore/image/info": USER,
    "GET /datastore/label": USER,
    "HEAD /datastore/label": USER,
    "GET /datastore/label/info": USER,
    "GET /train/": USER,
    "GET /batch/infer": USER,
    "GET /scoring/": USER,
    "GET /session/{session_id}": USER,
    "GET /ohif/{path:path}": USER,
    "GET /viewer": USER,
    "GET /viewer/app-config.js": USER,
    "GET /viewer/{path:path}": USER,
    "POST /activelearning/{strategy}": USER,
    "GET /proxy/dicom/wado/{path:path}": USER,
    "POST /proxy/dicom/wado/{path:path}": USER,
    "GET /proxy/dicom/qido/{path:path}": USER,
    "POST /proxy/dicom/qido/{path:path}": USER,
    "GET /proxy/dicom/stow/{path:path}": USER,
    "GET /proxy/dicom/{path:path}": USER,
    # inference (and the client's own temporary sessions for it)
    "POST /infer/{model}": InferRule(),
    "POST /infer/wsi/{model}": USER,
    "POST /infer/wsi_v2/{model}": USER,
    "PUT /session/": USER,
    "DELETE /session/{session_id}": USER,
    # annotating
    "PUT /datastore/label": ANNOTATOR,
    "PUT /datastore/label/info": ANNOTATOR,
    "PUT /datastore/updatelabelinfo": ANNOTATOR,
    "PUT /datastore/image/info": ANNOTATOR,
    "POST /scoring/": ANNOTATOR,
    "POST /scoring/{method}": ANNOTATOR,
    "DELETE /scoring/": ANNOTATOR,
    "POST /proxy/dicom/stow/{path:path}": ANNOTATOR,
    "POST /proxy/dicom/{path:path}": ANNOTATOR,
    # administering: images, labels, models, training, batch inference, the server
    "PUT /datastore/image": ADMIN,
    "PUT /datastore/": ADMIN,
    "DELETE /datastore/image": ADMIN,
    "DELETE /datastore/": ADMIN,
    "DELETE /datastore/label": ADMIN,
    "GET /datastore/dataset": ADMIN,
    "GET /model/{model}": ADMIN,
    "GET /model/info/{model}": ADMIN,
    "PUT /model/{model}": ADMIN,
    "DELETE /model/{model}": ADMIN,
    "POST /train/": ADMIN,
    "POST /train/{model}": ADMIN,
    "DELETE /train/": ADMIN,
    "POST /batch/infer/{model}": ADMIN,
    "DELETE /batch/infer": ADMIN,
    "GET /logs/": ADMIN,
    "GET /logs/gpu": ADMIN,
    "POST /reload": ADMIN,
}


def required_level(route_key: str | None, path_params: dict[str, str], scribbles_models: set[str]) -> Level:
    """The level a request needs: its route's rule; `admin` for a route without one; `user` for no route (404)."""
    if route_key is None:
        return Level.USER
    rule = ROUTE_RULES.get(route_key, Level.ADMIN)
    return rule if isinstance(rule, Level) else rule(path_params, scribbles_models)
