"""Reading request bodies with limits, and validating JSON with the contract's 422 items.

The create route takes JSON or multipart on one path, so bodies are read and decoded here:
json_invalid at ["body", pos], `missing` at ["body"] for no body, pydantic's errors under
"body", as the contract's reference (FastAPI) answers them, so clients see no difference.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any, TypeVar

from litestar import Request
from pydantic import BaseModel, ValidationError

from app.deps import settings_of
from app.errors import ApiError, InvalidInput, validation_error
from app.http import header, stream_with_idle_timeout

M = TypeVar("M", bound=BaseModel)


def too_large(limit: int, what: str = "request body") -> ApiError:
    return ApiError(
        413, "payload_too_large", f"The {what} is larger than the limit of {limit} bytes."
    )


def declared_length(request: Request[Any, Any, Any]) -> int | None:
    value = header(request, "content-length")
    return int(value) if value is not None and value.isdigit() else None


async def read_limited(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to pass `limit` bytes (408 if it stalls)."""
    length = declared_length(request)
    if length is not None and length > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream_with_idle_timeout(request, settings_of(request).body_idle_timeout):
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


MAX_JSON_DEPTH = 256  # far below where the JSON encoders and pydantic run out of stack
# A `\uD800`-`\uDFFF` escape, pair first: JSON text may hold lone surrogates, UTF-8 may not.
_SURROGATE_ESCAPES = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """1e400 parses as inf, which no JSON encoder can answer with: refuse it like NaN."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is out of range for a JSON number")
    return value


def too_deep(value: Any, limit: int) -> bool:
    """Whether arrays/objects nest more than `limit` levels (level by level: no recursion)."""
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(limit):
        if not level:
            return False
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
    return bool(level)


def _lone_surrogate_at(body: bytes, data: Any) -> int | None:
    """Where a string holds a lone surrogate (which cannot be stored or answered as UTF-8)."""
    utf8 = json.detect_encoding(body[:4]) == "utf-8"
    if utf8 and _SURROGATE_ESCAPES.search(body) is None:
        return None  # the fast path: no escape that could make one
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        lone = (m.start() for m in _SURROGATE_ESCAPES.finditer(body) if len(m.group()) == 6)
        return next(lone, 0)
    return None


def _json_invalid(position: int, error: str) -> InvalidInput:
    return InvalidInput(
        [
            {
                "type": "json_invalid",
                "loc": ("body", position),
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": error},
            }
        ]
    )


def parse_json(body: bytes) -> Any:
    if not body:
        raise InvalidInput(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        data = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise _json_invalid(exc.pos, exc.msg) from None
    except UnicodeDecodeError as exc:
        raise _json_invalid(exc.start, "Invalid UTF-8") from None
    except RecursionError:
        raise _json_invalid(0, "Nested too deeply") from None
    except ValueError as exc:
        raise _json_invalid(0, str(exc)) from None
    if too_deep(data, MAX_JSON_DEPTH):
        raise _json_invalid(0, "Nested too deeply")
    position = _lone_surrogate_at(body, data)
    if position is not None:
        raise _json_invalid(position, "Lone surrogate in a string (not valid Unicode)")
    return data


def validate(
    model: type[M], data: Any, context: dict[str, Any], prefix: tuple[str, ...] = ("body",)
) -> M:
    try:
        return model.model_validate(data, from_attributes=True, context=context)
    except ValidationError as exc:
        raise InvalidInput(
            [{**err, "loc": (*prefix, *err["loc"])} for err in exc.errors(include_url=False)]
        ) from None


_CONTENT_DIGEST_SHA256 = re.compile(r"(?:^|,)\s*sha-256\s*=\s*:([A-Za-z0-9+/]*={0,2}):", re.I)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def _bad_digest(loc: tuple[str, str], value: str, what: str) -> InvalidInput:
    return validation_error(loc, "digest_invalid", f"Not a valid {what}", value)


def content_digest(request: Request[Any, Any, Any]) -> str | None:
    """The sha-256 of an RFC 9530 `Content-Digest` header, as hex (None when absent)."""
    value = header(request, "content-digest")
    if value is None:
        return None
    match = _CONTENT_DIGEST_SHA256.search(value)
    if match is None:
        raise _bad_digest(("header", "content-digest"), value, "sha-256 Content-Digest")
    try:
        raw = base64.b64decode(match.group(1), validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise _bad_digest(("header", "content-digest"), value, "sha-256 Content-Digest")
    return raw.hex()


def hex_digest(value: str | None, loc: tuple[str, str]) -> str | None:
    """A declared hex sha256 (X-Content-SHA256 header or `sha256` form field), lowercased."""
    if value is None:
        return None
    if _HEX64.fullmatch(value.strip()) is None:
        raise _bad_digest(loc, value, "hex sha256")
    return value.strip().lower()


def one_digest(*declared: str | None) -> str | None:
    """Every digest the client declared must agree; the result is what the bytes must hash to."""
    values = {d for d in declared if d is not None}
    if len(values) > 1:
        raise ApiError(
            422,
            "digest_mismatch",
            "The digests declared for this content disagree; nothing was stored.",
        )
    return values.pop() if values else None
