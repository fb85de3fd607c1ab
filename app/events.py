"""GET /events: the change feed, as Server-Sent Events or as JSON pages.

Resumable by cursor (`after=`, or the SSE `Last-Event-ID` header a browser sends on reconnect):
events are written in the transaction of the change they describe and numbered in commit order
(storage/events.py), so a consumer that reconnects with its last cursor sees every event once,
in order.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, WithJsonSchema

from app.artifacts.deps import Service
from app.auth import require
from app.errors import invalid_cursor
from storage.events import Event, Notifier, read_after
from storage.records import us_to_iso

router = APIRouter(tags=["events"])
# An event id: up to 18 ASCII digits ("" is the start). Documented only: anything else keeps the
# 422 cursor_invalid of _cursor below.
EVENT_ID = WithJsonSchema({"type": "string", "pattern": "^[0-9]{0,18}$"})
KEEPALIVE_SECONDS = 15.0
POLL_SECONDS = 1.0  # other processes' writes are seen within this


class EventBody(BaseModel):
    id: str
    type: str
    artifact_id: str
    workflow_id: str
    phase_id: str | None
    created_at: str
    data: dict[str, Any]


class EventPage(BaseModel):
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


def _cursor(value: str | None, loc: tuple[str, str]) -> int:
    if value is None or value == "":
        return 0
    if not (value.isascii() and value.isdigit()) or len(value) > 18:  # isdigit: also '²'
        raise invalid_cursor(value, loc)
    return int(value)


@router.get(
    "/events",
    dependencies=[require("artifact:read")],
    response_model=EventPage,
    summary="The change feed (SSE, or JSON with Accept: application/json)",
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(
    request: Request,
    service: Service,
    after: Annotated[
        str | None, Query(description="the last event id seen; omit for the start"), EVENT_ID
    ] = None,
    workflow_id: str | None = Query(None, description="only this workflow's events"),
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[
        str | None, Header(description="read only without `after`, which wins"), EVENT_ID
    ] = None,
) -> Response:
    """`artifact.created`, `artifact.updated`, `artifact.content_replaced`, `artifact.deleted`
    and `deliverable.changed`, in commit order. As JSON: one page and its `next_cursor`. As SSE:
    every event from the cursor on, then new ones as they commit (keep-alive comments between)."""
    start = _cursor(after, ("query", "after"))
    if after is None and last_event_id is not None:
        start = _cursor(last_event_id, ("header", "last-event-id"))
    if "application/json" in request.headers.get("accept", ""):
        page = await read_after(
            service.db, start, limit=limit, workflow_id=workflow_id, tenant=service.tenant
        )
        next_cursor = str(page[-1].seq) if page else str(start)
        return JSONResponse({"events": [event_body(e) for e in page], "next_cursor": next_cursor})
    notifier: Notifier = request.app.state.notifier
    return StreamingResponse(
        _stream(service, notifier, start, workflow_id, limit),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(
    service: Any, notifier: Notifier, cursor: int, workflow_id: str | None, limit: int
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
