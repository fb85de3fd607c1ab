"""What every group of the suite shares: paths, ports, pinned server processes, /proc readings."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
CHUNK = MiB
TICKS = os.sysconf("SC_CLK_TCK")
# glibc's dynamic mmap threshold makes streaming workers bimodal (MEASURED.md): scripts/serve sets
# these, so every server the suite starts gets them too.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4194304", "MALLOC_TRIM_THRESHOLD_": "268435456"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinning() -> tuple[int | None, int | None]:
    """(server core, client core): 0 and 1 where the machine has two cores, else no pinning."""
    return (0, 1) if (os.cpu_count() or 1) >= 2 else (None, None)


def request(
    method: str,
    port: int,
    path: str,
    body: object = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, blocksize=CHUNK)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))  # type: ignore[arg-type]
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def group_pids(pgid: int) -> list[int]:
    """Live processes of a process group (a server started with start_new_session)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_status(pid: int, key: str) -> int:
    """A /proc/<pid>/status figure in bytes (VmRSS, VmHWM), 0 when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


class ServerProcess:
    """A server under test in its own process group, optionally pinned with taskset, stopped by
    its group. `ready(port)` is polled until it answers True (bounded by `timeout`)."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        port: int,
        ready: Callable[[int], bool],
        core: int | None,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        timeout: float = 60,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.port = port
        self.code: dict[str, object] = {}  # where its code came from (our_server)
        self.log = log
        full = [*cmd]
        if core is not None:
            full = ["taskset", "-c", str(core), *full]
        out = log.open("ab") if log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            full,
            env={**os.environ, **MALLOC_ENV, **(env or {})},
            cwd=cwd,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        if log is not None:
            out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if ready(port):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        exited = self.proc.poll()
        self.stop()
        why = f"exited with {exited}" if exited is not None else f"did not start in {timeout:.0f} s"
        raise RuntimeError(f"{name} {why}{self._log_tail()}")

    def _log_tail(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return ":\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        return group_pids(self.proc.pid) if self.proc.poll() is None else []

    def worker_pid(self) -> int:
        """The process that serves requests: the newest of the group (uvicorn and MLflow start
        the worker last; our server is a single process)."""
        return max(self.pids(), default=self.proc.pid)

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(p) for p in self.pids())

    def rss(self) -> int:
        return sum(proc_status(p, "VmRSS") for p in self.pids())

    def peak_rss(self) -> int:
        return sum(proc_status(p, "VmHWM") for p in self.pids())

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        # whatever of the group outlived its leader (a worker) goes too
        for pid in group_pids(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_ok(path: str, method: str = "GET") -> Callable[[int], bool]:
    def check(port: int) -> bool:
        return request(method, port, path, timeout=5)[0] == 200

    return check


# `artifacts serve` as `python -c`, so that the code served is whatever `app` the interpreter
# finds first: cwd and PYTHONPATH pick the tree (this worktree, or a baseline's: bench/baseline.py).
# Before serving, it writes where `app` and `storage` came from to $BENCH_CODE_PROBE, which
# our_server checks: a figure is never credited to the wrong tree.
SERVE_CODE = """\
import json, os, sys
import app, storage
probe = os.environ.get("BENCH_CODE_PROBE")
if probe:
    with open(probe, "w") as f:
        json.dump({"app": app.__file__, "storage": storage.__file__, "pid": os.getpid(),
                   "cwd": os.getcwd(), "executable": sys.executable}, f)
from app.cli import main
main()
"""


def code_env(code_root: Path) -> dict[str, str]:
    """The environment that makes this interpreter import `app` and `storage` from code_root
    (ahead of the editable install of this worktree, which sits at the end of sys.meta_path)."""
    if code_root == ROOT:
        return {}
    rest = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(code_root) + (os.pathsep + rest if rest else "")}


def code_origin(probe: dict[str, object], code_root: Path) -> str | None:
    """None when `app` and `storage` in a probe both come from code_root, else what is wrong."""
    root = code_root.resolve()
    for name in ("app", "storage"):
        where = Path(str(probe.get(name))).resolve()
        if not where.is_relative_to(root):
            return f"`{name}` was imported from {where}, not from {root}"
    return None


def our_server(
    data_dir: Path,
    core: int | None,
    *,
    database_url: str | None = None,
    log: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    code_root: Path = ROOT,
) -> ServerProcess:
    """`artifacts serve` (the code of code_root, by default this worktree's, on this interpreter),
    open mode on loopback, no rate limit and no periodic GC (neither belongs in a throughput
    figure). Fails unless the process serving really imported code_root's `app` and `storage`;
    `server.code` holds what it reported."""
    port = free_port()
    data_dir = data_dir.resolve()  # the server's cwd may be another tree
    data_dir.mkdir(parents=True, exist_ok=True)
    probe = data_dir.with_name(data_dir.name + ".code.json")
    probe.unlink(missing_ok=True)
    env = {
        "ARTIFACTS_PORT": str(port),
        "ARTIFACTS_DATA_DIR": str(data_dir),
        "ARTIFACTS_LOG_LEVEL": "warning",
        "ARTIFACTS_RATE_LIMIT": "",
        "ARTIFACTS_GC_INTERVAL": "0",
        "BENCH_CODE_PROBE": str(probe),
        **code_env(code_root),
        **(extra_env or {}),
    }
    if database_url:
        env["ARTIFACTS_DATABASE_URL"] = database_url
    cmd = [sys.executable, "-c", SERVE_CODE, "serve"]
    server = ServerProcess(
        "artifacts serve",
        cmd,
        port=port,
        ready=http_ok("/readyz"),
        core=core,
        env=env,
        log=log,
        cwd=code_root,
    )
    try:
        server.code = json.loads(probe.read_text())
        wrong = code_origin(server.code, code_root)
        if wrong is None and server.code.get("pid") != server.pid:
            wrong = f"the probe came from pid {server.code.get('pid')}, not the server's"
    except (OSError, ValueError) as exc:
        wrong = f"no readable code probe at {probe}: {exc}"
    if wrong is not None:
        server.stop()
        raise RuntimeError(f"artifacts serve is not serving the code of {code_root}: {wrong}")
    return server


def uvicorn_server(
    name: str,
    python: str,
    app: str,
    core: int | None,
    *,
    ready_path: str,
    ready_method: str = "GET",
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
) -> ServerProcess:
    """A reference app on uvicorn, one worker, the same loop and parser as ours (uvloop and
    httptools where installed: uvicorn's `auto`)."""
    port = free_port()
    cmd = [python, "-m", "uvicorn", app, "--port", str(port), "--log-level", "warning"]
    return ServerProcess(
        name, cmd, port=port, ready=http_ok(ready_path, ready_method), core=core, env=env, log=log
    )


def fmt_size(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):g} GiB"
    if n >= MiB:
        return f"{n / MiB:g} MiB"
    return f"{n / 1024:g} KiB"


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return float("nan")
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
