"""A black-box client against `scripts/serve` itself, exactly as a new user starts it: only
HTTP from here (no import of app/ or storage/), the server configured by environment alone."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.servers import ROOT, free_port


@pytest.fixture
def served(tmp_path: Path):
    port = free_port()
    data = tmp_path / "var"
    log = (tmp_path / "serve.log").open("wb")
    env = {**os.environ, "ARTIFACTS_PORT": str(port), "ARTIFACTS_DATA_DIR": str(data)}
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "serve")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # a first run may install the environment
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        yield base, data
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
        log.close()


def test_scripts_serve_round_trip(served):
    base, data = served
    with httpx.Client(base_url=base, timeout=30) as http:
        content = "# Report\n\nnaïve café ☕\n"
        created = http.post(
            "/api/v1/artifacts",
            json={
                "workflow_id": "research-package-v1",
                "phase_id": "discovery",
                "session_id": "sess-1",
                "artifact_type": "Research_Summary",
                "title": "Findings",
                "content": content,
                "is_primary_deliverable": True,
            },
        )
        assert created.status_code == 201, created.text
        artifact_id = created.json()["id"]

        record = http.get(f"/artifacts/{artifact_id}").json()
        assert record["content"] == content
        assert record["content_hash"] == hashlib.sha256(content.encode()).hexdigest()
        assert record["size_bytes"] == len(content.encode())
        assert record["artifact_type"] == "research_summary"
        assert record["session_id"] == "sess-1"
        assert record["is_primary_deliverable"] is True

        blob = bytes(range(256)) * 1000
        up = http.post(
            f"/artifacts/{artifact_id}/upload",
            files={"file": ("data.bin", blob, "application/octet-stream")},
        )
        assert up.status_code == 200, up.text
        assert up.json()["status"] == "uploaded"
        downloaded = httpx.get(up.json()["storage_url"], timeout=30)
        assert downloaded.content == blob
        assert http.get(f"/artifacts/{artifact_id}").json()["content_hash"] == (
            hashlib.sha256(blob).hexdigest()
        )

        listed = http.get("/artifacts", params={"workflow_id": "research-package-v1"}).json()
        assert [row["id"] for row in listed] == [artifact_id]
        assert http.delete(f"/artifacts/{artifact_id}").json() == {
            "artifact_id": artifact_id,
            "status": "deleted",
        }
        assert http.get(f"/artifacts/{artifact_id}").status_code == 404

    digest = hashlib.sha256(blob).hexdigest()
    assert (data / "blobs" / "sha256" / digest[:2] / digest[2:4] / digest).read_bytes() == blob
    assert (data / "artifacts.db").is_file()
