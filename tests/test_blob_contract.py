"""The blob-store contract (storage/blobs/base.py), run against every backend: the filesystem
under tmp_path and S3 on moto's server on a loopback port (conftest.moto_server).

What every backend must show: any chunking of the same bytes gives the same digest and bytes; a
dedupe hit rewrites nothing; a failed, refused or cancelled put leaves nothing at all (checked
against a raw listing of everything the backend holds, not through the store's own view);
ranges; missing blobs; deletion; and the maintenance operations GC and fsck rely on, up to
garbage collection and fsck over a real service. S3-only: the multipart and server-side copy
paths, unfinished uploads aborted by GC, an unreachable endpoint.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.artifacts import ArtifactService, NewArtifact
from storage.blobs import FilesystemBlobStore, MaintainedBlobStore
from storage.blobs.s3 import S3BlobStore
from storage.db.engine import Database, sqlite_url
from storage.db.migrate import upgrade
from storage.digest import EMPTY_SHA256
from storage.errors import (
    BlobNotFound,
    BlobTooLarge,
    DigestMismatch,
    StorageUnavailable,
    VersionNotFound,
)
from storage.maintenance import collect_garbage, fsck, recover_trash
from storage.records import NewContent, now_us
from tests.support.blobs import rand_bytes, sha, stream
from tests.support.s3 import S3_TEST_PART_SIZE, MotoServer
from tests.support.servers import free_port

pytestmark = pytest.mark.anyio
PART = S3_TEST_PART_SIZE
KiB = 1024
HOUR = 3600 * 1_000_000
DAY = 24 * HOUR


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


class Boom(Exception):
    pass


async def failing(data: bytes, after: int) -> AsyncIterator[bytes]:
    """The source errors once `after` bytes were delivered."""
    for chunk in pieces(data[:after], 10 * KiB):
        await anyio.lowlevel.checkpoint()
        yield chunk
    raise Boom


@dataclass
class Backend:
    name: str
    store: MaintainedBlobStore
    raw: Any  # the directory, or the boto3 client and bucket

    async def everything(self) -> set[str]:
        """Everything the backend holds, read around the store: files, or keys and unfinished
        multipart uploads (with their key)."""
        if isinstance(self.store, FilesystemBlobStore):
            root: Path = self.raw
            return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        client, bucket = self.raw

        def listing() -> set[str]:
            keys = set()
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys |= {item["Key"] for item in page.get("Contents", [])}
            uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            return keys | {f"upload:{u['Key']}" for u in uploads}

        return await anyio.to_thread.run_sync(listing)

    async def blob_names(self) -> set[str]:
        return {name for name in await self.everything() if "sha256/" in name}

    async def leave_crash_litter(self) -> None:
        """What a process killed mid-upload leaves: a staging file, or a staging object and an
        unfinished multipart upload."""
        if isinstance(self.store, FilesystemBlobStore):
            (self.raw / "tmp" / "put-killed").write_bytes(b"partial")
            return
        assert isinstance(self.store, S3BlobStore)
        client = self.store.client
        bucket = self.store.bucket
        await client.put_object(Bucket=bucket, Key=self.store._staging_key(), Body=b"partial")
        await client.create_multipart_upload(Bucket=bucket, Key=self.store._staging_key())


@pytest.fixture(params=["filesystem", "s3"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "filesystem":
        root = tmp_path / "blobs"
        yield Backend("filesystem", FilesystemBlobStore(root), root)
        return
    moto: MotoServer = request.getfixturevalue("moto_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    async with _s3_store(moto, bucket) as store:
        yield Backend("s3", store, (moto.client(), bucket))


def _s3_store(moto: MotoServer, bucket: str, **options: Any) -> S3BlobStore:
    return S3BlobStore(
        bucket,
        prefix="store/",
        endpoint_url=moto.endpoint,
        region="us-east-1",
        part_size=PART,
        client_options={"aws_access_key_id": "testing", "aws_secret_access_key": "testing"},
        **options,
    )


# ------------------------------------------------------------------------------ writing


@pytest.mark.parametrize(
    "size", [0, 1, PART - 1, PART, PART + 1, 3 * PART + 17], ids=lambda n: f"{n}B"
)
@pytest.mark.parametrize("chunk", [1000, 7 * KiB, PART, 5 * PART])
async def test_put_then_read_back_any_size_any_chunking(
    backend: Backend, size: int, chunk: int
) -> None:
    data = rand_bytes(size, size)
    put = await backend.store.put(stream(pieces(data, chunk)))
    assert (put.digest, put.size, put.created) == (sha(data), size, True)
    assert await backend.store.read_bytes(put.digest) == data
    assert await backend.store.size(put.digest) == size
    assert await backend.store.exists(put.digest)
    assert await backend.store.scan_dir("tmp") == []
    assert len(await backend.blob_names()) == 1


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
async def test_random_splits_agree(backend: Backend, data: st.DataObject) -> None:
    blob = data.draw(st.binary(min_size=0, max_size=3 * PART))
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=6))
    bounds = [0, *sorted(cuts), len(blob)]
    chunks = [blob[a:b] for a, b in itertools.pairwise(bounds)]
    put = await backend.store.put(stream(chunks))
    assert put.digest == sha(blob)
    assert await backend.store.read_bytes(put.digest) == blob


async def test_memoryview_chunks(backend: Backend) -> None:
    data = rand_bytes(2 * PART + 5)
    put = await backend.store.put(stream([memoryview(c) for c in pieces(data, 10 * KiB)]))
    assert await backend.store.read_bytes(put.digest) == data


async def test_empty_blob(backend: Backend) -> None:
    put = await backend.store.put(stream([]))
    assert (put.digest, put.size) == (EMPTY_SHA256, 0)
    assert await backend.store.read_bytes(EMPTY_SHA256) == b""


@pytest.mark.parametrize("size", [10, 2 * PART + 3])
async def test_second_put_is_a_dedupe_hit_that_rewrites_nothing(
    backend: Backend, size: int
) -> None:
    data = rand_bytes(size, 7)
    first = await backend.store.put_bytes(data)
    before = await backend.everything()
    listed = await backend.store.scan_blobs()
    second = await backend.store.put(stream(pieces(data, 3 * KiB)))
    assert (second.digest, second.size, second.created) == (first.digest, size, False)
    assert await backend.everything() == before
    assert await backend.store.scan_blobs() == listed  # same size, same mtime: not rewritten


@pytest.mark.parametrize("size", [100, 2 * PART + 1])
async def test_concurrent_identical_puts_store_one_blob(backend: Backend, size: int) -> None:
    data = rand_bytes(size, 3)
    results = []

    async def one() -> None:
        results.append(await backend.store.put(stream(pieces(data, 8 * KiB))))

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(one)
    assert {(r.digest, r.size) for r in results} == {(sha(data), size)}
    assert any(r.created for r in results)
    assert len(await backend.blob_names()) == 1
    assert await backend.store.scan_dir("tmp") == []
    assert await backend.store.read_bytes(sha(data)) == data


@pytest.mark.parametrize("after", [0, 1, PART - 1, PART, 2 * PART + 10])
async def test_source_error_propagates_and_leaves_nothing(backend: Backend, after: int) -> None:
    await backend.store.put_bytes(b"already here")
    before = await backend.everything()
    with pytest.raises(Boom):
        await backend.store.put(failing(rand_bytes(3 * PART), after))
    assert await backend.everything() == before


@pytest.mark.parametrize("limit", [0, 1, PART, 2 * PART + 5])
async def test_max_bytes_exceeded_leaves_nothing(backend: Backend, limit: int) -> None:
    before = await backend.everything()
    with pytest.raises(BlobTooLarge):
        await backend.store.put(stream(pieces(rand_bytes(limit + 1), 4 * KiB)), max_bytes=limit)
    assert await backend.everything() == before
    exact = await backend.store.put(stream(pieces(rand_bytes(limit), 4 * KiB)), max_bytes=limit)
    assert exact.size == limit


@pytest.mark.parametrize("size", [5, 2 * PART])
async def test_expected_digest(backend: Backend, size: int) -> None:
    data = rand_bytes(size, 11)
    before = await backend.everything()
    with pytest.raises(DigestMismatch):
        await backend.store.put(stream([data]), expected_digest=sha(b"something else"))
    assert await backend.everything() == before
    put = await backend.store.put(stream([data]), expected_digest=sha(data))
    assert put.digest == sha(data)


async def test_cancelled_while_the_source_blocks_leaves_nothing(backend: Backend) -> None:
    before = await backend.everything()
    delivered = anyio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield rand_bytes(2 * PART + 1)  # a multipart upload (S3) is under way
        yield b"x" * KiB
        delivered.set()
        await anyio.sleep_forever()
        yield b""  # pragma: no cover

    async with anyio.create_task_group() as tg:
        tg.start_soon(backend.store.put, stalls())
        await delivered.wait()
        await anyio.sleep(0.2)  # the first part is in flight or sent
        tg.cancel_scope.cancel()
    assert await backend.everything() == before


# ------------------------------------------------------------------------------ reading


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, None), (0, 1), (5, 6), (PART - 1, PART + 1), (10, None), (0, 3 * PART), (7, 7)],
)
async def test_ranges(backend: Backend, start: int, end: int | None) -> None:
    data = rand_bytes(2 * PART + 99, 5)
    put = await backend.store.put_bytes(data)
    hasher = hashlib.sha256()
    got = b"".join([c async for c in backend.store.open(put.digest, start, end, hasher)])
    assert got == data[start:end]
    assert hasher.hexdigest() == sha(data[start:end])


async def test_a_reader_that_stops_early_is_fine(backend: Backend) -> None:
    put = await backend.store.put_bytes(rand_bytes(3 * 1024 * 1024))
    reader = backend.store.open(put.digest)
    assert len(await reader.__anext__()) > 0
    await reader.aclose()  # type: ignore[attr-defined]
    assert await backend.store.read_bytes(put.digest) == rand_bytes(3 * 1024 * 1024)


async def test_missing_and_deleted_blobs(backend: Backend) -> None:
    store = backend.store
    missing = sha(b"never stored")
    assert not await store.exists(missing)
    with pytest.raises(BlobNotFound):
        await store.size(missing)
    with pytest.raises(BlobNotFound):
        await store.read_bytes(missing)
    with pytest.raises(BlobNotFound):
        _ = [c async for c in store.open(missing)]
    assert await store.delete(missing) is False
    put = await store.put_bytes(b"short-lived")
    assert await store.delete(put.digest) is True
    assert not await store.exists(put.digest)
    assert await backend.blob_names() == set()


@pytest.mark.parametrize("bad", ["", "ab", "A" * 64, "../" + "a" * 61, "g" * 64, "a" * 65])
async def test_no_bad_digest_reaches_the_backend(backend: Backend, bad: str) -> None:
    with pytest.raises(ValueError):
        await backend.store.delete(bad)
    with pytest.raises(ValueError):
        await backend.store.empty_trash(bad)
    with pytest.raises(ValueError):
        await backend.store.restore_from_trash(bad)


async def test_check_writable(backend: Backend) -> None:
    before = await backend.everything()
    await backend.store.check_writable()
    assert await backend.everything() == before


# -------------------------------------------------------------------- maintenance operations


async def test_scan_trash_restore_quarantine(backend: Backend) -> None:
    store = backend.store
    a = await store.put_bytes(b"a" * 10)
    b = await store.put_bytes(rand_bytes(2 * PART + 1))
    scanned = {d: size for d, size, _ in await store.scan_blobs()}
    assert scanned == {a.digest: 10, b.digest: 2 * PART + 1}
    assert await store.hash_of(b.digest) == b.digest

    assert await store.to_trash(b.digest) is True
    assert await store.to_trash(b.digest) is False
    assert not await store.exists(b.digest)
    assert [name for name, _, _ in await store.scan_dir("trash")] == [b.digest]
    await store.restore_from_trash(b.digest)
    assert await store.read_bytes(b.digest) == rand_bytes(2 * PART + 1)
    assert await store.scan_dir("trash") == []

    assert await store.to_trash(a.digest)
    await store.empty_trash(a.digest)
    assert await store.scan_dir("trash") == []
    assert not await store.exists(a.digest)

    await store.quarantine(b.digest)
    assert not await store.exists(b.digest)
    assert [name for name, _, _ in await store.scan_dir("quarantine")] == [b.digest]
    assert await store.stray_files() == []


async def test_crash_litter_is_listed_and_removable(backend: Backend) -> None:
    await backend.store.put_bytes(b"kept")
    blobs = await backend.blob_names()
    await backend.leave_crash_litter()
    litter = await backend.store.scan_dir("tmp")
    assert litter
    for name, _, _ in litter:
        await backend.store.remove_staging(name)
    assert await backend.store.scan_dir("tmp") == []
    assert await backend.everything() == blobs


# ------------------------------------------------------------ GC and fsck over a real service


def new() -> NewArtifact:
    return NewArtifact(workflow_id="wf", artifact_type="text", title="t", content_type="text/plain")


def new_child(parent: str) -> NewArtifact:
    return NewArtifact(
        workflow_id="wf",
        artifact_type="text",
        title="child",
        content_type="text/plain",
        derived_from=(parent,),
    )


async def test_gc_and_fsck_over_a_service(backend: Backend, tmp_path: Path) -> None:
    """Artifacts, an orphan blob, a deleted artifact and crash litter: GC (grace 0) reclaims
    exactly the garbage, fsck is clean before and after, every kept artifact reads back."""
    url = sqlite_url(tmp_path / "gc.db")
    upgrade(url)
    db = Database(url)
    try:
        svc = ArtifactService(db, backend.store)
        kept = await svc.create(new(), rand_bytes(2 * PART + 3, 1))
        small = await svc.create(new(), b"small and kept")
        gone = await svc.create(new(), b"deleted, then purged")
        await svc.delete(gone.id)
        orphan = await backend.store.put_bytes(b"no row ever")
        await backend.leave_crash_litter()

        report = await collect_garbage(db, backend.store, grace_us=0, deleted_retention_us=0)
        assert report.artifacts_purged == [gone.id]
        assert set(report.blobs_deleted) == {gone.content_hash}
        assert report.orphan_files_deleted == [orphan.digest]
        assert len(report.staging_removed) >= 1
        check = await fsck(db, backend.store, verify_data=True)
        assert (check.errors, check.warnings) == ([], [])
        assert {d for d, _, _ in await backend.store.scan_blobs()} == {
            kept.content_hash,
            small.content_hash,
        }
        assert await svc.read_bytes(await svc.get(kept.id)) == rand_bytes(2 * PART + 3, 1)
    finally:
        await db.dispose()


async def test_trash_recovery_over_a_service(backend: Backend, tmp_path: Path) -> None:
    """A crash between GC's move to trash and its row delete: recovery puts the blob back."""
    url = sqlite_url(tmp_path / "trash.db")
    upgrade(url)
    db = Database(url)
    try:
        svc = ArtifactService(db, backend.store)
        a = await svc.create(new(), b"survivor")
        rowless = await backend.store.put_bytes(b"rowless")
        assert await backend.store.to_trash(a.content_hash)
        assert await backend.store.to_trash(rowless.digest)
        assert await recover_trash(db, backend.store) == [a.content_hash]
        assert await backend.store.scan_dir("trash") == []
        check = await fsck(db, backend.store, verify_data=True)
        assert check.errors == []
        assert await backend.store.read_bytes(a.content_hash) == b"survivor"
    finally:
        await db.dispose()


class _Clock:
    """Real time minus `age` microseconds: a version replaced now looks `age` old to GC."""

    def __init__(self) -> None:
        self.age = 0

    def __call__(self) -> int:
        return now_us() - self.age


async def test_versions_over_a_service(backend: Backend, tmp_path: Path) -> None:
    """Versions (issue 17) on every backend: old versions read back after new uploads (one of
    them multipart-sized on S3); GC with a retention keeps the pinned version's blob and the
    recent one's, expires the rest and reclaims their blobs; once the pin goes (its child
    deleted and purged), retention 0 lets that version go too. fsck clean throughout."""
    url = sqlite_url(tmp_path / "versions.db")
    upgrade(url)
    db = Database(url)
    clock = _Clock()
    content = NewContent(content_type="application/octet-stream")
    data = {
        n: rand_bytes(2 * PART + 3, 10 + n) if n == 1 else b"version %d" % n for n in range(1, 5)
    }
    try:
        svc = ArtifactService(db, backend.store, clock=clock)

        async def read(artifact_id: str, n: int) -> bytes:
            at, version = await svc.get_version(artifact_id, n)
            assert (version.version, version.content_hash) == (n, sha(data[n]))
            return await svc.read_bytes(at)

        async def clean() -> None:
            check = await fsck(db, backend.store, verify_data=True)
            assert (check.errors, check.warnings) == ([], [])

        clock.age = 3 * DAY
        a = await svc.create(new(), data[1])
        await svc.replace_content(a.id, data[2], content)  # v1 replaced 3 days ago
        child = await svc.create(new_child(a.id), b"derived from version 2")
        await svc.replace_content(a.id, data[3], content)  # v2 replaced 3 days ago, pinned
        clock.age = 0
        await svc.replace_content(a.id, data[4], content)  # v3 replaced just now
        for n in range(1, 5):
            assert await read(a.id, n) == data[n]
        assert (await svc.get(a.id)).version == 4
        await clean()

        report = await collect_garbage(
            db, backend.store, grace_us=0, deleted_retention_us=0, version_retention_us=DAY
        )
        assert report.versions_expired == 1
        assert report.blobs_deleted == [sha(data[1])]
        with pytest.raises(VersionNotFound):
            await svc.get_version(a.id, 1)
        for n in (2, 3, 4):
            assert await read(a.id, n) == data[n]
        blobs = {sha(data[n]) for n in (2, 3, 4)} | {child.content_hash}
        assert {d for d, _, _ in await backend.store.scan_blobs()} == blobs
        await clean()

        report = await collect_garbage(
            db, backend.store, grace_us=0, deleted_retention_us=0, version_retention_us=0
        )
        assert (report.versions_expired, report.blobs_deleted) == (1, [sha(data[3])])
        assert await read(a.id, 2) == data[2]  # pinned by the live child
        assert await read(a.id, 4) == data[4]
        await clean()

        await svc.delete(child.id)
        report = await collect_garbage(
            db, backend.store, grace_us=0, deleted_retention_us=0, version_retention_us=0
        )
        assert report.artifacts_purged == [child.id]
        assert report.versions_expired == 1
        assert set(report.blobs_deleted) == {sha(data[2]), child.content_hash}
        assert {d for d, _, _ in await backend.store.scan_blobs()} == {sha(data[4])}
        for n in (1, 2, 3):
            with pytest.raises(VersionNotFound):
                await svc.get_version(a.id, n)
        assert await read(a.id, 4) == data[4]
        assert await svc.read_bytes(await svc.get(a.id)) == data[4]
        await clean()
    finally:
        await db.dispose()


# --------------------------------------------------------------------------------- S3 only


async def test_s3_layout_and_checksum(moto_server: MotoServer, s3_bucket: str) -> None:
    async with _s3_store(moto_server, s3_bucket) as store:
        small = await store.put_bytes(b"small")
        big = await store.put_bytes(rand_bytes(3 * PART))
        keys = {
            item["Key"]
            for item in moto_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
        }
        assert keys == {f"store/sha256/{d[:2]}/{d[2:4]}/{d}" for d in (small.digest, big.digest)}


async def test_s3_copy_in_parts_above_the_copy_limit(
    moto_server: MotoServer, s3_bucket: str
) -> None:
    """Blobs above CopyObject's limit (5 GiB; here made 100 KiB) are copied with UploadPartCopy."""
    data = rand_bytes(3 * PART + 1234, 9)
    async with _s3_store(moto_server, s3_bucket, copy_part_size=100 * KiB) as store:
        put = await store.put(stream(pieces(data, 20 * KiB)))
        assert await store.read_bytes(put.digest) == data
        assert await store.to_trash(put.digest)
        await store.restore_from_trash(put.digest)
        assert await store.hash_of(put.digest) == put.digest
        assert await store.scan_dir("tmp") == []


async def test_s3_unreachable_is_unavailable() -> None:
    store = S3BlobStore(
        "nowhere",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        max_attempts=1,
        client_options={"aws_access_key_id": "x", "aws_secret_access_key": "y"},
    )
    async with store:
        with pytest.raises(StorageUnavailable):
            await store.put_bytes(b"data")
        with pytest.raises(StorageUnavailable):
            await store.exists(sha(b"data"))
        with pytest.raises(StorageUnavailable):
            await store.check_writable()


async def test_s3_missing_bucket_is_unavailable(moto_server: MotoServer) -> None:
    async with _s3_store(moto_server, "no-such-bucket") as store:
        with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
            await store.put_bytes(b"data")
        with pytest.raises(StorageUnavailable):
            await store.check_writable()
