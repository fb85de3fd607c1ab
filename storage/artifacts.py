"""ArtifactService: the one place where artifacts are written and read.

Invariant I1: every committed artifact row names a blob that is durably present, complete and
hashes to its name. So bytes always go to the blob store first (outside any transaction), and
only then does one short transaction insert or update rows. A crash in between leaves at most an
unreferenced blob, never a row without its bytes. That transaction asks no blob store on SQLite
(whose writer lock it holds): how it knows garbage collection has not taken the bytes meanwhile
is told in storage/maintenance.py and _ensure_blob_row.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import fields
from typing import Any, NoReturn, TypeVar

import sqlalchemy as sa
from anyio import to_thread
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from storage.blobs.base import BlobStore, PutResult
from storage.db import artifact_sql, blob_sql
from storage.db.engine import Database, run_async
from storage.db.tables import DEFAULT_TENANT, artifact_versions, artifacts, blobs, lineage
from storage.errors import (
    AmbiguousArtifactId,
    ArtifactIdTooShort,
    ArtifactNotFound,
    BlobCorrupt,
    DuplicateSource,
    PreconditionFailed,
    StorageUnavailable,
    UnknownParent,
    VersionNotFound,
)
from storage.events import NewEvent, append
from storage.records import (
    SUMMARY_FIELDS,
    Artifact,
    ArtifactChanges,
    Cursor,
    ListQuery,
    NewArtifact,
    NewContent,
    Page,
    Summary,
    Version,
    VersionPage,
    at_version,
    now_us,
    row_to_artifact,
    row_to_version,
    us_to_iso,
)

T = TypeVar("T")
log = logging.getLogger("artifacts.storage")
FULL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MIN_PREFIX = 8  # the shortest id prefix an artifact can be named by
ID_PREFIX = re.compile(rf"[0-9a-f-]{{{MIN_PREFIX},35}}")
SHOWN_CANDIDATES = 5  # ids an ambiguous prefix's error names
MAX_VERSION = 2**31 - 1  # artifact_versions.version is a 32-bit integer on every backend
LIVE = artifacts.c.deleted_at.is_(None)
ORDER = (artifacts.c.created_at.desc(), artifacts.c.id.desc())
# Hashing this much (~50 us at ~1.4 GB/s) costs less than a thread hop and back (55-67 us):
# below it the event loop hashes a small read itself.
INLINE_HASH_BYTES = 64 * 1024
PRIMARY_LOCK_SPACE = 0x41525446  # 'ARTF': first key of our pg_advisory_xact_lock(int, int)
RECHECKS = 3  # an upload's write tried at most this often while reclaims keep being swept
RECLAIMED = (
    "The content was reclaimed by garbage collection while it was being stored; retry the request."
)

SUMMARY_COLUMNS = tuple(artifacts.c[name] for name in SUMMARY_FIELDS)

Content = bytes | AsyncIterable[bytes | memoryview]
# Runs inside a write's own transaction, just before it commits, with the artifact as written:
# whatever it records (an idempotency key's response) commits or rolls back with the write.
# It runs where the transaction runs (a worker thread on SQLite, see Database.run_write).
WriteHook = Callable[[sa.Connection, Artifact], None]


def _columns(artifact: Artifact) -> dict[str, Any]:
    values = {f.name: getattr(artifact, f.name) for f in fields(Artifact)}
    del values["derived_from"]
    return values


def event_summary(a: Artifact) -> dict[str, Any]:
    """What a change-feed event says of its artifact."""
    return {
        "id": a.id,
        "workflow_id": a.workflow_id,
        "phase_id": a.phase_id,
        "session_id": a.session_id,
        "artifact_type": a.artifact_type,
        "title": a.title,
        "content_type": a.content_type,
        "content_hash": a.content_hash,
        "size_bytes": a.size_bytes,
        "is_primary_deliverable": a.is_primary_deliverable,
        "created_at": us_to_iso(a.created_at),
        "version": a.version,
    }


def _event(kind: str, a: Artifact, **data: Any) -> NewEvent:
    return NewEvent(kind, a.id, a.workflow_id, a.phase_id, {"artifact": event_summary(a), **data})


def _deliverable_changed(a: Artifact, primary: str | None, previous: str | None) -> NewEvent:
    data = {"workflow_id": a.workflow_id, "phase_id": a.phase_id}
    return NewEvent(
        "deliverable.changed",
        primary or previous or a.id,
        a.workflow_id,
        a.phase_id,
        {**data, "primary": primary, "previous": previous},
    )


@functools.lru_cache(maxsize=1024)
def _tenant_clause(tenant: str) -> sa.ColumnElement[bool]:
    return artifacts.c.tenant == tenant


# An upload's statements, built once: constructing an UPDATE with its values and hashing it for
# SQLAlchemy's compiled cache cost more writer-thread CPU per upload (~0.5 ms at 1 MiB,
# docs/benchmarks.md) than executing it. Bound names differ from column names (SQLAlchemy
# reserves those in SET clauses).
_NEXT_VERSION = (
    artifacts.update()
    .where(
        artifacts.c.id == sa.bindparam("b_id"),
        artifacts.c.tenant == sa.bindparam("b_tenant"),
        LIVE,
    )
    .values(
        content_hash=sa.bindparam("b_hash"),
        size_bytes=sa.bindparam("b_size"),
        content_type=sa.bindparam("b_type"),
        filename=sa.bindparam("b_filename"),
        is_text=sa.bindparam("b_text"),
        updated_at=sa.bindparam("b_now"),
        version=artifacts.c.version + 1,
    )
    .returning(artifacts.c.version)
)
_NEXT_VERSION_IF = _NEXT_VERSION.where(artifacts.c.version == sa.bindparam("b_expected"))
_SUPERSEDE = (
    artifact_versions.update()
    .where(
        artifact_versions.c.artifact_id == sa.bindparam("s_id"),
        artifact_versions.c.version == sa.bindparam("s_version"),
    )
    .values(superseded_at=sa.bindparam("s_at"))
    .returning(artifact_versions.c.content_hash)
)
_VERSION_INSERT = artifact_versions.insert()


def artifact_ref(ref: str) -> str:
    """An artifact reference as every route takes it (its full id or a unique prefix of at
    least MIN_PREFIX characters, in any case), normalised: lowercase.
    ArtifactIdTooShort when it is too short to name anything."""
    if len(ref) < MIN_PREFIX:
        raise ArtifactIdTooShort(ref, MIN_PREFIX)
    return ref.lower()


def names(ref: str, artifact_id: str) -> bool:
    """Whether `ref`, as a route takes it, names the artifact `artifact_id` (its full id or a
    prefix of it, long enough), whatever other artifacts it may also match now."""
    return len(ref) >= MIN_PREFIX and artifact_id.startswith(ref.lower())


class _Recheck(Exception):
    """Raised inside an upload's write: its blob has no row, and GC swept reclaimed blobs
    since the upload read the reclaim epoch, so the database alone cannot vouch for its bytes."""


def _version_row(artifact: Artifact, created_by: str | None, now: int) -> dict[str, Any]:
    """The artifact_versions row of an artifact's current content, as it is written: the
    create's version 1, or the version an upload just made current."""
    return {
        "artifact_id": artifact.id,
        "version": artifact.version,
        "content_hash": artifact.content_hash,
        "size_bytes": artifact.size_bytes,
        "content_type": artifact.content_type,
        "filename": artifact.filename,
        "is_text": artifact.is_text,
        "created_by": created_by,
        "created_at": now,
        "superseded_at": None,
    }


def _page(rows: Sequence[Any], limit: int) -> Page:
    """Up to `limit` rows of summary columns, and the cursor after them if there are more."""
    items = [Summary(*row[:10], bool(row[10])) for row in rows[:limit]]  # type: ignore[call-arg]
    last = items[-1] if len(rows) > limit else None
    return Page(items, Cursor(last.created_at, last.id) if last else None)


class ArtifactService:
    def __init__(
        self,
        db: Database,
        blob_store: BlobStore,
        *,
        clock: Callable[[], int] = now_us,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        on_commit: Callable[[], None] = lambda: None,
        verify_streams: bool = True,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        """`on_commit` runs after every committed write (the change feed's wake-up);
        `verify_streams` hashes whole-content streams as they are served (see stream());
        `tenant`: whose artifacts this service sees and writes (see scoped())."""
        self.tenant = tenant
        self.db = db
        self.blobs = blob_store
        self.clock = clock
        self.new_id = new_id
        self.on_commit = on_commit
        self.verify_streams = verify_streams

    def scoped(self, tenant: str) -> ArtifactService:
        """The same store as one tenant sees it: every read and write of the copy names
        `tenant`, and another tenant's artifacts answer exactly as unknown ones."""
        if tenant == self.tenant:
            return self
        view = copy.copy(self)
        view.tenant = tenant
        return view

    @property
    def mine(self) -> sa.ColumnElement[bool]:
        """`tenant = <ours>`, built once per tenant (it is in every statement)."""
        return _tenant_clause(self.tenant)

    # -- writes ------------------------------------------------------------------------------

    async def create(
        self,
        new: NewArtifact,
        content: Content,
        *,
        max_bytes: int | None = None,
        expected_digest: str | None = None,
        hook: WriteHook | None = None,
    ) -> Artifact:
        """Store the bytes, then the row, its lineage and (if asked) its primary flag."""
        if new.derived_from:  # fail before any byte is stored
            await self.db.run_read(lambda conn: self._live_parents(conn, new.derived_from))
        epoch = await blob_sql.reclaim_epoch(self.db)  # before the put: see _ensure_blob_row
        put = await self._put(content, max_bytes, expected_digest)
        artifact_id = self.new_id()

        def write(conn: sa.Connection, epoch: int | None) -> Artifact:
            now = self.clock()
            self._ensure_blob_row(conn, put, now, epoch)
            # after the digest's lock, as an upload takes them: the same order, no deadlock
            parents = self._live_parents(conn, new.derived_from, lock=True)
            previous = None
            if new.is_primary_deliverable:
                previous = self._demote_primary(conn, new.workflow_id, new.phase_id, now)
            artifact = Artifact(
                id=artifact_id,
                workflow_id=new.workflow_id,
                phase_id=new.phase_id,
                session_id=new.session_id,
                artifact_type=new.artifact_type,
                title=new.title,
                content_type=new.content_type,
                filename=new.filename,
                content_hash=put.digest,
                size_bytes=put.size,
                is_text=new.is_text,
                is_primary_deliverable=new.is_primary_deliverable,
                created_by=new.created_by,
                metadata=new.metadata,
                created_at=now,
                updated_at=now,
                derived_from=tuple(new.derived_from),
                source=new.source,
                source_ref=new.source_ref,
            )
            if new.source is not None and new.source_ref is not None:
                self._check_source(conn, new.source, new.source_ref)
            try:
                conn.execute(artifacts.insert(), {**_columns(artifact), "tenant": self.tenant})
            except IntegrityError:
                if new.source is None or new.source_ref is None:
                    raise
                # a concurrent import of the same upstream object won (PostgreSQL)
                raise DuplicateSource(new.source, new.source_ref, None) from None
            conn.execute(_VERSION_INSERT, _version_row(artifact, new.created_by, now))
            if parents:
                conn.execute(
                    lineage.insert(),
                    [
                        {
                            "child_id": artifact_id,
                            "position": i,
                            "parent_id": pid,
                            "parent_digest": d,
                            "parent_version": v,
                            "child_created_at": now,
                        }
                        for i, (pid, d, v) in enumerate(parents)
                    ],
                )
            feed = [_event("artifact.created", artifact, derived_from=list(new.derived_from))]
            if artifact.is_primary_deliverable:
                feed.append(_deliverable_changed(artifact, artifact.id, previous))
            append(conn, feed, now, tenant=self.tenant)
            if hook is not None:
                hook(conn, artifact)
            return artifact

        artifact = await self._write_blob(write, put.digest, epoch)
        self.on_commit()
        return artifact

    async def replace_content(
        self,
        artifact_id: str,
        content: Content,
        described: NewContent,
        *,
        max_bytes: int | None = None,
        expected_digest: str | None = None,
        if_match: Sequence[str] | None = None,
        hook: WriteHook | None = None,
    ) -> Artifact:
        """Upload: new bytes for an existing live artifact, named by its full id or a unique
        prefix (resolved, and checked, before any byte is read; the write is bound to the
        artifact found then, whatever the prefix may match later). The bytes become a new
        version (the current one plus 1, even when they are the same bytes: every upload is a
        version), the previous version is superseded, in one transaction.

        `if_match`: a conditional write (HTTP If-Match). The content hashes the current
        version may have, or "*" (any: the artifact must exist). Checked once before the bytes
        are read (a mismatch stores nothing), and again in the write's transaction against the
        version seen then: if any other version landed in between (even with the same bytes),
        PreconditionFailed and nothing is written, so of two writers racing with one If-Match
        exactly one succeeds. The blob already put is left unreferenced for GC to reclaim."""
        current = await self.get(artifact_id)
        artifact_id = current.id
        expected_version = None
        if if_match is not None and "*" not in if_match:
            if current.content_hash not in if_match:
                raise PreconditionFailed(artifact_id, current.content_hash)
            expected_version = current.version
        epoch = await blob_sql.reclaim_epoch(self.db)  # before the put: see _ensure_blob_row
        put = await self._put(content, max_bytes, expected_digest)

        def write(conn: sa.Connection, epoch: int | None) -> Artifact:
            now = self.clock()
            self._ensure_blob_row(conn, put, now, epoch)
            version = self._next_version(conn, artifact_id, expected_version, put, described, now)
            previous = conn.execute(
                _SUPERSEDE, {"s_id": artifact_id, "s_version": version - 1, "s_at": now}
            ).scalar()
            after = self._load_one(conn, artifact_id)
            conn.execute(_VERSION_INSERT, _version_row(after, described.created_by, now))
            event = _event(
                "artifact.content_replaced",
                after,
                previous_hash=previous,
                previous_version=version - 1,
            )
            append(conn, [event], now, tenant=self.tenant)
            if hook is not None:
                hook(conn, after)
            return after

        after = await self._write_blob(write, put.digest, epoch)
        self.on_commit()
        return after

    def _next_version(
        self,
        conn: sa.Connection,
        artifact_id: str,
        expected: int | None,
        put: PutResult,
        described: NewContent,
        now: int,
    ) -> int:
        """The live artifact's row turned to its next version, in one statement that also
        numbers it (`version + 1 ... RETURNING version`; on PostgreSQL the UPDATE holds the row
        until the transaction ends, so concurrent uploads number their versions one after the
        other; SQLite writers are serialised already). `expected`: the version that must still
        be current (If-Match), else PreconditionFailed; ArtifactNotFound when it is gone."""
        values = {
            "b_id": artifact_id,
            "b_tenant": self.tenant,
            "b_hash": put.digest,
            "b_size": put.size,
            "b_type": described.content_type,
            "b_filename": described.filename,
            "b_text": described.is_text,
            "b_now": now,
        }
        if expected is None:
            version = conn.execute(_NEXT_VERSION, values).scalar()
        else:
            version = conn.execute(_NEXT_VERSION_IF, {**values, "b_expected": expected}).scalar()
        if version is not None:
            return int(version)
        current = conn.execute(
            sa.select(artifacts.c.content_hash).where(
                artifacts.c.id == artifact_id, self.mine, LIVE
            )
        ).scalar()
        if current is None:
            raise ArtifactNotFound(artifact_id)
        raise PreconditionFailed(artifact_id, current)

    async def update(
        self, ref: str, changes: ArtifactChanges, *, hook: WriteHook | None = None
    ) -> Artifact:
        """`ref`: the full id or a unique prefix, resolved in the write's transaction."""
        ref = artifact_ref(ref)

        def write(conn: sa.Connection) -> Artifact:
            artifact_id = self._resolve(conn, ref)
            current = self._load_one(conn, artifact_id)
            now = self.clock()
            values: dict[str, Any] = {"updated_at": now}
            if changes.title is not None:
                values["title"] = changes.title
            if changes.metadata is not None:
                values["metadata"] = changes.metadata
            feed: list[NewEvent] = []
            promote = changes.is_primary_deliverable
            if promote is not None:
                values["is_primary_deliverable"] = promote
            if promote and not current.is_primary_deliverable:
                previous = self._demote_primary(conn, current.workflow_id, current.phase_id, now)
                feed.append(_deliverable_changed(current, artifact_id, previous))
            elif promote is False and current.is_primary_deliverable:
                feed.append(_deliverable_changed(current, None, artifact_id))
            conn.execute(
                artifacts.update().where(artifacts.c.id == artifact_id, self.mine).values(values)
            )
            after = self._load_one(conn, artifact_id)
            changed = sorted(k for k in values if k != "updated_at")
            feed.insert(0, _event("artifact.updated", after, changed=changed))
            append(conn, feed, now, tenant=self.tenant)
            if hook is not None:
                hook(conn, after)
            return after

        after = await self.db.run_write(write)
        self.on_commit()
        return after

    async def delete(self, ref: str, *, hook: WriteHook | None = None) -> Artifact:
        """Soft delete: the row stays (lineage, GC grace) but reads answer 'not found'.
        Returns the artifact as it was. `ref`: the full id or a unique prefix, resolved in the
        write's transaction."""
        ref = artifact_ref(ref)

        def write(conn: sa.Connection) -> Artifact:
            now = self.clock()
            artifact_id = self._resolve(conn, ref)
            current = self._load_one(conn, artifact_id)
            conn.execute(
                artifacts.update()
                .where(artifacts.c.id == artifact_id, self.mine, LIVE)
                .values(deleted_at=now, updated_at=now)
            )
            feed = [_event("artifact.deleted", current)]
            if current.is_primary_deliverable:
                feed.append(_deliverable_changed(current, None, artifact_id))
            append(conn, feed, now, tenant=self.tenant)
            if hook is not None:
                hook(conn, current)
            return current

        current = await self.db.run_write(write)
        self.on_commit()
        return current

    # -- reads -------------------------------------------------------------------------------

    async def find_by_source(self, source: str, source_ref: str) -> Artifact | None:
        """The live artifact imported from this upstream object, if any."""

        def find(conn: sa.Connection) -> Artifact | None:
            found = self._source_id(conn, source, source_ref)
            return None if found is None else self._load_one(conn, found)

        return await self.db.run_read(find)

    async def get(self, ref: str) -> Artifact:
        """By full id or by a unique prefix (see _resolve). One statement by full id, parents
        included; on SQLite, right on the event loop."""
        ref = artifact_ref(ref)
        if FULL_ID.fullmatch(ref):
            rows = self.db.loop_rows(artifact_sql.GET_SQLITE, (ref, self.tenant))
            if rows is not None:
                if not rows:
                    raise ArtifactNotFound(ref)
                return artifact_sql.artifact_from_row(rows[0])
        return await self.db.run_read(lambda conn: self._load_one(conn, self._resolve(conn, ref)))

    async def versions(self, ref: str, *, limit: int, before: int | None = None) -> VersionPage:
        """A live artifact's versions, newest first, `limit` at a time: those numbered below
        `before` (the previous page's next_before), by its full id or a unique prefix.
        Versions that retention purged are simply absent."""
        ref = artifact_ref(ref)
        v = artifact_versions.c

        def read(conn: sa.Connection) -> VersionPage:
            artifact_id = self._live_id(conn, ref)
            stmt = sa.select(artifact_versions).where(v.artifact_id == artifact_id)
            if before is not None:
                stmt = stmt.where(v.version < before)
            rows = conn.execute(stmt.order_by(v.version.desc()).limit(limit + 1)).all()
            items = [row_to_version(row) for row in rows[:limit]]
            return VersionPage(items, items[-1].version if len(rows) > limit else None)

        return await self.db.run_read(read)

    async def get_version(self, ref: str, number: int) -> tuple[Artifact, Version]:
        """Version `number` of a live artifact (full id or unique prefix): the artifact as it
        was then (records.at_version: that version's content, the rest as it is now, which is
        what read_bytes() and stream() verify and serve) and the version itself.
        VersionNotFound when the artifact has no such version (any more)."""
        ref = artifact_ref(ref)

        def read(conn: sa.Connection) -> tuple[Artifact, Version]:
            artifact = self._load_one(conn, self._resolve(conn, ref))
            if not 1 <= number <= MAX_VERSION:  # no such number fits the column
                raise VersionNotFound(artifact.id, number)
            row = conn.execute(
                sa.select(artifact_versions).where(
                    artifact_versions.c.artifact_id == artifact.id,
                    artifact_versions.c.version == number,
                )
            ).first()
            if row is None:
                raise VersionNotFound(artifact.id, number)
            version = row_to_version(row)
            return at_version(artifact, version), version

        return await self.db.run_read(read)

    def _live_id(self, conn: sa.Connection, ref: str) -> str:
        """The full id of the live artifact `ref` names (ArtifactNotFound if none)."""
        artifact_id = self._resolve(conn, ref)
        found = conn.execute(
            sa.select(artifacts.c.id).where(artifacts.c.id == artifact_id, self.mine, LIVE)
        ).scalar()
        if found is None:
            raise ArtifactNotFound(artifact_id)
        return str(found)

    def _resolve(self, conn: sa.Connection, ref: str) -> str:
        """The full id a reference names, for every route that takes one: `ref` (normalised
        by artifact_ref) is the full id, or a prefix of at least MIN_PREFIX characters that
        exactly one live artifact of this tenant has. Deleted artifacts and other tenants'
        never match, so a prefix shared with a deleted artifact names the live one.
        ArtifactNotFound when nothing matches (a full id is not checked here: the load that
        follows finds it or not), AmbiguousArtifactId when several do."""
        if FULL_ID.fullmatch(ref):
            return ref
        if not ID_PREFIX.fullmatch(ref):
            raise ArtifactNotFound(ref)
        upper = ref[:-1] + chr(ord(ref[-1]) + 1)
        found = (
            conn.execute(
                sa.select(artifacts.c.id)
                .where(artifacts.c.id >= ref, artifacts.c.id < upper, self.mine, LIVE)
                .order_by(artifacts.c.id)
                .limit(SHOWN_CANDIDATES + 1)
            )
            .scalars()
            .all()
        )
        if not found:
            raise ArtifactNotFound(ref)
        if len(found) > 1:
            shown = found[:SHOWN_CANDIDATES]
            raise AmbiguousArtifactId(ref, shown, more=len(found) > len(shown))
        return str(found[0])

    async def owner_of(self, artifact_id: str) -> tuple[str, Artifact] | None:
        """(tenant, artifact) of a live artifact by its full id, whoever owns it: only for
        credentials that name their own tenant, such as a signed link."""
        if not FULL_ID.fullmatch(artifact_id):
            return None
        query = sa.select(artifacts).where(artifacts.c.id == artifact_id, LIVE)
        row = await self.db.run_read(lambda conn: conn.execute(query).first())
        return None if row is None else (row.tenant, row_to_artifact(row, None))

    async def owner_of_version(self, artifact_id: str, number: int) -> tuple[str, Artifact] | None:
        """(tenant, the artifact as at version `number`) of a live artifact by its full id,
        whoever owns it, or None: for a signed link to one version (see owner_of)."""
        if not FULL_ID.fullmatch(artifact_id) or not 1 <= number <= MAX_VERSION:
            return None
        v = artifact_versions.c

        def read(conn: sa.Connection) -> tuple[str, Artifact] | None:
            query = sa.select(artifacts).where(artifacts.c.id == artifact_id, LIVE)
            row = conn.execute(query).first()
            if row is None:
                return None
            found = conn.execute(
                sa.select(artifact_versions).where(
                    v.artifact_id == artifact_id, v.version == number
                )
            ).first()
            if found is None:
                return None
            return row.tenant, at_version(row_to_artifact(row, None), row_to_version(found))

        return await self.db.run_read(read)

    async def read_bytes(self, artifact: Artifact) -> bytes:
        """The whole content, verified against its hash before anyone sees it. A small blob of
        a local store is read right on the event loop (bounded: INLINE_HASH_BYTES from the
        page cache costs less than the thread hop it saves)."""
        data = None
        if artifact.size_bytes <= INLINE_HASH_BYTES:
            read_now = self.blobs.read_blocking
            if read_now is not None:
                try:
                    data = read_now(artifact.content_hash)
                except OSError:
                    data = None  # the thread path raises the store's own errors
        if data is None:
            data = await self.blobs.read_bytes(artifact.content_hash)
        if len(data) <= INLINE_HASH_BYTES:
            digest = hashlib.sha256(data).hexdigest()
        else:
            digest = await to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
        if digest != artifact.content_hash or len(data) != artifact.size_bytes:
            await self._corrupt(artifact.content_hash)
        return data

    def stream(
        self, artifact: Artifact, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Bytes [start, end). The whole content is hashed while it streams and its last chunk
        held back until the hash matches, so a reader never sees a clean end of corrupt data;
        a partial range cannot be verified without reading everything, and is served as is."""
        whole = start == 0 and (end is None or end >= artifact.size_bytes)
        if not whole or not self.verify_streams:
            return self.blobs.open(artifact.content_hash, start, end)
        return self._verified(artifact)

    async def _verified(self, artifact: Artifact) -> AsyncIterator[bytes]:
        hasher = hashlib.sha256()
        size = 0
        held: bytes | None = None
        async for chunk in self.blobs.open(artifact.content_hash, hasher=hasher):
            size += len(chunk)
            if held is not None:
                yield held
            held = chunk
        if hasher.hexdigest() != artifact.content_hash or size != artifact.size_bytes:
            await self._corrupt(artifact.content_hash)
        if held is not None:
            yield held

    async def _corrupt(self, digest: str) -> NoReturn:
        log.error("blob %s does not match its hash: quarantined", digest)
        await self.blobs.quarantine(digest)
        raise BlobCorrupt(digest)

    async def page(self, query: ListQuery, *, limit: int, after: Cursor | None = None) -> Page:
        """Newest first; every filter applies in SQL before the limit; keyset pagination."""
        rows: Sequence[Any]
        if query.derived_from is not None:
            parent = query.derived_from
            rows = await self.db.run_read(
                lambda conn: self._children(conn, query, parent, limit + 1, after)
            )
        else:
            if self.db.dialect == "sqlite":
                sql, params = artifact_sql.page_sqlite(self.tenant, query, limit + 1, after)
                loop_rows = self.db.loop_rows(sql, params)
                if loop_rows is not None:
                    return _page(loop_rows, limit)
            stmt = sa.select(*SUMMARY_COLUMNS).where(self.mine, LIVE, *self._filters(query))
            if after is not None:
                stmt = stmt.where(
                    sa.tuple_(artifacts.c.created_at, artifacts.c.id) < (after.created_at, after.id)
                )
            stmt = stmt.order_by(*ORDER).limit(limit + 1)
            rows = await self.db.run_read(lambda conn: conn.execute(stmt).all())
        return _page(rows, limit)

    # -- helpers -----------------------------------------------------------------------------

    def _children(
        self,
        conn: sa.Connection,
        query: ListQuery,
        parent_id: str,
        want: int,
        after: Cursor | None,
    ) -> list[Any]:
        """Up to `want` children of a parent, in list order. The walk follows the parent's
        lineage rows (ix_lineage_parent_order: child_created_at is the child's created_at) and
        joins each child by its key, so a page costs its own rows whatever the size of the
        store. A child that names the parent twice has two lineage rows, next to each other in
        that order: the repeats are dropped here, and the walk goes on past them (in SQL, a
        NOT EXISTS made PostgreSQL anti-join the whole lineage table, and a correlated
        min(position) made it sort every child of the parent)."""
        edge = lineage
        others = self._filters(dataclasses.replace(query, derived_from=None))
        base = (
            sa.select(*SUMMARY_COLUMNS)
            .select_from(edge.join(artifacts, artifacts.c.id == edge.c.child_id))
            .where(edge.c.parent_id == parent_id, self.mine, LIVE, *others)
            .order_by(edge.c.child_created_at.desc(), edge.c.child_id.desc())
        )
        out: list[Any] = []
        while True:
            stmt = base
            if after is not None:
                stmt = stmt.where(
                    sa.tuple_(edge.c.child_created_at, edge.c.child_id)
                    < (after.created_at, after.id)
                )
            asked = want - len(out)
            rows = conn.execute(stmt.limit(asked)).all()
            for row in rows:
                if not out or out[-1].id != row.id:
                    out.append(row)
            if len(rows) < asked or len(out) >= want:
                return out[:want]
            after = Cursor(rows[-1].created_at, rows[-1].id)

    @staticmethod
    def _filters(query: ListQuery) -> list[sa.ColumnElement[bool]]:
        c = artifacts.c
        conditions: list[sa.ColumnElement[bool]] = []
        for column, value in (
            (c.workflow_id, query.workflow_id),
            (c.phase_id, query.phase_id),
            (c.session_id, query.session_id),
            (c.artifact_type, query.artifact_type),
            (c.content_type, query.content_type),
            (c.is_primary_deliverable, query.is_primary_deliverable),
        ):
            if value is not None:
                conditions.append(column == value)
        if query.no_phase:
            conditions.append(c.phase_id.is_(None))
        if query.created_after is not None:
            conditions.append(c.created_at > query.created_after)
        if query.created_before is not None:
            conditions.append(c.created_at < query.created_before)
        if query.derived_from is not None:
            children = sa.select(lineage.c.child_id).where(
                lineage.c.parent_id == query.derived_from
            )
            conditions.append(c.id.in_(children))
        return conditions

    async def _put(
        self, content: Content, max_bytes: int | None, expected_digest: str | None
    ) -> PutResult:
        if isinstance(content, bytes):
            data = content

            async def once() -> AsyncIterator[bytes]:
                yield data

            content = once()
        return await self.blobs.put(content, max_bytes=max_bytes, expected_digest=expected_digest)

    @functools.cached_property
    def _one_by_id(self) -> sa.Select[Any]:
        return artifact_sql.one_by_id(self.db.dialect)

    def _load_one(self, conn: sa.Connection, artifact_id: str) -> Artifact:
        """A live artifact and its parents in one statement (ArtifactNotFound if none)."""
        row = conn.execute(self._one_by_id, {"id": artifact_id, "tenant": self.tenant}).first()
        if row is None:
            raise ArtifactNotFound(artifact_id)
        return artifact_sql.artifact_from_row(row)

    def _live_parents(
        self, conn: sa.Connection, parent_ids: Sequence[str], *, lock: bool = False
    ) -> list[tuple[str, str, int]]:
        """(id, content_hash, version) of each parent, in order: what an edge pins. UnknownParent
        names the first bad one. `lock` (in the write): on PostgreSQL the parents' rows are held
        FOR SHARE until the commit, so no upload replaces a parent's version between this read
        and the edge that pins it (an upload takes the row FOR UPDATE); SQLite writers are
        serialised already."""
        if not parent_ids:
            return []
        stmt = sa.select(artifacts.c.id, artifacts.c.content_hash, artifacts.c.version).where(
            artifacts.c.id.in_(set(parent_ids)), self.mine, LIVE
        )
        if lock and self.db.dialect == "postgresql":
            stmt = stmt.order_by(artifacts.c.id).with_for_update(read=True)
        rows = conn.execute(stmt)
        current = {row.id: (row.content_hash, row.version) for row in rows}
        for index, parent_id in enumerate(parent_ids):
            if parent_id not in current:
                raise UnknownParent(index, parent_id)
        return [(pid, *current[pid]) for pid in parent_ids]

    def _source_id(self, conn: sa.Connection, source: str, source_ref: str) -> str | None:
        """The live artifact imported from (source, source_ref), if any."""
        return (
            conn.execute(
                sa.select(artifacts.c.id).where(
                    artifacts.c.source == source,
                    artifacts.c.source_ref == source_ref,
                    self.mine,
                    LIVE,
                )
            )
        ).scalar()

    def _check_source(self, conn: sa.Connection, source: str, source_ref: str) -> None:
        existing = self._source_id(conn, source, source_ref)
        if existing is not None:
            raise DuplicateSource(source, source_ref, existing)

    async def _write_blob(
        self, write: Callable[[sa.Connection, int | None], T], digest: str, epoch: int | None
    ) -> T:
        """run_write for a write that references a blob just put (see _ensure_blob_row). When
        the write cannot vouch for the blob from the database alone (_Recheck), the store is
        asked, out here with no transaction open, after reading the reclaim epoch anew, and
        the write is tried again with that epoch."""
        for _ in range(RECHECKS):

            def attempt(conn: sa.Connection, seen: int | None = epoch) -> T:
                return write(conn, seen)

            try:
                return await self.db.run_write(attempt)
            except _Recheck:
                epoch = await blob_sql.reclaim_epoch(self.db)
                if not await self.blobs.exists(digest):
                    raise StorageUnavailable(RECLAIMED) from None
        raise StorageUnavailable(RECLAIMED)

    def _ensure_blob_row(
        self, conn: sa.Connection, put: PutResult, now: int, epoch: int | None
    ) -> None:
        """The blob's row, inside the write transaction, so that the write commits only if the
        bytes the put found or stored are still there (GC may reclaim an old unreferenced blob
        between a dedupe hit and this transaction). On SQLite without asking the store, which
        may be S3, while the writer lock is held; storage/maintenance.py has the whole argument:
        - the row is reclaiming: GC is deleting the blob; nothing is committed, and the client's
          retry puts the bytes anew (StorageUnavailable);
        - the row is live: a live row's blob is at its name; nothing to do;
        - there is no row (new content, or GC deleted it since the put): on SQLite, if the
          reclaim epoch is still `epoch`, read before the put, no sweep has committed since,
          and a blob moves to trash/ only while its row is reclaiming, so the bytes are there:
          insert the row. If the epoch moved, _Recheck (the caller asks the store and comes
          back). On PostgreSQL the store is asked here, under the digest's lock, which GC
          holds while it moves that blob (and only that one) to trash/."""
        created_at, now_epoch = blob_sql.state(conn, put.digest)
        if created_at is not None:
            if created_at < 0:
                raise StorageUnavailable(RECLAIMED)
            return
        if now_epoch is None:  # PostgreSQL
            if not run_async(self.blobs.exists, put.digest):
                raise StorageUnavailable(RECLAIMED)
        elif now_epoch != epoch:
            raise _Recheck
        conn.execute(self._blob_insert, {"digest": put.digest, "size": put.size, "created_at": now})

    @functools.cached_property
    def _blob_insert(self) -> sa.Insert:
        dialect = postgresql if self.db.dialect == "postgresql" else sqlite
        return dialect.insert(blobs).on_conflict_do_nothing(index_elements=["digest"])

    def _demote_primary(
        self, conn: sa.Connection, workflow_id: str, phase_id: str | None, now: int
    ) -> str | None:
        """At most one live primary deliverable per (workflow, phase): demote the current one
        and return its id (None when there was none).

        The group is the one ux_artifacts_one_primary enforces: (tenant, workflow_id,
        coalesce(phase_id, '')). On PostgreSQL concurrent promotions in one group are serialized
        by a transaction-level advisory lock: under READ COMMITTED, a writer that did not wait
        would not see the other's uncommitted primary, demote nothing, and then fail on the
        unique index. (SQLite writers are already serialized by BEGIN IMMEDIATE.)
        """
        group = phase_id or ""
        if self.db.dialect == "postgresql":
            name = f"{self.tenant}\x00{workflow_id}\x00{group}".encode()
            digest = hashlib.blake2b(name, digest_size=4).digest()
            key = int.from_bytes(digest, "big", signed=True)
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(PRIMARY_LOCK_SPACE, key)))
        current = (
            conn.execute(
                sa.select(artifacts.c.id).where(
                    self.mine,
                    artifacts.c.workflow_id == workflow_id,
                    sa.func.coalesce(artifacts.c.phase_id, "") == group,
                    artifacts.c.is_primary_deliverable.is_(True),
                    LIVE,
                )
            )
        ).scalar()
        if current is not None:
            conn.execute(
                artifacts.update()
                .where(artifacts.c.id == current)
                .values(is_primary_deliverable=False, updated_at=now)
            )
        return current
