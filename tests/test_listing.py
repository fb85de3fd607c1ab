"""Listing over thousands of rows, against a Python model of them.

One data set per backend (module scope): 3,000 artifacts created in-process through
ArtifactService with a clock that gives runs of rows one and the same microsecond (so the id
tiebreak matters), across workflows, phases, sessions, types, content types and primary flags;
some promoted afterwards, some deleted. Then the same rows are listed through the service and
over HTTP from the app (in process) on the same database, and every answer is compared exactly
with the model: newest first (created_at DESC, id DESC), filters before the limit, cursor pages
that add up to the model's list with no skip and no repeat, deleted rows never.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest

from storage.artifacts import ArtifactService
from storage.blobs import FilesystemBlobStore
from storage.db.engine import Database, sqlite_url
from storage.db.migrate import upgrade
from storage.records import ArtifactChanges, Cursor, ListQuery, NewArtifact, us_to_iso
from tests.support.databases import BACKENDS, POSTGRES_URL, create_pg_database, drop_pg_database
from tests.support.inprocess import AppServer, start_app

N_ROWS = 3_000
WORKERS = 8  # concurrent creates while seeding
N_ARCHIVE = 40  # the oldest rows: their own workflow, phase, session, type and content type
T0 = 1_800_000_000_000_000

WORKFLOWS = ["wf-0", "wf-1", "wf-2", "research-package-v1", "0d8e7d6c-1c43-4a8e-9f5e-1b2d3c4d5e6f"]
PHASES = [None, "discovery", "design", "build", "review"]
SESSIONS = [None, "s1", "s2", "s3", "s4", "s5", "s6"]
TYPES = ["text", "markdown", "code", "research_summary", "json", "design_doc", "url", "other"]
CONTENT_TYPES = ["text/markdown", "application/json", "text/plain", "image/png"]
SUMMARY_KEYS = {
    "id",
    "workflow_id",
    "phase_id",
    "artifact_type",
    "title",
    "size_bytes",
    "created_at",
}
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


class TieClock:
    """Non-decreasing microseconds in runs that share one reading (run lengths cycle through
    RUNS, gaps between runs through GAPS, some of them a single microsecond)."""

    RUNS = (1, 3, 1, 1, 6, 2, 1, 4, 1, 9)
    GAPS = (1, 1_000, 250, 1, 7_000, 13)

    def __init__(self) -> None:
        self.t = T0
        self.k = 0
        self.left = self.RUNS[0]

    def __call__(self) -> int:
        if self.left == 0:
            self.k += 1
            self.t += self.GAPS[self.k % len(self.GAPS)]
            self.left = self.RUNS[self.k % len(self.RUNS)]
        self.left -= 1
        return self.t


@dataclass(frozen=True)
class Row:
    id: str
    workflow_id: str
    phase_id: str | None
    session_id: str | None
    artifact_type: str
    content_type: str
    title: str
    size_bytes: int
    is_primary_deliverable: bool
    created_at: int
    deleted: bool = False

    def matches(self, q: ListQuery) -> bool:
        return (
            not self.deleted
            and all(
                want is None or getattr(self, name) == want
                for name, want in (
                    ("workflow_id", q.workflow_id),
                    ("phase_id", q.phase_id),
                    ("session_id", q.session_id),
                    ("artifact_type", q.artifact_type),
                    ("content_type", q.content_type),
                    ("is_primary_deliverable", q.is_primary_deliverable),
                )
            )
            and (q.created_after is None or self.created_at > q.created_after)
            and (q.created_before is None or self.created_at < q.created_before)
        )


@dataclass
class Seeded:
    url: str
    rows: dict[str, Row]

    def expected(self, q: ListQuery) -> list[str]:
        hits = [r for r in self.rows.values() if r.matches(q)]
        hits.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return [r.id for r in hits]

    @property
    def live(self) -> list[Row]:
        return [r for r in self.rows.values() if not r.deleted]


# -- the data set ----------------------------------------------------------------------------


async def seed(url: str, blob_dir: Path) -> dict[str, Row]:
    """Creates run WORKERS at a time (each create is a durable commit); primaries of one
    (workflow, phase) group take turns, so the model sees them in commit order."""
    rng = random.Random(20261122)
    specs = []
    for i in range(N_ROWS):
        if i < N_ARCHIVE:
            specs.append(("wf-archive", "legacy", "sess-old", "plan", "text/csv", i % 9 == 0))
        else:
            specs.append(
                (
                    rng.choice(WORKFLOWS),
                    rng.choice(PHASES),
                    rng.choice(SESSIONS),
                    rng.choice(TYPES),
                    rng.choice(CONTENT_TYPES),
                    rng.random() < 0.12,
                )
            )
    db = Database(url)
    service = ArtifactService(db, FilesystemBlobStore(blob_dir), clock=TieClock())
    rows: dict[str, Row] = {}
    ids: list[str] = [""] * N_ROWS
    primary_of: dict[tuple[str, str], str] = {}  # the model of the one-primary rule
    group_locks: dict[tuple[str, str], anyio.Lock] = {}

    def promote(row: Row) -> Row:
        group = (row.workflow_id, row.phase_id or "")
        previous = primary_of.get(group)
        if previous is not None and previous != row.id:
            rows[previous] = replace(rows[previous], is_primary_deliverable=False)
        primary_of[group] = row.id
        return replace(row, is_primary_deliverable=True)

    async def create(i: int) -> None:
        workflow, phase, session, kind, ctype, primary = specs[i]
        new = NewArtifact(
            workflow_id=workflow,
            artifact_type=kind,
            title=f"artifact {i}",
            content_type=ctype,
            phase_id=phase,
            session_id=session,
            is_primary_deliverable=primary,
            metadata={"i": i},
        )
        lock = group_locks.setdefault((workflow, phase or ""), anyio.Lock())
        async with lock if primary else nullcontext():
            a = await service.create(new, b"x" * (i % 17 + 1))
            row = Row(
                a.id, workflow, phase, session, kind, ctype, a.title, a.size_bytes, False,
                a.created_at,
            )  # fmt: skip
            rows[a.id] = promote(row) if primary else row
        ids[i] = a.id

    async def run_all(jobs: list[Any]) -> None:
        pending = iter(jobs)

        async def worker() -> None:
            for job in pending:
                await job()

        async with anyio.create_task_group() as tg:
            for _ in range(WORKERS):
                tg.start_soon(worker)

    try:
        for i in range(N_ARCHIVE):  # strictly the oldest rows
            await create(i)
        await run_all([partial(create, i) for i in range(N_ARCHIVE, N_ROWS)])

        for artifact_id in rng.sample(ids, 40):  # promotions after the fact, one at a time
            if not rows[artifact_id].is_primary_deliverable:
                await service.update(artifact_id, ArtifactChanges(is_primary_deliverable=True))
                rows[artifact_id] = promote(rows[artifact_id])
        doomed = set(rng.sample(ids, 240)) | set(list(primary_of.values())[:5]) | {ids[3]}
        await run_all([partial(service.delete, artifact_id) for artifact_id in sorted(doomed)])
        for artifact_id in doomed:
            rows[artifact_id] = replace(rows[artifact_id], deleted=True)
    finally:
        await db.dispose()
    return rows


@pytest.fixture(scope="module", params=BACKENDS)
def seeded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Seeded]:
    tmp = tmp_path_factory.mktemp("listing")
    if request.param == "sqlite":
        url = sqlite_url(tmp / "artifacts.db")
    else:
        assert POSTGRES_URL
        url = create_pg_database(POSTGRES_URL)
    try:
        upgrade(url)
        yield Seeded(url, asyncio.run(seed(url, tmp / "blobs")))
    finally:
        if request.param != "sqlite":
            drop_pg_database(POSTGRES_URL, url)


@pytest.fixture(scope="module")
def server(seeded: Seeded, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    srv = start_app(tmp_path_factory.mktemp("server") / "data", database_url=seeded.url)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def http(server: AppServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@asynccontextmanager
async def open_service(seeded: Seeded, tmp_path: Path) -> AsyncIterator[ArtifactService]:
    db = Database(seeded.url)
    try:
        yield ArtifactService(db, FilesystemBlobStore(tmp_path / "blobs"))
    finally:
        await db.dispose()


def tie_times(seeded: Seeded, size: int) -> list[int]:
    """created_at values shared by at least `size` live rows, oldest first."""
    counts = Counter(r.created_at for r in seeded.live)
    return sorted(t for t, n in counts.items() if n >= size)


def queries(seeded: Seeded) -> list[ListQuery]:
    """Every filter alone, and combinations, including ones that match only old rows."""
    ties = tie_times(seeded, 3)
    mid, late = ties[len(ties) // 2], ties[(len(ties) * 4) // 5]
    qs = [ListQuery()]
    qs += [ListQuery(workflow_id=w) for w in [*WORKFLOWS, "wf-archive", "no-such-workflow"]]
    qs += [ListQuery(phase_id=p) for p in ["discovery", "design", "build", "review", "legacy"]]
    qs += [ListQuery(session_id=s) for s in ["s1", "s4", "sess-old"]]
    qs += [ListQuery(artifact_type=t) for t in [*TYPES, "plan", "readme"]]
    qs += [ListQuery(content_type=c) for c in [*CONTENT_TYPES, "text/csv"]]
    qs += [ListQuery(is_primary_deliverable=True), ListQuery(is_primary_deliverable=False)]
    qs += [
        ListQuery(created_after=mid),
        ListQuery(created_before=mid),
        ListQuery(created_after=mid, created_before=late),
        ListQuery(created_after=mid - 1, created_before=mid + 1),  # exactly one tie run
        ListQuery(created_after=mid, created_before=mid + 1),  # exclusive: nothing
        ListQuery(created_after=late, created_before=mid),
        ListQuery(workflow_id="wf-1", phase_id="design"),
        ListQuery(workflow_id="wf-2", phase_id="build", is_primary_deliverable=True),
        ListQuery(workflow_id="wf-0", is_primary_deliverable=True),
        ListQuery(
            workflow_id="research-package-v1", artifact_type="code", content_type="text/plain"
        ),
        ListQuery(session_id="s3", created_before=late),
        ListQuery(phase_id="review", is_primary_deliverable=False, created_after=mid),
        ListQuery(workflow_id="wf-archive", is_primary_deliverable=True),
        ListQuery(session_id="sess-old", artifact_type="plan", created_before=mid),
        ListQuery(artifact_type="plan", workflow_id="wf-1"),  # nothing
    ]
    return qs


def http_params(q: ListQuery) -> dict[str, str]:
    params: dict[str, str] = {}
    for name in ("workflow_id", "phase_id", "session_id", "artifact_type", "content_type"):
        if getattr(q, name) is not None:
            params[name] = getattr(q, name)
    if q.is_primary_deliverable is not None:
        params["is_primary_deliverable"] = "true" if q.is_primary_deliverable else "false"
    if q.created_after is not None:
        params["created_after"] = us_to_iso(q.created_after)
    if q.created_before is not None:
        params["created_before"] = us_to_iso(q.created_before)
    return params


# -- the data set is what the tests need -----------------------------------------------------


def test_the_data_set_exercises_what_it_should(seeded: Seeded) -> None:
    rows = seeded.rows
    assert len(rows) == N_ROWS
    live = seeded.live
    assert 2_700 <= len(live) <= 2_760
    assert max(Counter(r.created_at for r in live).values()) >= 6
    assert len(tie_times(seeded, 2)) >= 300
    # the archive rows are all older than the 200 newest rows
    newest = set(seeded.expected(ListQuery())[:200])
    archive = [r for r in live if r.workflow_id == "wf-archive"]
    assert len(archive) >= 30 and not newest & {r.id for r in archive}
    # one live primary at most per (workflow, phase); several groups have one
    groups = Counter((r.workflow_id, r.phase_id) for r in live if r.is_primary_deliverable)
    assert set(groups.values()) == {1} and len(groups) >= 20
    # primaries that were demoted, and deleted rows, exist
    assert sum(1 for r in live if not r.is_primary_deliverable) > 2_000
    assert sum(1 for r in rows.values() if r.deleted) >= 240


# -- through the service ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_service_pages_match_the_model(seeded: Seeded, tmp_path: Path) -> None:
    async with open_service(seeded, tmp_path) as service:
        for q in queries(seeded):
            expected = seeded.expected(q)
            for limit in (200, 7):
                page = await service.page(q, limit=limit)
                assert [a.id for a in page.items] == expected[:limit], (q, limit)
                if len(expected) > limit:
                    last = seeded.rows[expected[limit - 1]]
                    assert page.next_cursor == Cursor(last.created_at, last.id)
                else:
                    assert page.next_cursor is None
            walked: list[str] = []
            after = None
            limit = 97 if len(expected) > 500 else 3
            while True:
                page = await service.page(q, limit=limit, after=after)
                assert len(page.items) == limit or page.next_cursor is None
                walked += [a.id for a in page.items]
                if page.next_cursor is None:
                    break
                after = page.next_cursor
            assert walked == expected, q


@pytest.mark.anyio
async def test_service_summaries_carry_the_row(seeded: Seeded, tmp_path: Path) -> None:
    async with open_service(seeded, tmp_path) as service:
        page = await service.page(ListQuery(), limit=200)
    for a in page.items:
        row = seeded.rows[a.id]
        assert (a.workflow_id, a.phase_id, a.session_id, a.artifact_type) == (
            row.workflow_id,
            row.phase_id,
            row.session_id,
            row.artifact_type,
        )
        assert (a.content_type, a.title, a.size_bytes, a.created_at) == (
            row.content_type,
            row.title,
            row.size_bytes,
            row.created_at,
        )
        assert a.is_primary_deliverable is row.is_primary_deliverable


@pytest.mark.anyio
async def test_time_bounds_are_exclusive(seeded: Seeded, tmp_path: Path) -> None:
    t = tie_times(seeded, 4)[3]
    at_t = {r.id for r in seeded.live if r.created_at == t}
    assert len(at_t) >= 4
    async with open_service(seeded, tmp_path) as service:

        async def ids(**bounds: int) -> set[str]:
            return {a.id for a in (await service.page(ListQuery(**bounds), limit=200)).items}

        assert await ids(created_after=t - 1, created_before=t + 1) == at_t
        assert await ids(created_after=t, created_before=t + 1) == set()
        assert await ids(created_after=t - 1, created_before=t) == set()
        after_t = await service.page(ListQuery(created_after=t), limit=200)
        assert at_t.isdisjoint(a.id for a in after_t.items)
        assert all(a.created_at > t for a in after_t.items)
        before_t = await service.page(ListQuery(created_before=t), limit=200)
        assert at_t.isdisjoint(a.id for a in before_t.items)
        assert [a.id for a in before_t.items] == seeded.expected(ListQuery(created_before=t))[:200]


# -- over HTTP -------------------------------------------------------------------------------


def get_page(
    client: httpx.Client, url: str, params: dict[str, Any] | None = None
) -> httpx.Response:
    response = client.get(url, params=params)
    assert response.status_code == 200, response.text
    return response


def next_link(response: httpx.Response) -> str | None:
    link = response.headers.get("link")
    if link is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match, link
    return match.group(1)


def test_http_list_is_a_bare_array_of_summaries(seeded: Seeded, http: httpx.Client) -> None:
    response = get_page(http, "/artifacts")
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, list) and len(body) == 50  # default limit
    expected = seeded.expected(ListQuery())
    assert [item["id"] for item in body] == expected[:50]
    for item in body:
        assert SUMMARY_KEYS <= set(item)
        row = seeded.rows[item["id"]]
        assert {k: item[k] for k in SUMMARY_KEYS} == {
            "id": row.id,
            "workflow_id": row.workflow_id,
            "phase_id": row.phase_id,
            "artifact_type": row.artifact_type,
            "title": row.title,
            "size_bytes": row.size_bytes,
            "created_at": us_to_iso(row.created_at),
        }
        assert ISO.fullmatch(item["created_at"])
        for key, value in (
            ("session_id", row.session_id),
            ("content_type", row.content_type),
            ("is_primary_deliverable", row.is_primary_deliverable),
        ):
            if key in item:
                assert item[key] == value, key
    # the gateway prefix answers the same
    assert get_page(http, "/api/v1/artifacts").json() == body


def test_http_limit_bounds(seeded: Seeded, http: httpx.Client) -> None:
    expected = seeded.expected(ListQuery())
    for limit in (1, 2, 199, 200):
        response = get_page(http, "/artifacts", {"limit": limit})
        assert [i["id"] for i in response.json()] == expected[:limit]
        assert response.headers["x-next-cursor"]
    bad = {
        "0": {
            "type": "greater_than_equal",
            "loc": ["query", "limit"],
            "msg": "Input should be greater than or equal to 1",
            "input": "0",
            "ctx": {"ge": 1},
        },
        "201": {
            "type": "less_than_equal",
            "loc": ["query", "limit"],
            "msg": "Input should be less than or equal to 200",
            "input": "201",
            "ctx": {"le": 200},
        },
        "abc": {
            "type": "int_parsing",
            "loc": ["query", "limit"],
            "msg": "Input should be a valid integer, unable to parse string as an integer",
            "input": "abc",
        },
    }
    for value, detail in bad.items():
        response = http.get("/artifacts", params={"limit": value})
        assert response.status_code == 422, value
        assert response.json() == {"detail": [detail]}
    for value in ("-1", "1000", "1.5"):
        assert http.get("/artifacts", params={"limit": value}).status_code == 422, value


def test_http_filters_apply_before_the_limit(seeded: Seeded, http: httpx.Client) -> None:
    for q in queries(seeded):
        expected = seeded.expected(q)
        for limit in (200, 5):
            response = get_page(http, "/artifacts", {**http_params(q), "limit": limit})
            assert [i["id"] for i in response.json()] == expected[:limit], (q, limit)
            more = len(expected) > limit
            assert ("x-next-cursor" in response.headers) is more, (q, limit)
            assert ("link" in response.headers) is more, (q, limit)
    # old rows are found although all of them are older than the 200 newest
    response = get_page(http, "/artifacts", {"workflow_id": "wf-archive", "limit": 200})
    archive = seeded.expected(ListQuery(workflow_id="wf-archive"))
    assert [i["id"] for i in response.json()] == archive and len(archive) >= 30
    # the type filter is case-insensitive, like artifact_type on create
    response = get_page(http, "/artifacts", {"artifact_type": "PLAN", "limit": 200})
    assert [i["id"] for i in response.json()] == seeded.expected(ListQuery(artifact_type="plan"))


def walk_by_header(http: httpx.Client, params: dict[str, Any]) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        response = get_page(
            http, "/artifacts", {**params, **({"cursor": cursor} if cursor else {})}
        )
        pages.append([i["id"] for i in response.json()])
        cursor = response.headers.get("x-next-cursor")
        if cursor is None:
            assert "link" not in response.headers
            return pages
        assert cursor not in seen, "a cursor came back twice"
        seen.add(cursor)
        assert len(pages) <= N_ROWS


def walk_by_link(http: httpx.Client, start: str, params: dict[str, Any]) -> list[list[str]]:
    pages: list[list[str]] = []
    response = get_page(http, start, params)
    while True:
        pages.append([i["id"] for i in response.json()])
        url = next_link(response)
        if url is None:
            assert "x-next-cursor" not in response.headers
            return pages
        query = parse_qs(urlsplit(url).query)
        assert query["cursor"] == [response.headers["x-next-cursor"]]
        for key, value in params.items():  # the next link keeps the filters and the limit
            assert query[key] == [str(value)], key
        assert urlsplit(url).path == urlsplit(str(response.url)).path
        response = get_page(http, url)
        assert len(pages) <= N_ROWS


def check_walk(pages: list[list[str]], expected: list[str], limit: int) -> None:
    walked = [i for page in pages for i in page]
    assert len(walked) == len(set(walked)), "a row came twice"
    assert walked == expected
    assert all(len(page) == limit for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= limit or expected == []
    assert len(pages) == max(1, -(-len(expected) // limit))


@pytest.mark.parametrize(
    ("filters", "limit"),
    [
        ({}, 200),
        ({}, 37),
        ({"workflow_id": "wf-1"}, 50),
        ({"workflow_id": "wf-archive"}, 4),
        ({"phase_id": "design", "is_primary_deliverable": "false"}, 13),
        ({"is_primary_deliverable": "true"}, 1),
        ({"session_id": "s2", "content_type": "application/json"}, 3),
        ({"artifact_type": "code", "workflow_id": "wf-0"}, 2),
    ],
)
def test_http_cursor_walks_cover_the_model_exactly(
    seeded: Seeded, http: httpx.Client, filters: dict[str, str], limit: int
) -> None:
    q = ListQuery(
        **{k: (v == "true") if k == "is_primary_deliverable" else v for k, v in filters.items()}
    )
    expected = seeded.expected(q)
    assert len(expected) > limit  # so there is something to walk
    params = {**filters, "limit": limit}
    check_walk(walk_by_header(http, params), expected, limit)
    check_walk(walk_by_link(http, "/artifacts", params), expected, limit)


def test_http_walk_with_time_window_and_gateway_prefix(seeded: Seeded, http: httpx.Client) -> None:
    ties = tie_times(seeded, 3)
    q = ListQuery(created_after=ties[10], created_before=ties[-10])
    expected = seeded.expected(q)
    assert len(expected) > 1_000
    params = {**http_params(q), "limit": 111}
    pages = walk_by_link(http, "/api/v1/artifacts", params)
    check_walk(pages, expected, 111)


def test_http_deleted_rows_never_appear(seeded: Seeded, http: httpx.Client) -> None:
    deleted = {r.id for r in seeded.rows.values() if r.deleted}
    walked = {i for page in walk_by_header(http, {"limit": 200}) for i in page}
    assert walked == {r.id for r in seeded.live}
    assert walked.isdisjoint(deleted)
    for artifact_id in sorted(deleted)[:5]:
        assert http.get(f"/artifacts/{artifact_id}").status_code == 404


def test_http_bad_cursor_is_a_422(http: httpx.Client) -> None:
    for cursor in ("nonsense", "djE6MTI6eHl6"):  # the second is base64 of "v1:12:xyz"
        response = http.get("/artifacts", params={"cursor": cursor})
        assert response.status_code == 422, cursor
        assert response.json()["detail"][0]["loc"] == ["query", "cursor"]
