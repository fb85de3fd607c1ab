"""The filesystem blob store, on real directories under tmp_path.

Properties: any chunking of the same bytes gives the same digest and path; put is idempotent
(a dedupe hit rewrites nothing); a failed or cancelled write leaves no staging file and nothing at
the final path. OS faults are injected by swapping the `os` module *as seen from*
storage/blobs/filesystem.py for a proxy whose chosen calls fail; every other call is the real one.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.blobs import FilesystemBlobStore, PutResult, filesystem
from storage.digest import EMPTY_SHA256
from storage.errors import (
    BlobNotFound,
    BlobTooLarge,
    DigestMismatch,
    InsufficientStorage,
    StorageUnavailable,
)
from tests.support.blobs import rand_bytes, sha, stream

STEP = filesystem.STEP
READ_CHUNK = filesystem.READ_CHUNK
MiB = 1 << 20

pytestmark = pytest.mark.anyio


# --------------------------------------------------------------------------------------- helpers


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """data cut at the given offsets (duplicates give empty chunks, which must be harmless)."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def blob_path(root: Path, digest: str) -> Path:
    return root / "sha256" / digest[:2] / digest[2:4] / digest


def staging(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "tmp").iterdir())


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int, int, int]]:
    """Every non-directory under sha256/: relpath -> (bytes, st_mode, inode, mtime_ns, nlink)."""
    out = {}
    for p in sorted((root / "sha256").rglob("*")):
        st_ = p.lstat()
        if stat.S_ISDIR(st_.st_mode):
            continue
        out[p.relative_to(root).as_posix()] = (
            p.read_bytes(),
            st_.st_mode,
            st_.st_ino,
            st_.st_mtime_ns,
            st_.st_nlink,
        )
    return out


def assert_blobs_exactly(root: Path, blobs: dict[str, bytes]) -> None:
    """sha256/ holds exactly these blobs (complete, regular, 0444, one link); tmp/ is empty."""
    assert staging(root) == []
    found = {rel: (data, mode, nlink) for rel, (data, mode, _, _, nlink) in snapshot(root).items()}
    assert found == {
        f"sha256/{d[:2]}/{d[2:4]}/{d}": (data, stat.S_IFREG | 0o444, 1) for d, data in blobs.items()
    }
    for d, data in blobs.items():
        assert sha(data) == d


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class FaultyOs:
    """Stands in for the `os` module inside storage.blobs.filesystem: overrides win, the rest is
    the real module."""

    def __init__(self, **overrides: Callable[..., Any]) -> None:
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def fd_is_dir(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def fd_target(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.fixture
def store(blob_dir: Path) -> FilesystemBlobStore:
    return FilesystemBlobStore(blob_dir)


@pytest.fixture
async def existing(store: FilesystemBlobStore) -> tuple[str, bytes]:
    """A blob stored before the test acts, which nothing may touch."""
    data = b"stored before the test \xff\xfe"
    result = await store.put_bytes(data)
    assert result == PutResult(digest=sha(data), size=len(data), created=True)
    return result.digest, data


# ------------------------------------------------------------------------------------ layout


def test_new_store_creates_its_layout(blob_dir: Path) -> None:
    assert not blob_dir.exists()
    store = FilesystemBlobStore(blob_dir)
    assert sorted(p.name for p in blob_dir.iterdir()) == ["sha256", "tmp"]
    assert store.path_of(EMPTY_SHA256) == blob_dir / "sha256" / "e3" / "b0" / EMPTY_SHA256
    # Opening an existing store again keeps what is there.
    (blob_dir / "sha256" / "keep").write_bytes(b"x")
    FilesystemBlobStore(blob_dir)
    assert (blob_dir / "sha256" / "keep").read_bytes() == b"x"


# ---------------------------------------------------------------- property: chunking, reading

SPECIAL = [
    b"",
    b"\x00",
    b"a",
    b"\xff",
    b"\xc3\x28",  # invalid 2-byte UTF-8 sequence
    b"\xed\xa0\x80",  # UTF-8-encoded surrogate: invalid
    b"\xf8\x88\x80\x80\x80",  # 5-byte form: invalid
    b"\x80" * 7,
    "héllo wörld ✓".encode(),
]
LARGE_SIZES = [STEP - 1, STEP, STEP + 1, 2 * STEP + 17, 3 * MiB + MiB // 2 + 3]

payloads = st.one_of(
    st.sampled_from(SPECIAL),
    st.binary(max_size=1),
    st.binary(max_size=5000),
    st.builds(rand_bytes, st.sampled_from(LARGE_SIZES), st.integers(0, 2**32)),
)


def cuts_for(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=12)


def ranges_for(data: bytes) -> st.SearchStrategy[list[tuple[int, int | None]]]:
    offsets = st.integers(0, len(data) + 3)
    return st.lists(st.tuples(offsets, st.none() | offsets), min_size=1, max_size=6)


async def _check_put_and_read(
    root: Path,
    data: bytes,
    chunks_a: list[bytes],
    chunks_b: list[memoryview],
    ranges: list[tuple[int, int | None]],
) -> None:
    digest = sha(data)
    store_a = FilesystemBlobStore(root / "a")
    store_b = FilesystemBlobStore(root / "b")

    assert await store_a.exists(digest) is False
    put_a = await store_a.put(stream(chunks_a))
    put_b = await store_b.put(stream(chunks_b))
    assert put_a == PutResult(digest=digest, size=len(data), created=True)
    assert put_b == PutResult(digest=digest, size=len(data), created=True)
    # Same bytes, other chunking, same store: a dedupe hit.
    assert await store_a.put(stream(chunks_b)) == PutResult(digest, len(data), created=False)

    expected_rel = f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"
    assert store_a.path_of(digest) == root / "a" / expected_rel
    assert store_b.path_of(digest) == root / "b" / expected_rel
    assert_blobs_exactly(root / "a", {digest: data})
    assert_blobs_exactly(root / "b", {digest: data})

    assert await store_a.exists(digest) is True
    assert await store_a.size(digest) == len(data)
    assert await store_a.read_bytes(digest) == data
    pieces = [piece async for piece in store_a.open(digest)]
    assert b"".join(pieces) == data
    assert [len(p) for p in pieces] == [
        min(READ_CHUNK, len(data) - i) for i in range(0, len(data), READ_CHUNK)
    ]
    for start, end in ranges:
        got = [piece async for piece in store_a.open(digest, start, end)]
        assert b"".join(got) == data[start:end], (start, end)
        assert all(0 < len(piece) <= READ_CHUNK for piece in got)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=payloads, draw=st.data())
def test_any_chunking_gives_same_digest_path_and_bytes(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, draw: st.DataObject
) -> None:
    chunks_a = split_at(data, draw.draw(cuts_for(data), label="cuts_a"))
    # The other chunking hands out memoryview slices, as the multipart parser does.
    chunks_b = [memoryview(c) for c in split_at(data, draw.draw(cuts_for(data), label="cuts_b"))]
    ranges = draw.draw(ranges_for(data), label="ranges")
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as tmp:
        anyio.run(_check_put_and_read, Path(tmp), data, chunks_a, chunks_b, ranges)


def _chunkings(n: int) -> dict[str, list[int]]:
    return {
        "whole": [],
        "64KiB": list(range(0, n, 64 * 1024)),
        "STEP-1": list(range(0, n, STEP - 1)),
        "uneven": [i for i in (1, 2, 3, STEP // 2, STEP + 5, 2 * STEP + 1) if i <= n],
    }


@pytest.mark.parametrize("size", [0, 1, STEP - 1, STEP, STEP + 1, 2 * STEP + 17])
async def test_step_boundaries_every_chunking_agrees(blob_dir: Path, size: int) -> None:
    """Deterministic cover of the 1 MiB STEP boundary, whatever hypothesis draws."""
    data = rand_bytes(size, seed=size)
    digest = sha(data)
    for i, (name, cuts) in enumerate(_chunkings(size).items()):
        store = FilesystemBlobStore(blob_dir / name)
        result = await store.put(stream(split_at(data, cuts)))
        assert result == PutResult(digest=digest, size=size, created=True), name
        assert_blobs_exactly(blob_dir / name, {digest: data})
        assert await store.read_bytes(digest) == data
        # And every other chunking of the same bytes is a dedupe hit in that store.
        for other in list(_chunkings(size).values())[i + 1 :]:
            again = await store.put(stream(split_at(data, other)))
            assert again == PutResult(digest=digest, size=size, created=False)
        assert_blobs_exactly(blob_dir / name, {digest: data})


async def test_empty_stream_stores_the_empty_blob(
    store: FilesystemBlobStore, blob_dir: Path
) -> None:
    result = await store.put(stream([]))
    assert result == PutResult(digest=EMPTY_SHA256, size=0, created=True)
    assert_blobs_exactly(blob_dir, {EMPTY_SHA256: b""})
    assert await store.read_bytes(EMPTY_SHA256) == b""
    assert [piece async for piece in store.open(EMPTY_SHA256)] == []
    assert await store.size(EMPTY_SHA256) == 0
    assert await store.put(stream([b"", b""])) == PutResult(EMPTY_SHA256, 0, created=False)
    assert await store.put_bytes(b"") == PutResult(EMPTY_SHA256, 0, created=False)


async def test_put_accepts_memoryview_chunks(store: FilesystemBlobStore, blob_dir: Path) -> None:
    """The multipart parser hands out memoryview slices of the request's chunks."""
    data = rand_bytes(STEP + 100, seed=7)
    chunks = [memoryview(data)[:10], memoryview(data)[10:STEP], data[STEP:], memoryview(b"")]
    result = await store.put(stream(chunks))
    assert result == PutResult(sha(data), len(data), created=True)
    assert_blobs_exactly(blob_dir, {sha(data): data})


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, slice(0, None)),
        (0, 0, slice(0, 0)),
        (5, 5, slice(5, 5)),
        (9, 3, slice(9, 3)),  # end before start: nothing
        (READ_CHUNK - 1, READ_CHUNK + 1, slice(READ_CHUNK - 1, READ_CHUNK + 1)),
        (READ_CHUNK, None, slice(READ_CHUNK, None)),
        (1, 2 * READ_CHUNK + 10, slice(1, 2 * READ_CHUNK + 10)),  # end past the blob
        (2 * READ_CHUNK + 10, None, slice(0, 0)),  # start past the blob
        (2 * READ_CHUNK + 2, 2 * READ_CHUNK + 9, slice(0, 0)),
    ],
)
async def test_open_ranges(
    store: FilesystemBlobStore, start: int, end: int | None, expected: slice
) -> None:
    data = rand_bytes(2 * READ_CHUNK + 1, seed=3)
    digest = (await store.put_bytes(data)).digest
    got = [piece async for piece in store.open(digest, start, end)]
    assert b"".join(got) == data[expected]
    assert all(0 < len(piece) <= READ_CHUNK for piece in got)


async def test_open_closed_early_releases_its_file(store: FilesystemBlobStore) -> None:
    data = rand_bytes(3 * READ_CHUNK, seed=4)
    digest = (await store.put_bytes(data)).digest
    before = open_fds()
    reader = store.open(digest)
    first = await reader.__anext__()
    assert first == data[:READ_CHUNK]
    assert open_fds() == before + 1
    await reader.aclose()
    assert open_fds() == before


# ---------------------------------------------------------------------- idempotency / dedupe


async def test_second_put_is_a_dedupe_hit_that_rewrites_nothing(
    store: FilesystemBlobStore, blob_dir: Path
) -> None:
    data = b"same bytes, twice " * 5000
    first = await store.put(stream([data[:10], data[10:]]))
    assert first == PutResult(digest=sha(data), size=len(data), created=True)
    before = snapshot(blob_dir)
    second = await store.put(stream([data]))
    assert second == PutResult(digest=sha(data), size=len(data), created=False)
    third = await store.put_bytes(data)
    assert third == PutResult(digest=sha(data), size=len(data), created=False)
    # Same inode, same mtime: the stored file was neither replaced nor rewritten.
    assert snapshot(blob_dir) == before
    assert_blobs_exactly(blob_dir, {sha(data): data})


async def test_dedupe_only_matches_identical_bytes(
    store: FilesystemBlobStore, blob_dir: Path
) -> None:
    a, b = b"abc", b"abd"
    assert (await store.put_bytes(a)).created is True
    assert (await store.put_bytes(b)).created is True
    assert_blobs_exactly(blob_dir, {sha(a): a, sha(b): b})


async def test_concurrent_identical_puts_store_one_blob(
    store: FilesystemBlobStore, blob_dir: Path
) -> None:
    n = 8
    data = rand_bytes(2 * STEP + 5, seed=8)
    arrived = 0
    gate = anyio.Event()
    staged_at_gate: list[str] = []

    async def gated() -> AsyncIterator[bytes]:
        nonlocal arrived
        yield data[: STEP + 3]  # a whole batch: the put opens its staging file and writes it
        arrived += 1
        if arrived == n:
            # Every put is mid-stream here: each holds its own staging file, none has committed.
            staged_at_gate.extend(staging(blob_dir))
            gate.set()
        await gate.wait()
        yield data[STEP + 3 :]

    results: list[PutResult] = []

    async def one() -> None:
        results.append(await store.put(gated()))

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)

    assert len(staged_at_gate) == n
    assert len(set(staged_at_gate)) == n
    assert len(results) == n
    assert {(r.digest, r.size) for r in results} == {(sha(data), len(data))}
    assert sorted(r.created for r in results) == [False] * (n - 1) + [True]
    assert_blobs_exactly(blob_dir, {sha(data): data})


def _same_fanout_payloads(count: int) -> list[bytes]:
    """`count` distinct payloads whose blobs share both fan-out directories (sha256/ab/cd/)."""
    groups: dict[str, list[bytes]] = {}
    i = 0
    while True:
        payload = f"payload-{i}".encode()
        group = groups.setdefault(sha(payload)[:4], [])
        group.append(payload)
        if len(group) == count:
            return group
        i += 1


async def test_concurrent_distinct_puts_into_the_same_new_directories(
    store: FilesystemBlobStore, blob_dir: Path
) -> None:
    payloads_ = _same_fanout_payloads(3)
    assert len({sha(p)[:4] for p in payloads_}) == 1
    gate = anyio.Event()
    arrived = 0
    results: dict[bytes, PutResult] = {}

    async def gated(payload: bytes) -> AsyncIterator[bytes]:
        nonlocal arrived
        arrived += 1
        if arrived == len(payloads_):
            gate.set()
        await gate.wait()
        yield payload

    async def one(payload: bytes) -> None:
        results[payload] = await store.put(gated(payload))

    async with anyio.create_task_group() as tg:
        for payload in payloads_:
            tg.start_soon(one, payload)

    assert results == {p: PutResult(sha(p), len(p), created=True) for p in payloads_}
    assert_blobs_exactly(blob_dir, {sha(p): p for p in payloads_})


# ------------------------------------------------------------------- failures leave nothing


class SourceBroke(Exception):
    pass


@pytest.mark.parametrize("fail_after", [0, 1, STEP, STEP + 10, 2 * STEP + 1])
async def test_source_error_propagates_unchanged_and_leaves_nothing(
    store: FilesystemBlobStore,
    blob_dir: Path,
    existing: tuple[str, bytes],
    fail_after: int,
) -> None:
    data = rand_bytes(3 * STEP, seed=fail_after)
    before = snapshot(blob_dir)
    fds = open_fds()
    error = SourceBroke("the client went away")
    staged_midway: list[tuple[str, int]] = []

    async def source() -> AsyncIterator[bytes]:
        for i in range(0, fail_after, 256 * 1024):
            yield data[i : min(i + 256 * 1024, fail_after)]
        staged_midway.extend((p.name, p.stat().st_size) for p in (blob_dir / "tmp").iterdir())
        raise error

    with pytest.raises(SourceBroke) as info:
        await store.put(source())
    assert info.value is error
    # put wrote as it read: less than one STEP of what it had been given was still held in
    # memory. The staging file opens with the first full batch, so below one STEP there was
    # none to clean up; past it there was one.
    assert len(staged_midway) == (1 if fail_after >= STEP else 0)
    if staged_midway:
        assert 0 <= fail_after - staged_midway[0][1] < STEP
    assert staging(blob_dir) == []
    assert snapshot(blob_dir) == before
    assert not blob_path(blob_dir, sha(data[:fail_after])).exists()
    assert not blob_path(blob_dir, sha(data)).exists()
    assert open_fds() == fds
    assert await store.read_bytes(existing[0]) == existing[1]


async def test_an_os_error_of_the_source_is_not_blamed_on_the_store(
    store: FilesystemBlobStore, blob_dir: Path
) -> None:
    error = ConnectionResetError(104, "Connection reset by peer")

    async def source() -> AsyncIterator[bytes]:
        yield b"partial"
        raise error

    with pytest.raises(ConnectionResetError) as info:
        await store.put(source())
    assert info.value is error
    assert staging(blob_dir) == []


async def test_exactly_max_bytes_is_accepted(store: FilesystemBlobStore, blob_dir: Path) -> None:
    data = rand_bytes(STEP + 1, seed=11)
    result = await store.put(stream(split_at(data, [5, STEP])), max_bytes=len(data))
    assert result == PutResult(sha(data), len(data), created=True)
    assert await store.put(stream([b""]), max_bytes=0) == PutResult(EMPTY_SHA256, 0, True)
    assert_blobs_exactly(blob_dir, {sha(data): data, EMPTY_SHA256: b""})


@pytest.mark.parametrize("limit", [0, 1, STEP - 1, STEP, STEP + 5, 2 * STEP])
async def test_max_bytes_exceeded_leaves_nothing(
    store: FilesystemBlobStore, blob_dir: Path, existing: tuple[str, bytes], limit: int
) -> None:
    data = rand_bytes(limit + 1, seed=limit)
    before = snapshot(blob_dir)
    with pytest.raises(BlobTooLarge) as info:
        await store.put(stream(split_at(data, range(0, len(data), 100_000))), max_bytes=limit)
    assert type(info.value) is BlobTooLarge
    assert info.value.limit == limit
    assert str(limit) in str(info.value)
    assert staging(blob_dir) == []
    assert snapshot(blob_dir) == before
    assert not blob_path(blob_dir, sha(data)).exists()
    assert not blob_path(blob_dir, sha(data[:limit])).exists()


async def test_max_bytes_stops_reading_an_endless_stream(
    store: FilesystemBlobStore, blob_dir: Path, existing: tuple[str, bytes]
) -> None:
    chunk = 64 * 1024
    limit = 2 * STEP + 3
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"\x00" * chunk

    before = snapshot(blob_dir)
    with pytest.raises(BlobTooLarge) as info:
        await store.put(endless(), max_bytes=limit)
    assert info.value.limit == limit
    # It stopped at the first chunk that passed the limit.
    assert pulled == limit // chunk + 1
    assert staging(blob_dir) == []
    assert snapshot(blob_dir) == before


async def test_expected_digest_that_matches_is_stored(
    store: FilesystemBlobStore, blob_dir: Path
) -> None:
    data = rand_bytes(STEP + 7, seed=12)
    result = await store.put(stream(split_at(data, [STEP])), expected_digest=sha(data))
    assert result == PutResult(sha(data), len(data), created=True)
    again = await store.put(stream([data]), expected_digest=sha(data))
    assert again == PutResult(sha(data), len(data), created=False)
    assert_blobs_exactly(blob_dir, {sha(data): data})


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param("existing", id="names-an-existing-blob"),
        pytest.param(sha(b"never stored"), id="names-nothing"),
        pytest.param("uppercase", id="uppercase-of-actual"),
        pytest.param("../../../etc/passwd", id="not-a-digest"),
        pytest.param("", id="empty"),
    ],
)
async def test_digest_mismatch_leaves_nothing(
    store: FilesystemBlobStore, blob_dir: Path, existing: tuple[str, bytes], wrong: str
) -> None:
    data = rand_bytes(STEP + 7, seed=13)
    if wrong == "existing":
        wrong = existing[0]
    elif wrong == "uppercase":
        wrong = sha(data).upper()
    before = snapshot(blob_dir)
    with pytest.raises(DigestMismatch) as info:
        await store.put(stream(split_at(data, [3, STEP])), expected_digest=wrong)
    assert type(info.value) is DigestMismatch
    assert (info.value.expected, info.value.actual) == (wrong, sha(data))
    assert staging(blob_dir) == []
    assert snapshot(blob_dir) == before
    assert not blob_path(blob_dir, sha(data)).exists()
    assert sorted(p.name for p in blob_dir.iterdir()) == ["sha256", "tmp"]


async def test_digest_mismatch_for_already_stored_bytes_changes_nothing(
    store: FilesystemBlobStore, blob_dir: Path, existing: tuple[str, bytes]
) -> None:
    digest, data = existing
    before = snapshot(blob_dir)
    with pytest.raises(DigestMismatch) as info:
        await store.put(stream([data]), expected_digest=sha(b"other"))
    assert (info.value.expected, info.value.actual) == (sha(b"other"), digest)
    assert snapshot(blob_dir) == before
    assert staging(blob_dir) == []


async def test_cancelled_while_source_blocks_leaves_nothing(
    store: FilesystemBlobStore, blob_dir: Path, existing: tuple[str, bytes]
) -> None:
    data = rand_bytes(2 * STEP + 10, seed=14)
    before = snapshot(blob_dir)
    fds = open_fds()
    blocked = anyio.Event()
    staged_midway: list[str] = []
    finished: list[PutResult] = []

    async def source() -> AsyncIterator[bytes]:
        yield data[:STEP]
        yield data[STEP : 2 * STEP]
        yield data[2 * STEP :]
        staged_midway.extend(staging(blob_dir))
        blocked.set()
        await anyio.sleep_forever()

    async def run() -> None:
        finished.append(await store.put(source()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await blocked.wait()
        tg.cancel_scope.cancel()

    assert tg.cancel_scope.cancelled_caught
    assert finished == []
    assert len(staged_midway) == 1
    assert staging(blob_dir) == []
    assert snapshot(blob_dir) == before
    assert not blob_path(blob_dir, sha(data)).exists()
    assert open_fds() == fds


async def test_timeout_while_source_blocks_leaves_nothing(
    store: FilesystemBlobStore, blob_dir: Path, existing: tuple[str, bytes]
) -> None:
    data = rand_bytes(STEP + 10, seed=15)
    before = snapshot(blob_dir)

    async def slow_source() -> AsyncIterator[bytes]:
        yield data[:STEP]
        yield data[STEP:]
        await anyio.sleep(60)
        yield b"never"

    result = None
    with anyio.move_on_after(0.3) as scope:
        result = await store.put(slow_source())
    assert scope.cancelled_caught
    assert result is None
    assert staging(blob_dir) == []
    assert snapshot(blob_dir) == before
    # The store is fine afterwards: the same bytes can be stored for real.
    assert await store.put(stream([data])) == PutResult(sha(data), len(data), created=True)
    assert_blobs_exactly(blob_dir, {existing[0]: existing[1], sha(data): data})


# ------------------------------------------------------------------------------- OS faults

ERRNO_CASES = [
    pytest.param(errno.ENOSPC, InsufficientStorage, id="ENOSPC"),
    pytest.param(errno.EDQUOT, InsufficientStorage, id="EDQUOT"),
    pytest.param(errno.EIO, StorageUnavailable, id="EIO"),
    pytest.param(errno.EROFS, StorageUnavailable, id="EROFS"),
]


def _failing(
    err: int,
    real: Callable[..., Any],
    *,
    on_call: int = 1,
    when: Callable[..., bool] | None = None,
) -> Any:
    """`real`, except that the on_call-th call that `when` accepts raises OSError(err); the
    raised exception is kept in `.raised`."""
    calls = 0
    raised: list[OSError] = []

    def fake(*args: Any) -> Any:
        nonlocal calls
        if when is None or when(*args):
            calls += 1
            if calls == on_call:
                exc = OSError(err, os.strerror(err))
                raised.append(exc)
                raise exc
        return real(*args)

    fake.raised = raised  # type: ignore[attr-defined]
    return fake


async def _put_fails_cleanly(
    store: FilesystemBlobStore,
    blob_dir: Path,
    data: bytes,
    expected_type: type[Exception],
    fault: Any,
) -> None:
    before = snapshot(blob_dir)
    fds = open_fds()
    with pytest.raises(expected_type) as info:
        await store.put(stream(split_at(data, range(0, len(data), 300_000))))
    assert type(info.value) is expected_type
    assert len(fault.raised) == 1
    assert info.value.__cause__ is fault.raised[0]
    assert staging(blob_dir) == []
    assert snapshot(blob_dir) == before
    assert not blob_path(blob_dir, sha(data)).exists()
    assert open_fds() == fds


@pytest.mark.parametrize(("err", "expected_type"), ERRNO_CASES)
@pytest.mark.parametrize("on_call", [1, 2])
async def test_write_fault_is_translated_and_leaves_nothing(
    store: FilesystemBlobStore,
    blob_dir: Path,
    existing: tuple[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    err: int,
    expected_type: type[Exception],
    on_call: int,
) -> None:
    fault = _failing(err, os.write, on_call=on_call)
    monkeypatch.setattr(filesystem, "os", FaultyOs(write=fault))
    await _put_fails_cleanly(
        store, blob_dir, rand_bytes(2 * STEP + 9, seed=16), expected_type, fault
    )


@pytest.mark.parametrize(("err", "expected_type"), ERRNO_CASES)
async def test_fsync_fault_is_translated_and_leaves_nothing(
    store: FilesystemBlobStore,
    blob_dir: Path,
    existing: tuple[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    err: int,
    expected_type: type[Exception],
) -> None:
    fault = _failing(err, os.fsync)
    monkeypatch.setattr(filesystem, "os", FaultyOs(fsync=fault))
    await _put_fails_cleanly(store, blob_dir, rand_bytes(STEP + 9, seed=17), expected_type, fault)


@pytest.mark.parametrize("call", ["fchmod", "link"])
@pytest.mark.parametrize(("err", "expected_type"), ERRNO_CASES)
async def test_seal_and_link_faults_are_translated_and_leave_nothing(
    store: FilesystemBlobStore,
    blob_dir: Path,
    existing: tuple[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    call: str,
    err: int,
    expected_type: type[Exception],
) -> None:
    fault = _failing(err, getattr(os, call))
    monkeypatch.setattr(filesystem, "os", FaultyOs(**{call: fault}))
    await _put_fails_cleanly(store, blob_dir, rand_bytes(1000, seed=18), expected_type, fault)


@pytest.mark.parametrize(("err", "expected_type"), ERRNO_CASES)
async def test_staging_create_fault_is_translated_and_leaves_nothing(
    store: FilesystemBlobStore,
    blob_dir: Path,
    existing: tuple[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    err: int,
    expected_type: type[Exception],
) -> None:
    tmp = str(blob_dir / "tmp")
    fault = _failing(err, os.open, when=lambda path, *_: str(path).startswith(tmp))
    monkeypatch.setattr(filesystem, "os", FaultyOs(open=fault))
    pulled = []

    async def source() -> AsyncIterator[bytes]:
        pulled.append(1)
        yield b"data"

    before = snapshot(blob_dir)
    with pytest.raises(expected_type) as info:
        await store.put(source())
    assert info.value.__cause__ is fault.raised[0]
    # the staging file opens with the first batch (one thread hop in all for a small blob),
    # so at most one batch is read from a client it cannot store
    assert pulled == [1]
    assert staging(blob_dir) == []
    assert snapshot(blob_dir) == before


async def test_fanout_directory_fsync_fault_leaves_nothing(
    store: FilesystemBlobStore,
    blob_dir: Path,
    existing: tuple[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Failing to make a new sha256/ab/ entry durable is a failed put, before any link."""
    data = _same_fanout_payloads(1)[0]
    while sha(data)[:2] == existing[0][:2]:
        data += b"."
    assert not blob_path(blob_dir, sha(data)).parent.parent.exists()
    fault = _failing(errno.EIO, os.fsync, when=fd_is_dir)
    monkeypatch.setattr(filesystem, "os", FaultyOs(fsync=fault))
    await _put_fails_cleanly(store, blob_dir, data, StorageUnavailable, fault)
    monkeypatch.undo()
    assert await store.put(stream([data])) == PutResult(sha(data), len(data), created=True)
    assert_blobs_exactly(blob_dir, {existing[0]: existing[1], sha(data): data})


async def test_short_writes_are_completed(
    store: FilesystemBlobStore, blob_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.write may write less than asked; every byte must still reach the file, in order."""
    sizes: list[int] = []

    def short_write(fd: int, data: Any) -> int:
        n = os.write(fd, bytes(data[:65_521]))
        sizes.append(n)
        return n

    monkeypatch.setattr(filesystem, "os", FaultyOs(write=short_write))
    data = rand_bytes(STEP + 12345, seed=19)
    assert await store.put(stream([data])) == PutResult(sha(data), len(data), created=True)
    assert len(sizes) > 2
    assert sum(sizes) == len(data)
    assert_blobs_exactly(blob_dir, {sha(data): data})


async def test_blob_fsynced_before_its_name_exists_and_its_directory_after(
    store: FilesystemBlobStore, blob_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durability order: the staging file's bytes are fsynced while it is still only in tmp/,
    and the directory holding the new name is fsynced after link()."""
    data = rand_bytes(5000, seed=20)
    final = blob_path(blob_dir, sha(data))
    events: list[tuple[str, str]] = []

    def fsync(fd: int) -> None:
        events.append(("fsync", fd_target(fd)))
        os.fsync(fd)

    def link(src: Any, dst: Any) -> None:
        events.append(("link", str(dst)))
        os.link(src, dst)

    monkeypatch.setattr(filesystem, "os", FaultyOs(fsync=fsync, link=link))
    await store.put(stream([data]))
    link_at = events.index(("link", str(final)))
    staging_syncs = [
        i
        for i, (kind, target) in enumerate(events)
        if kind == "fsync" and target.startswith(str(blob_dir / "tmp") + "/")
    ]
    assert len(staging_syncs) == 1 and staging_syncs[0] < link_at
    assert ("fsync", str(final.parent)) in events[link_at + 1 :]


async def test_directory_fsync_fault_after_link(
    store: FilesystemBlobStore, blob_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the fsync of sha256/ab/cd/ fails after link(), the put fails and tmp/ is emptied. The
    name already points at the complete, sealed bytes and stays: removing it could pull a blob
    from under a concurrent put that has just deduplicated against it. A later put of the same
    bytes is a dedupe hit and must itself make that directory entry durable."""
    data = rand_bytes(STEP + 3, seed=21)
    final = blob_path(blob_dir, sha(data))
    final.parent.mkdir(parents=True)  # so the only directory fsync is the one after link()
    fault = _failing(errno.EIO, os.fsync, when=fd_is_dir)
    monkeypatch.setattr(filesystem, "os", FaultyOs(fsync=fault))
    with pytest.raises(StorageUnavailable) as info:
        await store.put(stream([data]))
    assert info.value.__cause__ is fault.raised[0]
    assert_blobs_exactly(blob_dir, {sha(data): data})

    synced: list[str] = []

    def fsync(fd: int) -> None:
        synced.append(fd_target(fd))
        os.fsync(fd)

    monkeypatch.setattr(filesystem, "os", FaultyOs(fsync=fsync))
    assert await store.put(stream([data])) == PutResult(sha(data), len(data), created=False)
    assert str(final.parent) in synced
    assert_blobs_exactly(blob_dir, {sha(data): data})


async def test_put_into_a_store_whose_tmp_vanished_is_unavailable(
    store: FilesystemBlobStore, blob_dir: Path, existing: tuple[str, bytes]
) -> None:
    (blob_dir / "tmp").rmdir()
    with pytest.raises(StorageUnavailable) as info:
        await store.put_bytes(b"anything")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert not blob_path(blob_dir, sha(b"anything")).exists()
    assert await store.read_bytes(existing[0]) == existing[1]


# ------------------------------------------------------------- delete, exists, size, reads


async def test_delete_then_everything_says_missing(
    store: FilesystemBlobStore, blob_dir: Path, existing: tuple[str, bytes]
) -> None:
    data = rand_bytes(READ_CHUNK + 1, seed=22)
    digest = (await store.put_bytes(data)).digest
    assert await store.exists(digest) is True
    assert await store.size(digest) == len(data)

    assert await store.delete(digest) is True
    assert not blob_path(blob_dir, digest).exists()
    assert await store.exists(digest) is False
    with pytest.raises(BlobNotFound) as size_err:
        await store.size(digest)
    assert size_err.value.digest == digest
    with pytest.raises(BlobNotFound) as read_err:
        await store.read_bytes(digest)
    assert read_err.value.digest == digest
    with pytest.raises(BlobNotFound) as open_err:
        async for _ in store.open(digest):
            pytest.fail("a deleted blob yielded bytes")
    assert open_err.value.digest == digest

    assert await store.delete(digest) is False
    assert_blobs_exactly(blob_dir, {existing[0]: existing[1]})
    # Deleted content can be stored again.
    assert await store.put_bytes(data) == PutResult(digest, len(data), created=True)
    assert_blobs_exactly(blob_dir, {existing[0]: existing[1], digest: data})


async def test_missing_blob(store: FilesystemBlobStore) -> None:
    digest = sha(b"never stored")
    assert await store.exists(digest) is False
    assert await store.delete(digest) is False
    for call in (store.size, store.read_bytes):
        with pytest.raises(BlobNotFound) as info:
            await call(digest)
        assert info.value.digest == digest
        assert digest in str(info.value)
    with pytest.raises(BlobNotFound) as info:
        await store.open(digest, 0, 10).__anext__()
    assert info.value.digest == digest


async def test_open_of_a_blob_removed_while_streaming_keeps_its_bytes(
    store: FilesystemBlobStore,
) -> None:
    data = rand_bytes(3 * READ_CHUNK, seed=23)
    digest = (await store.put_bytes(data)).digest
    reader = store.open(digest)
    got = [await reader.__anext__()]
    assert await store.delete(digest) is True
    got += [piece async for piece in reader]
    assert b"".join(got) == data


BAD_DIGESTS = [
    "",
    sha(b"x").upper(),
    sha(b"x")[:63],
    sha(b"x") + "0",
    "../" + sha(b"x")[3:],
    "../../tmp/" + "0" * 54,
    sha(b"x")[:63] + "\x00",
    "/etc/passwd",
]


@pytest.mark.parametrize("bad", BAD_DIGESTS)
async def test_no_bad_digest_reaches_the_filesystem(
    store: FilesystemBlobStore, blob_dir: Path, bad: str
) -> None:
    # Even with a file where a careless join would land, every call refuses before any I/O.
    (blob_dir / "sha256" / "planted").write_bytes(b"secret")
    for call in (store.exists, store.size, store.read_bytes, store.delete):
        with pytest.raises(ValueError):
            await call(bad)
    with pytest.raises(ValueError):
        await store.open(bad).__anext__()
    with pytest.raises(ValueError):
        store.path_of(bad)
    assert (blob_dir / "sha256" / "planted").read_bytes() == b"secret"


# ---------------------------------------------------------------------------- check_writable


async def test_check_writable_on_a_writable_store(
    store: FilesystemBlobStore, blob_dir: Path
) -> None:
    await store.check_writable()
    await store.check_writable()
    assert staging(blob_dir) == []
    assert snapshot(blob_dir) == {}


async def test_check_writable_when_tmp_is_gone(store: FilesystemBlobStore, blob_dir: Path) -> None:
    (blob_dir / "tmp").rmdir()
    with pytest.raises(StorageUnavailable) as info:
        await store.check_writable()
    assert isinstance(info.value.__cause__, FileNotFoundError)


async def test_check_writable_when_tmp_is_a_file(
    store: FilesystemBlobStore, blob_dir: Path
) -> None:
    (blob_dir / "tmp").rmdir()
    (blob_dir / "tmp").write_bytes(b"")
    with pytest.raises(StorageUnavailable) as info:
        await store.check_writable()
    assert isinstance(info.value.__cause__, NotADirectoryError)
    assert (blob_dir / "tmp").read_bytes() == b""


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
async def test_check_writable_on_a_read_only_tmp(
    store: FilesystemBlobStore, blob_dir: Path
) -> None:
    (blob_dir / "tmp").chmod(0o555)
    try:
        with pytest.raises(StorageUnavailable) as info:
            await store.check_writable()
        assert isinstance(info.value.__cause__, PermissionError)
    finally:
        (blob_dir / "tmp").chmod(0o755)
