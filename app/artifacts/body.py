"""Reading request bodies with limits, and validating JSON exactly as FastAPI would.

The create route takes JSON or multipart on one path, so it cannot use FastAPI's body
parameters; these helpers reproduce FastAPI's 422 items (json_invalid at ["body", pos], pydantic
errors under "body") so clients see no difference.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from app.errors import ApiError

M = TypeVar("M", bound=BaseModel)


def too_large(limit: int, what: str = "request body") -> ApiError:
    return ApiError(
        413, "payload_too_large", f"The {what} is larger than the limit of {limit} bytes."
    )


def declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to pass `limit` bytes."""
    length = declared_length(request)
    if length is not None and length > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_invalid(position: int, error: str) -> RequestValidationError:
    return RequestValidationError(
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
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _json_invalid(exc.pos, exc.msg) from None
    except UnicodeDecodeError as exc:
        raise _json_invalid(exc.start, "Invalid UTF-8") from None
    except RecursionError:
        raise _json_invalid(0, "Nested too deeply") from None
    except ValueError as exc:
        raise _json_invalid(0, str(exc)) from None


def validate(
    model: type[M], data: Any, context: dict[str, Any], prefix: tuple[str, ...] = ("body",)
) -> M:
    try:
        return model.model_validate(data, from_attributes=True, context=context)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": (*prefix, *err["loc"])} for err in exc.errors(include_url=False)]
        ) from None
