"""Several replicas: two `artifacts serve` processes on different ports share one PostgreSQL
database and one blob store (`shared_blob_env`), and clients spread their writes over both.

1. The storm, on both replicas at once: JSON and multipart creates (1 byte to 1 MiB), a quarter
   of them the bytes of another upload sent to the other replica (dedupe racing across
   processes); half keyed, each retried on the *other* replica, which must replay the first
   answer byte for byte (`Idempotent-Replayed: true`), and some keys then reused there with a
   different body (422 idempotency_key_reused); keyed creates sent to both replicas at the same
   moment (exactly one artifact, both answers the same). Then bursts of primary deliverables of
   one phase, created on both replicas at the same moment: all succeed, exactly one stays
   primary.
2. Two `gc --grace 0` processes side by side (and both replicas' periodic GC, purging
   soft-deleted rows every second), while both replicas take deletes (visible on the other
   replica at once; a keyed one's retry there replays), content replacements, more creates
   (some the bytes of live artifacts: dedupe hits GC must not undo) and a churn that creates
   bytes on one replica, deletes them on the other and uploads them again, so GC reclaims a
   digest while it is being uploaded once more. A 503 storage_unavailable (GC took the blob or
   the staging file from under the upload; nothing was stored) is retried, as a client would.
   GC must have reclaimed blobs, and every GC run met uploads answered by both replicas.
3. Then: `gc --grace 0` and `fsck --verify-data` report no error and no warning, and count
   exactly the live artifacts (plus soft-deleted parents lineage keeps) and their distinct
   digests; every answered write downloads byte-identical from BOTH replicas; deleted artifacts
   answer 404 on both; the listing (paged across replicas) is the same set on both, one artifact
   per answered create and per idempotency key; the change feed holds one `artifact.created` per
   artifact and one `artifact.deleted` per delete, the same on both; every keyed request sent
   once more replays its first answer; a signed link made by one replica is honoured by the
   other.

Everything goes through HTTP and the CLI, never through the blob store's files, so the same
test covers every backend in BLOB_BACKENDS.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import random
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.support.databases import BACKENDS, count_rows
from tests.support.servers import ROOT, Server, start_server
from tests.support.sql import query

T = TypeVar("T")
KiB = 1 << 10
MiB = 1 << 20
SEED = 1307
WORKERS = 12
N_CREATES = 60  # the storm's plain creates, half JSON, half multipart
DUPLICATES = N_CREATES // 4
N_PRIMARIES = 12  # two bursts
N_RACES = 8
N_CHILDREN = 4
N_DOOMED_UNIQUE = 12  # deleted; no other artifact has their bytes (GC reclaims them unless a
# child's lineage or an upload of the same bytes keeps them)
N_DOOMED_SHARED = 4  # deleted; another live artifact has their bytes (GC must keep them)
N_REUPLOADS = 3  # the bytes of doomed unique ones, uploaded again while GC reclaims them
N_NEW = 24  # creates during GC, a third of them the bytes of a live artifact
N_REPLACES = 8
CHURNERS = 2  # threads creating, deleting and re-uploading while GC runs
GC_RUNNERS = 2  # `gc --grace 0` processes side by side
GC_RUNS = 1  # each
NAMES = ("A", "B")

BLOB_BACKENDS = ["filesystem", "s3"]
POSTGRES = [p for p in BACKENDS if getattr(p, "values", None) == ("postgresql",)]
# Periodic GC on both replicas every second purges soft-deleted rows and expires replaced
# versions at once (retentions 0); with the default grace of 1 h it leaves blobs and staging
# files to the CLI's `--grace 0` runs.
SERVER_ENV = {"ARTIFACTS_GC_INTERVAL": "1", "ARTIFACTS_DELETED_RETENTION": "0",
              "ARTIFACTS_VERSION_RETENTION": "0"}  # fmt: skip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(params=BLOB_BACKENDS)
def shared_blob_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment every replica and every CLI run gets for its blob store: one store.
    Each also gets a data dir of its own first; this may override it."""
    if request.param == "filesystem":
        # the blob directory is <data_dir>/blobs (app/settings.py): one data dir for all
        shared = tmp_path / "shared-data"
        shared.mkdir()
        return {"ARTIFACTS_DATA_DIR": str(shared)}
    if request.param == "s3":  # one bucket on moto's S3 server; each replica its own data dir
        s3_env: dict[str, str] = request.getfixturevalue("s3_env")
        return s3_env
    raise AssertionError(f"no such blob backend: {request.param}")


@dataclass
class Replicas:
    servers: list[Server]
    database_url: str
    env: dict[str, str]  # what replicas and CLI runs share (blob store, signing key, GC)
    cli_dir: Path
    _clients: list[httpx.Client] = field(default_factory=list)
    _local: threading.local = field(default_factory=threading.local)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, replica: int) -> httpx.Client:
        """This thread's client for replica 0 (A) or 1 (B)."""
        clients: list[httpx.Client] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = [httpx.Client(base_url=s.url, timeout=60) for s in self.servers]
            with self._lock:
                self._clients.extend(clients)
            self._local.clients = clients
        return clients[replica]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        environ = {
            **os.environ,
            "ARTIFACTS_DATA_DIR": str(self.cli_dir),
            "ARTIFACTS_DATABASE_URL": self.database_url,
            "ARTIFACTS_LOG_LEVEL": "warning",
            **self.env,
        }
        return subprocess.run(
            [sys.executable, "-c", "from app.cli import main; main()", *args],
            env=environ, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def close(self) -> None:
        for c in self._clients:
            c.close()
        for s in self.servers:
            s.stop()


@pytest.fixture
def replicas(
    tmp_path: Path, database_url: str, shared_blob_env: dict[str, str]
) -> Iterator[Replicas]:
    """Replicas A and B, started at the same moment, on one database and one blob store."""
    env = {**SERVER_ENV, "ARTIFACTS_SIGNING_KEY": secrets.token_hex(32), **shared_blob_env}
    with ThreadPoolExecutor(2) as pool:
        starting = [
            pool.submit(start_server, tmp_path / name, database_url=database_url, env=env)
            for name in ("replica-a", "replica-b")
        ]
    started = [f.result() for f in starting if f.exception() is None]
    if len(started) < 2:
        for s in started:
            s.stop()
        raise next(exc for f in starting if (exc := f.exception()) is not None)
    (tmp_path / "cli").mkdir()
    group = Replicas(started, database_url, env, tmp_path / "cli")
    try:
        yield group
    finally:
        group.close()


# ---------------------------------------------------------------------------------- plan


@dataclass
class Op:
    index: int
    kind: str  # "json" | "form" (POST /artifacts), "replace" (…/upload), "delete"
    replica: int  # where it is sent first
    title: str = ""
    data: bytes = b""
    key: str | None = None
    phase_id: str | None = None
    primary: bool = False
    derived_from: list[str] = field(default_factory=list)
    target: str | None = None  # replace, delete: the artifact's id
    reuse: bool = False  # keyed: afterwards the same key, another body, on the other replica
    # what happened
    status: int | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    unavailable: int = 0  # 503 storage_unavailable answers retried
    in_progress: int = 0  # 409 idempotency_request_in_progress answers retried
    answered_at: float = 0.0
    story: list[str] = field(default_factory=list)

    @property
    def creates(self) -> bool:
        return self.kind in ("json", "form")

    @property
    def artifact_id(self) -> str:
        answer = json.loads(self.body)
        value = answer["id"] if self.creates else answer["artifact_id"]
        assert isinstance(value, str)
        return value

    def request(self, workflow_id: str, *, other_body: bool = False) -> tuple[str, str, Any]:
        """(method, path, httpx keyword arguments); the same request each time (a multipart
        body gets a fresh boundary: another framing of the same request), or with
        `other_body` a different one under the same key."""
        data = self.data + b"0" if other_body else self.data
        kwargs: dict[str, Any] = {"headers": {"Idempotency-Key": self.key} if self.key else {}}
        fields: dict[str, Any] = {
            "workflow_id": workflow_id,
            "artifact_type": "text" if self.kind == "json" else "other",
            "title": self.title,
            **({"phase_id": self.phase_id} if self.phase_id else {}),
            **({"is_primary_deliverable": True} if self.primary else {}),
            **({"derived_from": self.derived_from} if self.derived_from else {}),
        }
        file = {"file": (f"op{self.index:03d}.bin", data, "application/octet-stream")}
        if self.kind == "json":
            kwargs["json"] = {**fields, "content": data.decode(), "content_type": "text/plain"}
            return "POST", "/artifacts", kwargs
        if self.kind == "form":
            assert not self.derived_from
            form = {k: "true" if v is True else v for k, v in fields.items()}
            return "POST", "/artifacts", {**kwargs, "data": form, "files": file}
        if self.kind == "replace":
            return "POST", f"/artifacts/{self.target}/upload", {**kwargs, "files": file}
        assert self.kind == "delete"
        return "DELETE", f"/artifacts/{self.target}", kwargs

    def record(self, r: httpx.Response) -> None:
        self.status, self.body, self.headers = r.status_code, r.content, dict(r.headers)
        self.answered_at = time.monotonic()


def binary_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.3:
        return rng.randint(1, 4 * KiB)
    if roll < 0.8:
        return rng.randint(4 * KiB, 256 * KiB)
    return rng.randint(256 * KiB, MiB)


def content(rng: random.Random, kind: str) -> bytes:
    if kind == "json":  # text: stored as its UTF-8 bytes
        return rng.randbytes(32 * KiB).hex()[: rng.randint(1, 64 * KiB)].encode()
    return rng.randbytes(binary_size(rng))


def is_text(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


@dataclass
class Plan:
    storm: list[Op]  # phase 1: creates (N_CREATES plain ones first), then the primaries
    races: list[Op]  # phase 1: each sent to both replicas at once
    children: list[Op]  # after phase 1: each derived from one of `parents`
    parents: list[int]  # storm indices, deleted in phase 2 (lineage keeps their rows and bytes)
    doomed_first: list[int]  # storm indices deleted before GC starts
    doomed_later: list[int]  # storm indices deleted while GC runs
    reuploads: list[Op]  # phase 2: the bytes of doomed_first ones no other artifact has
    new: list[Op]  # phase 2
    replaces: list[Op]  # phase 2, of the storm indices in replace_targets
    replace_targets: list[int]


def plan(rng: random.Random) -> Plan:
    def key(name: str) -> str:
        return f"rep-{SEED}-{name}-{rng.randbytes(6).hex()}"

    kinds = ["json"] * (N_CREATES // 2) + ["form"] * (N_CREATES - N_CREATES // 2)
    rng.shuffle(kinds)
    storm = [
        Op(i, kind, rng.randrange(2), f"rep-{i:03d}", content(rng, kind))
        for i, kind in enumerate(kinds)
    ]
    # the extremes: 1 byte of text, 1 byte of binary, a whole MiB
    storm[0].kind, storm[0].data = "json", b"x"
    storm[1].kind, storm[1].data = "form", b"\x00"
    storm[2].kind, storm[2].data = "form", rng.randbytes(MiB)
    # a duplicate has an original's bytes and goes to the other replica
    dups = set(rng.sample(range(3, N_CREATES), DUPLICATES))
    originals = [i for i in range(N_CREATES) if i not in dups]
    for i in sorted(dups):
        fits = [j for j in originals if storm[i].kind == "form" or storm[j].kind == "json"]
        source = storm[rng.choice(fits)]
        storm[i].data, storm[i].replica = source.data, 1 - source.replica
    for i in rng.sample(range(N_CREATES), N_CREATES // 2):
        storm[i].key = key(f"c{i}")
        storm[i].reuse = rng.random() < 0.35
    for n in range(N_PRIMARIES):  # small, so that their transactions meet
        kind = "json" if n % 4 else "form"
        data = content(rng, kind)[:64]
        op = Op(len(storm), kind, n % 2, f"primary-{n}", data, phase_id="final")
        op.primary = True
        storm.append(op)
    races = [
        Op(1000 + n, kind, 0, f"race-{n}", content(rng, kind), key=key(f"r{n}"))
        for n, kind in enumerate(["json", "form"] * (N_RACES // 2))
    ]

    # phase 2 deletes bytes no other artifact has (GC must reclaim them) and bytes a live
    # artifact shares (GC must keep them)
    by_bytes: dict[bytes, list[int]] = defaultdict(list)
    for op in storm[:N_CREATES]:
        by_bytes[op.data].append(op.index)
    unique = [group[0] for group in by_bytes.values() if len(group) == 1]
    shared = [rng.choice(group) for group in by_bytes.values() if len(group) > 1]
    doomed_unique = rng.sample(unique, N_DOOMED_UNIQUE)
    doomed_shared = rng.sample(shared, N_DOOMED_SHARED)
    half = N_DOOMED_UNIQUE // 2
    parents = doomed_unique[half:][:N_CHILDREN]
    children = [
        Op(2000 + n, "json", n % 2, f"child-{n}", f"derived from {p}".encode())
        for n, p in enumerate(parents)
    ]
    reuploads = []
    for n, i in enumerate(doomed_unique[:N_REUPLOADS]):
        kind = rng.choice(["json", "form"]) if is_text(storm[i].data) else "form"
        reuploads.append(Op(3000 + n, kind, rng.randrange(2), f"again-{n}", storm[i].data))
    doomed = set(doomed_unique) | set(doomed_shared)
    live = [i for i in range(N_CREATES) if i not in doomed]
    new = []
    for n in range(N_NEW):
        kind = rng.choice(["json", "form"])
        data = content(rng, kind)
        if n % 3 == 0:  # the bytes of a live artifact: a dedupe hit GC must not undo
            fits = [i for i in live if kind == "form" or is_text(storm[i].data)]
            data = storm[rng.choice(fits)].data
        new.append(Op(4000 + n, kind, rng.randrange(2), f"new-{n}", data))
        new[-1].key = key(f"n{n}") if n % 2 else None
    replace_targets = rng.sample(live, N_REPLACES)
    replaces = [
        Op(5000 + n, "replace", rng.randrange(2), data=content(rng, "form"))
        for n in range(N_REPLACES)
    ]
    for n, op in enumerate(replaces):
        op.key = key(f"u{n}") if n % 2 else None
    return Plan(
        storm, races, children, parents,
        doomed_unique[:half] + doomed_shared[: N_DOOMED_SHARED // 2],
        doomed_unique[half:] + doomed_shared[N_DOOMED_SHARED // 2 :],
        reuploads, new, replaces, replace_targets,
    )  # fmt: skip


# --------------------------------------------------------------------------------- client

REPLAYED = "idempotent-replayed"


def error_code(r: httpx.Response) -> str | None:
    try:
        body = r.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


class Traffic:
    """Sends the plan's requests to one replica or the other, as a careful client would: a 503
    storage_unavailable (nothing was stored) and a 409 idempotency_request_in_progress are
    retried until a real answer arrives."""

    def __init__(self, replicas: Replicas, workflow_id: str) -> None:
        self.replicas = replicas
        self.workflow_id = workflow_id

    def send(self, op: Op, replica: int, phase: str, *, other_body: bool = False) -> httpx.Response:
        deadline = time.monotonic() + 60
        while True:
            method, path, kwargs = op.request(self.workflow_id, other_body=other_body)
            r = self.replicas.client(replica).request(method, path, **kwargs)
            op.story.append(f"{phase} on {NAMES[replica]}: {r.status_code} {r.content[:160]!r}")
            code = error_code(r)
            if r.status_code == 503 and code == "storage_unavailable":
                op.unavailable += 1
            elif r.status_code == 409 and code == "idempotency_request_in_progress":
                op.in_progress += 1
            else:
                return r
            assert time.monotonic() < deadline, ("no answer in 60 s", op.story)
            time.sleep(0.05)

    def write(self, op: Op, phase: str) -> None:
        """The write on its replica; when keyed, the retry on the other replica replays it, and
        (op.reuse) the same key with another body there is refused."""
        expected = {"json": 201, "form": 201, "replace": 200, "delete": 200}[op.kind]
        first = self.send(op, op.replica, phase)
        op.record(first)
        assert first.status_code == expected, op.story
        assert REPLAYED not in first.headers, op.story
        other = 1 - op.replica
        if op.kind == "delete":  # visible on the other replica at once
            gone = self.replicas.client(other).get(f"/artifacts/{op.target}")
            assert (gone.status_code, error_code(gone)) == (404, "artifact_not_found"), op.story
        if op.key is None:
            return
        self.assert_replay(op, self.send(op, other, f"{phase} retry"))
        if op.reuse:
            reused = self.send(op, other, f"{phase} reuse", other_body=True)
            assert reused.status_code == 422, op.story
            assert error_code(reused) == "idempotency_key_reused", op.story

    def assert_replay(self, op: Op, again: httpx.Response) -> None:
        assert again.headers.get(REPLAYED) == "true", op.story
        assert op.headers.get("location") or not op.creates, op.story
        assert again.status_code == op.status, op.story
        assert again.content == op.body, op.story  # byte for byte, the first replica's answer
        for name in ("content-type", "location"):
            assert again.headers.get(name) == op.headers.get(name), (name, op.story)

    def race(self, op: Op) -> None:
        """The same keyed request on both replicas at the same moment: one does it, the other
        answers its response (at once, or after 409s while the first still runs)."""
        barrier = threading.Barrier(2)
        answers: list[httpx.Response | None] = [None, None]

        def one(replica: int) -> None:
            barrier.wait(30)
            answers[replica] = self.send(op, replica, "race")

        threads = [threading.Thread(target=one, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        a, b = answers
        assert a is not None and b is not None, op.story
        assert (a.status_code, b.status_code) == (201, 201), op.story
        assert a.content == b.content, op.story
        replayed = [r.headers.get(REPLAYED) == "true" for r in (a, b)]
        assert sorted(replayed) == [False, True], op.story
        first = b if replayed[0] else a
        op.replica = 1 if replayed[0] else 0
        op.record(first)

    def burst(self, ops: list[Op], phase: str) -> None:
        """The writes all at the same moment, each to its own replica."""
        barrier = threading.Barrier(len(ops))
        failures: list[BaseException] = []

        def one(op: Op) -> None:
            try:
                barrier.wait(30)
                self.write(op, phase)
            except BaseException as exc:  # re-raised below
                failures.append(exc)

        threads = [threading.Thread(target=one, args=(op,)) for op in ops]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not failures, failures[0]

    def listing(self, start: int, **params: str) -> list[dict[str, Any]]:
        """The workflow's artifacts, page by page, each page from the other replica."""
        items: list[dict[str, Any]] = []
        query: dict[str, str | int] = {"workflow_id": self.workflow_id, "limit": 50, **params}
        for page in range(100):
            r = self.replicas.client((start + page) % 2).get("/artifacts", params=query)
            assert r.status_code == 200, r.text
            items += r.json()
            cursor = r.headers.get("x-next-cursor")
            if cursor is None:
                return items
            query["cursor"] = cursor
        raise AssertionError("the listing did not end")

    def feed(self, start: int) -> list[dict[str, Any]]:
        """The workflow's change feed as JSON pages, each page from the other replica."""
        events: list[dict[str, Any]] = []
        after = ""
        for page in range(100):
            r = self.replicas.client((start + page) % 2).get(
                "/store/events",
                params={"workflow_id": self.workflow_id, "after": after, "limit": 200},
                headers={"Accept": "application/json"},
            )
            assert r.status_code == 200, r.text
            body = r.json()
            if not body["events"]:
                return events
            events += body["events"]
            after = body["next_cursor"]
        raise AssertionError("the feed did not end")


@dataclass
class GcRun:
    runner: int
    started: float
    ended: float
    returncode: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.stdout)
        return result


def gc_loop(replicas: Replicas, runner: int, runs: list[GcRun]) -> None:
    """`gc --grace 0`, GC_RUNS times in a row."""
    for _ in range(GC_RUNS):
        started = time.monotonic()
        p = replicas.cli("gc", "--grace", "0", "--json")
        runs.append(GcRun(runner, started, time.monotonic(), p.returncode, p.stdout, p.stderr))
        if p.returncode != 0:
            return


def churn(traffic: Traffic, n: int, stop: threading.Event, ops: list[Op]) -> None:
    """Until `stop`: create bytes on one replica, delete them on the other, and (after a pause
    that lets GC purge the row and reclaim the blob, or not) upload them again, or the bytes
    of an earlier round, on either replica: GC and dedupe meeting on the same digest."""
    rng = random.Random(SEED * 100 + n)
    gone: list[bytes] = []
    for i in itertools.count():
        if stop.is_set():
            return
        kind = rng.choice(["json", "form"])
        data = content(rng, kind)[: rng.randint(1, 16 * KiB)]
        made = Op(10_000 * (n + 1) + 3 * i, kind, rng.randrange(2), f"churn-{n}-{i}", data)
        delete = Op(made.index + 1, "delete", 1 - made.replica)
        for op in (made, delete):
            op.key = f"rep-{SEED}-churn-{op.index}" if rng.random() < 0.5 else None
        traffic.write(made, "churn")
        ops.append(made)
        delete.target = made.artifact_id
        traffic.write(delete, "churn")
        ops.append(delete)
        gone.append(data)
        time.sleep(rng.uniform(0, 0.5))
        data = rng.choice(gone) if rng.random() < 0.3 else data
        kind = rng.choice(["json", "form"]) if is_text(data) else "form"
        again = Op(made.index + 2, kind, rng.randrange(2), f"churn-{n}-{i}-again", data)
        again.key = f"rep-{SEED}-churn-{again.index}" if rng.random() < 0.5 else None
        traffic.write(again, "churn")
        ops.append(again)
        time.sleep(rng.uniform(0.2, 0.5))  # a steady trickle: the GC processes need the CPU too


def in_parallel(work: Callable[[T], None], items: list[T]) -> None:
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(work, items))  # re-raises the first failure


# ----------------------------------------------------------------------------------- test


@pytest.mark.parametrize("database_url", POSTGRES, indirect=True)
def test_two_replicas_share_one_database_and_blob_store(
    replicas: Replicas, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    p = plan(rng)
    traffic = Traffic(replicas, f"wf-replicas-{SEED}")
    cli = replicas.cli

    # -- 1. the storm: creates, keyed retries on the other replica, races, primaries
    tasks: list[Callable[[], None]] = [
        *(functools.partial(traffic.write, op, "storm") for op in p.storm if not op.primary),
        *(functools.partial(traffic.race, op) for op in p.races),
    ]
    rng.shuffle(tasks)
    in_parallel(lambda task: task(), tasks)
    storm_s = time.monotonic() - started
    primary = [op for op in p.storm if op.primary]
    for burst in (primary[: len(primary) // 2], primary[len(primary) // 2 :]):
        traffic.burst(burst, "primary")  # in one (workflow, phase): the advisory lock's work
        winners = [
            traffic.listing(i, phase_id="final", is_primary_deliverable="true") for i in (0, 1)
        ]
        assert len(winners[0]) == 1 and winners[0] == winners[1], winners
        assert winners[0][0]["id"] in {op.artifact_id for op in burst}
    phase1 = [*p.storm, *p.races]
    assert not [op.story for op in phase1 if op.unavailable], "503s with no GC running"
    for op in [*p.storm, *p.races]:
        answer = json.loads(op.body)
        assert (answer["content_hash"], answer["size_bytes"]) == (sha(op.data), len(op.data))
    for n, child in enumerate(p.children):
        child.derived_from = [p.storm[p.parents[n]].artifact_id]
        traffic.write(child, "child")

    # -- 2. deletes, replacements, uploads and churn on both replicas while GC runs
    deletes = [
        Op(6000 + n, "delete", 1 - p.storm[i].replica, target=p.storm[i].artifact_id)
        for n, i in enumerate(p.doomed_first + p.doomed_later)
    ]
    for n, op in enumerate(deletes):
        op.key = f"rep-{SEED}-d{n}-{rng.randbytes(6).hex()}" if n % 2 else None
    first_deletes, later_deletes = deletes[: len(p.doomed_first)], deletes[len(p.doomed_first) :]
    for op, i in zip(p.replaces, p.replace_targets, strict=True):
        op.target = p.storm[i].artifact_id
    in_parallel(lambda op: traffic.write(op, "delete"), first_deletes)
    runs: list[GcRun] = []
    gcs = [threading.Thread(target=gc_loop, args=(replicas, n, runs)) for n in range(GC_RUNNERS)]
    stop = threading.Event()
    churned: list[Op] = []
    failures: list[BaseException] = []

    def churning(n: int) -> None:
        try:
            churn(traffic, n, stop, churned)
        except BaseException as exc:  # re-raised by the main thread
            failures.append(exc)

    churners = [threading.Thread(target=churning, args=(n,)) for n in range(CHURNERS)]
    wave = [*later_deletes, *p.reuploads, *p.new, *p.replaces]
    rng.shuffle(wave)
    wave_started = time.monotonic()
    for t in [*gcs, *churners]:
        t.start()
    try:
        in_parallel(lambda op: traffic.write(op, "wave"), wave)
        for t in gcs:  # the churn goes on until every GC run is over
            t.join(150)
    finally:
        stop.set()
        for t in [*gcs, *churners]:
            t.join(150)
    wave_s = time.monotonic() - wave_started
    assert not failures, failures[0]
    assert [(r.returncode, r.stderr) for r in runs if r.returncode != 0] == [], runs
    assert len(runs) == GC_RUNNERS * GC_RUNS
    deletes += [op for op in churned if op.kind == "delete"]
    wave += churned
    for gc_run in runs:  # from start to end, each GC run met uploads answered by both replicas
        answered = {
            op.replica
            for op in wave
            if op.creates and gc_run.started < op.answered_at < gc_run.ended
        }
        assert answered == {0, 1}, ("a GC run saw uploads on one replica only", gc_run)
    reclaimed = sum(len(r.report["blobs_deleted"]) for r in runs)
    purged = sum(len(r.report["artifacts_purged"]) for r in runs)
    # A replica's periodic GC (grace 1 h) reclaims nothing of its own, but it finishes any
    # reclaim it finds marked, whatever the grace (a run left it unfinished, as far as it can
    # tell): so a reclaim a CLI run marked may be counted by a replica, not by that run. What
    # the store lost of the storm's bytes is the count that does not depend on who swept.
    stored = {row[0] for row in query(replicas.database_url, "SELECT digest FROM blobs")}
    lost = {sha(op.data) for op in p.storm if op.creates} - stored
    assert reclaimed > 0 or lost, ("GC reclaimed nothing while uploads ran", runs)

    # -- the model: what must be there, byte for byte, and what must be gone
    expected: dict[str, bytes] = {}
    for op in [*p.storm, *p.races, *p.children, *p.reuploads, *p.new, *churned]:
        if op.creates:
            expected[op.artifact_id] = op.data
    for op in p.replaces:
        assert op.target is not None
        expected[op.target] = op.data
    deleted = {op.target for op in deletes if op.target is not None}
    created = set(expected)
    for artifact_id in deleted:
        del expected[artifact_id]
    kept_parents = {p.storm[i].artifact_id: p.storm[i].data for i in p.parents}
    keyed = [op for op in [*p.storm, *p.races, *first_deletes, *wave] if op.key]

    # -- 3. fsck and GC: nothing wrong, nothing left over, exactly what the model holds
    run = cli("gc", "--grace", "0", "--json")
    assert run.returncode == 0, (run.stdout, run.stderr)
    run = cli("fsck", "--verify-data", "--json")
    report = json.loads(run.stdout)
    assert (run.returncode, report["errors"], report["warnings"]) == (0, [], []), run.stdout
    assert report["artifacts_checked"] == len(expected) + len(kept_parents), report
    digests = {sha(data) for data in [*expected.values(), *kept_parents.values()]}
    assert report["blobs_checked"] == len(digests), report

    # every answered write downloads byte-identical from both replicas; deletes are gone on both
    def check(artifact_id: str) -> None:
        for replica in (0, 1):
            c = replicas.client(replica)
            r = c.get(f"/artifacts/{artifact_id}/download")
            if artifact_id in expected:
                assert r.status_code == 200, (NAMES[replica], artifact_id, r.text)
                assert r.content == expected[artifact_id], (NAMES[replica], artifact_id)
            else:
                assert r.status_code == 404, (NAMES[replica], artifact_id, r.text)
                r = c.get(f"/artifacts/{artifact_id}")
                assert (r.status_code, error_code(r)) == (404, "artifact_not_found"), r.text

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(check, sorted(created)))

    # one artifact per answered create and per key, the same listing on both replicas
    listings = [traffic.listing(start) for start in (0, 1)]
    assert listings[0] == listings[1]
    listed = {item["id"]: item for item in listings[0]}
    assert len(listed) == len(listings[0]) == len(expected)
    assert set(listed) == set(expected)
    for artifact_id, item in listed.items():
        assert item["content_hash"] == sha(expected[artifact_id]), item
    titles = Counter(item["title"] for item in listings[0])
    assert max(titles.values()) == 1, [t for t, n in titles.items() if n > 1]
    assert count_rows(replicas.database_url, "idempotency_keys") == len(keyed)

    # the change feed: each artifact created once, each delete once, the same on both replicas
    feeds = [traffic.feed(start) for start in (0, 1)]
    assert feeds[0] == feeds[1]
    seqs = [int(e["id"]) for e in feeds[0]]
    assert seqs == sorted(set(seqs))
    kinds = Counter((e["type"], e["artifact_id"]) for e in feeds[0])
    assert {a for (t, a) in kinds if t == "artifact.created"} == created
    assert {a for (t, a) in kinds if t == "artifact.deleted"} == deleted
    replaced = {a for (t, a) in kinds if t == "artifact.content_replaced"}
    assert replaced == {op.target for op in p.replaces}
    assert all(n == 1 for (t, _), n in kinds.items() if t != "deliverable.changed"), kinds

    # every keyed request once more, on the replica that did not answer it first: its answer
    for op in keyed:
        traffic.assert_replay(op, traffic.send(op, 1 - op.replica, "final replay"))

    # a signed link made by one replica opens on the other
    some = next(iter(sorted(expected)))
    link = replicas.client(0).post(f"/artifacts/{some}/download-url")
    assert link.status_code == 200, link.text
    url = httpx.URL(link.json()["url"])
    r = replicas.client(1).get(url.raw_path.decode())
    assert (r.status_code, r.content) == (200, expected[some]), r.text

    unavailable = sum(op.unavailable for op in wave)
    collisions = sum(op.in_progress for op in p.races)
    with capsys.disabled():
        print(
            f"\nreplicas: {len(created)} created, {len(deleted)} deleted, {len(p.replaces)} "
            f"replaced, {len(keyed)} keys; {len(runs)} GC runs alongside ({reclaimed} blobs "
            f"reclaimed, {purged} rows purged); {unavailable} 503s retried; race 409s "
            f"{collisions}; storm {storm_s:.1f}s, GC phase {wave_s:.1f}s, "
            f"total {time.monotonic() - started:.1f}s"
        )
