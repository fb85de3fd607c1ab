"""The three hottest routes, GET /artifacts/{id}, GET /artifacts and a JSON POST /artifacts,
without FastAPI's routing and dependency machinery: on a get by id that machinery (route
matching over every route, solving five dependencies, parameter validation) was about a third
of the CPU.

Nothing here defines the API. A request is answered here only when it is one this layer fully
understands: exactly one of those paths (with or without /api/v1); for a get, an id in its
canonical form; for a list, only the query parameters it knows, each once, with a value it needs
no validator for; for a create, an application/json body, no query and no Idempotency-Key.
Anything else (an unknown parameter, a date, an odd boolean, a limit out of range, a bad cursor,
a keyed or multipart create) goes to FastAPI unchanged, so the routes stay the one definition of
every answer, error and OpenAPI entry. What is answered here goes through the same calls as the
routes (auth.admit, the tenant's service, the routes' own functions) and any exception through
the application's own exception handlers. tests/test_hot.py holds both paths to the same status,
headers and bytes.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request, Response
from pydantic_core import PydanticCustomError
from starlette.types import ASGIApp, Receive, Scope, Send

from app.artifacts import routes, schemas
from app.artifacts.deps import get_service
from app.auth import admit
from app.settings import Settings
from storage.records import Cursor, ListQuery

PATH = re.compile(
    r"/(?:api/v1/)?artifacts(?:/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}))?"
)
TEXT_FILTERS = ("workflow_id", "phase_id", "session_id", "content_type", "derived_from")
LIST_PARAMS = {*TEXT_FILTERS, "artifact_type", "is_primary_deliverable", "limit", "cursor"}
BOOLS = {"true": True, "false": False}
READ = ("artifact:read",)
CREATE = ("artifact:create",)
Answer = Callable[[Request], Awaitable[Response]]


class HotRoutes:
    """ASGI middleware (the application's innermost user middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = None
        if scope["type"] == "http":
            match = PATH.fullmatch(scope["path"])
            if match is not None:
                if scope["method"] == "GET":
                    answer = plan(match.group(1), scope["query_string"], scope)
                elif scope["method"] == "POST" and match.group(1) is None:
                    answer = plan_create(scope)
        if answer is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await answer(request)
        except Exception as exc:
            response = await handle(scope["app"], request, exc)
        await response(scope, receive, send)


def plan(artifact_id: str | None, query_string: bytes, scope: Scope) -> Answer | None:
    """What to answer, or None when the routes must see this request."""
    try:
        pairs = parse_qsl(query_string.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return None
    params = dict(pairs)
    if len(params) != len(pairs) or any("\x00" in v for v in params.values()):
        return None
    if artifact_id is not None:
        return _get_plan(artifact_id, params)
    settings: Settings = scope["app"].state.settings
    return _list_plan(params, settings)


def _get_plan(artifact_id: str, params: dict[str, str]) -> Answer | None:
    include = params.pop("include_content", "true")
    if params or include not in BOOLS:
        return None

    async def answer(request: Request) -> Response:
        await admit(request, READ)
        service = await get_service(request)
        settings: Settings = request.app.state.settings
        return await routes.artifact_response(
            request, service, settings, artifact_id, BOOLS[include]
        )

    return answer


def _list_plan(params: dict[str, str], settings: Settings) -> Answer | None:
    if not params.keys() <= LIST_PARAMS:
        return None
    values: dict[str, Any] = {k: params[k] for k in TEXT_FILTERS if k in params}
    if "artifact_type" in params:
        try:
            values["artifact_type"] = schemas.check_artifact_type(
                params["artifact_type"], settings.artifact_types
            )
        except PydanticCustomError:
            return None
    if "is_primary_deliverable" in params:
        if params["is_primary_deliverable"] not in BOOLS:
            return None
        values["is_primary_deliverable"] = BOOLS[params["is_primary_deliverable"]]
    limit = 50
    if "limit" in params:
        text = params["limit"]
        if not (text.isdigit() and text.isascii() and 1 <= int(text) <= 200):
            return None
        limit = int(text)
    after = None
    if "cursor" in params:
        try:
            after = Cursor.decode(params["cursor"])
        except ValueError:
            return None
    query = ListQuery(**values)

    async def answer(request: Request) -> Response:
        await admit(request, READ)
        service = await get_service(request)
        return await routes.list_response(request, service, query, limit, after)

    return answer


def plan_create(scope: Scope) -> Answer | None:
    if scope["query_string"]:
        return None
    media = None
    for name, value in scope["headers"]:
        if name == b"idempotency-key":
            return None
        if name == b"content-type":
            if media is not None:
                return None
            media = value
    if media is None or media.split(b";")[0].strip().lower() != b"application/json":
        return None

    async def answer(request: Request) -> Response:
        await admit(request, CREATE)
        service = await get_service(request)
        settings: Settings = request.app.state.settings
        return await routes.create_artifact(request, service, settings, None)

    return answer


async def handle(app: FastAPI, request: Request, exc: Exception) -> Response:
    """The response the application's exception handlers give for `exc` (errors.install has
    one for Exception itself, so there always is one)."""
    for cls in type(exc).__mro__:
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            response = handler(request, exc)
            return await response if inspect.isawaitable(response) else response
    raise exc
