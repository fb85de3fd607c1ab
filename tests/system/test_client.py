"""The Python client (client/, `workflow_artifacts_client`) against a real `artifacts serve` on
loopback: every call of the sync client, the async client's, errors as typed exceptions,
retries of 429 with Retry-After, and configuration from the environment. One server per module
(SQLite) keeps these fast; each test uses workflows of its own."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import os
import tarfile
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from workflow_artifacts_client import (
    ApiError,
    ArtifactsClient,
    AsyncArtifactsClient,
    ConfigurationError,
    ConnectionFailed,
    DigestMismatch,
    NotFound,
    PreconditionFailed,
    RateLimited,
    Retry,
    TooLarge,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from workflow_artifacts_client._common import part_path

from tests.support.crownest import (  # noqa: F401  (crownest_fake is a fixture)
    FakeCrowNest,
    crownest_fake,
)
from tests.support.imports import server_env
from tests.support.keys import make_keys
from tests.support.servers import Server, start_server

pytestmark = pytest.mark.timeout(120)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# a short idempotency lease: a request still in progress answers Retry-After of 3 s, not 30
SERVER_ENV = {"ARTIFACTS_IDEMPOTENCY_LEASE": "3"}


@pytest.fixture
def client(srv: Server) -> Iterator[ArtifactsClient]:
    with ArtifactsClient(srv.url) as c:
        yield c


class Counting(httpx.HTTPTransport):
    """Counts the requests the client really sends."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return super().handle_request(request)


# -- creates, reads, updates, deletes -------------------------------------------------------------


def test_create_text_and_json_then_get_and_content(client: ArtifactsClient, wf: str) -> None:
    text = client.create(wf, "Findings", "# Findings\nü", phase_id="discovery", session_id="s-1")
    assert (text.status, text.artifact_type, text.version) == ("created", "markdown", 1)
    assert text.content_hash == sha("# Findings\nü".encode())
    record = client.get(text.id)
    assert (record.content, record.content_type, record.session_id) == (
        "# Findings\nü",
        "text/markdown",
        "s-1",
    )
    assert client.get(text.id, include_content=False).content is None
    assert client.get(text.id[:8]).id == text.id  # a prefix names it too

    data = {"sources": [1, 2.5, "x"], "ok": True}
    js = client.create(wf, "Sources", data, metadata={"n": 1}, created_by="agent-7")
    assert js.artifact_type == "json"
    record = client.get(js.id)
    assert json.loads(record.content or "") == data
    assert (record.content_type, record.metadata, record.created_by) == (
        "application/json",
        {"n": 1},
        "agent-7",
    )
    content = client.content(js.id)
    assert (content.artifact_id, content.content_hash) == (js.id, js.content_hash)


def test_create_from_a_path_a_file_object_and_an_iterator(
    client: ArtifactsClient, wf: str, tmp_path: Path
) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "report.bin"
    path.write_bytes(payload)
    parent = client.create(wf, "parent", "p")
    moved: list[int] = []
    from_path = client.create_from_file(
        wf,
        path,
        phase_id="build",
        derived_from=[parent.id],
        metadata={"path": "out/report.bin"},
        is_primary_deliverable=True,
        progress=moved.append,
    )
    assert sum(moved) == len(payload)  # the file's bytes, not the multipart envelope
    from_file = client.create_from_file(wf, io.BytesIO(payload), filename="r.bin", title="T")
    chunks = (payload[i : i + 100_000] for i in range(0, len(payload), 100_000))
    from_iter = client.create_from_file(wf, chunks, filename="notes.md", artifact_type="markdown")
    for created in (from_path, from_file, from_iter):
        assert (created.content_hash, created.size_bytes) == (sha(payload), len(payload))
        out = io.BytesIO()
        client.download(created.id, out)
        assert out.getvalue() == payload
    record = client.get(from_path.id, include_content=False)
    assert (record.title, record.filename, record.phase_id) == ("report.bin", "report.bin", "build")
    assert (record.derived_from, record.metadata) == ([parent.id], {"path": "out/report.bin"})
    assert record.is_primary_deliverable
    assert client.get(from_iter.id).content_type == "text/markdown"
    assert client.get(from_file.id).title == "T"


def test_list_iterates_every_page_lazily(srv: Server, wf: str) -> None:
    transport = Counting()
    with ArtifactsClient(srv.url, transport=transport) as client:
        ids = [client.create(wf, f"n{i}", f"body {i}", phase_id="p").id for i in range(7)]
        sent = len(transport.requests)
        rows = list(client.list(workflow_id=wf, page_size=3))
        assert [r.id for r in rows] == ids[::-1]  # newest first, across three pages
        assert len(transport.requests) - sent == 3
        sent = len(transport.requests)
        first_two = list(itertools.islice(client.list(workflow_id=wf, page_size=3), 2))
        assert len(first_two) == 2 and len(transport.requests) - sent == 1  # one page only
        assert [r.title for r in client.list(workflow_id=wf, phase_id="nope")] == []
        assert len(list(client.list(workflow_id=wf, artifact_type="markdown"))) == 7


def test_update_delete_and_not_found(client: ArtifactsClient, wf: str) -> None:
    a = client.create(wf, "old", "x", phase_id="p")
    changed = client.update(a.id, title="new", metadata={"k": [1]}, is_primary_deliverable=True)
    assert (changed.artifact_id, changed.status) == (a.id, "updated")
    record = client.get(a.id)
    assert (record.title, record.metadata) == ("new", {"k": [1]})
    assert record.is_primary_deliverable
    assert client.delete(a.id[:8]).status == "deleted"
    with pytest.raises(NotFound) as caught:
        client.get(a.id)
    assert caught.value.code == "artifact_not_found" and a.id in caught.value.detail
    with pytest.raises(NotFound):
        client.delete(a.id)


def test_typed_errors_carry_the_servers_detail(client: ArtifactsClient, wf: str) -> None:
    with pytest.raises(ValidationError) as caught:
        client.create(wf, "t", "x", artifact_type="no-such-type")
    assert caught.value.status == 422
    assert caught.value.detail[0]["loc"] == ["body", "artifact_type"]
    assert "artifact_type" in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        client.create(wf, "t", "x", derived_from=[str(uuid.uuid4())])
    assert caught.value.detail[0]["type"] == "artifact_not_found"
    with pytest.raises(NotFound) as caught:
        client.get("0123")  # too short for a prefix
    assert "8" in caught.value.detail
    with pytest.raises(NotFound):
        client.workflow(f"{wf}-none")
    with pytest.raises(NotFound):
        client.get_import("no-such-import")


# -- uploads and versions -------------------------------------------------------------------------


class OneWay(io.RawIOBase):
    """A file object that cannot seek (a pipe, a socket)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        chunk = self._data.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)


def test_upload_every_kind_of_source_makes_a_version(
    client: ArtifactsClient, wf: str, tmp_path: Path
) -> None:
    a = client.create(wf, "doc", "v1")
    blobs = [os.urandom(200_000 + i) for i in range(5)]
    path = tmp_path / "v.pdf"
    path.write_bytes(blobs[0])
    sources: list[Any] = [
        path,
        io.BytesIO(blobs[1]),
        OneWay(blobs[2]),
        iter([blobs[3][:1000], blobs[3][1000:]]),
        blobs[4],
    ]
    for n, (source, data) in enumerate(zip(sources, blobs, strict=True), start=2):
        up = client.upload(a.id, source, filename=f"v{n}.bin", content_type="application/pdf")
        assert (up.version, up.content_hash, up.size_bytes) == (n, sha(data), len(data))
        assert up.etag == f'"{sha(data)}"'
    assert client.upload(a.id, path).content_type == "application/pdf"  # by its suffix
    versions = list(client.versions(a.id, page_size=2))
    assert [v.version for v in versions] == [7, 6, 5, 4, 3, 2, 1]
    assert [v.is_current for v in versions] == [True] + [False] * 6
    assert client.get_version(a.id, 1).content == "v1"
    out = tmp_path / "v3.bin"
    got = client.download(a.id, out, version=3)
    assert out.read_bytes() == blobs[1] and got.sha256 == sha(blobs[1])
    with pytest.raises(NotFound) as caught:
        client.get_version(a.id, 99)
    assert caught.value.code == "version_not_found"


def test_if_match_makes_an_upload_conditional(client: ArtifactsClient, wf: str) -> None:
    a = client.create(wf, "doc", "v1")
    first = client.upload(a.id, b"two", if_match=f'"{a.content_hash}"')
    assert first.version == 2
    with pytest.raises(PreconditionFailed) as caught:
        client.upload(a.id, b"three", if_match=f'"{a.content_hash}"')  # stale now
    assert caught.value.status == 412 and caught.value.current_etag == first.etag
    assert client.upload(a.id, b"three", if_match=first.etag).version == 3
    assert [v.version for v in client.versions(a.id)] == [3, 2, 1]


def test_an_upload_says_who_wrote_its_version(client: ArtifactsClient, wf: str) -> None:
    a = client.create(wf, "doc", "v1", created_by="agent-1")
    client.upload(a.id, b"two", created_by="agent-2")
    client.upload(a.id, b"three")
    assert [(v.version, v.created_by) for v in client.versions(a.id)] == [
        (3, None),
        (2, "agent-2"),
        (1, "agent-1"),
    ]


class Changing(io.BytesIO):
    """A file whose bytes change after they were hashed: the server must refuse it."""

    reads = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.reads += 1
        if self.reads > 2 and data:
            return b"X" + data[1:]
        return data


def test_bytes_that_change_after_hashing_are_refused(client: ArtifactsClient, wf: str) -> None:
    a = client.create(wf, "doc", "v1")
    with pytest.raises(DigestMismatch) as caught:
        client.upload(a.id, Changing(b"0123456789" * 1000))
    assert (caught.value.status, caught.value.code) == (422, "digest_mismatch")
    assert [v.version for v in client.versions(a.id)] == [1]


# -- downloads ----------------------------------------------------------------------------------


def test_download_to_a_path_resumes_a_part_file_and_replaces_only_verified_bytes(
    client: ArtifactsClient, wf: str, tmp_path: Path
) -> None:
    payload = os.urandom(5 * 1024 * 1024 + 3)
    a = client.create_from_file(wf, payload, filename="big.bin")
    dest = tmp_path / "sub" / "big.bin"
    # an earlier run stopped half way: its .part file is resumed with Range
    part = part_path(dest, sha(payload))
    part.parent.mkdir(parents=True)
    part.write_bytes(payload[: 2 * 1024 * 1024])
    got = client.download(a.id, dest, expected_sha256=a.content_hash)
    assert got.resumed_from == 2 * 1024 * 1024 and got.size_bytes == len(payload)
    assert dest.read_bytes() == payload and not part.exists()

    # a .part holding other bytes: the first pass mismatches, the whole is fetched again
    dest.unlink()
    part.write_bytes(b"\0" * 1024)
    moved: list[int] = []
    assert client.download(a.id, dest, progress=moved.append).resumed_from == 0
    assert sum(moved) == len(payload)  # the wasted first pass was taken back
    assert dest.read_bytes() == payload and not part.exists()

    # bytes that are not what the caller expects: DigestMismatch, and nothing is written
    other = tmp_path / "other.bin"
    with pytest.raises(DigestMismatch):
        client.download(a.id, other, expected_sha256="0" * 64)
    assert list(tmp_path.iterdir()) == [tmp_path / "sub"]


def test_download_url_needs_no_key(client: ArtifactsClient, wf: str) -> None:
    a = client.create(wf, "doc", "linked")
    link = client.download_url(a.id, expires_in=60)
    assert link.method == "GET" and link.version is None
    assert httpx.get(link.url).content == b"linked"
    client.upload(a.id, b"v2")
    pinned = client.download_url(a.id, version=1)
    assert pinned.version == 1 and httpx.get(pinned.url).content == b"linked"


# -- lineage, workflows, exports, events -----------------------------------------------------------


def test_lineage_up_and_down(client: ArtifactsClient, wf: str) -> None:
    root = client.create(wf, "root", "r")
    mid = client.create(wf, "mid", "m", derived_from=[root.id])
    leaf = client.create(wf, "leaf", "l", derived_from=[mid.id])
    down = client.lineage(root.id, direction="down", depth=5)
    assert down.root == root.id and not down.truncated
    assert {(e.parent, e.child) for e in down.edges} == {(root.id, mid.id), (mid.id, leaf.id)}
    assert {n.id: n.depth for n in down.nodes} == {root.id: 0, mid.id: 1, leaf.id: 2}
    up = client.lineage(leaf.id, direction="up", depth=1)
    assert up.truncated and [e.parent_version for e in up.edges] == [1]
    client.delete(mid.id)
    tomb = [n for n in client.lineage(root.id, direction="down").nodes if n.id == mid.id]
    assert tomb and tomb[0].deleted


def test_workflow_views_deliverables_and_export(client: ArtifactsClient, tmp_path: Path) -> None:
    wf = f"org/repo-{uuid.uuid4().hex[:6]}"  # a `/` in the id travels as %2F
    a = client.create(wf, "Plan", "# plan", phase_id="plan", is_primary_deliverable=True)
    b = client.create(wf, "Data", {"x": 1}, phase_id="build")
    mine = [w for w in client.workflows() if w.workflow_id == wf]
    assert len(mine) == 1 and mine[0].artifact_count == 2
    view = client.workflow(wf)
    assert [p.phase_id for p in view.phases] == ["plan", "build"]
    assert view.phases[0].primary_deliverable is not None
    assert view.phases[0].primary_deliverable.id == a.id
    deliverables = client.deliverables(wf, include_content=True)
    assert [(d.id, d.content) for d in deliverables] == [(a.id, "# plan")]

    archive = tmp_path / "wf.zip"
    moved: list[int] = []
    assert client.export(wf, archive, progress=moved.append) == archive
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        assert names[0] == "manifest.json"
        manifest = json.loads(z.read("manifest.json"))
        assert {f["artifact_id"] for f in manifest["files"]} == {a.id, b.id}
    assert sum(moved) == archive.stat().st_size
    assert not list(tmp_path.glob(".*wfa-part"))
    out = io.BytesIO()
    client.export(wf, out, format="tar", scope="deliverables")
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as t:
        assert len(t.getnames()) == 2  # the manifest and the one deliverable


def test_events_as_pages_and_as_a_stream(client: ArtifactsClient, wf: str) -> None:
    a = client.create(wf, "one", "1")
    client.update(a.id, title="uno")
    events = list(client.events(workflow_id=wf, follow=False, page_size=1))
    assert [e.type for e in events] == ["artifact.created", "artifact.updated"]
    assert all(e.artifact_id == a.id for e in events)
    after = list(client.events(workflow_id=wf, after=events[0].id, follow=False))
    assert [e.id for e in after] == [events[1].id]

    stream = client.events(workflow_id=wf, after=events[-1].id)
    client.delete(a.id)
    first = next(stream)
    assert (first.type, first.artifact_id) == ("artifact.deleted", a.id)
    stream.close()  # type: ignore[attr-defined]


# -- imports ----------------------------------------------------------------------------------


def test_imports_start_follow_and_resume(
    tmp_path: Path,
    crownest_fake: FakeCrowNest,  # noqa: F811
) -> None:
    st = crownest_fake.state
    sbx = st.add_sandbox()
    for i in range(3):
        st.add_artifact(sbx.id, f"file {i}".encode(), name=f"f{i}.txt")
    server = start_server(tmp_path / "data", env=server_env(crownest_fake))
    try:
        with ArtifactsClient(server.url) as client:
            job = client.import_crownest(sbx.id, "imported", phase_id="p")
            assert job.job_id and job.status in ("queued", "running", "succeeded")
            deadline = time.monotonic() + 30
            while (state := client.get_import(job.job_id)).status not in ("succeeded", "failed"):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert (state.status, state.counts["imported"]) == ("succeeded", 3)
            assert len(list(client.list(workflow_id="imported"))) == 3
            again = client.resume_import(job.job_id)
            assert again.job_id == job.job_id
    finally:
        server.stop()


def test_an_unconfigured_import_is_not_retried(client: ArtifactsClient) -> None:
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        client.import_crownest("sbx", "wf")
    assert caught.value.code == "crownest_not_configured"
    assert time.monotonic() - t0 < 2


# -- keys, limits, retries, configuration -------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server with keys (not open), a small upload limit and a low request rate."""
    data = tmp_path_factory.mktemp("limited") / "data"
    env = {"ARTIFACTS_MAX_UPLOAD_BYTES": "100000", "ARTIFACTS_RATE_LIMIT": "4/second"}
    server = start_server(data, env=env)
    try:
        admin = make_keys(f"sqlite+aiosqlite:///{data / 'artifacts.db'}").admin
        deadline = time.monotonic() + 5  # open mode ends within a second of the first key
        while httpx.get(f"{server.url}/artifacts").status_code != 401:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        yield server, admin
    finally:
        server.stop()


def test_a_wrong_key_is_unauthorized_and_too_large_is_too_large(
    limited: tuple[Server, str],
) -> None:
    server, key = limited
    with ArtifactsClient(server.url, "wrong") as client, pytest.raises(Unauthorized) as caught:
        client.get("00000000")
    assert caught.value.code == "invalid_api_key"
    with ArtifactsClient(server.url, key) as client:
        a = client.create("wf", "t", "x")
        with pytest.raises(TooLarge) as big:
            client.upload(a.id, b"x" * 200_000)
        assert "100000" in big.value.detail
        with pytest.raises(TooLarge):  # refused while the client is still sending
            client.create_from_file("wf", os.urandom(30 * 1024 * 1024), filename="huge.bin")
        assert [v.version for v in client.versions(a.id)] == [1]


def test_429_is_retried_after_retry_after(limited: tuple[Server, str]) -> None:
    server, key = limited
    transport = Counting()
    with ArtifactsClient(server.url, key, transport=transport) as client:
        t0 = time.monotonic()
        for _ in range(10):
            list(client.list(page_size=1))
        elapsed = time.monotonic() - t0
    statuses = len(transport.requests)
    assert statuses > 10  # some were refused with 429 and sent again
    assert elapsed >= 1.0  # after waiting as Retry-After said
    with ArtifactsClient(server.url, key, retry=Retry(attempts=0)) as client:
        with pytest.raises(RateLimited) as caught:
            for _ in range(20):
                list(client.list(page_size=1))
        assert caught.value.retry_after is not None and caught.value.retry_after >= 1


def test_configuration_from_the_environment(
    srv: Server, monkeypatch: pytest.MonkeyPatch, limited: tuple[Server, str]
) -> None:
    server, key = limited
    monkeypatch.setenv("ARTIFACTS_URL", server.url)
    monkeypatch.setenv("ARTIFACTS_API_KEY", key)
    with ArtifactsClient() as client:
        assert client.url == server.url
        assert client.create("env", "t", "x").status == "created"
    with ArtifactsClient(srv.url, "") as client:  # arguments win
        assert client.url == srv.url
    monkeypatch.setenv("ARTIFACTS_URL", "ftp://nowhere")
    with pytest.raises(ConfigurationError):
        ArtifactsClient()
    with pytest.raises(ConnectionFailed) as caught:
        with ArtifactsClient("http://127.0.0.1:9", retry=Retry(attempts=1, backoff=0.01)) as c:
            c.get("00000000")
    assert "127.0.0.1:9" in str(caught.value)


def test_idempotency_key_is_reused_only_for_the_same_call(client: ArtifactsClient, wf: str) -> None:
    key = f"k-{uuid.uuid4()}"
    first = client.create(wf, "once", "x", idempotency_key=key)
    again = client.create(wf, "once", "x", idempotency_key=key)
    assert again.id == first.id  # replayed, not a second artifact
    assert len(list(client.list(workflow_id=wf))) == 1
    with pytest.raises(ApiError) as caught:
        client.create(wf, "other", "y", idempotency_key=key)
    assert caught.value.code == "idempotency_key_reused"


# -- the async client ---------------------------------------------------------------------------


async def _agen(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 65536):
        yield data[i : i + 65536]


def test_the_async_client_does_the_same(srv: Server, wf: str, tmp_path: Path) -> None:
    payload = os.urandom(1_500_000)

    async def go() -> None:
        async with AsyncArtifactsClient(srv.url) as client:
            a = await client.create(wf, "async", "# a", phase_id="p", is_primary_deliverable=True)
            f = await client.create_from_file(wf, _agen(payload), filename="x.bin")
            assert f.content_hash == sha(payload)
            path = tmp_path / "p.bin"
            path.write_bytes(payload[::-1])
            up = await client.upload(f.id, path, if_match=f'"{f.content_hash}"')
            assert (up.version, up.content_hash) == (2, sha(payload[::-1]))
            assert (await client.get(a.id)).content == "# a"
            assert (await client.content(a.id)).content == "# a"
            assert [r.id async for r in client.list(workflow_id=wf, page_size=1)] == [f.id, a.id]
            assert [v.version async for v in client.versions(f.id)] == [2, 1]
            assert (await client.get_version(f.id, 1)).content_hash == sha(payload)
            got = await client.download(f.id, tmp_path / "out.bin", version=1)
            assert (tmp_path / "out.bin").read_bytes() == payload and got.sha256 == sha(payload)
            await client.update(a.id, title="async!")
            assert (await client.lineage(a.id)).root == a.id
            assert (await client.workflow(wf)).artifact_count == 2
            assert [d.id for d in await client.deliverables(wf)] == [a.id]
            assert any([w.workflow_id == wf async for w in client.workflows()])
            await client.export(wf, tmp_path / "wf.tar", format="tar")
            assert tarfile.is_tarfile(tmp_path / "wf.tar")
            link = await client.download_url(a.id)
            assert httpx.get(link.url).content == b"# a"
            types = [e.type async for e in client.events(workflow_id=wf, follow=False)]
            assert types[0] == "artifact.created" and "artifact.updated" in types
            stream = client.events(workflow_id=wf, after=None)
            seen = [await stream.__anext__() for _ in range(len(types))]
            assert [e.type for e in seen] == types
            await stream.aclose()  # type: ignore[attr-defined]
            assert (await client.delete(a.id)).status == "deleted"
            with pytest.raises(NotFound):
                await client.get(a.id)
            with pytest.raises(NotFound):
                await client.get_import("nope")
            with pytest.raises(NotFound):
                await client.resume_import("nope")
            with pytest.raises(Unavailable):
                await client.import_crownest("s", wf)

    asyncio.run(go())


def test_a_key_still_in_progress_is_waited_for_then_replayed(
    srv: Server, client: ArtifactsClient, wf: str
) -> None:
    """Another attempt of the same call (same key, same bytes) is still streaming: the server
    answers 409 idempotency_request_in_progress with Retry-After, the client waits, and gets
    the first attempt's answer: one version, not two."""
    import threading

    a = client.create(wf, "doc", "v1")
    data = os.urandom(300_000)
    key = f"k-{uuid.uuid4()}"
    first: dict[str, Any] = {}

    def slow_body() -> Iterator[bytes]:
        yield data[:100_000]
        time.sleep(1.5)
        yield data[100_000:]

    def first_attempt() -> None:
        first["answer"] = httpx.post(
            f"{srv.url}/artifacts/{a.id}/upload",
            params={"filename": "x.bin"},
            content=slow_body(),
            headers={"Content-Type": "application/octet-stream", "Idempotency-Key": key},
            timeout=30,
        )

    thread = threading.Thread(target=first_attempt)
    thread.start()
    time.sleep(0.5)
    transport = Counting()
    with ArtifactsClient(srv.url, transport=transport) as retrying:
        up = retrying.upload(
            a.id,
            data,
            content_type="application/octet-stream",
            filename="x.bin",
            idempotency_key=key,
        )
    thread.join(30)
    assert first["answer"].status_code == 200
    assert up.version == first["answer"].json()["version"] == 2
    assert len(transport.requests) >= 2  # at least one 409 waited out
    assert [v.version for v in client.versions(a.id)] == [2, 1]
