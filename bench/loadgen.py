"""A closed-loop HTTP/1.1 load generator that is not the bottleneck: one process (run it on the
other core), asyncio Protocols on uvloop, keep-alive connections, requests prebuilt as bytes,
responses framed by Content-Length with no header parsing beyond it. It reaches several times
the requests/s of the fastest reference server here, and reports its own CPU use so a run can
tell when it came close to its limit.

Run as `python -m bench.loadgen` with a JSON spec on stdin; prints a JSON list of results:

    {"port": 8000, "server_pids": [123],
     "phases": [{"name": "get", "concurrency": 16, "duration": 2.0, "warmup": 0.5,
                 "requests": [{"method": "GET", "path": "/x", "headers": {}, "body": null}]}]}

A body may hold the marker `@@SEQ@@` (12 characters): each request replaces it by a distinct
zero-padded number, so that creates of "the same" content store distinct blobs. Connections
start at different offsets of the request list and walk it round.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEQ = b"@@SEQ@@"
SEQ_WIDTH = 12
TICKS = os.sysconf("SC_CLK_TCK")


def build(method: str, path: str, headers: dict[str, str], body: str | None) -> list[bytes]:
    """The request as bytes, split at the sequence marker (one part when there is none)."""
    data = b"" if body is None else body.encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body is not None:
        length = len(data) - len(SEQ) + SEQ_WIDTH if SEQ in data else len(data)
        lines.append(f"Content-Length: {length}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    if SEQ in data:
        before, after = data.split(SEQ, 1)
        return [head + before, after]
    return [head + data]


@dataclass
class Phase:
    name: str
    concurrency: int
    duration: float
    warmup: float
    requests: list[list[bytes]]
    max_requests: int | None = None
    latencies: list[int] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    measure_from: float = 0.0
    stop_at: float = 0.0
    seq: int = 0


class Client(asyncio.Protocol):
    def __init__(self, phase: Phase, offset: int, done: asyncio.Future[None]) -> None:
        self.phase = phase
        self.index = offset
        self.done = done
        self.buffer = bytearray()
        self.need: int | None = None
        self.started = 0
        self.status = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.send()

    def send(self) -> None:
        phase = self.phase
        now = time.perf_counter()
        sent = sum(phase.statuses.values())
        if now >= phase.stop_at or (phase.max_requests is not None and sent >= phase.max_requests):
            self.finish()
            return
        parts = phase.requests[self.index % len(phase.requests)]
        self.index += 1
        if len(parts) == 1:
            data = parts[0]
        else:
            phase.seq += 1
            data = parts[0] + str(phase.seq).zfill(SEQ_WIDTH).encode() + parts[1]
        self.started = time.perf_counter_ns()
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.need is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end]).lower()
                at = head.find(b"\r\ncontent-length:")
                if at < 0:
                    self.fail(f"response without Content-Length: {head[:200]!r}")
                    return
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop > 0 else None])
                self.status = int(head[9:12])
                self.need = end + 4 + length
            if len(self.buffer) < self.need:
                return
            del self.buffer[: self.need]
            self.need = None
            self.complete()
            if self.done.done():
                return

    def complete(self) -> None:
        phase = self.phase
        now = time.perf_counter()
        if now >= phase.measure_from:
            phase.latencies.append(time.perf_counter_ns() - self.started)
            phase.statuses[self.status] = phase.statuses.get(self.status, 0) + 1
        self.send()

    def fail(self, message: str) -> None:
        if len(self.phase.errors) < 5:
            self.phase.errors.append(message)
        self.finish()

    def finish(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.fail(f"connection lost: {exc!r}")


def cpu_ticks(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def percentile(ordered: list[int], q: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index] / 1e6


async def run_phase(port: int, phase: Phase, server_pids: list[int]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    phase.measure_from = start + phase.warmup
    phase.stop_at = phase.measure_from + phase.duration
    dones: list[asyncio.Future[None]] = []
    for i in range(phase.concurrency):
        done: asyncio.Future[None] = loop.create_future()
        dones.append(done)
        offset = i * max(1, len(phase.requests) // phase.concurrency)
        await loop.create_connection(
            functools.partial(Client, phase, offset, done), "127.0.0.1", port
        )
    # measure CPU over the timed window only
    await asyncio.sleep(max(0.0, phase.measure_from - time.perf_counter()))
    t0, c0, s0 = time.perf_counter(), os.times(), cpu_ticks(server_pids)
    await asyncio.wait_for(asyncio.gather(*dones), timeout=phase.warmup + phase.duration + 60)
    elapsed = time.perf_counter() - t0
    c1, s1 = os.times(), cpu_ticks(server_pids)
    ordered = sorted(phase.latencies)
    count = len(ordered)
    ok = sum(n for status, n in phase.statuses.items() if 200 <= status < 300)
    return {
        "name": phase.name,
        "concurrency": phase.concurrency,
        "requests": count,
        "seconds": elapsed,
        "rps": ok / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(ordered, 0.50),
        "p90_ms": percentile(ordered, 0.90),
        "p99_ms": percentile(ordered, 0.99),
        "max_ms": ordered[-1] / 1e6 if ordered else float("nan"),
        "statuses": {str(k): v for k, v in sorted(phase.statuses.items())},
        "errors": phase.errors,
        "client_cpu": (c1.user + c1.system - c0.user - c0.system) / elapsed if elapsed else 0.0,
        "server_cpu": (s1 - s0) / elapsed if elapsed else 0.0,
    }


async def run(spec: dict[str, Any]) -> list[dict[str, Any]]:
    results = []
    for p in spec["phases"]:
        phase = Phase(
            name=p["name"],
            concurrency=int(p["concurrency"]),
            duration=float(p["duration"]),
            warmup=float(p.get("warmup", 0.0)),
            max_requests=p.get("max_requests"),
            requests=[
                build(r["method"], r["path"], r.get("headers", {}), r.get("body"))
                for r in p["requests"]
            ],
        )
        results.append(await run_phase(int(spec["port"]), phase, spec.get("server_pids", [])))
    return results


def drive(
    port: int, phases: list[dict[str, Any]], server_pids: list[int], timeout: float = 900
) -> list[dict[str, Any]]:
    """Run `phases` from a separate process (it inherits this one's core) and return its results."""
    import subprocess

    spec = json.dumps({"port": port, "server_pids": server_pids, "phases": phases})
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen"],
        input=spec,
        capture_output=True,
        text=True,
        cwd=root,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    results: list[dict[str, Any]] = json.loads(out.stdout)
    return results


def main() -> int:
    spec = json.load(sys.stdin)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - the project depends on uvloop
        results = asyncio.run(run(spec))
    else:
        results = uvloop.run(run(spec))
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
