"""Content-addressed blobs in a local directory (layout in storage/digest.py).

Write path: staging file in <root>/tmp, sha256 and write in ~1 MiB steps in a worker thread,
fchmod 0444 + fsync, link() to the final name (an existing name is a dedupe hit), fsync of the
directory, unlink of the staging name. link() never replaces an existing file, so a blob's name
only ever points at complete, fsynced bytes. Every blocking call runs off the event loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import hashlib
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from anyio import CancelScope, to_thread

from storage.blobs.base import PutResult
from storage.digest import blob_relpath, digest_of_relpath, is_sha256_hex
from storage.errors import (
    BlobNotFound,
    BlobTooLarge,
    DigestMismatch,
    InsufficientStorage,
    StorageUnavailable,
)

T = TypeVar("T")
# threads start on first use
_WORK = ThreadPoolExecutor(32, thread_name_prefix="blob-write")
_READS = ThreadPoolExecutor(16, thread_name_prefix="blob-read")
STEP = 1 << 20  # bytes handed to a worker thread at once
READ_CHUNK = 1 << 20


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _translate_os_error(exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage("The blob store's disk is full.")
    return StorageUnavailable(f"The blob store could not write: {exc.strerror or exc}.")


async def _in_thread(func: Callable[..., T], *args: Any) -> T:
    """Run blocking filesystem work off the event loop; OS errors become storage errors. The
    event loop's executor call rather than anyio.to_thread (half the cost a hop here); like
    anyio's, it is not cancellable: a cancelled caller waits for the work to end, so nothing it
    cleans up afterwards is still in use."""
    future = asyncio.get_running_loop().run_in_executor(_WORK, func, *args)
    try:
        return await asyncio.shield(future)
    except OSError as exc:
        raise _translate_os_error(exc) from exc
    except asyncio.CancelledError:
        with CancelScope(shield=True):
            await asyncio.wait([future])
        if not future.cancelled() and future.exception() is None:
            made = future.result()
            if isinstance(made, _Staging):  # opened for a caller that is gone: remove it
                made.discard()
        raise


def _start_writeback() -> Callable[[int, int, int], None]:
    """Ask the kernel to start writing a file's dirty pages now, without waiting (Linux
    sync_file_range(SYNC_FILE_RANGE_WRITE)), so the final fsync has little left to flush: the
    disk works while we hash and receive. Measured here: +15% on streaming uploads. A no-op
    where the call does not exist."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, length: None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    sync_file_range_write = 2

    def start(fd: int, offset: int, length: int) -> None:
        call(fd, offset, length, sync_file_range_write)  # errors are harmless: fsync follows

    return start


start_writeback = _start_writeback()


def _read_at(fd: int, size: int, position: int, hasher: Any) -> bytes:
    data = os.pread(fd, size, position)
    if hasher is not None:
        hasher.update(data)
    return data


class _Staging:
    """One open staging file; hashing and writing happen in the same pass."""

    def __init__(self, tmp_dir: Path) -> None:
        self.path = tmp_dir / f"put-{secrets.token_hex(16)}"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunks: list[bytes | memoryview], *, writeback: bool = True) -> None:
        """Hash and write a batch of chunks (one thread hop per batch, no joining copy)."""
        start = self.size
        for data in chunks:
            self.hash.update(data)
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
            self.size += len(data)
        if writeback:
            start_writeback(self.fd, start, self.size - start)

    def seal(self) -> None:
        os.fchmod(self.fd, 0o444)
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class FilesystemBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "sha256").mkdir(exist_ok=True)

    def path_of(self, digest: str) -> Path:
        return self.root / blob_relpath(digest)

    async def put(
        self,
        chunks: AsyncIterable[bytes | memoryview],
        *,
        max_bytes: int | None = None,
        expected_digest: str | None = None,
    ) -> PutResult:
        staging: _Staging | None = None  # opened by the first batch written
        try:
            pending: list[bytes | memoryview] = []
            pending_size = 0
            total = 0
            async for chunk in chunks:  # an error of the source propagates unchanged
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise BlobTooLarge(max_bytes)
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= STEP:
                    staging = await _in_thread(self._write, staging, pending)
                    pending, pending_size = [], 0
            return await _in_thread(self._finish, staging, pending, expected_digest)
        except BaseException:
            # Synchronous on purpose: after a cancellation no further await would run.
            if staging is not None:
                staging.discard()
            raise

    def _write(self, staging: _Staging | None, pending: list[bytes | memoryview]) -> _Staging:
        if staging is None:
            staging = _Staging(self.tmp_dir)
        try:
            staging.write(pending)
        except BaseException:
            staging.discard()
            raise
        return staging

    def _finish(
        self,
        staging: _Staging | None,
        pending: list[bytes | memoryview],
        expected_digest: str | None,
    ) -> PutResult:
        """The last batch, the digest check and the commit in one thread hop: a small blob
        (one batch) costs one hop in all."""
        if staging is None:
            staging = _Staging(self.tmp_dir)
        try:
            staging.write(pending, writeback=False)  # fsync follows at once
            digest = staging.hash.hexdigest()
            if expected_digest is not None and expected_digest != digest:
                raise DigestMismatch(expected_digest, digest)
            created = self._commit(staging, digest)
            return PutResult(digest=digest, size=staging.size, created=created)
        except BaseException:
            staging.discard()
            raise

    def _commit(self, staging: _Staging, digest: str) -> bool:
        staging.seal()
        final = self.path_of(digest)
        self._make_parents(final.parent)
        try:
            os.link(staging.path, final)
            created = True
        except FileExistsError:
            created = False
        # Also on a dedupe hit: the name found may not be durable yet (a concurrent put between
        # its link() and this fsync, or an earlier put whose directory fsync failed).
        _fsync_dir(final.parent)
        staging.discard()
        return created

    def _make_parents(self, directory: Path) -> None:
        """mkdir -p, fsyncing each parent of a directory it creates so the new entry is durable."""
        if directory.is_dir():
            return
        self._make_parents(directory.parent)
        try:
            directory.mkdir()
        except FileExistsError:
            return
        _fsync_dir(directory.parent)

    async def put_bytes(self, data: bytes) -> PutResult:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put(one())

    async def exists(self, digest: str) -> bool:
        return await to_thread.run_sync(self.path_of(digest).is_file)

    def read_blocking(self, digest: str) -> bytes:
        """A whole blob, read in the calling thread (for small ones on the event loop)."""
        if not is_sha256_hex(digest):
            raise ValueError(digest)
        with open(f"{self._root}/sha256/{digest[:2]}/{digest[2:4]}/{digest}", "rb") as f:
            return f.read()

    async def size(self, digest: str) -> int:
        try:
            return (await to_thread.run_sync(self.path_of(digest).stat)).st_size
        except FileNotFoundError:
            raise BlobNotFound(digest) from None

    async def open(
        self, digest: str, start: int = 0, end: int | None = None, hasher: Any = None
    ) -> AsyncIterator[bytes]:
        """Yield bytes [start, end) of the blob (end None: to its end) in ~1 MiB chunks;
        `hasher.update` sees each chunk in the same worker-thread hop that reads it. One
        chunk is read ahead: the next read (and its hashing, which releases the GIL) runs
        while the consumer sends the current one."""
        loop = asyncio.get_running_loop()
        try:
            fd = await loop.run_in_executor(_READS, os.open, self.path_of(digest), os.O_RDONLY)
        except FileNotFoundError:
            raise BlobNotFound(digest) from None

        def read(position: int) -> asyncio.Future[bytes] | None:
            if end is not None and position >= end:
                return None
            want = READ_CHUNK if end is None else min(READ_CHUNK, end - position)
            return loop.run_in_executor(_READS, _read_at, fd, want, position, hasher)

        pending = read(start)
        try:
            position = start
            while pending is not None:
                data = await pending
                pending = None
                if not data:
                    break
                position += len(data)
                pending = read(position)
                yield data
        finally:
            if pending is not None:  # a read in flight cannot be stopped: let it end first
                try:
                    await asyncio.wait([pending])
                except BaseException:  # cancelled meanwhile: the file closes when it ends
                    pending.add_done_callback(lambda _: os.close(fd))
                    raise
                if not pending.cancelled():
                    pending.exception()  # seen, so never reported as unretrieved
            os.close(fd)

    async def read_bytes(self, digest: str) -> bytes:
        """A whole blob (small ones: inline content). The event loop's executor call rather
        than anyio.to_thread, which costs twice as much a hop: a read has nothing to undo if
        its caller is cancelled meanwhile."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(_READS, self.path_of(digest).read_bytes)
        except FileNotFoundError:
            raise BlobNotFound(digest) from None

    async def delete(self, digest: str) -> bool:
        """Remove a blob (garbage collection only). False when it was already gone."""
        if not is_sha256_hex(digest):
            raise ValueError(digest)

        def remove() -> bool:
            try:
                os.unlink(self.path_of(digest))
            except FileNotFoundError:
                return False
            return True

        return await to_thread.run_sync(remove)

    # -- maintenance (garbage collection, fsck): see storage/maintenance.py ------------------

    def _scan_blobs(self) -> list[tuple[str, int, float]]:
        """(digest, size, mtime) of every blob file; names that are not blobs are skipped
        (stray_files reports them), as are files gone since listed (blocking: run in a thread)."""
        found = []
        for path in (self.root / "sha256").glob("*/*/*"):
            try:
                digest = digest_of_relpath(PurePosixPath(path.relative_to(self.root).as_posix()))
                stat = path.stat()
            except (ValueError, FileNotFoundError):
                continue
            found.append((digest, stat.st_size, stat.st_mtime))
        return found

    def _stray_files(self) -> list[str]:
        """Files under sha256/ whose place is not a blob's (blocking)."""
        strays = []
        for path in (self.root / "sha256").rglob("*"):
            if path.is_dir():
                continue
            try:
                digest_of_relpath(PurePosixPath(path.relative_to(self.root).as_posix()))
            except ValueError:
                strays.append(path.relative_to(self.root).as_posix())
        return strays

    def _scan_dir(self, name: str) -> list[tuple[str, int, float]]:
        """(name, size, mtime) of the files in tmp/ or trash/ (blocking)."""
        directory = self.root / name
        if not directory.is_dir():
            return []
        found = []
        for path in directory.iterdir():
            try:
                stat = path.stat()
            except FileNotFoundError:  # a staging file committed or discarded meanwhile
                continue
            found.append((path.name, stat.st_size, stat.st_mtime))
        return found

    def _remove_staging(self, name: str) -> None:
        (self.tmp_dir / PurePosixPath(name).name).unlink(missing_ok=True)

    def _to_trash(self, digest: str) -> bool:
        """Move a blob to trash/ (step one of deleting it); False when it was already gone."""
        trash = self.root / "trash"
        trash.mkdir(exist_ok=True)
        try:
            os.replace(self.path_of(digest), trash / digest)
        except FileNotFoundError:
            return False
        _fsync_dir(trash)
        return True

    def _restore_from_trash(self, digest: str) -> None:
        final = self.path_of(digest)
        self._make_parents(final.parent)
        try:
            os.replace(self.root / "trash" / blob_relpath(digest).name, final)
        except FileNotFoundError:
            return  # already restored or emptied
        _fsync_dir(final.parent)

    def _empty_trash(self, digest: str) -> None:
        (self.root / "trash" / blob_relpath(digest).name).unlink(missing_ok=True)

    async def quarantine(self, digest: str) -> None:
        """Move a corrupt blob out of the way (quarantine/<digest>) so it is never served again;
        the same bytes uploaded again recreate it."""

        def move() -> None:
            place = self.root / "quarantine"
            place.mkdir(exist_ok=True)
            try:
                os.replace(self.path_of(digest), place / digest)
            except FileNotFoundError:
                return
            _fsync_dir(place)

        await to_thread.run_sync(move)

    def _hash_of(self, digest: str) -> str:
        """The sha256 of the stored file's bytes (blocking)."""
        h = hashlib.sha256()
        with self.path_of(digest).open("rb") as f:
            while block := f.read(READ_CHUNK):
                h.update(block)
        return h.hexdigest()

    # The maintenance contract (base.MaintainedBlobStore): the blocking work above, off the loop.

    async def scan_blobs(self) -> list[tuple[str, int, float]]:
        return await to_thread.run_sync(self._scan_blobs)

    async def stray_files(self) -> list[str]:
        return await to_thread.run_sync(self._stray_files)

    async def scan_dir(self, name: str) -> list[tuple[str, int, float]]:
        return await to_thread.run_sync(self._scan_dir, name)

    async def remove_staging(self, name: str) -> None:
        await to_thread.run_sync(self._remove_staging, name)

    async def to_trash(self, digest: str) -> bool:
        return await to_thread.run_sync(self._to_trash, digest)

    async def restore_from_trash(self, digest: str) -> None:
        await to_thread.run_sync(self._restore_from_trash, digest)

    async def empty_trash(self, digest: str) -> None:
        await to_thread.run_sync(self._empty_trash, digest)

    async def hash_of(self, digest: str) -> str:
        return await to_thread.run_sync(self._hash_of, digest)

    async def check_writable(self) -> None:
        def probe() -> None:
            probe_path = self.tmp_dir / f"ready-{secrets.token_hex(8)}"
            probe_path.write_bytes(b"ok")
            probe_path.unlink()

        try:
            await to_thread.run_sync(probe)
        except OSError as exc:
            raise _translate_os_error(exc) from exc
