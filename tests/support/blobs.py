"""Bytes for blob store tests, and a blob store that lets GC run inside a write."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio.lowlevel

from storage.blobs import FilesystemBlobStore
from storage.db.engine import Database
from storage.maintenance import collect_garbage

DAY_US = 24 * 3600 * 1_000_000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rand_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


async def stream(chunks: Iterable[bytes | memoryview]) -> AsyncIterator[bytes | memoryview]:
    for chunk in chunks:
        await anyio.lowlevel.checkpoint()
        yield chunk


class GcAfterPut(FilesystemBlobStore):
    """A blob store that lets GC (no grace, every superseded version expired) run once between
    a write's put and its transaction: the interleaving the re-check in
    ArtifactService._ensure_blob_row exists for. Arm it with the database; GC must reclaim
    exactly the blob just put, and expire `versions_expired` versions when that is set."""

    db: Database
    armed = False
    versions_expired: int | None = None

    async def put(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().put(*args, **kwargs)
        if self.armed:
            self.armed = False
            report = await collect_garbage(
                self.db, self, grace_us=0, deleted_retention_us=DAY_US, version_retention_us=0
            )
            if self.versions_expired is not None:
                assert report.versions_expired == self.versions_expired
            assert report.blobs_deleted == [result.digest]
        return result
