"""A stateful property test of the whole store: a hypothesis RuleBasedStateMachine drives the real
app over HTTP (in-process: httpx.ASGITransport against create_app, its lifespan entered and left
by hand, a real SQLite file or PostgreSQL database and a real blob directory; nothing mocked)
and keeps a model of what every artifact must hold.

Rules: creates (JSON and multipart, with lineage and the primary flag), content uploads (raw and
multipart) replacing an artifact's bytes, duplicate contents (bytes seen before, possibly of a
deleted or purged artifact), deletes, keyed writes and their retries (the stored response,
replayed), a used key on a different request (422 idempotency_key_reused), a failed keyed
request (its key stays free), garbage collection (grace 0, no retention of deleted artifacts;
replaced versions kept for 0, 1 or 2 hours of the machine's hand-driven clock, or for ever),
time passing (`tick`), several uploads to one artifact at once, two uploads racing with the same
If-Match, restarts on the same data, crash leftovers (orphan blobs, stale staging files, trash)
and a crash inside GC (a blob moved to trash/ while its row survives, then a restart).

Versions (issue 17): the model keeps each artifact's versions (number -> bytes, and the hour
each was replaced) and the version each lineage edge pins. Concurrent uploads all succeed with
consecutive new versions, each holding one upload's bytes, the newest current; of two racing
conditional uploads exactly one wins and the other is 412 with the winner's ETag, storing no
version. GC expires exactly the replaced versions that are older than its retention and pinned
by no live child (a purge takes all of an artifact's versions).

After every step: every live artifact answers GET /artifacts/{id} with the model's metadata and
content_hash = sha256(bytes) and its current version's number, and downloads byte-identical;
the artifact_versions rows are exactly the model's retained versions (so never a pinned one
gone, never a version a loser of an If-Match race or a lost upload made), and every retained
version of a live artifact reads back byte-identical through the storage API's version read
(ArtifactService.get_version + read_bytes), an expired one VersionNotFound; deleted ones
answer 404; each workflow's listing, followed page by page through X-Next-Cursor, is exactly
the model's live set, newest first; fsck --verify-data finds no error. After a GC step: the
artifact rows, blob rows and blob files are exactly what the model says GC keeps (soft-deleted
parents and former primary deliverables stay by design), and fsck has no warning left (only
trash, which start-up empties, may remain until the next restart).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from litestar import Litestar

from app.asgi import create_app
from app.settings import Settings
from storage.artifacts import ArtifactService
from storage.blobs import FilesystemBlobStore
from storage.db.engine import sqlite_url
from storage.db.migrate import upgrade
from storage.db.tables import artifact_versions
from storage.db.tables import artifacts as artifacts_table
from storage.db.tables import blobs as blobs_table
from storage.errors import VersionNotFound
from storage.maintenance import collect_garbage, fsck
from storage.records import now_us
from tests.support.databases import BACKENDS, POSTGRES_URL, create_pg_database, drop_pg_database

WORKFLOWS = ("wf-a", "wf-b")
PHASES = ("p1", "p2")
PAGE = 3  # small pages, so listings paginate
UPLOAD_TYPES = ("application/octet-stream", "text/plain")
HOUR = 3600 * 1_000_000
MAX_HOURS = 200  # how far the machine's clock may run (ticks of 1-3 hours, 25 steps)
# what a GC rule keeps replaced versions for, in model hours: none, some, for ever
RETENTIONS = (0, 1, 2, None)

picks = st.integers(min_value=0, max_value=255)  # an index into a model list, modulo its length


# 0-4 KiB from few choices: a short random run, repeated (hypothesis's choice sequence stays small,
# so long runs neither overrun its buffer nor make shrinking crawl)
def _repeated(unit: st.SearchStrategy[Any], limit: int) -> st.SearchStrategy[Any]:
    return st.builds(lambda u, n: (u * n)[:limit], unit, st.integers(min_value=1, max_value=512))


fresh_bytes = st.one_of(st.binary(max_size=16), _repeated(st.binary(min_size=1, max_size=16), 4096))
# bytes: fresh ones; an int: the bytes of an earlier write (a duplicate), pool[i % len(pool)]
contents = st.one_of(fresh_bytes, picks)
texts = st.one_of(
    st.text(min_size=1, max_size=16), _repeated(st.text(min_size=1, max_size=8), 1024), picks
)
# mostly not: a soft-deleted primary deliverable or parent is never purged, so GC would rarely
# have anything to purge
primaries = st.sampled_from([False, False, True])
parent_picks = st.lists(picks, max_size=2)
# which live artifact an upload or delete picks from: any, or one whose GC treatment differs
# (a parent's old bytes stay referenced by its edges; a deleted primary or parent is kept)
kinds = st.sampled_from(["any", "parent", "primary"])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass
class Record:
    """What the store must hold for one artifact."""

    id: str
    workflow_id: str
    phase_id: str
    title: str
    data: bytes
    content_type: str
    is_text: bool
    primary: bool
    parents: tuple[str, ...]
    created_at: str
    deleted: bool = False
    purged: bool = False  # its row is gone (GC)
    # version number -> bytes, of the versions the store must still hold (the current one, and
    # replaced ones that no GC expired yet), and the model hour each replaced one was replaced at
    versions: dict[int, bytes] = field(default_factory=dict)
    superseded: dict[int, int] = field(default_factory=dict)
    current: int = 1

    def new_version(self, number: int, data: bytes, hour: int) -> None:
        """Version `number` (the next one) becomes current with `data`."""
        assert number == self.current + 1, (number, self.current)
        self.superseded[self.current] = hour
        self.current = number
        self.versions[number] = self.data = data


@dataclass(frozen=True)
class Edge:
    child: str
    parent: str
    parent_digest: str  # the parent's content when the child was created
    parent_version: int  # and its version, which the edge pins while the child is live


@dataclass(frozen=True)
class Req:
    """One HTTP request, re-sendable as is (httpx picks a new multipart boundary each time)."""

    method: str
    url: str
    json: Any = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] | None = None


@dataclass(frozen=True)
class Keyed:
    """A keyed request that succeeded, and the response a retry must get again."""

    key: str
    req: Req
    status: int
    body: bytes
    location: str | None


class Lifespan:
    """The app's lifespan (`app.lifespan()`, what Litestar runs on the ASGI lifespan events),
    held open by a task of its own: it enters an anyio task group (the event emitter's), which
    only the task that entered it may leave, and the machine starts and stops the app in
    separate runner.run() calls, each its own task."""

    def __init__(self, app: Litestar) -> None:
        self.app = app
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _hold(self, started: asyncio.Event) -> None:
        async with self.app.lifespan():
            started.set()
            await self.stop.wait()

    async def __aenter__(self) -> Lifespan:
        started = asyncio.Event()
        self.task = asyncio.create_task(self._hold(started))
        waiting = asyncio.create_task(started.wait())
        await asyncio.wait({self.task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():  # start-up failed: its exception, here
            waiting.cancel()
            self.task.result()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.task is not None
        self.stop.set()
        await self.task


class StoreMachine(RuleBasedStateMachine):
    backend = "sqlite"
    base_dir: Path = Path(tempfile.gettempdir())

    def __init__(self) -> None:
        super().__init__()
        self.data_dir = Path(tempfile.mkdtemp(prefix="machine-", dir=self.base_dir))
        self.pg_url: str | None = None
        if self.backend == "postgresql":
            assert POSTGRES_URL
            self.pg_url = create_pg_database(POSTGRES_URL)
            upgrade(self.pg_url)
        else:
            upgrade(sqlite_url(self.data_dir.resolve() / "artifacts.db"))
        self.runner = asyncio.Runner()
        self.app: Litestar | None = None
        self.life: Lifespan | None = None
        self.client: httpx.AsyncClient | None = None
        self.records: dict[str, Record] = {}
        self.edges: list[Edge] = []
        self.pool: list[bytes] = []  # every content written so far, for duplicates
        self.keyed: list[Keyed] = []
        self.counter = 0
        self.trash_litter: set[str] = set()  # trash files only a restart empties
        # changes since the last GC / restart: a GC with nothing new, or a restart after fewer
        # than three changes, adds little, and hypothesis (which favours the argument-free
        # rules) would spend most steps on them
        self.since_gc = self.since_restart = 0
        # the service's hand-driven clock: real time minus `skew`, which `tick` lowers an hour
        # at a time; GC reads real time, so the gc rule adds the skew of its moment to the
        # retention it passes, and a version replaced h model hours before a GC looks h hours
        # (plus the few real seconds between) old to it; `hour` counts the ticks
        self.hour = self.since_tick = 0
        self.runner.run(self._start())

    def teardown(self) -> None:
        try:
            self.runner.run(self._stop())
        finally:
            self.runner.close()
            if self.pg_url is not None:
                assert POSTGRES_URL
                drop_pg_database(POSTGRES_URL, self.pg_url)
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- the app ------------------------------------------------------------------------------

    async def _start(self) -> None:
        settings = Settings(data_dir=self.data_dir, database_url=self.pg_url, gc_interval=0)
        app = create_app(settings)
        life = Lifespan(app)
        await life.__aenter__()
        self.app, self.life = app, life
        app.state.service.clock = self.clock  # every request's service (one tenant: the same)
        transport = httpx.ASGITransport(app=app)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30)

    async def _stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        if self.life is not None:
            life, self.life, self.app = self.life, None, None
            await life.__aexit__(None, None, None)

    @property
    def service(self) -> ArtifactService:
        assert self.app is not None
        service: ArtifactService = self.app.state.service
        return service

    @property
    def store(self) -> FilesystemBlobStore:
        store = self.service.blobs
        assert isinstance(store, FilesystemBlobStore)
        return store

    async def send(self, req: Req, key: str | None = None) -> httpx.Response:
        assert self.client is not None
        headers = dict(req.headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        return await self.client.request(
            req.method,
            req.url,
            json=req.json,
            data=req.data,
            files=req.files,
            content=req.content,
            headers=headers,
            params=req.params,
        )

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def skew(self) -> int:
        return (MAX_HOURS + 1 - self.hour) * HOUR

    def clock(self) -> int:
        return now_us() - self.skew()

    # -- model helpers --------------------------------------------------------------------------

    def next_key(self) -> str:
        self.counter += 1
        return f"key-{self.counter}"

    def live(self) -> list[Record]:
        return [r for r in self.records.values() if not r.deleted]

    def pick_live(self, pick: int, kind: str) -> Record:
        """live[pick], among the parents or the primaries when kind says so and there are any."""
        live = self.live()
        parents = {e.parent for e in self.edges}
        among = {
            "any": live,
            "parent": [r for r in live if r.id in parents],
            "primary": [r for r in live if r.primary],
        }[kind] or live
        return among[pick % len(among)]

    def gone(self) -> list[Record]:
        return [r for r in self.records.values() if r.deleted]

    def bytes_of(self, choice: bytes | int) -> bytes:
        if isinstance(choice, int):
            return self.pool[choice % len(self.pool)] if self.pool else b"dup-of-nothing"
        return choice

    def text_of(self, choice: str | int) -> str:
        if isinstance(choice, int):
            texts = [t for t in map(utf8, self.pool) if t]
            return texts[choice % len(texts)] if texts else "dup-of-nothing"
        return choice

    def parents_of(self, choices: list[int]) -> tuple[str, ...]:
        live = self.live()
        if not live:
            return ()
        return tuple(dict.fromkeys(live[i % len(live)].id for i in choices))

    def changed(self) -> None:
        self.since_gc += 1
        self.since_restart += 1
        self.since_tick += 1

    def remember(self, data: bytes) -> None:
        if data not in self.pool:
            self.pool.append(data)

    def kept_rows(self) -> set[str]:
        return {r.id for r in self.records.values() if not r.purged}

    def expected_digests(self) -> set[str]:
        """The blobs GC must keep: every remaining row's content and every remaining edge's."""
        rows = self.kept_rows()
        digests = {sha(d) for i in rows for d in self.records[i].versions.values()}
        return digests | {e.parent_digest for e in self.edges if e.child in rows}

    def pinned(self) -> set[tuple[str, int]]:
        """(artifact, version) pairs a live child's edge pins: no retention may expire them."""
        live = {r.id for r in self.live()}
        return {(e.parent, e.parent_version) for e in self.edges if e.child in live}

    def expire(self, retention: int | None) -> int:
        """The replaced versions a GC with `retention` (model hours; None: for ever) expires,
        after its purge: replaced at least `retention` model hours ago (0: all of them), pinned
        by no live child (a deleted one pins nothing).
        Returns how many."""
        if retention is None:
            return 0
        pinned, gone = self.pinned(), 0
        for rec in self.records.values():
            if rec.purged:
                continue
            for n in [n for n in rec.versions if n != rec.current]:
                if (rec.id, n) not in pinned and self.hour - rec.superseded[n] >= retention:
                    del rec.versions[n]
                    gone += 1
        return gone

    # -- creates --------------------------------------------------------------------------------

    async def _create(
        self, req: Req, key: str | None, rec: Record, *, check_fresh: bool = True
    ) -> None:
        resp = await self.send(req, key)
        assert resp.status_code == 201, resp.text
        assert "idempotent-replayed" not in resp.headers
        body = resp.json()
        assert body["status"] == "created"
        assert (body["content_hash"], body["size_bytes"]) == (sha(rec.data), len(rec.data))
        assert body["id"] not in self.records, "a create returned an existing id"
        rec = replace(rec, id=body["id"], created_at=body["created_at"])
        assert resp.headers["location"].endswith(f"/artifacts/{rec.id}")
        if rec.primary:  # at most one live primary per (workflow, phase): the previous demoted
            for other in self.live():
                if (other.workflow_id, other.phase_id) == (rec.workflow_id, rec.phase_id):
                    other.primary = False
        rec.versions = {1: rec.data}
        for parent in rec.parents:
            p = self.records[parent]
            self.edges.append(Edge(rec.id, parent, sha(p.data), p.current))
        self.records[rec.id] = rec
        self.remember(rec.data)
        self.changed()
        if key is not None:
            self.keyed.append(
                Keyed(key, req, resp.status_code, resp.content, resp.headers.get("location"))
            )

    def _json_create(
        self, workflow: str, phase: str, text: str, primary: bool, parents: tuple[str, ...]
    ) -> tuple[Req, Record]:
        self.counter += 1
        title = f"json-{self.counter}"
        payload: dict[str, Any] = {
            "workflow_id": workflow,
            "phase_id": phase,
            "artifact_type": "markdown",
            "title": title,
            "content": text,
            "is_primary_deliverable": primary,
        }
        if parents:
            payload["derived_from"] = list(parents)
        rec = Record(
            "", workflow, phase, title, text.encode(), "text/markdown", True, primary, parents, ""
        )
        return Req("POST", "/artifacts", json=payload), rec

    def _form_create(
        self,
        workflow: str,
        phase: str,
        data: bytes,
        ctype: str,
        primary: bool,
        parents: tuple[str, ...],
    ) -> tuple[Req, Record]:
        self.counter += 1
        title = f"form-{self.counter}"
        fields = {
            "workflow_id": workflow,
            "phase_id": phase,
            "artifact_type": "other",
            "title": title,
            "is_primary_deliverable": "true" if primary else "false",
        }
        if parents:
            fields["derived_from"] = json.dumps(list(parents))
        files = {"file": (f"{title}.bin", data, ctype)}
        text = ctype.startswith("text/")
        rec = Record("", workflow, phase, title, data, ctype, text, primary, parents, "")
        return Req("POST", "/artifacts", data=fields, files=files), rec

    @initialize(
        seeds=st.lists(
            st.tuples(st.sampled_from(WORKFLOWS), st.sampled_from(PHASES), fresh_bytes),
            min_size=1,
            max_size=5,
        )
    )
    def seed(self, seeds: list[tuple[str, str, bytes]]) -> None:
        """A few artifacts to start from (JSON when the bytes are text, else multipart)."""
        for workflow, phase, data in seeds:
            text = utf8(data)
            if text:
                req, rec = self._json_create(workflow, phase, text, False, ())
            else:
                req, rec = self._form_create(workflow, phase, data, UPLOAD_TYPES[0], False, ())
            self.run(self._create(req, None, rec))

    @rule(
        workflow=st.sampled_from(WORKFLOWS),
        phase=st.sampled_from(PHASES),
        text=texts,
        primary=primaries,
        parents=parent_picks,
        keyed=st.booleans(),
    )
    def create_json(
        self,
        workflow: str,
        phase: str,
        text: str | int,
        primary: bool,
        parents: list[int],
        keyed: bool,
    ) -> None:
        req, rec = self._json_create(
            workflow, phase, self.text_of(text), primary, self.parents_of(parents)
        )
        self.run(self._create(req, self.next_key() if keyed else None, rec))

    @rule(
        workflow=st.sampled_from(WORKFLOWS),
        phase=st.sampled_from(PHASES),
        content=contents,
        ctype=st.sampled_from(UPLOAD_TYPES),
        primary=primaries,
        parents=parent_picks,
        keyed=st.booleans(),
    )
    def create_multipart(
        self,
        workflow: str,
        phase: str,
        content: bytes | int,
        ctype: str,
        primary: bool,
        parents: list[int],
        keyed: bool,
    ) -> None:
        req, rec = self._form_create(
            workflow, phase, self.bytes_of(content), ctype, primary, self.parents_of(parents)
        )
        self.run(self._create(req, self.next_key() if keyed else None, rec))

    @precondition(lambda self: self.pool)
    @rule(
        workflow=st.sampled_from(WORKFLOWS),
        phase=st.sampled_from(PHASES),
        pick=picks,
        as_json=st.booleans(),
        primary=primaries,
        parents=parent_picks,
        keyed=st.booleans(),
    )
    def create_duplicate(
        self,
        workflow: str,
        phase: str,
        pick: int,
        as_json: bool,
        primary: bool,
        parents: list[int],
        keyed: bool,
    ) -> None:
        """A create with bytes written before (maybe of a deleted or purged artifact)."""
        data = self.pool[pick % len(self.pool)]
        text = utf8(data)
        derived = self.parents_of(parents)
        if as_json and text:
            req, rec = self._json_create(workflow, phase, text, primary, derived)
        else:
            req, rec = self._form_create(workflow, phase, data, UPLOAD_TYPES[1], primary, derived)
        self.run(self._create(req, self.next_key() if keyed else None, rec))

    # -- uploads --------------------------------------------------------------------------------

    def _upload_req(self, artifact_id: str, data: bytes, ctype: str, raw: bool) -> Req:
        url = f"/artifacts/{artifact_id}/upload"
        if raw:
            return Req("POST", url, content=data, headers={"content-type": ctype})
        return Req("POST", url, files={"file": ("upload.bin", data, ctype)})

    @precondition(lambda self: self.live())
    @rule(
        pick=picks,
        kind=kinds,
        content=contents,
        ctype=st.sampled_from(UPLOAD_TYPES),
        raw=st.booleans(),
        keyed=st.booleans(),
    )
    def upload(
        self, pick: int, kind: str, content: bytes | int, ctype: str, raw: bool, keyed: bool
    ) -> None:
        rec = self.pick_live(pick, kind)
        key = self.next_key() if keyed else None
        self.run(self._upload(rec, self.bytes_of(content), ctype, raw, key))

    async def _upload(
        self, rec: Record, data: bytes, ctype: str, raw: bool, key: str | None
    ) -> None:
        req = self._upload_req(rec.id, data, ctype, raw)
        resp = await self.send(req, key)
        assert resp.status_code == 200, resp.text
        assert "idempotent-replayed" not in resp.headers
        body = resp.json()
        assert (body["artifact_id"], body["status"]) == (rec.id, "uploaded")
        assert (body["content_hash"], body["size_bytes"]) == (sha(data), len(data))
        assert body["content_type"] == ctype
        assert body["version"] == rec.current + 1, "an upload skipped or reused a version number"
        rec.new_version(body["version"], data, self.hour)
        rec.content_type, rec.is_text = ctype, ctype.startswith("text/")
        self.remember(data)
        self.changed()
        if key is not None:
            self.keyed.append(Keyed(key, req, 200, resp.content, None))

    @precondition(lambda self: self.live())
    @rule(pick=picks, child=fresh_bytes, content=fresh_bytes)
    def derive_then_revise(self, pick: int, child: bytes, content: bytes) -> None:
        """A child of a live artifact, then new bytes for the parent: the parent's old bytes
        stay referenced by the child's lineage edge, so GC must keep them."""
        live = self.live()
        parent = live[pick % len(live)]
        req, rec = self._form_create(
            parent.workflow_id, parent.phase_id, child, UPLOAD_TYPES[0], False, (parent.id,)
        )

        async def go() -> None:
            await self._create(req, None, rec)
            await self._upload(parent, content, UPLOAD_TYPES[0], True, None)

        self.run(go())

    @precondition(lambda self: self.live())
    @rule(
        pick=picks,
        kind=kinds,
        uploads=st.lists(st.tuples(contents, st.booleans()), min_size=2, max_size=4),
    )
    def concurrent_uploads(
        self, pick: int, kind: str, uploads: list[tuple[bytes | int, bool]]
    ) -> None:
        """Several uploads to one artifact at once (no If-Match): every one succeeds, their
        versions are the next ones, consecutive, each with the bytes of one of them, and the
        newest is current."""
        rec = self.pick_live(pick, kind)
        sent = [(self.bytes_of(c), UPLOAD_TYPES[i % 2], raw) for i, (c, raw) in enumerate(uploads)]

        async def go() -> None:
            reqs = [self._upload_req(rec.id, data, ctype, raw) for data, ctype, raw in sent]
            resps = await asyncio.gather(*(self.send(req) for req in reqs))
            made: dict[int, tuple[bytes, str]] = {}
            for (data, ctype, _), resp in zip(sent, resps, strict=True):
                assert resp.status_code == 200, resp.text
                body = resp.json()
                assert (body["artifact_id"], body["content_hash"]) == (rec.id, sha(data))
                assert body["version"] not in made, "two uploads made the same version"
                made[body["version"]] = (data, ctype)
            first = rec.current + 1
            assert sorted(made) == list(range(first, first + len(sent))), (rec.current, made)
            for number in sorted(made):
                data, ctype = made[number]
                rec.new_version(number, data, self.hour)
                rec.content_type, rec.is_text = ctype, ctype.startswith("text/")
                self.remember(data)
            self.changed()

        self.run(go())

    @precondition(lambda self: self.live())
    @rule(
        pick=picks,
        kind=kinds,
        first=fresh_bytes,
        second=st.one_of(st.none(), contents),  # None: the same bytes as the first
        raw=st.booleans(),
        listed=st.booleans(),
    )
    def if_match_race(
        self,
        pick: int,
        kind: str,
        first: bytes,
        second: bytes | int | None,
        raw: bool,
        listed: bool,
    ) -> None:
        """Two uploads with the same If-Match (the current ETag, alone or in a list), at once,
        with bytes other than the current ones (maybe the same as each other): exactly one
        succeeds and makes the next version; the other answers 412 precondition_failed with
        the winner's ETag and stores nothing (no version: the invariant counts them)."""
        rec = self.pick_live(pick, kind)
        etag = f'"{sha(rec.data)}"'
        if listed:
            etag = f'"{"0" * 64}", {etag}'
        other = first if second is None else self.bytes_of(second)
        datas = [d + b"!" if d == rec.data else d for d in (first, other)]

        async def go() -> None:
            reqs = [
                replace(r, headers={**r.headers, "if-match": etag})
                for r in (self._upload_req(rec.id, d, UPLOAD_TYPES[0], raw) for d in datas)
            ]
            resps = await asyncio.gather(*(self.send(req) for req in reqs))
            codes = sorted(r.status_code for r in resps)
            assert codes == [200, 412], [r.text for r in resps]
            won = 0 if resps[0].status_code == 200 else 1
            winner, loser = resps[won], resps[1 - won]
            body = winner.json()
            assert body["content_hash"] == sha(datas[won])
            assert body["version"] == rec.current + 1
            assert loser.json()["code"] == "precondition_failed"
            assert loser.headers["etag"] == f'"{sha(datas[won])}"'
            rec.new_version(body["version"], datas[won], self.hour)
            rec.content_type, rec.is_text = UPLOAD_TYPES[0], False
            self.remember(datas[won])
            self.changed()

        self.run(go())

    @precondition(lambda self: self.since_tick >= 1 and self.hour + 3 <= MAX_HOURS)
    @rule(hours=st.integers(min_value=1, max_value=3))
    def tick(self, hours: int) -> None:
        """Time passes (the service's clock): versions replaced before look `hours` older."""
        self.hour += hours
        self.since_tick = 0

    # -- deletes --------------------------------------------------------------------------------

    @precondition(lambda self: self.live())
    @rule(pick=picks, kind=kinds, keyed=st.booleans())
    def delete(self, pick: int, kind: str, keyed: bool) -> None:
        rec = self.pick_live(pick, kind)
        req = Req("DELETE", f"/artifacts/{rec.id}")
        key = self.next_key() if keyed else None

        async def go() -> None:
            resp = await self.send(req, key)
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"artifact_id": rec.id, "status": "deleted"}
            rec.deleted = True
            self.changed()
            if key is not None:
                self.keyed.append(Keyed(key, req, 200, resp.content, None))

        self.run(go())

    @precondition(lambda self: self.gone())
    @rule(
        pick=picks,
        how=st.sampled_from(["delete", "upload"]),
        keyed=st.booleans(),
        text=st.text(min_size=1, max_size=16),
    )
    def write_to_missing(self, pick: int, how: str, keyed: bool, text: str) -> None:
        """A write to a deleted artifact answers 404 and changes nothing; a
        failed keyed request stores nothing, so its key then serves a new request."""
        gone = self.gone()
        target = gone[pick % len(gone)].id
        if how == "delete":
            req = Req("DELETE", f"/artifacts/{target}")
        else:
            req = self._upload_req(target, b"never stored", "application/octet-stream", raw=True)
        key = self.next_key() if keyed else None

        async def go() -> None:
            resp = await self.send(req, key)
            assert resp.status_code == 404, resp.text
            assert resp.json()["code"] == "artifact_not_found"
            if key is not None:
                again, rec = self._json_create(WORKFLOWS[0], PHASES[0], text, False, ())
                await self._create(again, key, rec)

        self.run(go())

    # -- idempotency keys -------------------------------------------------------------------------

    @precondition(lambda self: self.keyed)
    @rule(pick=picks)
    def retry_keyed(self, pick: int) -> None:
        """The same request with the same key: the first response again, nothing written."""
        sent = self.keyed[pick % len(self.keyed)]

        async def go() -> None:
            resp = await self.send(sent.req, sent.key)
            assert resp.status_code == sent.status, resp.text
            assert resp.content == sent.body
            assert resp.headers.get("idempotent-replayed") == "true"
            assert resp.headers.get("location") == sent.location

        self.run(go())

    @precondition(lambda self: self.keyed)
    @rule(pick=picks, how=st.sampled_from(["mutate", "create", "delete_live"]), other=picks)
    def reuse_key_differently(self, pick: int, how: str, other: int) -> None:
        """A used key on a different request: 422 idempotency_key_reused, nothing written."""
        sent = self.keyed[pick % len(self.keyed)]
        live = self.live()
        req: Req
        if how == "delete_live" and live:
            req = Req("DELETE", f"/artifacts/{live[other % len(live)].id}")
        elif how == "mutate":
            old = sent.req
            if old.json is not None:
                req = replace(old, json={**old.json, "title": old.json["title"] + " (2)"})
            elif old.files is not None:
                name, data, ctype = old.files["file"]
                req = replace(old, files={"file": (name, data + b"!", ctype)})
            elif old.content is not None:
                req = replace(old, content=old.content + b"!")
            else:  # a DELETE: the same one with another query
                req = replace(old, params={"again": "1"})
        else:
            req, _ = self._json_create(WORKFLOWS[1], PHASES[1], "another request", False, ())

        async def go() -> None:
            resp = await self.send(req, sent.key)
            assert resp.status_code == 422, resp.text
            assert resp.json()["code"] == "idempotency_key_reused"
            assert "idempotent-replayed" not in resp.headers

        self.run(go())

    # -- maintenance ----------------------------------------------------------------------------

    @precondition(lambda self: self.since_gc >= 1)
    @rule()
    def gc(self) -> None:
        """GC keeping no replaced version (see _gc)."""
        self._gc(0)

    @precondition(lambda self: self.since_gc >= 1)
    @rule(retention=st.sampled_from(RETENTIONS[1:]))
    def gc_retaining(self, retention: int | None) -> None:
        """GC keeping replaced versions some hours, or for ever (a rule of its own: hypothesis
        then picks it as often as `gc`, where a sampled argument mostly came out as 0)."""
        self._gc(retention)

    def _gc(self, retention: int | None) -> None:
        """GC with no grace, no retention of deleted artifacts, and replaced versions kept
        `retention` model hours (0: none; None: for ever): reclaims exactly what the model says
        is garbage, and expires exactly the replaced versions it says, never a pinned one.
        (A retention of k hours is passed as k - 1/2, so that the few real seconds between a
        write and the GC never decide anything.)"""
        retention_us = None
        if retention is not None:  # GC counts from real time: the clock's skew added
            retention_us = max(0, retention * HOUR - HOUR // 2) + self.skew()

        async def go() -> None:
            db, store = self.service.db, self.store
            report = await collect_garbage(
                db, store, grace_us=0, deleted_retention_us=0, version_retention_us=retention_us
            )
            purged = self._purge()
            assert sorted(report.artifacts_purged) == sorted(purged)
            assert report.versions_expired == self.expire(retention)
            assert not report.dry_run
            rows, blob_rows = await db.run_read(
                lambda conn: (
                    set(conn.execute(sa.select(artifacts_table.c.id)).scalars()),
                    set(conn.execute(sa.select(blobs_table.c.digest)).scalars()),
                )
            )
            assert rows == self.kept_rows()
            expected = self.expected_digests()
            assert blob_rows == expected
            assert {d for d, _, _ in await store.scan_blobs()} == expected
            assert await store.scan_dir("tmp") == []
            check = await fsck(db, store, verify_data=True)
            assert check.errors == []
            litter = [{"problem": "trash_leftover", "name": n} for n in sorted(self.trash_litter)]
            assert sorted(check.warnings, key=str) == sorted(litter, key=str)

        self.run(go())
        self.since_gc = 0
        self.since_restart += 1

    def _purge(self) -> list[str]:
        """Soft-deleted rows GC purges: leaves first, never a parent of a remaining row nor a
        (former) primary deliverable; returns the ids purged now."""
        purged: list[str] = []
        while True:
            rows = self.kept_rows()
            parents = {e.parent for e in self.edges if e.child in rows}
            now = [
                r
                for r in self.records.values()
                if r.deleted and not r.purged and not r.primary and r.id not in parents
            ]
            if not now:
                return purged
            for r in now:
                r.purged = True
                purged.append(r.id)

    @precondition(lambda self: self.since_restart >= 3)
    @rule()
    def restart(self) -> None:
        """Shut the app down and start a new one on the same blob directory and database."""
        self.run(self._stop())
        self.trash_litter.clear()  # start-up empties trash whose row is gone
        self.run(self._start())
        self.since_restart = 0

    @rule(kind=st.sampled_from(["orphan_blob", "staging", "trash"]), data=fresh_bytes)
    def crash_leftovers(self, kind: str, data: bytes) -> None:
        """What a crash leaves behind: a blob whose row never committed, a staging file, a
        trashed blob whose row was deleted. None of it may touch a live artifact."""
        self.counter += 1
        self.changed()
        if kind == "orphan_blob":
            self.run(self.store.put_bytes(data))  # no row: GC's to reclaim
        elif kind == "staging":
            (self.store.tmp_dir / f"put-crashed{self.counter:04d}").write_bytes(data)
        else:
            orphan = b"trashed %d " % self.counter + data
            trash = self.store.root / "trash"
            trash.mkdir(exist_ok=True)
            (trash / sha(orphan)).write_bytes(orphan)
            self.trash_litter.add(sha(orphan))

    @precondition(lambda self: self.live() and self.since_restart >= 3)
    @rule(pick=picks)
    def crash_in_gc_then_restart(self, pick: int) -> None:
        """A crash between GC's move to trash/ and its row delete: start-up puts the blob back."""
        live = self.live()
        digest = sha(live[pick % len(live)].data)
        assert self.run(self.store.to_trash(digest))
        self.restart()

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        self.run(self._check())

    async def _check(self) -> None:
        assert self.client is not None
        for workflow in WORKFLOWS:
            await self._check_listing(workflow)
        for rec in self.records.values():
            await self._check_record(rec)
        await self._check_versions()
        report = await fsck(self.service.db, self.store, verify_data=True)
        assert report.errors == []

    async def _check_versions(self) -> None:
        """The version rows are exactly the model's (no version lost, none extra, none changed,
        every pinned one there), and every version of a live artifact reads back byte-identical
        through the storage API (those expired: VersionNotFound)."""
        v = artifact_versions.c
        query = sa.select(v.artifact_id, v.version, v.content_hash)
        rows = await self.service.db.run_read(lambda conn: conn.execute(query).all())
        found = {(r.artifact_id, r.version): r.content_hash for r in rows}
        kept = [r for r in self.records.values() if not r.purged]
        assert found == {(r.id, n): sha(d) for r in kept for n, d in r.versions.items()}
        for parent, number in self.pinned():
            assert (parent, number) in found, f"version {number} of {parent}, pinned, is gone"
        for rec in self.live():
            for number in range(1, rec.current + 1):
                if number not in rec.versions:
                    with pytest.raises(VersionNotFound):
                        await self.service.get_version(rec.id, number)
                    continue
                at, version = await self.service.get_version(rec.id, number)
                assert (version.version, version.content_hash) == (
                    number,
                    sha(rec.versions[number]),
                )
                assert (version.superseded_at is None) == (number == rec.current)
                assert await self.service.read_bytes(at) == rec.versions[number]

    async def _check_record(self, rec: Record) -> None:
        assert self.client is not None
        resp = await self.client.get(f"/artifacts/{rec.id}")
        if rec.deleted:
            assert resp.status_code == 404, resp.text
            assert resp.json()["code"] == "artifact_not_found"
            return
        assert resp.status_code == 200, resp.text
        body = resp.json()
        expected = {
            "id": rec.id,
            "workflow_id": rec.workflow_id,
            "phase_id": rec.phase_id,
            "title": rec.title,
            "content_hash": sha(rec.data),
            "size_bytes": len(rec.data),
            "content_type": rec.content_type,
            "is_primary_deliverable": rec.primary,
            "derived_from": list(rec.parents),
            "created_at": rec.created_at,
            "content": utf8(rec.data) if rec.is_text else None,
            "version": rec.current,
        }
        assert {k: body[k] for k in expected} == expected
        download = await self.client.get(f"/artifacts/{rec.id}/download")
        assert download.status_code == 200, download.text
        assert download.content == rec.data
        assert download.headers["etag"] == f'"{sha(rec.data)}"'

    async def _check_listing(self, workflow: str) -> None:
        assert self.client is not None
        seen: list[dict[str, Any]] = []
        params: dict[str, Any] = {"workflow_id": workflow, "limit": PAGE}
        for _ in range(len(self.records) + 2):
            resp = await self.client.get("/artifacts", params=params)
            assert resp.status_code == 200, resp.text
            page = resp.json()
            assert len(page) <= PAGE
            seen.extend(page)
            cursor = resp.headers.get("x-next-cursor")
            if cursor is None:
                break
            assert len(page) == PAGE
            params["cursor"] = cursor
        else:
            raise AssertionError("the listing never ended")
        live = sorted(
            (r for r in self.live() if r.workflow_id == workflow),
            key=lambda r: (r.created_at, r.id),
            reverse=True,
        )
        assert [s["id"] for s in seen] == [r.id for r in live]
        for summary, rec in zip(seen, live, strict=True):
            assert (summary["content_hash"], summary["size_bytes"]) == (
                sha(rec.data),
                len(rec.data),
            )
            assert summary["is_primary_deliverable"] == rec.primary


def machine_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        # no explain phase: it traces every line while shrinking (sys.settrace), which made
        # each step ~8x slower and shrinking a failure run into hypothesis's 5-minute cap
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    )


# Each step re-reads every artifact over HTTP (~3 ms a request in process): ~2 s an example.
SETTINGS = {"sqlite": machine_settings(15), "postgresql": machine_settings(8)}


@pytest.mark.slow
# passing: ~20 s; a failure spends up to hypothesis's 5-minute cap shrinking before it reports
@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", BACKENDS)
def test_store_matches_model(backend: str, tmp_path: Path) -> None:
    """The store, driven by hypothesis, agrees with the model after every step (each example
    on a fresh data directory and a fresh database)."""
    machine = type(
        f"StoreMachine_{backend}", (StoreMachine,), {"backend": backend, "base_dir": tmp_path}
    )
    run_state_machine_as_test(machine, settings=SETTINGS[backend])
