"""Building workflows over HTTP and reading their exports back: the helpers of
tests/test_export.py (in process) and tests/system/test_export_server.py (a real server, whose
/proc figures are read)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import tarfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from tests.support.inprocess import AppServer
from tests.support.servers import Server

MiB = 1 << 20
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MEDIA = {"zip": "application/zip", "tar": "application/x-tar"}
FILE_KEYS = {
    "path",
    "artifact_id",
    "version",
    "sha256",
    "size_bytes",
    "content_type",
    "title",
    "artifact_type",
    "phase_id",
    "session_id",
    "is_primary_deliverable",
    "created_at",
    "derived_from",
}


# -- servers ---------------------------------------------------------------------------------


@dataclass
class Live:
    server: AppServer | Server  # pid: a real server's only
    database_url: str

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def pid(self) -> int:
        return self.server.process.pid


# -- building workflows ------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Item:
    """What the test knows of one artifact, independently of the server."""

    id: str
    title: str
    phase_id: str | None
    data: bytes
    content_type: str
    session_id: str | None = None
    primary: bool = False
    deleted: bool = False
    # {id, content_hash, version} of each parent at link time
    parents: list[dict[str, Any]] = field(default_factory=list)
    expected_path: str | None = None  # when the name is plain enough to pin exactly
    version: int = 1  # one more per upload


@dataclass
class Workflow:
    id: str
    items: list[Item]

    def live(self) -> list[Item]:
        return [i for i in self.items if not i.deleted]

    def by_id(self, artifact_id: str) -> Item:
        return next(i for i in self.items if i.id == artifact_id)


class Builder:
    def __init__(self, http: httpx.Client, workflow_id: str) -> None:
        self.http = http
        self.wf = Workflow(workflow_id, [])

    def create(
        self,
        title: str,
        phase_id: str | None,
        content: str = "text",
        *,
        content_type: str = "text/markdown",
        primary: bool = False,
        session_id: str | None = None,
        parents: tuple[Item, ...] = (),
        expected_path: str | None = None,
    ) -> Item:
        body = {
            "workflow_id": self.wf.id,
            "artifact_type": "text",
            "title": title,
            "phase_id": phase_id,
            "session_id": session_id,
            "content": content,
            "content_type": content_type,
            "is_primary_deliverable": primary,
            "derived_from": [p.id for p in parents],
        }
        r = self.http.post("/artifacts", json=body)
        assert r.status_code == 201, r.text
        if primary:  # creating a primary demotes the phase's previous one
            for other in self.wf.items:
                if other.phase_id == phase_id and not other.deleted:
                    other.primary = False
        item = Item(
            r.json()["id"],
            title,
            phase_id,
            content.encode(),
            content_type,
            session_id,
            primary,
            parents=[
                {"id": p.id, "content_hash": sha(p.data), "version": p.version} for p in parents
            ],
            expected_path=expected_path,
        )
        self.wf.items.append(item)
        return item

    def upload(
        self, item: Item, data: bytes, content_type: str, filename: str | None = None
    ) -> None:
        """Raw body, `?filename=` as given (the server sanitises it)."""
        params = {} if filename is None else {"filename": filename}
        r = self.http.post(
            f"/artifacts/{item.id}/upload",
            params=params,
            content=data,
            headers={"content-type": content_type},
        )
        assert r.status_code == 200, r.text
        assert r.json()["content_hash"] == sha(data)
        item.data, item.content_type = data, content_type
        item.version += 1

    def upload_multipart(self, item: Item, data: bytes, content_type: str, filename: bytes) -> None:
        """One `file` part whose filename bytes go on the wire exactly as given."""
        boundary = "x-export-boundary-7f3a"
        head = (
            f"--{boundary}\r\n".encode()
            + b'Content-Disposition: form-data; name="file"; filename="'
            + filename
            + b'"\r\n'
            + f"Content-Type: {content_type}\r\n\r\n".encode()
        )
        body = head + data + f"\r\n--{boundary}--\r\n".encode()
        r = self.http.post(
            f"/artifacts/{item.id}/upload",
            content=body,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["content_hash"] == sha(data)
        item.data, item.content_type = data, content_type
        item.version += 1

    def delete(self, item: Item) -> None:
        r = self.http.delete(f"/artifacts/{item.id}")
        assert r.status_code == 200, r.text
        item.deleted = True


LONG_TITLE = "é" * 300 + ".md"  # 603 bytes of UTF-8
HOSTILE_TITLES = [
    "../x",
    "a/b",
    "..",
    "...",
    "   ",
    "/etc/passwd",
    "C:\\Windows\\evil.bat",
    "a/../../b",
    "line\r\nbreak\ttab\x7fdel\x85nel.txt",
    "..\\..\\up",
    LONG_TITLE,
    "résumé 報告 🚀.md",
]


def build_mixed(http: httpx.Client) -> Workflow:
    rng = random.Random(4)
    b = Builder(http, f"wf-export-{uuid.uuid4().hex[:8]}")
    notes = b.create(
        "notes.md",
        "discovery",
        "# Notes\n\nété 🚀\n",
        primary=True,
        session_id="s1",
        expected_path="discovery/notes.md",
    )
    payload = b.create("payload", "discovery", "placeholder", session_id="s1")
    b.upload(  # invalid UTF-8 declared as binary
        payload, b"\xff\xfe\xc3(" + rng.randbytes(64 * 1024), "application/octet-stream", "p.bin"
    )
    payload.expected_path = "discovery/p.bin"
    empty = b.create("empty", "discovery", "placeholder")
    b.upload(empty, b"", "text/plain", "empty.txt")
    empty.expected_path = "discovery/empty.txt"
    bad_text = b.create("bad-text", "discovery", "placeholder")
    b.upload(bad_text, b"caf\xe9 \xed\xa0\x80 latin-1 in text/plain", "text/plain")
    # no filename: the title names it, and its type gives the extension it lacks
    bad_text.expected_path = "discovery/bad-text.txt"
    gone = b.create("to-delete.md", "discovery", "soon gone")
    b.delete(gone)

    # design: a primary demoted by a later one, lineage to content that changes afterwards
    b.create("draft.md", "design", "v0", primary=True, expected_path="design/draft.md")
    diagram = b.create(
        "diagram",
        "design",
        "placeholder",
        primary=True,
        session_id="s2",
        parents=(notes, payload),
    )
    b.upload_multipart(diagram, rng.randbytes(3 * MiB + 17), "image/png", b"diagram.png")
    diagram.expected_path = "design/diagram.png"
    b.upload(notes, b"# Notes v2\n", "text/markdown", "notes.md")  # after linking
    first = b.create("Report", "design", "r1", expected_path="design/Report.md")
    second = b.create("report", "design", "r2")
    second.expected_path = f"design/report ({second.id[:8]}).md"
    third = b.create("Report", "design", "r3")
    third.expected_path = f"design/Report ({third.id[:8]}).md"
    b.create("notes.md", "design", "other notes", expected_path="design/notes.md")
    assert first.expected_path

    # the null phase, with every hostile title
    b.create("x", None, "null-phase x", primary=True, expected_path="_no_phase/x.md")
    for n, title in enumerate(HOSTILE_TITLES):
        b.create(title, None, f"hostile {n}")
    up = b.create("uploaded", None, "placeholder")
    b.upload(up, b"#!/bin/sh\necho pwned\n", "text/x-shellscript", "../../evil.sh")
    up.expected_path = "_no_phase/evil.sh"
    win = b.create("win", None, "placeholder")
    b.upload_multipart(win, b"@echo off\r\n", "text/plain", b"..\\..\\win.bat")
    win.expected_path = "_no_phase/win.bat"
    ctl = b.create("ctl", None, "placeholder")
    b.upload(ctl, b"\x00\x01binary", "application/octet-stream", "bad\x00na\r\nme.txt")
    ctl.expected_path = "_no_phase/badname.txt"
    dots = b.create("dots-title", None, "placeholder")
    b.upload(dots, b"dots", "text/plain", "..")  # no usable filename: the title names it
    dots.expected_path = "_no_phase/dots-title.txt"

    # hostile phase ids; '..' sanitises to the null phase's folder
    b.create("passwd", "../../etc", "root:x:0:0")
    dotdot = b.create("x", "..", "dot-dot phase x")
    dotdot.expected_path = f"_no_phase/x ({dotdot.id[:8]}).md"
    b.create("deliverable", "a/b", "primary in a/b", primary=True)

    # a phase whose only artifact (a primary) is deleted: gone from every export
    b.delete(b.create("only.md", "vanished", "bye", primary=True))
    # another workflow's artifacts stay out
    r = http.post(
        "/artifacts",
        json={
            "workflow_id": b.wf.id + "-other",
            "artifact_type": "text",
            "title": "notes.md",
            "phase_id": "discovery",
            "content": "not this workflow",
        },
    )
    assert r.status_code == 201
    return b.wf


# -- reading archives ------------------------------------------------------------------------


def read_archive(fmt: str, data: bytes) -> list[tuple[str, bytes]]:
    """(member name, bytes) in archive order; every member a plain file."""
    out = []
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            assert z.testzip() is None
            for info in z.infolist():
                assert not info.is_dir()
                # names outside ASCII must be flagged UTF-8, or readers decode them as cp437
                assert bool(info.flag_bits & 0x800) == (not info.filename.isascii())
                out.append((info.filename, z.read(info)))
    else:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as t:
            for member in t.getmembers():
                assert member.isreg(), member.name
                assert member.mode == 0o644
                extracted = t.extractfile(member)
                assert extracted is not None
                out.append((member.name, extracted.read()))
    return out


def assert_safe_name(name: str) -> None:
    """What any extractor may trust: relative, inside the root, one folder deep."""
    assert name == "manifest.json" or name.count("/") == 1, name
    assert not name.startswith("/"), name
    assert "\\" not in name, name
    assert not CONTROL.search(name), name
    assert not re.match(r"[A-Za-z]:", name), name
    for segment in name.split("/"):
        assert segment not in ("", ".", ".."), name
        assert segment == segment.strip(), name
        assert len(segment.encode()) <= 255, name


def extract(fmt: str, data: bytes, into: Path) -> dict[str, bytes]:
    """Extract with the stdlib to a real directory; every file it produced, by relative path."""
    into.mkdir()
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            z.extractall(into)
    else:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as t:
            t.extractall(into, filter="data")
    found = {}
    for path in into.rglob("*"):
        assert path.resolve().is_relative_to(into.resolve())
        assert not path.is_symlink()
        if path.is_file():
            found[path.relative_to(into).as_posix()] = path.read_bytes()
    return found


def export(http: httpx.Client, workflow_id: str, fmt: str, scope: str = "all") -> httpx.Response:
    segment = quote(workflow_id, safe="")  # one path segment, `/` as %2F
    r = http.get(f"/store/workflows/{segment}/export", params={"format": fmt, "scope": scope})
    assert r.status_code == 200, r.text
    return r


def expected_order(wf: Workflow, records: dict[str, dict[str, Any]]) -> list[str]:
    """Phases by first (live) activity, then creation order (the documented archive order)."""
    live = wf.live()
    first: dict[str | None, str] = {}
    for item in live:
        at = records[item.id]["created_at"]
        first[item.phase_id] = min(first.get(item.phase_id, at), at)
    live.sort(key=lambda i: (first[i.phase_id], records[i.id]["created_at"], i.id))
    return [i.id for i in live]


def api_records(http: httpx.Client, wf: Workflow) -> dict[str, dict[str, Any]]:
    out = {}
    for item in wf.live():
        r = http.get(f"/artifacts/{item.id}", params={"include_content": "false"})
        assert r.status_code == 200
        out[item.id] = r.json()
    return out


def check_export(
    http: httpx.Client, wf: Workflow, fmt: str, scope: str, data: bytes, tmp: Path
) -> dict[str, Any]:
    """The whole contract of one archive; returns its manifest."""
    records = api_records(http, wf)
    members = read_archive(fmt, data)
    names = [name for name, _ in members]
    for name in names:
        assert_safe_name(name)
    assert len({n.lower() for n in names}) == len(names), names  # unique, even case-folded
    assert names[0] == "manifest.json"
    manifest = json.loads(members[0][1].decode("utf-8"))
    assert set(manifest) == {"workflow_id", "scope", "exported_at", "files"}
    assert manifest["workflow_id"] == wf.id
    assert manifest["scope"] == scope
    assert ISO.fullmatch(manifest["exported_at"])

    wanted = expected_order(wf, records)
    if scope == "deliverables":
        wanted = [i for i in wanted if wf.by_id(i).primary]
    files = manifest["files"]
    assert [f["artifact_id"] for f in files] == wanted
    assert names[1:] == [f["path"] for f in files]
    content = dict(members)
    for f in files:
        item, rec = wf.by_id(f["artifact_id"]), records[f["artifact_id"]]
        assert set(f) == FILE_KEYS
        assert f == {
            "path": f["path"],
            "artifact_id": item.id,
            "version": item.version,
            "sha256": sha(item.data),
            "size_bytes": len(item.data),
            "content_type": item.content_type,
            "title": item.title,
            "artifact_type": "text",
            "phase_id": item.phase_id,
            "session_id": item.session_id,
            "is_primary_deliverable": item.primary,
            "created_at": rec["created_at"],
            "derived_from": item.parents,
        }
        assert content[f["path"]] == item.data
        # the API agrees: the record's hash and size, and the download's bytes
        assert (rec["content_hash"], rec["size_bytes"]) == (f["sha256"], f["size_bytes"])
        assert rec["is_primary_deliverable"] == item.primary
        if item.expected_path is not None:
            assert f["path"] == item.expected_path
        folder = f["path"].split("/")[0]
        if item.phase_id in (None, "", ".."):
            assert folder == "_no_phase"
        elif "/" not in item.phase_id and "." not in item.phase_id:
            assert folder == item.phase_id
    for f in files:
        download = http.get(f"/artifacts/{f['artifact_id']}/download")
        assert download.status_code == 200
        assert sha(download.content) == f["sha256"]
        assert len(download.content) == f["size_bytes"]
    # and the real files on disk are exactly the members
    on_disk = extract(fmt, data, tmp / f"x-{fmt}-{scope}")
    assert on_disk == content
    return manifest


# -- streaming, disconnects, missing blobs -------------------------------------------------


def vm(pid: int, key: str) -> int:
    """A /proc/<pid>/status figure in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(key)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def open_files(pid: int) -> list[str]:
    """Paths of the server's open regular files (sockets, pipes, anon inodes left out)."""
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("/") and not target.startswith("/dev/"):
            out.append(target)
    return out


def data_files(live: Live) -> set[str]:
    """Every file under the data dir except the blobs themselves."""
    root = live.data_dir
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).as_posix().startswith("blobs/sha256/")
    }


def allowed_data_files(live: Live) -> None:
    """Only the database (SQLite), the server's log and blob-store bookkeeping, never a
    staging or temporary file."""
    for name in data_files(live):
        assert re.fullmatch(
            r"artifacts\.db(-wal|-shm|-journal)?|server-\d+\.log|signing\.key", name
        ), name
    assert list((live.data_dir / "blobs" / "tmp").iterdir()) == []


def blob_fds(live: Live) -> list[str]:
    blobs = str((live.data_dir / "blobs").resolve())
    return [f for f in open_files(live.pid) if f.startswith(blobs)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def assert_idle(pid: int, seconds: float = 1.0) -> None:
    """Nothing left running: a build that outlived its client would burn CPU here."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    used = cpu_seconds(pid) - before
    assert used < 0.2 * seconds, f"server used {used:.2f} s of CPU in {seconds} s while idle"


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {what}")
        time.sleep(0.05)


def upload_stream(http: httpx.Client, item_id: str, size: int, seed: int) -> str:
    """`size` bytes of pseudo-random data as a chunked upload; returns their sha256."""
    rng = random.Random(seed)
    block = rng.randbytes(MiB)
    digest = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        for n in range(0, size, MiB):
            piece = (f"{seed}:{n}:".encode() + block)[: min(MiB, size - n)]
            digest.update(piece)
            yield piece

    r = http.post(
        f"/artifacts/{item_id}/upload",
        content=chunks(),
        headers={"content-type": "application/octet-stream"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["content_hash"] == digest.hexdigest()
    return digest.hexdigest()


@dataclass
class BigWorkflow:
    id: str
    files: dict[str, tuple[str, int]]  # artifact id -> (sha256, size)


def build_big(http: httpx.Client, parts: int, part_size: int, prefix: str) -> BigWorkflow:
    b = Builder(http, f"{prefix}-{uuid.uuid4().hex[:8]}")
    files = {}
    for n in range(parts):
        item = b.create(f"part-{n}.bin", f"phase-{n % 2}", "placeholder")
        files[item.id] = (upload_stream(http, item.id, part_size, seed=n + 1000), part_size)
    return BigWorkflow(b.wf.id, files)


@contextmanager
def watching(live: Live) -> Iterator[dict[str, Any]]:
    """Poll the data dir and the server's open files while the body flows."""
    seen: dict[str, Any] = {"data_files": set(), "open_files": set(), "rss": 0}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            seen["data_files"] |= data_files(live)
            seen["open_files"] |= set(open_files(live.pid))
            seen["rss"] = max(seen["rss"], vm(live.pid, "VmRSS"))
            stop.wait(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(5)


def assert_nothing_staged(live: Live, seen: dict[str, Any]) -> None:
    for name in seen["data_files"]:
        assert re.fullmatch(
            r"artifacts\.db(-wal|-shm|-journal)?|server-\d+\.log|signing\.key", name
        ), name
    data = str(live.data_dir.resolve())
    blobs = str((live.data_dir / "blobs" / "sha256").resolve())
    for path in seen["open_files"]:
        assert not path.endswith(" (deleted)"), path  # no anonymous temporary file either
        if path.startswith(data):
            assert path.startswith(blobs) or re.search(
                r"/(artifacts\.db(-wal|-shm|-journal)?|server-\d+\.log|signing\.key)$", path
            ), path


def stream_to_file(http: httpx.Client, url: str, out: Path) -> tuple[float, int]:
    """Read the body incrementally into `out`; (seconds to the first byte, total bytes)."""
    start, first, total = time.monotonic(), None, 0
    with http.stream("GET", url, timeout=60) as r, out.open("wb") as f:
        assert r.status_code == 200
        for chunk in r.iter_raw(256 * 1024):
            if first is None:
                first = time.monotonic() - start
            f.write(chunk)
            total += len(chunk)
    assert first is not None
    return first, total


def verify_big_archive(fmt: str, path: Path, big: BigWorkflow) -> None:
    """Hash every member while reading it in pieces (the archive is never held in memory)."""
    got: dict[str, tuple[str, int]] = {}
    manifest: dict[str, Any] = {}

    def consume(name: str, stream: Any) -> None:
        nonlocal manifest
        if name == "manifest.json":
            manifest = json.loads(stream.read())
            return
        digest, size = hashlib.sha256(), 0
        while piece := stream.read(MiB):
            digest.update(piece)
            size += len(piece)
        got[name] = (digest.hexdigest(), size)

    if fmt == "zip":
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                with z.open(info) as stream:
                    consume(info.filename, stream)
    else:
        with tarfile.open(path, mode="r:") as t:
            for member in t:
                stream = t.extractfile(member)
                assert stream is not None
                consume(member.name, stream)
    by_path = {f["path"]: f for f in manifest["files"]}
    assert set(by_path) == set(got)
    for path_, f in by_path.items():
        assert big.files[f["artifact_id"]] == (f["sha256"], f["size_bytes"]) == got[path_]
    assert len(got) == len(big.files)
