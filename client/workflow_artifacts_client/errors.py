"""One exception per error the server answers, each carrying its `detail` and `code`.

Every server error is `{"detail": "<sentence>", "code": "<snake_case>"}` (422 input errors carry
a list of items as `detail`); `error_for` picks the class by code first, then by status.
"""

from __future__ import annotations

import json
from typing import Any

import httpx


class ArtifactsError(Exception):
    """Base of every error this package raises."""


class ConfigurationError(ArtifactsError):
    """No server URL, or an unusable one."""


class ConnectionFailed(ArtifactsError):
    """The server could not be reached, or the connection kept dropping, after every retry."""


class ApiError(ArtifactsError):
    """An error answer: `status`, `code` (None for routing errors), `detail` as the server sent
    it (a sentence, or the list of 422 items), and the answer's headers."""

    status: int
    code: str | None
    detail: Any

    def __init__(
        self,
        status: int,
        code: str | None,
        detail: Any,
        headers: httpx.Headers | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or httpx.Headers()
        super().__init__(self.message)

    @property
    def message(self) -> str:
        detail = self.detail
        if isinstance(detail, list):  # 422 items: "loc: msg" each
            parts = []
            for item in detail:
                if isinstance(item, dict):
                    loc = ".".join(str(x) for x in item.get("loc", []))
                    kind = f" [{item['type']}]" if item.get("type") else ""
                    parts.append(f"{loc}: {item.get('msg', '')}{kind}")
                else:
                    parts.append(str(item))
            detail = "; ".join(parts)
        code = f" {self.code}" if self.code else ""
        return f"{self.status}{code}: {detail}"


class BadRequest(ApiError):
    """400: a malformed or incomplete body."""


class Unauthorized(ApiError):
    """401 invalid_api_key."""


class Forbidden(ApiError):
    """403: the key lacks the route's scope, or a signed link is invalid or expired."""


class NotFound(ApiError):
    """404: artifact_not_found, version_not_found, workflow_not_found, import_not_found."""


class Timeout(ApiError):
    """408 request_timeout: the body stalled."""


class Conflict(ApiError):
    """409: ambiguous_artifact_id, idempotency_request_in_progress, import_running, …"""


class AmbiguousId(Conflict):
    """409 ambiguous_artifact_id: the prefix matches several artifacts."""


class PreconditionFailed(ApiError):
    """412: `if_match` names no current version; `current_etag` is the one that is."""

    @property
    def current_etag(self) -> str | None:
        return self.headers.get("etag")


class TooLarge(ApiError):
    """413 payload_too_large; the sentence states the limit."""


class UnsupportedMediaType(ApiError):
    """415."""


class ValidationError(ApiError):
    """422: `detail` is the list of items `{type, loc, msg, input}`, or a sentence."""


class DigestMismatch(ValidationError):
    """The bytes do not hash to the declared sha256: 422 digest_mismatch from the server, or a
    download whose bytes differ from its ETag (raised by the client, status 0)."""


class IdempotencyKeyReused(ValidationError):
    """422 idempotency_key_reused: the same key was used for a different request."""


class RateLimited(ApiError):
    """429, after every retry; `retry_after` in seconds."""

    @property
    def retry_after(self) -> float | None:
        return _seconds(self.headers.get("retry-after"))


class ServerError(ApiError):
    """5xx: blob_corrupt, blob_missing, …"""


class Unavailable(ServerError):
    """503: storage_unavailable, database_unavailable, not_ready, shutting_down, … (after
    every retry)."""


class InsufficientStorage(ServerError):
    """507."""


BY_CODE: dict[str, type[ApiError]] = {
    "ambiguous_artifact_id": AmbiguousId,
    "digest_mismatch": DigestMismatch,
    "idempotency_key_reused": IdempotencyKeyReused,
    "precondition_failed": PreconditionFailed,
    "payload_too_large": TooLarge,
    "rate_limited": RateLimited,
}
BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: Timeout,
    409: Conflict,
    412: PreconditionFailed,
    413: TooLarge,
    415: UnsupportedMediaType,
    422: ValidationError,
    429: RateLimited,
    503: Unavailable,
    507: InsufficientStorage,
}


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_for(response: httpx.Response) -> ApiError:
    """The exception for an error answer (its body must have been read)."""
    code: str | None = None
    detail: Any = response.reason_phrase or f"HTTP {response.status_code}"
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        body = None
        text = response.content[:500].decode("utf-8", "replace").strip()
        if text:
            detail = text
    if isinstance(body, dict):
        detail = body.get("detail", detail)
        if isinstance(body.get("code"), str):
            code = body["code"]
        elif isinstance(detail, list) and detail and isinstance(detail[0], dict):
            code = detail[0].get("type") if detail[0].get("type") == "digest_mismatch" else None
    cls = BY_CODE.get(code or "") or BY_STATUS.get(response.status_code)
    if cls is None:
        cls = ServerError if response.status_code >= 500 else ApiError
    return cls(response.status_code, code, detail, response.headers)
