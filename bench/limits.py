"""The machine's own limits, measured in the same run as what is compared with them."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import CHUNK, ROOT, ServerProcess, free_port, http_ok, uvicorn_server
from bench.loadgen import drive


def byte_limits(work: Path, size: int) -> dict[str, float]:
    """One-core sha256 MB/s, and sha256 + write (+ fsync) + rename MB/s, of `size` bytes."""
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


def durable_create(work: Path, seconds: float, core: int | None) -> dict[str, float]:
    """bench.durable's loop in its own process, pinned where the server runs."""
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bench.durable", str(work), str(seconds)]
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=seconds + 60, check=True, cwd=ROOT
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def json_phase(name: str, concurrency: int, duration: float, warmup: float) -> dict[str, Any]:
    return {
        "name": name,
        "concurrency": concurrency,
        "duration": duration,
        "warmup": warmup,
        "requests": [{"method": "GET", "path": "/json"}],
    }


def fixed_json_rps(
    server: ServerProcess, concurrency: int, duration: float, warmup: float
) -> dict[str, Any]:
    result = drive(server.port, [json_phase("json", concurrency, duration, warmup)], server.pids())
    return result[0]


def granian_server(python: str, core: int | None, log: Path | None) -> ServerProcess:
    """bench.reference on granian: one worker, one runtime thread, uvloop where it has it."""
    port = free_port()
    granian = str(Path(python).parent / "granian")
    cmd = [granian, "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1", "--runtime-threads", "1", "--loop", "uvloop"]
    cmd += ["--log-level", "warning", "bench.reference:app"]
    return ServerProcess(
        "granian", cmd, port=port, ready=http_ok("/json"), core=core, log=log, timeout=60
    )


def request_references(
    bench_python: str | None,
    core: int | None,
    work: Path,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
) -> dict[str, Any]:
    """Fixed-small-JSON requests/s of: the bare ASGI app and a plain Litestar handler on uvicorn
    (this environment: the same uvicorn and Litestar as ours), and the bare app on granian (the
    bench-only environment, when there is one). Each on a fresh server pinned like ours."""
    out: dict[str, Any] = {}
    log = work / "references.log"
    env = {"BENCH_REFERENCE_DIR": str(work)}
    servers: list[tuple[str, Any]] = [
        (
            "bare_asgi_uvicorn",
            lambda: uvicorn_server(
                "bare ASGI",
                sys.executable,
                "bench.reference:app",
                core,
                ready_path="/json",
                env=env,
                log=log,
            ),
        ),
        (
            "litestar_uvicorn",
            lambda: uvicorn_server(
                "Litestar",
                sys.executable,
                "bench.litestar_ref:app",
                core,
                ready_path="/json",
                log=log,
            ),
        ),
    ]
    if bench_python:
        servers.append(("bare_asgi_granian", lambda: granian_server(bench_python, core, log)))
    for name, start in servers:
        try:
            with start() as server:
                out[name] = fixed_json_rps(server, concurrency, duration, warmup)
        except Exception as exc:  # one reference failing leaves the others standing
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out
