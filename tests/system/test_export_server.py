"""GET /store/workflows/{id}/export streamed, seen from the outside of a real server process.

200 MiB exported with the server's peak RSS measured (/proc/<pid>/status, VmHWM reset through
clear_refs) and its data directory and open files watched while the archive flows. A client
that goes away mid-archive, and a blob missing from disk, are exercised against the same server
(its open files and CPU time read from /proc/<pid>). The archive's contents are
tests/test_export.py's.
"""

from __future__ import annotations

import io
import os
import random
import tarfile
import time
import uuid
import zipfile
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from storage.digest import blob_relpath
from tests.support.databases import (
    BACKENDS,
    fresh_database,
)
from tests.support.exports import (
    BigWorkflow,
    Builder,
    Live,
    MiB,
    allowed_data_files,
    assert_idle,
    assert_nothing_staged,
    blob_fds,
    build_big,
    data_files,
    export,
    read_archive,
    reset_peak,
    sha,
    stream_to_file,
    verify_big_archive,
    vm,
    wait_until,
    watching,
)
from tests.support.servers import start_server


@pytest.fixture(scope="module", params=BACKENDS)
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("export")
    with fresh_database(root, request.param) as url:
        server = start_server(root / "data", database_url=url)
        try:
            yield Live(server, url)
        finally:
            server.stop()


@pytest.fixture(scope="module")
def http(live: Live):
    with live.server.client() as client:
        yield client


@pytest.fixture(scope="module")
def medium(http: httpx.Client) -> BigWorkflow:
    """48 MiB: far more than the socket buffers and the response channel can hold."""
    return build_big(http, 3, 16 * MiB, "wf-medium")


def test_client_disconnect_mid_export_leaves_the_server_sound(
    live: Live, http: httpx.Client, medium: BigWorkflow, tmp_path: Path
) -> None:
    """Clients that go away at different points, while the server is reading blobs and while
    it waits to send: each build stops, lets go of its blob and leaves nothing running."""
    before = data_files(live)
    for fmt in ("zip", "tar"):
        for cut in (64 * 1024, 1 * MiB, 3 * MiB, 5 * MiB, 9 * MiB, 20 * MiB):
            received = 0
            with live.server.client() as other:  # its own connection, dropped half way
                with other.stream("GET", f"/store/workflows/{medium.id}/export?format={fmt}") as r:
                    assert r.status_code == 200
                    for chunk in r.iter_raw(64 * 1024):
                        received += len(chunk)
                        if received >= cut:
                            break
            assert cut <= received < cut + 64 * 1024
        # every build stopped and let go of the blob it was reading
        wait_until(lambda: blob_fds(live) == [], 10, "blob files still open after disconnect")
        assert_idle(live.pid)
        assert live.server.process.poll() is None
        allowed_data_files(live)
        assert data_files(live) == before
        # and the next export, of the same workflow, is whole
        out = tmp_path / f"after-disconnect.{fmt}"
        stream_to_file(http, f"/store/workflows/{medium.id}/export?format={fmt}", out)
        verify_big_archive(fmt, out, medium)
    assert http.get("/healthz").status_code == 200


def test_missing_blob_never_ends_as_a_clean_archive(live: Live, http: httpx.Client) -> None:
    """A blob deleted by hand: the response must not end cleanly, and the bytes that did
    arrive must not read as a whole archive (a zip's central directory must not be sent)."""
    rng = random.Random(99)
    b = Builder(http, f"wf-missing-{uuid.uuid4().hex[:8]}")
    b.create("before.md", "p", "before the hole " + uuid.uuid4().hex)
    big = b.create("big.bin", "p", "placeholder")
    b.upload(big, rng.randbytes(3 * MiB), "application/octet-stream")
    hole = b.create("hole.bin", "p", "placeholder")
    b.upload(hole, rng.randbytes(256 * 1024), "application/octet-stream")
    b.create("after.md", "p", "after the hole")
    blob = live.data_dir / "blobs" / blob_relpath(sha(hole.data))
    os.chmod(blob.parent, 0o755)
    os.chmod(blob, 0o644)
    blob.unlink()

    for fmt in ("zip", "tar"):
        received = bytearray()
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            with http.stream("GET", f"/store/workflows/{b.wf.id}/export?format={fmt}") as r:
                assert r.status_code == 200
                for chunk in r.iter_raw():
                    received += chunk
        assert len(received) < 3 * MiB + 256 * 1024  # cut: never the whole content
        if fmt == "zip":
            with pytest.raises(zipfile.BadZipFile):
                zipfile.ZipFile(io.BytesIO(bytes(received)))
        else:
            # whatever arrived, it is not a tar holding the missing member and what follows
            try:
                with tarfile.open(fileobj=io.BytesIO(bytes(received)), mode="r:") as t:
                    names = [m.name for m in t.getmembers()]
                    if "p/hole.bin" in names:
                        extracted = t.extractfile("p/hole.bin")
                        assert extracted is not None
                        assert extracted.read() != hole.data
                    assert "p/after.md" not in names
            except tarfile.TarError:
                pass
        wait_until(lambda: blob_fds(live) == [], 10, "blob files still open after the abort")
        assert_idle(live.pid, 0.5)
        assert http.get("/healthz").status_code == 200
    allowed_data_files(live)
    # the server is sound: other workflows still export whole
    b2 = Builder(http, f"wf-after-hole-{uuid.uuid4().hex[:8]}")
    b2.create("fine.md", "p", "fine")
    members = read_archive("zip", export(http, b2.wf.id, "zip").content)
    assert dict(members)["p/fine.md"] == b"fine"


def test_a_workflow_id_with_slashes_is_one_segment_through_uvicorn(
    live: Live, http: httpx.Client
) -> None:
    """uvicorn decodes %2F in the path it hands the app; the workflow routes still take the
    segment as sent (app/workflows/paths.py), and a look-alike id is another workflow."""
    wf = f"org/repo-{uuid.uuid4().hex[:8]}/deliverables"
    b = Builder(http, wf)
    primary = b.create("notes.md", "a/b", "slashes everywhere", primary=True)
    Builder(http, wf.split("/")[0]).create("decoy.md", "a/b", "not this one", primary=True)
    segment = quote(wf, safe="")
    for base in ("/store/workflows", "/api/v1/store/workflows"):
        assert http.get(f"{base}/{segment}").json()["workflow_id"] == wf
        delivered = http.get(f"{base}/{segment}/deliverables").json()
        assert [d["id"] for d in delivered] == [primary.id]
    members = dict(read_archive("tar", export(http, wf, "tar").content))
    assert members["a_b/notes.md"] == b"slashes everywhere"
    assert http.get(f"/store/workflows/{wf}").json() == {"detail": "Not Found"}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_200_mib_export_streams_in_bounded_memory(
    live: Live, http: httpx.Client, tmp_path: Path
) -> None:
    started = time.monotonic()
    big = build_big(http, 4, 50 * MiB, "wf-big")
    total = sum(size for _, size in big.files.values())
    assert total == 200 * MiB
    # warm up (imports, thread pool, allocator) on a small archive
    warm = Builder(http, f"wf-warm-{uuid.uuid4().hex[:8]}")
    warm.create("w", "p", "warm")
    for fmt in ("zip", "tar"):
        export(http, warm.wf.id, fmt)

    for fmt in ("zip", "tar"):
        out = tmp_path / f"big.{fmt}"
        reset_peak(live.pid)
        baseline = vm(live.pid, "VmRSS")
        with watching(live) as seen:
            began = time.monotonic()
            url = f"/store/workflows/{big.id}/export?format={fmt}"
            first_byte, size = stream_to_file(http, url, out)
            took = time.monotonic() - began
        peak = vm(live.pid, "VmHWM")
        growth = peak - baseline
        print(f"{fmt}: {size / MiB:.0f} MiB in {took:.2f} s, first byte after {first_byte:.3f} s")
        print(f"{fmt}: server RSS +{growth / MiB:.1f} MiB")
        assert growth < 64 * MiB, f"{fmt}: server RSS grew by {growth / MiB:.1f} MiB"
        assert seen["rss"] - baseline < 64 * MiB
        assert first_byte < took / 4  # the first bytes leave long before the last are read
        assert size > total
        assert_nothing_staged(live, seen)
        allowed_data_files(live)
        verify_big_archive(fmt, out, big)
        out.unlink()
    assert time.monotonic() - started < 60
