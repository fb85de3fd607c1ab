"""Reads verify what they serve: a blob whose bytes no longer hash to their name is never served
as if it were whole. Small blobs are checked before the first byte (500 blob_corrupt, no body);
large ones are hashed while streaming and the connection is cut before the last chunk; either way
the blob is quarantined, fsck reports it, and uploading the same bytes again heals it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.inprocess import AppServer, start_app
from tests.support.servers import ROOT


def blob_path(server: AppServer, digest: str) -> Path:
    return server.data_dir / "blobs" / "sha256" / digest[:2] / digest[2:4] / digest


def corrupt(path: Path, at: int) -> None:
    """Flip one byte in place (same size, so only the hash can tell)."""
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def fsck(server: AppServer) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ARTIFACTS_DATA_DIR": str(server.data_dir)}
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "fsck", "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[AppServer]:
    """The app over a SQLite file (reads are verified the same way on every backend)."""
    server = start_app(tmp_path / "data")
    try:
        yield server
    finally:
        server.stop()


def create_text(client: httpx.Client, content: str) -> dict:
    r = client.post(
        "/artifacts",
        json={"workflow_id": "w", "artifact_type": "text", "title": "t", "content": content},
    )
    assert r.status_code == 201, r.text
    return r.json()


def test_small_corrupt_blob_answers_500_without_body_and_heals(srv: AppServer) -> None:
    with srv.client() as client:
        created = create_text(client, "the report, exactly")
        digest = created["content_hash"]
        corrupt(blob_path(srv, digest), 4)

        for path in (f"/artifacts/{created['id']}", f"/artifacts/{created['id']}/download"):
            r = client.get(path)
            assert r.status_code == 500
            assert r.json()["code"] in ("blob_corrupt", "blob_missing")
            assert "the report" not in r.text
        assert not blob_path(srv, digest).exists()
        assert (srv.data_dir / "blobs" / "quarantine" / digest).is_file()

        report = fsck(srv)
        assert report.returncode == 1
        errors = json.loads(report.stdout)["errors"]
        problems = {(p["problem"], p.get("digest")) for p in errors}
        assert ("blob_missing", digest) in problems

        # the same bytes uploaded again recreate the blob: the first artifact reads again
        assert create_text(client, "the report, exactly")["content_hash"] == digest
        assert client.get(f"/artifacts/{created['id']}").json()["content"] == "the report, exactly"
        assert client.get(f"/artifacts/{created['id']}/download").content == b"the report, exactly"


def test_large_corrupt_blob_never_ends_cleanly(srv: AppServer) -> None:
    data = os.urandom(9 << 20)  # above the verify-before-sending size: streamed
    digest = hashlib.sha256(data).hexdigest()
    with srv.client() as client:
        created = create_text(client, "placeholder")
        up = client.post(
            f"/artifacts/{created['id']}/upload",
            content=data,
            headers={"content-type": "application/octet-stream"},
        )
        assert up.status_code == 200 and up.json()["content_hash"] == digest
        corrupt(blob_path(srv, digest), len(data) // 2)

        received = bytearray()
        with pytest.raises(httpx.HTTPError):
            with client.stream("GET", f"/artifacts/{created['id']}/download") as r:
                assert r.status_code == 200
                assert r.headers["content-length"] == str(len(data))
                for chunk in r.iter_raw():
                    received += chunk
        assert len(received) < len(data)  # the end was never delivered
        assert not blob_path(srv, digest).exists()
        assert (srv.data_dir / "blobs" / "quarantine" / digest).is_file()
        # later requests see a missing blob, never the corrupt bytes
        r = client.get(f"/artifacts/{created['id']}/download")
        assert r.status_code == 500 and r.json()["code"] == "blob_missing"


def test_intact_blobs_stream_whole(srv: AppServer) -> None:
    data = os.urandom((9 << 20) + 17)
    with srv.client() as client:
        created = create_text(client, "x")
        client.post(f"/artifacts/{created['id']}/upload", content=data)
        r = client.get(f"/artifacts/{created['id']}/download")
        assert r.status_code == 200 and r.content == data
        assert hashlib.sha256(r.content).hexdigest() == r.headers["etag"].strip('"')
