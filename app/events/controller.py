"""GET /store/events: the change feed, as Server-Sent Events or as JSON pages.

Resumable by cursor (`after=`, or the SSE `Last-Event-ID` header a browser sends on reconnect):
events are written in the transaction of the change they describe and numbered in commit order
(storage/events.py), so a consumer that reconnects with its last cursor sees every event once,
in order.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, ClassVar

import msgspec
from litestar import Controller, Request, get
from litestar.types import ASGIApp
from pydantic import Field

from app import params
from app.deps import Service
from app.errors import invalid_cursor
from app.http import Answer, StreamAnswer, encode, encode_user_json, header
from storage.artifacts import ArtifactService
from storage.events import Event, Notifier, read_after
from storage.records import us_to_iso

AnyRequest = Request[Any, Any, Any]
KEEPALIVE_SECONDS = 15.0
POLL_SECONDS = 1.0  # other processes' writes are seen within this
# What the reference's StreamingResponse sent: its headers, then the media type with a charset.
SSE_HEADERS = (
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
    ("content-type", "text/event-stream; charset=utf-8"),
)


class EventParams(params.Params):
    """An event id is up to 18 ASCII digits ("" is the start), documented as a pattern; anything
    else is the 422 cursor_invalid of `_cursor`, at the parameter it came from."""

    HEADERS: ClassVar[frozenset[str]] = frozenset({"last_event_id"})
    after: str | None = None  # the last event id seen; omit for the start
    workflow_id: str | None = None  # only this workflow's events
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    # read only without `after`, which wins
    last_event_id: str | None = Field(None, alias="last-event-id")


class EventBody(msgspec.Struct):
    id: str
    type: str
    artifact_id: str
    workflow_id: str
    phase_id: str | None
    created_at: str
    data: msgspec.Raw


class EventPage(msgspec.Struct):
    events: list[EventBody]
    next_cursor: str


def event_body(event: Event) -> dict[str, Any]:
    return {
        "id": str(event.seq),
        "type": event.type,
        "artifact_id": event.artifact_id,
        "workflow_id": event.workflow_id,
        "phase_id": event.phase_id,
        "created_at": us_to_iso(event.created_at),
        "data": event.data,
    }


def event_struct(event: Event) -> EventBody:
    return EventBody(
        str(event.seq),
        event.type,
        event.artifact_id,
        event.workflow_id,
        event.phase_id,
        us_to_iso(event.created_at),
        encode_user_json(event.data),
    )


def _cursor(value: str | None, loc: tuple[str, str]) -> int:
    if value is None or value == "":
        return 0
    if not (value.isascii() and value.isdigit()) or len(value) > 18:  # isdigit: also '²'
        raise invalid_cursor(value, loc)
    return int(value)


class EventController(Controller):
    path = "/"

    @get(
        "/store/events",
        opt={
            "scope": "artifact:read",
            "statuses": (200, 401, 403, 422, 429, 503),
            "params": EventParams,
        },
    )
    async def events(self, request: AnyRequest, service: Service) -> ASGIApp:
        """`artifact.created`, `artifact.updated`, `artifact.content_replaced`,
        `artifact.deleted` and `deliverable.changed`, in commit order. As JSON: one page and
        its `next_cursor`. As SSE: every event from the cursor on, then new ones as they commit
        (keep-alive comments between)."""
        p = params.parse(request, EventParams)
        start = _cursor(p.after, ("query", "after"))
        if p.after is None and p.last_event_id is not None:
            start = _cursor(p.last_event_id, ("header", "last-event-id"))
        if "application/json" in (header(request, "accept") or ""):
            page = await read_after(
                service.db, start, limit=p.limit, workflow_id=p.workflow_id, tenant=service.tenant
            )
            next_cursor = str(page[-1].seq) if page else str(start)
            return Answer(encode(EventPage([event_struct(e) for e in page], next_cursor)))
        notifier: Notifier = request.app.state.notifier
        stream = _stream(service, notifier, start, p.workflow_id, p.limit)
        return StreamAnswer(stream, 200, SSE_HEADERS, endless=True)  # ends when shutdown begins


async def _stream(
    service: ArtifactService, notifier: Notifier, cursor: int, workflow_id: str | None, limit: int
) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    quiet_since = time.monotonic()
    while True:
        batch = await read_after(
            service.db, cursor, limit=limit, workflow_id=workflow_id, tenant=service.tenant
        )
        for event in batch:
            cursor = event.seq
            data = json.dumps(event_body(event), separators=(",", ":"))
            yield f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()
        if batch:
            quiet_since = time.monotonic()
            if len(batch) == limit:
                continue
        elif time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"
        await notifier.wait(POLL_SECONDS)
