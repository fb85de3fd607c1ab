"""The client's own logic, in process: the retry loop (with httpx's MockTransport standing in
for the network, so 503s, dropped connections and give-ups can be staged exactly), error
mapping, the SSE parser, upload sources, and the command's path handling. Everything that
talks to the server is tested against a real one in tests/system/test_client*.py."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
from workflow_artifacts_client import (
    AmbiguousId,
    ArtifactsClient,
    AsyncArtifactsClient,
    ConnectionFailed,
    DigestMismatch,
    IdempotencyKeyReused,
    NotFound,
    Retry,
    ServerError,
    Unavailable,
)
from workflow_artifacts_client._common import Multipart, Source, SseParser, part_path
from workflow_artifacts_client.cli import plan_pull, render_lineage, safe_rel
from workflow_artifacts_client.errors import error_for
from workflow_artifacts_client.models import Artifact, Lineage

FAST = Retry(attempts=3, backoff=0.001, max_backoff=0.002)
CREATED = {
    "id": "a" * 36,
    "title": "t",
    "artifact_type": "text",
    "status": "created",
    "content_hash": "0" * 64,
    "size_bytes": 1,
    "created_at": "2026-01-01T00:00:00Z",
    "version": 1,
    "future_field": 1,
}


def staged(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), seen


def test_retry_waits_are_bounded_and_honour_retry_after() -> None:
    r = Retry(attempts=3, backoff=1.0, max_backoff=2.0, max_retry_after=30)
    assert r.wait(1, "7") == 7.0
    assert r.wait(1, "31") is None  # longer than we wait: raised at once
    assert 0.5 <= (r.wait(1) or 0) <= 1.0 and 1.0 <= (r.wait(3) or 0) <= 2.0
    assert r.wait(4) is None and Retry(attempts=0).wait(1) is None


def test_a_retried_write_sends_the_same_key_and_bytes() -> None:
    transport, seen = staged(
        httpx.ConnectError("refused"),
        httpx.Response(
            503,
            json={"detail": "busy", "code": "storage_unavailable"},
            headers={"Retry-After": "0"},
        ),
        httpx.Response(201, json=CREATED),
    )
    with ArtifactsClient("http://server", "k", transport=transport, retry=FAST) as client:
        created = client.create("wf", "t", "x")
    assert created.extra == {"future_field": 1}
    assert len(seen) == 3
    assert len({r.headers["idempotency-key"] for r in seen}) == 1
    assert len({r.content for r in seen}) == 1
    assert seen[0].headers["authorization"] == "Bearer k"


def test_uploads_replay_identical_bodies_with_their_digest() -> None:
    ok = {
        "artifact_id": "a",
        "storage_url": "u",
        "status": "uploaded",
        "content_hash": "h",
        "size_bytes": 6,
        "content_type": "text/plain",
        "version": 2,
    }
    transport, seen = staged(httpx.ReadError("cut"), httpx.Response(200, json=ok))
    moved: list[int] = []
    with ArtifactsClient("http://server", transport=transport, retry=FAST) as client:
        client.upload(
            "a" * 8, iter([b"abc", b"def"]), content_type="text/plain", progress=moved.append
        )
    assert [r.content for r in seen] == [b"abcdef", b"abcdef"]
    assert (
        seen[0].headers["content-digest"]
        == "sha-256=:vvV+x/U6bUC+tkCngKY5yDvCmsipgW8fxsXG3Nk8RyE=:"
    )
    assert seen[0].headers["idempotency-key"] == seen[1].headers["idempotency-key"]
    assert sum(moved) == 6  # the failed attempt's bytes were rewound


def test_giving_up_raises_the_last_error() -> None:
    busy = httpx.Response(503, json={"detail": "busy", "code": "database_unavailable"})
    transport, seen = staged(busy, busy, busy, busy)
    with ArtifactsClient("http://server", transport=transport, retry=FAST) as client:
        with pytest.raises(Unavailable) as caught:
            client.get("abcdefgh")
    assert len(seen) == 4 and caught.value.detail == "busy"
    transport, seen = staged(*[httpx.ConnectError("refused")] * 4)
    with ArtifactsClient("http://server", transport=transport, retry=FAST) as client:
        with pytest.raises(ConnectionFailed, match="after 4 attempts"):
            client.get("abcdefgh")
    transport, seen = staged(
        httpx.Response(404, json={"detail": "no", "code": "artifact_not_found"})
    )
    with ArtifactsClient("http://server", transport=transport, retry=FAST) as client:
        with pytest.raises(NotFound):
            client.get("abcdefgh")
    assert len(seen) == 1  # a 404 is an answer, not retried


def test_the_async_client_retries_alike() -> None:
    transport, seen = staged(
        httpx.RemoteProtocolError("dropped"),
        httpx.Response(
            429, json={"detail": "slow down", "code": "rate_limited"}, headers={"Retry-After": "0"}
        ),
        httpx.Response(201, json=CREATED),
    )

    async def go() -> None:
        async with AsyncArtifactsClient(
            "http://server",
            transport=httpx.MockTransport(
                transport.handler  # type: ignore[attr-defined]
            ),
            retry=FAST,
        ) as client:
            assert (await client.create("wf", "t", {"a": 1})).status == "created"

    asyncio.run(go())
    assert len(seen) == 3 and len({r.headers["idempotency-key"] for r in seen}) == 1
    assert json.loads(seen[0].content)["content_type"] == "application/json"


def test_errors_map_by_code_then_status() -> None:
    def err(status: int, body: object) -> Exception:
        return error_for(httpx.Response(status, json=body))

    assert isinstance(err(409, {"detail": "2 match", "code": "ambiguous_artifact_id"}), AmbiguousId)
    assert isinstance(err(422, {"detail": "no", "code": "digest_mismatch"}), DigestMismatch)
    assert isinstance(
        err(422, {"detail": "no", "code": "idempotency_key_reused"}), IdempotencyKeyReused
    )
    assert isinstance(err(500, {"detail": "bad", "code": "blob_corrupt"}), ServerError)
    plain = error_for(httpx.Response(502, text="<html>bad gateway</html>"))
    assert isinstance(plain, ServerError) and "bad gateway" in str(plain)


def test_sse_parser() -> None:
    p = SseParser()
    lines = [
        "retry: 2000",
        "",
        ": keep-alive",
        "",
        "id: 7",
        "event: artifact.created",
        'data: {"a":',
        "data: 1}",
        "",
    ]
    got = [x for x in (p.feed(line) for line in lines) if x]
    assert got == [("7", "artifact.created", '{"a":\n1}')] and p.retry == 2.0


def test_sources_spool_iterators_and_refuse_non_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = Source(iter([b"ab", b"c"])).scan()
    assert (s.size, b"".join(s.chunks()), b"".join(s.chunks())) == (3, b"abc", b"abc")
    s.close()
    with pytest.raises(TypeError):
        Source(iter(["text"]))  # type: ignore[list-item]
    with pytest.raises(FileNotFoundError):
        Source(tmp_path / "missing")
    form = Multipart({"title": "t"}, 'we"ird\nname.txt', "text/plain")
    body = b"".join(form.chunks(Source(b"xyz").scan(form.head, form.tail)))
    assert b'filename="we%22ird%0Aname.txt"' in body and body.endswith(b"--\r\n")


def test_pull_paths_stay_inside_dest_and_never_collide() -> None:
    assert safe_rel("../../etc/passwd") == PurePosixPath("etc/passwd")
    assert safe_rel("/abs/a:b.md") == PurePosixPath("abs/a_b.md")
    assert safe_rel("..") is None

    def art(i: str, path: str, created: str, phase: str | None = None) -> Artifact:
        return Artifact.from_json(
            {
                "id": i * 36,
                "workflow_id": "w",
                "phase_id": phase,
                "session_id": None,
                "artifact_type": "text",
                "is_primary_deliverable": False,
                "content": None,
                "content_type": "text/plain",
                "content_hash": "0" * 64,
                "size_bytes": 1,
                "title": path,
                "derived_from": [],
                "created_at": created,
                "metadata": {"path": path},
            }
        )

    planned = plan_pull(
        [art("a", "x.md", "1"), art("b", "x.md", "2"), art("c", "y", "3", "p")], by_phase=True
    )
    assert {a.id[0]: str(rel) for a, rel in planned} == {
        "b": "x.md",  # the newest keeps the name
        "a": "x (aaaaaaaa).md",
        "c": "p/y",
    }


def test_lineage_renders_as_a_tree() -> None:
    graph = Lineage.from_json(
        {
            "root": "r" * 36,
            "nodes": [
                {"id": "r" * 36, "depth": 0, "title": "root", "artifact_type": "plan"},
                {"id": "p" * 36, "depth": 1, "deleted": True},
                {"id": "c" * 36, "depth": 1, "title": "child", "artifact_type": "code"},
                {"id": "g" * 36, "depth": 2, "title": "grandchild", "artifact_type": "code"},
            ],
            "edges": [
                {"parent": "p" * 36, "child": "r" * 36},
                {"parent": "r" * 36, "child": "c" * 36},
                {"parent": "c" * 36, "child": "g" * 36},
            ],
            "truncated": True,
        }
    )
    assert render_lineage(graph, "both") == [
        "rrrrrrrr root [plan]",
        "derived from:",
        "└── pppppppp (deleted)",
        "used by:",
        "└── cccccccc child [code]",
        "    └── gggggggg grandchild [code]",
        "(more beyond --depth)",
    ]


def serving(payload: bytes, *, cut_after: int | None = None) -> tuple[httpx.MockTransport, list]:
    """A download route that honours Range and If-Range like the server's, optionally cutting
    each answer after `cut_after` bytes."""
    sha = hashlib.sha256(payload).hexdigest()
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"ETag": f'"{sha}"', "Accept-Ranges": "bytes"}
        start, status = 0, 200
        wanted = request.headers.get("range")
        if wanted and request.headers.get("if-range", f'"{sha}"') == f'"{sha}"':
            start, status = int(wanted.removeprefix("bytes=").rstrip("-")), 206
            headers["Content-Range"] = f"bytes {start}-{len(payload) - 1}/{len(payload)}"
        body = payload[start:]
        headers["Content-Length"] = str(len(body))

        def chunks() -> Iterator[bytes]:
            sent = 0
            for i in range(0, len(body), 1000):
                if cut_after is not None and sent >= cut_after:
                    raise httpx.ReadError("cut")
                sent += len(body[i : i + 1000])
                yield body[i : i + 1000]

        return httpx.Response(status, headers=headers, stream=_Stream(chunks()))

    return httpx.MockTransport(handle), seen


class _Stream(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


def test_a_download_is_one_get_and_resumes_with_if_range(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 40  # 10240 bytes
    sha = hashlib.sha256(payload).hexdigest()
    transport, seen = serving(payload)
    with ArtifactsClient("http://server", transport=transport, retry=FAST) as client:
        got = client.download("a" * 8, tmp_path / "out.bin")
    assert [r.method for r in seen] == ["GET"] and "range" not in seen[0].headers
    assert (got.sha256, got.size_bytes) == (sha, len(payload))
    assert (tmp_path / "out.bin").read_bytes() == payload

    # cut after every 3000 bytes: each retry asks for the rest of the same bytes
    transport, seen = serving(payload, cut_after=3000)
    moved: list[int] = []
    with ArtifactsClient("http://server", transport=transport, retry=FAST) as client:
        got = client.download("a" * 8, tmp_path / "cut.bin", progress=moved.append)
    assert (tmp_path / "cut.bin").read_bytes() == payload and sum(moved) == len(payload)
    assert got.reconnects == 3 and [r.method for r in seen] == ["GET"] * 4
    assert [r.headers.get("if-range") for r in seen[1:]] == [f'"{sha}"'] * 3
    assert [r.headers["range"] for r in seen[1:]] == ["bytes=3000-", "bytes=6000-", "bytes=9000-"]

    # a part file of an earlier run and the expected sha256: one GET for the rest
    part = part_path(tmp_path / "again.bin", sha)
    part.write_bytes(payload[:4000])
    transport, seen = serving(payload)
    with ArtifactsClient("http://server", transport=transport, retry=FAST) as client:
        got = client.download("a" * 8, tmp_path / "again.bin", expected_sha256=sha)
    assert got.resumed_from == 4000 and len(seen) == 1
    assert seen[0].headers["range"] == "bytes=4000-" and seen[0].headers["if-range"] == f'"{sha}"'
    assert (tmp_path / "again.bin").read_bytes() == payload and not part.exists()

    # the same without the expected sha256: the first answer names the part file, and is
    # closed for a request of the rest (the one case that costs a second request)
    part = part_path(tmp_path / "nohint.bin", sha)
    part.write_bytes(payload[:4000])
    transport, seen = serving(payload)
    with ArtifactsClient("http://server", transport=transport, retry=FAST) as client:
        got = client.download("a" * 8, tmp_path / "nohint.bin")
    assert got.resumed_from == 4000 and [r.headers.get("range") for r in seen] == [
        None,
        "bytes=4000-",
    ]
    assert (tmp_path / "nohint.bin").read_bytes() == payload and not part.exists()

    # other bytes than expected: refused before anything is written
    transport, seen = serving(payload)
    with ArtifactsClient("http://server", transport=transport, retry=FAST) as client:
        with pytest.raises(DigestMismatch, match="not the expected"):
            client.download("a" * 8, tmp_path / "sub" / "x.bin", expected_sha256="0" * 64)
    assert not (tmp_path / "sub").exists()


def test_the_async_download_alike(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 40
    transport, seen = serving(payload, cut_after=5000)

    async def go() -> None:
        async with AsyncArtifactsClient(
            "http://server", transport=transport, retry=FAST
        ) as client:
            got = await client.download("a" * 8, tmp_path / "out.bin")
            assert got.reconnects == 2

    asyncio.run(go())
    assert (tmp_path / "out.bin").read_bytes() == payload
    assert [r.headers.get("range") for r in seen] == [None, "bytes=5000-", "bytes=10000-"]


def test_the_async_client_reads_and_writes_files_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every disk access of an async upload and download (hashing, reading chunks, writing
    them, the rename) runs in a worker thread, never on the event loop's thread."""
    from workflow_artifacts_client import _common

    loop_thread = threading.get_ident()
    touched: dict[str, set[int]] = {}

    def watched(name: str, fn: Any) -> Any:
        if inspect.isgeneratorfunction(fn):

            def gen(*args: Any, **kwargs: Any) -> Iterator[Any]:
                for item in fn(*args, **kwargs):
                    touched.setdefault(name, set()).add(threading.get_ident())
                    yield item

            return gen

        def call(*args: Any, **kwargs: Any) -> Any:
            touched.setdefault(name, set()).add(threading.get_ident())
            return fn(*args, **kwargs)

        return call

    watch = {_common.Source: ("scan", "chunks"), _common.Sink: ("expect", "write", "finish")}
    for cls, names in watch.items():
        for name in names:
            monkeypatch.setattr(cls, name, watched(f"{cls.__name__}.{name}", getattr(cls, name)))

    payload = bytes(range(256)) * 40
    (tmp_path / "in.bin").write_bytes(payload)
    download, _ = serving(payload)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            request.read()
            return httpx.Response(201, json=CREATED)
        return download.handle_request(request)  # type: ignore[return-value]

    async def go() -> None:
        async with AsyncArtifactsClient(
            "http://server", transport=httpx.MockTransport(handle), retry=FAST, chunk_size=1000
        ) as client:
            await client.create_from_file("wf", tmp_path / "in.bin")
            await client.download("a" * 8, tmp_path / "out.bin")

    asyncio.run(go())
    assert (tmp_path / "out.bin").read_bytes() == payload
    assert set(touched) == {
        "Source.scan",
        "Source.chunks",
        "Sink.expect",
        "Sink.write",
        "Sink.finish",
    }
    assert all(loop_thread not in threads for threads in touched.values()), touched


def test_plain_progress_lines_from_many_threads_never_mix() -> None:
    """With --jobs, files report from their own threads: each line is written whole, and a
    file's end is followed by the running total it makes, in order."""
    import io
    import time
    from concurrent.futures import ThreadPoolExecutor

    from workflow_artifacts_client.cli.output import PlainReporter

    class Slow(io.StringIO):  # a stream that gives other threads every chance to cut in
        def write(self, text: str) -> int:
            for ch in text:
                super().write(ch)
                time.sleep(0)
            return len(text)

    stream = Slow()
    reporter = PlainReporter("push", 40, 40 * 1000, stream)  # type: ignore[arg-type]

    def one(i: int) -> None:
        task = reporter.task(f"f{i:02d}", 1000)
        for _ in range(10):
            task(100)
        task.finish(True)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(40)))
    reporter.close()
    lines = stream.getvalue().splitlines()
    shapes = re.compile(
        r"push f\d\d \(1000 B\)|  f\d\d: ok 1000 B in .*|  \[\d+/40 files, .*\]|total: .*"
    )
    assert [x for x in lines if not shapes.fullmatch(x)] == []
    totals = [int(m[1]) for x in lines if (m := re.fullmatch(r"  \[(\d+)/40 files.*", x))]
    assert totals == list(range(1, 41))
    for i, x in enumerate(lines):
        if x.startswith("  ["):
            assert ": ok " in lines[i - 1]
