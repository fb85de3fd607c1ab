"""A workflow as one zip or tar archive, streamed as it is built.

Nothing is assembled in memory or on disk first: the stdlib archive writer runs in a worker
thread and writes into a small bounded channel that the response drains to the client, while it
pulls each artifact's bytes from the blob store through the same channel discipline. The first
entry is `manifest.json` (id, version, path, sha256, size, content type, session, primary flag,
lineage of every file), so the archive can be verified on its own. Each file is its artifact's
current version as the export read it.
"""

from __future__ import annotations

import json
import mimetypes
import re
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import anyio
from anyio import from_thread, to_thread
from anyio.streams.memory import MemoryObjectSendStream
from litestar.types import Receive, Scope, Send

from storage.records import Artifact, is_textual, us_to_iso
from storage.workflows import Parent

Format = Literal["zip", "tar"]
FLUSH_AT = 1 << 20
_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f/\\:*?"<>|]')

# Python's own table of media types, without the host's /etc/mime.types: the same names on
# every machine.
_MIME = mimetypes.MimeTypes()
# The extension of a type Python's table lacks, or names oddly (application/xml is `.xsl`
# there, text/plain `.txt` only by luck of order); looked up first.
EXTENSIONS = {
    "text/markdown": ".md",
    "text/x-markdown": ".md",
    "text/plain": ".txt",
    "application/json": ".json",
    "text/json": ".json",
    "application/x-ndjson": ".ndjson",
    "application/jsonl": ".jsonl",
    "application/yaml": ".yaml",
    "application/x-yaml": ".yaml",
    "text/yaml": ".yaml",
    "text/x-yaml": ".yaml",
    "application/toml": ".toml",
    "text/x-toml": ".toml",
    "text/x-python": ".py",
    "text/x-script.python": ".py",
    "application/x-python": ".py",
    "text/x-shellscript": ".sh",
    "application/x-sh": ".sh",
    "text/x-rst": ".rst",
    "text/csv": ".csv",
    "text/tab-separated-values": ".tsv",
    "text/html": ".html",
    "application/xml": ".xml",
    "text/xml": ".xml",
    "application/javascript": ".js",
    "text/javascript": ".js",
    "application/typescript": ".ts",
    "text/x-typescript": ".ts",
    "text/x-diff": ".diff",
    "text/x-patch": ".patch",
    "application/sql": ".sql",
    "text/x-sql": ".sql",
    "text/x-c": ".c",
    "text/x-go": ".go",
    "text/x-rust": ".rs",
    "text/x-java-source": ".java",
    "application/x-ipynb+json": ".ipynb",
    "application/gzip": ".gz",
    "image/jpeg": ".jpg",
    "application/octet-stream": ".bin",
}
# A structured syntax suffix (RFC 6839) says the format when the type is unknown.
SUFFIX_EXTENSIONS = {"json": ".json", "xml": ".xml", "yaml": ".yaml", "zip": ".zip", "gzip": ".gz"}
# A title is free text ("Analysis v1.2", "Dr. Who"): its last dot starts an extension only if
# that extension is one a file type is known by. These are common ones no table above holds.
OTHER_EXTENSIONS = (
    ".yml .jsonl .ndjson .toml .ini .cfg .conf .env .log .lock .rs .go .java .kt .kts .rb .php "
    ".cpp .hpp .cc .cs .swift .scala .lua .r .jl .tsx .jsx .vue .svelte .tf .proto .graphql .mdx "
    ".adoc .org .tex .bib .ipynb .parquet .sqlite .db .gz .bz2 .xz .zst .7z .rar .dockerfile"
).split()
KNOWN_EXTENSIONS = frozenset(
    {ext.lower() for table in _MIME.types_map for ext in table}
    | set(EXTENSIONS.values())
    | set(SUFFIX_EXTENSIONS.values())
    | set(OTHER_EXTENSIONS)
)
_FILE_EXTENSION = re.compile(r".+\.[A-Za-z0-9]{1,16}", re.DOTALL)


def safe_segment(name: str, fallback: str) -> str:
    """One path segment: no separators, control or reserved characters, no dot-only names."""
    cleaned = _UNSAFE.sub("_", name).strip().strip(".")
    if len(cleaned.encode()) > 200:  # shorten the stem, keep a short extension (".md")
        stem, dot, ext = cleaned.rpartition(".")
        keep = f"{dot}{ext}" if dot and stem and len(ext.encode()) <= 16 else ""
        room = 200 - len(keep.encode())
        head = (stem if keep else cleaned).encode()[:room].decode(errors="ignore")
        cleaned = head + keep
    return cleaned or fallback


def extension_for(content_type: str) -> str | None:
    """The file extension of a media type (`text/markdown; charset=utf-8` -> `.md`), or None
    when it has none known."""
    media = content_type.split(";", 1)[0].strip().lower()
    ext = EXTENSIONS.get(media) or _MIME.guess_extension(media, strict=False)
    if ext is None and "+" in media:
        ext = SUFFIX_EXTENSIONS.get(media.rsplit("+", 1)[1])
    return ext


def has_extension(name: str, *, from_title: bool) -> bool:
    """Whether a (safe) name ends in an extension. A filename is a file's name: any short
    alphanumeric suffix is its extension (`data.backup`). A title is text: only an extension
    some file type is known by counts (`Sources.json` has one, `Analysis v1.2` has none)."""
    if not from_title:
        return _FILE_EXTENSION.fullmatch(name) is not None
    stem, dot, ext = name.rpartition(".")
    return bool(dot and stem) and f".{ext.lower()}" in KNOWN_EXTENSIONS


def entry_name(artifact: Artifact) -> str:
    """The safe filename, else the safe title (else the id); when neither gives an extension,
    one from the content type (`Sources` of application/json -> `Sources.json`)."""
    source = artifact.filename or artifact.title
    name = safe_segment(source, artifact.id)
    if has_extension(name, from_title=not artifact.filename):
        return name
    ext = extension_for(artifact.content_type)
    return name if ext is None else safe_segment(name + ext, artifact.id)


@dataclass(frozen=True)
class Entry:
    path: str
    artifact: Artifact
    parents: list[Parent]


def plan(items: list[tuple[Artifact, list[Parent]]]) -> list[Entry]:
    """`<phase>/<safe filename or title, with an extension>`, made unique within the
    archive (see entry_name)."""
    taken = {"manifest.json"}
    entries = []
    for artifact, parents in items:
        folder = safe_segment(artifact.phase_id or "", "_no_phase")
        name = entry_name(artifact)
        path = f"{folder}/{name}"
        stem, dot, ext = name.rpartition(".")
        tries = 0
        while path.lower() in taken:  # a suffixed name may be taken too (a title can be anything)
            tries += 1
            tag = artifact.id[:8] if tries == 1 else f"{artifact.id[:8]}-{tries}"
            base = f"{stem} ({tag}).{ext}" if dot and stem else f"{name} ({tag})"
            path = f"{folder}/{base}"
        taken.add(path.lower())
        entries.append(Entry(path, artifact, parents))
    return entries


def manifest(workflow_id: str, scope: str, entries: list[Entry]) -> bytes:
    files = [
        {
            "path": e.path,
            "artifact_id": e.artifact.id,
            "version": e.artifact.version,
            "sha256": e.artifact.content_hash,
            "size_bytes": e.artifact.size_bytes,
            "content_type": e.artifact.content_type,
            "title": e.artifact.title,
            "artifact_type": e.artifact.artifact_type,
            "phase_id": e.artifact.phase_id,
            "session_id": e.artifact.session_id,
            "is_primary_deliverable": e.artifact.is_primary_deliverable,
            "created_at": us_to_iso(e.artifact.created_at),
            "derived_from": [
                {"id": p.id, "content_hash": p.content_hash, "version": p.version}
                for p in e.parents
            ],
        }
        for e in entries
    ]
    body = {
        "workflow_id": workflow_id,
        "scope": scope,
        "exported_at": us_to_iso(time.time_ns() // 1000),
        "files": files,
    }
    return json.dumps(body, indent=2, ensure_ascii=False).encode() + b"\n"


class _ChannelWriter:
    """File-like sink for the archive writer (worker thread): ~1 MiB writes into the channel."""

    def __init__(self, channel: MemoryObjectSendStream[bytes]) -> None:
        self.channel = channel
        self.buffer = bytearray()
        self.cut = False

    def write(self, data: bytes) -> int:
        if self.cut:
            return len(data)
        self.buffer += data
        if len(self.buffer) >= FLUSH_AT:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buffer and not self.cut:
            chunk, self.buffer = bytes(self.buffer), bytearray()
            from_thread.run(self.channel.send, chunk)

    @contextmanager
    def cut_on_error(self) -> Iterator[None]:
        """After a failure nothing more goes out: zipfile's cleanup on the way out would
        otherwise write a central directory, making a cut archive look whole."""
        try:
            yield
        except BaseException:
            self.cut, self.buffer = True, bytearray()
            raise


async def _next_chunk(chunks: AsyncIterator[bytes]) -> bytes:
    # Shielded: once a disconnect has cancelled the response's scope, a task that
    # from_thread.run starts in it is never sent that cancellation, and the blob store's
    # to_thread reads would spin in anyio's checkpoint_if_cancelled forever (a core at 100%,
    # the blob left open). A read is short; the next channel send ends the build instead.
    with anyio.CancelScope(shield=True):
        chunk = await anext(chunks)
    return chunk


class _BlobReader:
    """File-like source (worker thread) over an async byte iterator of the event loop."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks
        self.pending = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        while not self.pending:
            try:
                self.pending = memoryview(from_thread.run(_next_chunk, self.chunks))
            except StopAsyncIteration:
                return b""
        size = len(self.pending) if n < 0 else min(n, len(self.pending))
        out, self.pending = self.pending[:size], self.pending[size:]
        return bytes(out)


def _write_zip(
    sink: _ChannelWriter,
    head: bytes,
    entries: list[Entry],
    open_blob: Callable[[Artifact], AsyncIterator[bytes]],
) -> None:
    now = time.localtime()[:6]
    with (
        zipfile.ZipFile(sink, mode="w", allowZip64=True) as archive,  # type: ignore[call-overload]
        sink.cut_on_error(),
    ):
        archive.writestr(zipfile.ZipInfo("manifest.json", now), head, zipfile.ZIP_DEFLATED)
        for entry in entries:
            info = zipfile.ZipInfo(entry.path, now)
            textual = is_textual(entry.artifact.content_type)
            info.compress_type = zipfile.ZIP_DEFLATED if textual else zipfile.ZIP_STORED
            source = _BlobReader(open_blob(entry.artifact))
            big = entry.artifact.size_bytes >= 1 << 31
            with archive.open(info, mode="w", force_zip64=big) as out:
                while data := source.read(FLUSH_AT):
                    out.write(data)
    sink.flush()


def _write_tar(
    sink: _ChannelWriter,
    head: bytes,
    entries: list[Entry],
    open_blob: Callable[[Artifact], AsyncIterator[bytes]],
) -> None:
    with (
        tarfile.open(  # type: ignore[call-overload]
            fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, copybufsize=FLUSH_AT
        ) as archive,
        sink.cut_on_error(),
    ):
        info = tarfile.TarInfo("manifest.json")
        info.size, info.mtime, info.mode = len(head), time.time(), 0o644
        archive.addfile(info, _BytesReader(head))
        for entry in entries:
            info = tarfile.TarInfo(entry.path)
            info.size, info.mtime, info.mode = entry.artifact.size_bytes, time.time(), 0o644
            archive.addfile(info, _BlobReader(open_blob(entry.artifact)))
    sink.flush()


WRITERS = {"zip": _write_zip, "tar": _write_tar}


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1) -> bytes:
        out, self.data = (self.data, b"") if n < 0 else (self.data[:n], self.data[n:])
        return out


def _attachment(filename: str) -> str:
    """An ASCII fallback name plus the exact one as RFC 8187 `filename*`."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


class ArchiveResponse:
    """ASGI app (a handler returns it as it is) that builds the archive while sending it; a
    client that goes away stops the builder at its next write."""

    media_types = {"zip": "application/zip", "tar": "application/x-tar"}

    def __init__(
        self,
        fmt: Format,
        filename: str,
        head: bytes,
        entries: list[Entry],
        open_blob: Callable[[Artifact], AsyncIterator[bytes]],
    ) -> None:
        self.fmt, self.head, self.entries, self.open_blob = fmt, head, entries, open_blob
        self.raw_headers = [
            (b"content-type", self.media_types[fmt].encode()),
            (b"content-disposition", _attachment(filename).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"cache-control", b"no-store"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        channel_in, channel_out = anyio.create_memory_object_stream[bytes](max_buffer_size=4)
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        gone = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(self._build, channel_in)
            group.start_soon(self._watch_disconnect, receive, gone, group.cancel_scope)
            async with channel_out:
                async for chunk in channel_out:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            group.cancel_scope.cancel()  # the build is done: stop watching
        # Only a complete build ends the body cleanly; a failed one raised above, so the server
        # aborts the connection and the client never mistakes a cut archive for a whole one.
        if not gone.is_set():
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _build(self, channel: MemoryObjectSendStream[bytes]) -> None:
        writer = WRITERS[self.fmt]
        opened: list[AsyncIterator[bytes]] = []

        def open_blob(artifact: Artifact) -> AsyncIterator[bytes]:
            opened.append(chunks := self.open_blob(artifact))
            return chunks

        async with channel:
            try:
                await to_thread.run_sync(
                    writer, _ChannelWriter(channel), self.head, self.entries, open_blob
                )
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the client went away and the response stopped reading
            finally:
                # A read cut short leaves its blob open until the garbage collector finalises
                # the generator (an aborted tar build holds it in a reference cycle): close
                # every one now.
                with anyio.CancelScope(shield=True):
                    for chunks in opened:
                        aclose = getattr(chunks, "aclose", None)
                        if aclose is not None:
                            await aclose()

    @staticmethod
    async def _watch_disconnect(receive: Receive, gone: anyio.Event, scope: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()
        scope.cancel()
