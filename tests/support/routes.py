"""Every route the app serves, with the scope it declares (read from the app's own handlers)."""

from __future__ import annotations

import re
from pathlib import Path

from app.asgi import create_app
from app.settings import Settings

PUBLIC = {
    "/healthz",
    "/readyz",
    "/schema/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/docs/assets/{name}",
    "/redoc",
}


def app_routes() -> list[tuple[str, str, list[tuple[str, ...]]]]:
    """(method, path, scopes declared) for every route the app serves, routers included: a
    handler's `opt["scope"]` (public routes declare none); Litestar's own OPTIONS left out, and
    the web UI's pages (`opt["ui"]`: they admit people by their session cookie, not by an API
    key's scope; tests/test_ui.py walks them)."""
    app = create_app(Settings(data_dir=Path("/nonexistent")))
    out = []
    for route in app.routes:
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.path)  # {artifact_id:str}: {artifact_id}
        handlers = [
            h
            for h in getattr(route, "route_handlers", [])
            if not (set(h.http_methods) == {"OPTIONS"} and h.handler_name == "options_handler")
            and not h.opt.get("alias_of")  # serves a documented route, which is listed
            and not h.opt.get("ui")
        ]
        methods = {m for h in handlers for m in h.http_methods}
        for handler in handlers:
            scope = handler.opt.get("scope")
            declared: list[tuple[str, ...]] = [] if scope is None else [(scope,)]
            for method in sorted(handler.http_methods):
                if method == "HEAD" and "GET" in methods and path in PUBLIC:
                    continue
                out.append((method, path, declared))
    return out


ROUTES = app_routes()
