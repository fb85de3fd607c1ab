"""Streaming multipart/form-data: the `file` part's bytes flow to the blob store as they arrive.

python-multipart parses each chunk of the request body as it comes; nothing holds the whole
body or the whole part, and nothing spools to a second temporary file. Form fields must come
before the `file` part (every common client sends them first), so a create is validated before
a single byte is stored. The parser accepts a truncated body silently, so the stream only counts
as complete once its closing boundary (the parser's on_end) has been seen; otherwise
`file_chunks()` raises and the blob store discards its staging file.

Every part of the envelope is bounded by a setting (FormLimits): the number of parts, each
part's header block, the non-file parts together, and what may come before the first and after
the closing boundary; past one the answer is 413 (400 for the envelope's edges) stating the
number. The body's reads time out (408) like every other body's.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from litestar import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.deps import settings_of
from app.errors import ApiError, validation_error
from app.http import header, stream_with_idle_timeout
from app.settings import Settings
from storage.errors import DigestMismatch, IncompleteContent

FILE_FIELD = "file"
MAX_BOUNDARY = 70  # RFC 2046 section 5.1.1: a boundary is 1 to 70 characters
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 control characters


@dataclass(frozen=True)
class FormLimits:
    """The defaults are the settings' defaults (ARTIFACTS_MAX_FORM_PARTS, …)."""

    max_parts: int = 100
    max_header_bytes: int = 16 * 1024  # one part's header block; also the preamble and epilogue
    max_fields_bytes: int = 1 << 20  # every non-file part's data, together
    idle_timeout: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> FormLimits:
        return cls(
            max_parts=settings.max_form_parts,
            max_header_bytes=settings.max_part_header_bytes,
            max_fields_bytes=settings.max_form_fields_bytes,
            idle_timeout=settings.body_idle_timeout,
        )


def _too_large(message: str) -> ApiError:
    return ApiError(413, "payload_too_large", message)


@dataclass
class FilePart:
    filename: str
    content_type: str


def safe_filename(raw: str) -> str | None:
    """The last path component with control characters removed, at most 255 bytes; None if empty."""
    name = _UNSAFE.sub("", raw.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    if name in ("", ".", ".."):
        return None
    encoded = name.encode()[:255]
    return encoded.decode(errors="ignore") or None


def _after(closing: bytes, chunk: bytes) -> int:
    """How many bytes of `chunk`, in which the parser saw the closing boundary end, follow it:
    after its last occurrence, or, when it began in an earlier read, after the longest part of
    its end that `chunk` starts with. Never more than the true count (an epilogue that repeats
    the boundary counts from the repeat)."""
    at = chunk.rfind(closing)
    if at >= 0:
        return len(chunk) - at - len(closing)
    for size in range(min(len(closing) - 1, len(chunk)), 0, -1):
        if closing.endswith(chunk[:size]):
            return len(chunk) - size
    return 0


def boundary_of(content_type: str) -> bytes:
    media, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if media != b"multipart/form-data" or not boundary:
        raise ApiError(400, "malformed_multipart", "A multipart body needs a boundary parameter.")
    if len(boundary) > MAX_BOUNDARY:
        raise ApiError(
            400,
            "malformed_multipart",
            f"A multipart boundary may be at most {MAX_BOUNDARY} characters (RFC 2046), "
            f"not {len(boundary)}.",
        )
    return boundary


class FormStream:
    def __init__(
        self,
        request: Request[Any, Any, Any],
        limits: FormLimits | None = None,
        *,
        content_digest: str | None = None,
    ) -> None:
        """`limits`: by default the app's settings. `content_digest`: the hex sha256 a
        Content-Digest header declared for the whole body."""
        self.request = request
        self.limits = limits or FormLimits.from_settings(settings_of(request))
        self._chunks = stream_with_idle_timeout(request, self.limits.idle_timeout)
        self._content_digest = content_digest
        self._body_hash = hashlib.sha256() if content_digest else None
        self.fields: dict[str, str] = {}
        self.file: FilePart | None = None
        self._ended = False
        self._parts = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._current: str | None = None  # FILE_FIELD, a field name, or None (ignored part)
        self._field_value = bytearray()
        self._fields_bytes = 0  # data of every non-file part so far
        self._outside_bytes = 0  # bytes before the first boundary or after the closing one
        # None: nothing read yet; True: skipping up to a hyphen; False: past (_past_preamble)
        self._preamble: bool | None = None
        self._line_end = b"\r\n"  # what of the closing boundary's line end is still to come
        self._out: list[bytes | memoryview] = []
        boundary = boundary_of(header(request, "content-type") or "")
        self._closing = b"--" + boundary + b"--"
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
            # Our own header limit (a whole block, in bytes, answered 413) governs: the parser's
            # per-line and per-count caps would only answer a vaguer 400 first.
            max_header_count=self.limits.max_header_bytes,
            max_header_size=1 << 62,
        )

    async def open_file(self) -> FilePart:
        """Read the form fields up to the start of the `file` part (422 if there is none)."""
        while self.file is None and not self._ended:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                break
            self._feed(chunk)
        if self.file is None:
            if not self._ended:
                raise IncompleteContent(
                    "The multipart body ended before its closing boundary; nothing was stored."
                )
            raise validation_error(("body", FILE_FIELD), "missing", "Field required", None)
        return self.file

    async def file_chunks(self) -> AsyncIterator[bytes | memoryview]:
        """Yield the file part's bytes (after open_file); raise unless the body ends cleanly."""
        while True:
            if self._out:
                out, self._out = self._out, []
                for data in out:
                    yield data
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                break
            self._feed(chunk)
        if not self._ended:
            raise IncompleteContent(
                "The multipart body ended before its closing boundary; nothing was stored."
            )
        if self._body_hash is not None and self._content_digest != self._body_hash.hexdigest():
            raise DigestMismatch(self._content_digest or "", self._body_hash.hexdigest())

    def _feed(self, chunk: bytes) -> None:
        if self._body_hash is not None:
            self._body_hash.update(chunk)
        if self._ended:
            self._epilogue(chunk)
            return
        data = chunk if self._preamble is False else self._past_preamble(chunk)
        try:
            if data:
                self._parser.write(data)
        except MultipartParseError:
            raise ApiError(400, "malformed_multipart", "The multipart body is malformed.") from None
        if self._ended:
            self._epilogue(chunk[len(chunk) - _after(self._closing, chunk) :])

    def _past_preamble(self, chunk: bytes) -> bytes:
        """What of `chunk` the parser is to see. python-multipart skips the CR/LF that may open
        a body and, once it has seen one, everything up to the next hyphen, but only within one
        `write()`: a CR read on its own and then `junk` was refused at the `j` (malformed, no
        number), where the same bytes in one read were skipped without a count. Its rule is
        applied here across reads, and what it skips is counted exactly, so the answer never
        depends on how the body was split on its way in."""
        if self._preamble is None:
            self._preamble = chunk[:1] in (b"\r", b"\n")
            if not self._preamble:
                return chunk
        hyphen = chunk.find(b"-")
        self._outside(len(chunk) if hyphen < 0 else hyphen, "before its first")
        if hyphen < 0:
            return b""
        self._preamble = False
        return chunk[hyphen:]

    def _epilogue(self, data: bytes) -> None:
        """Bytes after the closing boundary: the CRLF that ends its line, then an epilogue the
        parser discards unseen."""
        line_end = 0
        while line_end < min(len(self._line_end), len(data)):
            if data[line_end] != self._line_end[line_end]:
                break
            line_end += 1
        self._line_end = self._line_end[line_end:] if line_end == len(data) else b""
        self._outside(len(data) - line_end, "after its closing")

    def _outside(self, size: int, where: str) -> None:
        """Count bytes before the first boundary or after the closing one: no callback sees
        them, and a body of nothing else would never end."""
        self._outside_bytes += size
        if self._outside_bytes > self.limits.max_header_bytes:
            raise ApiError(
                400,
                "malformed_multipart",
                f"The multipart body has more than the limit of {self.limits.max_header_bytes}"
                f" bytes {where} boundary.",
            )

    # -- parser callbacks --------------------------------------------------------------------

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > self.limits.max_parts:
            raise _too_large(
                f"The multipart body has more parts than the limit of {self.limits.max_parts}."
            )
        self._headers = {}
        self._header_bytes = 0
        self._current = None
        self._field_value.clear()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            raise _too_large(
                "A multipart part's headers are larger than the limit of "
                f"{self.limits.max_header_bytes} bytes."
            )

    def _header_end(self) -> None:
        self._count_header(3)  # the colon and the line's CRLF
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", errors="replace")
        if disposition != b"form-data" or not name:
            return
        if name != FILE_FIELD:
            if self.file is not None:
                raise validation_error(
                    ("body", name),
                    "field_after_file",
                    "Form fields must come before the file part",
                    None,
                )
            self._current = name
            return
        if self.file is not None:
            raise validation_error(
                ("body", FILE_FIELD), "too_many_files", "Exactly one file part is allowed", None
            )
        raw_name = params.get(b"filename")
        if raw_name is None:
            raise validation_error(
                ("body", FILE_FIELD), "file_expected", "Expected a file part with a filename", None
            )
        content_type = self._headers.get(b"content-type", b"").decode("latin-1").strip()
        self.file = FilePart(
            filename=raw_name.decode("utf-8", errors="replace"),
            content_type=_UNSAFE.sub("", content_type) or "application/octet-stream",
        )
        self._current = FILE_FIELD

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current == FILE_FIELD:
            self._out.append(memoryview(data)[start:end])  # bytes are immutable: no copy
            return
        # A field, or a part we ignore (no name): either way bounded, never read forever.
        self._fields_bytes += end - start
        if self._fields_bytes > self.limits.max_fields_bytes:
            raise _too_large(
                "The form fields are larger than the limit of "
                f"{self.limits.max_fields_bytes} bytes (all non-file parts together)."
            )
        if self._current is not None:
            self._field_value += data[start:end]

    def _part_end(self) -> None:
        if self._current is not None and self._current != FILE_FIELD:
            self.fields[self._current] = self._field_value.decode("utf-8", errors="replace")
        self._current = None

    def _end(self) -> None:
        self._ended = True
