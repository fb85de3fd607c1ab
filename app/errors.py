"""Every error answer in one place: one table of exception handlers (`HANDLERS`).

Input errors: 422 as a list of items ({"detail": [{type, loc, msg, input, ctx?}]}), the shape
the Syntropic137 reference (FastAPI) answers and CONTRACT.md pins. Everything else:
{"detail": "<sentence>", "code": "<stable_snake_case>"}, except the bare {"detail": "Not Found"}
/ {"detail": "Method Not Allowed"} of unknown routes and methods. No exception ever reaches the
client as a traceback.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

from litestar import Request
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException
from sqlalchemy.exc import DBAPIError, OperationalError

from app import contract
from app.http import Answer, BodyTimeout, ClientGone, ServerStopping, encode
from app.urls import redirect_location, url_of
from storage import errors as se

log = logging.getLogger("artifacts.errors")

# storage error -> (status, code)
STATUS: dict[type[se.StorageError], tuple[int, str]] = {
    se.ArtifactNotFound: (404, "artifact_not_found"),
    se.AmbiguousArtifactId: (409, "ambiguous_artifact_id"),
    se.VersionNotFound: (404, "version_not_found"),
    se.PreconditionFailed: (412, "precondition_failed"),
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


class InvalidInput(Exception):
    """422: the request's input failed validation; `errors` are the items of the answer."""

    def __init__(self, errors: Sequence[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = list(errors)


def validation_error(
    loc: Sequence[str | int], type_: str, msg: str, value: Any, ctx: dict[str, Any] | None = None
) -> InvalidInput:
    """One 422 item, for checks that run outside pydantic."""
    item: dict[str, Any] = {"type": type_, "loc": list(loc), "msg": msg, "input": value}
    if ctx is not None:
        item["ctx"] = ctx
    return InvalidInput([item])


def invalid_cursor(value: str, loc: Sequence[str] = ("query", "cursor")) -> InvalidInput:
    return validation_error(loc, "cursor_invalid", "Not a cursor this service issued", value)


def problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(encode({"detail": detail, "code": code}), status, headers)


def jsonable(value: Any) -> Any:
    """A validation item's values as JSON: pydantic puts exceptions, decimals and the like in
    `ctx`; they are written as the contract's reference writes them (an exception as {})."""
    if isinstance(value, float) and not math.isfinite(value):  # json.loads reads them; JSON
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, BaseException):
        return {}
    return str(value)


def _invalid_input(_request: Request, exc: Exception) -> Answer:
    """The items as the stdlib writes them (the input echoes what the client sent: its numbers
    come back as the reference writes them, not as msgspec would). Always answerable: where
    the reference failed to encode an item (a NaN, bytes that are not UTF-8) and answered 500,
    this answers the 422."""
    assert isinstance(exc, InvalidInput)
    body = json.dumps({"detail": jsonable(exc.errors)}, ensure_ascii=False, separators=(",", ":"))
    return Answer(body.encode("utf-8", "surrogateescape"), 422)


def _storage_error(request: Request, exc: Exception) -> Answer:
    if isinstance(exc, se.UnknownParent):
        item = {
            "type": "artifact_not_found",
            "loc": ["body", "derived_from", exc.index],
            "msg": f"Artifact {exc.parent_id!r} does not exist",
            "input": exc.parent_id,
        }
        return Answer(encode({"detail": [item]}), 422)
    for cls in type(exc).__mro__:
        if cls in STATUS:
            status, code = STATUS[cls]
            if status >= 500:
                log.error("storage error: %s", exc)
            return problem(status, code, str(exc))
    return _unexpected(request, exc)


def _api_error(_request: Request, exc: Exception) -> Answer:
    assert isinstance(exc, ApiError)
    return problem(exc.status, exc.code, exc.detail, exc.headers)


def method_not_allowed(path: str) -> Answer:
    """405 with `Allow`: the methods the contract (openapi/openapi.json) lists for the path."""
    allow = contract.allowed_methods(path) or ""
    return Answer(b'{"detail":"Method Not Allowed"}', 405, {"allow": allow})


class TrailingSlash(Exception):
    """A route's path with a trailing slash: the reference redirects it (307) to the path
    without, before any other check."""


def reference_routing(scope: Any) -> None:
    """Routing answers of the contract's reference that Litestar gives otherwise, checked first
    by the app's guard: OPTIONS is no method of any route (405 with the path's `Allow`, where
    Litestar answers 204 itself), and `/artifacts/` redirects to `/artifacts` (Litestar serves
    both)."""
    if "//" in _sent_path(scope):  # Litestar collapses them; the reference matches no route
        raise NotFoundException
    if _trailing_slash(scope):
        raise TrailingSlash
    if scope["method"] == "OPTIONS":
        raise MethodNotAllowedException


# Scope key: the path as sent, decoded but for a segment whose encoded `/` is no separator
# (a workflow id's: app/workflows/paths.py).
SENT_PATH = "artifacts.sent_path"


def _sent_path(scope: Any) -> str:
    """The path as the client sent it, decoded (Litestar's routing has normalised
    scope["path"]: no trailing slash, no empty segment)."""
    sent = scope.get(SENT_PATH)
    if sent is not None:
        return str(sent)
    raw = scope.get("raw_path")
    return unquote(raw.decode("latin-1")) if raw else str(scope["path"])


def _trailing_slash(scope: Any) -> bool:
    path = _sent_path(scope)
    return len(path) > 1 and path.endswith("/")


def _redirect_without_slash(request: Request, _exc: Exception) -> Answer:
    scope: Any = request.scope
    path = scope["path"].rstrip("/") or "/"  # Litestar's routing has stripped it already
    location = redirect_location(url_of(scope, path))
    return Answer(b"", 307, [("content-length", "0"), ("location", location)], media_type=None)


def _not_found(_request: Request, _exc: Exception) -> Answer:
    return Answer(b'{"detail":"Not Found"}', 404)


def _wrong_method(request: Request, exc: Exception) -> Answer:
    if _trailing_slash(request.scope):
        return _redirect_without_slash(request, exc)
    return method_not_allowed(request.scope["path"])


def _http_error(_request: Request, exc: Exception) -> Answer:
    """Litestar's own refusals (a malformed request line or header it parsed for us)."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    code = CODE_BY_STATUS.get(status, "error")
    return problem(status, code, str(exc.detail), dict(exc.headers or {}))


def _database_error(_request: Request, exc: Exception) -> Answer:
    log.error("database error: %s", exc)
    if se.is_disk_full(exc):
        return problem(
            507, "insufficient_storage", "The metadata database's disk is full; nothing was stored."
        )
    return problem(
        503, "database_unavailable", "The metadata database is unavailable; retry later."
    )


def _client_gone(_request: Request, _exc: Exception) -> Answer:
    return problem(400, "client_disconnected", "The client went away before the body ended.")


def _body_timeout(_request: Request, exc: Exception) -> Answer:
    """408, and the connection closes: the rest of a stalled body is not worth waiting for."""
    assert isinstance(exc, BodyTimeout)
    return problem(
        408,
        "request_timeout",
        f"No byte of the request body arrived for {exc.seconds:g} seconds (the limit); "
        "nothing was stored.",
        headers={"Connection": "close"},
    )


def _server_stopping(request: Request, _exc: Exception) -> Answer:
    """503, and the connection closes: the server is shutting down and its grace period is
    over. A body that had not all arrived was never written anywhere but a staging file, which
    the blob store has removed on the way here. One line in the log, no traceback."""
    log.warning(
        "shutdown: %s %s answered 503, its body still arriving when the server stopped waiting; "
        "nothing was stored",
        request.scope["method"],
        request.scope["path"],
    )
    return problem(
        503,
        "shutting_down",
        "The server is shutting down and did not wait for the rest of the request body; "
        "nothing was stored. Retry the request.",
        headers={"Connection": "close"},
    )


def _unexpected(_request: Request, exc: Exception) -> Answer:
    log.error("unexpected error", exc_info=exc)
    return problem(500, "internal_error", "The server failed to answer this request.")


HANDLERS: dict[type[Exception], Callable[[Request, Exception], Answer]] = {
    InvalidInput: _invalid_input,
    TrailingSlash: _redirect_without_slash,
    se.StorageError: _storage_error,
    ApiError: _api_error,
    NotFoundException: _not_found,
    MethodNotAllowedException: _wrong_method,
    HTTPException: _http_error,
    ClientGone: _client_gone,
    BodyTimeout: _body_timeout,
    ServerStopping: _server_stopping,
    OperationalError: _database_error,
    DBAPIError: _database_error,
    Exception: _unexpected,
}
