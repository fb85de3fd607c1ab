"""Idempotency keys: a retried write is answered with the first one's response, never done twice.

A key's life, per (scope, key):

    begin()     no row, or an expired one  -> insert "running" with a fresh lease token: Claimed
                "running", lease still live -> InProgress (the first request is still working)
                "running", lease lapsed     -> the holder died before committing (its write and
                                               the completion are one transaction, so nothing of
                                               it took effect): take the lease over: Claimed
                "completed", not expired    -> Completed (the stored response, to replay)
    heartbeat() the holder extends its lease while its request runs (long uploads)
    complete()  inside the write's own transaction: "running" -> "completed" with the response;
                LeaseLost if another request took the key over meanwhile (the write rolls back)
    release()   the request failed before it wrote anything: the key is free again

Nothing here knows HTTP: a stored response is a status, headers and body bytes; the adapter
decides what they are and what a fingerprint covers.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from storage.db.engine import Database
from storage.db.tables import idempotency_keys as keys_table
from storage.errors import LeaseLost
from storage.records import now_us


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    fingerprint: str  # of the request that produced it


@dataclass(frozen=True, slots=True)
class Claimed:
    token: str


@dataclass(frozen=True, slots=True)
class InProgress:
    retry_after_us: int  # until the holder's lease lapses, if it never heartbeats again


@dataclass(frozen=True, slots=True)
class Completed:
    response: StoredResponse


Begun = Claimed | InProgress | Completed


class IdempotencyKeys:
    def __init__(self, db: Database, *, lease_us: int, ttl_us: int, clock: Any = now_us) -> None:
        """`lease_us`: how long a claim holds without a heartbeat; `ttl_us`: how long a key is
        remembered (from its claim, and again from its completion)."""
        self.db = db
        self.lease_us = lease_us
        self.ttl_us = ttl_us
        self.clock = clock

    def _where(self, scope: str, key: str) -> sa.ColumnElement[bool]:
        return sa.and_(keys_table.c.scope == scope, keys_table.c.key == key)

    async def begin(self, scope: str, key: str) -> Begun:
        token = secrets.token_hex(16)
        now = self.clock()
        fresh = {
            "token": token,
            "status": "running",
            "fingerprint": None,
            "response_status": None,
            "response_headers": None,
            "response_body": None,
            "created_at": now,
            "lease_expires_at": now + self.lease_us,
            "expires_at": now + self.ttl_us,
        }
        dialect = postgresql if self.db.dialect == "postgresql" else sqlite
        insert = (
            dialect.insert(keys_table)
            .values(scope=scope, key=key, **fresh)
            .on_conflict_do_nothing(index_elements=["scope", "key"])
        )

        def begin(conn: sa.Connection) -> Begun:
            while True:
                if conn.execute(insert).rowcount == 1:
                    return Claimed(token)
                row = conn.execute(
                    sa.select(keys_table).where(self._where(scope, key)).with_for_update()
                ).first()
                if row is not None:
                    break
                # PostgreSQL, READ COMMITTED: the row we collided with was deleted before we
                # could lock it (its request failed and released the key on another replica,
                # or GC purged it): try the insert again.
            if row.expires_at > now and row.status == "completed":
                headers = [(str(n), str(v)) for n, v in row.response_headers]
                stored = StoredResponse(
                    row.response_status, headers, bytes(row.response_body), row.fingerprint
                )
                return Completed(stored)
            if row.expires_at > now and row.lease_expires_at > now:
                return InProgress(row.lease_expires_at - now)
            conn.execute(keys_table.update().where(self._where(scope, key)).values(fresh))
            return Claimed(token)

        return await self.db.run_write(begin)

    async def heartbeat(self, scope: str, key: str, token: str) -> bool:
        """Extend the lease; False when it is no longer ours."""

        def extend(conn: sa.Connection) -> bool:
            result = conn.execute(
                keys_table.update()
                .where(self._where(scope, key), keys_table.c.token == token)
                .where(keys_table.c.status == "running")
                .values(lease_expires_at=self.clock() + self.lease_us)
            )
            return bool(result.rowcount == 1)

        return await self.db.run_write(extend)

    def complete(
        self, conn: sa.Connection, scope: str, key: str, token: str, response: StoredResponse
    ) -> None:
        """Record the response in the caller's (the write's) transaction (a synchronous
        connection: writes run as one piece, see Database.run_write)."""
        now = self.clock()
        result = conn.execute(
            keys_table.update()
            .where(self._where(scope, key), keys_table.c.token == token)
            .where(keys_table.c.status == "running")
            .values(
                status="completed",
                fingerprint=response.fingerprint,
                response_status=response.status,
                response_headers=[list(h) for h in response.headers],
                response_body=response.body,
                expires_at=now + self.ttl_us,
            )
        )
        if result.rowcount != 1:
            raise LeaseLost(key)

    async def release(self, scope: str, key: str, token: str) -> None:
        """Forget a claim whose request wrote nothing (only if it is still ours and running)."""
        forget = (
            keys_table.delete()
            .where(self._where(scope, key), keys_table.c.token == token)
            .where(keys_table.c.status == "running")
        )
        await self.db.run_write(lambda conn: conn.execute(forget))


async def purge_expired(db: Database, now: int) -> int:
    """Delete keys past their window (garbage collection runs this); how many went. A key
    taken over at the same moment has a new expiry, so the re-checked WHERE spares it."""
    purge = keys_table.delete().where(keys_table.c.expires_at <= now)
    return await db.run_write(lambda conn: int(conn.execute(purge).rowcount))
