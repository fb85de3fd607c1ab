"""`Idempotency-Key` on every write (IETF draft-ietf-httpapi-idempotency-key-header; Stripe's
practice): the first response of a write that took effect is stored with a fingerprint of its
request, in the write's own transaction; a retry with the same key gets that response again, byte
for byte, with `Idempotent-Replayed: true`.

    same key, same request, first one done     -> the stored response, replayed
    same key, different request                -> 422 idempotency_key_reused
    same key while the first is still running  -> 409 idempotency_request_in_progress, Retry-After
    the first failed (4xx/5xx: nothing written) -> nothing stored; the key is free for a retry

A fingerprint covers what the request means, not how it was framed: the method, the path (with
or without /api/v1), the query, the JSON body as parsed, or a form's fields, file name, file type
and the sha256 of its bytes; so a retry that picks a new multipart boundary is the same request.
Keys live per caller (`caller_scope`) for ARTIFACTS_IDEMPOTENCY_TTL (24 h by default).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import AsyncIterable, Callable
from types import TracebackType
from typing import Annotated, Any, ClassVar, TypeVar

import sqlalchemy as sa
from anyio import CancelScope
from litestar import Request
from pydantic import Field

from app.auth import caller_of
from app.errors import ApiError
from app.http import Answer
from app.params import Params, query_items
from app.urls import escaped_path
from storage.errors import BlobTooLarge
from storage.idempotency import (
    Claimed,
    Completed,
    IdempotencyKeys,
    InProgress,
    StoredResponse,
)

# Declared on every write route (KeyedParams): a malformed key is a 422 at
# ["header", "idempotency-key"].
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[\x20-\x7e]+$")]


class KeyedParams(Params):
    """A write route's parameters: its `Idempotency-Key` header (printable ASCII, 1-255)."""

    HEADERS: ClassVar[frozenset[str]] = frozenset({"idempotency_key"})
    idempotency_key: IdempotencyKey | None = Field(None, alias="idempotency-key")


REPLAYED = "Idempotent-Replayed"
KEPT_HEADERS = ("content-type", "location", "etag")  # the rest a server sets afresh each time

T = TypeVar("T")
Hook = Callable[[sa.Connection, T], None]  # runs inside the write's transaction


def caller_scope(request: Request[Any, Any, Any]) -> str:
    """Whose keys these are: the caller's tenant, so keys never collide across tenants."""
    return caller_of(request).tenant


def canonical(value: Any) -> bytes:
    """JSON with sorted keys and no spaces: equal values give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def fingerprint(
    request: Request[Any, Any, Any], *parts: bytes | str | None, path: str | None = None
) -> str:
    """sha256 of the operation (method, path, query) and what the body means (`parts`).
    `path`: the path the write acts on, when it is not the one sent (an artifact named by an
    id prefix is fingerprinted by its full id, so a retry by prefix or by full id is the same
    request, and a prefix that later matches another artifact is not)."""
    path = escaped_path(path or request.scope["path"]).removeprefix("/api/v1")
    query = sorted(query_items(request))
    items: list[bytes | str | None] = [request.scope["method"], path, canonical(query), *parts]
    h = hashlib.sha256()
    for item in items:
        data = b"\xff" if item is None else item.encode() if isinstance(item, str) else item
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


async def content_sha256(chunks: AsyncIterable[bytes | memoryview], max_bytes: int) -> str:
    """Read a body only to hash it (a retry that will be replayed stores nothing)."""
    h = hashlib.sha256()
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise BlobTooLarge(max_bytes)
        h.update(chunk)
    return h.hexdigest()


class Idempotency:
    """One request's key: `async with idempotent(request) as idem:` around a write route."""

    def __init__(self, request: Request[Any, Any, Any], key: str | None) -> None:
        self.keys: IdempotencyKeys = request.app.state.idempotency
        self.key = key
        self.scope = caller_scope(request)
        self.stored: StoredResponse | None = None  # set when this request is a replay
        self.response: Answer | None = None  # what the write recorded, once it committed
        self._token: str | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def replaying(self) -> bool:
        return self.stored is not None

    async def __aenter__(self) -> Idempotency:
        if self.key is None:
            return self
        begun = await self.keys.begin(self.scope, self.key)
        if isinstance(begun, Completed):
            self.stored = begun.response
        elif isinstance(begun, InProgress):
            seconds = max(1, math.ceil(begun.retry_after_us / 1e6))
            raise ApiError(
                409,
                "idempotency_request_in_progress",
                "A request with this Idempotency-Key is still being processed; retry later.",
                headers={"Retry-After": str(seconds)},
            )
        elif isinstance(begun, Claimed):
            self._token = begun.token
            self._heartbeat = asyncio.create_task(self._beat(begun.token))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        failed = exc_type is not None or self.response is None
        if self._token is not None and self.key is not None and failed:
            # nothing was written (or it rolled back): free the key; a completed row is spared
            with CancelScope(shield=True):  # a client that went away still frees its key
                await self.keys.release(self.scope, self.key, self._token)

    async def _beat(self, token: str) -> None:
        assert self.key is not None
        while True:
            await asyncio.sleep(self.keys.lease_us / 3e6)
            if not await self.keys.heartbeat(self.scope, self.key, token):
                return

    def replay(self, request_fingerprint: str) -> Answer:
        """The stored response, if this retry is the same request as the first."""
        assert self.stored is not None
        if request_fingerprint != self.stored.fingerprint:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "This Idempotency-Key was already used for a different request; "
                "use a new key for a new request.",
            )
        headers = [
            *self.stored.headers,
            ("content-length", str(len(self.stored.body))),
            (REPLAYED, "true"),
        ]
        return Answer(self.stored.body, self.stored.status, headers, media_type=None)

    def recorder(
        self, request_fingerprint: str | Callable[[T], str], render: Callable[[T], Answer]
    ) -> Hook[T] | None:
        """A hook for the write's transaction that renders and records its response (None when
        the request has no key). `request_fingerprint` may need the result (its content hash)."""
        if self.key is None or self._token is None:
            return None
        key, token = self.key, self._token

        def record(conn: sa.Connection, result: T) -> None:
            response = render(result)
            fp = request_fingerprint
            if callable(fp):
                fp = fp(result)
            headers = [
                (n.decode("latin-1"), v.decode("latin-1"))
                for n, v in response.headers
                if n.decode("latin-1") in KEPT_HEADERS
            ]
            stored = StoredResponse(response.status, headers, response.body, fp)
            self.keys.complete(conn, self.scope, key, token, stored)
            self.response = response

        return record

    def respond(self, result: T, render: Callable[[T], Answer]) -> Answer:
        """The response to send: the one recorded in the transaction, or a fresh rendering."""
        return self.response if self.response is not None else render(result)


def idempotent(request: Request[Any, Any, Any], key: str | None) -> Idempotency:
    return Idempotency(request, key)
