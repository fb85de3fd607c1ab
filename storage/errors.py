"""What can go wrong in the store, independent of any protocol. app/errors.py maps each to HTTP."""

from __future__ import annotations

from collections.abc import Sequence


class StorageError(Exception):
    """Base of every error the storage core raises on purpose."""


class ArtifactNotFound(StorageError):
    def __init__(self, artifact_id: str) -> None:
        super().__init__(f"Artifact {artifact_id!r} was not found.")
        self.artifact_id = artifact_id


class VersionNotFound(StorageError):
    """The artifact exists (live) but has no version of that number (never had, or retention
    purged it)."""

    def __init__(self, artifact_id: str, version: int) -> None:
        super().__init__(f"Artifact {artifact_id!r} has no version {version}.")
        self.artifact_id = artifact_id
        self.version = version


class PreconditionFailed(StorageError):
    """A conditional content write (If-Match) found another version current: nothing written."""

    def __init__(self, artifact_id: str, current_hash: str) -> None:
        super().__init__(
            f"Artifact {artifact_id!r} no longer has the content the request's If-Match names "
            f'(another version landed first; its ETag is now "{current_hash}"): '
            "read it again and retry."
        )
        self.artifact_id = artifact_id
        self.current_hash = current_hash


class WorkflowNotFound(StorageError):
    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"Workflow {workflow_id!r} has no artifacts.")
        self.workflow_id = workflow_id


class ImportNotFound(StorageError):
    def __init__(self, import_id: str) -> None:
        super().__init__(f"Import {import_id!r} was not found.")
        self.import_id = import_id


class ArtifactIdTooShort(ArtifactNotFound):
    """A reference shorter than the shortest prefix an artifact can be named by: no artifact
    is looked up (answered as not found, with the minimum in the sentence)."""

    def __init__(self, ref: str, minimum: int) -> None:
        StorageError.__init__(
            self,
            f"The artifact id {ref!r} is too short: give the full id or a unique prefix of at "
            f"least {minimum} characters.",
        )
        self.artifact_id = ref
        self.minimum = minimum


class AmbiguousArtifactId(StorageError):
    """An id prefix that matches several live artifacts of the tenant: `candidates` are some
    of them (at most `shown`), `more` says whether others match too."""

    def __init__(self, prefix: str, candidates: Sequence[str] = (), more: bool = False) -> None:
        count = f"more than {len(candidates)}" if more else str(len(candidates) or "several")
        listed = f" ({', '.join(candidates)}{', ...' if more else ''})" if candidates else ""
        super().__init__(
            f"The id prefix {prefix!r} matches {count} artifacts{listed}; give more characters."
        )
        self.prefix = prefix
        self.candidates = tuple(candidates)
        self.more = more


class UnknownParent(StorageError):
    """A `derived_from` entry names no live artifact."""

    def __init__(self, index: int, parent_id: str) -> None:
        super().__init__(f"derived_from[{index}]: artifact {parent_id!r} does not exist.")
        self.index = index
        self.parent_id = parent_id


class DuplicateSource(StorageError):
    """A live artifact was already imported from this upstream object."""

    def __init__(self, source: str, source_ref: str, artifact_id: str | None) -> None:
        super().__init__(f"{source} object {source_ref!r} is already artifact {artifact_id}.")
        self.source, self.source_ref, self.artifact_id = source, source_ref, artifact_id


class BlobNotFound(StorageError):
    def __init__(self, digest: str) -> None:
        super().__init__(f"Blob {digest} is missing from the blob store.")
        self.digest = digest


class BlobCorrupt(StorageError):
    """Stored bytes no longer hash to their name; the blob has been quarantined."""

    def __init__(self, digest: str) -> None:
        super().__init__(
            f"The stored content of blob {digest} is corrupt and was quarantined; "
            "re-upload it or restore it from a backup."
        )
        self.digest = digest


class BlobTooLarge(StorageError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"The content is larger than the limit of {limit} bytes.")
        self.limit = limit


class DigestMismatch(StorageError):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(
            f"The content's sha256 is {actual}, but the client declared {expected}; "
            "nothing was stored."
        )
        self.expected = expected
        self.actual = actual


class IncompleteContent(StorageError):
    """The byte stream ended before the client said it would (cut-off body, bad framing)."""


class InsufficientStorage(StorageError):
    """The blob store's disk is full."""


class StorageUnavailable(StorageError):
    """The blob store or database cannot durably accept writes right now (I/O or fsync failure)."""


class LeaseLost(StorageError):
    """An idempotency key's claim was taken over by another request before this write committed
    (it ran past its lease without a heartbeat); the write was rolled back."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"Another request took over idempotency key {key!r} while this one was running; "
            "nothing was written. Retry to get that request's response."
        )
        self.key = key


def is_disk_full(exc: BaseException) -> bool:
    """Whether a database error means the database's disk is full: SQLite's SQLITE_FULL
    (extended code 13), or PostgreSQL's disk_full (SQLSTATE 53100)."""
    orig = getattr(exc, "orig", None) or exc
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate == "53100":
        return True
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == 13  # SQLITE_FULL
    return "database or disk is full" in str(exc)
