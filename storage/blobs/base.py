"""The contract every blob backend keeps.

Semantics, whatever the backend:
- put() consumes a stream of byte chunks, hashes it in the same pass, and returns only once the
  blob is durably stored under its sha256 (its name included). If a blob with that digest
  already exists, that is a dedupe hit (success, `created=False`) and nothing is rewritten. On
  any failure (size limit, digest mismatch, I/O error, cancellation) no staging data is left and
  nothing incomplete is ever visible at a final name. (If making a new name durable fails after
  it was linked, the complete, sealed blob stays: a concurrent put may already rely on it.)
  Errors raised by the source stream propagate unchanged; the store's own I/O errors become
  InsufficientStorage / StorageUnavailable. Chunks may be memoryviews, but over immutable
  buffers: the store may hold them until it writes a batch.
- open() streams a stored blob (optionally a byte range); a missing blob raises BlobNotFound.
- Blobs are immutable: there is no overwrite, only delete (for garbage collection).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class PutResult:
    digest: str
    size: int
    created: bool


class BlobStore(Protocol):
    async def put(
        self,
        chunks: AsyncIterable[bytes | memoryview],
        *,
        max_bytes: int | None = None,
        expected_digest: str | None = None,
    ) -> PutResult: ...

    async def put_bytes(self, data: bytes) -> PutResult: ...

    async def exists(self, digest: str) -> bool: ...

    @property
    def read_blocking(self) -> Callable[[str], bytes] | None:
        """A small blob's bytes as a blocking call, for a store whose read is a local file
        (the service reads small inline content right on the event loop); None where it is
        network I/O. Raises OSError where read_bytes would raise the store's own error."""
        ...

    async def size(self, digest: str) -> int: ...

    def open(
        self, digest: str, start: int = 0, end: int | None = None, hasher: Any = None
    ) -> AsyncIterator[bytes]: ...

    async def read_bytes(self, digest: str) -> bytes: ...

    async def delete(self, digest: str) -> bool: ...

    async def check_writable(self) -> None: ...

    async def quarantine(self, digest: str) -> None: ...


class MaintainedBlobStore(BlobStore, Protocol):
    """What garbage collection, trash recovery and fsck need of a backend (storage/maintenance.py).

    Names in "tmp" (staging), "trash" and "quarantine" are the backend's own; times are seconds
    since the epoch. to_trash/restore_from_trash/empty_trash move one blob through the crash-safe
    deletion GC performs: a blob leaves its name before its row is deleted, and is only gone for
    good once that deletion committed.
    """

    async def scan_blobs(self) -> list[tuple[str, int, float]]: ...

    async def stray_files(self) -> list[str]: ...

    async def scan_dir(self, name: str) -> list[tuple[str, int, float]]: ...

    async def remove_staging(self, name: str) -> None: ...

    async def to_trash(self, digest: str) -> bool: ...

    async def restore_from_trash(self, digest: str) -> None: ...

    async def empty_trash(self, digest: str) -> None: ...

    async def hash_of(self, digest: str) -> str: ...
