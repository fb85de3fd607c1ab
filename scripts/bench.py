#!/usr/bin/env python3
"""Byte-path benchmarks: upload and download MB/s as ratios to this machine's sha256+write MB/s.

How (../shared/design/MEASURED.md): a fresh server process per repetition, pinned to core 0
with the client on core 1; a warm-up right before each timed scenario; every figure divided by
the limit measured in the same run; the median of the per-run ratios is reported, with server
CPU-seconds per GB and peak server RSS growth. Loopback only; every run bounded in time.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
CHUNK = MiB
TICKS = os.sysconf("SC_CLK_TCK")


# -- the machine's own limits ------------------------------------------------------------------


def measure_limits(work: Path, size: int) -> dict[str, float]:
    """One-core sha256 MB/s, and sha256 + write + fsync + rename MB/s, of `size` bytes."""
    block = os.urandom(CHUNK)
    rounds = max(size // CHUNK, 1)

    def sha_only() -> float:
        h = hashlib.sha256()
        t = time.perf_counter()
        for _ in range(rounds):
            h.update(block)
        return rounds * CHUNK / (time.perf_counter() - t) / 1e6

    def sha_write(fsync: bool) -> float:
        path = work / f"limit-{secrets.token_hex(4)}"
        h = hashlib.sha256()
        t = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        for _ in range(rounds):
            h.update(block)
            os.write(fd, block)
        if fsync:
            os.fsync(fd)
        os.close(fd)
        os.replace(path, path.with_suffix(".done"))
        elapsed = time.perf_counter() - t
        path.with_suffix(".done").unlink()
        return rounds * CHUNK / elapsed / 1e6

    sha_only()
    sha_write(True)  # warm-up
    return {
        "sha256_MBps": statistics.median(sha_only() for _ in range(3)),
        "sha256_write_MBps": statistics.median(sha_write(False) for _ in range(3)),
        "sha256_write_fsync_MBps": statistics.median(sha_write(True) for _ in range(3)),
    }


# -- a server under test -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`artifacts serve` (reference=False) or the bare ASGI reference app, on a fresh port."""

    def __init__(self, data_dir: Path, core: int | None, reference: bool = False) -> None:
        self.port = free_port()
        self.reference = reference
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "ARTIFACTS_PORT": str(self.port),
            "ARTIFACTS_DATA_DIR": str(data_dir),
            "ARTIFACTS_LOG_LEVEL": "warning",
            "MALLOC_MMAP_THRESHOLD_": "4194304",
            "MALLOC_TRIM_THRESHOLD_": "268435456",
        }
        cmd = [sys.executable, "-c", "from app.cli import main; main()", "serve"]
        if reference:
            env["BENCH_REFERENCE_DIR"] = str(data_dir)
            cmd = [sys.executable, "-m", "uvicorn", "scripts.bench_reference:app"]
            cmd += ["--port", str(self.port), "--log-level", "warning"]
        if core is not None:
            cmd = ["taskset", "-c", str(core), *cmd]
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                path = "/ping" if reference else "/readyz"
                if request("GET" if not reference else "POST", self.port, path)[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("server did not start")
        # the worker is the process itself (no reloader, one worker)
        self.pid = self.proc.pid

    def status(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def request(
    method: str, port: int, path: str, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600, blocksize=CHUNK)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class MultipartFile:
    """A file-like multipart/form-data body around a data file, read in blocks (never whole)."""

    def __init__(self, path: Path, prefix: bytes) -> None:
        self.boundary = secrets.token_hex(16)
        head = (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="data.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        self.parts = [head + prefix, path, f"\r\n--{self.boundary}--\r\n".encode()]
        self.length = len(head) + len(prefix) + path.stat().st_size + len(self.parts[2])
        self.file = None
        self.index = 0

    def read(self, n: int = -1) -> bytes:
        while self.index < len(self.parts):
            part = self.parts[self.index]
            if isinstance(part, Path):
                if self.file is None:
                    self.file = part.open("rb")
                data = self.file.read(n)
                if data:
                    return data
                self.file.close()
            else:
                self.parts[self.index] = b""
                if part:
                    return part
            self.index += 1
        return b""


def create_artifact(port: int) -> str:
    body = json.dumps(
        {"workflow_id": "bench", "artifact_type": "other", "title": "b", "content": "x"}
    )
    status, out = request("POST", port, "/artifacts", body, {"Content-Type": "application/json"})
    assert status == 201, out
    return str(json.loads(out)["id"])


class PrefixedFile:
    """A raw body: a per-client prefix, then the data file, read in blocks."""

    def __init__(self, path: Path, prefix: bytes) -> None:
        self.prefix, self.file = prefix, path.open("rb")
        self.length = len(prefix) + path.stat().st_size

    def read(self, n: int = -1) -> bytes:
        if self.prefix:
            out, self.prefix = self.prefix, b""
            return out
        data = self.file.read(n)
        if not data:
            self.file.close()
        return data


def upload_reference(port: int, data: Path, prefix: bytes) -> None:
    body = PrefixedFile(data, prefix)
    headers = {"Content-Length": str(body.length)}
    status, out = request("POST", port, "/upload", body, headers)
    assert status == 200, out


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
        assert response.status == 200
        buffer = memoryview(bytearray(CHUNK))
        total = 0
        while n := response.readinto(buffer):
            total += n
        return total
    finally:
        conn.close()


@dataclass
class Result:
    scenario: str
    size: int
    clients: int
    MBps: float
    ratio: float  # to the same rep's sha256+write MB/s
    vs_reference: float  # to the same rep's bare ASGI reference doing the same transfer
    cpu_s_per_GB: float
    rss_growth_MiB: float


@dataclass
class Timing:
    MBps: float
    cpu_s_per_GB: float
    rss_growth: int


def timed_transfers(
    kind: str, data: Path, clients: int, work: Path, core: int | None, reference: bool
) -> Timing:
    """One fresh server; warm-up; then `clients` concurrent transfers of `data`, timed."""
    size = data.stat().st_size
    server_dir = work / f"srv-{secrets.token_hex(4)}"
    server_dir.mkdir()
    if reference:
        os.link(data, server_dir / "ref-download")  # what its GET serves
    server = Server(server_dir, core, reference)
    try:
        prefixes = [secrets.token_bytes(16) for _ in range(clients)]  # distinct blobs per client
        if reference:
            ids = [""] * clients
            send = lambda i: upload_reference(server.port, data, prefixes[i])  # noqa: E731
            fetch = lambda i: download(server.port, "/download")  # noqa: E731
        else:
            ids = [create_artifact(server.port) for _ in range(clients)]
            send = lambda i: upload(server.port, ids[i], data, prefixes[i])  # noqa: E731
            fetch = lambda i: download(server.port, f"/artifacts/{ids[i]}/download")  # noqa: E731
        send(0)  # warm-up right before the timed run
        fetch(0)
        if kind == "download":
            for i in range(clients):
                send(i)
        rss_before = server.status("VmRSS")
        cpu_before = server.cpu_seconds()
        errors: list[BaseException] = []

        def one(i: int) -> None:
            try:
                send(i) if kind == "upload" else fetch(i)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        if errors:
            raise errors[0]
        total = (size + 16) * clients
        cpu = server.cpu_seconds() - cpu_before
        rss_growth = max(server.status("VmHWM") - rss_before, 0)
        return Timing(total / elapsed / 1e6, cpu / (total / 1e9), rss_growth)
    finally:
        server.stop()


def run_scenario(
    kind: str, data: Path, clients: int, work: Path, limit: float, core: int | None
) -> Result:
    ours = timed_transfers(kind, data, clients, work, core, reference=False)
    ref = timed_transfers(kind, data, clients, work, core, reference=True)
    return Result(
        kind,
        data.stat().st_size,
        clients,
        ours.MBps,
        ours.MBps / limit,
        ours.MBps / ref.MBps,
        ours.cpu_s_per_GB,
        ours.rss_growth / MiB,
    )


def fmt_size(n: int) -> str:
    return f"{n // (1 << 30)} GiB" if n >= 1 << 30 else f"{n // MiB} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="add 1 GiB; 3 repetitions")
    parser.add_argument("--reps", type=int, help="repetitions per scenario (median reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    sizes = [MiB, 64 * MiB] + ([1 << 30] if args.full else [])
    reps = args.reps or (3 if args.full else 1)
    pin = (os.cpu_count() or 1) >= 2
    if pin:
        os.sched_setaffinity(0, {1})  # the client; the server goes to core 0
    core = 0 if pin else None

    with tempfile.TemporaryDirectory(dir=ROOT / "var" if (ROOT / "var").is_dir() else None) as tmp:
        work = Path(tmp)
        files = {}
        for size in sizes:
            files[size] = work / f"data-{size}"
            with files[size].open("wb") as f:
                for _ in range(max(size // MiB, 1)):
                    f.write(os.urandom(min(size, MiB)))
        rows: list[dict[str, Any]] = []
        limits_seen: list[dict[str, float]] = []
        for size in sizes:
            for clients in (1, 8):
                for kind in ("upload", "download"):
                    ratios, results = [], []
                    for _ in range(reps):
                        limits = measure_limits(work, min(size * clients, 256 * MiB))
                        limits_seen.append(limits)
                        result = run_scenario(
                            kind, files[size], clients, work, limits["sha256_write_MBps"], core
                        )
                        ratios.append(result.ratio)
                        results.append(result)
                    best = results[ratios.index(statistics.median_low(ratios))]
                    row = asdict(best) | {"ratio_median": statistics.median(ratios), "reps": reps}
                    rows.append(row)
                    print(
                        f"{kind:8} {fmt_size(size):>7} x{clients}: {best.MBps:8.1f} MB/s  "
                        f"ratio {row['ratio_median']:.2f}  vs bare ASGI {best.vs_reference:.2f}  "
                        f"cpu {best.cpu_s_per_GB:.2f} s/GB  "
                        f"rss +{best.rss_growth_MiB:.1f} MiB",
                        flush=True,
                    )
    limits_median = {
        key: statistics.median(lim[key] for lim in limits_seen) for key in limits_seen[0]
    }
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    args.out.mkdir(exist_ok=True)
    report = {"date": stamp, "limits": limits_median, "results": rows, "full": args.full}
    (args.out / f"{stamp}.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"Run {stamp} ({'full' if args.full else 'quick'}, {reps} rep(s)); limits: "
        + ", ".join(f"{k} {v:.0f}" for k, v in limits_median.items()),
        "",
        "| scenario | size | clients | MB/s | vs sha256+write | vs bare ASGI | CPU s/GB | RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {fmt_size(r['size'])} | {r['clients']} | {r['MBps']:.0f} "
            f"| {r['ratio_median']:.2f} | {r['vs_reference']:.2f} | {r['cpu_s_per_GB']:.2f} "
            f"| {r['rss_growth_MiB']:.1f} MiB |"
        )
    (args.out / f"{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
