"""Content-addressed blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, GCS's XML API).

Layout under the bucket and an optional prefix, mirroring the filesystem backend:

    <prefix>sha256/ab/cd/abcd…            one object per blob, named by its sha256
    <prefix>staging/<start µs>-<random>   an upload whose digest is not known yet
    <prefix>trash/<hex>                    blobs garbage collection is deleting
    <prefix>quarantine/<hex>               blobs whose bytes no longer hash to their name

Write path. The bytes are hashed as they arrive, in the same pass that sends them on:
- up to one part (ARTIFACTS_S3_PART_SIZE, 8 MiB by default) is buffered; a stream that ends
  within it is one PutObject straight to its final name, with `If-None-Match: *` (an existing
  blob is a dedupe hit, 412, and nothing is rewritten) and `x-amz-checksum-sha256` set to the
  digest, so the object store itself refuses bytes that are not the ones we hashed;
- a longer stream becomes a multipart upload to a staging name, one part in flight while the next
  is received (memory per upload: two parts, whatever the size). At the end the digest is known:
  an existing blob is a dedupe hit (the staging object is deleted), otherwise the staging object
  is copied server-side to its final name (CopyObject, or UploadPartCopy above 5 GiB) and then
  deleted. Object stores have no rename; a copy is atomic, so a final name never shows an
  incomplete object.
- on any failure or cancellation the multipart upload is aborted and the staging object deleted
  (shielded from the cancellation); what a crash leaves behind (an unfinished multipart upload, a
  staging object) carries its start time in its name and garbage collection removes it after the
  grace period, as it does the filesystem's staging files.

Everything else is one request each: HEAD for exists/size, ranged GET streamed in 1 MiB chunks for
open(), DELETE for GC. Retries are botocore's (standard mode); what still fails becomes
StorageUnavailable (503), a full or over-quota bucket InsufficientStorage (507).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from contextlib import AsyncExitStack
from pathlib import PurePosixPath
from typing import Any, TypeVar

import anyio
from aiobotocore.session import get_session
from anyio import to_thread
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

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
MiB = 1 << 20
READ_CHUNK = MiB
MIN_PART_SIZE = 5 * MiB  # S3's smallest part but the last
MAX_COPY_SIZE = 5 << 30  # the largest object CopyObject copies in one request
MAX_PARTS = 10_000
HASH_IN_THREAD = 256 * 1024  # chunks at least this large are hashed off the event loop

_MISSING = {"404", "NoSuchKey", "NotFound"}
_FULL = {"XMinioStorageFull", "QuotaExceeded", "StorageFull", "EntityTooLarge"}
_EXISTS = {"412", "PreconditionFailed", "ConditionalRequestConflict"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, ClientError):
        code = _code(exc)
        if code in _FULL:
            return InsufficientStorage(f"The object store refused the blob ({code}).")
        message = exc.response.get("Error", {}).get("Message") or code
        return StorageUnavailable(f"The object store failed: {code}: {message}.")
    return StorageUnavailable(f"The object store could not be reached: {exc}.")


async def _call(request: Awaitable[T]) -> T:
    """One S3 request; what botocore's retries did not cure becomes a storage error."""
    try:
        return await request
    except (ClientError, BotoCoreError, OSError) as exc:
        raise _translate(exc) from exc


def _name_time(name: str) -> float | None:
    """The start time (seconds) a staging name carries, None when it carries none."""
    stamp, _, _ = name.rpartition("/")[2].partition("-")
    return int(stamp) / 1e6 if stamp.isdigit() else None


class S3BlobStore:
    """A BlobStore over one bucket (and prefix). Open it with `async with S3BlobStore(...)`."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "auto",
        part_size: int = 8 * MiB,
        copy_part_size: int = MAX_COPY_SIZE,
        max_connections: int = 64,
        max_attempts: int = 4,
        checksums: bool = True,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.copy_part_size = copy_part_size
        self.checksums = checksums
        self._client_args: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "region_name": region,
            "config": Config(
                retries={"mode": "standard", "max_attempts": max_attempts},
                max_pool_connections=max_connections,
                s3={"addressing_style": addressing_style},
                # Only the checksums we choose (below); botocore's default CRC32 on every
                # request is not understood by every S3-compatible store.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                connect_timeout=10,
                read_timeout=60,
            ),
            **(client_options or {}),
        }
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    async def __aenter__(self) -> S3BlobStore:
        self._stack = AsyncExitStack()
        self._client = await self._stack.enter_async_context(
            get_session().create_client("s3", **self._client_args)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("S3BlobStore used outside `async with`")
        return self._client

    def key_of(self, digest: str) -> str:
        return self.prefix + str(blob_relpath(digest))

    def _key(self, relative: str) -> str:
        return self.prefix + relative

    # -- writing -----------------------------------------------------------------------------

    async def put(
        self,
        chunks: AsyncIterable[bytes | memoryview],
        *,
        max_bytes: int | None = None,
        expected_digest: str | None = None,
    ) -> PutResult:
        hasher = hashlib.sha256()
        buffer = bytearray()
        total = 0
        upload: _MultipartUpload | None = None
        try:
            async for chunk in chunks:  # an error of the source propagates unchanged
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise BlobTooLarge(max_bytes)
                if len(chunk) >= HASH_IN_THREAD:
                    await to_thread.run_sync(hasher.update, chunk)
                else:
                    hasher.update(chunk)
                buffer += chunk
                while len(buffer) >= self.part_size:
                    if upload is None:
                        upload = await _MultipartUpload.start(self, self._staging_key())
                    part = bytes(buffer[: self.part_size])
                    del buffer[: self.part_size]
                    await upload.send(part)
            digest = hasher.hexdigest()
            if expected_digest is not None and expected_digest != digest:
                raise DigestMismatch(expected_digest, digest)
            if upload is None:
                created = await self._put_small(digest, bytes(buffer))
            else:
                if buffer:
                    await upload.send(bytes(buffer))
                    buffer.clear()
                await upload.complete()
                created = await self._place(upload.key, digest, total)
                upload = None
            return PutResult(digest=digest, size=total, created=created)
        except BaseException:
            if upload is not None:
                with anyio.CancelScope(shield=True):
                    await upload.discard()
            raise

    def _staging_key(self) -> str:
        return self._key(f"staging/{time.time_ns() // 1000}-{secrets.token_hex(12)}")

    async def _put_small(self, digest: str, data: bytes) -> bool:
        """One conditional PutObject to the final name; False when the blob already exists
        (a store that ignores If-None-Match rewrites the same bytes, which is harmless)."""
        key = self.key_of(digest)
        extra: dict[str, Any] = {}
        if self.checksums:
            extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(digest)).decode()
        try:
            await self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*", **extra
            )
        except ClientError as exc:
            if _code(exc) in _EXISTS:
                return False  # a concurrent put stored the same bytes first
            raise _translate(exc) from exc
        except (BotoCoreError, OSError) as exc:
            raise _translate(exc) from exc
        return True

    async def _place(self, staging_key: str, digest: str, size: int) -> bool:
        """Give a complete staging object its final name; False on a dedupe hit."""
        final = self.key_of(digest)
        try:
            if await self._head(final) is not None:
                return False
            await self._copy(staging_key, final, size)
            return True
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(StorageUnavailable):
                await _call(self.client.delete_object(Bucket=self.bucket, Key=staging_key))

    async def _copy(self, source: str, target: str, size: int) -> None:
        """Server-side copy: one CopyObject, or UploadPartCopy in ranges for big objects."""
        copy_source = {"Bucket": self.bucket, "Key": source}
        if size <= self.copy_part_size:
            await _call(
                self.client.copy_object(Bucket=self.bucket, Key=target, CopySource=copy_source)
            )
            return
        upload = await _MultipartUpload.start(self, target)
        try:
            for start in range(0, size, self.copy_part_size):
                end = min(start + self.copy_part_size, size) - 1
                await upload.copy_part(copy_source, f"bytes={start}-{end}")
            await upload.complete()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await upload.abort()
            raise

    async def put_bytes(self, data: bytes) -> PutResult:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put(one())

    # -- reading -----------------------------------------------------------------------------

    async def _head(self, key: str) -> dict[str, Any] | None:
        try:
            response: dict[str, Any] = await self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise _translate(exc) from exc
        except (BotoCoreError, OSError) as exc:
            raise _translate(exc) from exc
        return response

    read_blocking = None  # a GET request: never on the event loop

    async def exists(self, digest: str) -> bool:
        return await self._head(self.key_of(digest)) is not None

    async def size(self, digest: str) -> int:
        head = await self._head(self.key_of(digest))
        if head is None:
            raise BlobNotFound(digest)
        return int(head["ContentLength"])

    async def _get(self, key: str, byte_range: str | None = None) -> Any:
        extra = {"Range": byte_range} if byte_range else {}
        try:
            return await self.client.get_object(Bucket=self.bucket, Key=key, **extra)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise BlobNotFound(key.rpartition("/")[2]) from None
            raise _translate(exc) from exc
        except (BotoCoreError, OSError) as exc:
            raise _translate(exc) from exc

    async def open(
        self, digest: str, start: int = 0, end: int | None = None, hasher: Any = None
    ) -> AsyncIterator[bytes]:
        """Yield bytes [start, end) of the blob (end None: to its end) as the object store sends
        them, in chunks of at most 1 MiB; `hasher.update` sees each one."""
        if end is not None and end <= start:
            if not await self.exists(digest):
                raise BlobNotFound(digest)
            return
        byte_range = None
        if start or end is not None:
            byte_range = f"bytes={start}-{'' if end is None else end - 1}"
        response = await self._get(self.key_of(digest), byte_range)
        body = response["Body"]
        try:
            async for data in body.iter_chunks(READ_CHUNK):
                if hasher is not None:
                    if len(data) >= HASH_IN_THREAD:
                        await to_thread.run_sync(hasher.update, data)
                    else:
                        hasher.update(data)
                yield data
        except (ClientError, BotoCoreError, OSError) as exc:
            raise _translate(exc) from exc
        finally:
            body.close()

    async def read_bytes(self, digest: str) -> bytes:
        return b"".join([chunk async for chunk in self.open(digest)])

    async def delete(self, digest: str) -> bool:
        """Remove a blob (garbage collection only). False when it was already gone."""
        if not is_sha256_hex(digest):
            raise ValueError(digest)
        key = self.key_of(digest)
        if await self._head(key) is None:
            return False
        await _call(self.client.delete_object(Bucket=self.bucket, Key=key))
        return True

    async def check_writable(self) -> None:
        key = self._key(f"staging/{time.time_ns() // 1000}-ready-{secrets.token_hex(8)}")
        await _call(self.client.put_object(Bucket=self.bucket, Key=key, Body=b"ok"))
        await _call(self.client.delete_object(Bucket=self.bucket, Key=key))

    # -- maintenance (garbage collection, fsck): see storage/maintenance.py ------------------

    async def _list(self, relative: str) -> AsyncIterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(relative)):
                for item in page.get("Contents", []):
                    yield item
        except (ClientError, BotoCoreError, OSError) as exc:
            raise _translate(exc) from exc

    def _relative(self, key: str) -> str:
        return key[len(self.prefix) :]

    async def scan_blobs(self) -> list[tuple[str, int, float]]:
        """(digest, size, mtime) of every blob object; keys that are not blobs are skipped."""
        found = []
        async for item in self._list("sha256/"):
            try:
                digest = digest_of_relpath(PurePosixPath(self._relative(item["Key"])))
            except ValueError:
                continue
            found.append((digest, int(item["Size"]), item["LastModified"].timestamp()))
        return found

    async def stray_files(self) -> list[str]:
        strays = []
        async for item in self._list("sha256/"):
            relative = self._relative(item["Key"])
            try:
                digest_of_relpath(PurePosixPath(relative))
            except ValueError:
                strays.append(relative)
        return strays

    async def scan_dir(self, name: str) -> list[tuple[str, int, float]]:
        """(name, size, mtime) of what is in staging ("tmp": objects and unfinished multipart
        uploads, named `<key>@<upload id>`), "trash" or "quarantine"."""
        directory = "staging/" if name == "tmp" else f"{name}/"
        found = []
        async for item in self._list(directory):
            relative = self._relative(item["Key"])
            mtime = _name_time(relative) if name == "tmp" else None
            found.append(
                (relative.rpartition("/")[2] if name != "tmp" else relative, int(item["Size"]),
                 mtime if mtime is not None else item["LastModified"].timestamp())
            )  # fmt: skip
        if name == "tmp":
            found.extend(await self._unfinished_uploads())
        return found

    async def _unfinished_uploads(self) -> list[tuple[str, int, float]]:
        found = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for upload in page.get("Uploads", []):
                    relative = self._relative(upload["Key"])
                    # Our own clock, in the name, when there is one (some stores report no
                    # useful initiation time); else the store's.
                    started = _name_time(relative)
                    if started is None:
                        started = upload["Initiated"].timestamp()
                    found.append((f"{relative}@{upload['UploadId']}", 0, started))
        except (ClientError, BotoCoreError, OSError) as exc:
            raise _translate(exc) from exc
        return found

    async def remove_staging(self, name: str) -> None:
        relative, _, upload_id = name.partition("@")
        if upload_id:
            try:
                await self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self._key(relative), UploadId=upload_id
                )
            except ClientError as exc:
                if _code(exc) not in {"NoSuchUpload", "404"}:
                    raise _translate(exc) from exc
            return
        if not relative.startswith("staging/"):
            raise ValueError(name)
        await _call(self.client.delete_object(Bucket=self.bucket, Key=self._key(relative)))

    async def _move(self, source: str, target: str) -> bool:
        head = await self._head(source)
        if head is None:
            return False
        await self._copy(source, target, int(head["ContentLength"]))
        await _call(self.client.delete_object(Bucket=self.bucket, Key=source))
        return True

    async def to_trash(self, digest: str) -> bool:
        """Copy a blob to trash/ and delete it (step one of deleting it); False when gone."""
        return await self._move(self.key_of(digest), self._key(f"trash/{digest}"))

    async def restore_from_trash(self, digest: str) -> None:
        await self._move(self._key(f"trash/{_checked(digest)}"), self.key_of(digest))

    async def empty_trash(self, digest: str) -> None:
        key = self._key(f"trash/{_checked(digest)}")
        await _call(self.client.delete_object(Bucket=self.bucket, Key=key))

    async def quarantine(self, digest: str) -> None:
        """Move a corrupt blob out of the way so it is never served again."""
        await self._move(self.key_of(digest), self._key(f"quarantine/{digest}"))

    async def hash_of(self, digest: str) -> str:
        hasher = hashlib.sha256()
        async for _ in self.open(digest, hasher=hasher):
            pass
        return hasher.hexdigest()


def _checked(digest: str) -> str:
    if not is_sha256_hex(digest):
        raise ValueError(digest)
    return digest


class _MultipartUpload:
    """One multipart upload with at most one part in flight while the next one fills."""

    def __init__(self, store: S3BlobStore, key: str, upload_id: str) -> None:
        self.store = store
        self.key = key
        self.upload_id = upload_id
        self.parts: list[dict[str, Any]] = []
        self._task: asyncio.Future[None] | None = None
        self._sent: anyio.Event | None = None
        self._error: BaseException | None = None
        self._done = False

    @classmethod
    async def start(cls, store: S3BlobStore, key: str) -> _MultipartUpload:
        response = await _call(store.client.create_multipart_upload(Bucket=store.bucket, Key=key))
        return cls(store, key, response["UploadId"])

    async def send(self, data: bytes) -> None:
        """Start uploading the next part once the previous one has finished (errors surface
        on the next call)."""
        await self._wait()
        if len(self.parts) >= MAX_PARTS:
            raise StorageUnavailable(
                "The upload needs more than 10,000 parts; raise the part size."
            )
        number = len(self.parts) + 1
        self.parts.append({"PartNumber": number})
        sent = self._sent = anyio.Event()

        async def upload() -> None:
            try:
                response = await _call(
                    self.store.client.upload_part(
                        Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id,
                        PartNumber=number, Body=data,
                    )
                )  # fmt: skip
                self.parts[number - 1]["ETag"] = response["ETag"]
            except Exception as exc:  # re-raised by the next _wait()
                self._error = exc
            finally:
                sent.set()

        self._task = asyncio.ensure_future(upload())

    async def _wait(self) -> None:
        if self._sent is not None:
            await self._sent.wait()
            self._sent = None
        if self._error is not None:
            raise self._error

    async def copy_part(self, source: dict[str, str], byte_range: str) -> None:
        number = len(self.parts) + 1
        response = await _call(
            self.store.client.upload_part_copy(
                Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id,
                PartNumber=number, CopySource=source, CopySourceRange=byte_range,
            )
        )  # fmt: skip
        self.parts.append({"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]})

    async def complete(self) -> None:
        await self._wait()
        await _call(
            self.store.client.complete_multipart_upload(
                Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
        )  # fmt: skip
        self._done = True

    async def abort(self) -> None:
        if self._sent is not None and self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(StorageUnavailable, ClientError):
            await _call(
                self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id
                )
            )

    async def discard(self) -> None:
        """Undo everything this upload left: the unfinished upload, or the completed object."""
        if self._done:
            with contextlib.suppress(StorageUnavailable):
                await _call(self.store.client.delete_object(Bucket=self.store.bucket, Key=self.key))
        else:
            await self.abort()
