"""References for the bench: a bare ASGI app doing the least a durable upload/download server
must do, on the same uvicorn, so the bench can show what our stack adds to it; and the least any
small-request server does.

POST /upload: hash and write the raw body (1 MiB batches in a worker thread), fsync, answer the
sha256. GET /download: the file `ref-download` read in 1 MiB steps in a worker thread.
GET /json: a fixed small JSON document (the requests/s ceiling of the server it runs on).
Run as `uvicorn bench.reference:app` (or granian) with BENCH_REFERENCE_DIR set.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

from anyio import to_thread

ROOT = Path(os.environ.get("BENCH_REFERENCE_DIR", "/tmp"))
STEP = 1 << 20
FIXED = b'{"id":"0b7e6a52-5f0e-4c3e-9d2a-6f1d2c3b4a59","status":"ok","size_bytes":1024}'
FIXED_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(FIXED)).encode()),
]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/json":
        await send({"type": "http.response.start", "status": 200, "headers": FIXED_HEADERS})
        await send({"type": "http.response.body", "body": FIXED})
        return
    if scope["method"] == "POST":
        body = await _upload(receive)
    else:
        await _download(scope, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def _upload(receive: Any) -> bytes:
    digest = hashlib.sha256()
    path = ROOT / f"ref-{secrets.token_hex(8)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write(chunks: list[bytes]) -> None:
        for chunk in chunks:
            digest.update(chunk)
            os.write(fd, chunk)

    try:
        pending: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message.get("body"):
                pending.append(message["body"])
                size += len(message["body"])
                if size >= STEP:
                    await to_thread.run_sync(write, pending)
                    pending, size = [], 0
            if not message.get("more_body"):
                break
        await to_thread.run_sync(write, pending)
        await to_thread.run_sync(os.fsync, fd)
    finally:
        os.close(fd)
        path.unlink()
    return digest.hexdigest().encode()


async def _download(scope: dict[str, Any], send: Any) -> None:
    path = ROOT / "ref-download"
    size = path.stat().st_size
    headers = [
        (b"content-length", str(size).encode()),
        (b"content-type", b"application/octet-stream"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    fd = os.open(path, os.O_RDONLY)
    try:
        position = 0
        while position < size:
            data = await to_thread.run_sync(os.pread, fd, STEP, position)
            position += len(data)
            await send({"type": "http.response.body", "body": data, "more_body": position < size})
    finally:
        os.close(fd)
