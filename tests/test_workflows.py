"""Workflow views (`GET /store/workflows`, `/store/workflows/{id}`,
`/store/workflows/{id}/deliverables`).

A data set per backend (module scope) is written in-process through ArtifactService with a
hand-driven clock (so several workflows share a last activity, phases share a first activity,
and every time is known), while a Python model applies the same operations: creates (some
primary, some derived), promotions, demotions, title edits, content replacements and deletes.
The server's answers over HTTP are compared with the model exactly. The promotion/demotion
sequence of the deliverables runs over HTTP against a server of its own, step by step.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from storage.artifacts import ArtifactService
from storage.blobs import FilesystemBlobStore
from storage.db.engine import Database, sqlite_url
from storage.db.migrate import upgrade
from storage.records import ArtifactChanges, Cursor, NewArtifact, NewContent, us_to_iso
from tests.support.databases import BACKENDS, POSTGRES_URL, create_pg_database, drop_pg_database
from tests.support.inprocess import AppServer, start_app

T0 = 1_800_000_000_000_000
UNICODE_WF = "plan 100% für Ärzte #1?"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Clock:
    """Whatever `t` says: each operation's time is set by the script."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> int:
        return self.t


@dataclass
class Art:
    id: str
    workflow_id: str
    phase_id: str | None
    session_id: str | None
    artifact_type: str
    title: str
    content_type: str
    content: bytes
    is_text: bool
    primary: bool
    created_at: int
    updated_at: int
    derived_from: list[str]
    metadata: dict[str, Any]
    deleted: bool = False
    version: int = 1  # one more per content replacement

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workflow_id": self.workflow_id,
            "phase_id": self.phase_id,
            "artifact_type": self.artifact_type,
            "title": self.title,
            "size_bytes": len(self.content),
            "created_at": us_to_iso(self.created_at),
            "session_id": self.session_id,
            "content_type": self.content_type,
            "content_hash": sha(self.content),
            "is_primary_deliverable": self.primary,
        }

    def record(self, base: str, include_content: bool) -> dict[str, Any]:
        text = self.content.decode() if include_content and self.is_text else None
        return {
            "id": self.id,
            "workflow_id": self.workflow_id,
            "phase_id": self.phase_id,
            "session_id": self.session_id,
            "artifact_type": self.artifact_type,
            "is_primary_deliverable": self.primary,
            "content": text,
            "content_type": self.content_type,
            "content_hash": sha(self.content),
            "size_bytes": len(self.content),
            "title": self.title,
            "derived_from": self.derived_from,
            "created_at": us_to_iso(self.created_at),
            "created_by": None,
            "metadata": self.metadata,
            "filename": None,
            "updated_at": us_to_iso(self.updated_at),
            "download_url": f"{base}/artifacts/{self.id}/download",
            "version": self.version,
        }


def first_seen(items: list[tuple[int, str | None]]) -> list[str | None]:
    """Distinct values ordered by their earliest time, then by value (no value first)."""
    earliest: dict[str | None, int] = {}
    for t, value in items:
        earliest[value] = min(t, earliest.get(value, t))
    return sorted(earliest, key=lambda v: (earliest[v], v is not None, v or ""))


@dataclass
class Model:
    arts: dict[str, Art] = field(default_factory=dict)

    def live(self, workflow_id: str | None = None) -> list[Art]:
        return [
            a
            for a in self.arts.values()
            if not a.deleted and (workflow_id is None or a.workflow_id == workflow_id)
        ]

    def primaries(self, workflow_id: str) -> dict[str | None, Art]:
        return {a.phase_id: a for a in self.live(workflow_id) if a.primary}

    def workflow_ids(self) -> list[str]:
        """Most recently active first; then workflow_id descending."""
        ids = {a.workflow_id for a in self.live()}
        return sorted(ids, key=lambda w: (self.last(w), w), reverse=True)

    def last(self, workflow_id: str) -> int:
        return max(a.updated_at for a in self.live(workflow_id))

    def listing(self, workflow_id: str) -> dict[str, Any]:
        arts = self.live(workflow_id)
        return {
            "workflow_id": workflow_id,
            "artifact_count": len(arts),
            "total_bytes": sum(len(a.content) for a in arts),
            "phases": first_seen([(a.created_at, a.phase_id) for a in arts]),
            "sessions": first_seen(
                [(a.created_at, a.session_id) for a in arts if a.session_id is not None]
            ),
            "first_activity_at": us_to_iso(min(a.created_at for a in arts)),
            "last_activity_at": us_to_iso(self.last(workflow_id)),
            "primary_deliverables": sum(a.primary for a in arts),
        }

    def detail(self, workflow_id: str) -> dict[str, Any]:
        arts = self.live(workflow_id)
        primaries = self.primaries(workflow_id)
        phases = []
        for phase in first_seen([(a.created_at, a.phase_id) for a in arts]):
            mine = [a for a in arts if a.phase_id == phase]
            primary = primaries.get(phase)
            phases.append(
                {
                    "phase_id": phase,
                    "artifact_count": len(mine),
                    "total_bytes": sum(len(a.content) for a in mine),
                    "sessions": first_seen(
                        [(a.created_at, a.session_id) for a in mine if a.session_id is not None]
                    ),
                    "first_activity_at": us_to_iso(min(a.created_at for a in mine)),
                    "last_activity_at": us_to_iso(max(a.updated_at for a in mine)),
                    "primary_deliverable": primary.summary() if primary else None,
                }
            )
        return {
            "workflow_id": workflow_id,
            "artifact_count": len(arts),
            "total_bytes": sum(len(a.content) for a in arts),
            "first_activity_at": us_to_iso(min(a.created_at for a in arts)),
            "last_activity_at": us_to_iso(self.last(workflow_id)),
            "phases": phases,
        }

    def deliverables(self, workflow_id: str) -> list[Art]:
        arts = self.live(workflow_id)
        primaries = self.primaries(workflow_id)
        order = first_seen([(a.created_at, a.phase_id) for a in arts])
        return [primaries[p] for p in order if p in primaries]


class Sim:
    """Every write through the real service, and the same change applied to the model."""

    def __init__(self, service: ArtifactService, clock: Clock, model: Model) -> None:
        self.service = service
        self.clock = clock
        self.model = model
        self.n = 0

    def _demote_group(self, art: Art) -> None:
        for other in self.model.live(art.workflow_id):
            if other.id != art.id and other.primary and other.phase_id == art.phase_id:
                other.primary = False
                other.updated_at = self.clock.t

    async def create(
        self,
        workflow_id: str,
        phase_id: str | None,
        session_id: str | None = None,
        *,
        size: int = 10,
        primary: bool = False,
        binary: bool = False,
        parents: tuple[str, ...] = (),
        dt: int = 1,
    ) -> str:
        self.clock.t += dt
        self.n += 1
        if binary:
            content = bytes([0x89, 0x50, 0x4E, 0x47]) + bytes(range(256))[: max(size - 4, 0)]
        else:
            content = (f"artifact {self.n} é " * (size // 10 + 1))[:size].encode()
        new = NewArtifact(
            workflow_id=workflow_id,
            artifact_type="code" if self.n % 3 else "plan",
            title=f"artifact {self.n}",
            content_type="image/png" if binary else "text/markdown",
            phase_id=phase_id,
            session_id=session_id,
            is_text=not binary,
            is_primary_deliverable=primary,
            metadata={"n": self.n},
            derived_from=parents,
        )
        a = await self.service.create(new, content)
        assert (a.created_at, a.updated_at, a.size_bytes) == (self.clock.t,) * 2 + (len(content),)
        art = Art(
            a.id, workflow_id, phase_id, session_id, new.artifact_type, new.title,
            new.content_type, content, not binary, primary, self.clock.t, self.clock.t,
            list(parents), {"n": self.n},
        )  # fmt: skip
        if primary:
            self._demote_group(art)
        self.model.arts[a.id] = art
        return a.id

    async def promote(self, artifact_id: str, flag: bool = True, dt: int = 1) -> None:
        self.clock.t += dt
        await self.service.update(artifact_id, ArtifactChanges(is_primary_deliverable=flag))
        art = self.model.arts[artifact_id]
        if flag:
            self._demote_group(art)
        art.primary = flag
        art.updated_at = self.clock.t

    async def retitle(self, artifact_id: str, dt: int = 1) -> None:
        self.clock.t += dt
        title = f"retitled at {self.clock.t}"
        await self.service.update(artifact_id, ArtifactChanges(title=title))
        art = self.model.arts[artifact_id]
        art.title = title
        art.updated_at = self.clock.t

    async def replace(self, artifact_id: str, content: bytes, dt: int = 1) -> None:
        self.clock.t += dt
        described = NewContent(content_type="text/plain", is_text=True)
        await self.service.replace_content(artifact_id, content, described)
        art = self.model.arts[artifact_id]
        art.content, art.content_type, art.is_text = content, "text/plain", True
        art.updated_at = self.clock.t
        art.version += 1

    async def delete(self, artifact_id: str, dt: int = 1) -> None:
        self.clock.t += dt
        await self.service.delete(artifact_id)
        self.model.arts[artifact_id].deleted = True


@dataclass
class World:
    url: str
    data_dir: Path
    model: Model
    names: dict[str, str]  # scenario name -> artifact id
    tied_last: int  # the last activity three workflows share


async def build(url: str, data_dir: Path) -> World:
    clock = Clock()
    model = Model()
    names: dict[str, str] = {}
    db = Database(url)
    sim = Sim(
        ArtifactService(db, FilesystemBlobStore(data_dir / "blobs"), clock=clock), clock, model
    )
    rng = random.Random(424242)
    try:
        # an old workflow whose last activity is a late title edit
        names["old1"] = await sim.create("wfold", "design", "s9", size=100)
        names["old2"] = await sim.create("wfold", "build", "s1", size=5, primary=True)
        # phase order flips when the first artifact of the first phase is deleted
        names["flip1"] = await sim.create("wfflip", "early", "sb", size=7)
        names["flip2"] = await sim.create("wfflip", "late", "sa", size=30, primary=True)
        names["flip3"] = await sim.create("wfflip", "early", "sa", size=11, primary=True)
        # a workflow that will be deleted whole
        gone = [await sim.create("wfgone", p, size=3, primary=True) for p in ("a", None)]
        # phases (and sessions) that share their first activity: ordered by phase id, and the
        # null phase before any named one
        names["tie0"] = await sim.create("wfphasetie", "beta", "s2", size=1)
        names["tie1"] = await sim.create("wfphasetie", None, "s1", size=2, primary=True, dt=0)
        names["tie2"] = await sim.create("wfphasetie", "alpha", "s3", size=4, primary=True, dt=0)
        names["tie3"] = await sim.create("wfphasetie", "alpha", "s0", size=8, dt=0)
        names["tie4"] = await sim.create("wfphasetie", "gamma", None, size=16)
        # the unicode workflow, derived artifacts, a binary primary
        names["u1"] = await sim.create(UNICODE_WF, "draft", "s1", size=40)
        names["u2"] = await sim.create(
            UNICODE_WF, "draft", "s2", size=50, primary=True, parents=(names["u1"],)
        )
        names["u3"] = await sim.create(UNICODE_WF, "final", None, size=300, binary=True)
        await sim.promote(names["u3"])
        # a demoted primary, a replaced content, a primary of the null phase
        names["m1"] = await sim.create("wfmixed", None, None, size=20, primary=True)
        names["m2"] = await sim.create("wfmixed", "p1", "s5", size=21, primary=True)
        await sim.promote(names["m2"], False)
        await sim.replace(names["m1"], b"replaced content, much longer than before")
        # filler: random workflows and operations, with repeated clock readings
        filler = [f"wf{c}" for c in "abcdefghij"]
        ids: list[str] = []
        for _ in range(160):
            dt = rng.choice((0, 0, 1, 3, 1000))
            roll = rng.random()
            if roll < 0.7 or len(ids) < 10:
                ids.append(
                    await sim.create(
                        rng.choice(filler),
                        rng.choice((None, "plan", "build", "test", "ship")),
                        rng.choice((None, "s1", "s2", "s3", "s4")),
                        size=rng.randrange(1, 200),
                        primary=rng.random() < 0.2,
                        dt=dt,
                    )
                )
                continue
            target = rng.choice([i for i in ids if not model.arts[i].deleted])
            if roll < 0.8:
                await sim.promote(target, rng.random() < 0.7, dt=dt)
            elif roll < 0.87:
                await sim.retitle(target, dt=dt)
            elif roll < 0.93:
                await sim.replace(target, b"x" * rng.randrange(1, 500), dt=dt)
            else:
                await sim.delete(target, dt=dt)
        # the latest artifact of a workflow is deleted: its last activity moves back
        names["late"] = await sim.create("wfflip", "late", "sc", size=9, dt=50)
        await sim.delete(names["late"])
        await sim.delete(names["flip1"])
        for artifact_id in gone:
            await sim.delete(artifact_id)
        await sim.retitle(names["old1"], dt=100)
        # three workflows whose last activities are one and the same microsecond
        clock.t += 100
        tied = clock.t
        await sim.retitle(names["tie4"], dt=0)
        await sim.promote(names["m1"], dt=0)  # already primary: still an activity
        await sim.create("wfz", "only", "s1", size=13, dt=0)
    finally:
        await db.dispose()
    return World(url, data_dir, model, names, tied)


@dataclass
class Env:
    world: World
    server: AppServer


@pytest.fixture(scope="module", params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("workflows")
    if request.param == "sqlite":
        url = sqlite_url(tmp / "artifacts.db")
    else:
        assert POSTGRES_URL
        url = create_pg_database(POSTGRES_URL)
    try:
        upgrade(url)
        world = asyncio.run(build(url, tmp / "data"))
        server = start_app(world.data_dir, database_url=url)
        try:
            yield Env(world, server)
        finally:
            server.stop()
    finally:
        if request.param != "sqlite":
            drop_pg_database(POSTGRES_URL, url)


@pytest.fixture
def http(env: Env) -> Iterator[httpx.Client]:
    with env.server.client() as c:
        yield c


def path(workflow_id: str) -> str:
    return quote(workflow_id, safe="")


def ok(http: httpx.Client, url: str, **params: Any) -> httpx.Response:
    response = http.get(url, params=params)
    assert response.status_code == 200, (url, params, response.text)
    return response


# -- the data set is what the tests need ----------------------------------------------------------


def test_the_data_set_exercises_what_it_should(env: Env) -> None:
    model = env.world.model
    ids = model.workflow_ids()
    assert len(ids) == 16 and "wfgone" not in ids
    lasts = [model.last(w) for w in ids]
    tied = [w for w in ids if model.last(w) == env.world.tied_last]
    assert tied == ["wfz", "wfphasetie", "wfmixed"] and ids[:3] == tied
    assert len(set(lasts)) <= len(lasts) - 2
    assert ids.index("wfold") == 3  # created first, active since
    assert sum(a.deleted for a in model.arts.values()) >= 8
    assert model.listing("wfflip")["phases"] == ["late", "early"]
    assert model.listing("wfphasetie")["phases"] == [None, "alpha", "beta", "gamma"]
    counts = {model.listing(w)["primary_deliverables"] for w in ids}
    assert {0, 1, 2, 3} <= counts


# -- GET /store/workflows -------------------------------------------------------------------------


def test_list_is_exact(env: Env, http: httpx.Client) -> None:
    model = env.world.model
    expected = [model.listing(w) for w in model.workflow_ids()]
    for prefix in ("", "/api/v1"):
        for params in ({}, {"limit": 200}, {"limit": 16}):
            response = ok(http, f"{prefix}/store/workflows", **params)
            assert response.json() == expected, (prefix, params)
            assert "x-next-cursor" not in response.headers and "link" not in response.headers


def walk(http: httpx.Client, url: str, params: dict[str, Any], by_link: bool) -> list[list[Any]]:
    pages: list[list[Any]] = []
    response = ok(http, url, **params)
    while True:
        pages.append(response.json())
        token = response.headers.get("x-next-cursor")
        if token is None:
            assert "link" not in response.headers
            return pages
        link = response.headers["link"]
        assert link.endswith('>; rel="next"') and link.startswith("<")
        next_url = httpx.URL(link[1:-13])
        assert next_url.params["cursor"] == token
        assert len(pages) < 100
        if by_link:
            response = http.get(next_url)
            assert response.status_code == 200
        else:
            response = ok(http, url, **params, cursor=token)


def test_pagination_returns_every_workflow_once_in_order(env: Env, http: httpx.Client) -> None:
    model = env.world.model
    expected = [model.listing(w) for w in model.workflow_ids()]
    for limit in (1, 2, 3, 4, 7, 14):
        for by_link in (False, True):
            for prefix in ("", "/api/v1"):
                pages = walk(http, f"{prefix}/store/workflows", {"limit": limit}, by_link)
                assert pages == [expected[i : i + limit] for i in range(0, len(expected), limit)]
    # the three-way tie on last activity is cut between pages and still walked in order
    pages = walk(http, "/store/workflows", {"limit": 2}, False)
    assert [w["workflow_id"] for w in pages[0]] == ["wfz", "wfphasetie"]
    assert pages[1][0]["workflow_id"] == "wfmixed"


def test_active_after_and_before_are_exclusive_bounds_on_last_activity(
    env: Env, http: httpx.Client
) -> None:
    model = env.world.model
    order = model.workflow_ids()
    lasts = sorted({model.last(w) for w in order})
    probes = [lasts[0], lasts[1], lasts[len(lasts) // 2], env.world.tied_last, lasts[-1]]

    def expected(after: int | None, before: int | None) -> list[dict[str, Any]]:
        return [
            model.listing(w)
            for w in order
            if (after is None or model.last(w) > after)
            and (before is None or model.last(w) < before)
        ]

    seen = set()
    for t in probes:
        for after, before in (
            (t, None),
            (None, t),
            (t - 1, None),
            (None, t + 1),
            (t - 1, t + 1),
            (t, t + 1),
            (lasts[0], t),
            (t, lasts[-1] + 1),
        ):
            params = {}
            if after is not None:
                params["active_after"] = us_to_iso(after)
            if before is not None:
                params["active_before"] = us_to_iso(before)
            want = expected(after, before)
            seen.add(len(want))
            assert ok(http, "/store/workflows", **params).json() == want, params
            # the same bounds hold across pages
            pages = walk(http, "/store/workflows", {**params, "limit": 2}, True)
            assert [w for page in pages for w in page] == want, params
    assert 0 in seen and len(order) - 1 in seen and len(seen) >= 6
    # another offset, and no offset at all (taken as UTC), mean the same instants
    t = env.world.tied_last
    iso = us_to_iso(t)
    shifted = f"{int(iso[11:13]) + 2:02d}"
    assert iso[11:13] < "22"
    plus_two = iso[:11] + shifted + iso[13:-1] + "+02:00"
    assert ok(http, "/store/workflows", active_before=plus_two).json() == expected(None, t)
    assert ok(http, "/store/workflows", active_after=iso[:-1]).json() == expected(t, None)
    response = http.get("/store/workflows", params={"active_after": "yesterday"})
    assert response.status_code == 422
    assert [(d["type"], d["loc"]) for d in response.json()["detail"]] == [
        ("datetime_from_date_parsing", ["query", "active_after"])
    ]


def cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_bad_cursor_and_limit_are_422(env: Env, http: httpx.Client) -> None:
    artifact_cursor = Cursor(T0, "00000000-0000-4000-8000-000000000000").encode()
    for bad in (
        "nope",
        "!!!",
        "",
        artifact_cursor,
        cursor_of(["w2", 5, "wfa"]),
        cursor_of(["w1", -1, "wfa"]),
        cursor_of(["w1", 2**63, "wfa"]),
        cursor_of(["w1", "5", "wfa"]),
        cursor_of(["w1", 5.0, "wfa"]),
        cursor_of(["w1", True, "wfa"]),
        cursor_of(["w1", 5, 7]),
        cursor_of(["w1", 5]),
        cursor_of(["w1", 5, "wfa", 1]),
        cursor_of({"w1": 1, "a": 2, "b": 3}),
        cursor_of("w1x"),
        cursor_of(["w1", 5, "wf\u0000a"]),
    ):
        for prefix in ("", "/api/v1"):
            response = http.get(f"{prefix}/store/workflows", params={"cursor": bad})
            assert response.status_code == 422, (bad, response.text)
            assert response.text == (
                '{"detail":[{"type":"cursor_invalid","loc":["query","cursor"],'
                f'"msg":"Not a cursor this service issued","input":{json.dumps(bad)}}}]}}'
            )
    # a well-formed cursor past everything is just an empty page
    assert ok(http, "/store/workflows", cursor=cursor_of(["w1", 0, ""])).json() == []
    for limit, text in (
        (
            "0",
            '{"detail":[{"type":"greater_than_equal","loc":["query","limit"],'
            '"msg":"Input should be greater than or equal to 1","input":"0","ctx":{"ge":1}}]}',
        ),
        (
            "201",
            '{"detail":[{"type":"less_than_equal","loc":["query","limit"],'
            '"msg":"Input should be less than or equal to 200","input":"201","ctx":{"le":200}}]}',
        ),
    ):
        response = http.get("/store/workflows", params={"limit": limit})
        assert (response.status_code, response.text) == (422, text)


# -- GET /store/workflows/{id} --------------------------------------------------------------------


def test_each_workflow_by_phase(env: Env, http: httpx.Client) -> None:
    model = env.world.model
    for workflow_id in model.workflow_ids():
        expected = model.detail(workflow_id)
        for prefix in ("", "/api/v1"):
            assert ok(http, f"{prefix}/store/workflows/{path(workflow_id)}").json() == expected
    # spot checks that do not lean on the model
    n = env.world.names
    body = ok(http, "/store/workflows/wfphasetie").json()
    assert [p["phase_id"] for p in body["phases"]] == [None, "alpha", "beta", "gamma"]
    assert [p["sessions"] for p in body["phases"]] == [["s1"], ["s0", "s3"], ["s2"], []]
    assert [(p["primary_deliverable"] or {}).get("id") for p in body["phases"]] == [
        n["tie1"],
        n["tie2"],
        None,
        None,
    ]
    flip = ok(http, "/store/workflows/wfflip").json()
    assert [(p["phase_id"], p["artifact_count"]) for p in flip["phases"]] == [
        ("late", 1),
        ("early", 1),
    ]
    sizes = [len(model.arts[n[name]].content) for name in ("flip2", "flip3")]
    assert flip["artifact_count"] == 2 and flip["total_bytes"] == sum(sizes) == 32 + 11
    mixed = ok(http, "/store/workflows/wfmixed").json()
    assert mixed["phases"][0]["primary_deliverable"]["size_bytes"] == len(
        b"replaced content, much longer than before"
    )
    assert mixed["phases"][1]["primary_deliverable"] is None


def test_unknown_workflow_is_404(env: Env, http: httpx.Client) -> None:
    # NUL: no workflow has it (creates refuse it), and PostgreSQL cannot even compare it
    for workflow_id in ("wfgone", "nope", "WFA", "wfa ", "%", "wfa\x00", "\x00"):
        for prefix in ("", "/api/v1"):
            for suffix in ("", "/deliverables"):
                response = http.get(f"{prefix}/store/workflows/{path(workflow_id)}{suffix}")
                assert response.status_code == 404, (workflow_id, suffix)
                assert response.json() == {
                    "detail": f"Workflow {workflow_id!r} has no artifacts.",
                    "code": "workflow_not_found",
                }


# -- GET /store/workflows/{id}/deliverables -------------------------------------------------------


def test_deliverables_of_every_workflow(env: Env, http: httpx.Client) -> None:
    model = env.world.model
    base = env.server.url
    shapes = set()
    for workflow_id in model.workflow_ids():
        arts = model.deliverables(workflow_id)
        shapes.add(len(arts))
        url = f"/store/workflows/{path(workflow_id)}/deliverables"
        for params, include in (({}, False), ({"include_content": "false"}, False)):
            assert ok(http, url, **params).json() == [a.record(base, include) for a in arts]
        body = ok(http, url, include_content="true").json()
        assert body == [a.record(base, True) for a in arts]
        v1 = ok(http, "/api/v1" + url, include_content="true").json()
        assert v1 == [a.record(base + "/api/v1", True) for a in arts]
    assert {0, 1, 2, 3} <= shapes
    n = env.world.names
    unicode = ok(
        http, f"/store/workflows/{path(UNICODE_WF)}/deliverables", include_content=1
    ).json()
    assert [(d["id"], d["derived_from"]) for d in unicode] == [
        (n["u2"], [n["u1"]]),
        (n["u3"], []),
    ]
    assert unicode[0]["content"] == model.arts[n["u2"]].content.decode()
    assert unicode[1]["content"] is None  # binary: never inlined


# -- the deliverables follow every promotion and demotion (over HTTP, step by step) ---------------


@dataclass
class Live:
    """What the sequence test expects: each artifact's phase and text, and the primaries."""

    workflow_id: str
    created: list[tuple[str, str | None]] = field(default_factory=list)  # (id, phase), in order
    deleted: set[str] = field(default_factory=set)
    text: dict[str, str | None] = field(default_factory=dict)
    primary: dict[str | None, str] = field(default_factory=dict)  # phase -> id

    def phase(self, artifact_id: str) -> str | None:
        return dict(self.created)[artifact_id]

    @property
    def order(self) -> list[str | None]:
        """Phases by first activity: the creation of their oldest live artifact."""
        phases: list[str | None] = []
        for artifact_id, phase in self.created:
            if artifact_id not in self.deleted and phase not in phases:
                phases.append(phase)
        return phases


def test_deliverables_follow_promotions_and_demotions(
    server: AppServer, client: httpx.Client
) -> None:
    wf = "wfdeliver"
    live = Live(wf)

    def create(phase: str | None, primary: bool, text: str = "", workflow: str = wf) -> str:
        body = {
            "workflow_id": workflow,
            "artifact_type": "markdown",
            "title": f"{phase} {text[:10]}",
            "phase_id": phase,
            "content": text or f"content of a {phase} artifact",
            "is_primary_deliverable": primary,
        }
        response = client.post("/artifacts", json=body)
        assert response.status_code == 201, response.text
        artifact_id = response.json()["id"]
        if workflow == wf:
            live.created.append((artifact_id, phase))
            live.text[artifact_id] = body["content"]
            if primary:
                live.primary[phase] = artifact_id
        return artifact_id

    def put(artifact_id: str, flag: bool) -> None:
        response = client.put(f"/artifacts/{artifact_id}", json={"is_primary_deliverable": flag})
        assert response.json() == {"artifact_id": artifact_id, "status": "updated"}
        phase = live.phase(artifact_id)
        if flag:
            live.primary[phase] = artifact_id
        elif live.primary.get(phase) == artifact_id:
            del live.primary[phase]

    def delete(artifact_id: str) -> None:
        response = client.delete(f"/artifacts/{artifact_id}")
        assert response.json() == {"artifact_id": artifact_id, "status": "deleted"}
        live.deleted.add(artifact_id)
        phase = live.phase(artifact_id)
        if live.primary.get(phase) == artifact_id:
            del live.primary[phase]

    def check(expected: list[str]) -> None:
        """`expected`: the primaries in phase order, written out by the test (and also
        compared with the bookkeeping)."""
        assert [live.primary[p] for p in live.order if p in live.primary] == expected
        for prefix in ("", "/api/v1"):
            url = f"{prefix}/store/workflows/{wf}/deliverables"
            for include in (False, True):
                response = client.get(url, params={"include_content": include})
                assert response.status_code == 200
                body = response.json()
                assert [d["id"] for d in body] == expected
                for d in body:
                    record = client.get(
                        f"{prefix}/artifacts/{d['id']}", params={"include_content": include}
                    ).json()
                    assert d == record
                    assert d["is_primary_deliverable"] is True
                    assert d["content"] == (live.text[d["id"]] if include else None)
                    assert d["download_url"] == f"{server.url}{prefix}/artifacts/{d['id']}/download"
            assert client.get(url).json() == client.get(url, params={"include_content": 0}).json()
        # the workflow view, the list of workflows and the flags of the artifacts agree
        view = client.get(f"/store/workflows/{wf}").json()
        assert [p["phase_id"] for p in view["phases"]] == live.order
        assert [(p["primary_deliverable"] or {}).get("id") for p in view["phases"]] == [
            live.primary.get(p) for p in live.order
        ]
        [summary] = [w for w in client.get("/store/workflows").json() if w["workflow_id"] == wf]
        assert summary["primary_deliverables"] == len(expected)
        assert summary["phases"] == live.order
        listed = client.get("/artifacts", params={"workflow_id": wf, "limit": 200}).json()
        assert {a["id"] for a in listed if a["is_primary_deliverable"]} == set(expected)

    a1 = create("research", True)
    check([a1])
    b1 = create("design", False)
    check([a1])
    b2 = create("design", True)
    check([a1, b2])
    a2 = create("research", True)  # a new primary in the same phase demotes the old one
    check([a2, b2])
    assert client.get(f"/artifacts/{a1}").json()["is_primary_deliverable"] is False
    put(a1, True)  # promote back: a2 is demoted
    check([a1, b2])
    assert client.get(f"/artifacts/{a2}").json()["is_primary_deliverable"] is False
    put(a1, True)  # promoting the primary again changes nothing
    check([a1, b2])
    put(b2, False)  # demote: the phase has no primary
    check([a1])
    put(b1, False)  # demoting a non-primary changes nothing
    check([a1])
    put(b1, True)
    check([a1, b1])
    other = create("research", True, workflow="wfother")  # another workflow, same phase name
    check([a1, b1])
    assert [d["id"] for d in client.get("/store/workflows/wfother/deliverables").json()] == [other]
    delete(a1)  # the primary is deleted: a2 is not promoted in its place, and research now
    assert live.order == ["design", "research"]  # starts with a2, after design's b1
    check([b1])
    n1 = create(None, True, "the null phase's deliverable")
    check([b1, n1])
    put(a2, True)
    check([b1, a2, n1])
    # the text of a primary is replaced by an upload: the new text is inlined
    response = client.post(
        f"/artifacts/{b1}/upload",
        content="new design text ✓".encode(),
        headers={"content-type": "text/plain; charset=utf-8"},
    )
    assert response.status_code == 200
    live.text[b1] = "new design text ✓"
    check([b1, a2, n1])
    # a binary primary: listed, never inlined
    response = client.post(
        "/artifacts",
        data={"workflow_id": wf, "artifact_type": "other", "title": "png", "phase_id": "design"},
        files={"file": ("p.png", b"\x89PNG\r\n\x1a\n\x00\xff", "image/png")},
    )
    assert response.status_code == 201, response.text
    png = response.json()["id"]
    live.created.append((png, "design"))
    live.text[png] = None
    check([b1, a2, n1])
    put(png, True)  # promotion demotes b1
    check([png, a2, n1])
    assert client.get(f"/artifacts/{b1}").json()["is_primary_deliverable"] is False
    # a phase whose every artifact is deleted leaves the order
    delete(a2)
    check([png, n1])
    put(n1, False)
    put(png, False)
    check([])
    # every artifact deleted: the workflow is gone
    for artifact_id, _ in live.created:
        if artifact_id not in live.deleted:
            delete(artifact_id)
    for suffix in ("", "/deliverables"):
        response = client.get(f"/store/workflows/{wf}{suffix}")
        assert response.status_code == 404
        assert response.json() == {
            "detail": f"Workflow {wf!r} has no artifacts.",
            "code": "workflow_not_found",
        }
