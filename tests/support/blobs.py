"""Bytes for blob store tests."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Iterable

import anyio.lowlevel


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rand_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


async def stream(chunks: Iterable[bytes | memoryview]) -> AsyncIterator[bytes | memoryview]:
    for chunk in chunks:
        await anyio.lowlevel.checkpoint()
        yield chunk
