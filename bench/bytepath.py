"""Bytes: upload and download MB/s of our server, the bare ASGI reference doing the same transfers
(bench/reference.py) and the MLflow artifact server as a peer, each a fresh server pinned to the
server core, with the client on the other; every figure also as a ratio to the same repetition's
sha256+write MB/s. Server CPU-seconds per GB and RSS growth beside each.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    CHUNK,
    ROOT,
    MiB,
    ServerProcess,
    fmt_size,
    free_port,
    http_ok,
    median,
    our_server,
    request,
    uvicorn_server,
)
from bench.limits import byte_limits

MLFLOW_PREFIX = "/api/2.0/mlflow-artifacts/artifacts/bench"


class MultipartFile:
    """A file-like multipart/form-data body around a data file, read in blocks (never whole)."""

    def __init__(self, path: Path, prefix: bytes) -> None:
        self.boundary = secrets.token_hex(16)
        head = (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="data.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        self.parts: list[bytes | Path] = [
            head + prefix,
            path,
            f"\r\n--{self.boundary}--\r\n".encode(),
        ]
        self.length = len(head) + len(prefix) + path.stat().st_size + len(self.parts[2])  # type: ignore[arg-type]
        self.file: Any = None
        self.index = 0

    def read(self, n: int = -1) -> bytes:
        while self.index < len(self.parts):
            part = self.parts[self.index]
            if isinstance(part, Path):
                if self.file is None:
                    self.file = part.open("rb")
                data: bytes = self.file.read(n)
                if data:
                    return data
                self.file.close()
            else:
                self.parts[self.index] = b""
                if part:
                    return part
            self.index += 1
        return b""


class PrefixedFile:
    """A raw body: a per-client prefix, then the data file, read in blocks."""

    def __init__(self, path: Path, prefix: bytes) -> None:
        self.prefix, self.file = prefix, path.open("rb")
        self.length = len(prefix) + path.stat().st_size

    def read(self, n: int = -1) -> bytes:
        if self.prefix:
            out, self.prefix = self.prefix, b""
            return out
        data: bytes = self.file.read(n)
        if not data:
            self.file.close()
        return data


def create_artifact(port: int) -> str:
    body = json.dumps(
        {"workflow_id": "bench", "artifact_type": "other", "title": "b", "content": "x"}
    )
    status, out = request("POST", port, "/artifacts", body, {"Content-Type": "application/json"})
    assert status == 201, out
    return str(json.loads(out)["id"])


def put_raw(port: int, path: str, method: str, data: Path, prefix: bytes) -> None:
    body = PrefixedFile(data, prefix)
    status, out = request(method, port, path, body, {"Content-Length": str(body.length)})
    assert status == 200, (status, out[:300])


def upload(port: int, artifact_id: str, data: Path, prefix: bytes) -> None:
    body = MultipartFile(data, prefix)
    headers = {
        "Content-Type": f"multipart/form-data; boundary={body.boundary}",
        "Content-Length": str(body.length),
    }
    status, out = request("POST", port, f"/artifacts/{artifact_id}/upload", body, headers)
    assert status == 200, out


def download(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200, response.status
        buffer = memoryview(bytearray(CHUNK))
        total = 0
        while n := response.readinto(buffer):
            total += n
        return total
    finally:
        conn.close()


@dataclass
class Timing:
    MBps: float
    cpu_s_per_GB: float
    rss_growth: int
    peak_rss: int
    code: dict[str, Any] = field(default_factory=dict)  # our server's code probe (common.py)


def concurrently(clients: int, one: Callable[[int], object]) -> float:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            one(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


Transfer = Callable[[int, int], object]  # (client, round): round -1 is the warm-up's


def keys(kind: str, clients: int, rounds: int) -> list[tuple[int, int]]:
    """The (client, round) of every distinct object a measurement stores: the warm-up's, then
    one per timed upload, or, for downloads, one per client (downloaded `rounds` times)."""
    timed = range(rounds) if kind == "upload" else range(1)
    return [(0, -1), *((i, r) for i in range(clients) for r in timed)]


def stored(key: tuple[int, int]) -> tuple[int, int]:
    """The object a transfer of (client, round) reads: downloads re-read round 0's."""
    i, r = key
    return (i, min(r, 0))


def measure(
    server: ServerProcess,
    clients: int,
    size: int,
    send: Transfer,
    fetch: Transfer,
    kind: str,
    rounds: int = 1,
) -> Timing:
    """A warm-up transfer each way right before the timed run (of an object of its own), then
    `clients` concurrent clients making `rounds` transfers each, timed. Each timed upload stores
    distinct bytes (no blob is stored twice); downloads read what each client uploaded first."""
    send(0, -1)
    fetch(0, -1)
    if kind == "download":
        for i in range(clients):
            send(i, 0)
    transfer = send if kind == "upload" else fetch

    def client(i: int) -> None:
        for r in range(rounds):
            transfer(i, r)

    rss_before, cpu_before = server.rss(), server.cpu_seconds()
    elapsed = concurrently(clients, client)
    total = (size + 16) * clients * rounds
    cpu = server.cpu_seconds() - cpu_before
    peak = server.peak_rss()
    return Timing(total / elapsed / 1e6, cpu / (total / 1e9), max(peak - rss_before, 0), peak)


@contextlib.contextmanager
def cleaned(directory: Path) -> Iterator[None]:
    """Removes a server's directory once it is done with (1 GiB x 8 clients adds up)."""
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def ours(
    kind: str,
    data: Path,
    clients: int,
    work: Path,
    core: int | None,
    code_root: Path = ROOT,
    log: Path | None = None,
    rounds: int = 1,
) -> Timing:
    """One fresh server of code_root's code (this worktree's by default: bench/baseline.py
    passes a baseline's), `clients` x `rounds` transfers of `data`, timed after a warm-up. Each
    upload goes to an artifact of its own, made before the timed run."""
    server_dir = work / f"srv-{secrets.token_hex(4)}"
    with (
        cleaned(server_dir),
        our_server(server_dir, core, log=log or work / "server.log", code_root=code_root) as server,
    ):
        wanted = keys(kind, clients, rounds)
        prefixes = {k: secrets.token_bytes(16) for k in wanted}  # distinct blobs
        ids = {k: create_artifact(server.port) for k in wanted}
        timing = measure(
            server,
            clients,
            data.stat().st_size,
            lambda i, r: upload(server.port, ids[i, r], data, prefixes[i, r]),
            lambda i, r: download(server.port, f"/artifacts/{ids[stored((i, r))]}/download"),
            kind,
            rounds,
        )
        timing.code = server.code
        return timing


def reference(
    kind: str, data: Path, clients: int, work: Path, core: int | None, rounds: int = 1
) -> Timing:
    server_dir = work / f"ref-{secrets.token_hex(4)}"
    server_dir.mkdir()
    os.link(data, server_dir / "ref-download")  # what its GET serves
    env = {"BENCH_REFERENCE_DIR": str(server_dir)}
    start = uvicorn_server(
        "bare ASGI", sys.executable, "bench.reference:app", core, ready_path="/json", env=env
    )
    with cleaned(server_dir), start as server:
        prefixes = {k: secrets.token_bytes(16) for k in keys(kind, clients, rounds)}
        return measure(
            server,
            clients,
            data.stat().st_size,
            lambda i, r: put_raw(server.port, "/upload", "POST", data, prefixes[i, r]),
            lambda i, r: download(server.port, "/download"),
            kind,
            rounds,
        )


def mlflow_server(python: Path, root: Path, core: int | None, log: Path) -> ServerProcess:
    """`mlflow server --artifacts-only`, one worker, pinned like ours; its job runner is off
    (it serves nothing here)."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    cmd = [str(python.parent / "mlflow"), "server", "--artifacts-only"]
    cmd += ["--artifacts-destination", str(root), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1"]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_TRACKING_URI": str(root)}
    return ServerProcess(
        "mlflow server",
        cmd,
        port=port,
        ready=http_ok("/health"),
        core=core,
        env=env,
        log=log,
        timeout=120,
    )


def peer(server: ServerProcess, kinds: list[str], data: Path, clients: int) -> dict[str, Timing]:
    """Upload, then download the same files, through MLflow's artifact REST API."""
    every = keys("upload", clients, 1)
    names = {k: secrets.token_hex(8) for k in every}
    prefixes = {k: secrets.token_bytes(16) for k in every}
    out: dict[str, Timing] = {}
    for kind in kinds:
        out[kind] = measure(
            server,
            clients,
            data.stat().st_size,
            lambda i, r: put_raw(
                server.port, f"{MLFLOW_PREFIX}/{names[i, r]}", "PUT", data, prefixes[i, r]
            ),
            lambda i, r: download(server.port, f"{MLFLOW_PREFIX}/{names[stored((i, r))]}"),
            kind,
        )
    return out


def run_bytes(
    work: Path,
    sizes: list[int],
    client_counts: list[int],
    reps: int,
    core: int | None,
    mlflow_python: Path | None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    files = {}
    for size in sizes:
        files[size] = work / f"data-{size}"
        with files[size].open("wb") as f:
            for _ in range(max(size // MiB, 1)):
                f.write(os.urandom(min(size, MiB)))
    rows: list[dict[str, Any]] = []
    limits_seen: list[dict[str, float]] = []
    # MLflow takes 30-60 s to start here, so one server serves the whole run (each timed
    # transfer still follows its own warm-up; what it stored is removed after each scenario)
    mlflow: ServerProcess | None = None
    root = work / "mlflow"
    try:
        if mlflow_python is not None:
            mlflow = mlflow_server(mlflow_python, root, core, work / "mlflow.log")
        for size in sizes:
            for clients in client_counts:
                rows += bytes_rows(files[size], clients, reps, work, core, mlflow, limits_seen, log)
                shutil.rmtree(root / "bench", ignore_errors=True)
    finally:
        if mlflow is not None:
            mlflow.stop()
    limits_median = {k: median([lim[k] for lim in limits_seen]) for k in limits_seen[0]}
    return {
        "limits": limits_median,
        "results": rows,
        "reps": reps,
        "peer": "mlflow" if mlflow_python is not None else None,
    }


def bytes_rows(
    data: Path,
    clients: int,
    reps: int,
    work: Path,
    core: int | None,
    mlflow: ServerProcess | None,
    limits_seen: list[dict[str, float]],
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Upload and download rows of one (size, clients): `reps` interleaved repetitions of the
    limit, ours, the bare reference and (when running) MLflow."""
    size = data.stat().st_size
    per_rep: list[dict[str, Any]] = []
    for _ in range(reps):
        limits = byte_limits(work, min(size * clients, 256 * MiB))
        limits_seen.append(limits)
        rep: dict[str, Any] = {"limits": limits}
        for kind in ("upload", "download"):
            rep[kind] = {
                "ours": ours(kind, data, clients, work, core),
                "reference": reference(kind, data, clients, work, core),
            }
        if mlflow is not None:
            for kind, timing in peer(mlflow, ["upload", "download"], data, clients).items():
                rep[kind]["mlflow"] = timing
        per_rep.append(rep)
    rows = []
    for kind in ("upload", "download"):
        r = summarise(kind, size, clients, per_rep)
        rows.append(r)
        log(
            f"  {kind:8} {fmt_size(size):>7} x{clients}: {r['MBps']:8.1f} MB/s  "
            f"x sha256+write {r['ratio']:.2f}  x bare ASGI {r['vs_reference']:.2f}  "
            + (f"x MLflow {r['vs_mlflow']:.2f}  " if r.get("vs_mlflow") else "")
            + f"cpu {r['cpu_s_per_GB']:.2f} s/GB  rss +{r['rss_growth_MiB']:.1f} MiB"
        )
    return rows


def summarise(kind: str, size: int, clients: int, per_rep: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repetitions of each per-rep ratio (MEASURED.md: ratios, then medians)."""

    def med(f: Callable[[dict[str, Any]], float]) -> float:
        return median([f(rep) for rep in per_rep])

    row: dict[str, Any] = {
        "scenario": kind,
        "size": size,
        "clients": clients,
        "reps": len(per_rep),
        "MBps": med(lambda r: r[kind]["ours"].MBps),
        "ratio": med(lambda r: r[kind]["ours"].MBps / r["limits"]["sha256_write_MBps"]),
        "reference_MBps": med(lambda r: r[kind]["reference"].MBps),
        "vs_reference": med(lambda r: r[kind]["ours"].MBps / r[kind]["reference"].MBps),
        "cpu_s_per_GB": med(lambda r: r[kind]["ours"].cpu_s_per_GB),
        "reference_cpu_s_per_GB": med(lambda r: r[kind]["reference"].cpu_s_per_GB),
        "rss_growth_MiB": max(r[kind]["ours"].rss_growth for r in per_rep) / MiB,
        "peak_rss_MiB": max(r[kind]["ours"].peak_rss for r in per_rep) / MiB,
        "sha256_write_MBps": med(lambda r: r["limits"]["sha256_write_MBps"]),
    }
    if all("mlflow" in r[kind] for r in per_rep):
        row |= {
            "mlflow_MBps": med(lambda r: r[kind]["mlflow"].MBps),
            "vs_mlflow": med(lambda r: r[kind]["ours"].MBps / r[kind]["mlflow"].MBps),
            "mlflow_cpu_s_per_GB": med(lambda r: r[kind]["mlflow"].cpu_s_per_GB),
            "mlflow_peak_rss_MiB": max(r[kind]["mlflow"].peak_rss for r in per_rep) / MiB,
        }
    return row
