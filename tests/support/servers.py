"""Real servers: `artifacts serve` (uvicorn) in a process of its own on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def start_server(
    data_dir: Path, *, database_url: str | None = None, env: dict[str, str] | None = None
) -> Server:
    """`artifacts serve` in its own process group on a free loopback port; waits for /healthz."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / f"server-{port}.log"
    environ = {
        **os.environ,
        "ARTIFACTS_HOST": "127.0.0.1",
        "ARTIFACTS_PORT": str(port),
        "ARTIFACTS_DATA_DIR": str(data_dir),
        "ARTIFACTS_LOG_LEVEL": "warning",
        **(env or {}),
    }
    if database_url:
        environ["ARTIFACTS_DATABASE_URL"] = database_url
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", "from app.cli import main; main()", "serve"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
    server = Server(f"http://127.0.0.1:{port}", data_dir, process, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"server did not start:\n{log.read_text()}")
