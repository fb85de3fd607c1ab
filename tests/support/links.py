"""Signed download links: a server with keys and one uploaded artifact, and the calls on it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from storage.apikeys import ApiKeys
from storage.db.engine import Database

CONTENT = b"the exact bytes \x00\xff" * 50


def keys_for(database_url: str) -> tuple[str, str, str]:
    async def go() -> tuple[str, str, str]:
        db = Database(database_url)
        try:
            k = ApiKeys(db)
            admin = (await k.create("t1", ["admin"]))[1]
            writer = (await k.create("t1", ["artifact:create"]))[1]
            other = (await k.create("t2", ["admin"]))[1]
            return admin, writer, other
        finally:
            await db.dispose()

    return asyncio.run(go())


@contextmanager
def linked_server(
    start: Any, tmp_path: Path, database_url: str
) -> Iterator[tuple[Any, httpx.Client, httpx.Client, str, str]]:
    """A server (`start`: start_app or start_server) with an admin and another tenant's
    client, one uploaded artifact, and a key that may only create."""
    admin, writer, other = keys_for(database_url)
    srv = start(
        tmp_path / "data",
        database_url=database_url,
        env={
            "ARTIFACTS_RATE_LIMIT": "",
            "ARTIFACTS_LOG_LEVEL": "info",
            "ARTIFACTS_DOWNLOAD_URL_MAX_TTL": "1h",
        },
    )
    a = srv.client(headers={"Authorization": f"Bearer {admin}"})
    b = srv.client(headers={"Authorization": f"Bearer {other}"})
    try:
        made = a.post(
            "/artifacts",
            data={"workflow_id": "w", "artifact_type": "other", "title": "x"},
            files={"file": ("x.bin", CONTENT, "application/octet-stream")},
        )
        assert made.status_code == 201, made.text
        yield srv, a, b, made.json()["id"], writer
    finally:
        a.close()
        b.close()
        srv.stop()


def link_of(c: httpx.Client, artifact_id: str, **params: int) -> dict:
    r = c.post(f"/artifacts/{artifact_id}/download-url", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def fetch(srv: Any, url: str, method: str = "GET") -> httpx.Response:
    parts = urlsplit(url)
    with srv.client() as anonymous:  # no key
        return anonymous.request(method, parts.path + ("?" + parts.query if parts.query else ""))
