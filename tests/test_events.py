"""GET /store/events, the change feed, against the real app in process.

Every kind of write is made over HTTP and the feed must then hold exactly the events it
documents, with exact payloads (storage/artifacts.py); failed writes must add none. JSON pages
are walked with every page size; the SSE stream is read frame by frame with httpx while other
threads write, across repeated disconnects (Last-Event-ID and `after=`), and from a second
server (an app of its own, with its own notifier) on the same database. Under concurrent
commits the feed must never show a later sequence number before an earlier one has committed:
a poller that follows the feed while 30 creates race must end up with exactly the events read
afterwards.

Every wait is bounded: streams have read timeouts, threads are joined with timeouts, and each
loop has a deadline.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.databases import (
    BACKENDS,
    fresh_database,
)
from tests.support.inprocess import AppServer, start_app

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
JSON = {"accept": "application/json"}
EVENT_KEYS = {"id", "type", "artifact_id", "workflow_id", "phase_id", "created_at", "data"}
SUMMARY_KEYS = (
    "id",
    "workflow_id",
    "phase_id",
    "session_id",
    "artifact_type",
    "title",
    "content_type",
    "content_hash",
    "size_bytes",
    "is_primary_deliverable",
    "created_at",
    "version",
)
TIMEOUT = httpx.Timeout(10.0, read=5.0)  # a stream that says nothing for 5 s fails the test


# -- servers ---------------------------------------------------------------------------------


@dataclass
class Live:
    server: AppServer
    database_url: str
    root: Path

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module", params=BACKENDS)
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("events")
    with fresh_database(root, request.param) as url:
        server = start_app(root / "data", database_url=url)
        try:
            yield Live(server, url, root)
        finally:
            server.stop()


@pytest.fixture(scope="module")
def http(live: Live):
    with live.server.client(timeout=TIMEOUT) as client:
        yield client


# -- writes and what they must say -----------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def create(
    http: httpx.Client,
    workflow_id: str,
    phase_id: str | None = "p1",
    *,
    title: str = "t",
    content: str = "c",
    primary: bool = False,
    derived_from: list[str] | None = None,
) -> str:
    r = http.post(
        "/artifacts",
        json={
            "workflow_id": workflow_id,
            "phase_id": phase_id,
            "artifact_type": "text",
            "title": title,
            "content": content,
            "is_primary_deliverable": primary,
            "derived_from": derived_from or [],
            "session_id": "sess-1",
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def record(http: httpx.Client, artifact_id: str) -> dict[str, Any]:
    r = http.get(f"/artifacts/{artifact_id}", params={"include_content": "false"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def summary(rec: dict[str, Any]) -> dict[str, Any]:
    """What an event says of its artifact, from the API's record of it."""
    return {k: rec[k] for k in SUMMARY_KEYS}


def artifact_event(kind: str, rec: dict[str, Any], **data: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "artifact_id": rec["id"],
        "workflow_id": rec["workflow_id"],
        "phase_id": rec["phase_id"],
        "data": {"artifact": summary(rec), **data},
    }


def deliverable_event(
    workflow_id: str, phase_id: str | None, primary: str | None, previous: str | None
) -> dict[str, Any]:
    return {
        "type": "deliverable.changed",
        "artifact_id": primary or previous,
        "workflow_id": workflow_id,
        "phase_id": phase_id,
        "data": {
            "workflow_id": workflow_id,
            "phase_id": phase_id,
            "primary": primary,
            "previous": previous,
        },
    }


# -- reading the feed ------------------------------------------------------------------------


def page(http: httpx.Client, **params: Any) -> tuple[list[dict[str, Any]], str]:
    r = http.get("/store/events", params=params, headers=JSON)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"events", "next_cursor"}
    for event in body["events"]:
        assert set(event) == EVENT_KEYS
        assert ISO.fullmatch(event["created_at"])
    return body["events"], body["next_cursor"]


def read_all(http: httpx.Client, after: str = "0", **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(1000):
        events, cursor = page(http, after=after, limit=1000, **params)
        if not events:
            assert cursor == after
            return out
        out += events
        after = cursor
    raise AssertionError("the feed did not end")


def head(http: httpx.Client) -> str:
    events = read_all(http)
    return events[-1]["id"] if events else "0"


def strip(event: dict[str, Any]) -> dict[str, Any]:
    """The parts of an event a test can predict exactly (id and created_at checked apart)."""
    return {k: v for k, v in event.items() if k not in ("id", "created_at")}


class Feed:
    """Follows the feed from where it stands; `take()` returns what was added since."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.cursor = head(http)

    def take(self) -> list[dict[str, Any]]:
        events = read_all(self.http, self.cursor)
        ids = [int(e["id"]) for e in events]
        assert ids == list(range(int(self.cursor) + 1, int(self.cursor) + 1 + len(ids)))
        if events:
            self.cursor = events[-1]["id"]
        return events

    def expect(self, *expected: dict[str, Any], at: str | None = None) -> list[dict[str, Any]]:
        events = self.take()
        assert [strip(e) for e in events] == list(expected)
        if at is not None:  # written in one transaction: one clock reading
            assert {e["created_at"] for e in events} == {at}
        return events


# -- SSE -------------------------------------------------------------------------------------


@dataclass
class Frame:
    id: str | None
    event: str | None
    data: str | None
    retry: str | None
    comments: list[str]

    def body(self) -> dict[str, Any]:
        assert self.data is not None
        return dict(json.loads(self.data))


def frames(response: httpx.Response) -> Iterator[Frame]:
    """SSE frames as they arrive (fields per the HTML standard; comments kept apart)."""
    fields: dict[str, str] = {}
    comments: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if fields or comments:
                yield Frame(
                    fields.get("id"),
                    fields.get("event"),
                    fields.get("data"),
                    fields.get("retry"),
                    comments,
                )
            fields, comments = {}, []
            continue
        if line.startswith(":"):
            comments.append(line)
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data" and "data" in fields:
            fields["data"] += "\n" + value
        else:
            fields[name] = value


@contextmanager
def sse(
    client: httpx.Client, headers: dict[str, str] | None = None, **params: Any
) -> Iterator[Iterator[Frame]]:
    """An open stream, past its opening `retry:` frame; yields the event frames."""
    with client.stream("GET", "/store/events", params=params, headers=headers or {}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        stream = frames(r)
        first = next(stream)
        assert (first.retry, first.id, first.data) == ("2000", None, None)
        yield (f for f in stream if not (f.comments and f.data is None))


def as_event(frame: Frame) -> dict[str, Any]:
    body = frame.body()
    assert frame.id == body["id"]
    assert frame.event == body["type"]
    return body


def in_thread(target: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def join(thread: threading.Thread, errors: list[BaseException], timeout: float = 30) -> None:
    thread.join(timeout)
    assert not thread.is_alive(), "thread did not finish in time"
    if errors:
        raise errors[0]


# -- every write kind, exactly -----------------------------------------------------------------


def test_every_write_produces_exactly_its_events(http: httpx.Client) -> None:
    wf = f"wf-ev-{uuid.uuid4().hex[:8]}"
    feed = Feed(http)

    a = create(http, wf, title="A")
    ra = record(http, a)
    feed.expect(artifact_event("artifact.created", ra, derived_from=[]), at=ra["updated_at"])

    b = create(http, wf, title="B", primary=True, derived_from=[a])
    rb = record(http, b)
    feed.expect(
        artifact_event("artifact.created", rb, derived_from=[a]),
        deliverable_event(wf, "p1", b, None),
        at=rb["updated_at"],
    )

    c = create(http, wf, title="C", primary=True)  # demotes B
    rc = record(http, c)
    feed.expect(
        artifact_event("artifact.created", rc, derived_from=[]),
        deliverable_event(wf, "p1", c, b),
        at=rc["updated_at"],
    )
    assert record(http, b)["is_primary_deliverable"] is False

    def put(artifact_id: str, body: dict[str, Any]) -> dict[str, Any]:
        r = http.put(f"/artifacts/{artifact_id}", json=body)
        assert r.status_code == 200, r.text
        return record(http, artifact_id)

    ra = put(a, {"title": "A2"})
    feed.expect(artifact_event("artifact.updated", ra, changed=["title"]), at=ra["updated_at"])
    ra = put(a, {"metadata": {"k": [1, "ü"]}, "title": "A3"})
    feed.expect(artifact_event("artifact.updated", ra, changed=["metadata", "title"]))
    ra = put(a, {"is_primary_deliverable": True})  # promotes A, demotes C
    feed.expect(
        artifact_event("artifact.updated", ra, changed=["is_primary_deliverable"]),
        deliverable_event(wf, "p1", a, c),
        at=ra["updated_at"],
    )
    ra = put(a, {"is_primary_deliverable": True})  # already primary: nothing changes hands
    feed.expect(artifact_event("artifact.updated", ra, changed=["is_primary_deliverable"]))
    ra = put(a, {"is_primary_deliverable": False, "title": "A4"})  # the phase has none now
    feed.expect(
        artifact_event("artifact.updated", ra, changed=["is_primary_deliverable", "title"]),
        deliverable_event(wf, "p1", None, a),
    )
    ra = put(a, {"is_primary_deliverable": False})  # not primary: no deliverable change
    feed.expect(artifact_event("artifact.updated", ra, changed=["is_primary_deliverable"]))

    # uploads: raw and multipart, including the same bytes again
    before = rb["content_hash"]
    data = b"\xff\x00 binary"
    r = http.post(
        f"/artifacts/{b}/upload",
        params={"filename": "b.bin"},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    rb = record(http, b)
    assert rb["content_hash"] == sha(data)
    feed.expect(
        artifact_event("artifact.content_replaced", rb, previous_hash=before, previous_version=1),
        at=rb["updated_at"],
    )
    r = http.post(f"/artifacts/{b}/upload", files={"file": ("b.txt", b"text now", "text/plain")})
    assert r.status_code == 200, r.text
    rb = record(http, b)
    assert (rb["content_type"], rb["size_bytes"]) == ("text/plain", 8)
    feed.expect(
        artifact_event("artifact.content_replaced", rb, previous_hash=sha(data), previous_version=2)
    )
    r = http.post(f"/artifacts/{b}/upload", files={"file": ("b.txt", b"text now", "text/plain")})
    assert r.status_code == 200
    rb = record(http, b)
    feed.expect(
        artifact_event(
            "artifact.content_replaced", rb, previous_hash=sha(b"text now"), previous_version=3
        )
    )

    # a multipart create in the null phase, as its primary; then deletes
    r = http.post(
        "/artifacts",
        data={
            "workflow_id": wf,
            "artifact_type": "other",
            "title": "D",
            "is_primary_deliverable": "true",
            "derived_from": json.dumps([a, b]),
        },
        files={"file": ("d.png", b"\x89PNG...", "image/png")},
    )
    assert r.status_code == 201, r.text
    d = r.json()["id"]
    rd = record(http, d)
    assert rd["phase_id"] is None
    feed.expect(
        artifact_event("artifact.created", rd, derived_from=[a, b]),
        deliverable_event(wf, None, d, None),
        at=rd["updated_at"],
    )
    assert http.delete(f"/artifacts/{d}").status_code == 200
    deleted = feed.expect(
        artifact_event("artifact.deleted", rd), deliverable_event(wf, None, None, d)
    )
    assert deleted[0]["created_at"] == deleted[1]["created_at"] >= rd["updated_at"]
    assert http.delete(f"/artifacts/{b}").status_code == 200
    feed.expect(artifact_event("artifact.deleted", rb))  # not primary: no deliverable change

    # the whole story, filtered to this workflow, is what was seen step by step
    assert len(read_all(http, workflow_id=wf)) == 21


def test_failed_writes_add_no_event(live: Live, http: httpx.Client) -> None:
    wf = f"wf-fail-{uuid.uuid4().hex[:8]}"
    keep = create(http, wf, primary=True)
    gone = create(http, wf, title="gone")
    assert http.delete(f"/artifacts/{gone}").status_code == 200
    feed = Feed(http)
    missing = str(uuid.uuid4())

    def status(r: httpx.Response, code: int, error: str | None = None) -> None:
        assert r.status_code == code, r.text
        if error is not None:
            body = r.json()
            kind = body["code"] if "code" in body else body["detail"][0]["type"]
            assert kind == error, body

    base = {"workflow_id": wf, "artifact_type": "text", "title": "x", "content": "x"}
    status(
        http.post("/artifacts", json={**base, "derived_from": [keep, missing]}),
        422,
        "artifact_not_found",
    )
    status(http.post("/artifacts", json={**base, "derived_from": [gone]}), 422)
    status(http.post("/artifacts", json={**base, "is_primary_deliverable": True, "title": 5}), 422)
    status(
        http.post(
            "/artifacts",
            data={"workflow_id": wf, "artifact_type": "text", "title": "x", "sha256": "0" * 64},
            files={"file": ("f", b"bytes", "text/plain")},
        ),
        422,
        "digest_mismatch",
    )
    status(
        http.post(
            f"/artifacts/{keep}/upload",
            content=b"new bytes",
            headers={"content-type": "text/plain", "x-content-sha256": sha(b"other bytes")},
        ),
        422,
        "digest_mismatch",
    )
    status(http.post(f"/artifacts/{missing}/upload", content=b"x"), 404, "artifact_not_found")
    status(http.post(f"/artifacts/{gone}/upload", content=b"x"), 404, "artifact_not_found")
    status(http.put(f"/artifacts/{missing}", json={"title": "y"}), 404, "artifact_not_found")
    status(http.put(f"/artifacts/{gone}", json={"title": "y"}), 404, "artifact_not_found")
    status(http.put(f"/artifacts/{keep}", json={}), 422)
    status(http.put(f"/artifacts/{keep}", json={"is_primary_deliverable": "maybe"}), 422)
    status(http.delete(f"/artifacts/{missing}"), 404, "artifact_not_found")
    status(http.delete(f"/artifacts/{gone}"), 404, "artifact_not_found")
    assert feed.take() == []
    assert record(http, keep)["is_primary_deliverable"] is True
    listed = http.get("/artifacts", params={"workflow_id": wf}).json()
    assert [a["id"] for a in listed] == [keep]


# -- JSON pages --------------------------------------------------------------------------------


def test_json_pages_walk_the_feed_without_gap_or_repeat(http: httpx.Client) -> None:
    wf = f"wf-pages-{uuid.uuid4().hex[:8]}"
    for n in range(12):
        create(http, wf, f"p{n % 3}", primary=n % 4 == 0, title=f"n{n}")
    everything = read_all(http)
    ids = [int(e["id"]) for e in everything]
    assert ids == list(range(1, len(ids) + 1))  # every seq from 1, none skipped
    assert len(ids) >= 15
    last = str(ids[-1])

    for limit in (1, 2, 7, 1000):
        walked, cursor, pages = [], "0", 0
        while True:
            events, next_cursor = page(http, after=cursor, limit=limit)
            pages += 1
            assert len(events) <= limit
            if not events:
                assert next_cursor == cursor  # an empty page keeps the cursor
                break
            assert next_cursor == events[-1]["id"]
            walked += events
            cursor = next_cursor
            assert pages <= len(everything) + 1
        assert walked == everything
        assert cursor == last

    assert page(http) == page(http, after="0") == page(http, after="")
    assert page(http, after="0005", limit=3) == page(http, after="5", limit=3)
    assert page(http, after="5", limit=3)[1] == "8"
    assert page(http, after=last) == ([], last)
    assert page(http, after="999999999999") == ([], "999999999999")
    assert page(http, after="0007", limit=1000)[0] == everything[7:]
    assert page(http, after="0999999999", limit=5) == ([], "999999999")  # normalised
    # the /api/v1 alias is the same feed
    r = http.get("/api/v1/store/events", params={"after": "3", "limit": 4}, headers=JSON)
    assert r.json() == {"events": everything[3:7], "next_cursor": everything[6]["id"]}


def test_workflow_filter(http: httpx.Client) -> None:
    one, two = f"wf-one-{uuid.uuid4().hex[:6]}", f"wf-two-{uuid.uuid4().hex[:6]}"
    start = head(http)
    mine = []
    for n in range(5):
        mine.append(create(http, one, title=f"one-{n}", primary=n == 2))
        create(http, two, title=f"two-{n}")
    everything = read_all(http, start)
    assert len(everything) == 11
    only = read_all(http, start, workflow_id=one)
    assert only == [e for e in everything if e["workflow_id"] == one]
    assert [e["artifact_id"] for e in only if e["type"] == "artifact.created"] == mine
    # pages of the filtered feed: next_cursor is the last matching event
    events, cursor = page(http, after=start, limit=2, workflow_id=one)
    assert events == only[:2] and cursor == only[1]["id"]
    events, cursor = page(http, after=cursor, limit=2, workflow_id=one)
    assert events == only[2:4] and cursor == only[3]["id"]
    events, cursor = page(http, after=cursor, limit=2, workflow_id=one)
    assert events == only[4:] and cursor == only[-1]["id"]
    assert page(http, after=cursor, limit=2, workflow_id=one) == ([], cursor)
    assert page(http, after=start, workflow_id="no-such-wf") == ([], start)


def validation_body(loc: list[str], value: str) -> dict[str, Any]:
    return {
        "detail": [
            {
                "type": "cursor_invalid",
                "loc": loc,
                "msg": "Not a cursor this service issued",
                "input": value,
            }
        ]
    }


@pytest.mark.parametrize(
    "value", ["abc", "-1", "1.5", "+3", " 1", "1e3", "0x10", "²", "١٢", "9" * 19]
)
def test_bad_cursor_is_422(http: httpx.Client, value: str) -> None:
    for headers in (JSON, {}):  # JSON page and SSE alike, before any stream starts
        r = http.get("/store/events", params={"after": value}, headers=headers)
        assert r.status_code == 422, r.text
        assert r.json() == validation_body(["query", "after"], value)


def test_last_event_id_header(http: httpx.Client) -> None:
    for value in ("abc", "-1", "1.5"):
        for headers in (JSON, {}):
            r = http.get("/store/events", headers={**headers, "last-event-id": value})
            assert r.status_code == 422
            assert r.json() == validation_body(["header", "last-event-id"], value)
    create(http, f"wf-leid-{uuid.uuid4().hex[:6]}")
    create(http, f"wf-leid-{uuid.uuid4().hex[:6]}")
    events = read_all(http)
    second_last = events[-2]["id"]
    r = http.get("/store/events", headers={**JSON, "last-event-id": second_last})
    assert r.json()["events"] == events[-1:]
    # `after` wins over the header (even a malformed one)
    r = http.get("/store/events", params={"after": "1"}, headers={**JSON, "last-event-id": "junk"})
    assert r.status_code == 200
    assert r.json()["events"][0]["id"] == "2"


def test_limit_bounds(http: httpx.Client) -> None:
    for value, ctx, msg, kind in (
        ("0", {"ge": 1}, "Input should be greater than or equal to 1", "greater_than_equal"),
        ("1001", {"le": 1000}, "Input should be less than or equal to 1000", "less_than_equal"),
    ):
        r = http.get("/store/events", params={"limit": value}, headers=JSON)
        assert r.status_code == 422
        assert r.json() == {
            "detail": [
                {"type": kind, "loc": ["query", "limit"], "msg": msg, "input": value, "ctx": ctx}
            ]
        }
    r = http.get("/store/events", params={"limit": "many"}, headers=JSON)
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "int_parsing"


# -- SSE ---------------------------------------------------------------------------------------


def test_sse_replays_then_delivers_live_writes(live: Live, http: httpx.Client) -> None:
    wf = f"wf-sse-{uuid.uuid4().hex[:8]}"
    start = head(http)
    backlog = [create(http, wf, title=f"old-{n}") for n in range(5)]  # 5 events
    done_at: dict[str, float] = {}

    def writer() -> None:
        with live.server.client(timeout=TIMEOUT) as w:
            for n in range(6):
                time.sleep(0.15)
                new = create(w, wf, title=f"live-{n}", primary=n % 2 == 0)
                done_at[new] = time.monotonic()

    got: list[dict[str, Any]] = []
    arrived: dict[str, float] = {}
    with live.server.client(timeout=TIMEOUT) as reader:
        with sse(reader, after=start, limit=2) as stream:  # the backlog in pages of 2
            for _ in range(5):
                got.append(as_event(next(stream)))
            assert [e["artifact_id"] for e in got] == backlog
            thread, errors = in_thread(writer)
            while len(got) < 5 + 9:  # 6 creates, 3 of them primaries (2 events)
                event = as_event(next(stream))
                got.append(event)
                if event["type"] == "artifact.created":
                    arrived[event["artifact_id"]] = time.monotonic()
            join(thread, errors)
    assert got == read_all(http, start)  # the same events, byte for byte, as the JSON feed
    latencies = sorted(arrived[k] - done_at[k] for k in done_at)
    assert len(latencies) == 6
    assert latencies[-1] < 2.0, latencies  # bounded by the 1 s poll at worst
    # woken by the commit itself, not by the poll (which would spread them over 0-1 s)
    assert sum(lat < 0.3 for lat in latencies) >= 5, latencies


def test_sse_workflow_filter(live: Live, http: httpx.Client) -> None:
    one, two = f"wf-f1-{uuid.uuid4().hex[:6]}", f"wf-f2-{uuid.uuid4().hex[:6]}"
    start = head(http)

    def writer() -> None:
        with live.server.client(timeout=TIMEOUT) as w:
            for n in range(4):
                create(w, two, title=f"other-{n}")
                create(w, one, title=f"mine-{n}")

    with live.server.client(timeout=TIMEOUT) as reader:
        with sse(reader, after=start, workflow_id=one) as stream:
            thread, errors = in_thread(writer)
            got = [as_event(next(stream)) for _ in range(4)]
            join(thread, errors)
    assert {e["workflow_id"] for e in got} == {one}
    assert got == read_all(http, start, workflow_id=one)


@pytest.mark.timeout(120)
def test_reconnecting_consumer_sees_every_event_once_in_order(
    live: Live, http: httpx.Client
) -> None:
    """Three writers race while a consumer keeps dropping its stream after a few events and
    resuming from the last id it handled (Last-Event-ID, `after=`, or both)."""
    start = head(http)
    wf = f"wf-reconnect-{uuid.uuid4().hex[:8]}"
    sentinel: dict[str, str] = {}

    def writer(seed: int) -> Callable[[], None]:
        def run() -> None:
            rng = random.Random(seed)
            with live.server.client(timeout=TIMEOUT) as w:
                mine: list[str] = []
                for n in range(12):
                    time.sleep(rng.uniform(0, 0.03))
                    action = rng.random()
                    if mine and action < 0.2:
                        r = w.put(f"/artifacts/{rng.choice(mine)}", json={"title": f"u{n}"})
                        assert r.status_code == 200
                    elif mine and action < 0.3:
                        victim = mine.pop()
                        assert w.delete(f"/artifacts/{victim}").status_code == 200
                    else:
                        phase = f"p{rng.randrange(3)}"
                        mine.append(create(w, wf, phase, primary=rng.random() < 0.3))

        return run

    def writers() -> None:
        threads = [in_thread(writer(seed)) for seed in range(3)]
        for thread, errors in threads:
            join(thread, errors)
        with live.server.client(timeout=TIMEOUT) as w:
            sentinel["id"] = create(w, wf, "end", title="sentinel")

    coordinator, failures = in_thread(writers)
    seen: list[dict[str, Any]] = []
    last = start
    rng = random.Random(7)
    deadline = time.monotonic() + 60
    connections = 0
    with live.server.client(timeout=TIMEOUT) as consumer:
        finished = False
        while not finished:
            assert time.monotonic() < deadline, "the consumer never caught up"
            mode = connections % 3
            connections += 1
            params: dict[str, Any] = {}
            headers: dict[str, str] = {}
            if mode in (0, 2):
                headers["Last-Event-ID"] = last
            if mode in (1, 2):
                params["after"] = last
            if mode == 2:
                headers["Last-Event-ID"] = "0"  # stale: `after` must win
            with sse(consumer, headers, **params) as stream:
                for _ in range(rng.randint(1, 4)):
                    event = as_event(next(stream))
                    seen.append(event)
                    last = event["id"]
                    if event["data"].get("artifact", {}).get("title") == "sentinel":
                        finished = True
                        break
    join(coordinator, failures, 60)
    assert connections > 10
    expected = read_all(http, start)
    assert [e["id"] for e in seen] == [e["id"] for e in expected]
    assert seen == expected
    assert seen[-1]["artifact_id"] == sentinel["id"]


def test_a_second_process_writes_are_streamed(
    live: Live, http: httpx.Client, tmp_path: Path
) -> None:
    """Another server on the same database (SQLite file or PostgreSQL database; an app of its
    own, as another process would be): its commits do not wake this server's notifier, so they
    arrive by the feed's poll (every second)."""
    other = start_app(tmp_path / "other", database_url=live.database_url)
    try:
        wf = f"wf-remote-{uuid.uuid4().hex[:8]}"
        start = head(http)
        written: list[tuple[str, float]] = []

        def writer() -> None:
            with other.client() as w:
                for n in range(3):
                    time.sleep(0.3)
                    written.append((create(w, wf, title=f"remote-{n}"), time.monotonic()))

        with live.server.client(timeout=TIMEOUT) as reader:
            with sse(reader, after=start) as stream:
                thread, errors = in_thread(writer)
                got = []
                for _ in range(3):
                    got.append((as_event(next(stream)), time.monotonic()))
                join(thread, errors)
        assert [e["artifact_id"] for e, _ in got] == [i for i, _ in written]
        for (event, arrived), (_, done) in zip(got, written, strict=True):
            assert event["workflow_id"] == wf
            assert arrived - done < 2.5  # one poll interval and change
        assert [e for e, _ in got] == read_all(http, start)
    finally:
        other.stop()


def run_sql(database_url: str, *statements: str) -> None:
    import asyncio

    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(database_url)

    async def go() -> None:
        conn = await asyncpg.connect(
            host=url.host,
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            database=url.database,
            timeout=10,
        )
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(go())


SLOW_COMMITS = (
    """CREATE FUNCTION test_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.data -> 'artifact' ->> 'title' LIKE 'slow-%' THEN
            PERFORM pg_sleep(0.3);
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE CONSTRAINT TRIGGER test_slow_commit AFTER INSERT ON events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_slow_commit()""",
)
NO_SLOW_COMMITS = (
    "DROP TRIGGER IF EXISTS test_slow_commit ON events",
    "DROP FUNCTION IF EXISTS test_slow_commit()",
)


@contextmanager
def slow_commits(live: Live) -> Iterator[None]:
    """On PostgreSQL, a deferred trigger (test instrumentation in the test's own database)
    makes the commit of every `slow-*` create take 0.3 s after its events have their sequence
    numbers: without commit-ordered numbering, later creates would commit first, every time."""
    if not live.database_url.startswith("postgresql"):
        yield
        return
    run_sql(live.database_url, *SLOW_COMMITS)
    try:
        yield
    finally:
        run_sql(live.database_url, *NO_SLOW_COMMITS)


def test_concurrent_commits_are_seen_in_sequence_order(live: Live, http: httpx.Client) -> None:
    """30 creates race (some promoting primaries in one phase, taking both locks; on
    PostgreSQL some with a slow commit) while a poller follows the feed as fast as it can.
    Were sequence numbers not handed out in commit order, the poller would pass a number
    before its transaction committed and miss it."""
    with slow_commits(live):
        race(live, http)


def race(live: Live, http: httpx.Client) -> None:
    wf = f"wf-race-{uuid.uuid4().hex[:8]}"
    start = head(http)
    barrier = threading.Barrier(30, timeout=20)
    created: list[str] = []
    stop = threading.Event()
    followed: list[dict[str, Any]] = []

    def one(n: int) -> Callable[[], None]:
        def run() -> None:
            with live.server.client(timeout=TIMEOUT) as w:
                barrier.wait()
                title = f"slow-{n}" if n % 10 == 5 else f"r{n}"
                created.append(create(w, wf, f"p{n % 2}", primary=n % 3 == 0, title=title))

        return run

    def poller() -> None:
        cursor = start
        with live.server.client(timeout=TIMEOUT) as p:
            while True:
                done = stop.is_set()
                events, cursor = page(p, after=cursor, limit=1000)
                followed.extend(events)
                if done and not events:
                    return

    poll_thread, poll_errors = in_thread(poller)
    threads = [in_thread(one(n)) for n in range(30)]
    for thread, errors in threads:
        join(thread, errors)
    stop.set()
    join(poll_thread, poll_errors)

    everything = read_all(http)
    seqs = [int(e["id"]) for e in everything]
    assert seqs == list(range(1, len(seqs) + 1))  # strictly increasing, no gap anywhere
    after = read_all(http, start)
    assert followed == after  # nothing was passed over while commits raced
    creates = [e for e in after if e["type"] == "artifact.created"]
    assert sorted(e["artifact_id"] for e in creates) == sorted(created)
    assert len(set(created)) == 30
    assert {e["workflow_id"] for e in after} == {wf}
    primaries = [n for n in range(30) if n % 3 == 0]
    assert sum(e["type"] == "deliverable.changed" for e in after) == len(primaries)
    # each phase's chain of deliverable changes is consistent: each `previous` is the
    # primary named by the one before it
    for phase in ("p0", "p1"):
        changes = [e for e in after if e["type"] == "deliverable.changed"]
        chain = [e["data"] for e in changes if e["phase_id"] == phase]
        assert chain[0]["previous"] is None
        for before, now in itertools.pairwise(chain):
            assert now["previous"] == before["primary"]
        final = http.get(
            "/artifacts",
            params={"workflow_id": wf, "phase_id": phase, "is_primary_deliverable": "true"},
        ).json()
        assert [a["id"] for a in final] == [chain[-1]["primary"]]
