"""What the sync and async clients share: configuration, the retry policy, request bodies
(replayable upload sources, the multipart envelope), the SSE parser and small helpers."""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import os
import random
import secrets
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from workflow_artifacts_client.errors import (
    ApiError,
    ArtifactsError,
    ConfigurationError,
    DigestMismatch,
    error_for,
)

DEFAULT_URL = "http://127.0.0.1:8000"  # what the server's scripts/serve listens on
CHUNK = 1 << 20
Progress = Callable[[int], None]  # bytes moved since the last call; negative: a retry rewound
# What upload() and create_from_file() take: a path, a binary file object, bytes, or an
# iterable of bytes.
Body = str | os.PathLike[str] | IO[bytes] | bytes | bytearray | memoryview | Iterable[bytes]


def settings(url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """The server URL and key: arguments first, then ARTIFACTS_URL / ARTIFACTS_API_KEY."""
    url = url or os.environ.get("ARTIFACTS_URL") or DEFAULT_URL
    api_key = api_key if api_key is not None else os.environ.get("ARTIFACTS_API_KEY") or None
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigurationError(f"not a usable server URL: {url!r} ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigurationError(f"not a usable server URL: {url!r} (want http(s)://host[:port])")
    return url.rstrip("/"), api_key


def new_key() -> str:
    """An Idempotency-Key: made once per logical call and sent on each of its retries."""
    return f"wfa-{uuid.uuid4()}"


def seg(value: str) -> str:
    """One path segment: a workflow id `org/repo` goes as `org%2Frepo`."""
    return quote(value, safe="")


def query(**values: Any) -> dict[str, str]:
    """Query parameters without the unset ones; booleans as the API spells them."""
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def guess_type(name: str | None) -> str:
    if not name:
        return "application/octet-stream"
    suffix = Path(name).suffix.lower()
    known = {
        ".md": "text/markdown",
        ".markdown": "text/markdown",
        ".yaml": "application/yaml",
        ".yml": "application/yaml",
        ".jsonl": "application/jsonl",
    }
    if suffix in known:
        return known[suffix]
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


# -- retries ------------------------------------------------------------------------------------

RETRY_STATUS = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Retry:
    """Bounded retries with exponential backoff and jitter, honouring `Retry-After`.

    Hand-written rather than a retry library so that the client depends on httpx alone.
    Retried: connection errors and timeouts (every write carries an Idempotency-Key, so a
    retried write never takes effect twice), 429, 502, 503, 504, and 409
    idempotency_request_in_progress (the first attempt is still running on the server)."""

    attempts: int = 5  # retries after the first try; 0: none
    backoff: float = 0.25  # first wait, doubled each time
    max_backoff: float = 8.0
    max_retry_after: float = 60.0  # a longer Retry-After is not waited for: the error is raised

    def wait(self, attempt: int, retry_after: str | None = None) -> float | None:
        """Seconds to wait before retry number `attempt` (1-based), or None: give up."""
        if attempt > self.attempts:
            return None
        if retry_after is not None:
            try:
                seconds = float(retry_after)
            except ValueError:
                seconds = None  # an HTTP date: fall back to backoff
            if seconds is not None:
                return None if seconds > self.max_retry_after else max(0.0, seconds)
        base = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)  # noqa: S311 (jitter, not security)


PERMANENT = frozenset({"crownest_not_configured"})  # 503s that no wait will change


def retryable(error: ApiError) -> bool:
    if error.code in PERMANENT:
        return False
    return error.status in RETRY_STATUS or error.code == "idempotency_request_in_progress"


def failed(method: str, url: httpx.URL, exc: Exception, attempts: int) -> str:
    """The sentence of ConnectionFailed after the last retry."""
    reason = str(exc) or type(exc).__name__
    return f"{method} {url}: {reason} (after {attempts} attempts)"


def check(response: httpx.Response) -> httpx.Response:
    """The response, or its error raised (its body must have been read)."""
    if response.status_code >= 400:
        raise error_for(response)
    return response


# -- upload bodies ------------------------------------------------------------------------------


class Source:
    """An upload's bytes, replayable so that each retry sends exactly the same request.

    A path is read again on each attempt; a seekable binary file is rewound to where it was;
    bytes are sent as they are; a non-seekable file or an iterator of bytes is first spooled to
    a temporary file on disk (hashed as it goes), since an iterator cannot be replayed and the
    sha256 must be sent in a header, before the body. Nothing is ever held whole in memory."""

    def __init__(self, body: Body, chunk_size: int = CHUNK, name: str | None = None) -> None:
        self.chunk_size = chunk_size
        self.path: Path | None = None
        self.file: IO[bytes] | None = None
        self.data: bytes | None = None
        self._spool: IO[bytes] | None = None
        self._start = 0
        self.name = name
        if isinstance(body, str | os.PathLike):
            self.path = Path(body)
            if not self.path.is_file():
                raise FileNotFoundError(f"no such file: {self.path}")
            self.name = name or self.path.name
        elif isinstance(body, bytes | bytearray | memoryview):
            self.data = bytes(body)
        elif hasattr(body, "read"):
            fileobj: IO[bytes] = body  # type: ignore[assignment]
            self.name = name or _file_name(fileobj)
            if _seekable(fileobj):
                self.file, self._start = fileobj, fileobj.tell()
            else:
                self._spool_from(iter(lambda: fileobj.read(self.chunk_size), b""))
        else:
            self._spool_from(iter(body))
        self.size = 0
        self.sha256 = ""
        self.body_sha256 = ""  # of head + bytes + tail, when scan() was given an envelope

    def _spool_from(self, chunks: Iterator[bytes]) -> None:
        spool = tempfile.TemporaryFile(prefix="wfa-spool-")
        for chunk in chunks:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"an upload iterator must yield bytes, not {type(chunk).__name__}")
            spool.write(chunk)
        spool.flush()
        self._spool = self.file = spool

    def chunks(self) -> Iterator[bytes]:
        """The bytes, from the start, in chunks (each call starts over)."""
        if self.data is not None:
            for i in range(0, len(self.data), self.chunk_size):
                yield self.data[i : i + self.chunk_size]
            return
        if self.path is not None:
            with self.path.open("rb") as f:
                yield from iter(lambda: f.read(self.chunk_size), b"")
            return
        assert self.file is not None
        self.file.seek(self._start)
        yield from iter(lambda: self.file.read(self.chunk_size), b"")  # type: ignore[union-attr]

    def scan(self, head: bytes = b"", tail: bytes = b"") -> Source:
        """Read the bytes once for their size and sha256 (and, with a multipart envelope,
        the whole body's): the digests go in headers, before the body."""
        h, body = hashlib.sha256(), hashlib.sha256(head)
        size = 0
        for chunk in self.chunks():
            h.update(chunk)
            body.update(chunk)
            size += len(chunk)
        body.update(tail)
        self.size, self.sha256, self.body_sha256 = size, h.hexdigest(), body.hexdigest()
        return self

    def adopt(self, spool: IO[bytes]) -> None:
        """Close `spool` (a temporary file this source reads) with the source."""
        self._spool = spool

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


def _seekable(f: IO[bytes]) -> bool:
    try:
        return bool(f.seekable()) and f.tell() >= 0
    except (AttributeError, OSError, ValueError):
        return False


def _file_name(f: Any) -> str | None:
    name = getattr(f, "name", None)
    return Path(name).name if isinstance(name, str) and name else None


def content_digest(hex_digest: str) -> str:
    """RFC 9530 `Content-Digest: sha-256=:<base64>:`."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(hex_digest)).decode()}:"


def counted(chunks: Iterator[bytes], progress: Progress | None) -> Iterator[bytes]:
    """`chunks`, reporting each one's length to `progress` as it is handed on."""
    for chunk in chunks:
        if progress is not None:
            progress(len(chunk))
        yield chunk


class Multipart:
    """A multipart/form-data body: the fields, then one `file` part, with a boundary chosen
    once per call (so each retry is byte-identical) and its length known up front."""

    def __init__(self, fields: dict[str, str], filename: str, content_type: str) -> None:
        self.boundary = "wfa-" + secrets.token_hex(16)
        b = self.boundary.encode()
        head = bytearray()
        for name, value in fields.items():
            head += b"--" + b + b"\r\n"
            head += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            head += value.encode("utf-8") + b"\r\n"
        # as browsers send it (WHATWG): the quote and line breaks percent-encoded
        safe = filename.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
        head += b"--" + b + b"\r\n"
        head += f'Content-Disposition: form-data; name="file"; filename="{safe}"\r\n'.encode()
        head += f"Content-Type: {content_type}\r\n\r\n".encode()
        self.head = bytes(head)
        self.tail = b"\r\n--" + b + b"--\r\n"

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def length(self, source: Source) -> int:
        return len(self.head) + source.size + len(self.tail)

    def chunks(self, source: Source) -> Iterator[bytes]:
        yield self.head
        yield from source.chunks()
        yield self.tail


def create_fields(
    workflow_id: str,
    title: str,
    artifact_type: str,
    *,
    phase_id: str | None,
    session_id: str | None,
    is_primary_deliverable: bool,
    derived_from: list[str] | None,
    metadata: dict[str, Any] | None,
    created_by: str | None,
    content_type: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "workflow_id": workflow_id,
        "artifact_type": artifact_type,
        "title": title,
    }
    for name, value in (
        ("phase_id", phase_id),
        ("session_id", session_id),
        ("created_by", created_by),
        ("content_type", content_type),
    ):
        if value is not None:
            body[name] = value
    if is_primary_deliverable:
        body["is_primary_deliverable"] = True
    if derived_from:
        body["derived_from"] = list(derived_from)
    if metadata:
        body["metadata"] = metadata
    return body


def form_fields(body: dict[str, Any]) -> dict[str, str]:
    """A create's JSON members as form fields (`metadata` and `derived_from` as JSON text)."""
    out = {}
    for name, value in body.items():
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, dict | list):
            out[name] = json.dumps(value, separators=(",", ":"))
        else:
            out[name] = str(value)
    return out


def import_body(
    sandbox_id: str,
    workflow_id: str,
    phase_id: str | None,
    session_id: str | None,
    artifact_type: str | None,
    artifact_ids: list[str] | None,
    source_path_prefix: str | None,
    dry_run: bool,
) -> dict[str, Any]:
    """The JSON body of POST /imports/crownest, without the unset members."""
    body: dict[str, Any] = {"sandbox_id": sandbox_id, "workflow_id": workflow_id}
    for name, value in (
        ("phase_id", phase_id),
        ("session_id", session_id),
        ("artifact_type", artifact_type),
        ("source_path_prefix", source_path_prefix),
    ):
        if value is not None:
            body[name] = value
    if artifact_ids:
        body["artifact_ids"] = list(artifact_ids)
    if dry_run:
        body["dry_run"] = True
    return body


def text_content(content: Any, content_type: str | None) -> tuple[str, str]:
    """A create's `content` as text and its type: a str as is (text/markdown unless told), any
    other JSON value as JSON text (application/json)."""
    if isinstance(content, str):
        return content, content_type or "text/markdown"
    return json.dumps(content, indent=2, ensure_ascii=False), content_type or "application/json"


# -- downloads ----------------------------------------------------------------------------------


def download_path(artifact_id: str, version: int | None) -> str:
    if version is None:
        return f"/artifacts/{seg(artifact_id)}/download"
    return f"/artifacts/{seg(artifact_id)}/versions/{int(version)}/download"


def etag_hash(response: httpx.Response) -> str | None:
    """The sha256 a download's strong ETag names."""
    tag = response.headers.get("etag", "")
    if tag.startswith('"') and tag.endswith('"') and len(tag) == 66:
        return tag[1:-1].lower()
    return None


def part_path(dest: Path, sha256: str) -> Path:
    """Where a download to `dest` is written until its sha256 is verified: beside it, named by
    the content it is of, so a later run resumes it only for the same bytes."""
    return dest.with_name(f".{dest.name[:180]}.{sha256[:16]}.wfa-part")


def hash_file(path: Path, h: Any) -> int:
    size = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
            size += len(chunk)
    return size


def content_range_start(response: httpx.Response) -> int | None:
    value = response.headers.get("content-range", "")
    if not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


# -- the change feed ----------------------------------------------------------------------------


class SseParser:
    """Server-Sent Events, line by line: `feed(line)` returns a complete event's (id, event,
    data) at each blank line; `retry` holds the server's reconnection delay in seconds."""

    def __init__(self) -> None:
        self.retry: float | None = None
        self._id: str | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str | None, str, str] | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            out = (self._id, self._event, "\n".join(self._data))
            self._event, self._data = "", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value) / 1000
        return None


# -- a download's destination -------------------------------------------------------------------


class Sink:
    """Where a download's bytes go, hashed as they are written.

    To a path: into a `.wfa-part` file beside it, named by the sha256 the bytes should have (so
    a later call resumes it only for the same bytes), kept after a dropped connection,
    renamed onto the path only once the sha256 matches; a mismatch removes it, so no wrong
    file is ever left at the destination. Nothing is made on disk before the first byte (or,
    for an empty artifact, before finish). To a binary file object: the bytes are written to
    it directly; a restart rewinds and truncates it when it is seekable.

    Every method may touch the disk: the async client calls them in a worker thread."""

    def __init__(self, dest: str | os.PathLike[str] | IO[bytes], resume: bool):
        self.resume = resume
        self.sha256: str | None = None
        self.hash = hashlib.sha256()
        self.offset = 0
        self.resumed_from = 0
        self.dest: Path | None = None
        self.part: Path | None = None
        self.file: IO[bytes] | None = None
        self._start: int | None = None
        if isinstance(dest, str | os.PathLike):
            self.dest = Path(dest)
        else:
            self.file = dest
            self._start = dest.tell() if _seekable(dest) else None

    def expect(self, sha256: str) -> int:
        """The sha256 the bytes must have: it names the part file, and a part file of an
        earlier call with some of those bytes is taken up (hashed). Returns the offset to
        resume at (0: from the start)."""
        self.sha256 = sha256
        if self.dest is not None:
            if self.dest.is_dir():
                raise IsADirectoryError(f"{self.dest} is a directory")
            self.part = part_path(self.dest, sha256)
            if self.resume and self.part.is_file():
                self.offset = self.resumed_from = hash_file(self.part, self.hash)
        return self.offset

    def _open(self) -> IO[bytes]:
        if self.file is None:
            assert self.dest is not None and self.part is not None
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            self.file = self.part.open("ab" if self.offset else "wb")
        return self.file

    def restart(self) -> None:
        """The server answered the whole body (not the range asked for): start over."""
        had = self.offset
        self.hash = hashlib.sha256()
        self.offset = self.resumed_from = 0
        if self.part is not None:
            if self.file is not None:
                self.file.seek(0)
                self.file.truncate()
        elif self._start is not None:
            assert self.file is not None
            self.file.seek(self._start)
            self.file.truncate()
        elif had:
            raise OSError("cannot rewind the destination file to restart the download")

    def write(self, chunk: bytes) -> None:
        self._open().write(chunk)
        self.hash.update(chunk)
        self.offset += len(chunk)

    def finish(self, reconnects: int) -> Any:
        from workflow_artifacts_client.models import Downloaded

        got = self.hash.hexdigest()
        if got != self.sha256:
            self.discard()
            error = DigestMismatch(
                0,
                "digest_mismatch",
                f"the downloaded bytes hash to {got}, not {self.sha256}; nothing was kept",
            )
            error.resumed = self.resumed_from > 0  # type: ignore[attr-defined]
            raise error
        file = self._open()
        file.flush()
        if self.part is not None and self.dest is not None:
            os.fsync(file.fileno())
            file.close()
            os.replace(self.part, self.dest)
        return Downloaded(self.dest, got, self.offset, self.resumed_from, reconnects)

    def discard(self) -> None:
        """Drop what was written: the part file, or what went to a seekable file object."""
        if self.part is not None:
            if self.file is not None:
                self.file.close()
            self.part.unlink(missing_ok=True)
        elif self._start is not None and self.file is not None:
            self.file.seek(self._start)
            self.file.truncate()

    def close(self) -> None:
        """Stop, keeping a .part file for a later resume."""
        if self.part is not None and self.file is not None:
            self.file.close()


def download_sha(response: httpx.Response) -> str:
    """The sha256 of the bytes a download answer is of: its strong ETag, else its Repr-Digest
    (both name the whole representation, also in a 206)."""
    sha = etag_hash(response)
    if sha is None:
        digest = response.headers.get("repr-digest", "")
        if digest.startswith("sha-256=:") and digest.endswith(":"):
            try:
                sha = base64.b64decode(digest[9:-1], validate=True).hex()
            except ValueError:
                sha = None
    if sha is None or len(sha) != 64:
        raise ArtifactsError("the server sent no sha256 (ETag or Repr-Digest) for this download")
    return sha


def download_size(response: httpx.Response) -> int | None:
    """The whole representation's size: a 206's Content-Range total, a 200's Content-Length."""
    if response.status_code == 206:
        total = response.headers.get("content-range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("content-length", "")
    return int(length) if length.isdigit() else None


def changed(sha: str, was: str, during: bool) -> DigestMismatch:
    """The DigestMismatch of a download whose bytes are not the ones it is after."""
    if during:
        detail = f"the artifact changed during the download (now {sha}, was {was})"
    else:
        detail = f"the server now has {sha}, not the expected {was}"
    return DigestMismatch(0, "digest_mismatch", detail)
