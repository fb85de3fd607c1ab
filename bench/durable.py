"""The in-process durable-create loop: the least a durable small create costs on this machine,
the reference of the create target. Each iteration writes a 1 KiB staging file, fsyncs it, links
it under its sha256 name, fsyncs that directory, unlinks the staging name, and commits one row in
its own SQLite WAL transaction with synchronous=FULL (what the server's blob store and database
do per create, without HTTP, validation or the event row).

`python -m bench.durable DIR SECONDS` prints {"per_s": ..., "iterations": ...} (run it pinned to
the server's core).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import time
import uuid
from pathlib import Path


def durable_loop(work: Path, seconds: float, warmup: float = 0.3) -> dict[str, float]:
    blobs, staging = work / "blobs", work / "tmp"
    blobs.mkdir(parents=True, exist_ok=True)
    staging.mkdir(exist_ok=True)
    db = sqlite3.connect(work / "loop.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS artifacts (id TEXT PRIMARY KEY, content_hash TEXT NOT NULL, "
        "size_bytes INTEGER NOT NULL, workflow_id TEXT NOT NULL, created_at INTEGER NOT NULL, "
        "metadata TEXT NOT NULL)"
    )
    prefix = os.urandom(1000)

    def once(n: int) -> None:
        data = prefix + n.to_bytes(24, "big")
        digest = hashlib.sha256(data).hexdigest()
        tmp = staging / uuid.uuid4().hex
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        directory = blobs / digest[:2] / digest[2:4]
        directory.mkdir(parents=True, exist_ok=True)
        os.link(tmp, directory / digest)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        os.unlink(tmp)
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?)",
            (str(uuid.uuid4()), digest, len(data), "bench", time.time_ns() // 1000, "{}"),
        )
        db.execute("COMMIT")

    n = 0
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        n += 1
        once(n)
    start = time.perf_counter()
    end = start + seconds
    count = 0
    while time.perf_counter() < end:
        n += 1
        count += 1
        once(n)
    elapsed = time.perf_counter() - start
    db.close()
    return {"per_s": count / elapsed, "iterations": count}


if __name__ == "__main__":
    print(json.dumps(durable_loop(Path(sys.argv[1]), float(sys.argv[2]))))
