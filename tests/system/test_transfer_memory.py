"""Bounded server memory: 256 MiB uploaded and downloaded through a real `artifacts serve`
process, its VmHWM read from /proc (the exact bytes themselves: tests/test_transfer.py)."""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path

import httpx
import pytest

from tests.support.servers import start_server
from tests.support.transfer import (
    MiB,
    _status,
    _stream,
    new_artifact,
)


@pytest.mark.slow
def test_large_upload_keeps_server_memory_bounded(tmp_path: Path) -> None:
    total = 256 * MiB
    server = start_server(tmp_path / "data")
    pid = server.process.pid
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            aid = new_artifact(client)
            warm = hashlib.sha256()
            r = client.post(f"/artifacts/{aid}/upload", content=_stream(8 * MiB, MiB, warm))
            assert r.status_code == 200
            assert client.get(f"/artifacts/{aid}/download").content[:8] == bytes(8)
            with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            start = _status(pid)

            sent = hashlib.sha256()
            t0 = time.monotonic()
            r = client.post(
                f"/artifacts/{aid}/upload?filename=big.bin",
                content=_stream(total, MiB, sent),
                headers={"Content-Type": "application/octet-stream"},
            )
            upload_s = time.monotonic() - t0
            assert r.status_code == 200, r.text
            assert (r.json()["content_hash"], r.json()["size_bytes"]) == (sent.hexdigest(), total)
            after_upload = _status(pid)

            got = hashlib.sha256()
            size = 0
            with client.stream("GET", f"/artifacts/{aid}/download") as d:
                assert d.status_code == 200
                assert d.headers["content-length"] == str(total)
                for chunk in d.iter_raw():
                    got.update(chunk)
                    size += len(chunk)
            after_download = _status(pid)
        assert (size, got.hexdigest()) == (total, sent.hexdigest())
        assert list((server.data_dir / "blobs" / "tmp").iterdir()) == []
        growth = max(after_upload["VmHWM"], after_download["VmHWM"]) - start["VmRSS"]
        assert growth < 64 * MiB, (start, after_upload, after_download)
        assert upload_s < 25
    finally:
        server.stop()
