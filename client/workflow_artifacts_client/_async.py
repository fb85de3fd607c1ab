"""AsyncArtifactsClient: ArtifactsClient's calls as coroutines (and async iterators), over one
httpx.AsyncClient. Every read and write of a local file (hashing included) runs in a worker
thread (anyio.to_thread), so the event loop never waits on the disk.

The one hand-written source of the client's calls: scripts/gen-sync-client writes _sync.py
(ArtifactsClient) from this file, by whole-word replacements (`async def` -> `def`, `await ` ->
``, httpx.AsyncClient -> httpx.Client, …) and the few `# unasync:` markers below."""

from __future__ import annotations

import builtins
import json
import os
import tempfile  # unasync: import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import anyio  # unasync: drop
import httpx

from workflow_artifacts_client import _common as c
from workflow_artifacts_client.errors import ApiError, ConnectionFailed, DigestMismatch, error_for
from workflow_artifacts_client.models import (
    Artifact,
    ArtifactSummary,
    Changed,
    Content,
    Created,
    Downloaded,
    DownloadLink,
    Event,
    ImportJob,
    Lineage,
    Record,
    Uploaded,
    Version,
    Workflow,
    WorkflowSummary,
)

R = TypeVar("R", bound=Record)
Dest = str | os.PathLike[str] | IO[bytes]


class AsyncArtifactsClient:
    """A client of one workflow-artifacts server.

    `url` and `api_key` default to ARTIFACTS_URL and ARTIFACTS_API_KEY (the URL to
    http://127.0.0.1:8000). Connection errors, timeouts, 429, 502, 503 and 504 are retried
    (`retry`, bounded, honouring Retry-After); every write carries an Idempotency-Key made once
    per call, so a retried write never takes effect twice. Errors raise the classes of
    `workflow_artifacts_client.errors`."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: c.Retry | None = None,
        chunk_size: int = c.CHUNK,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url, self.api_key = c.settings(url, api_key)
        self.retry = retry or c.Retry()
        self.chunk_size = chunk_size
        base_headers = {"User-Agent": "workflow-artifacts-client/0.1", **(headers or {})}
        if self.api_key:
            base_headers["Authorization"] = f"Bearer {self.api_key}"
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=base_headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncArtifactsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the retry loop ---------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        body: Callable[[], Any] | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """One logical call: sent again (same key, same bytes) after a connection error or a
        retryable answer, at most `retry.attempts` times. `body` makes the content afresh for
        each attempt."""
        headers = dict(headers or {})
        if key is not None:
            headers["Idempotency-Key"] = key
        attempt = 0
        while True:
            request = self._http.build_request(
                method,
                path,
                params=params,
                json=json_body,
                content=body() if body is not None else None,
                headers=headers,
            )
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.UnsupportedProtocol as exc:
                raise ConnectionFailed(f"{method} {request.url}: {exc}") from None
            except httpx.TransportError as exc:
                attempt += 1
                wait = self.retry.wait(attempt)
                if wait is None:
                    raise ConnectionFailed(c.failed(method, request.url, exc, attempt)) from exc
                await anyio.sleep(wait)
                continue
            if response.status_code < 400:
                return response
            await response.aread()
            await response.aclose()
            error = error_for(response)
            attempt += 1
            retry_after = response.headers.get("retry-after")
            wait = self.retry.wait(attempt, retry_after) if c.retryable(error) else None
            if wait is None:
                raise error
            await anyio.sleep(wait)

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        return response.json()

    async def _pages(self, path: str, params: dict[str, str], model: type[R]) -> AsyncIterator[R]:
        """Every row of a paginated list, a page at a time, following X-Next-Cursor."""
        params = dict(params)
        while True:
            response = await self._request("GET", path, params=params)
            for row in response.json():
                yield model.from_json(row)
            cursor = response.headers.get("x-next-cursor")
            if not cursor:
                return
            params["cursor"] = cursor

    # -- artifacts ----------------------------------------------------------------------------

    async def create(
        self,
        workflow_id: str,
        title: str,
        content: Any,
        *,
        artifact_type: str | None = None,
        phase_id: str | None = None,
        session_id: str | None = None,
        content_type: str | None = None,
        is_primary_deliverable: bool = False,
        derived_from: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        created_by: str | None = None,
        idempotency_key: str | None = None,
    ) -> Created:
        """A text artifact (a str, stored as its UTF-8 bytes, text/markdown unless told) or a
        JSON one (any other JSON value, application/json, type `json` unless told)."""
        text, ctype = c.text_content(content, content_type)
        body = c.create_fields(
            workflow_id,
            title,
            artifact_type or ("markdown" if isinstance(content, str) else "json"),
            phase_id=phase_id,
            session_id=session_id,
            is_primary_deliverable=is_primary_deliverable,
            derived_from=derived_from,
            metadata=metadata,
            created_by=created_by,
            content_type=ctype,
        )
        body["content"] = text
        key = idempotency_key or c.new_key()
        return Created.from_json(await self._json("POST", "/artifacts", json_body=body, key=key))

    async def create_from_file(
        self,
        workflow_id: str,
        file: c.Body | AsyncIterable[bytes],
        *,
        title: str | None = None,
        artifact_type: str = "other",
        filename: str | None = None,
        content_type: str | None = None,
        phase_id: str | None = None,
        session_id: str | None = None,
        is_primary_deliverable: bool = False,
        derived_from: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        created_by: str | None = None,
        idempotency_key: str | None = None,
        progress: c.Progress | None = None,
    ) -> Created:
        """One multipart request: the fields, then the file's bytes, streamed. The file's
        sha256 goes as X-Content-SHA256 and the body's as Content-Digest (hashed in a first
        read), so the server stores nothing unless every byte arrived intact."""
        source = await _source(file, self.chunk_size, filename)
        try:
            name = filename or source.name or "file"
            ctype = content_type or c.guess_type(name)
            fields = c.form_fields(
                c.create_fields(
                    workflow_id,
                    title or name,
                    artifact_type,
                    phase_id=phase_id,
                    session_id=session_id,
                    is_primary_deliverable=is_primary_deliverable,
                    derived_from=derived_from,
                    metadata=metadata,
                    created_by=created_by,
                )
            )
            form = c.Multipart(fields, name, ctype)
            # the file's and the body's sha256, in one read
            await anyio.to_thread.run_sync(source.scan, form.head, form.tail)
            headers = {
                "Content-Type": form.content_type,
                "Content-Length": str(form.length(source)),
                "Content-Digest": c.content_digest(source.body_sha256),
                "X-Content-SHA256": source.sha256,
            }
            body = _Replay(lambda: form.chunks(source), progress, (form.head, form.tail))
            key = idempotency_key or c.new_key()
            data = await self._json("POST", "/artifacts", body=body, headers=headers, key=key)
            return Created.from_json(data)
        finally:
            source.close()

    async def upload(
        self,
        artifact_id: str,
        file: c.Body | AsyncIterable[bytes],
        *,
        content_type: str | None = None,
        filename: str | None = None,
        if_match: str | None = None,
        created_by: str | None = None,
        idempotency_key: str | None = None,
        progress: c.Progress | None = None,
    ) -> Uploaded:
        """Replace the content (a new version) with a path, a binary file object, bytes or an
        iterator of bytes, streamed as the raw body with `Content-Digest`. `if_match`: an ETag
        (`Uploaded.etag`, `'"<sha256>"'`) or `*`; PreconditionFailed (412) when another
        version is current. `created_by`: who wrote the new version (its record says so)."""
        source = await _source(file, self.chunk_size, filename)
        try:
            name = filename or source.name
            await anyio.to_thread.run_sync(source.scan)
            headers = {
                "Content-Type": content_type or c.guess_type(name),
                "Content-Length": str(source.size),
                "Content-Digest": c.content_digest(source.sha256),
            }
            if if_match is not None:
                headers["If-Match"] = if_match
            body = _Replay(source.chunks, progress)
            key = idempotency_key or c.new_key()
            data = await self._json(
                "POST",
                f"/artifacts/{c.seg(artifact_id)}/upload",
                params=c.query(filename=name, created_by=created_by),
                body=body,
                headers=headers,
                key=key,
            )
            return Uploaded.from_json(data)
        finally:
            source.close()

    async def get(self, artifact_id: str, *, include_content: bool = True) -> Artifact:
        params = c.query(include_content=include_content)
        return Artifact.from_json(
            await self._json("GET", f"/artifacts/{c.seg(artifact_id)}", params=params)
        )

    async def content(self, artifact_id: str) -> Content:
        return Content.from_json(
            await self._json("GET", f"/artifacts/{c.seg(artifact_id)}/content")
        )

    def list(
        self,
        *,
        workflow_id: str | None = None,
        phase_id: str | None = None,
        artifact_type: str | None = None,
        session_id: str | None = None,
        content_type: str | None = None,
        is_primary_deliverable: bool | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
        derived_from: str | None = None,
        page_size: int = 200,
    ) -> AsyncIterator[ArtifactSummary]:
        """Every matching artifact, newest first, fetched a page at a time as you iterate."""
        params = c.query(
            workflow_id=workflow_id,
            phase_id=phase_id,
            artifact_type=artifact_type,
            session_id=session_id,
            content_type=content_type,
            is_primary_deliverable=is_primary_deliverable,
            created_after=created_after,
            created_before=created_before,
            derived_from=derived_from,
            limit=page_size,
        )
        return self._pages("/artifacts", params, ArtifactSummary)

    async def update(
        self,
        artifact_id: str,
        *,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        is_primary_deliverable: bool | None = None,
        idempotency_key: str | None = None,
    ) -> Changed:
        body = {
            k: v
            for k, v in (
                ("title", title),
                ("metadata", metadata),
                ("is_primary_deliverable", is_primary_deliverable),
            )
            if v is not None
        }
        key = idempotency_key or c.new_key()
        path = f"/artifacts/{c.seg(artifact_id)}"
        return Changed.from_json(await self._json("PUT", path, json_body=body, key=key))

    async def delete(self, artifact_id: str, *, idempotency_key: str | None = None) -> Changed:
        key = idempotency_key or c.new_key()
        return Changed.from_json(
            await self._json("DELETE", f"/artifacts/{c.seg(artifact_id)}", key=key)
        )

    async def lineage(
        self, artifact_id: str, *, direction: str = "both", depth: int = 1
    ) -> Lineage:
        params = c.query(direction=direction, depth=depth)
        path = f"/artifacts/{c.seg(artifact_id)}/lineage"
        return Lineage.from_json(await self._json("GET", path, params=params))

    async def download_url(
        self, artifact_id: str, *, expires_in: int | None = None, version: int | None = None
    ) -> DownloadLink:
        params = c.query(expires_in=expires_in, version=version)
        path = f"/artifacts/{c.seg(artifact_id)}/download-url"
        return DownloadLink.from_json(await self._json("POST", path, params=params))

    # -- versions ---------------------------------------------------------------------------

    def versions(self, artifact_id: str, *, page_size: int = 200) -> AsyncIterator[Version]:
        path = f"/artifacts/{c.seg(artifact_id)}/versions"
        return self._pages(path, c.query(limit=page_size), Version)

    async def get_version(
        self, artifact_id: str, version: int, *, include_content: bool = True
    ) -> Version:
        path = f"/artifacts/{c.seg(artifact_id)}/versions/{int(version)}"
        params = c.query(include_content=include_content)
        return Version.from_json(await self._json("GET", path, params=params))

    # -- downloads ----------------------------------------------------------------------------

    async def download(
        self,
        artifact_id: str,
        dest: Dest,
        *,
        version: int | None = None,
        expected_sha256: str | None = None,
        resume: bool = True,
        progress: c.Progress | None = None,
    ) -> Downloaded:
        """Stream the bytes (of `version`, else the current ones) to a path or a binary file,
        hashing them as they are written. A dropped connection is resumed with `Range` (and
        `If-Range`, so the bytes cannot change underneath); to a path, the bytes go to a
        `.wfa-part` file renamed onto `dest` only once the sha256 matches (DigestMismatch
        otherwise, and nothing is left). `expected_sha256` (e.g. a listing's `content_hash`)
        is held to: other bytes raise DigestMismatch before any is written."""
        reported = 0

        def counted(n: int) -> None:
            nonlocal reported
            reported += n
            if progress is not None:
                progress(n)

        sha = expected_sha256.lower() if expected_sha256 is not None else None
        try:
            return await self._download_once(artifact_id, dest, sha, version, resume, counted)
        except DigestMismatch as exc:
            if not (resume and getattr(exc, "resumed", False)):
                raise
        # the bytes of an earlier run's .part were not these bytes: fetch them all again
        if progress is not None and reported:
            progress(-reported)
        return await self._download_once(artifact_id, dest, sha, version, False, progress)

    async def _download_once(
        self,
        artifact_id: str,
        dest: Dest,
        sha: str | None,
        version: int | None,
        resume: bool,
        progress: c.Progress | None,
    ) -> Downloaded:
        """One attempt at download(); see there (`sha`: expected_sha256, lowercased). No HEAD
        first: the GET's own answer says which bytes it carries (ETag, else Repr-Digest) and
        how many (Content-Length, or a 206's Content-Range)."""
        path = c.download_path(artifact_id, version)
        sink = c.Sink(dest, resume)
        size: int | None = None
        answered = False  # whether an answer of these bytes came
        reconnects = failures = 0
        try:
            if sha is not None:  # a part file of an earlier call is taken up
                taken_up = await anyio.to_thread.run_sync(sink.expect, sha)
                if taken_up and progress is not None:
                    progress(taken_up)
            while True:
                headers = {}
                if sink.offset:  # If-Range: the rest of these bytes, or all of other ones
                    headers = {"Range": f"bytes={sink.offset}-", "If-Range": f'"{sha}"'}
                try:
                    response = await self._request("GET", path, headers=headers, stream=True)
                except ApiError as exc:
                    if exc.status == 416 and sink.offset:  # a stale .part: start over
                        if progress is not None:
                            progress(-sink.offset)
                        await anyio.to_thread.run_sync(sink.restart)
                        continue
                    raise
                before = sink.offset
                try:
                    got = c.download_sha(response)
                    if sha is None:  # the first answer names the bytes
                        sha = got
                        # a part file of an earlier call with some of them: ask for the rest
                        if await anyio.to_thread.run_sync(sink.expect, sha):
                            if progress is not None:
                                progress(sink.offset)
                            continue
                    elif got != sha:
                        if answered:  # replaced between two attempts: these bytes are gone
                            await anyio.to_thread.run_sync(sink.discard)
                        raise c.changed(got, sha, during=answered)
                    answered = True
                    size = c.download_size(response)
                    if (
                        response.status_code != 206
                        or c.content_range_start(response) != sink.offset
                    ):
                        if progress is not None and sink.offset:
                            progress(-sink.offset)
                        await anyio.to_thread.run_sync(sink.restart)
                        before = 0
                    async for chunk in response.aiter_bytes():
                        await anyio.to_thread.run_sync(sink.write, chunk)
                        if progress is not None:
                            progress(len(chunk))
                    if size is not None and sink.offset < size:
                        raise httpx.RemoteProtocolError(f"the answer ended at byte {sink.offset}")
                except httpx.TransportError as exc:
                    reconnects += 1
                    failures = 1 if sink.offset > before else failures + 1
                    wait = self.retry.wait(failures)
                    if wait is None:
                        raise ConnectionFailed(
                            f"download of {artifact_id} kept dropping at byte {sink.offset}: {exc}"
                        ) from exc
                    await anyio.sleep(wait)
                    continue
                finally:
                    await response.aclose()
                return await anyio.to_thread.run_sync(sink.finish, reconnects)
        except BaseException:
            sink.close()
            raise

    async def export(
        self,
        workflow_id: str,
        dest: Dest,
        *,
        format: str = "zip",
        scope: str = "all",
        progress: c.Progress | None = None,
    ) -> Path | None:
        """The workflow as one zip or tar archive (`manifest.json` first), streamed to a path
        (written beside it, renamed when complete) or a binary file. The archive is built as
        it streams, so a dropped connection restarts it from the beginning."""
        path = f"/store/workflows/{c.seg(workflow_id)}/export"
        params = c.query(format=format, scope=scope)
        target = Path(dest) if isinstance(dest, str | os.PathLike) else None
        failures = 0
        while True:
            response = await self._request("GET", path, params=params, stream=True)
            part = target.with_name(f".{target.name}.wfa-part") if target else None
            out: IO[bytes] = dest  # type: ignore[assignment]
            if part is not None:
                out = await anyio.to_thread.run_sync(part.open, "wb")
            written = 0
            try:
                async for chunk in response.aiter_bytes():
                    await anyio.to_thread.run_sync(out.write, chunk)
                    written += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
            except httpx.TransportError as exc:
                failures += 1
                wait = self.retry.wait(failures) if part is not None else None
                if part is not None:
                    await anyio.to_thread.run_sync(out.close)
                    await anyio.to_thread.run_sync(part.unlink, True)  # missing_ok
                if progress is not None:
                    progress(-written)
                if wait is None:
                    raise ConnectionFailed(f"export of {workflow_id} dropped: {exc}") from exc
                await anyio.sleep(wait)
                continue
            finally:
                await response.aclose()
            if part is not None and target is not None:
                await anyio.to_thread.run_sync(out.close)
                await anyio.to_thread.run_sync(os.replace, part, target)
            return target

    # -- workflows ------------------------------------------------------------------------------

    def workflows(
        self,
        *,
        active_after: str | None = None,
        active_before: str | None = None,
        page_size: int = 200,
    ) -> AsyncIterator[WorkflowSummary]:
        params = c.query(active_after=active_after, active_before=active_before, limit=page_size)
        return self._pages("/store/workflows", params, WorkflowSummary)

    async def workflow(self, workflow_id: str) -> Workflow:
        return Workflow.from_json(await self._json("GET", f"/store/workflows/{c.seg(workflow_id)}"))

    async def deliverables(
        self, workflow_id: str, *, include_content: bool = False
    ) -> builtins.list[Artifact]:
        path = f"/store/workflows/{c.seg(workflow_id)}/deliverables"
        rows = await self._json("GET", path, params=c.query(include_content=include_content))
        return [Artifact.from_json(r) for r in rows]

    # -- the change feed ------------------------------------------------------------------------

    async def events(
        self,
        *,
        after: str | None = None,
        workflow_id: str | None = None,
        follow: bool = True,
        page_size: int = 100,
    ) -> AsyncIterator[Event]:
        """Changes in commit order, after the event id `after` (else from the start).
        `follow=False`: the events there are now, as JSON pages, then the iterator ends.
        `follow=True`: Server-Sent Events, waiting for new ones for as long as you iterate;
        a dropped connection is reopened with `Last-Event-ID`, so no event is lost or seen
        twice."""
        cursor = after
        if not follow:
            while True:
                page = await self._json(
                    "GET",
                    "/store/events",
                    params=c.query(after=cursor, workflow_id=workflow_id, limit=page_size),
                    headers={"Accept": "application/json"},
                )
                for row in page["events"]:
                    yield Event.from_json(row)
                if len(page["events"]) < page_size:
                    return
                cursor = page["next_cursor"]
        failures = 0
        params = c.query(workflow_id=workflow_id, limit=page_size)
        while True:
            headers = {"Accept": "text/event-stream"}
            if cursor:
                headers["Last-Event-ID"] = cursor
            parser = c.SseParser()
            response = await self._request(
                "GET", "/store/events", params=params, headers=headers, stream=True
            )
            try:
                async for line in response.aiter_lines():
                    got = parser.feed(line)
                    if got is not None:
                        event = Event.from_json(json.loads(got[2]))
                        cursor, failures = event.id, 0
                        yield event
            except httpx.TransportError:
                pass
            finally:
                await response.aclose()
            failures += 1  # the stream ended or dropped: reopen it where it stopped
            wait = self.retry.wait(failures)
            if wait is None:
                raise ConnectionFailed(f"the event stream kept dropping after event {cursor}")
            await anyio.sleep(
                parser.retry if parser.retry is not None and failures == 1 else wait
            )

    # -- imports --------------------------------------------------------------------------------

    async def import_crownest(
        self,
        sandbox_id: str,
        workflow_id: str,
        *,
        phase_id: str | None = None,
        session_id: str | None = None,
        artifact_type: str | None = None,
        artifact_ids: builtins.list[str] | None = None,
        source_path_prefix: str | None = None,
        dry_run: bool = False,
        idempotency_key: str | None = None,
    ) -> ImportJob:
        body = c.import_body(
            sandbox_id,
            workflow_id,
            phase_id,
            session_id,
            artifact_type,
            artifact_ids,
            source_path_prefix,
            dry_run,
        )
        key = idempotency_key or c.new_key()
        return ImportJob.from_json(
            await self._json("POST", "/imports/crownest", json_body=body, key=key)
        )

    async def get_import(self, import_id: str) -> ImportJob:
        return ImportJob.from_json(await self._json("GET", f"/imports/{c.seg(import_id)}"))

    async def resume_import(
        self, import_id: str, *, idempotency_key: str | None = None
    ) -> ImportJob:
        key = idempotency_key or c.new_key()
        path = f"/imports/{c.seg(import_id)}/resume"
        return ImportJob.from_json(await self._json("POST", path, key=key))


class _Replay:
    """A body made afresh for each attempt; on a retry, `progress` is rewound by what the
    failed attempt had sent."""

    def __init__(
        self,
        make: Callable[[], Iterator[bytes]],
        progress: c.Progress | None,
        envelope: tuple[bytes, ...] = (),
    ) -> None:
        self.make, self.progress, self.sent = make, progress, 0
        self.envelope = envelope  # chunks that are framing, not content: not reported

    def __call__(self) -> AsyncIterator[bytes]:
        if self.progress is not None and self.sent:
            self.progress(-self.sent)
        self.sent = 0
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        chunks = self.make()  # reads the file (the async client: a chunk per worker thread call)
        while (chunk := await anyio.to_thread.run_sync(next, chunks, None)) is not None:
            if any(chunk is e for e in self.envelope):
                yield chunk
                continue
            self.sent += len(chunk)
            if self.progress is not None:
                self.progress(len(chunk))
            yield chunk


async def _source(
    file: c.Body | AsyncIterable[bytes], chunk_size: int, name: str | None
) -> c.Source:
    """The upload's c.Source (the async client spools an async iterator to a temporary file)."""
    if isinstance(file, AsyncIterable):  # unasync: drop
        spool = await anyio.to_thread.run_sync(tempfile.TemporaryFile)
        try:
            async for chunk in file:
                await anyio.to_thread.run_sync(spool.write, chunk)
            await anyio.to_thread.run_sync(spool.seek, 0)
            source = await anyio.to_thread.run_sync(c.Source, spool, chunk_size, name)
        except BaseException:
            spool.close()
            raise
        source.adopt(spool)
        return source
    return await anyio.to_thread.run_sync(c.Source, file, chunk_size, name)
