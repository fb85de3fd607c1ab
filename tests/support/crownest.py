"""A CrowNest-compatible fake for the importer's tests, served over real HTTP on loopback.

Written from the CrowNest docs (spec seeds 000-003) and held to the official `crownest` SDK by
tests/test_fake_crownest.py. Plain ASGI, served by uvicorn in a background thread.

Quick use (import the fixture into the test module, ``from tests.support.crownest import
crownest_fake  # noqa: F401``, or re-export it from a conftest)::

    def test_x(crownest_fake):                      # fixture defined below
        st = crownest_fake.state
        sbx = st.add_sandbox()                      # live sandbox in org_test / prj_test
        arts = st.add_artifacts(sbx.id, 3)          # text artifacts, oldest first
        st.inject("download", Fault.rate_limited(retry_after=1), artifact_id=arts[0].id)
        ...  # run the importer against crownest_fake.base_url with crownest_fake.api_key
        assert st.leaks() == []                     # no credential reached a foreign host

Listeners (all loopback): the API on ``base_url`` (127.0.0.1:p1); a "foreign host" on
``foreign_base_url`` (127.0.0.2:p2, None where 127.0.0.2 cannot be bound) and a same-host
other-port origin on ``other_port_base_url`` (127.0.0.1:p3). The foreign listeners never check
auth; they record every request and answer ``GET /v1/artifacts/{id}/download`` with the bytes
(standing for object storage behind a signed URL that needs no key, and so that a careless
importer "succeeds" and only the request log shows the leak), anything else a CrowNest-shaped
404 ``not_found``.

Behaviour decided where the docs are silent (the tests pin it down):

* Listing is newest first by (createdAt, id), keyset-paginated: ``limit`` 1..100 (default 50),
  an opaque ``nextCursor`` present iff ``hasMore``. Bad limit or cursor (garbled, or from another
  sandbox) -> 400 ``invalid_request``. Unknown sandbox -> 404 ``not_found``. Destroyed sandboxes
  still list. Deleted artifacts ARE listed, carrying ``deletedAt``.
* ``GET /v1/artifacts/{id}`` returns deleted records too (with deletedAt). ``/download`` and
  ``/download-url`` of a deleted artifact -> 404 ``not_found`` (its content is gone).
* ``DELETE`` is idempotent by state: a second delete returns the same record, same deletedAt.
* ``POST /v1/sandboxes/{sbx}/artifacts`` body ``{"path", "name"?}``; a relative path is taken
  under /workspace. Errors: 400 ``invalid_request`` (bad body), 404 ``not_found`` (sandbox),
  409 ``sandbox_destroyed``, 400 ``path_outside_workspace``, 404 ``file_not_found``. Answers 201.
  A repeated Idempotency-Key with the same body replays the artifact (201); with another body
  -> 409 ``idempotency_key_reused``. contentType is guessed from the name, omitted if unknown.
* ``POST .../download-url`` answers ``{"url","method":"GET","headers":{"Authorization":
  "Bearer <the caller's key>"},"authMode":"api_key"}``; url is this listener's own
  ``/v1/artifacts/{id}/download?expires=..&signature=..``; a present but wrong signature -> 403.
* Auth: ``Authorization: Bearer <key>``; missing or unknown key -> 401 ``invalid_api_key`` (with
  ``WWW-Authenticate: Bearer``); a key lacking the route's scope -> 403 ``forbidden``. Scopes:
  list/get/download/download-url ``artifact:read``; delete ``artifact:delete``; create
  ``artifact:create`` + ``file:read``. Sandbox get/kill only need a valid key. A key bound to an
  org gets 403 ``forbidden`` on other orgs' resources.
* Every error body is ``{"error": {"code", "message", "details"?}}``; unknown route 404
  ``not_found``, wrong method 405 ``method_not_allowed``.
* Downloads: ``GET /v1/artifacts/{id}/download`` on the API host is the official SDK's
  ``download()`` route (it sends the key and ``Accept: application/octet-stream``, and follows
  no redirect, so the real service answers the bytes itself): 200 with Content-Type =
  contentType or application/octet-stream, Content-Length, and Content-Disposition; sent in
  64 KiB chunks. ``Fault.redirect()`` scripts a redirect, for clients that follow one.

Fault injection: ``state.inject(route, *faults, artifact_id=None, sandbox_id=None)`` queues
faults; each request to ``route`` (``list``, ``create``, ``get``, ``delete``, ``download``,
``download_url``, ``sandbox_get``, ``sandbox_kill``) pops the head of the queue for its own
artifact/sandbox first, else of the route-wide queue. Faults apply after authentication passes
(a 401/403 consumes nothing). ``Fault.passthrough()`` answers normally, so ``inject("list",
Fault.passthrough(), Fault.repeat_cursor())`` hits page 2. See ``Fault`` for the kinds;
``state.pending_faults()`` shows what is left. Every request (foreign ones too) is appended to
``state.requests`` as a ``RecordedRequest``; ``state.leaks()`` lists foreign ones that carried
an Authorization header or any known key.

Serving: ``running_fake(state)`` starts and stops a dedicated server. The ``crownest_fake``
fixture instead shares one server per test process (started on first use, stopped at pytest
exit) and swaps a fresh ``FakeState`` in for every test, so its urls stay the same across
tests but nothing else leaks between them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import hmac
import json
import mimetypes
import posixpath
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote

import pytest
import uvicorn

DEFAULT_API_KEY = "cn_test_fake_0123456789abcdef"
FORBIDDEN_API_KEY = "cn_test_noread_0123456789abcdef"
ALL_SCOPES = frozenset({"artifact:read", "artifact:create", "artifact:delete", "file:read"})
DEFAULT_ORG = "org_test"
DEFAULT_PROJECT = "prj_test"
EPOCH = datetime(2026, 6, 9, 15, 30, tzinfo=UTC)
DEFAULT_LIMIT = 50
MAX_LIMIT = 100
MAX_SLOW_SECONDS = 10.0  # total sleep budget of one slow/delayed response
BODY_CHUNK = 64 * 1024

ROUTES = (
    "list",
    "create",
    "get",
    "delete",
    "download",
    "download_url",
    "sandbox_get",
    "sandbox_kill",
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def iso(dt: datetime) -> str:
    """CrowNest timestamp style: 2026-06-09T15:30:00.000Z."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class _Auto:
    def __repr__(self) -> str:
        return "AUTO"


AUTO: Any = _Auto()  # "derive it" default for optional artifact fields (None = omit the key)


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclass
class Sandbox:
    id: str
    org_id: str
    project_id: str
    created_at: str
    status: str = "running"  # "running" | "destroyed"
    destroyed_at: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # absolute /workspace paths

    @property
    def destroyed(self) -> bool:
        return self.status == "destroyed"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "orgId": self.org_id,
            "projectId": self.project_id,
            "status": self.status,
            "createdAt": self.created_at,
        }
        if self.destroyed_at is not None:
            out["destroyedAt"] = self.destroyed_at
        return out


@dataclass
class Artifact:
    id: str
    org_id: str
    project_id: str
    sandbox_id: str
    name: str
    object_key: str
    size_bytes: int
    created_at: str
    data: bytes | None  # None once deleted (content is gone)
    source_path: str | None = None
    content_type: str | None = None
    deleted_at: str | None = None
    retention_expires_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire shape: camelCase, optional keys omitted (never null)."""
        out: dict[str, Any] = {
            "id": self.id,
            "orgId": self.org_id,
            "projectId": self.project_id,
            "sandboxId": self.sandbox_id,
            "name": self.name,
        }
        if self.source_path is not None:
            out["sourcePath"] = self.source_path
        out["objectKey"] = self.object_key
        out["sizeBytes"] = self.size_bytes
        if self.content_type is not None:
            out["contentType"] = self.content_type
        out["createdAt"] = self.created_at
        if self.deleted_at is not None:
            out["deletedAt"] = self.deleted_at
        if self.retention_expires_at is not None:
            out["retentionExpiresAt"] = self.retention_expires_at
        return out


@dataclass
class ApiKey:
    key: str
    scopes: frozenset[str]
    org_id: str | None = None  # None: any org


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str  # raw query string
    params: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names; last value wins
    authorization: str | None  # the Authorization header as sent, or None
    host: str | None  # the Host header
    server: str  # "ip:port" of the listener that received it
    foreign: bool  # received on a foreign listener (not the API origin)
    route: str | None = None
    fault: str | None = None  # kind of the fault applied, if any
    status: int | None = None  # response status (None: dropped before headers)


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour. Build with the classmethods; fields combine where sensible
    (e.g. ``dataclasses.replace(Fault.slow(), drop_after=10)``).

    kind: passthrough | error | raw | redirect | body | drop | slow | delay | foreign_url |
    has_more_without_cursor | repeat_cursor | cycle_cursor.
    """

    kind: str
    status: int | None = None
    code: str | None = None
    message: str | None = None
    details: dict[str, Any] | None = None
    retry_after: str | None = None
    raw_body: bytes | None = None
    raw_content_type: str | None = None
    body_transform: Callable[[bytes], bytes] | None = None
    drop_after: int | None = None
    chunk_size: int | None = None
    chunk_delay: float = 0.0
    delay: float = 0.0  # before the response headers
    url: str | None = None  # foreign_url / redirect target; {foreign} {other_port} {base} {id}

    @classmethod
    def passthrough(cls) -> Fault:
        """Answer normally (a placeholder so later faults hit later requests)."""
        return cls("passthrough")

    @classmethod
    def error(
        cls,
        status: int,
        code: str | None = None,
        message: str | None = None,
        *,
        retry_after: float | str | None = None,
        details: dict[str, Any] | None = None,
    ) -> Fault:
        """A CrowNest-shaped JSON error; code defaults from the status."""
        default_code = {429: "rate_limited", 503: "service_unavailable"}.get(
            status, "internal_error" if status >= 500 else "invalid_request"
        )
        return cls(
            "error",
            status=status,
            code=code or default_code,
            message=message or f"Injected {status}.",
            details=details,
            retry_after=None if retry_after is None else _retry_after(retry_after),
        )

    @classmethod
    def rate_limited(cls, retry_after: float | str | None = 1) -> Fault:
        """429 rate_limited with Retry-After (seconds; None omits the header)."""
        return cls.error(429, "rate_limited", "Too many requests.", retry_after=retry_after)

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        return cls.error(status)

    @classmethod
    def unavailable(cls, retry_after: float | str | None = None) -> Fault:
        return cls.error(503, "service_unavailable", "Try again later.", retry_after=retry_after)

    @classmethod
    def raw(cls, status: int, body: bytes, content_type: str = "text/html") -> Fault:
        """A non-CrowNest body, e.g. a proxy's HTML 502 page."""
        return cls("raw", status=status, raw_body=body, raw_content_type=content_type)

    @classmethod
    def redirect(
        cls, location: str = "{foreign}/v1/artifacts/{id}/download", status: int = 302
    ) -> Fault:
        """A redirect (default: the same download path on the foreign host)."""
        return cls("redirect", status=status, url=location)

    @classmethod
    def body(cls, data: bytes) -> Fault:
        """Serve these bytes instead (honest Content-Length)."""
        return cls("body", body_transform=lambda _original: data)

    @classmethod
    def short_body(cls, missing: int = 1) -> Fault:
        """Serve the body minus its last `missing` bytes, Content-Length matching what is sent."""
        return cls("body", body_transform=lambda b: b[: max(len(b) - missing, 0)])

    @classmethod
    def long_body(cls, extra: bytes = b"\x00EXTRA") -> Fault:
        """Serve the body plus `extra`, Content-Length matching what is sent."""
        return cls("body", body_transform=lambda b: b + extra)

    @classmethod
    def drop(cls, after_bytes: int = 0) -> Fault:
        """Send headers with the full Content-Length, `after_bytes` of body, then close."""
        return cls("drop", drop_after=after_bytes)

    @classmethod
    def slow(cls, chunk_size: int = 1024, delay: float = 0.05) -> Fault:
        """Trickle the body: sleep `delay` before each `chunk_size` chunk (total <= 10 s)."""
        return cls("slow", chunk_size=chunk_size, chunk_delay=delay)

    @classmethod
    def delayed(cls, seconds: float) -> Fault:
        """Sleep before sending the response headers (bounded by 10 s)."""
        return cls("delay", delay=seconds)

    @classmethod
    def foreign_url(cls, url: str = "{foreign}/v1/artifacts/{id}/download") -> Fault:
        """download-url answers with this url (default: the foreign listener, else
        http://evil.example); e.g. Fault.foreign_url("http://evil.example/steal")."""
        return cls("foreign_url", url=url)

    @classmethod
    def has_more_without_cursor(cls) -> Fault:
        """A list page saying hasMore: true with no nextCursor."""
        return cls("has_more_without_cursor")

    @classmethod
    def cycle_cursor(cls) -> Fault:
        """A list page whose nextCursor is the first cursor this sandbox's listing ever issued
        (A -> B -> A: use on page >= 3 to catch importers that only compare with the last
        cursor; with nothing issued yet it answers 500 fake_misconfigured)."""
        return cls("cycle_cursor")

    @classmethod
    def repeat_cursor(cls) -> Fault:
        """A list page whose nextCursor is the cursor it was requested with (use on page >= 2;
        on a first page it answers 500 fake_misconfigured)."""
        return cls("repeat_cursor")


def _retry_after(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


class FakeState:
    """Everything the fake serves; safe to mutate from the test thread while it runs."""

    def __init__(self, *, api_key: str = DEFAULT_API_KEY) -> None:
        self._lock = threading.RLock()
        self._clock = EPOCH
        self._secret = secrets.token_bytes(16)
        self.api_key = api_key
        self.api_keys: dict[str, ApiKey] = {}
        self.orgs: dict[str, set[str]] = {}  # org id -> project ids
        self.sandboxes: dict[str, Sandbox] = {}
        self.artifacts: dict[str, Artifact] = {}
        self.requests: list[RecordedRequest] = []
        self._faults: dict[tuple[str, str | None], deque[Fault]] = {}
        self._idempotency: dict[tuple[str, str], tuple[str, str]] = {}
        self._issued_cursors: dict[str, list[str]] = {}
        # set by running_fake
        self.base_url: str | None = None
        self.foreign_base_url: str | None = None
        self.other_port_base_url: str | None = None
        self.add_api_key(api_key)
        self.add_api_key(FORBIDDEN_API_KEY, scopes=())
        self.add_project(DEFAULT_ORG, DEFAULT_PROJECT)

    # -- clock / ids ---------------------------------------------------------------------------

    def tick(self, seconds: float = 1.0) -> str:
        """The current fake time (ISO string); advances the clock by `seconds`."""
        with self._lock:
            now = self._clock
            self._clock += timedelta(seconds=seconds)
            return iso(now)

    @staticmethod
    def _new_id(prefix: str) -> str:
        return f"{prefix}_{secrets.token_hex(12)}"

    # -- keys, orgs, sandboxes, files ------------------------------------------------------------

    def add_api_key(
        self, key: str, *, scopes: Any = ALL_SCOPES, org_id: str | None = None
    ) -> ApiKey:
        with self._lock:
            api_key = ApiKey(key, frozenset(scopes), org_id)
            self.api_keys[key] = api_key
            return api_key

    def add_project(self, org_id: str, project_id: str) -> None:
        with self._lock:
            self.orgs.setdefault(org_id, set()).add(project_id)

    def add_sandbox(
        self,
        sandbox_id: str | None = None,
        *,
        org_id: str = DEFAULT_ORG,
        project_id: str = DEFAULT_PROJECT,
        destroyed: bool = False,
        files: dict[str, bytes] | None = None,
    ) -> Sandbox:
        with self._lock:
            self.add_project(org_id, project_id)
            sbx = Sandbox(
                id=sandbox_id or self._new_id("sbx"),
                org_id=org_id,
                project_id=project_id,
                created_at=self.tick(),
            )
            self.sandboxes[sbx.id] = sbx
            for path, data in (files or {}).items():
                self.add_file(sbx.id, path, data)
            if destroyed:
                self.destroy_sandbox(sbx.id)
            return sbx

    def destroy_sandbox(self, sandbox_id: str) -> Sandbox:
        """Kill it: its workspace is gone, its artifacts remain."""
        with self._lock:
            sbx = self.sandboxes[sandbox_id]
            if not sbx.destroyed:
                sbx.status = "destroyed"
                sbx.destroyed_at = self.tick()
                sbx.files.clear()
            return sbx

    def add_file(self, sandbox_id: str, path: str, data: bytes | str) -> str:
        """Put a file in the sandbox workspace (for create); returns its absolute path."""
        with self._lock:
            full = _workspace_path(path)
            if full is None:
                raise ValueError(f"{path!r} is outside /workspace")
            self.sandboxes[sandbox_id].files[full] = (
                data.encode() if isinstance(data, str) else bytes(data)
            )
            return full

    # -- artifacts -------------------------------------------------------------------------------

    def add_artifact(
        self,
        sandbox_id: str,
        data: bytes | str = b"hello",
        *,
        name: str | None = None,
        source_path: Any = AUTO,  # AUTO: /workspace/<name>; None: omitted
        content_type: Any = AUTO,  # AUTO: guessed from name (omitted if unknown); None: omitted
        size_bytes: int | None = None,  # None: len(data); set it to make the record lie
        created_at: str | None = None,  # None: the fake clock (strictly increasing)
        deleted: bool = False,
        retention_expires_at: str | None = None,
        artifact_id: str | None = None,
    ) -> Artifact:
        with self._lock:
            sbx = self.sandboxes[sandbox_id]
            raw = data.encode() if isinstance(data, str) else bytes(data)
            art_id = artifact_id or self._new_id("art")
            name = name or f"{art_id}.bin"
            if source_path is AUTO:
                source_path = f"/workspace/{name}"
            if content_type is AUTO:
                content_type = mimetypes.guess_type(name)[0]
            art = Artifact(
                id=art_id,
                org_id=sbx.org_id,
                project_id=sbx.project_id,
                sandbox_id=sbx.id,
                name=name,
                source_path=source_path,
                object_key=(
                    f"orgs/{sbx.org_id}/projects/{sbx.project_id}/objects/"
                    f"obj_{secrets.token_hex(12)}"
                ),
                size_bytes=len(raw) if size_bytes is None else size_bytes,
                content_type=content_type,
                created_at=created_at or self.tick(),
                data=raw,
                retention_expires_at=retention_expires_at,
            )
            self.artifacts[art.id] = art
            if deleted:
                self.delete_artifact(art.id)
            return art

    def add_artifacts(self, sandbox_id: str, n: int, *, kind: str = "text") -> list[Artifact]:
        """Add n artifacts, returned oldest first (the listing is the reverse).

        kind: "text" (text/plain), "binary" (all 256 byte values, application/octet-stream),
        "no_content_type" (contentType omitted), "deleted" (text, then deleted), "mixed"
        (cycles through those four).
        """
        kinds = ["text", "binary", "no_content_type", "deleted"]
        out = []
        for i in range(n):
            k = kinds[i % 4] if kind == "mixed" else kind
            if k == "binary":
                data = bytes(range(256)) + hashlib.sha256(str(i).encode()).digest() * (i % 7)
                out.append(self.add_artifact(sandbox_id, data, name=f"blob-{i:04d}.bin"))
            elif k == "no_content_type":
                out.append(
                    self.add_artifact(
                        sandbox_id, f"raw {i}\n", name=f"raw-{i:04d}", content_type=None
                    )
                )
            elif k in ("text", "deleted"):
                out.append(
                    self.add_artifact(
                        sandbox_id,
                        f"artifact {i}\n" * (1 + i % 3),
                        name=f"file-{i:04d}.txt",
                        deleted=k == "deleted",
                    )
                )
            else:
                raise ValueError(f"unknown kind {k!r}")
        return out

    def delete_artifact(self, artifact_id: str) -> Artifact:
        """Idempotent by state: content dropped, deletedAt set once."""
        with self._lock:
            art = self.artifacts[artifact_id]
            if art.deleted_at is None:
                art.deleted_at = self.tick()
                art.data = None
            return art

    def listing(self, sandbox_id: str) -> list[dict[str, Any]]:
        """What a full paginated walk must return: JSON records, newest first."""
        with self._lock:
            return [a.to_json() for a in self._sorted(sandbox_id)]

    def _sorted(self, sandbox_id: str) -> list[Artifact]:
        arts = [a for a in self.artifacts.values() if a.sandbox_id == sandbox_id]
        return sorted(arts, key=lambda a: (a.created_at, a.id), reverse=True)

    # -- faults ----------------------------------------------------------------------------------

    def inject(
        self,
        route: str,
        *faults: Fault,
        artifact_id: str | None = None,
        sandbox_id: str | None = None,
    ) -> None:
        """Queue faults for `route`, optionally only for one artifact or sandbox; each
        matching request consumes one, in order."""
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; one of {ROUTES}")
        if artifact_id and sandbox_id:
            raise ValueError("give artifact_id or sandbox_id, not both")
        with self._lock:
            self._faults.setdefault((route, artifact_id or sandbox_id), deque()).extend(faults)

    def pending_faults(self) -> dict[tuple[str, str | None], list[Fault]]:
        """Faults not consumed yet, keyed by (route, target or None)."""
        with self._lock:
            return {k: list(q) for k, q in self._faults.items() if q}

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, route: str, target: str | None) -> Fault | None:
        with self._lock:
            for key in ((route, target), (route, None)):
                queue = self._faults.get(key)
                if queue:
                    return queue.popleft()
            return None

    # -- request log -----------------------------------------------------------------------------

    def requests_to(self, route: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.route == route]

    def foreign_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.foreign]

    def leaks(self) -> list[RecordedRequest]:
        """Foreign requests carrying an Authorization header or any known API key anywhere
        (headers or query). The importer's tests want this to be empty."""
        with self._lock:
            keys = list(self.api_keys)
            out = []
            for r in self.requests:
                if not r.foreign:
                    continue
                blob = r.query + "\n" + "\n".join(r.headers.values())
                if r.authorization is not None or any(k in blob for k in keys):
                    out.append(r)
            return out

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- signing ---------------------------------------------------------------------------------

    def _signature(self, artifact_id: str, expires: str) -> str:
        return hmac.new(self._secret, f"{artifact_id}|{expires}".encode(), "sha256").hexdigest()


def _workspace_path(path: str) -> str | None:
    """Absolute normalised path if inside /workspace (relative paths are taken under it)."""
    if not path.startswith("/"):
        path = "/workspace/" + path
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if norm == "/workspace" or norm.startswith("/workspace/"):
        return norm
    return None


# --------------------------------------------------------------------------------------------
# ASGI app
# --------------------------------------------------------------------------------------------


@dataclass
class _Response:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"


class _ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.response = _error(status, code, message, details, headers)


def _json(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> _Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _Response(status, body, headers or [])


def _error(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> _Response:
    err: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        err["details"] = details
    return _json(status, {"error": err}, headers)


_ROUTE_TABLE: list[tuple[str, str, str]] = [
    # (suffix pattern after splitting, method, route); matched by _match below
    ("sandboxes/*/artifacts", "GET", "list"),
    ("sandboxes/*/artifacts", "POST", "create"),
    ("sandboxes/*", "GET", "sandbox_get"),
    ("sandboxes/*", "DELETE", "sandbox_kill"),
    ("artifacts/*", "GET", "get"),
    ("artifacts/*", "DELETE", "delete"),
    ("artifacts/*/download", "GET", "download"),
    ("artifacts/*/download-url", "POST", "download_url"),
]

_SCOPES: dict[str, tuple[str, ...]] = {
    "list": ("artifact:read",),
    "get": ("artifact:read",),
    "download": ("artifact:read",),
    "download_url": ("artifact:read",),
    "delete": ("artifact:delete",),
    "create": ("artifact:create", "file:read"),
    "sandbox_get": (),
    "sandbox_kill": (),
}


def _match(method: str, path: str) -> tuple[str | None, str | None, bool]:
    """(route, target id, path_known)."""
    if not path.startswith("/v1/"):
        return None, None, False
    parts = path[len("/v1/") :].split("/")
    known = False
    for pattern, route_method, route in _ROUTE_TABLE:
        pat = pattern.split("/")
        if len(pat) != len(parts):
            continue
        if all((p == "*" and part != "") or p == part for p, part in zip(pat, parts, strict=True)):
            known = True
            if route_method == method:
                return route, parts[1], True
    return None, None, known


class FakeCrowNestApp:
    """The ASGI app. Listeners other than the primary one are 'foreign' (see module doc)."""

    def __init__(self, state: FakeState) -> None:
        self.state = state
        self.primary: tuple[str, int] | None = None  # set by running_fake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; nothing else is served
            return
        body = await _read_body(receive)
        headers: dict[str, str] = {}
        for k, v in scope.get("headers", []):
            headers[k.decode("latin-1").lower()] = v.decode("latin-1")
        server = scope.get("server") or ("?", 0)
        server_str = f"{server[0]}:{server[1]}"
        query = scope.get("query_string", b"").decode("latin-1")
        foreign = self.primary is not None and tuple(server) != self.primary
        rec = RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            query=query,
            params=parse_qs(query, keep_blank_values=True),
            headers=headers,
            authorization=headers.get("authorization"),
            host=headers.get("host"),
            server=server_str,
            foreign=foreign,
        )
        api = _Api(self.state)  # one state for the whole request, even if swapped meanwhile
        with api.state._lock:
            api.state.requests.append(rec)

        disconnected = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, disconnected))
        try:
            if foreign:
                resp, fault = api.foreign(rec), None
            else:
                resp, fault = await api.handle(rec, body, server_str, disconnected)
            rec.status = resp.status
            await _send_response(send, resp, fault, disconnected)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


class _Api:
    """Request handling against one FakeState."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    # -- foreign listeners -----------------------------------------------------------------------

    def foreign(self, rec: RecordedRequest) -> _Response:
        route, target, _ = _match(rec.method, rec.path)
        rec.route = route
        with self.state._lock:
            art = self.state.artifacts.get(target or "") if route == "download" else None
            if art is not None and art.data is not None:
                return _download_response(art, art.data)
        return _error(404, "not_found", "Nothing here (foreign host).")

    # -- the API ---------------------------------------------------------------------------------

    async def handle(
        self, rec: RecordedRequest, body: bytes, origin: str, disconnected: asyncio.Event
    ) -> tuple[_Response, Fault | None]:
        route, target, known = _match(rec.method, rec.path)
        rec.route = route
        if route is None:
            if known:
                return _error(405, "method_not_allowed", "Method not allowed."), None
            return _error(404, "not_found", "Route not found."), None
        assert target is not None
        try:
            key = self._authenticate(rec, route)
        except _ApiError as exc:
            return exc.response, None

        fault = self.state._take_fault(route, target)
        if fault is not None:
            rec.fault = fault.kind
            if fault.delay:
                await _sleep(min(fault.delay, MAX_SLOW_SECONDS), disconnected)
            if fault.kind == "error":
                extra = [("Retry-After", fault.retry_after)] if fault.retry_after else []
                assert fault.status and fault.code and fault.message
                return _error(fault.status, fault.code, fault.message, fault.details, extra), None
            if fault.kind == "raw":
                assert fault.status and fault.raw_body is not None
                return _Response(
                    fault.status, fault.raw_body, [], fault.raw_content_type or "text/plain"
                ), None
            if fault.kind == "redirect":
                assert fault.status and fault.url
                location = self._fill(fault.url, target, origin)
                return _Response(fault.status, b"", [("Location", location)], "text/plain"), fault

        handler = getattr(self, f"_r_{route}")
        try:
            resp = handler(target, key, rec, body, fault, origin)
        except _ApiError as exc:
            return exc.response, fault
        if fault is not None and fault.body_transform is not None:
            resp = dataclasses.replace(resp, body=fault.body_transform(resp.body))
        return resp, fault

    def _fill(self, template: str, target: str, origin: str) -> str:
        st = self.state
        return template.format(
            foreign=st.foreign_base_url or "http://evil.example",
            other_port=st.other_port_base_url or "http://127.0.0.1:1",
            base=f"http://{origin}",
            id=target,
        )

    def _authenticate(self, rec: RecordedRequest, route: str) -> ApiKey:
        auth = rec.authorization or ""
        scheme, _, token = auth.partition(" ")
        with self.state._lock:
            key = self.state.api_keys.get(token.strip()) if scheme.lower() == "bearer" else None
        if key is None:
            msg = "Missing API key." if not auth else "Invalid API key."
            raise _ApiError(401, "invalid_api_key", msg, headers=[("WWW-Authenticate", "Bearer")])
        missing = [s for s in _SCOPES[route] if s not in key.scopes]
        if missing:
            raise _ApiError(
                403,
                "forbidden",
                "API key lacks required scope.",
                {"requiredScopes": list(_SCOPES[route])},
            )
        return key

    def _artifact(self, art_id: str, key: ApiKey) -> Artifact:
        art = self.state.artifacts.get(art_id)
        if art is None:
            raise _ApiError(404, "not_found", f"Artifact {art_id} not found.")
        _check_org(key, art.org_id)
        return art

    def _sandbox(self, sbx_id: str, key: ApiKey) -> Sandbox:
        sbx = self.state.sandboxes.get(sbx_id)
        if sbx is None:
            raise _ApiError(404, "not_found", f"Sandbox {sbx_id} not found.")
        _check_org(key, sbx.org_id)
        return sbx

    # Handlers: (target, key, rec, body, fault, origin) -> _Response; they hold the state lock.

    def _r_list(self, sbx_id, key, rec, body, fault, origin) -> _Response:
        limit_raw = rec.params.get("limit", [None])[-1]
        cursor = rec.params.get("cursor", [None])[-1]
        try:
            limit = DEFAULT_LIMIT if limit_raw in (None, "") else int(limit_raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            raise _ApiError(
                400,
                "invalid_request",
                f"limit must be an integer from 1 to {MAX_LIMIT}.",
                {"field": "limit"},
            )
        with self.state._lock:
            self._sandbox(sbx_id, key)
            arts = self.state._sorted(sbx_id)
            if cursor:
                pos = _decode_cursor(cursor, sbx_id)
                arts = [a for a in arts if (a.created_at, a.id) < pos]
            page = arts[:limit]
            payload: dict[str, Any] = {
                "data": [a.to_json() for a in page],
                "hasMore": len(arts) > limit,
            }
            if payload["hasMore"]:
                payload["nextCursor"] = _encode_cursor(sbx_id, page[-1])
            issued = self.state._issued_cursors.setdefault(sbx_id, [])
            first_issued = issued[0] if issued else None
            if "nextCursor" in payload:
                issued.append(payload["nextCursor"])
        if fault is not None and fault.kind == "has_more_without_cursor":
            payload["hasMore"] = True
            payload.pop("nextCursor", None)
        elif fault is not None and fault.kind == "repeat_cursor":
            if not cursor:
                raise _ApiError(
                    500, "fake_misconfigured", "repeat_cursor needs a request with a cursor."
                )
            payload["hasMore"] = True
            payload["nextCursor"] = cursor
        elif fault is not None and fault.kind == "cycle_cursor":
            if first_issued is None:
                raise _ApiError(
                    500, "fake_misconfigured", "cycle_cursor needs an earlier page with a cursor."
                )
            payload["hasMore"] = True
            payload["nextCursor"] = first_issued
        return _json(200, payload)

    def _r_create(self, sbx_id, key, rec, body, fault, origin) -> _Response:
        try:
            req = json.loads(body or b"null")
        except ValueError:
            req = None
        if not isinstance(req, dict) or not isinstance(req.get("path"), str) or not req["path"]:
            raise _ApiError(
                400, "invalid_request", "Body must be {path, name?}.", {"field": "path"}
            )
        name = req.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise _ApiError(400, "invalid_request", "name must be a string.", {"field": "name"})
        idem = rec.headers.get("idempotency-key")
        fingerprint = json.dumps(req, sort_keys=True) + "|" + sbx_id
        st = self.state
        with st._lock:
            if idem:
                seen = st._idempotency.get((key.key, idem))
                if seen is not None:
                    if seen[0] != fingerprint:
                        raise _ApiError(
                            409,
                            "idempotency_key_reused",
                            "Idempotency-Key was used with a different request.",
                        )
                    return _json(201, {"artifact": st.artifacts[seen[1]].to_json()})
            sbx = self._sandbox(sbx_id, key)
            if sbx.destroyed:
                raise _ApiError(409, "sandbox_destroyed", f"Sandbox {sbx_id} is destroyed.")
            full = _workspace_path(req["path"])
            if full is None:
                raise _ApiError(
                    400,
                    "path_outside_workspace",
                    "Path must resolve inside /workspace.",
                    {"path": req["path"]},
                )
            data = sbx.files.get(full)
            if data is None:
                raise _ApiError(404, "file_not_found", f"{full} not found.", {"path": full})
            art = st.add_artifact(
                sbx_id, data, name=name or posixpath.basename(full), source_path=full
            )
            if idem:
                st._idempotency[(key.key, idem)] = (fingerprint, art.id)
            return _json(201, {"artifact": art.to_json()})

    def _r_get(self, art_id, key, rec, body, fault, origin) -> _Response:
        with self.state._lock:
            return _json(200, {"artifact": self._artifact(art_id, key).to_json()})

    def _r_delete(self, art_id, key, rec, body, fault, origin) -> _Response:
        with self.state._lock:
            self._artifact(art_id, key)
            return _json(200, {"artifact": self.state.delete_artifact(art_id).to_json()})

    def _r_download(self, art_id, key, rec, body, fault, origin) -> _Response:
        with self.state._lock:
            art = self._artifact(art_id, key)
            if "signature" in rec.params or "expires" in rec.params:
                expires = rec.params.get("expires", [""])[-1]
                sig = rec.params.get("signature", [""])[-1]
                good = self.state._signature(art_id, expires)
                if not hmac.compare_digest(sig, good):
                    raise _ApiError(403, "forbidden", "Invalid download signature.")
                if not expires.isdigit() or int(expires) < time.time():
                    raise _ApiError(403, "forbidden", "Download URL expired.")
            if art.data is None:
                raise _ApiError(404, "not_found", f"Artifact {art_id} content was deleted.")
            return _download_response(art, art.data)

    def _r_download_url(self, art_id, key, rec, body, fault, origin) -> _Response:
        with self.state._lock:
            art = self._artifact(art_id, key)
            if art.data is None:
                raise _ApiError(404, "not_found", f"Artifact {art_id} content was deleted.")
            expires = str(int(time.time()) + 300)
            sig = self.state._signature(art_id, expires)
        url = f"http://{origin}/v1/artifacts/{art_id}/download?expires={expires}&signature={sig}"
        if fault is not None and fault.kind == "foreign_url":
            assert fault.url
            url = self._fill(fault.url, art_id, origin)
        return _json(
            200,
            {
                "url": url,
                "method": "GET",
                "headers": {"Authorization": f"Bearer {key.key}"},
                "authMode": "api_key",
            },
        )

    def _r_sandbox_get(self, sbx_id, key, rec, body, fault, origin) -> _Response:
        with self.state._lock:
            return _json(200, {"sandbox": self._sandbox(sbx_id, key).to_json()})

    def _r_sandbox_kill(self, sbx_id, key, rec, body, fault, origin) -> _Response:
        with self.state._lock:
            self._sandbox(sbx_id, key)
            return _json(200, {"sandbox": self.state.destroy_sandbox(sbx_id).to_json()})


def _check_org(key: ApiKey, org_id: str) -> None:
    if key.org_id is not None and key.org_id != org_id:
        raise _ApiError(403, "forbidden", "API key cannot access this organization.")


def _download_response(art: Artifact, data: bytes) -> _Response:
    filename = quote(art.name)
    return _Response(
        200,
        data,
        [("Content-Disposition", f"attachment; filename*=UTF-8''{filename}")],
        art.content_type or "application/octet-stream",
    )


def _encode_cursor(sandbox_id: str, last: Artifact) -> str:
    raw = json.dumps({"s": sandbox_id, "t": last.created_at, "i": last.id}).encode()
    return "cur_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, sandbox_id: str) -> tuple[str, str]:
    bad = _ApiError(400, "invalid_request", "Invalid cursor.", {"field": "cursor"})
    if not cursor.startswith("cur_"):
        raise bad
    try:
        b64 = cursor[4:] + "=" * (-len(cursor[4:]) % 4)
        obj = json.loads(base64.urlsafe_b64decode(b64.encode()))
    except (ValueError, binascii.Error):
        raise bad from None
    if not isinstance(obj, dict) or obj.get("s") != sandbox_id:
        raise bad
    t, i = obj.get("t"), obj.get("i")
    if not isinstance(t, str) or not isinstance(i, str):
        raise bad
    return t, i


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    return b"".join(chunks)


async def _watch_disconnect(receive: Receive, event: asyncio.Event) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            event.set()
            return


async def _sleep(seconds: float, disconnected: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(disconnected.wait(), seconds)


async def _send_response(
    send: Send, resp: _Response, fault: Fault | None, disconnected: asyncio.Event
) -> None:
    headers = [
        (b"content-type", resp.content_type.encode()),
        (b"content-length", str(len(resp.body)).encode()),
    ] + [(k.lower().encode(), v.encode("latin-1")) for k, v in resp.headers]
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    body = resp.body
    drop_after = fault.drop_after if fault is not None else None
    if drop_after is not None:
        body = body[:drop_after]
    chunk = (fault.chunk_size if fault is not None else None) or BODY_CHUNK
    delay = fault.chunk_delay if fault is not None else 0.0
    budget = MAX_SLOW_SECONDS
    for offset in range(0, len(body), chunk):
        if delay and budget > 0:
            pause = min(delay, budget)
            budget -= pause
            await _sleep(pause, disconnected)
        if disconnected.is_set():
            return
        await send(
            {"type": "http.response.body", "body": body[offset : offset + chunk], "more_body": True}
        )
    if drop_after is not None:
        # Leave the response incomplete: uvicorn then closes the connection, so the client has
        # the full Content-Length in hand and fewer bytes on the wire.
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


# --------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------


def _bind(host: str) -> socket.socket | None:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when their proto
    # says TCP; without it every response waits ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.bind((host, 0))
    except OSError:
        sock.close()
        return None
    return sock


class FakeServer:
    """uvicorn serving a FakeCrowNestApp from a background thread (no signal handlers: uvicorn
    installs none outside the main thread). The served state can be swapped with use()."""

    def __init__(self, state: FakeState, *, foreign: bool = True) -> None:
        self.app = FakeCrowNestApp(state)
        self.foreign = foreign
        self.base_url: str | None = None
        self.foreign_base_url: str | None = None
        self.other_port_base_url: str | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def use(self, state: FakeState) -> None:
        """Serve `state` from now on (requests already in flight finish on the old one)."""
        old = self.app.state
        if old is not state:
            old.base_url = old.foreign_base_url = old.other_port_base_url = None
        state.base_url = self.base_url
        state.foreign_base_url = self.foreign_base_url
        state.other_port_base_url = self.other_port_base_url
        self.app.state = state

    def start(self) -> str:
        primary = _bind("127.0.0.1")
        assert primary is not None, "cannot bind 127.0.0.1"
        socks = [primary]
        if self.foreign:
            foreign, other = _bind("127.0.0.2"), _bind("127.0.0.1")
            socks += [s for s in (foreign, other) if s is not None]
            self.foreign_base_url = _url_of(foreign)
            self.other_port_base_url = _url_of(other)
        self.base_url = _url_of(primary)
        self.app.primary = tuple(primary.getsockname()[:2])  # type: ignore[assignment]
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            loop="asyncio",
            http="h11",
            ws="none",
            log_config=None,  # leave the process's logging configuration alone
            log_level=None,
            timeout_graceful_shutdown=2,
            timeout_keep_alive=5,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": socks}, name="crownest-fake", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fake CrowNest did not start")
            time.sleep(0.002)
        with socket.create_connection(primary.getsockname()[:2], timeout=2):
            pass  # accepting
        self.use(self.app.state)
        assert self.base_url is not None
        return self.base_url

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        self._server = self._thread = None
        st = self.app.state
        st.base_url = st.foreign_base_url = st.other_port_base_url = None


def _url_of(sock: socket.socket | None) -> str | None:
    if sock is None:
        return None
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


@contextlib.contextmanager
def running_fake(state: FakeState, *, foreign: bool = True) -> Iterator[str]:
    """Serve `state` on 127.0.0.1:<free port> in a background thread; yields the base URL.

    While running, state.base_url, state.foreign_base_url (127.0.0.2:<port>, None if not
    bindable) and state.other_port_base_url (127.0.0.1:<another port>) are set; with
    foreign=False neither foreign listener exists. Stops the server (and closes its sockets)
    on exit.
    """
    server = FakeServer(state, foreign=foreign)
    try:
        yield server.start()
    finally:
        server.stop()


@dataclass
class FakeCrowNest:
    """What the `crownest_fake` fixture yields."""

    base_url: str
    api_key: str
    state: FakeState
    foreign_base_url: str | None = None
    other_port_base_url: str | None = None
    forbidden_api_key: str = FORBIDDEN_API_KEY

    def auth(self, key: str | None = None) -> dict[str, str]:
        """{"Authorization": "Bearer <key>"} for direct httpx calls."""
        return {"Authorization": f"Bearer {key or self.api_key}"}


_shared: FakeServer | None = None
_shared_lock = threading.Lock()


def _shared_server(config: pytest.Config) -> FakeServer:
    """One server per test process (starting and stopping uvicorn costs ~0.15 s a test);
    each test gets a fresh FakeState swapped in. Stopped when pytest unconfigures."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.running:
            server = FakeServer(FakeState())
            server.start()
            config.add_cleanup(server.stop)
            _shared = server
        return _shared


@pytest.fixture
def crownest_fake(request: pytest.FixtureRequest) -> Iterator[FakeCrowNest]:
    """A fresh FakeState (default key, org_test/prj_test, nothing else) served on loopback."""
    server = _shared_server(request.config)
    state = FakeState()
    server.use(state)
    try:
        assert state.base_url is not None
        yield FakeCrowNest(
            base_url=state.base_url,
            api_key=state.api_key,
            state=state,
            foreign_base_url=state.foreign_base_url,
            other_port_base_url=state.other_port_base_url,
        )
    finally:
        server.use(FakeState())  # detach: later stray requests cannot touch this test's state
