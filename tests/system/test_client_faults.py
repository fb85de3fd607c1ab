"""The client through a loopback proxy that cuts connections mid-transfer or changes a byte
(tests/support/proxy.py), in front of a real `artifacts serve`: downloads resume with Range,
uploads and creates are retried under their one Idempotency-Key without making anything twice
(even when the cut comes after the server committed), the change feed reconnects with
Last-Event-ID, and a wrong byte on the wire leaves nothing at the destination."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from workflow_artifacts_client import ArtifactsClient, DigestMismatch, Retry

from tests.support.proxy import Faults, Proxy
from tests.support.servers import Server

pytestmark = pytest.mark.timeout(120)
MiB = 1024 * 1024
FAST = Retry(attempts=8, backoff=0.05, max_backoff=0.5)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def port_of(server: Server) -> int:
    return httpx.URL(server.url).port or 80


def test_a_download_cut_again_and_again_resumes_with_range(srv: Server, wf: str, tmp_path: Path):
    payload = os.urandom(6 * MiB + 5)
    with ArtifactsClient(srv.url) as direct:
        a = direct.create_from_file(wf, payload, filename="big.bin")
    # every connection is cut after 1 MiB of answer: only Range requests can finish it
    with Proxy(port_of(srv), Faults(drop_response_after=MiB, faulty=None)) as proxy:
        with ArtifactsClient(proxy.url, retry=FAST) as client:
            moved: list[int] = []
            got = client.download(a.id, tmp_path / "big.bin", progress=moved.append)
    assert (tmp_path / "big.bin").read_bytes() == payload
    assert got.sha256 == sha(payload) and got.reconnects >= 5 and proxy.cuts >= 5
    assert sum(moved) == len(payload)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_an_upload_cut_mid_body_is_sent_again_and_stored_once(srv: Server, wf: str):
    payload = os.urandom(4 * MiB)
    with Proxy(port_of(srv), Faults(drop_request_after=MiB)) as proxy:
        with ArtifactsClient(proxy.url, retry=FAST) as client:
            created = client.create_from_file(wf, payload, filename="a.bin")
            assert proxy.cuts == 1 and proxy.connections >= 2
    with Proxy(port_of(srv), Faults(drop_request_after=2 * MiB)) as proxy:
        with ArtifactsClient(proxy.url, retry=FAST) as client:
            up = client.upload(created.id, payload[::-1])
            assert proxy.cuts == 1
    with ArtifactsClient(srv.url) as direct:
        assert [r.id for r in direct.list(workflow_id=wf)] == [created.id]
        assert [v.version for v in direct.versions(created.id)] == [2, 1]
        assert (up.version, up.content_hash) == (2, sha(payload[::-1]))
        assert direct.get(created.id).content_hash == sha(payload[::-1])


def test_an_answer_lost_after_the_commit_is_replayed_not_repeated(srv: Server, wf: str):
    """The server stored the write, then the connection died before its answer arrived: the
    retry carries the same Idempotency-Key and gets the first answer back."""
    with Proxy(port_of(srv), Faults(drop_response_after=0)) as proxy:
        with ArtifactsClient(proxy.url, retry=FAST) as client:
            created = client.create(wf, "once", "body")
            assert proxy.cuts == 1
    with Proxy(port_of(srv), Faults(drop_response_after=0)) as proxy:
        with ArtifactsClient(proxy.url, retry=FAST) as client:
            up = client.upload(created.id, os.urandom(MiB))
            assert proxy.cuts == 1
    with Proxy(port_of(srv), Faults(drop_response_after=0)) as proxy:
        with ArtifactsClient(proxy.url, retry=FAST) as client:
            assert client.delete(created.id).status == "deleted"  # not 404 on the retry
            assert proxy.cuts == 1
    with ArtifactsClient(srv.url) as direct:
        events = list(direct.events(workflow_id=wf, follow=False))
    assert [e.type for e in events] == [
        "artifact.created",
        "artifact.content_replaced",
        "artifact.deleted",
    ]
    assert up.version == 2


def test_the_change_feed_reconnects_with_last_event_id(srv: Server, wf: str):
    with ArtifactsClient(srv.url) as direct:
        ids = [direct.create(wf, f"n{i}", f"{i}" * 5000).id for i in range(12)]
    # each connection is cut after 3 KiB of the stream: a few events per connection
    with Proxy(port_of(srv), Faults(drop_response_after=3 * 1024, faulty=None)) as proxy:
        with ArtifactsClient(proxy.url, retry=FAST) as client:
            stream = client.events(workflow_id=wf)
            seen = [next(stream) for _ in range(12)]
            stream.close()  # type: ignore[attr-defined]
    assert [e.artifact_id for e in seen] == ids  # each once, in order
    assert proxy.cuts >= 2


def test_a_wrong_byte_on_the_wire_fails_and_leaves_nothing(srv: Server, wf: str, tmp_path: Path):
    marker = b"<<the byte the proxy flips>>"
    payload = os.urandom(700_000) + marker + os.urandom(300_000)
    with ArtifactsClient(srv.url) as direct:
        a = direct.create_from_file(wf, payload, filename="data.bin", metadata={"path": "data.bin"})
    with Proxy(port_of(srv), Faults(corrupt=marker, faulty=None)) as proxy:
        with ArtifactsClient(proxy.url, retry=FAST) as client, pytest.raises(DigestMismatch):
            client.download(a.id, tmp_path / "lib" / "data.bin")
        assert proxy.corrupted == 1
        assert [p for p in tmp_path.rglob("*") if p.is_file()] == []

        dest = tmp_path / "pulled"
        proxy.corrupted = 0  # flip it again, for `wfa pull`
        run = subprocess.run(
            [sys.executable, "-m", "workflow_artifacts_client", "pull", "-w", wf, str(dest)],
            env={**os.environ, "ARTIFACTS_URL": proxy.url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proxy.corrupted == 1
    assert run.returncode == 1, run.stdout + run.stderr
    assert "digest_mismatch" in run.stdout and "Traceback" not in run.stderr
    assert "1 of 1 file(s) failed" in run.stderr
    assert not dest.exists() or [p for p in dest.rglob("*") if p.is_file()] == []


def test_an_interrupted_pull_is_finished_by_running_it_again(srv: Server, wf: str, tmp_path: Path):
    payload = os.urandom(6 * MiB)
    with ArtifactsClient(srv.url) as direct:
        direct.create_from_file(wf, payload, filename="big.bin", metadata={"path": "big.bin"})
    dest = tmp_path / "out"

    def pull(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "workflow_artifacts_client",
                "pull",
                "-w",
                wf,
                str(dest),
                *extra,
            ],
            env={**os.environ, "ARTIFACTS_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
        )

    with Proxy(port_of(srv), Faults(drop_response_after=2 * MiB, faulty=None)) as proxy:
        first = pull(proxy.url, "--retries", "0")
    assert first.returncode == 1 and "run again to resume" in first.stderr
    parts = list(dest.glob(".big.bin.*.wfa-part"))
    assert len(parts) == 1 and 0 < parts[0].stat().st_size < len(payload)
    assert not (dest / "big.bin").exists() and not (dest / "wfa-manifest.json").exists()
    kept = parts[0].stat().st_size

    second = pull(srv.url)
    assert second.returncode == 0, second.stderr
    assert f"resumed at {kept / MiB:.1f} MiB" in second.stdout
    assert (dest / "big.bin").read_bytes() == payload
    assert sorted(p.name for p in dest.iterdir()) == ["big.bin", "wfa-manifest.json"]


def test_the_async_client_resumes_and_retries_alike(srv: Server, wf: str, tmp_path: Path):
    import asyncio

    from workflow_artifacts_client import AsyncArtifactsClient

    payload = os.urandom(4 * MiB)

    async def upload(url: str) -> str:
        async with AsyncArtifactsClient(url, retry=FAST) as client:
            created = await client.create_from_file(wf, payload, filename="a.bin")
            return created.id

    async def download(url: str, artifact_id: str) -> None:
        async with AsyncArtifactsClient(url, retry=FAST) as client:
            got = await client.download(artifact_id, tmp_path / "a.bin")
            assert got.reconnects >= 3
            stream = client.events(workflow_id=wf)
            first = await stream.__anext__()
            await stream.aclose()  # type: ignore[attr-defined]
            assert first.artifact_id == artifact_id

    with Proxy(port_of(srv), Faults(drop_request_after=MiB)) as proxy:
        artifact_id = asyncio.run(upload(proxy.url))
        assert proxy.cuts == 1
    with Proxy(port_of(srv), Faults(drop_response_after=MiB, faulty=None)) as proxy:
        asyncio.run(download(proxy.url, artifact_id))
    assert (tmp_path / "a.bin").read_bytes() == payload
    with ArtifactsClient(srv.url) as direct:
        assert [r.id for r in direct.list(workflow_id=wf)] == [artifact_id]
