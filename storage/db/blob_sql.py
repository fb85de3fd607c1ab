"""The blob rows' SQL, per backend: the states a row goes through while garbage collection
reclaims it, the reclaim epoch, and PostgreSQL's per-digest lock. The protocol they serve
(uploads against garbage collection) is told in storage/maintenance.py.

A blob row is one of:
- live: `created_at` >= 0, and its blob is at its name in the store;
- reclaiming: `created_at` < 0, flipped by `FLIP` (-x - 1, its own inverse, so the time comes
  back if the reclaim is called off). GC has decided to delete the blob; nothing may reference
  the row any more, and its blob may be at its name or already in trash/.
The reclaim epoch is a counter bumped by every transaction that deletes reclaiming rows. On
SQLite it is the database header's user_version, which SQLite reserves for the application,
is written and rolled back with the transaction (savepoints included), and costs no table;
PostgreSQL has none (uploads there check the store inside the transaction, see
ArtifactService._ensure_blob_row).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from storage.db.engine import Database
from storage.db.tables import blobs

DIGEST_LOCK_SPACE = 0x424C4F42  # 'BLOB'
RECLAIMING = blobs.c.created_at < 0
LIVE = blobs.c.created_at >= 0
FLIP = -blobs.c.created_at - 1  # live <-> reclaiming, the time kept

EPOCH_SQLITE = "SELECT user_version FROM pragma_user_version"
# An upload's one look at its blob inside the write: the row's created_at (None: no row) and,
# on SQLite, the reclaim epoch.
_STATE_SQLITE = sa.text(
    "SELECT (SELECT created_at FROM blobs WHERE digest = :digest), "
    "(SELECT user_version FROM pragma_user_version)"
)
_STATE = sa.select(blobs.c.created_at).where(blobs.c.digest == sa.bindparam("digest"))


def digest_lock(digest: str) -> sa.Select[Any]:
    """PostgreSQL's transaction lock that serialises GC and uploads per digest."""
    key = int.from_bytes(bytes.fromhex(digest[:8]), "big", signed=True)
    return sa.select(sa.func.pg_advisory_xact_lock(DIGEST_LOCK_SPACE, key))


def lock_digest(conn: sa.Connection, digest: str) -> None:
    """Serialise GC and uploads per digest on PostgreSQL (on SQLite every write transaction
    holds the one writer lock already)."""
    if conn.dialect.name == "postgresql":
        conn.execute(digest_lock(digest))


def state(conn: sa.Connection, digest: str) -> tuple[int | None, int | None]:
    """(the row's created_at or None when there is no row, the reclaim epoch or None on
    PostgreSQL), in one statement on SQLite; on PostgreSQL after taking the digest's lock."""
    if conn.dialect.name == "postgresql":
        conn.execute(digest_lock(digest))
        return conn.execute(_STATE, {"digest": digest}).scalar(), None
    row = conn.execute(_STATE_SQLITE, {"digest": digest}).one()
    return row[0], row[1]


def bump_epoch(conn: sa.Connection) -> None:
    """Inside the transaction that deletes reclaiming rows (SQLite; nothing on PostgreSQL)."""
    if conn.dialect.name != "sqlite":
        return
    epoch = conn.exec_driver_sql(EPOCH_SQLITE).scalar_one()
    conn.exec_driver_sql(f"PRAGMA user_version = {(int(epoch) + 1) & 0x7FFFFFFF}")


async def reclaim_epoch(db: Database) -> int | None:
    """The reclaim epoch now (None on PostgreSQL): on SQLite a read of the database header,
    right on the event loop when it can be."""
    if db.dialect != "sqlite":
        return None
    rows = db.loop_rows(EPOCH_SQLITE, ())
    if rows is None:
        return int(await db.run_read(lambda conn: conn.exec_driver_sql(EPOCH_SQLITE).scalar_one()))
    return int(rows[0][0])
