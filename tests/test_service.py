"""ArtifactService against real databases (SQLite, and PostgreSQL when configured) and a real
blob directory: write/read semantics, lineage, the primary-deliverable rule, id prefixes."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from storage.artifacts import ArtifactService
from storage.db.tables import artifacts, blobs, lineage
from storage.errors import (
    AmbiguousArtifactId,
    ArtifactIdTooShort,
    ArtifactNotFound,
    UnknownParent,
)
from storage.records import ArtifactChanges, ListQuery, NewArtifact, NewContent

pytestmark = pytest.mark.anyio

T0 = 1_800_000_000_000_000  # 2027-01-15, in microseconds


class Clock:
    """Strictly increasing microseconds, one step per call; `last` is the latest reading."""

    def __init__(self, start: int = T0, step: int = 1_000) -> None:
        self.next = start
        self.step = step
        self.last = 0

    def __call__(self) -> int:
        self.last = self.next
        self.next += self.step
        return self.last


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(service: ArtifactService, clock: Clock) -> ArtifactService:
    """The fixture's service (same database and blob store), with a clock we can read."""
    return ArtifactService(service.db, service.blobs, clock=clock)


def with_ids(service: ArtifactService, ids: list[str]) -> ArtifactService:
    return ArtifactService(
        service.db, service.blobs, clock=service.clock, new_id=iter(ids).__next__
    )


def new(workflow: str = "wf", phase: str | None = "p", **kw: Any) -> NewArtifact:
    fields: dict[str, Any] = {"artifact_type": "text", "title": "t", "content_type": "text/plain"}
    fields.update(kw)
    return NewArtifact(workflow_id=workflow, phase_id=phase, **fields)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def fetch(service: ArtifactService, stmt: Any) -> list[tuple[Any, ...]]:
    return await service.db.run_read(lambda conn: [tuple(r) for r in conn.execute(stmt).all()])


async def count(service: ArtifactService, table: sa.Table) -> int:
    return (await fetch(service, sa.select(sa.func.count()).select_from(table)))[0][0]


async def blob_digests(service: ArtifactService) -> set[str]:
    return {r[0] for r in await fetch(service, sa.select(blobs.c.digest))}


def blob_files(blob_dir: Path) -> set[str]:
    return {p.name for p in (blob_dir / "sha256").rglob("*") if p.is_file()}


async def live_primaries(service: ArtifactService) -> list[tuple[str, str | None, str]]:
    stmt = (
        sa.select(artifacts.c.workflow_id, artifacts.c.phase_id, artifacts.c.id)
        .where(artifacts.c.is_primary_deliverable.is_(True), artifacts.c.deleted_at.is_(None))
        .order_by(artifacts.c.workflow_id, artifacts.c.phase_id, artifacts.c.id)
    )
    return await fetch(service, stmt)


async def chunks(*parts: bytes, before: Callable[[], Any] | None = None) -> AsyncIterator[bytes]:
    """A content stream; `before` (async) runs once the first chunk has been asked for."""
    if before is not None:
        await before()
    for part in parts:
        yield part


# -- create / get / update / delete ----------------------------------------------------------


async def test_create_then_get_round_trips_every_field(
    svc: ArtifactService, clock: Clock, blob_dir: Path
) -> None:
    data = bytes(range(256)) * 3
    created = await svc.create(
        NewArtifact(
            workflow_id="research-package-v1",
            artifact_type="code",
            title="Résumé ✓",
            content_type="application/octet-stream",
            phase_id="discovery",
            session_id="sess-1",
            filename="blob.bin",
            is_text=False,
            is_primary_deliverable=False,
            created_by="agent-7",
            metadata={"k": [1, 2, {"n": None}], "ü": "ß"},
        ),
        chunks(data[:100], data[100:]),
    )
    assert created.created_at == created.updated_at == clock.last
    assert uuid.UUID(created.id).version == 4 and str(uuid.UUID(created.id)) == created.id
    got = await svc.get(created.id)
    assert got == created
    assert (got.content_hash, got.size_bytes) == (sha(data), len(data))
    assert (got.workflow_id, got.phase_id, got.session_id) == (
        "research-package-v1",
        "discovery",
        "sess-1",
    )
    assert (got.artifact_type, got.title, got.content_type, got.filename) == (
        "code",
        "Résumé ✓",
        "application/octet-stream",
        "blob.bin",
    )
    assert (got.is_text, got.is_primary_deliverable, got.created_by) == (False, False, "agent-7")
    assert got.metadata == {"k": [1, 2, {"n": None}], "ü": "ß"}
    assert got.derived_from == ()
    assert await svc.read_bytes(got) == data
    assert b"".join([c async for c in svc.stream(got, 10, 20)]) == data[10:20]
    assert await fetch(svc, sa.select(blobs.c.digest, blobs.c.size)) == [(sha(data), len(data))]
    assert blob_files(blob_dir) == {sha(data)}

    # identical bytes: a second artifact, one blob
    twin = await svc.create(new(), data)
    assert twin.id != created.id and twin.content_hash == created.content_hash
    assert await count(svc, blobs) == 1
    assert blob_files(blob_dir) == {sha(data)}


async def test_update_changes_only_what_is_given(svc: ArtifactService, clock: Clock) -> None:
    a = await svc.create(new(title="before", metadata={"a": 1}), b"x")
    b = await svc.create(new(title="other", metadata={"b": 2}), b"y")

    titled = await svc.update(a.id, ArtifactChanges(title="after"))
    assert titled == replace(a, title="after", updated_at=clock.last)
    assert titled == await svc.get(a.id)

    meta = await svc.update(a.id, ArtifactChanges(metadata={"new": {"x": [1]}}))
    assert meta.metadata == {"new": {"x": [1]}} and meta.title == "after"
    assert meta.created_at == a.created_at and meta.updated_at == clock.last > titled.updated_at

    cleared = await svc.update(a.id, ArtifactChanges(metadata={}, title=""))
    assert (cleared.metadata, cleared.title) == ({}, "")
    assert await svc.get(b.id) == b  # the other row is untouched

    with pytest.raises(ArtifactNotFound):
        await svc.update(str(uuid.uuid4()), ArtifactChanges(title="x"))


async def test_delete_is_soft_and_final(svc: ArtifactService, clock: Clock) -> None:
    a = await svc.create(new(), b"content a")
    keep = await svc.create(new(), b"content b")
    await svc.delete(a.id)
    deleted_at = clock.last

    for ref in (a.id, a.id.upper(), a.id[:8], a.id[:20]):
        with pytest.raises(ArtifactNotFound):
            await svc.get(ref)
    with pytest.raises(ArtifactNotFound):
        await svc.delete(a.id)
    with pytest.raises(ArtifactNotFound):
        await svc.update(a.id, ArtifactChanges(title="zombie"))
    page = await svc.page(ListQuery(), limit=10)
    assert [x.id for x in page.items] == [keep.id]

    # the row stays (lineage, GC), marked deleted, otherwise unchanged
    row = await fetch(
        svc,
        sa.select(artifacts.c.deleted_at, artifacts.c.updated_at, artifacts.c.title).where(
            artifacts.c.id == a.id
        ),
    )
    assert row == [(deleted_at, deleted_at, "t")]
    assert await svc.get(keep.id) == keep


# -- lineage ---------------------------------------------------------------------------------


async def test_derived_from_keeps_order_and_records_parent_digest(svc: ArtifactService) -> None:
    p1 = await svc.create(new(), b"parent one")
    p2 = await svc.create(new(), b"parent two")
    p3 = await svc.create(new(), b"parent three")
    order = (p3.id, p1.id, p2.id, p1.id)  # not sorted, with a repeat
    child = await svc.create(new(derived_from=order), b"child")
    assert child.derived_from == order
    assert (await svc.get(child.id)).derived_from == order

    # the parent's content changes after the link: lineage keeps the digest seen at link time
    await svc.replace_content(p1.id, b"parent one, v2", NewContent("text/plain"))
    grandchild = await svc.create(new(derived_from=(child.id, p1.id)), b"grandchild")

    stmt = sa.select(
        lineage.c.child_id, lineage.c.position, lineage.c.parent_id, lineage.c.parent_digest
    ).order_by(lineage.c.child_id == grandchild.id, lineage.c.position)
    assert await fetch(svc, stmt) == [
        (child.id, 0, p3.id, sha(b"parent three")),
        (child.id, 1, p1.id, sha(b"parent one")),
        (child.id, 2, p2.id, sha(b"parent two")),
        (child.id, 3, p1.id, sha(b"parent one")),
        (grandchild.id, 0, child.id, sha(b"child")),
        (grandchild.id, 1, p1.id, sha(b"parent one, v2")),
    ]
    assert (await svc.get(child.id)).derived_from == order
    assert (await svc.get(grandchild.id)).derived_from == (child.id, p1.id)
    assert (await svc.get(p1.id)).derived_from == ()


@pytest.mark.parametrize("bad_index", [0, 1, 2])
@pytest.mark.parametrize("kind", ["unknown", "deleted"])
async def test_unknown_or_deleted_parent_stores_nothing(
    svc: ArtifactService, blob_dir: Path, bad_index: int, kind: str
) -> None:
    good = [await svc.create(new(), f"good {i}".encode()) for i in range(2)]
    if kind == "deleted":
        gone = await svc.create(new(), b"gone")
        await svc.delete(gone.id)
        bad = gone.id
    else:
        bad = str(uuid.uuid4())
    parents = [g.id for g in good]
    parents.insert(bad_index, bad)
    rows, blob_rows, files = (
        await count(svc, artifacts),
        await blob_digests(svc),
        blob_files(blob_dir),
    )

    with pytest.raises(UnknownParent) as caught:
        await svc.create(new(derived_from=tuple(parents)), b"orphan bytes")
    assert (caught.value.index, caught.value.parent_id) == (bad_index, bad)
    assert await count(svc, artifacts) == rows
    assert await count(svc, lineage) == 0
    assert await blob_digests(svc) == blob_rows
    assert sha(b"orphan bytes") not in blob_rows
    assert blob_files(blob_dir) == files  # checked before any byte is stored


async def test_parent_deleted_during_upload_stores_no_row(svc: ArtifactService) -> None:
    """The parents are checked again inside the write transaction."""
    parent = await svc.create(new(), b"parent")
    other = await svc.create(new(), b"other")
    rows = await count(svc, artifacts)

    async def delete_parent() -> None:
        await svc.delete(parent.id)

    with pytest.raises(UnknownParent) as caught:
        await svc.create(
            new(derived_from=(other.id, parent.id)),
            chunks(b"late ", b"child", before=delete_parent),
        )
    assert (caught.value.index, caught.value.parent_id) == (1, parent.id)
    assert await count(svc, artifacts) == rows
    assert await count(svc, lineage) == 0
    assert sha(b"late child") not in await blob_digests(svc)


# -- the primary-deliverable rule ------------------------------------------------------------


async def test_new_primary_demotes_the_previous_one(svc: ArtifactService, clock: Clock) -> None:
    a = await svc.create(new(is_primary_deliverable=True), b"a")
    assert (await svc.get(a.id)).is_primary_deliverable is True
    plain = await svc.create(new(), b"not primary")  # a non-primary leaves the primary alone
    assert await live_primaries(svc) == [("wf", "p", a.id)]

    b = await svc.create(new(is_primary_deliverable=True), b"b")
    demoted = await svc.get(a.id)
    assert demoted.is_primary_deliverable is False
    assert demoted.updated_at == b.created_at  # demoted in the same transaction, same instant
    assert (await svc.get(b.id)).is_primary_deliverable is True
    assert (await svc.get(plain.id)).updated_at == plain.created_at
    assert await live_primaries(svc) == [("wf", "p", b.id)]


async def test_demotion_rolls_back_with_a_failed_create(svc: ArtifactService) -> None:
    """Demote and insert are one transaction: if the insert fails the old primary stays."""
    a = await svc.create(new(is_primary_deliverable=True), b"a")
    clash = with_ids(svc, [a.id])  # the insert will hit the primary key
    with pytest.raises(sa.exc.IntegrityError):
        await clash.create(new(is_primary_deliverable=True), b"b")
    assert await svc.get(a.id) == a
    assert await live_primaries(svc) == [("wf", "p", a.id)]
    assert await count(svc, artifacts) == 1


async def test_groups_are_workflow_and_phase(svc: ArtifactService) -> None:
    made = {}
    for workflow, phase in [("w1", "p"), ("w1", "q"), ("w1", None), ("w2", "p"), ("w2", None)]:
        made[workflow, phase] = await svc.create(
            new(workflow, phase, is_primary_deliverable=True), f"{workflow}/{phase}".encode()
        )
    expected = sorted(
        ((w, p, a.id) for (w, p), a in made.items()), key=lambda t: (t[0], t[1] or "", t[2])
    )
    assert sorted(await live_primaries(svc), key=lambda t: (t[0], t[1] or "", t[2])) == expected

    # a second primary in (w1, None) demotes only (w1, None)
    again = await svc.create(new("w1", None, is_primary_deliverable=True), b"again")
    expected = sorted(
        [t for t in expected if t[:2] != ("w1", None)] + [("w1", None, again.id)],
        key=lambda t: (t[0], t[1] or "", t[2]),
    )
    assert sorted(await live_primaries(svc), key=lambda t: (t[0], t[1] or "", t[2])) == expected
    assert (await svc.get(made["w1", None].id)).is_primary_deliverable is False
    assert (await svc.get(made["w2", None].id)).is_primary_deliverable is True


async def test_empty_phase_is_the_null_phase_group(svc: ArtifactService) -> None:
    """The unique index groups by coalesce(phase_id, ''): the service must demote by that same
    group, or the second create fails on the index instead of demoting."""
    a = await svc.create(new("w", "", is_primary_deliverable=True), b"a")
    b = await svc.create(new("w", None, is_primary_deliverable=True), b"b")
    assert await live_primaries(svc) == [("w", None, b.id)]
    c = await svc.create(new("w", "", is_primary_deliverable=True), b"c")
    assert await live_primaries(svc) == [("w", "", c.id)]
    assert not (await svc.get(a.id)).is_primary_deliverable


async def test_promotion_by_update_demotes_the_other(svc: ArtifactService, clock: Clock) -> None:
    a = await svc.create(new(is_primary_deliverable=True), b"a")
    b = await svc.create(new(), b"b")
    other_phase = await svc.create(new(phase="q", is_primary_deliverable=True), b"q")

    promoted = await svc.update(b.id, ArtifactChanges(is_primary_deliverable=True))
    assert promoted.is_primary_deliverable is True
    demoted = await svc.get(a.id)
    assert demoted.is_primary_deliverable is False and demoted.updated_at == promoted.updated_at
    assert sorted(await live_primaries(svc)) == sorted(
        [("wf", "p", b.id), ("wf", "q", other_phase.id)]
    )

    # promoting the primary again changes nothing else; unsetting leaves the group empty
    await svc.update(b.id, ArtifactChanges(is_primary_deliverable=True))
    assert (await svc.get(a.id)).is_primary_deliverable is False
    await svc.update(b.id, ArtifactChanges(is_primary_deliverable=False))
    assert await live_primaries(svc) == [("wf", "q", other_phase.id)]
    # a title-only update does not touch the flag
    await svc.update(other_phase.id, ArtifactChanges(title="renamed"))
    assert (await svc.get(other_phase.id)).is_primary_deliverable is True


async def test_deleted_primary_does_not_block_a_new_one(svc: ArtifactService) -> None:
    a = await svc.create(new(is_primary_deliverable=True), b"a")
    await svc.delete(a.id)
    assert await live_primaries(svc) == []
    b = await svc.create(new(is_primary_deliverable=True), b"b")
    c = await svc.create(new(), b"c")
    await svc.delete(b.id)
    promoted = await svc.update(c.id, ArtifactChanges(is_primary_deliverable=True))
    assert promoted.is_primary_deliverable is True
    assert await live_primaries(svc) == [("wf", "p", c.id)]


async def test_concurrent_primaries_end_with_exactly_one(svc: ArtifactService) -> None:
    created: list[str] = []
    errors: list[BaseException] = []

    async def make(i: int) -> None:
        try:
            created.append(
                (await svc.create(new(is_primary_deliverable=True), f"n{i}".encode())).id
            )
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(make, i)
    assert errors == []
    assert len(created) == 20
    primaries = await live_primaries(svc)
    assert len(primaries) == 1 and primaries[0][:2] == ("wf", "p")
    assert primaries[0][2] in created


async def test_concurrent_creates_and_promotions_end_with_exactly_one(
    svc: ArtifactService,
) -> None:
    plain = [await svc.create(new(), f"plain {i}".encode()) for i in range(10)]
    other = await svc.create(new(phase="other", is_primary_deliverable=True), b"other")
    errors: list[BaseException] = []

    async def run(job: Any) -> None:
        try:
            await job()
        except Exception as exc:
            errors.append(exc)

    def promote(artifact_id: str) -> Any:
        return lambda: svc.update(artifact_id, ArtifactChanges(is_primary_deliverable=True))

    def create(i: int) -> Any:
        return lambda: svc.create(new(is_primary_deliverable=True), f"new {i}".encode())

    jobs = [promote(a.id) for a in plain] + [create(i) for i in range(10)]
    async with anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(run, job)
    assert errors == []
    primaries = await live_primaries(svc)
    assert [p[:2] for p in sorted(primaries, key=lambda t: t[1] or "")] == [
        ("wf", "other"),
        ("wf", "p"),
    ]
    assert other.id in {p[2] for p in primaries}


# -- id prefixes -----------------------------------------------------------------------------

IDS = [
    "abcdef01-0000-4000-8000-000000000001",
    "abcdef01-0000-4000-8000-000000000002",
    "12345678-9abc-4def-8000-000000000000",
    "ffffff19-0000-4000-8000-000000000000",
    "ffffff1a-0000-4000-8000-000000000000",
    "0000000f-0000-4000-8000-000000000000",
    "00000010-0000-4000-8000-000000000000",
]


async def test_prefix_lookup(svc: ArtifactService) -> None:
    s = with_ids(svc, IDS)
    made = {a.id: a for a in [await s.create(new(), f"c{i}".encode()) for i in range(len(IDS))]}
    assert sorted(made) == sorted(IDS)

    unique = {
        "12345678": IDS[2],
        "12345678-": IDS[2],
        "12345678-9ABC": IDS[2],  # case-insensitive
        "abcdef01-0000-4000-8000-000000000001": IDS[0],
        "ABCDEF01-0000-4000-8000-000000000002": IDS[1],
        "ffffff19": IDS[3],  # the range end after '9' must not reach 'a'
        "ffffff1a": IDS[4],
        "0000000f": IDS[5],  # nor the range end after 'f' reach the next id
        "00000010": IDS[6],
    }
    for ref, expected in unique.items():
        got = await s.get(ref)
        assert got.id == expected, ref
        assert got == await s.get(expected)
    for ref in ("abcdef01", "abcdef01-", "ABCDEF01-0000", "abcdef01-0000-4000-8000-00000000000"):
        with pytest.raises(AmbiguousArtifactId) as ambiguous:
            await s.get(ref)
        assert ambiguous.value.candidates == tuple(IDS[:2]) and not ambiguous.value.more
        assert f"{ref.lower()!r} matches 2 artifacts ({IDS[0]}, {IDS[1]})" in str(ambiguous.value)
    for ref in ("1234567", "abcdef0", "", "ABCDEF0", "zzzzzzz"):
        with pytest.raises(ArtifactIdTooShort, match="at least 8 characters"):
            await s.get(ref)
    for ref in (
        "1234567g",  # not hex
        "zzzzzzzz",
        "12345678%",
        "1234_678",
        "1234567-",
        "12345679",  # no such id
        "abcdef02",
        str(uuid.uuid4()),
    ):
        with pytest.raises(ArtifactNotFound):
            await s.get(ref)
    # every write resolves the same way, and acts on the full id
    assert (await s.update("12345678-9ABC", ArtifactChanges(title="by prefix"))).id == IDS[2]
    replaced = await s.replace_content("12345678", chunks(b"new"), NewContent("text/plain"))
    assert (replaced.id, replaced.title, await s.read_bytes(replaced)) == (
        IDS[2],
        "by prefix",
        b"new",
    )
    for write in (
        lambda ref: s.update(ref, ArtifactChanges(title="x")),
        lambda ref: s.replace_content(ref, chunks(b"x"), NewContent("text/plain")),
        s.delete,
    ):
        with pytest.raises(AmbiguousArtifactId):
            await write("abcdef01")
        with pytest.raises(ArtifactIdTooShort):
            await write("1234567")
        with pytest.raises(ArtifactNotFound):
            await write("12345679")
    for i in IDS[:2]:  # the ambiguous writes changed nothing
        assert await s.get(i) == made[i]
    assert (await s.delete("ffffff1a")).id == IDS[4]
    with pytest.raises(ArtifactNotFound):
        await s.get(IDS[4])

    # deleted artifacts are found neither by id nor by prefix, nor do they make one ambiguous
    await s.delete(IDS[0])
    assert (await s.get("abcdef01")).id == IDS[1]
    with pytest.raises(ArtifactNotFound):
        await s.get(IDS[0])
    await s.delete(IDS[1])
    for ref in ("abcdef01", "abcdef01-0000", IDS[1]):
        with pytest.raises(ArtifactNotFound):
            await s.get(ref)


# -- replace_content -------------------------------------------------------------------------


async def test_replace_content_updates_the_description(svc: ArtifactService, clock: Clock) -> None:
    a = await svc.create(new(content_type="text/markdown"), b"# v1")
    data = b"\x89PNG\r\n" + bytes(1000)
    described = NewContent("image/png", filename="pic.png", is_text=False)
    got = await svc.replace_content(a.id, chunks(data[:7], data[7:]), described)
    assert got == await svc.get(a.id)
    assert (got.content_hash, got.size_bytes, got.content_type, got.filename, got.is_text) == (
        sha(data),
        len(data),
        "image/png",
        "pic.png",
        False,
    )
    assert got.created_at == a.created_at and got.updated_at == clock.last > a.created_at
    assert (got.title, got.workflow_id, got.metadata) == (a.title, a.workflow_id, a.metadata)
    assert await svc.read_bytes(got) == data
    assert await blob_digests(svc) == {sha(b"# v1"), sha(data)}


@pytest.mark.parametrize("kind", ["unknown", "deleted"])
async def test_replace_content_of_missing_artifact_stores_nothing(
    svc: ArtifactService, blob_dir: Path, kind: str
) -> None:
    if kind == "deleted":
        a = await svc.create(new(), b"soon gone")
        await svc.delete(a.id)
        target = a.id
    else:
        target = str(uuid.uuid4())
    before_rows, before_files = await blob_digests(svc), blob_files(blob_dir)
    consumed: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        consumed.append(1)
        yield b"never stored"

    with pytest.raises(ArtifactNotFound):
        await svc.replace_content(target, body(), NewContent("text/plain"))
    assert consumed == []  # checked before a byte is read
    assert await blob_digests(svc) == before_rows
    assert sha(b"never stored") not in before_rows
    assert blob_files(blob_dir) == before_files


async def test_replace_content_when_deleted_during_upload(svc: ArtifactService) -> None:
    a = await svc.create(new(), b"original")

    async def delete_it() -> None:
        await svc.delete(a.id)

    with pytest.raises(ArtifactNotFound):
        await svc.replace_content(
            a.id, chunks(b"too ", b"late", before=delete_it), NewContent("text/plain")
        )
    assert await blob_digests(svc) == {sha(b"original")}  # the blob row was rolled back
    row = await fetch(svc, sa.select(artifacts.c.content_hash).where(artifacts.c.id == a.id))
    assert row == [(sha(b"original"),)]


async def test_children_naming_a_parent_many_times_are_listed_once(svc: ArtifactService) -> None:
    """Repeats sit next to each other in the lineage walk; a page skips them and walks on, so
    every page is full and no child appears twice, across page boundaries too."""
    parent = await svc.create(new(), b"parent")
    children = [await svc.create(new(derived_from=(parent.id,) * 3), b"c%d" % i) for i in range(60)]
    seen: list[str] = []
    first = await svc.page(ListQuery(derived_from=parent.id), limit=7)
    page = first
    while True:
        seen += [a.id for a in page.items]
        if page.next_cursor is None:
            break
        assert len(page.items) == 7
        page = await svc.page(ListQuery(derived_from=parent.id), limit=7, after=page.next_cursor)
    assert seen == [c.id for c in reversed(children)]
