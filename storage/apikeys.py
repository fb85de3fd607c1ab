"""API keys: each bound to one tenant (a project) with a set of scopes, CrowNest-style.

A key is `wfa_` + 43 characters of URL-safe base64 (256 random bits). Only its sha256 and its
first 12 characters (to recognise it in `keys list`) are stored: a fast hash is enough for a
secret of that entropy, and it makes the lookup one indexed equality. The key itself is shown
once, when it is created.

Revoked and expired keys stay on record, and open mode is "no key on record" (`Access.open`):
once a key has existed, revoking or outliving the last one leaves a store that refuses every
request, never an open one. Only `forget_all` (`artifacts keys reopen`), refused while a key is
active, empties the record and so brings open mode back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from storage.db.engine import Database
from storage.db.tables import api_keys, artifacts
from storage.errors import StorageError
from storage.records import now_us

SCOPES = ("artifact:read", "artifact:create", "artifact:delete", "import:run", "admin")
KEY_PREFIX = "wfa_"
SHOWN = 12  # characters of the key kept in clear, to tell keys apart


class ApiKeyNotFound(StorageError):
    def __init__(self, ref: str, matches: int = 0) -> None:
        if matches > 1:
            super().__init__(f"{ref!r} matches {matches} API keys: give the id instead.")
        else:
            super().__init__(f"No API key matches {ref!r}.")


class KeysStillActive(StorageError):
    def __init__(self, active: int) -> None:
        super().__init__(
            f"{active} API key{'s are' if active > 1 else ' is'} still active: revoke "
            f"{'them' if active > 1 else 'it'} first (`artifacts keys revoke`)."
        )
        self.active = active


@dataclass(frozen=True, slots=True)
class Access:
    """The keys on record as a whole."""

    on_record: int  # every key ever created and not forgotten: revoked and expired ones count
    active: int  # of them, the ones a request may use now

    @property
    def open(self) -> bool:
        """Open mode applies: no key was ever created (or every one was forgotten)."""
        return self.on_record == 0


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant: str
    name: str | None
    prefix: str
    scopes: tuple[str, ...]
    created_at: int
    expires_at: int | None
    revoked_at: int | None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def active(self, now: int) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def _row_to_key(row: sa.Row[tuple[object, ...]]) -> ApiKey:
    m = row._mapping
    return ApiKey(
        m["id"], m["tenant"], m["name"], m["prefix"], tuple(m["scopes"]), m["created_at"],
        m["expires_at"], m["revoked_at"],
    )  # fmt: skip


# authenticate()'s columns, by position; the raw SQLite form for Database.loop_rows
_KEY_COLUMNS = tuple(
    api_keys.c[name]
    for name in (
        "id", "tenant", "name", "prefix", "scopes", "created_at", "expires_at", "revoked_at",
        "secret_hash",
    )
)  # fmt: skip
_SECRET = 8
_BY_SECRET_SQLITE = (
    f"SELECT {', '.join(c.name for c in _KEY_COLUMNS)} FROM api_keys WHERE secret_hash = ?"  # noqa: S608
)


def _key_from_columns(row: Any) -> ApiKey:
    scopes = row[4]
    if isinstance(scopes, str):  # raw SQLite: JSON text
        scopes = json.loads(scopes)
    return ApiKey(row[0], row[1], row[2], row[3], tuple(scopes), row[5], row[6], row[7])


class ApiKeys:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self,
        tenant: str,
        scopes: list[str],
        *,
        name: str | None = None,
        expires_at: int | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (the only time the secret exists outside the caller)."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {unknown or []}")
        if not tenant or len(tenant) > 255:
            raise ValueError("a project is 1 to 255 characters")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            str(uuid.uuid4()), tenant, name, secret[:SHOWN], tuple(sorted(set(scopes))),
            now_us(), expires_at, None,
        )  # fmt: skip
        insert = api_keys.insert().values(
            id=key.id, tenant=tenant, name=name, prefix=key.prefix, secret_hash=hash_key(secret),
            scopes=list(key.scopes), created_at=key.created_at, expires_at=expires_at,
        )  # fmt: skip
        await self.db.run_write(lambda conn: conn.execute(insert))
        return key, secret

    async def list(self, *, tenant: str | None = None) -> list[ApiKey]:
        stmt = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if tenant is not None:
            stmt = stmt.where(api_keys.c.tenant == tenant)
        return await self.db.run_read(lambda conn: [_row_to_key(r) for r in conn.execute(stmt)])

    async def revoke(self, ref: str) -> tuple[ApiKey, bool]:
        """Revoke by id or by the shown prefix (which must match exactly one key): the key as it
        is now, and whether this call revoked it (False: it already was). The key stays on
        record (see the module's docstring)."""

        def revoke(conn: sa.Connection) -> tuple[ApiKey, bool]:
            rows = conn.execute(
                sa.select(api_keys).where(sa.or_(api_keys.c.id == ref, api_keys.c.prefix == ref))
            ).all()
            if len(rows) != 1:
                raise ApiKeyNotFound(ref, len(rows))
            key = _row_to_key(rows[0])
            if key.revoked_at is not None:
                return key, False
            at = now_us()
            conn.execute(api_keys.update().where(api_keys.c.id == key.id).values(revoked_at=at))
            return dataclasses.replace(key, revoked_at=at), True

        return await self.db.run_write(revoke)

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The active key with this secret, or None (unknown, revoked or expired alike)."""
        if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
            return None
        digest = hash_key(secret)
        rows = self.db.loop_rows(_BY_SECRET_SQLITE, (digest,))  # no hop, no cache: a revoked
        if rows is not None:  # key is refused from the next request on
            row = rows[0] if rows else None
        else:
            query = sa.select(*_KEY_COLUMNS).where(api_keys.c.secret_hash == digest)
            row = await self.db.run_read(lambda conn: conn.execute(query).first())
        if row is None or not hmac.compare_digest(row[_SECRET], digest):
            return None
        key = _key_from_columns(row)
        return key if key.active(now_us()) else None

    async def active_key(self, key_id: str) -> ApiKey | None:
        """The key with this id if it is active now, else None (unknown, revoked or expired
        alike): for a credential that names its key rather than carrying the secret (the web
        UI's session cookie), so a revocation or an expiry ends it from the next request on."""
        query = sa.select(api_keys).where(api_keys.c.id == key_id)
        row = await self.db.run_read(lambda conn: conn.execute(query).first())
        if row is None:
            return None
        key = _row_to_key(row)
        return key if key.active(now_us()) else None

    async def access(self) -> Access:
        """How many keys are on record, and how many of them are active."""
        query = sa.select(sa.func.count(), _count(_active(now_us())))
        on_record, active = await self.db.run_read(lambda conn: conn.execute(query).one())
        return Access(int(on_record), int(active))

    async def forget_all(self) -> int:
        """Delete every key on record, so that open mode applies again; how many there were.
        Refused (KeysStillActive, nothing deleted) while any key is active. Only inactive keys
        are deleted, so one that another process creates meanwhile survives (and keeps the
        store closed)."""

        def forget(conn: sa.Connection) -> int:
            now = now_us()
            active = int(conn.execute(sa.select(_count(_active(now)))).scalar_one())
            if active:
                raise KeysStillActive(active)
            return conn.execute(api_keys.delete().where(sa.not_(_active(now)))).rowcount or 0

        return await self.db.run_write(forget)

    async def visible_artifacts(self, tenant: str) -> int:
        """How many live artifacts a key of `tenant` sees."""
        query = sa.select(sa.func.count()).where(
            artifacts.c.tenant == tenant, artifacts.c.deleted_at.is_(None)
        )
        return await self.db.run_read(lambda conn: int(conn.execute(query).scalar_one()))


def _active(now: int) -> sa.ColumnElement[bool]:
    return sa.and_(
        api_keys.c.revoked_at.is_(None),
        sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now),
    )


def _count(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)
