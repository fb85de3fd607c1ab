"""Syntropic137's own clients, run as they are against a real server: the `syn` CLI (Node) and
the dashboard's production build (served by a small static server and reverse proxy, driven in
Debian's Chromium by Playwright). The clients live in `<repo>/../shared/clients/` (see its
README); `scripts/test` installs Chromium when it is missing. Without a client or its runtime
the tests skip, saying why, except under CI (`CI` set), where they fail."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import mimetypes
import os
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.databases import fresh_database
from tests.support.servers import ROOT, Server, start_server

CLIENTS = ROOT.parent / "shared" / "clients"
CLI_DIR = CLIENTS / "syntropic-cli"
DASHBOARD_DIST = CLIENTS / "syntropic-dashboard" / "dist"
CHROMIUM = Path("/usr/bin/chromium")

# Chromium flags for a closed machine, running as root: no sandbox (root), and none of the
# background connections (updates, sync, QUIC) that this network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def unavailable(reason: str) -> None:
    """Skip, saying why; under CI a missing client or runtime is a failure, not a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the clients' tests must run)", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------- the seeded workflow

WORKFLOW = "wf-release-notes"
OTHER_WORKFLOW = "wf-onboarding"
# Extra artifact type the dashboard's type filter offers; a deployment setting here.
SERVER_ENV = {"ARTIFACTS_EXTRA_ARTIFACT_TYPES": "image"}

MARKDOWN = (
    "# User research, Q3\n"
    "\n"
    "What users asked for in **Q3**.\n"
    "\n"
    "## Findings\n"
    "\n"
    "- Faster exports\n"
    "- Lineage in the dashboard\n"
    "- Fewer clicks\n"
)
PLAN = "# Plan\n\n1. Ship exports\n2. Ship lineage\n"
JSON_TEXT = '{\n  "version": "2.4.0",\n  "features": ["exports", "lineage"]\n}\n'
CODE_TEXT = 'def release(version: str) -> str:\n    return f"v{version}"\n'
SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4">'
    '<rect width="4" height="4"/></svg>\n'
)
NOTES = "# Release notes 2.4\n\n## New\n\n- Exports\n- Lineage\n"


@contextmanager
def running_api(root: Path) -> Iterator[Server]:
    """`artifacts serve` over a new SQLite file under `root`, with the `image` type."""
    with fresh_database(root, "sqlite") as url:
        server = start_server(root / "data", database_url=url, env=SERVER_ENV)
        try:
            yield server
        finally:
            server.stop()


@dataclass(frozen=True)
class Seeded:
    """One artifact as seeded: the fields a person should see, and its id from the server."""

    key: str
    id: str
    workflow_id: str
    title: str
    artifact_type: str
    phase_id: str
    content: str
    content_type: str
    derived_from: tuple[str, ...] = ()
    primary: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()


@dataclass
class SeededWorkflow:
    workflow_id: str
    artifacts: dict[str, Seeded] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Seeded:
        return self.artifacts[key]


# key, phase, type, title, content, content type, parents (keys), primary deliverable
_SEED: tuple[tuple[str, str, str, str, str, str, tuple[str, ...], bool], ...] = (
    ("research", "research", "markdown", "Release research", MARKDOWN, "text/markdown", (), True),
    ("survey", "research", "json", "Survey results", JSON_TEXT, "application/json", (), False),
    ("plan", "planning", "plan", "Release plan", PLAN, "text/markdown", ("research",), True),
    ("code", "build", "code", "release.py", CODE_TEXT, "text/x-python", ("plan",), False),
    ("diagram", "build", "image", "Architecture diagram", SVG, "image/svg+xml", ("plan",), False),
    (
        "notes",
        "publish",
        "markdown",
        "Release notes 2.4",
        NOTES,
        "text/markdown",
        ("plan", "survey"),
        True,
    ),
)


def seed_other_workflow(http: httpx.Client) -> Seeded:
    """A second workflow, created before the main one, that shares the phase `research`: what
    the workflow filter must leave out."""
    content = "# Onboarding\n\n- Sign up\n"
    r = http.post(
        "/artifacts",
        json={
            "workflow_id": OTHER_WORKFLOW,
            "phase_id": "research",
            "artifact_type": "markdown",
            "title": "Onboarding interviews",
            "content": content,
        },
    )
    assert r.status_code == 201, r.text
    return Seeded(
        "other",
        r.json()["id"],
        OTHER_WORKFLOW,
        "Onboarding interviews",
        "markdown",
        "research",
        content,
        "text/markdown",
    )


def seed_workflow(http: httpx.Client, workflow_id: str = WORKFLOW) -> SeededWorkflow:
    """One workflow over four phases, created through our HTTP API in order (so `notes` is the
    newest): markdown with headings and lists, JSON, code, an `image`, lineage and a primary
    deliverable in three phases."""
    seeded = SeededWorkflow(workflow_id)
    for key, phase, kind, title, content, content_type, parents, primary in _SEED:
        parent_ids = tuple(seeded[p].id for p in parents)
        r = http.post(
            "/artifacts",
            json={
                "workflow_id": workflow_id,
                "phase_id": phase,
                "session_id": f"session-{phase}",
                "artifact_type": kind,
                "title": title,
                "content": content,
                "content_type": content_type,
                "derived_from": list(parent_ids),
                "is_primary_deliverable": primary,
            },
        )
        assert r.status_code == 201, r.text
        seeded.artifacts[key] = Seeded(
            key,
            r.json()["id"],
            workflow_id,
            title,
            kind,
            phase,
            content,
            content_type,
            parent_ids,
            primary,
        )
    return seeded


# --------------------------------------------------------------------------- the syn CLI


@dataclass(frozen=True)
class SynResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    requests: tuple[str, ...]  # what reached the server: `METHOD target`

    def __str__(self) -> str:
        return (
            f"syn {' '.join(self.args)} -> exit {self.returncode}\n"
            f"requests: {list(self.requests)}\nstdout:\n{self.stdout}stderr:\n{self.stderr}"
        )


@dataclass(frozen=True)
class Syn:
    """`node syn.js` from a copy of the client with its npm packages installed, pointed at a
    recording proxy in front of the server."""

    script: Path
    proxy: Front

    def run(self, *args: str, prefix: bool = True) -> SynResult:
        """prefix=True: as shipped, calling `/api/v1/…`; False: `SYN_NO_PREFIX=1`, root paths.
        Colourless, and in UTC so the printed times are the server's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYN_")}
        env.update(SYN_API_URL=self.proxy.url, NO_COLOR="1", TZ="UTC")
        if not prefix:
            env["SYN_NO_PREFIX"] = "1"
        self.proxy.requests.clear()
        proc = subprocess.run(
            ["node", str(self.script), *args],
            cwd=self.script.parent,  # where a command that writes files would put them
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        return SynResult(
            tuple(args), proc.returncode, proc.stdout, proc.stderr, tuple(self.proxy.requests)
        )


def install_syn(dest: Path) -> Path:
    """Copy the CLI to `dest` and `npm install` its two pinned packages there; returns syn.js.
    npm's own cache makes a repeat cost well under a second."""
    if not (CLI_DIR / "syn.js").is_file():
        unavailable(f"the syn CLI is not at {CLI_DIR} (../shared/clients beside the repository)")
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            unavailable(f"`{tool}` is not on PATH: the syn CLI needs Node.js and npm")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("syn.js", "package.json", "LICENSE"):
        shutil.copyfile(CLI_DIR / name, dest / name)  # contents only: shared/ is read-only
    proc = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--prefer-offline"],
        cwd=dest,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        unavailable(f"npm install of the syn CLI's packages failed:\n{proc.stdout}{proc.stderr}")
    return dest / "syn.js"


# --------------------------------------------------------------------------- the front server

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
}


class _FrontHandler(http.server.BaseHTTPRequestHandler):
    """A reverse proxy to the API, and optionally the dashboard's static files. As the dashboard
    is served upstream: `/api/v1/*` forwarded with the prefix removed, everything else a file
    of `dist/` with `index.html` for the single-page app's own routes. Without `dist`, every
    request is forwarded as it came (a recording proxy in front of the CLI)."""

    protocol_version = "HTTP/1.1"
    server: _FrontServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        path = urllib.parse.urlsplit(self.path).path
        if self.server.dist is None:
            self._proxy(self.path)
        elif path == "/api/v1" or path.startswith("/api/v1/"):
            self._proxy(self.path[len("/api/v1") :] or "/")
        elif self.command in ("GET", "HEAD"):
            self._static(path)
        else:
            self._send(405, b"method not allowed", "text/plain")

    def _proxy(self, target: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection(self.server.api_host, self.server.api_port, 30)
        try:
            upstream.request(self.command, target, body=body, headers=headers)
            answer = upstream.getresponse()
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            if self.command == "HEAD" or answer.status in (204, 304):
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            # Streamed in chunks, so a long-lived answer (Server-Sent Events) flows as it comes.
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while chunk := answer.read1(65536):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        finally:
            upstream.close()

    def _static(self, path: str) -> None:
        root = self.server.dist
        assert root is not None
        candidate = (root / urllib.parse.unquote(path).lstrip("/")).resolve()
        if root not in candidate.parents or not candidate.is_file():
            candidate = root / "index.html"
        content_type = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
        if candidate.suffix == ".js":
            content_type = "text/javascript"
        self._send(200, candidate.read_bytes(), content_type)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _FrontServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api_url: str, dist: Path | None) -> None:
        super().__init__(("127.0.0.1", 0), _FrontHandler)
        api = urllib.parse.urlsplit(api_url)
        assert api.hostname and api.port
        self.api_host, self.api_port = api.hostname, api.port
        self.dist = dist.resolve() if dist else None
        self.requests: list[str] = []


@dataclass
class Front:
    """A front server on a free loopback port, in a thread of the test process."""

    url: str
    httpd: _FrontServer
    thread: threading.Thread

    @property
    def requests(self) -> list[str]:
        """`METHOD target` of every request it received, in order."""
        return self.httpd.requests

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


def _start_front(api_url: str, dist: Path | None) -> Front:
    httpd = _FrontServer(api_url, dist)
    thread = threading.Thread(target=httpd.serve_forever, name="front", daemon=True)
    thread.start()
    return Front(f"http://127.0.0.1:{httpd.server_address[1]}", httpd, thread)


def start_dashboard(api_url: str) -> Front:
    """The dashboard's `dist/` as it is, with `/api/v1/*` forwarded to `api_url` unprefixed."""
    if not (DASHBOARD_DIST / "index.html").is_file():
        unavailable(f"the dashboard's build is not at {DASHBOARD_DIST}")
    return _start_front(api_url, DASHBOARD_DIST)


def start_recording_proxy(api_url: str) -> Front:
    """Every request forwarded to `api_url` unchanged, and recorded."""
    return _start_front(api_url, None)


def chromium_executable() -> str:
    """Debian's Chromium (`scripts/test` installs it); skips (fails under CI) without it."""
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(
            f"{CHROMIUM} is missing: `apt-get install chromium` (scripts/test does it as root)"
        )
    return str(CHROMIUM)


def is_loopback(url: str) -> bool:
    return urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")
