"""Immutable versions at the storage level (SQLite, and PostgreSQL when configured): every
content write makes a version in the same transaction, metadata-only updates make none, old
versions read back byte-identical, conditional writes, lineage pins, the change feed."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.artifacts import ArtifactService
from storage.blobs import FilesystemBlobStore
from storage.db.engine import Database
from storage.db.tables import artifact_versions, events, lineage
from storage.errors import ArtifactNotFound, PreconditionFailed, VersionNotFound
from storage.lineage import subgraph
from storage.records import ArtifactChanges, NewArtifact, NewContent
from tests.test_service import Clock

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(service: ArtifactService, clock: Clock) -> ArtifactService:
    return ArtifactService(service.db, service.blobs, clock=clock)


def new(**kw: Any) -> NewArtifact:
    fields: dict[str, Any] = {
        "workflow_id": "wf",
        "phase_id": "p",
        "artifact_type": "text",
        "title": "t",
        "content_type": "text/plain",
        "created_by": "agent-1",
    }
    fields.update(kw)
    return NewArtifact(**fields)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def version_rows(svc: ArtifactService, artifact_id: str) -> list[Any]:
    stmt = (
        sa.select(artifact_versions)
        .where(artifact_versions.c.artifact_id == artifact_id)
        .order_by(artifact_versions.c.version)
    )
    return await svc.db.run_read(lambda conn: conn.execute(stmt).all())


async def test_create_is_version_one(svc: ArtifactService, clock: Clock) -> None:
    a = await svc.create(new(), b"first")
    assert a.version == 1 and (await svc.get(a.id)).version == 1
    (row,) = await version_rows(svc, a.id)
    assert (row.version, row.content_hash, row.size_bytes, row.content_type) == (
        1,
        sha(b"first"),
        5,
        "text/plain",
    )
    assert (row.is_text, row.created_by, row.created_at, row.superseded_at) == (
        True,
        "agent-1",
        a.created_at,
        None,
    )


async def test_each_upload_is_a_new_version_and_supersedes_the_last(
    svc: ArtifactService, clock: Clock
) -> None:
    a = await svc.create(new(), b"v1")
    b = await svc.replace_content(
        a.id, b"\x00v2", NewContent("application/octet-stream", "two.bin", False, "uploader")
    )
    t2 = clock.last
    c = await svc.replace_content(a.id, b"v3", NewContent("text/plain", is_text=True))
    t3 = clock.last
    assert (b.version, c.version) == (2, 3)
    assert (await svc.get(a.id)).version == 3
    rows = await version_rows(svc, a.id)
    assert [(r.version, r.content_hash) for r in rows] == [
        (1, sha(b"v1")),
        (2, sha(b"\x00v2")),
        (3, sha(b"v3")),
    ]
    assert [r.superseded_at for r in rows] == [t2, t3, None]
    assert (rows[1].filename, rows[1].is_text, rows[1].created_by) == ("two.bin", False, "uploader")
    assert rows[1].content_type == "application/octet-stream" and rows[1].created_at == t2


async def test_the_same_bytes_again_are_a_new_version_with_the_same_hash(
    svc: ArtifactService,
) -> None:
    a = await svc.create(new(), b"same")
    again = await svc.replace_content(a.id, b"same", NewContent("text/plain", is_text=True))
    assert again.version == 2 and again.content_hash == a.content_hash
    assert [r.content_hash for r in await version_rows(svc, a.id)] == [sha(b"same")] * 2


async def test_metadata_only_updates_make_no_version(svc: ArtifactService) -> None:
    a = await svc.create(new(), b"content")
    changed = await svc.update(
        a.id, ArtifactChanges(title="new", metadata={"k": 1}, is_primary_deliverable=True)
    )
    assert changed.version == 1 and changed.title == "new"
    assert len(await version_rows(svc, a.id)) == 1


async def test_every_version_reads_back_byte_identical(svc: ArtifactService) -> None:
    contents = [b"one", bytes(range(256)) * 40, b"three", b"one"]
    a = await svc.create(new(), contents[0])
    for data in contents[1:]:
        await svc.replace_content(a.id, data, NewContent("application/octet-stream"))
    for number, data in enumerate(contents, 1):
        at, version = await svc.get_version(a.id[:8], number)
        assert (version.version, version.content_hash, at.version) == (number, sha(data), number)
        assert (at.id, at.content_hash, at.size_bytes) == (a.id, sha(data), len(data))
        assert await svc.read_bytes(at) == data
        assert b"".join([c async for c in svc.stream(at)]) == data
        assert version.is_current == (number == len(contents))
    with pytest.raises(VersionNotFound):
        await svc.get_version(a.id, 5)
    for number in (0, -1, 2**31, 2**63):
        with pytest.raises(VersionNotFound):
            await svc.get_version(a.id, number)
        assert await svc.owner_of_version(a.id, number) is None
    owner = await svc.owner_of_version(a.id, 2)
    assert owner is not None and owner[0] == "default"
    assert await svc.read_bytes(owner[1]) == contents[1]


async def test_versions_list_newest_first_with_a_keyset_cursor(svc: ArtifactService) -> None:
    a = await svc.create(new(), b"0")
    for i in range(1, 7):
        await svc.replace_content(a.id, b"%d" % i, NewContent("text/plain"))
    seen: list[int] = []
    page = await svc.versions(a.id, limit=3)
    pages = 1
    while page.next_before is not None:
        seen += [v.version for v in page.items]
        page = await svc.versions(a.id[:9], limit=3, before=page.next_before)
        pages += 1
    seen += [v.version for v in page.items]
    assert seen == [7, 6, 5, 4, 3, 2, 1] and pages == 3
    assert (await svc.versions(a.id, limit=7)).next_before is None


async def test_versions_of_unknown_or_deleted_artifacts_are_not_found(
    svc: ArtifactService,
) -> None:
    a = await svc.create(new(), b"x")
    await svc.delete(a.id)
    for call in (svc.versions(a.id, limit=5), svc.get_version(a.id, 1)):
        with pytest.raises(ArtifactNotFound):
            await call


# -- conditional writes ------------------------------------------------------------------------


async def test_if_match_the_current_hash_writes(svc: ArtifactService) -> None:
    a = await svc.create(new(), b"v1")
    b = await svc.replace_content(a.id, b"v2", NewContent("text/plain"), if_match=[sha(b"v1")])
    assert b.version == 2
    c = await svc.replace_content(a.id, b"v3", NewContent("text/plain"), if_match=["*"])
    assert c.version == 3


async def test_if_match_a_stale_hash_stores_nothing_and_reads_nothing(
    svc: ArtifactService,
) -> None:
    a = await svc.create(new(), b"v1")
    await svc.replace_content(a.id, b"v2", NewContent("text/plain"))
    read: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        read.append(1)
        yield b"v3"

    with pytest.raises(PreconditionFailed) as caught:
        await svc.replace_content(a.id, body(), NewContent("text/plain"), if_match=[sha(b"v1")])
    assert caught.value.current_hash == sha(b"v2") and read == []
    assert [r.version for r in await version_rows(svc, a.id)] == [1, 2]


async def test_if_match_rechecked_in_the_transaction(svc: ArtifactService) -> None:
    """Another version lands while the body streams (the same bytes, even): 412, nothing
    written, the other version stays current."""
    a = await svc.create(new(), b"v1")

    async def body() -> AsyncIterator[bytes]:
        await svc.replace_content(a.id, b"v1", NewContent("text/plain"))
        yield b"mine"

    with pytest.raises(PreconditionFailed):
        await svc.replace_content(a.id, body(), NewContent("text/plain"), if_match=[sha(b"v1")])
    rows = await version_rows(svc, a.id)
    assert [(r.version, r.content_hash) for r in rows] == [(1, sha(b"v1")), (2, sha(b"v1"))]
    assert (await svc.get(a.id)).version == 2


async def test_two_racing_conditional_writes_one_wins(svc: ArtifactService) -> None:
    a = await svc.create(new(), b"base")
    gate = asyncio.Event()
    arrived = 0

    async def body(data: bytes) -> AsyncIterator[bytes]:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            gate.set()
        await gate.wait()  # both have passed the early check
        yield data

    async def write(data: bytes) -> Any:
        try:
            return await svc.replace_content(
                a.id, body(data), NewContent("text/plain"), if_match=[sha(b"base")]
            )
        except PreconditionFailed as exc:
            return exc

    results = await asyncio.gather(write(b"left"), write(b"right"))
    failed = [r for r in results if isinstance(r, PreconditionFailed)]
    won = [r for r in results if not isinstance(r, PreconditionFailed)]
    assert len(failed) == 1 and len(won) == 1 and won[0].version == 2
    assert [r.version for r in await version_rows(svc, a.id)] == [1, 2]


async def test_unconditional_racing_writes_both_become_versions(svc: ArtifactService) -> None:
    a = await svc.create(new(), b"base")
    await asyncio.gather(
        *(svc.replace_content(a.id, b"w%d" % i, NewContent("text/plain")) for i in range(4))
    )
    rows = await version_rows(svc, a.id)
    assert [r.version for r in rows] == [1, 2, 3, 4, 5]
    assert [r.superseded_at is None for r in rows] == [False] * 4 + [True]
    assert (await svc.get(a.id)).content_hash == rows[-1].content_hash


# -- lineage and events ------------------------------------------------------------------------


async def test_edges_pin_the_parents_version(svc: ArtifactService) -> None:
    p = await svc.create(new(), b"parent v1")
    await svc.replace_content(p.id, b"parent v2", NewContent("text/plain"))
    child = await svc.create(new(derived_from=(p.id,)), b"child")
    await svc.replace_content(p.id, b"parent v3", NewContent("text/plain"))
    stmt = sa.select(lineage.c.parent_version, lineage.c.parent_digest).where(
        lineage.c.child_id == child.id
    )
    rows = await svc.db.run_read(lambda conn: conn.execute(stmt).all())
    assert [tuple(r) for r in rows] == [(2, sha(b"parent v2"))]
    graph = await subgraph(svc.db, child.id, "up", 1)
    (edge,) = graph.edges
    assert (edge.parent, edge.parent_version, edge.parent_hash) == (p.id, 2, sha(b"parent v2"))
    pinned, _ = await svc.get_version(p.id, edge.parent_version)
    assert await svc.read_bytes(pinned) == b"parent v2"


async def test_events_carry_the_version(svc: ArtifactService) -> None:
    a = await svc.create(new(), b"v1")
    await svc.replace_content(a.id, b"v2", NewContent("text/plain"))
    await svc.update(a.id, ArtifactChanges(title="t2"))
    stmt = sa.select(events.c.type, events.c.data).order_by(events.c.seq)
    rows = await svc.db.run_read(lambda conn: conn.execute(stmt).all())
    kinds = [(r.type, r.data["artifact"]["version"]) for r in rows]
    assert kinds == [
        ("artifact.created", 1),
        ("artifact.content_replaced", 2),
        ("artifact.updated", 2),
    ]
    replaced = rows[1].data
    assert (replaced["previous_version"], replaced["previous_hash"]) == (1, sha(b"v1"))


# -- a model: any sequence of writes ---------------------------------------------------------

WRITES = st.lists(
    st.one_of(
        st.tuples(st.just("upload"), st.binary(max_size=40)),
        st.tuples(st.just("upload_same"), st.just(b"")),
        st.tuples(
            st.just("update"), st.text(alphabet="abc", min_size=1, max_size=4).map(str.encode)
        ),
    ),
    max_size=8,
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(first=st.binary(min_size=1, max_size=40), writes=WRITES)
def test_any_sequence_of_writes_keeps_every_version(
    database_url: str, blob_dir: Path, first: bytes, writes: list[tuple[str, bytes]]
) -> None:
    """Versions are 1..n with no gap, exactly the last is current, superseded_at follows
    created_at, each reads back its own bytes, and the record is the last one."""

    async def run() -> None:
        db = Database(database_url)
        try:
            svc = ArtifactService(db, FilesystemBlobStore(blob_dir))
            a = await svc.create(new(), first)
            expected = [first]
            for kind, data in writes:
                if kind == "update":
                    await svc.update(a.id, ArtifactChanges(title=data.decode()))
                    continue
                body = expected[-1] if kind == "upload_same" else data
                await svc.replace_content(a.id, body, NewContent("application/octet-stream"))
                expected.append(body)
            page = await svc.versions(a.id, limit=200)
            versions = list(reversed(page.items))
            assert [v.version for v in versions] == list(range(1, len(expected) + 1))
            assert [v.is_current for v in versions] == [False] * (len(expected) - 1) + [True]
            for v, newer in itertools.pairwise(versions):
                assert v.superseded_at == newer.created_at
            for number, data in enumerate(expected, 1):
                at, version = await svc.get_version(a.id, number)
                assert version.content_hash == sha(data)
                assert await svc.read_bytes(at) == data
            current = await svc.get(a.id)
            assert (current.version, current.content_hash) == (len(expected), sha(expected[-1]))
        finally:
            await db.dispose()

    asyncio.run(run())
