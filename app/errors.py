"""Every error answer in one place.

Input errors: 422 in FastAPI's shape ({"detail": [{type, loc, msg, input, ctx?}]}).
Everything else: {"detail": "<sentence>", "code": "<stable_snake_case>"}, except the bare
{"detail": "Not Found"} / {"detail": "Method Not Allowed"} of unknown routes and methods.
No exception ever reaches the client as a traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from storage import errors as se

log = logging.getLogger("artifacts.errors")

# storage error -> (status, code)
STATUS: dict[type[se.StorageError], tuple[int, str]] = {
    se.ArtifactNotFound: (404, "artifact_not_found"),
    se.AmbiguousArtifactId: (409, "ambiguous_artifact_id"),
    se.DuplicateSource: (409, "already_imported"),
    se.ImportNotFound: (404, "import_not_found"),
    se.BlobTooLarge: (413, "payload_too_large"),
    se.DigestMismatch: (422, "digest_mismatch"),
    se.IncompleteContent: (400, "incomplete_body"),
    se.InsufficientStorage: (507, "insufficient_storage"),
    se.StorageUnavailable: (503, "storage_unavailable"),
    se.BlobNotFound: (500, "blob_missing"),
    se.BlobCorrupt: (500, "blob_corrupt"),
    se.WorkflowNotFound: (404, "workflow_not_found"),
    se.LeaseLost: (409, "idempotency_request_in_progress"),
}

CODE_BY_STATUS = {
    400: "bad_request",
    401: "invalid_api_key",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error answer decided in the HTTP layer: `{"detail", "code"}` with a status."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


def validation_error(
    loc: Sequence[str | int], type_: str, msg: str, value: Any, ctx: dict[str, Any] | None = None
) -> RequestValidationError:
    """One FastAPI-shaped 422 item, for checks that run outside pydantic."""
    item: dict[str, Any] = {"type": type_, "loc": tuple(loc), "msg": msg, "input": value}
    if ctx is not None:
        item["ctx"] = ctx
    return RequestValidationError([item])


def invalid_cursor(value: str, loc: Sequence[str] = ("query", "cursor")) -> RequestValidationError:
    return validation_error(loc, "cursor_invalid", "Not a cursor this service issued", value)


def problem(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


async def _storage_error(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, se.UnknownParent):
        body = {
            "detail": [
                {
                    "type": "artifact_not_found",
                    "loc": ["body", "derived_from", exc.index],
                    "msg": f"Artifact {exc.parent_id!r} does not exist",
                    "input": exc.parent_id,
                }
            ]
        }
        return JSONResponse(body, status_code=422)
    for cls in type(exc).__mro__:
        if cls in STATUS:
            status, code = STATUS[cls]
            if status >= 500:
                log.error("storage error: %s", exc)
            return problem(status, code, str(exc))
    return await _unexpected(_request, exc)


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return problem(exc.status, exc.code, exc.detail, exc.headers)


def _paths(app: FastAPI) -> list[tuple[int, re.Pattern[str], str]]:
    """(parameter count, regex, Allow) of every path in the app's OpenAPI document."""
    table = getattr(app.state, "allow_table", None)
    if table is None:
        table = []
        for template, item in app.openapi()["paths"].items():
            parts = re.split(r"(\{[^}]+\})", template)
            regex = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
            methods = [m for m in ("get", "head", "post", "put", "patch", "delete") if m in item]
            allow = ", ".join(m.upper() for m in methods)
            table.append((template.count("{"), re.compile(regex), allow))
        table.sort(key=lambda row: row[0])  # a literal path before a template that also matches
        app.state.allow_table = table
    return table


def allowed_methods(request: Request) -> str | None:
    """The methods the OpenAPI document lists for this path (`/api/v1` mirrors the rest).
    Starlette's own Allow names only the first matching route's, and GET, PUT and DELETE of one
    path are three routes here."""
    path = request.scope["path"]
    if path.startswith("/api/v1/"):
        path = path.removeprefix("/api/v1")
    for _, regex, allow in _paths(request.app):
        if regex.fullmatch(path):
            return allow
    return None


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and "app" in request.scope:
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
    if exc.status_code in (404, 405) and exc.detail in ("Not Found", "Method Not Allowed"):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)
    code = CODE_BY_STATUS.get(exc.status_code, "error")
    return problem(exc.status_code, code, str(exc.detail), headers)


def _disk_full(exc: Exception) -> bool:
    """SQLite's SQLITE_FULL, or PostgreSQL's disk_full (SQLSTATE 53100)."""
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return sqlstate == "53100" or "database or disk is full" in str(exc)


async def _database_error(_request: Request, exc: Exception) -> JSONResponse:
    log.error("database error: %s", exc)
    if _disk_full(exc):
        return problem(
            507, "insufficient_storage", "The metadata database's disk is full; nothing was stored."
        )
    return problem(
        503, "database_unavailable", "The metadata database is unavailable; retry later."
    )


async def _client_gone(_request: Request, _exc: Exception) -> JSONResponse:
    return problem(400, "client_disconnected", "The client went away before the body ended.")


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return problem(500, "internal_error", "The server failed to answer this request.")


# -- the same answers, declared in OpenAPI ----------------------------------------------------


class ErrorBody(BaseModel):
    """Every error but input validation: a sentence and a stable snake_case code."""

    detail: str
    code: str


def _header(description: str, required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


RESPONSES: dict[int, dict[str, Any]] = {
    400: {"description": "malformed or incomplete body (malformed_multipart, incomplete_body)"},
    401: {
        "description": "no valid API key (invalid_api_key)",
        "headers": {"WWW-Authenticate": _header("the schemes to authenticate with")},
    },
    403: {"description": "the API key lacks the route's scope (forbidden)"},
    404: {"description": "not found (artifact_not_found, workflow_not_found, import_not_found)"},
    409: {
        "description": "ambiguous id prefix, import running, or a request with this "
        "Idempotency-Key still in progress (idempotency_request_in_progress, with Retry-After)",
        "headers": {"Retry-After": _header("seconds", required=False)},
    },
    413: {"description": "body, form field or upload over its limit (payload_too_large, …)"},
    415: {"description": "unsupported request media type (unsupported_media_type)"},
    429: {
        "description": "the API key passed its request rate (rate_limited)",
        "headers": {"Retry-After": _header("seconds")},
    },
    503: {
        "description": "a dependency is unavailable; retry later (database_unavailable, "
        "storage_unavailable; crownest_not_configured on imports)"
    },
    507: {"description": "the disk is full; nothing was stored (insufficient_storage)"},
}

# Writes answer 422 in FastAPI's shape for input errors, and as ErrorBody for digest_mismatch
# and idempotency_key_reused. (HTTPValidationError is in the components because FastAPI adds
# it for every route that keeps its default 422; ErrorBody, because every route uses it.)
UNPROCESSABLE_EITHER: dict[str, Any] = {
    "description": "invalid input (FastAPI's shape), or digest_mismatch / idempotency_key_reused",
    "content": {
        "application/json": {
            "schema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/HTTPValidationError"},
                    {"$ref": "#/components/schemas/ErrorBody"},
                ]
            }
        }
    },
}


def responses(*statuses: int, write: bool = False) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the error answers it can give, each an ErrorBody; `write`
    adds 507 and the 422 of either shape."""
    out: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorBody, **RESPONSES[status]} for status in statuses
    }
    if write:
        out[507] = {"model": ErrorBody, **RESPONSES[507]}
        out[422] = UNPROCESSABLE_EITHER
    return out


# Every route behind require(): who is calling, how fast, and whether the database answers.
SECURED = responses(401, 403, 429, 503)


def install(app: FastAPI) -> None:
    app.add_exception_handler(se.StorageError, _storage_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(OperationalError, _database_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Exception, _unexpected)
