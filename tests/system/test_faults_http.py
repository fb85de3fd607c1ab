"""Storage faults over real HTTP, against real `artifacts serve` processes: a full disk answers
507 `insufficient_storage`, a failing fsync 503 `storage_unavailable`, and neither leaves a
staging file, a partial blob, a row or a changed record behind; the server stays up and, once
the fault is gone (or, for a full disk, without freeing anything), takes uploads again.

How the faults reach the server process (nothing of ours is mocked):

- disk full, "tmpfs": the blob directory (only it: the SQLite file or PostgreSQL and the server
  log stay on the ordinary disk) is a small tmpfs mounted for the test; the kernel itself answers
  ENOSPC. Skipped, with the reason, where mounting is not permitted.
- disk full, "injected" (also the fallback where no tmpfs can be mounted): a sitecustomize.py on
  the server's PYTHONPATH makes os.write on a staging file (blobs/tmp/) write short, then fail
  with ENOSPC, once the file would pass a byte budget, while a trigger file exists: as if that
  many bytes were free.
- fsync: a C shim compiled here with gcc and LD_PRELOADed into the server makes fsync/fdatasync
  fail with EIO for file descriptors whose path starts with the prefix written in a trigger file
  (no trigger file: no faults). It logs every call it sees, so the tests assert that the fault
  was actually hit, and hit where they meant it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage.digest import blob_relpath
from tests.support.databases import count_rows
from tests.support.servers import Server, start_server

MiB = 1 << 20
KiB = 1 << 10
TABLES = ("artifacts", "blobs", "events", "lineage")
FIELDS = {"workflow_id": "wf-faults", "artifact_type": "text", "phase_id": "p1"}
KINDS = ("json_create", "multipart_create", "upload_raw", "upload_multipart")
TMPFS_SIZE = 4 * MiB
ENOSPC_BUDGET = 1 * MiB  # bytes a staging file may hold while the injected disk is "full"

pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------------- fault injectors

FSYNC_SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* fsync/fdatasync, except that they fail with EIO on descriptors whose path starts with the
   prefix held in the file $FSYNC_FAULT_TRIGGER, while that file exists. Every call is logged to
   $FSYNC_FAULT_LOG as "<ok|EIO> <function> <path>". */

static void note(const char *outcome, const char *fn, const char *target) {
    const char *log = getenv("FSYNC_FAULT_LOG");
    if (log == NULL) return;
    char line[4300];
    int n = snprintf(line, sizeof line, "%s %s %s\n", outcome, fn, target);
    if (n < 0) return;
    if ((size_t)n >= sizeof line) n = sizeof line - 1;
    int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return;
    ssize_t ignored = write(fd, line, (size_t)n);
    (void)ignored;
    close(fd);
}

static int should_fail(int fd, const char *fn) {
    int saved = errno;
    char proc[64], target[4096], prefix[4096];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(proc, target, sizeof target - 1);
    if (len < 0) len = 0;
    target[len] = '\0';
    int fail = 0;
    const char *trigger = getenv("FSYNC_FAULT_TRIGGER");
    if (trigger != NULL && len > 0) {
        int t = open(trigger, O_RDONLY | O_CLOEXEC);
        if (t >= 0) {
            ssize_t m = read(t, prefix, sizeof prefix - 1);
            close(t);
            if (m > 0) {
                prefix[m] = '\0';
                prefix[strcspn(prefix, "\n")] = '\0';
                fail = prefix[0] != '\0' && strncmp(target, prefix, strlen(prefix)) == 0;
            }
        }
    }
    note(fail ? "EIO" : "ok", fn, len > 0 ? target : "?");
    errno = saved;
    return fail;
}

int fsync(int fd) {
    static int (*real)(int);
    if (should_fail(fd, "fsync")) { errno = EIO; return -1; }
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (should_fail(fd, "fdatasync")) { errno = EIO; return -1; }
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
"""

ENOSPC_SITECUSTOMIZE = '''
"""Test fault injector (tests/system/test_faults_http.py): while $ENOSPC_FAULT_TRIGGER exists,
holding "<path prefix> <budget>", os.write on a file under the prefix writes at most up to
<budget> bytes of file size (a short write), then fails with ENOSPC; each failure is logged."""
import errno
import os

_TRIGGER = os.environ.get("ENOSPC_FAULT_TRIGGER")
_LOG = os.environ.get("ENOSPC_FAULT_LOG")

if _TRIGGER and _LOG:
    _real_write = os.write

    def _write(fd, data, /):
        try:
            with open(_TRIGGER) as f:
                prefix, budget = f.read().split()
        except FileNotFoundError:
            return _real_write(fd, data)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return _real_write(fd, data)
        if not target.startswith(prefix):
            return _real_write(fd, data)
        room = int(budget) - os.fstat(fd).st_size
        if room <= 0:
            with open(_LOG, "a") as f:
                f.write(f"ENOSPC write {target}\\n")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _real_write(fd, memoryview(data)[:room])

    os.write = _write
'''


@dataclass
class FaultLog:
    """The lines a fault injector appended, read as `(outcome, call, path)`."""

    path: Path

    def entries(self) -> list[tuple[str, str, str]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        return [tuple(line.split(" ", 2)) for line in lines]  # type: ignore[misc]

    def failures(self) -> list[tuple[str, str, str]]:
        return [e for e in self.entries() if e[0] != "ok"]


def compile_fsync_shim(tmp_path: Path) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler (gcc/cc) to build the LD_PRELOAD fsync shim")
    src = tmp_path / "fsync_fault.c"
    lib = tmp_path / "fsync_fault.so"
    src.write_text(FSYNC_SHIM_C)
    done = subprocess.run(
        [gcc, "-shared", "-fPIC", "-O1", "-Wall", "-o", str(lib), str(src), "-ldl"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"the fsync shim did not compile:\n{done.stderr}"
    return lib


@contextmanager
def mounted_tmpfs(path: Path, size: int) -> Iterator[None]:
    """A tmpfs of `size` bytes at `path` for the duration; skips when mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount here; the 'injected' variant covers a full disk instead")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            f"mounting a tmpfs is not permitted here ({done.stderr.strip() or done.returncode});"
            " the 'injected' variant covers a full disk instead"
        )
    try:
        assert os.path.ismount(path)
        yield
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


# --------------------------------------------------------------------------------- helpers


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(kind: str, size: int, seed: int) -> bytes:
    """`size` fresh bytes; ASCII for a JSON create (its content is text), binary otherwise."""
    raw = random.Random(seed).randbytes(size)
    if kind == "json_create":
        return base64.b64encode(raw)[:size]
    return raw


def send(kind: str, http: httpx.Client, target: str, data: bytes, title: str) -> httpx.Response:
    """One write of `data` through the route `kind` (uploads replace `target`'s content)."""
    if kind == "json_create":
        body = {**FIELDS, "title": title, "content": data.decode("ascii")}
        return http.post("/artifacts", json=body)
    if kind == "multipart_create":
        return http.post(
            "/artifacts",
            data={**FIELDS, "title": title},
            files={"file": (f"{title}.bin", data, "application/octet-stream")},
        )
    if kind == "upload_raw":
        return http.post(
            f"/artifacts/{target}/upload",
            content=data,
            params={"filename": f"{title}.bin"},
            headers={"Content-Type": "application/octet-stream"},
        )
    if kind == "upload_multipart":
        return http.post(
            f"/artifacts/{target}/upload",
            files={"file": (f"{title}.bin", data, "application/octet-stream")},
        )
    raise AssertionError(kind)


SUCCESS = {"json_create": 201, "multipart_create": 201, "upload_raw": 200, "upload_multipart": 200}


@dataclass
class Stored:
    id: str
    data: bytes = field(repr=False)


@dataclass
class State:
    staging: list[str]
    blob_files: dict[str, int]
    rows: dict[str, int]
    records: dict[str, Any]


@dataclass
class Live:
    server: Server
    database_url: str
    http: httpx.Client
    stored: list[Stored] = field(default_factory=list, repr=False)

    @property
    def blobs(self) -> Path:
        return (self.server.data_dir / "blobs").resolve()

    def staging(self) -> list[str]:
        return sorted(p.name for p in (self.blobs / "tmp").iterdir())

    def blob_files(self) -> dict[str, int]:
        """relpath -> size of every non-directory under sha256/."""
        out = {}
        for p in sorted((self.blobs / "sha256").rglob("*")):
            st = p.lstat()
            if not stat.S_ISDIR(st.st_mode):
                out[p.relative_to(self.blobs).as_posix()] = st.st_size
        return out

    def has_blob(self, digest: str) -> bool:
        return (self.blobs / blob_relpath(digest)).exists()

    def free_bytes(self) -> int:
        vfs = os.statvfs(self.blobs)
        return vfs.f_bavail * vfs.f_frsize

    def record(self, aid: str) -> dict[str, Any]:
        r = self.http.get(f"/artifacts/{aid}")
        assert r.status_code == 200, r.text
        got: dict[str, Any] = r.json()
        return got

    def state(self) -> State:
        return State(
            staging=self.staging(),
            blob_files=self.blob_files(),
            rows={t: count_rows(self.database_url, t) for t in TABLES},
            records={s.id: self.record(s.id) for s in self.stored},
        )

    def store(self, kind: str, data: bytes, title: str, target: str = "") -> Stored:
        r = send(kind, self.http, target, data, title)
        assert r.status_code == SUCCESS[kind], (kind, r.status_code, r.text)
        body = r.json()
        aid = body["id"] if kind.endswith("create") else body["artifact_id"]
        assert body["content_hash"] == sha(data) and body["size_bytes"] == len(data), body
        stored = Stored(aid, data)
        self.stored = [s for s in self.stored if s.id != aid] + [stored]
        return stored

    def assert_downloads(self) -> None:
        """Every artifact stored so far still serves exactly its bytes."""
        for s in self.stored:
            r = self.http.get(f"/artifacts/{s.id}/download")
            assert r.status_code == 200, r.text
            assert r.content == s.data, f"artifact {s.id} changed"
            assert r.headers["etag"] == f'"{sha(s.data)}"'

    def assert_alive(self) -> None:
        assert self.server.process.poll() is None, self.server.log.read_text()
        assert self.http.get("/healthz").status_code == 200

    def assert_nothing_left(self, before: State, data: bytes, what: str) -> None:
        """After a failed write of `data`: no staging file, no blob of it, nothing else under
        sha256/ changed, no row added or removed, every record as it was, the server up."""
        after = self.state()
        assert after.staging == [], f"{what}: staging files left in blobs/tmp/"
        assert not self.has_blob(sha(data)), f"{what}: a blob of the refused bytes exists"
        assert after.blob_files == before.blob_files, f"{what}: sha256/ changed"
        assert after.rows == before.rows, f"{what}: row counts changed"
        assert after.records == before.records, f"{what}: a stored record changed"
        self.assert_downloads()
        self.assert_alive()


def assert_error(r: httpx.Response, status: int, code: str, what: str) -> None:
    assert r.status_code == status, (what, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), what
    body = r.json()
    assert set(body) == {"detail", "code"}, (what, body)
    assert body["code"] == code, (what, body)
    assert isinstance(body["detail"], str) and body["detail"], (what, body)


@contextmanager
def serving(data_dir: Path, database_url: str, env: dict[str, str]) -> Iterator[Live]:
    server = start_server(
        data_dir, database_url=database_url, env={"ARTIFACTS_GC_INTERVAL": "0", **env}
    )
    try:
        with server.client() as http:
            yield Live(server, database_url, http)
    finally:
        server.stop()


def seed(live: Live) -> str:
    """Artifacts stored before any fault (one per route); returns the upload target's id."""
    target = live.store("json_create", b"# target\nbefore the faults\n", "target").id
    live.store("multipart_create", payload("multipart_create", 64 * KiB, 1), "earlier-bin")
    live.store("json_create", payload("json_create", 3000, 2), "earlier-text")
    return target


def assert_metadata_writes_work(live: Live, target: str, title: str) -> None:
    r = live.http.put(f"/artifacts/{target}", json={"title": title, "metadata": {"t": title}})
    assert r.status_code == 200, r.text
    assert r.json() == {"artifact_id": target, "status": "updated"}
    got = live.record(target)
    assert (got["title"], got["metadata"]) == (title, {"t": title})


# ------------------------------------------------------------------------------- disk full


@dataclass
class FullDisk:
    """How a test fills the blob store's disk, and how big a write must be to not fit."""

    mode: str
    env: dict[str, str]
    turn_on: Callable[[], None]
    log: FaultLog | None  # the injector's log ("injected" only)

    def too_big(self, live: Live) -> int:
        room = live.free_bytes() if self.mode == "tmpfs" else ENOSPC_BUDGET
        return room + 512 * KiB


@pytest.fixture(params=["tmpfs", "injected"])
def full_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FullDisk]:
    blobs = tmp_path / "data" / "blobs"
    if request.param == "tmpfs":
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root; the 'injected' variant covers a full disk")
        with mounted_tmpfs(blobs, TMPFS_SIZE):
            yield FullDisk("tmpfs", {}, lambda: None, None)
        return
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(ENOSPC_SITECUSTOMIZE)
    trigger = tmp_path / "enospc.trigger"
    log = FaultLog(tmp_path / "enospc.log")
    pythonpath = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env = {
        "PYTHONPATH": pythonpath,
        "ENOSPC_FAULT_TRIGGER": str(trigger),
        "ENOSPC_FAULT_LOG": str(log.path),
    }

    def turn_on() -> None:
        trigger.write_text(f"{blobs.resolve() / 'tmp'}/ {ENOSPC_BUDGET}")

    yield FullDisk("injected", env, turn_on, log)


def test_disk_full_is_507_and_leaves_nothing(
    tmp_path: Path, database_url: str, full_disk: FullDisk
) -> None:
    with serving(tmp_path / "data", database_url, full_disk.env) as live:
        if full_disk.mode == "tmpfs":
            assert os.path.ismount(live.blobs)
            # only the blobs are on the small disk: the server log (and SQLite file) are not
            assert live.server.log.stat().st_dev != live.blobs.stat().st_dev
        target = seed(live)  # small writes succeed
        full_disk.turn_on()

        for seq, kind in enumerate(KINDS):
            free = live.free_bytes()
            data = payload(kind, full_disk.too_big(live), 100 + seq)
            assert full_disk.mode != "tmpfs" or len(data) > free
            before = live.state()
            r = send(kind, live.http, target, data, f"big-{kind}")
            assert_error(r, 507, "insufficient_storage", kind)
            live.assert_nothing_left(before, data, kind)
            if full_disk.mode == "tmpfs":
                # the refused staging file is gone and closed: its space came back
                assert live.free_bytes() == free, f"{kind}: disk space not given back"
            if full_disk.log is not None:
                assert [(o, c) for o, c, _ in full_disk.log.failures()] == [("ENOSPC", "write")] * (
                    seq + 1
                ), f"{kind}: the injected ENOSPC was not hit exactly once"
                assert full_disk.log.failures()[-1][2].startswith(f"{live.blobs}/tmp/put-")

        # metadata lives in the database, which is not on the full disk
        assert_metadata_writes_work(live, target, "renamed while the disk is full")
        # nothing freed: small writes through every route still succeed
        for seq, kind in enumerate(KINDS):
            live.store(kind, payload(kind, 20 * KiB, 200 + seq), f"small-{kind}", target)
            assert live.staging() == []
        live.assert_downloads()
        live.assert_alive()
        assert live.http.get("/readyz").status_code == 200


# ---------------------------------------------------------------------------- fsync faults


@dataclass
class FsyncFaults:
    env: dict[str, str]
    trigger: Path
    log: FaultLog
    lib: Path

    def fail_under(self, prefix: Path) -> None:
        self.trigger.write_text(f"{prefix}")

    def off(self) -> None:
        self.trigger.unlink(missing_ok=True)


@pytest.fixture
def fsync_faults(tmp_path: Path) -> FsyncFaults:
    lib = compile_fsync_shim(tmp_path)
    trigger = tmp_path / "fsync.trigger"
    log = FaultLog(tmp_path / "fsync.log")
    preload = " ".join(p for p in (str(lib), os.environ.get("LD_PRELOAD")) if p)
    env = {
        "LD_PRELOAD": preload,
        "FSYNC_FAULT_TRIGGER": str(trigger),
        "FSYNC_FAULT_LOG": str(log.path),
    }
    return FsyncFaults(env, trigger, log, lib)


def assert_shim_loaded(live: Live, faults: FsyncFaults) -> None:
    maps = Path(f"/proc/{live.server.process.pid}/maps").read_text()
    assert str(faults.lib) in maps, "the fsync shim is not loaded into the server"
    staging_syncs = [
        e for e in faults.log.entries() if e[:2] == ("ok", "fsync") and "/tmp/put-" in e[2]
    ]
    assert staging_syncs, "the server's staging fsync never reached the shim"


def test_fsync_failure_is_503_and_leaves_nothing(
    tmp_path: Path, database_url: str, fsync_faults: FsyncFaults
) -> None:
    with serving(tmp_path / "data", database_url, fsync_faults.env) as live:
        target = seed(live)
        assert_shim_loaded(live, fsync_faults)
        assert fsync_faults.log.failures() == []
        staging_prefix = f"{live.blobs}/tmp/"
        fsync_faults.fail_under(Path(staging_prefix))

        for seq, kind in enumerate(KINDS):
            data = payload(kind, 300 * KiB, 300 + seq)
            before = live.state()
            r = send(kind, live.http, target, data, f"eio-{kind}")
            assert_error(r, 503, "storage_unavailable", kind)
            failures = fsync_faults.log.failures()
            assert len(failures) == seq + 1, f"{kind}: the EIO was not hit exactly once"
            assert failures[-1][:2] == ("EIO", "fsync")
            assert failures[-1][2].startswith(f"{staging_prefix}put-"), failures[-1]
            live.assert_nothing_left(before, data, kind)

        # the database is unaffected (SQLite fsyncs its own files through the shim: still ok)
        assert_metadata_writes_work(live, target, "renamed while fsync fails")
        assert live.http.get("/readyz").status_code == 200

        fsync_faults.off()
        hits = len(fsync_faults.log.failures())
        for seq, kind in enumerate(KINDS):  # the very bytes that failed now store fine
            live.store(kind, payload(kind, 300 * KiB, 300 + seq), f"again-{kind}", target)
        assert len(fsync_faults.log.failures()) == hits
        assert live.staging() == []
        live.assert_downloads()
        live.assert_alive()


def _sharing_fanout(digest: str, seed: int) -> bytes:
    """Bytes whose digest lands in the same sha256/ab/cd/ directory as `digest`."""
    rng = random.Random(seed)
    while True:
        data = rng.randbytes(1000)
        if sha(data)[:4] == digest[:4]:
            return data


def _fresh_fanout(live: Live, seed: int) -> bytes:
    """Bytes whose sha256/ab/ directory does not exist yet."""
    rng = random.Random(seed)
    while True:
        data = rng.randbytes(1000)
        if not (live.blobs / blob_relpath(sha(data))).parent.parent.exists():
            return data


def test_directory_fsync_failure_is_503(
    tmp_path: Path, database_url: str, fsync_faults: FsyncFaults
) -> None:
    """EIO on the fsync of a sha256/ directory. For a new fan-out directory it comes before
    link(): nothing is left. For an existing one it comes after link(): the complete, sealed
    blob keeps its name (a concurrent put may already rely on it; GC reclaims it if unused) but
    no row names it; uploading the same bytes again then succeeds (a dedupe hit that makes the
    entry durable)."""
    with serving(tmp_path / "data", database_url, fsync_faults.env) as live:
        target = seed(live)
        assert_shim_loaded(live, fsync_faults)
        sha_dir = live.blobs / "sha256"

        fresh = _fresh_fanout(live, 400)
        before = live.state()
        fsync_faults.fail_under(sha_dir)
        r = send("upload_raw", live.http, target, fresh, "fresh-fanout")
        assert_error(r, 503, "storage_unavailable", "new fan-out directory")
        failures = fsync_faults.log.failures()
        assert len(failures) == 1 and failures[0][:2] == ("EIO", "fsync"), failures
        assert failures[0][2] == str(sha_dir), failures
        live.assert_nothing_left(before, fresh, "new fan-out directory")

        existing = live.stored[-1].data
        shared = _sharing_fanout(sha(existing), 401)
        before = live.state()
        r = send("multipart_create", live.http, target, shared, "shared-fanout")
        assert_error(r, 503, "storage_unavailable", "existing fan-out directory")
        failures = fsync_faults.log.failures()
        final = live.blobs / blob_relpath(sha(shared))
        assert len(failures) == 2 and failures[1] == ("EIO", "fsync", str(final.parent))
        after = live.state()
        assert after.staging == []
        assert after.rows == before.rows
        assert after.records == before.records
        assert final.read_bytes() == shared  # complete and sealed, just unreferenced
        assert stat.S_IMODE(final.stat().st_mode) == 0o444
        live.assert_downloads()
        live.assert_alive()

        fsync_faults.off()
        for kind, data in (("upload_raw", fresh), ("multipart_create", shared)):
            live.store(kind, data, f"again-{kind}", target)
        assert live.staging() == []
        live.assert_downloads()
        r = live.http.get("/artifacts", params={"workflow_id": FIELDS["workflow_id"]})
        assert r.status_code == 200 and len(r.json()) == 4, r.text
        assert json.loads(r.text)[0]["content_hash"] == sha(shared)


def test_sqlite_on_a_full_disk_is_507_and_keeps_what_it_had(tmp_path: Path) -> None:
    """The whole data directory (SQLite file, WAL and blobs) on a small tmpfs: writes that no
    longer fit answer 507 whether the blob store or SQLite runs out first, never 500, and
    everything committed before stays readable."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    data = tmp_path / "data"
    data.mkdir()
    with mounted_tmpfs(data, 3 << 20):
        from storage.db.engine import sqlite_url
        from storage.db.migrate import upgrade

        url = sqlite_url(data / "artifacts.db")
        upgrade(url)
        log_dir = tmp_path / "log"
        server = start_server(
            log_dir, env={"ARTIFACTS_GC_INTERVAL": "0", "ARTIFACTS_DATA_DIR": str(data)}
        )
        try:
            with server.client() as http:
                stored: dict[str, bytes] = {}
                statuses: list[int] = []
                for i in range(400):
                    meta = {"pad": "m" * 60_000, "i": i}
                    content = f"content {i} ".encode() * 100
                    r = http.post(
                        "/artifacts",
                        json={
                            "workflow_id": "full", "artifact_type": "text", "title": f"a{i}",
                            "content": content.decode(), "metadata": meta,
                        },
                    )  # fmt: skip
                    statuses.append(r.status_code)
                    if r.status_code == 201:
                        stored[r.json()["id"]] = content
                        continue
                    assert_error(r, 507, "insufficient_storage", f"create {i}")
                    if statuses.count(507) >= 5:
                        break
                assert 507 in statuses and stored, statuses
                assert 500 not in statuses
                assert http.get("/healthz").status_code == 200
                for aid, content in stored.items():
                    got = http.get(f"/artifacts/{aid}/download")
                    assert got.status_code == 200 and got.content == content
                listed = http.get("/artifacts", params={"workflow_id": "full", "limit": 200})
                assert {a["id"] for a in listed.json()} <= set(stored)
                assert not list((data / "blobs" / "tmp").iterdir())
        finally:
            server.stop()
