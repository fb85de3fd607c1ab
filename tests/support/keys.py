"""API keys for access-control tests: one of each scope, admin, another tenant's, a revoked and an
expired one, made through the real ApiKeys store; and the Authorization headers that carry them."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass

from storage.apikeys import SCOPES, ApiKeys
from storage.db.engine import Database
from storage.records import now_us


@dataclass
class Keys:
    by_scope: dict[str, str]
    admin: str
    other_tenant: str
    revoked: str
    expired: str


def make_keys(database_url: str) -> Keys:
    async def go() -> Keys:
        db = Database(database_url)
        try:
            keys = ApiKeys(db)
            by_scope = {s: (await keys.create("proj", [s]))[1] for s in SCOPES}
            admin = (await keys.create("proj", ["admin"]))[1]
            other = (await keys.create("other", ["admin"]))[1]
            revoked_key, revoked = await keys.create("proj", list(SCOPES))
            await keys.revoke(revoked_key.id)
            expired = (await keys.create("proj", ["admin"], expires_at=now_us() - 1))[1]
            return Keys(by_scope, admin, other, revoked, expired)
        finally:
            await db.dispose()

    return asyncio.run(go())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def basic(key: str, user: str = "syn") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}
