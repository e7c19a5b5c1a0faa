"""The server's route table: every route MONAI Label and this app serve, matched like the router does.

Routes are named `"METHOD /path"` (`"MOUNT /path"` for a mounted folder), the keys of
lib.security.roles.ROUTE_RULES; `python -m lib.server` lists them with their rules.
"""

import re
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount, compile_path


@dataclass(frozen=True)
class RouteEntry:
    key: str
    method: str | None  # None: a mount, any method
    pattern: re.Pattern


def route_entries(app: FastAPI) -> list[RouteEntry]:
    """One entry per route and method, in the router's order (FastAPI >= 0.137 nests included routers)."""
    entries = []
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, Mount):
            pattern = re.compile(f"^{re.escape(route.path.rstrip('/'))}(/.*)?$")
            entries.append(RouteEntry(f"MOUNT {route.path}", None, pattern))
            continue
        pattern = compile_path(route.path)[0]
        entries += [RouteEntry(f"{method} {route.path}", method, pattern) for method in sorted(route.methods or ())]
    return entries


def match(entries: list[RouteEntry], method: str, path: str) -> tuple[str | None, dict[str, str]]:
    """(route key, path parameters) of the first route serving `method path`; (None, {}) if none.

    HEAD falls back to the GET route, as Starlette answers HEAD with GET routes."""
    found = None
    for entry in entries:
        matched = entry.pattern.match(path)
        if matched and entry.method in (method, None):
            return entry.key, matched.groupdict()
        if matched and found is None and method == "HEAD" and entry.method == "GET":
            found = (entry.key, matched.groupdict())
    return found or (None, {})
