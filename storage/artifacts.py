"""ArtifactService: the one place where artifacts are written and read.

Invariant I1: every committed artifact row names a blob that is durably present, complete and
hashes to its name. So bytes always go to the blob store first (outside any transaction), and
only then does one short transaction insert or update rows. A crash in between leaves at most an
unreferenced blob, never a row without its bytes.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import fields
from typing import Any, NoReturn

import sqlalchemy as sa
from anyio import to_thread
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.blobs.base import BlobStore, PutResult
from storage.db.engine import Database
from storage.db.tables import DEFAULT_TENANT, artifacts, blobs, lineage
from storage.errors import (
    AmbiguousArtifactId,
    ArtifactNotFound,
    BlobCorrupt,
    DuplicateSource,
    StorageUnavailable,
    UnknownParent,
)
from storage.events import NewEvent, append
from storage.maintenance import lock_digest
from storage.records import (
    Artifact,
    ArtifactChanges,
    Cursor,
    ListQuery,
    NewArtifact,
    NewContent,
    Page,
    now_us,
    row_to_artifact,
    us_to_iso,
)

log = logging.getLogger("artifacts.storage")
FULL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ID_PREFIX = re.compile(r"[0-9a-f-]{8,35}")
LIVE = artifacts.c.deleted_at.is_(None)
ORDER = (artifacts.c.created_at.desc(), artifacts.c.id.desc())
PRIMARY_LOCK_SPACE = 0x41525446  # 'ARTF': first key of our pg_advisory_xact_lock(int, int)

Content = bytes | AsyncIterable[bytes | memoryview]
# Runs inside a write's own transaction, just before it commits, with the artifact as written:
# whatever it records (an idempotency key's response) commits or rolls back with the write.
WriteHook = Callable[[AsyncConnection, Artifact], Awaitable[None]]


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
        if new.derived_from:
            async with self.db.read() as conn:  # fail before any byte is stored
                await self._live_parents(conn, new.derived_from)
        put = await self._put(content, max_bytes, expected_digest)
        artifact_id = self.new_id()
        async with self.db.write() as conn:
            parents = await self._live_parents(conn, new.derived_from)
            now = self.clock()
            await self._ensure_blob_row(conn, put, now)
            previous = None
            if new.is_primary_deliverable:
                previous = await self._demote_primary(conn, new.workflow_id, new.phase_id, now)
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
                await self._check_source(conn, new.source, new.source_ref)
            try:
                await conn.execute(
                    artifacts.insert().values({**_columns(artifact), "tenant": self.tenant})
                )
            except IntegrityError:
                if new.source is None or new.source_ref is None:
                    raise
                # a concurrent import of the same upstream object won (PostgreSQL)
                raise DuplicateSource(new.source, new.source_ref, None) from None
            if parents:
                await conn.execute(
                    lineage.insert(),
                    [
                        {
                            "child_id": artifact_id,
                            "position": i,
                            "parent_id": pid,
                            "parent_digest": d,
                        }
                        for i, (pid, d) in enumerate(parents)
                    ],
                )
            feed = [_event("artifact.created", artifact, derived_from=list(new.derived_from))]
            if artifact.is_primary_deliverable:
                feed.append(_deliverable_changed(artifact, artifact.id, previous))
            await append(conn, feed, now, tenant=self.tenant)
            if hook is not None:
                await hook(conn, artifact)
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
        hook: WriteHook | None = None,
    ) -> Artifact:
        """Upload: new bytes for an existing live artifact (checked before any byte is read)."""
        await self.get(artifact_id, allow_prefix=False)
        put = await self._put(content, max_bytes, expected_digest)
        async with self.db.write() as conn:
            now = self.clock()
            await self._ensure_blob_row(conn, put, now)
            before = await self._load(conn, artifact_id)
            result = await conn.execute(
                artifacts.update()
                .where(artifacts.c.id == artifact_id, self.mine, LIVE)
                .values(
                    content_hash=put.digest,
                    size_bytes=put.size,
                    content_type=described.content_type,
                    filename=described.filename,
                    is_text=described.is_text,
                    updated_at=now,
                )
            )
            if result.rowcount == 0:
                raise ArtifactNotFound(artifact_id)
            after = await self._load(conn, artifact_id)
            event = _event("artifact.content_replaced", after, previous_hash=before.content_hash)
            await append(conn, [event], now, tenant=self.tenant)
            if hook is not None:
                await hook(conn, after)
        self.on_commit()
        return after

    async def update(
        self, artifact_id: str, changes: ArtifactChanges, *, hook: WriteHook | None = None
    ) -> Artifact:
        async with self.db.write() as conn:
            current = await self._load(conn, artifact_id)
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
                previous = await self._demote_primary(
                    conn, current.workflow_id, current.phase_id, now
                )
                feed.append(_deliverable_changed(current, artifact_id, previous))
            elif promote is False and current.is_primary_deliverable:
                feed.append(_deliverable_changed(current, None, artifact_id))
            await conn.execute(
                artifacts.update().where(artifacts.c.id == artifact_id, self.mine).values(values)
            )
            after = await self._load(conn, artifact_id)
            changed = sorted(k for k in values if k != "updated_at")
            feed.insert(0, _event("artifact.updated", after, changed=changed))
            await append(conn, feed, now, tenant=self.tenant)
            if hook is not None:
                await hook(conn, after)
        self.on_commit()
        return after

    async def delete(self, artifact_id: str, *, hook: WriteHook | None = None) -> Artifact:
        """Soft delete: the row stays (lineage, GC grace) but reads answer 'not found'.
        Returns the artifact as it was."""
        async with self.db.write() as conn:
            now = self.clock()
            current = await self._load(conn, artifact_id)
            await conn.execute(
                artifacts.update()
                .where(artifacts.c.id == artifact_id, self.mine, LIVE)
                .values(deleted_at=now, updated_at=now)
            )
            feed = [_event("artifact.deleted", current)]
            if current.is_primary_deliverable:
                feed.append(_deliverable_changed(current, None, artifact_id))
            await append(conn, feed, now, tenant=self.tenant)
            if hook is not None:
                await hook(conn, current)
        self.on_commit()
        return current

    # -- reads -------------------------------------------------------------------------------

    async def find_by_source(self, source: str, source_ref: str) -> Artifact | None:
        """The live artifact imported from this upstream object, if any."""
        async with self.db.read() as conn:
            found = await self._source_id(conn, source, source_ref)
            return None if found is None else await self._load(conn, found)

    async def get(self, ref: str, *, allow_prefix: bool = True) -> Artifact:
        """By full id, or (allow_prefix) by a unique prefix of at least 8 characters."""
        return await self.db.run_read(lambda conn: self._get(conn, ref.lower(), allow_prefix))

    def _get(self, conn: sa.Connection, ref: str, allow_prefix: bool) -> Artifact:
        if FULL_ID.fullmatch(ref):
            return self._load_sync(conn, ref)
        if not allow_prefix or not ID_PREFIX.fullmatch(ref):
            raise ArtifactNotFound(ref)
        upper = ref[:-1] + chr(ord(ref[-1]) + 1)
        found = (
            conn.execute(
                sa.select(artifacts.c.id)
                .where(artifacts.c.id >= ref, artifacts.c.id < upper, self.mine, LIVE)
                .limit(2)
            )
            .scalars()
            .all()
        )
        if not found:
            raise ArtifactNotFound(ref)
        if len(found) > 1:
            raise AmbiguousArtifactId(ref)
        return self._load_sync(conn, found[0])

    async def owner_of(self, artifact_id: str) -> tuple[str, Artifact] | None:
        """(tenant, artifact) of a live artifact by its full id, whoever owns it: only for
        credentials that name their own tenant, such as a signed link."""
        if not FULL_ID.fullmatch(artifact_id):
            return None
        query = sa.select(artifacts).where(artifacts.c.id == artifact_id, LIVE)
        row = await self.db.run_read(lambda conn: conn.execute(query).first())
        return None if row is None else (row.tenant, row_to_artifact(row, None))

    async def read_bytes(self, artifact: Artifact) -> bytes:
        """The whole content, verified against its hash before anyone sees it."""
        data = await self.blobs.read_bytes(artifact.content_hash)
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
        stmt = sa.select(artifacts).where(self.mine, LIVE, *self._filters(query))
        if after is not None:
            stmt = stmt.where(
                sa.tuple_(artifacts.c.created_at, artifacts.c.id) < (after.created_at, after.id)
            )
        stmt = stmt.order_by(*ORDER).limit(limit + 1)
        rows = await self.db.run_read(lambda conn: conn.execute(stmt).all())
        items = [row_to_artifact(row, None) for row in rows[:limit]]
        more = len(rows) > limit
        last = items[-1] if more else None
        return Page(items, Cursor(last.created_at, last.id) if last else None)

    # -- helpers -----------------------------------------------------------------------------

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

    async def _load(self, conn: AsyncConnection, artifact_id: str) -> Artifact:
        return await conn.run_sync(self._load_sync, artifact_id)

    def _load_sync(self, conn: sa.Connection, artifact_id: str) -> Artifact:
        row = conn.execute(
            sa.select(artifacts).where(artifacts.c.id == artifact_id, self.mine, LIVE)
        ).first()
        if row is None:
            raise ArtifactNotFound(artifact_id)
        parents = (
            conn.execute(
                sa.select(lineage.c.parent_id)
                .where(lineage.c.child_id == artifact_id)
                .order_by(lineage.c.position)
            )
            .scalars()
            .all()
        )
        return row_to_artifact(row, tuple(parents))

    async def _live_parents(
        self, conn: AsyncConnection, parent_ids: Sequence[str]
    ) -> list[tuple[str, str]]:
        """(id, content_hash) of each parent, in order; UnknownParent names the first bad one."""
        if not parent_ids:
            return []
        rows = await conn.execute(
            sa.select(artifacts.c.id, artifacts.c.content_hash).where(
                artifacts.c.id.in_(set(parent_ids)), self.mine, LIVE
            )
        )
        digests = {row.id: row.content_hash for row in rows}
        for index, parent_id in enumerate(parent_ids):
            if parent_id not in digests:
                raise UnknownParent(index, parent_id)
        return [(pid, digests[pid]) for pid in parent_ids]

    async def _source_id(self, conn: AsyncConnection, source: str, source_ref: str) -> str | None:
        """The live artifact imported from (source, source_ref), if any."""
        return (
            await conn.execute(
                sa.select(artifacts.c.id).where(
                    artifacts.c.source == source,
                    artifacts.c.source_ref == source_ref,
                    self.mine,
                    LIVE,
                )
            )
        ).scalar()

    async def _check_source(self, conn: AsyncConnection, source: str, source_ref: str) -> None:
        existing = await self._source_id(conn, source, source_ref)
        if existing is not None:
            raise DuplicateSource(source, source_ref, existing)

    async def _ensure_blob_row(self, conn: AsyncConnection, put: PutResult, now: int) -> None:
        """The blob's row, inside the write transaction; serialised with garbage collection per
        digest, and the file re-checked: GC may have reclaimed an old unreferenced blob between
        our dedupe hit and this transaction (then the client retries; nothing is committed)."""
        await lock_digest(conn, put.digest)
        if not await self.blobs.exists(put.digest):
            raise StorageUnavailable(
                "The content was reclaimed by garbage collection while it was being stored; "
                "retry the request."
            )
        dialect = postgresql if self.db.dialect == "postgresql" else sqlite
        await conn.execute(
            dialect.insert(blobs)
            .values(digest=put.digest, size=put.size, created_at=now)
            .on_conflict_do_nothing(index_elements=["digest"])
        )

    async def _demote_primary(
        self, conn: AsyncConnection, workflow_id: str, phase_id: str | None, now: int
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
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(PRIMARY_LOCK_SPACE, key)))
        current = (
            await conn.execute(
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
            await conn.execute(
                artifacts.update()
                .where(artifacts.c.id == current)
                .values(is_primary_deliverable=False, updated_at=now)
            )
        return current
