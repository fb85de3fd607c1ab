"""A workflow id is any non-empty string (CONTRACT.md), `/` included: in a path it is one
segment, with `/` sent as `%2F` (`/store/workflows/org%2Frepo/export`).

The ASGI server decodes the path before the app sees it (`scope["path"]` is
`/store/workflows/org/repo/export`), and Litestar routes on that decoded path, where the id's
`/` is a separator like any other: `a%2Fb` was a 404, and `x%2Fdeliverables` was routed to the
deliverables of `x`. So before routing, a request whose raw path names a workflow by a segment
with `%2F` in it is routed by that segment as sent (still escaped, so one segment), and the
decoded id is kept in the scope for the handler (`workflow_id()`). Every other request,
`/artifacts…` included, is routed exactly as before.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from litestar.types import ASGIApp, Receive, Scope, Send

from app.errors import SENT_PATH

WORKFLOW_ID = "artifacts.workflow_id"  # scope key: the decoded id of a segment with %2F
_ROUTE = re.compile(r"(/api/v1)?/store/workflows/(?P<segment>[^/]+)(?P<rest>/.*)?", re.DOTALL)
_ENCODED_SLASH = re.compile(r"%2f", re.IGNORECASE)


def route_encoded_slashes(app: ASGIApp) -> ASGIApp:
    """`app` (the app's ASGI handler, before its router), routing a workflow id with an
    encoded `/` as one path segment."""

    async def routed(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path")
            if raw and b"%2" in raw and b"/store/workflows/" in raw:
                _reroute(scope, raw.decode("latin-1"))
        await app(scope, receive, send)

    return routed


def _reroute(scope: Any, raw: str) -> None:
    match = _ROUTE.fullmatch(raw)
    if match is None or _ENCODED_SLASH.search(match["segment"]) is None:
        return
    segment = match["segment"]
    head = raw[: match.start("segment")]
    # the path as the server would decode it, but for the id's segment, left as sent
    path = head + segment + unquote(match["rest"] or "")
    scope[WORKFLOW_ID] = unquote(segment)  # as the server decodes a path (UTF-8, replaced)
    scope[SENT_PATH] = path  # for the reference-routing checks (app/errors.py)
    scope["path"] = path


def workflow_id(scope: Any, routed: str) -> str:
    """The workflow a route names: `routed`, its path parameter, unless the id's segment held
    an encoded `/` (see route_encoded_slashes)."""
    value = scope.get(WORKFLOW_ID)
    return routed if value is None else str(value)
