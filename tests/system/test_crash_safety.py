"""The SIGKILL crash loop (issue 6): 200 concurrent uploads against a real `artifacts serve`,
the server killed with SIGKILL at random moments and restarted on the same blob directory and
database, then:

- every upload that was answered 2xx is present, once, and byte-identical;
- every keyed upload that was not answered, retried with the same key and the same request,
  succeeds (409 + Retry-After while a dead holder's lease runs out), and every keyed upload sent
  once more replays its first response (same id, same body bytes, `Idempotent-Replayed: true`);
- an unanswered unkeyed upload took effect at most once (0 or 1 artifacts with its title;
  an unanswered replace left either the old bytes or the new ones);
- `fsck --verify-data` is clean; after `gc --grace 0` not one orphan, staging or trash file
  remains, and the row counts add up.

The mix, per seed: 140 multipart creates and 40 JSON creates (`POST /artifacts`) and 20
content replacements (`POST /artifacts/{id}/upload`, multipart or raw) of pre-created
artifacts; sizes from 1 byte to 2 MiB (so kills land mid-body); a quarter reuse the bytes of
another upload (the dedupe path, racing it); half carry an Idempotency-Key. Everything in the
plan (contents, keys, order, kill points) comes from random.Random(seed); thread scheduling
does not, so a failure names its seed and the per-upload story (`Upload.story`).

Versions (issue 17), test_sigkill_during_concurrent_uploads_to_one_artifact: several clients
upload to the same artifact at once, a third of the uploads with If-Match (the ETag the client
last saw), the server SIGKILLed and restarted in each of a few rounds; after each restart every
acknowledged upload is the version it was answered with, byte for byte, the version numbers have
no gap or duplicate, the current version is the newest, every version's bytes are exactly one
sent upload's (no partial version, none of a 412's, none twice), and fsck finds no error.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.databases import count_rows
from tests.support.servers import ROOT, Server, start_server

KiB = 1 << 10
MiB = 1 << 20
UPLOADS = 200
N_JSON = 40
N_REPLACE = 20  # half multipart, half raw
DUPLICATES = UPLOADS // 4
KEYED = UPLOADS // 2
WORKERS = 24
SEEDS = [2024, 77003, 7]  # 2, 3 and 4 kills
# a lease of 2 s outlives a restart (~0.8 s), so a retry right after the storm can still meet
# a dead holder's lease (409 + Retry-After) and must wait it out
SERVER_ENV = {"ARTIFACTS_IDEMPOTENCY_LEASE": "2", "ARTIFACTS_GC_INTERVAL": "0"}
GC_KINDS = {"unreferenced_blob", "blob_without_row", "staging_leftover", "trash_leftover"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------ plan


@dataclass
class Upload:
    index: int
    kind: str  # "form" | "json" (POST /artifacts) | "replace_form" | "replace_raw" (…/upload)
    title: str  # of the artifact it creates, or of the target it replaces
    data: bytes
    key: str | None
    boundary: str
    duplicate_of: int | None = None
    target: str | None = None  # replace: the pre-created artifact's id
    old: bytes | None = None  # replace: the target's bytes before
    # what happened
    status: int | None = None
    body: bytes | None = None
    replayed: bool = False
    error: str | None = None
    interrupted: bool = False  # the transport failed after the request was sent (a kill hit it)
    answered_in: str | None = None  # "storm" | "retry"
    story: list[str] = field(default_factory=list)

    @property
    def creates(self) -> bool:
        return self.kind in ("form", "json")

    @property
    def answered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def answer(self) -> dict[str, Any]:
        assert self.body is not None
        result: dict[str, Any] = json.loads(self.body)
        return result

    @property
    def artifact_id(self) -> str:
        value = self.answer["id"] if self.creates else self.answer["artifact_id"]
        assert isinstance(value, str)
        return value

    def request(self, workflow_id: str) -> tuple[str, dict[str, str], bytes]:
        """(path, headers, body): the same bytes every time it is sent."""
        headers = {"Idempotency-Key": self.key} if self.key else {}
        if self.kind == "json":
            body = {
                "workflow_id": workflow_id,
                "artifact_type": "text",
                "title": self.title,
                "content": self.data.decode(),
                "content_type": "text/plain",
            }
            headers["Content-Type"] = "application/json"
            return "/artifacts", headers, json.dumps(body).encode()
        if self.kind == "replace_raw":
            headers["Content-Type"] = "application/octet-stream"
            return f"/artifacts/{self.target}/upload", headers, self.data
        fields = {}
        path = f"/artifacts/{self.target}/upload"
        if self.kind == "form":
            fields = {"workflow_id": workflow_id, "artifact_type": "other", "title": self.title}
            path = "/artifacts"
        headers["Content-Type"] = f"multipart/form-data; boundary={self.boundary}"
        return path, headers, multipart(self.boundary, fields, f"u{self.index:03d}.bin", self.data)


def multipart(boundary: str, fields: dict[str, str], filename: str, data: bytes) -> bytes:
    out = bytearray()
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    out += (
        f"--{boundary}\r\nContent-Disposition: form-data; "
        f'name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    out += data + f"\r\n--{boundary}--\r\n".encode()
    return bytes(out)


def binary_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.3:
        return rng.randint(1, 4 * KiB)
    if roll < 0.65:
        return rng.randint(4 * KiB, 256 * KiB)
    return rng.randint(256 * KiB, 2 * MiB)


def plan(rng: random.Random, seed: int) -> list[Upload]:
    kinds = (
        ["json"] * N_JSON
        + ["replace_form"] * (N_REPLACE // 2)
        + ["replace_raw"] * (N_REPLACE - N_REPLACE // 2)
        + ["form"] * (UPLOADS - N_JSON - N_REPLACE)
    )
    rng.shuffle(kinds)
    keyed = set(rng.sample(range(UPLOADS), KEYED))
    # duplicates copy an original (never another duplicate); a JSON one needs text to copy
    json_ids = [i for i, k in enumerate(kinds) if k == "json"]
    dups = set(rng.sample(json_ids, N_JSON // 4))
    dups |= set(
        rng.sample([i for i in range(UPLOADS) if kinds[i] != "json"], DUPLICATES - len(dups))
    )
    uploads = []
    for i, kind in enumerate(kinds):
        if kind == "json":
            data = rng.randbytes(rng.randint(1, 32 * KiB)).hex().encode()  # text
        else:
            data = rng.randbytes(binary_size(rng))
        title = f"crash-{seed}-{i:03d}" if kind in ("form", "json") else f"target-{seed}-{i:03d}"
        key = f"crash-{seed}-{i:03d}-{rng.randbytes(6).hex()}" if i in keyed else None
        uploads.append(Upload(i, kind, title, data, key, f"b{rng.randbytes(12).hex()}"))
    originals = [u for u in uploads if u.index not in dups]
    text_originals = [u for u in originals if u.kind == "json"]
    for i in sorted(dups):
        source = rng.choice(text_originals if uploads[i].kind == "json" else originals)
        uploads[i].data = source.data
        uploads[i].duplicate_of = source.index
    return uploads


def kill_points(rng: random.Random) -> list[tuple[int, float]]:
    """2-4 moments, as (uploads finished, then a short jitter in seconds), far enough apart
    that every kill meets a full pipeline of in-flight requests."""
    count = rng.randint(2, 4)
    while True:
        points = sorted(rng.sample(range(20, UPLOADS - 15), count))
        if all(b - a >= WORKERS + 8 for a, b in itertools.pairwise(points)):
            return [(p, rng.uniform(0, 0.08)) for p in points]


# ------------------------------------------------------------------------ server and client


class Fleet:
    """One server at a time on the same data dir and database; kill() starts the next one."""

    def __init__(self, data_dir: Path, database_url: str) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.server: Server = self._start()
        self.up = threading.Event()
        self.up.set()
        self.kills = 0
        self._local = threading.local()

    def _start(self) -> Server:
        return start_server(self.data_dir, database_url=self.database_url, env=SERVER_ENV)

    def url(self) -> str:
        assert self.up.wait(60), "no server came back"
        return self.server.url

    def kill(self) -> None:
        self.up.clear()
        os.killpg(self.server.process.pid, signal.SIGKILL)
        self.server.process.wait(10)
        self.kills += 1
        self.server = self._start()
        self.up.set()

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        self.server.stop()
        self.server = self._start()

    def client(self) -> httpx.Client:
        c: httpx.Client | None = getattr(self._local, "client", None)
        if c is None:
            c = self._local.client = httpx.Client(timeout=60)
        return c


def send(fleet: Fleet, u: Upload, workflow_id: str, phase: str) -> httpx.Response | None:
    """One attempt; a transport failure is recorded on `u` (None returned)."""
    path, headers, body = u.request(workflow_id)
    url = fleet.url()
    try:
        r = fleet.client().post(url + path, headers=headers, content=body)
    except httpx.TimeoutException as exc:  # a kill never hangs a client: the server did
        u.error = f"{phase}: timeout {type(exc).__name__}"
        u.story.append(u.error)
        return None
    except httpx.TransportError as exc:
        u.interrupted = u.interrupted or not isinstance(exc, httpx.ConnectError)
        u.error = f"{phase}: {type(exc).__name__}: {exc}"
        u.story.append(u.error)
        return None
    u.story.append(f"{phase}: {r.status_code} {r.content[:200]!r} ({url})")
    return r


def record(u: Upload, r: httpx.Response, phase: str) -> None:
    u.status, u.body = r.status_code, r.content
    u.replayed = r.headers.get("idempotent-replayed") == "true"
    if u.answered:
        u.answered_in = phase
        u.error = None


def cli(
    data_dir: Path, database_url: str, *args: str, retention: str = "0"
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ARTIFACTS_DATA_DIR": str(data_dir),
        "ARTIFACTS_DATABASE_URL": database_url,
        # by default gc keeps no replaced version: only what is live
        "ARTIFACTS_VERSION_RETENTION": retention,
    }
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def every_page(client: httpx.Client, url: str, **params: str | int) -> list[dict[str, Any]]:
    """Every item of a listing, following X-Next-Cursor (at most 50 pages of 200)."""
    items: list[dict[str, Any]] = []
    query: dict[str, str | int] = {**params, "limit": 200}
    for _ in range(50):
        r = client.get(url, params=query)
        assert r.status_code == 200, r.text
        items += r.json()
        cursor = r.headers.get("x-next-cursor")
        if cursor is None:
            return items
        query["cursor"] = cursor
    raise AssertionError(f"the listing of {url} did not end")


def list_workflow(client: httpx.Client, base: str, workflow_id: str) -> list[dict[str, Any]]:
    return every_page(client, f"{base}/artifacts", workflow_id=workflow_id)


# ------------------------------------------------------------------------------------ test


@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_during_concurrent_uploads(
    seed: int, tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(seed)
    workflow_id = f"wf-crash-{seed}"
    uploads = plan(rng, seed)
    kills = kill_points(rng)
    order = list(range(UPLOADS))
    rng.shuffle(order)
    where = f"seed={seed} ({database_url.split(':')[0]})"
    data_dir = tmp_path / "data"
    started = time.monotonic()

    fleet = Fleet(data_dir, database_url)
    try:
        # -- the targets of the replacements, created (and answered) before the storm
        with httpx.Client(base_url=fleet.url(), timeout=30) as c:
            for u in uploads:
                if not u.creates:
                    u.old = f"before {u.title}".encode()
                    r = c.post(
                        "/artifacts",
                        json={
                            "workflow_id": workflow_id,
                            "artifact_type": "text",
                            "title": u.title,
                            "content": u.old.decode(),
                        },
                    )
                    assert r.status_code == 201, (where, r.text)
                    u.target = r.json()["id"]

        # -- the storm: WORKERS in flight, a killer thread watching how many have finished
        finished = 0
        progress = threading.Condition()
        unexpected: list[str] = []

        def storm_one(u: Upload) -> None:
            nonlocal finished
            try:
                r = send(fleet, u, workflow_id, "storm")
                if r is not None:
                    record(u, r, "storm")
                    if r.status_code != (201 if u.creates else 200):
                        unexpected.append(f"upload {u.index} ({u.kind}): {r.status_code} {r.text}")
            finally:
                with progress:
                    finished += 1
                    progress.notify_all()

        def killer() -> None:
            for at, jitter in kills:
                with progress:
                    progress.wait_for(lambda at=at: finished >= at, timeout=120)  # type: ignore[misc]
                time.sleep(jitter)
                fleet.kill()

        kill_thread = threading.Thread(target=killer, daemon=True)
        kill_thread.start()
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(storm_one, (uploads[i] for i in order)))
        kill_thread.join(60)
        assert not kill_thread.is_alive(), where
        storm_s = time.monotonic() - started
        assert fleet.kills == len(kills), where
        assert not unexpected, (where, unexpected)
        hangs = [u.story for u in uploads if u.error and "timeout" in u.error]
        assert not hangs, (where, "requests hung instead of failing", hangs)
        unanswered = [u for u in uploads if not u.answered]
        interrupted = [u for u in uploads if u.interrupted]
        # the test must be able to fail: its kills have to hit requests in flight
        assert interrupted, (where, f"{len(kills)} kills interrupted no request")

        # -- retry every unanswered keyed upload: the same key, the same bytes
        in_progress = 0
        for u in unanswered:
            if u.key is None:
                continue
            for attempt in range(30):
                retried = send(fleet, u, workflow_id, "retry")
                assert retried is not None, (where, u.index, u.story)
                if retried.status_code != 409 or attempt == 29:
                    record(u, retried, "retry")
                    break
                code = retried.json()["code"]
                assert code == "idempotency_request_in_progress", (where, u.index, u.story)
                in_progress += 1
                time.sleep(min(float(retried.headers["retry-after"]), 3.0))
            assert u.status == (201 if u.creates else 200), (where, u.index, u.story)
        recovered = [u for u in unanswered if u.key and u.replayed]  # committed, answer lost

        # -- every keyed upload once more: the first answer again, byte for byte
        for u in uploads:
            if u.key is None:
                continue
            again = send(fleet, u, workflow_id, "replay")
            assert again is not None, (where, u.index, u.story)
            assert again.status_code == u.status, (where, u.index, u.story)
            assert again.headers.get("idempotent-replayed") == "true", (where, u.index, u.story)
            assert again.content == u.body, (where, u.index, u.story)

        # -- every answered upload is there, once, with its exact bytes; the rest at most once
        with httpx.Client(base_url=fleet.url(), timeout=60) as c:
            listed = list_workflow(c, fleet.url(), workflow_id)
            by_title: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for item in listed:
                by_title[item["title"]].append(item)
            titles = {u.title for u in uploads}
            assert set(by_title) <= titles, (where, set(by_title) - titles)
            replaced = 0
            for u in uploads:
                found = by_title.get(u.title, [])
                assert len(found) <= 1, (where, u.index, "duplicate artifacts", found, u.story)
                if u.answered:
                    answer = u.answer
                    assert answer["content_hash"] == sha(u.data), (where, u.index, u.story)
                    assert answer["size_bytes"] == len(u.data), (where, u.index, u.story)
                    assert [f["id"] for f in found] == [u.artifact_id], (where, u.index, u.story)
                if not u.creates:
                    assert [f["id"] for f in found] == [u.target], (where, u.index, u.story)
                if not found:
                    assert not u.answered and u.key is None, (where, u.index, u.story)
                    continue
                r = c.get(f"/artifacts/{found[0]['id']}/download")
                assert r.status_code == 200, (where, u.index, r.text, u.story)
                got = r.content
                assert found[0]["content_hash"] == sha(got), (where, u.index, u.story)
                if u.answered or u.creates:
                    assert got == u.data, (where, u.index, len(got), len(u.data), u.story)
                else:  # an unanswered unkeyed replace: before or after, nothing else
                    assert got in (u.data, u.old), (where, u.index, len(got), u.story)
                replaced += not u.creates and got == u.data
            live = listed
        fleet.stop()

        # -- fsck clean; gc --grace 0 leaves nothing to reclaim; the counts add up
        run = cli(data_dir, database_url, "fsck", "--verify-data", "--json")
        before_gc = json.loads(run.stdout)
        assert (run.returncode, before_gc["errors"]) == (0, []), (where, run.stdout, run.stderr)
        kinds = {w["problem"] for w in before_gc["warnings"]}
        assert kinds <= GC_KINDS, (where, before_gc["warnings"])
        run = cli(data_dir, database_url, "gc", "--grace", "0", "--json")
        assert run.returncode == 0, (where, run.stdout, run.stderr)
        gc_report = json.loads(run.stdout)
        assert gc_report["artifacts_purged"] == [], (where, gc_report)
        run = cli(data_dir, database_url, "fsck", "--verify-data", "--json")
        after_gc = json.loads(run.stdout)
        assert (run.returncode, after_gc["errors"], after_gc["warnings"]) == (0, [], []), (
            where,
            run.stdout,
            run.stderr,
        )
        digests = {item["content_hash"] for item in live}
        assert after_gc["artifacts_checked"] == len(live), (where, after_gc)
        assert after_gc["blobs_checked"] == len(digests), (where, after_gc)
        assert count_rows(database_url, "artifacts") == len(live), where
        assert count_rows(database_url, "artifact_versions") == len(live), where
        assert count_rows(database_url, "blobs") == len(digests), where
        assert count_rows(database_url, "lineage") == 0, where
        # one artifact.created per artifact, one artifact.content_replaced per replacement made
        assert count_rows(database_url, "events") == len(live) + replaced, where
        assert count_rows(database_url, "idempotency_keys") == KEYED, where

        # -- and a server started on what is left serves every answered upload, untouched
        fleet.restart()
        with httpx.Client(base_url=fleet.url(), timeout=60) as c:
            for u in uploads:
                if u.answered:
                    r = c.get(f"/artifacts/{u.artifact_id}/download")
                    assert (r.status_code, r.content == u.data) == (200, True), (where, u.index)
    finally:
        fleet.stop()

    with capsys.disabled():
        unkeyed_lost = [u for u in unanswered if u.key is None]
        print(
            f"\n{where}: {len(kills)} kills at {[k for k, _ in kills]}, {len(unanswered)} "
            f"unanswered ({len(interrupted)} interrupted in flight), {len(recovered)} keyed "
            f"commits whose answer was lost, {in_progress} 409s on retry, "
            f"{len(unkeyed_lost)} unkeyed unanswered "
            f"({sum(1 for u in unkeyed_lost if by_title.get(u.title) and u.creates)} created), "
            f"fsck before gc: {len(before_gc['warnings'])} warnings {sorted(kinds)}; "
            f"storm {storm_s:.1f}s, total {time.monotonic() - started:.1f}s"
        )


# ------------------------------------------------- versions: many clients, one artifact (issue 17)

V_ROUNDS = 3  # a burst of uploads, a kill in the middle of it, a restart, then the checks
V_CLIENTS = 6  # threads, each its own connection, all uploading to the same artifact
V_PER_CLIENT = 5  # uploads per client and round, one after the other
V_SEEDS = [1717]


@dataclass
class VersionUpload:
    index: int
    data: bytes  # unique: it names its upload, so a version's bytes say which upload made it
    raw: bool
    conditional: bool  # If-Match: the ETag this client last saw
    if_match: str | None = None
    status: int | None = None
    version: int | None = None  # what a 200 answered
    story: list[str] = field(default_factory=list)


def version_upload_bytes(rng: random.Random, index: int) -> bytes:
    head = f"upload {index:04d}\n".encode()
    return head + rng.randbytes(binary_size(rng) // 2)  # up to 1 MiB: kills land mid-body


def send_version_upload(fleet: Fleet, artifact_id: str, u: VersionUpload) -> httpx.Response | None:
    headers = {"If-Match": u.if_match} if u.if_match else {}
    if u.raw:
        headers["Content-Type"] = "application/octet-stream"
        body = u.data
    else:
        boundary = f"vb{u.index:06d}"
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        body = multipart(boundary, {}, f"v{u.index:04d}.bin", u.data)
    url = fleet.url()
    try:
        r = fleet.client().post(
            f"{url}/artifacts/{artifact_id}/upload", headers=headers, content=body
        )
    except httpx.TimeoutException as exc:
        u.story.append(f"timeout {type(exc).__name__}")
        return None
    except httpx.TransportError as exc:
        u.story.append(f"{type(exc).__name__}: {exc} ({url})")
        return None
    u.story.append(f"{r.status_code} {r.content[:200]!r} ({url})")
    return r


def current_etag(fleet: Fleet, artifact_id: str) -> str:
    """What a client that has not seen the artifact yet reads first (a kill may refuse it:
    then from the next server)."""
    for _ in range(20):
        try:
            r = fleet.client().get(f"{fleet.url()}/artifacts/{artifact_id}")
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        assert r.status_code == 200, r.text
        return f'"{r.json()["content_hash"]}"'
    raise AssertionError("no server answered a GET")


def list_versions(c: httpx.Client, artifact_id: str) -> list[dict[str, Any]]:
    return every_page(c, f"/artifacts/{artifact_id}/versions")


def check_versions(
    fleet: Fleet,
    artifact_id: str,
    initial: bytes,
    sent: list[VersionUpload],
    where: str,
) -> dict[int, bytes]:
    """What every restart must leave: versions 1..current with no gap and no duplicate, the
    current one the newest; each version's bytes are exactly the initial bytes or one sent
    upload's (no partial version), no upload's bytes in two versions, none of a 412's; every
    acknowledged upload is the version it was answered with, byte for byte. Returns them."""
    by_data = {u.data: u for u in sent}
    with httpx.Client(base_url=fleet.url(), timeout=60) as c:
        listed = list_versions(c, artifact_id)
        current = c.get(f"/artifacts/{artifact_id}")
        assert current.status_code == 200, (where, current.text)
        numbers = [v["version"] for v in listed]
        assert numbers == list(range(len(listed), 0, -1)), (where, "gap or duplicate", numbers)
        assert current.json()["version"] == numbers[0], (where, current.json(), numbers[0])
        assert [v["is_current"] for v in listed] == [True] + [False] * (len(listed) - 1), where
        got: dict[int, bytes] = {}
        for v in listed:
            r = c.get(f"/artifacts/{artifact_id}/versions/{v['version']}/download")
            assert r.status_code == 200, (where, v, r.text)
            assert sha(r.content) == v["content_hash"] and len(r.content) == v["size_bytes"], where
            got[v["version"]] = r.content
    assert got[1] == initial, where
    made: dict[int, VersionUpload] = {}
    for number, data in got.items():
        if number == 1:
            continue
        u = by_data.get(data)
        assert u is not None, (where, f"version {number}: bytes no upload sent", data[:40])
        assert u.status != 412, (where, f"version {number} is a refused upload's", u.story)
        assert u.index not in {m.index for m in made.values()}, (where, "in two versions", u.story)
        made[number] = u
    for u in sent:
        if u.status == 200:
            assert u.version is not None and made.get(u.version) is u, (where, u.version, u.story)
    return got


@pytest.mark.parametrize("seed", V_SEEDS)
def test_sigkill_during_concurrent_uploads_to_one_artifact(
    seed: int, tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 17's crash loop: V_CLIENTS clients upload to the same artifact at once, a third of
    the uploads with If-Match (the ETag that client last saw), while the server is SIGKILLed
    and restarted once per round; after each restart (the round's clients done), the versions
    are checked (check_versions) and fsck --verify-data has no error. At the end: gc --grace 0
    (versions kept for ever, the default) reclaims the litter and no version, fsck is clean,
    and a fresh server serves every acknowledged version."""
    rng = random.Random(seed)
    where = f"versions seed={seed} ({database_url.split(':')[0]})"
    data_dir = tmp_path / "data"
    started = time.monotonic()
    initial = b"version one\n"
    sent: list[VersionUpload] = []
    counter = itertools.count(1)
    fleet = Fleet(data_dir, database_url)
    try:
        with httpx.Client(base_url=fleet.url(), timeout=30) as c:
            r = c.post(
                "/artifacts",
                json={"workflow_id": f"wf-v-{seed}", "artifact_type": "text", "title": "target",
                      "content": initial.decode(), "content_type": "text/plain"},
            )  # fmt: skip
            assert r.status_code == 201, (where, r.text)
            artifact_id = r.json()["id"]
            etag0 = r.headers.get("etag") or f'"{r.json()["content_hash"]}"'
        unexpected: list[str] = []
        answered = threading.Semaphore(0)
        rounds = []
        for round_no in range(V_ROUNDS):
            plans = [
                [
                    VersionUpload(
                        i, version_upload_bytes(rng, i), rng.random() < 0.5, rng.random() < 1 / 3
                    )
                    for i in (next(counter) for _ in range(V_PER_CLIENT))
                ]
                for _ in range(V_CLIENTS)
            ]
            sent += [u for p in plans for u in p]
            kill_after, jitter = rng.randint(2, V_CLIENTS * V_PER_CLIENT // 2), rng.random() * 0.02

            def client(plan: list[VersionUpload], round_no: int = round_no) -> None:
                seen = etag0 if round_no == 0 else None
                for u in plan:
                    if u.conditional:
                        seen = seen or current_etag(fleet, artifact_id)
                        u.if_match = seen
                    r = send_version_upload(fleet, artifact_id, u)
                    answered.release()
                    if r is None:
                        continue
                    u.status = r.status_code
                    if r.status_code == 200:
                        u.version = r.json()["version"]
                        seen = f'"{r.json()["content_hash"]}"'
                    elif r.status_code == 412 and u.conditional:
                        assert r.json()["code"] == "precondition_failed"
                        seen = r.headers["etag"]
                    else:
                        unexpected.append(f"upload {u.index}: {r.status_code} {r.text[:200]}")

            def killer(kill_after: int = kill_after, jitter: float = jitter) -> None:
                for _ in range(kill_after):
                    answered.acquire(timeout=120)
                time.sleep(jitter)
                fleet.kill()

            kill_thread = threading.Thread(target=killer, daemon=True)
            kill_thread.start()
            with ThreadPoolExecutor(V_CLIENTS) as pool:
                list(pool.map(client, plans))
            kill_thread.join(60)
            assert not kill_thread.is_alive(), where
            while answered.acquire(blocking=False):  # what the killer did not wait for
                pass
            assert not unexpected, (where, unexpected)
            assert fleet.kills == round_no + 1, where
            got = check_versions(fleet, artifact_id, initial, sent, where)
            run = cli(data_dir, database_url, "fsck", "--verify-data", "--json")
            check = json.loads(run.stdout)
            assert (run.returncode, check["errors"]) == (0, []), (where, run.stdout, run.stderr)
            assert {w["problem"] for w in check["warnings"]} <= GC_KINDS, (where, check)
            statuses = [u.status for u in sent[-V_CLIENTS * V_PER_CLIENT :]]
            rounds.append(
                f"{statuses.count(200)} ok, {statuses.count(412)} 412, "
                f"{statuses.count(None)} unanswered -> {len(got)} versions"
            )
        acked = sum(u.status == 200 for u in sent)
        assert acked >= V_ROUNDS, (where, "hardly anything was acknowledged")
        assert any(u.status is None for u in sent), (where, "the kills interrupted no upload")
        fleet.stop()

        run = cli(data_dir, database_url, "gc", "--grace", "0", "--json", retention="forever")
        assert run.returncode == 0, (where, run.stdout, run.stderr)
        report = json.loads(run.stdout)
        assert (report["artifacts_purged"], report["versions_expired"]) == ([], 0), where
        run = cli(data_dir, database_url, "fsck", "--verify-data", "--json")
        check = json.loads(run.stdout)
        assert (run.returncode, check["errors"], check["warnings"]) == (0, [], []), (where, check)
        assert check["versions_checked"] == len(got), (where, check)
        assert count_rows(database_url, "artifact_versions") == len(got), where

        fleet.restart()
        assert check_versions(fleet, artifact_id, initial, sent, where) == got, where
    finally:
        fleet.stop()

    with capsys.disabled():
        print(f"\n{where}: rounds {rounds}; total {time.monotonic() - started:.1f}s")
