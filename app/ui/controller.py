"""The web UI under /ui/: server-rendered pages for people, over the same storage reads as the
API (storage/workflows.py, ArtifactService, storage/lineage.py, storage/events.py).

    GET  /ui/                         workflows (filter by id, paginated)
    GET  /ui/workflow?id=W            a workflow: phases in order, primary deliverable first,
                                      then the phase's artifacts (&phase=P | &no_phase=1
                                      and &cursor=C: one phase, page by page)
    GET  /ui/workflow/live?id=W       the change feed of W as Server-Sent Events (the page's
                                      live update)
    GET  /ui/workflow/export?id=W     the workflow's archive (&format=zip|tar, &scope=all|
                                      deliverables), as /store/workflows/{id}/export
    GET  /ui/artifacts/{id}           an artifact: metadata, versions, content, lineage
                                      (&versions=C: older versions; &derived=C: more
                                      derived artifacts; both the API's cursors)
    GET  /ui/artifacts/{id}/download  its bytes (&version=n), as /artifacts/{id}/download
    GET  /ui/sign-in, POST /ui/sign-in, POST /ui/sign-out (failed sign-ins limited per address)
    GET  /ui/static/{name}            the one stylesheet and the one script

Nothing here writes to the store. Every route declares `opt["ui"]` and no API scope: the app's
guard leaves them alone and each handler asks `viewer_of()` (app/ui/session.py) whose pages
these are, the open-mode user or a signed-in key's project, and reads through the service
scoped to that project, so another project's artifacts answer exactly as unknown ones. Pages
are excluded from the OpenAPI document (`include_in_schema=False`).

Templates are rendered with Jinja2 directly (autoescape on for every template), not through
Litestar's TemplateConfig: a page becomes the app's own `Answer`, like every other answer here,
so its status and headers (the CSP above all) are exactly the ones written below.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
from anyio import to_thread
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from litestar import HttpMethod, Request, Router, get, post, route
from litestar.params import FromPath
from litestar.types import ASGIApp

from app.artifacts.download import serve_bytes
from app.auth import Authenticator
from app.events.controller import _stream
from app.http import Answer, StreamAnswer, header, receive_body
from app.ui import render
from app.ui.session import (
    READ_SCOPE,
    Viewer,
    clear_cookie,
    session_value,
    set_cookie,
    viewer_of,
)
from app.workflows.export import ArchiveResponse, manifest, plan, safe_segment
from storage import events, workflows
from storage.artifacts import ArtifactService
from storage.errors import (
    AmbiguousArtifactId,
    ArtifactNotFound,
    StorageError,
    VersionNotFound,
    WorkflowNotFound,
)
from storage.lineage import live_artifacts, neighbourhood
from storage.records import (
    Artifact,
    Cursor,
    ListQuery,
    Summary,
    at_version,
    decode_version_cursor,
    encode_version_cursor,
)

AnyRequest = Request[Any, Any, Any]
HERE = Path(__file__).parent
HTML = "text/html; charset=utf-8"
UI = {"ui": True}
# a page answers HEAD as GET without the body (link checkers, monitors)
PAGE_METHODS = [HttpMethod.GET, HttpMethod.HEAD]
PAGE_SIZE = 50  # rows of one list page
PREVIEW = 10  # artifacts of each phase on the workflow page before "more"
PREVIEW_PHASES = 30  # phases shown with their artifacts; later ones link to their own pages
CHILDREN_SHOWN = 50
VERSIONS_SHOWN = 20
MAX_FORM_BYTES = 4096
LIVE_RECHECK_SECONDS = 1.0  # a live feed looks its session's key up again at most this often
SIGN_IN_FAILURES = "10 per 10 minutes"  # failed sign-ins from one address, then 429
RENDER_ON_LOOP = 64 * 1024  # characters of markdown or JSON rendered right on the event loop

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # every template, whatever its name: nothing is put in a page unescaped
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def workflow_url(workflow_id: str, **extra: str) -> str:
    return "/ui/workflow?" + urlencode({"id": workflow_id, **extra})


def artifact_url(artifact_id: str) -> str:
    return f"/ui/artifacts/{artifact_id}"


def download_url(artifact_id: str, version: int | None = None) -> str:
    url = f"/ui/artifacts/{artifact_id}/download"
    return url if version is None else f"{url}?version={version}"


_env.globals.update(
    size=render.size,
    when=render.when,
    iso=render.iso,
    workflow_url=workflow_url,
    artifact_url=artifact_url,
    download_url=download_url,
    urlencode=urlencode,
    NODE_W=render.NODE_W,
    NODE_H=render.NODE_H,
    MAX_PER_LAYER=render.MAX_PER_LAYER,
)


# -- static assets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def _asset(name: str, media_type: str) -> Asset:
    body = (HERE / "static" / name).read_bytes()
    return Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


ASSETS = {
    "ui.css": _asset("ui.css", "text/css; charset=utf-8"),
    "ui.js": _asset("ui.js", "text/javascript; charset=utf-8"),
}


# -- answers -------------------------------------------------------------------------------------


class SignInNeeded(Exception):
    """No viewer: a page redirects to the sign-in form, anything else answers 401."""

    def __init__(self, page: bool) -> None:
        super().__init__("sign-in needed")
        self.page = page


class BadRequest(Exception):
    pass


def page(
    template: str,
    viewer: Viewer | None,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Answer:
    body = _env.get_template(template).render(viewer=viewer, **context)
    return Answer(body.encode(), status, {**PAGE_HEADERS, **(headers or {})}, media_type=HTML)


def _error_page(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> Answer:
    return page("error.html", None, status, headers, title=title, detail=detail)


def _sign_in_needed(request: AnyRequest, exc: Exception) -> Answer:
    assert isinstance(exc, SignInNeeded)
    if exc.page:
        return Answer(b"", 303, {**PAGE_HEADERS, "Location": "/ui/sign-in"}, media_type=None)
    return Answer(b"Sign in first.\n", 401, PAGE_HEADERS, media_type="text/plain; charset=utf-8")


def _storage_error(_request: AnyRequest, exc: Exception) -> Answer:
    if isinstance(exc, ArtifactNotFound | VersionNotFound):
        return _error_page(404, "Artifact not found", "No artifact (or version) of yours has it.")
    if isinstance(exc, WorkflowNotFound):
        return _error_page(404, "Workflow not found", "No workflow of yours has this id.")
    if isinstance(exc, AmbiguousArtifactId):
        return _error_page(409, "Ambiguous id", str(exc))
    return _error_page(500, "The store failed to answer", str(exc))


def _bad_request(_request: AnyRequest, exc: Exception) -> Answer:
    return _error_page(400, "Bad request", str(exc))


async def viewer(request: AnyRequest, *, is_page: bool = True) -> Viewer:
    found = await viewer_of(request)
    if found is None:
        raise SignInNeeded(is_page)
    return found


def service_for(request: AnyRequest, who: Viewer) -> ArtifactService:
    store: ArtifactService = request.app.state.service
    return store.scoped(who.tenant)


def query(request: AnyRequest, name: str) -> str | None:
    """One query parameter (its last value, as the API reads them), None when absent. No id
    the store holds contains NUL (creates refuse it, and PostgreSQL cannot compare it): one is
    a bad request, before any query."""
    value = None
    for key, item in parse_qsl(request.scope.get("query_string", b"").decode("latin-1")):
        if key == name:
            value = item
    if value is not None and "\x00" in value:
        raise BadRequest(f"The {name} parameter holds a NUL character.")
    return value


def _cursor(text: str | None) -> Cursor | None:
    if not text:
        return None
    try:
        return Cursor.decode(text)
    except ValueError:
        raise BadRequest("That page cursor is not one this server made.") from None


def _version_cursor(text: str | None) -> int | None:
    """The versions list's page token (the API's: GET /artifacts/{id}/versions?cursor=)."""
    if not text:
        return None
    try:
        return decode_version_cursor(text)
    except ValueError:
        raise BadRequest("That versions cursor is not one this server made.") from None


# -- pages ---------------------------------------------------------------------------------------


@route(["/", "/workflows"], http_method=PAGE_METHODS, opt=UI, name="ui_workflows")
async def workflows_page(request: AnyRequest) -> Answer:
    who = await viewer(request)
    service = service_for(request, who)
    q = (query(request, "q") or "").strip()[:255]
    cursor_text = query(request, "cursor")
    after = None
    if cursor_text:
        try:
            after = workflows.WorkflowCursor.decode(cursor_text)
        except ValueError:
            raise BadRequest("That page cursor is not one this server made.") from None
    items, next_cursor = await workflows.list_workflows(
        service.db, limit=PAGE_SIZE, after=after, id_contains=q or None, tenant=service.tenant
    )
    next_url = None
    if next_cursor is not None:
        params = {"cursor": next_cursor.encode(), **({"q": q} if q else {})}
        next_url = "/ui/?" + urlencode(params)
    return page("workflows.html", who, items=items, q=q, next_url=next_url, paged=after is not None)


@dataclass
class PhaseSection:
    phase_id: str | None
    primary: Artifact | Summary | None
    view: workflows.PhaseView | None  # its totals (None on a phase's own pages: not counted)
    rows: list[Summary]
    more_url: str | None = None  # the next page of this phase's artifacts
    shown: bool = True  # False: listed without its artifacts (past PREVIEW_PHASES)

    @property
    def url_params(self) -> dict[str, str]:
        return {"no_phase": "1"} if self.phase_id is None else {"phase": self.phase_id}


def _phase_query(workflow_id: str, phase_id: str | None) -> ListQuery:
    return ListQuery(workflow_id=workflow_id, phase_id=phase_id, no_phase=phase_id is None)


@route("/workflow", http_method=PAGE_METHODS, opt=UI, name="ui_workflow")
async def workflow_page(request: AnyRequest) -> Answer:
    """Every phase with its totals and its first PREVIEW artifacts; or, with `phase` (or
    `no_phase=1`), one phase's artifacts a page at a time. A phase's own pages read no totals:
    each is its primary deliverable and one keyset page of rows (GET /artifacts's query), so
    page 150 of a phase of 10,000 costs what page 1 does."""
    who = await viewer(request)
    service = service_for(request, who)
    workflow_id = query(request, "id")
    if not workflow_id:
        raise BadRequest("Name a workflow: /ui/workflow?id=<workflow id>.")
    one_phase = query(request, "phase")
    no_phase = query(request, "no_phase") == "1"
    focused = one_phase is not None or no_phase
    after = _cursor(query(request, "cursor"))
    # the feed's position first: whatever commits after it reaches the page live
    head = await events.head(service.db, workflow_id=workflow_id, tenant=service.tenant)
    phases: list[workflows.PhaseView] = []
    sections: list[PhaseSection] = []
    if focused:
        wanted = one_phase if one_phase is not None else None
        listed = _phase_query(workflow_id, wanted)
        primary = await workflows.primary(service.db, workflow_id, wanted, tenant=service.tenant)
        found = await service.page(listed, limit=PAGE_SIZE, after=after)
        if not found.items and after is None:
            raise WorkflowNotFound(workflow_id)
        section = PhaseSection(wanted, primary, None, found.items)
        if found.next_cursor is not None:
            section.more_url = workflow_url(
                workflow_id, **section.url_params, cursor=found.next_cursor.encode()
            )
        sections.append(section)
    else:
        phases = await workflows.phases(service.db, workflow_id, tenant=service.tenant)
        for index, phase in enumerate(phases):
            section = PhaseSection(phase.phase_id, phase.primary, phase, [])
            if index >= PREVIEW_PHASES:
                section.shown = False
            else:
                found = await service.page(
                    _phase_query(workflow_id, phase.phase_id), limit=PREVIEW
                )
                section.rows = found.items
                if found.next_cursor is not None:
                    section.more_url = workflow_url(
                        workflow_id, **section.url_params, cursor=found.next_cursor.encode()
                    )
            sections.append(section)
    live_url = "/ui/workflow/live?" + urlencode({"id": workflow_id, "after": str(head)})
    return page(
        "workflow.html",
        who,
        workflow_id=workflow_id,
        phases=phases,
        sections=sections,
        focused=focused,
        paged=after is not None,
        total=sum(p.artifact_count for p in phases),
        total_bytes=sum(p.total_bytes for p in phases),
        live_url=live_url,
    )


@get("/workflow/live", opt=UI, name="ui_workflow_live")
async def workflow_live(request: AnyRequest) -> ASGIApp:
    """The change feed of one workflow as Server-Sent Events, from `after` (or the
    `Last-Event-ID` a browser sends when it reconnects): the same stream as /store/events."""
    who = await viewer(request, is_page=False)
    service = service_for(request, who)
    workflow_id = query(request, "id")
    if not workflow_id:
        raise BadRequest("Name a workflow.")
    position = header(request, "last-event-id") or query(request, "after") or "0"
    if not (position.isascii() and position.isdigit() and len(position) <= 18):
        raise BadRequest("Not an event id.")
    start = int(position)
    feed = _stream(service, request.app.state.notifier, start, workflow_id, 100)
    stream = _while_signed_in(request, who, feed)
    sse = (
        ("cache-control", "no-cache"),
        ("x-accel-buffering", "no"),
        ("content-type", "text/event-stream; charset=utf-8"),
        ("x-content-type-options", "nosniff"),
    )
    return StreamAnswer(stream, 200, sse, endless=True)


SIGNED_OUT = b"event: signed-out\ndata: {}\n\n"


async def _while_signed_in(
    request: AnyRequest, who: Viewer, feed: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """The feed while its session lasts. Before each piece it sends (an event, or the
    keep-alive every 15 s of quiet) the session's expiry is checked, and at most once every
    LIVE_RECHECK_SECONDS its key is looked up again (viewer_of, as every request does): once
    the session has ended (expired, key revoked or expired, open mode over), a last
    `signed-out` event, and the stream ends. A reconnect would get 401; ui.js stops either way
    and says so."""
    checked = time.monotonic()
    try:
        async for piece in feed:
            now = time.monotonic()
            ended = who.expires_at is not None and who.expires_at <= time.time()
            if not ended and now - checked >= LIVE_RECHECK_SECONDS:
                checked = now
                again = await viewer_of(request)
                ended = again is None or again.tenant != who.tenant
            if ended:
                yield SIGNED_OUT
                return
            yield piece
    finally:
        close = getattr(feed, "aclose", None)
        if close is not None:
            await close()


@get("/workflow/export", opt=UI, name="ui_workflow_export")
async def workflow_export(request: AnyRequest) -> ArchiveResponse:
    """The archive /store/workflows/{id}/export streams, for the signed-in viewer."""
    who = await viewer(request, is_page=False)
    service = service_for(request, who)
    workflow_id = query(request, "id")
    fmt = query(request, "format") or "zip"
    scope = query(request, "scope") or "all"
    if not workflow_id or fmt not in ("zip", "tar") or scope not in ("all", "deliverables"):
        raise BadRequest("Name a workflow, a format (zip, tar) and a scope (all, deliverables).")
    items = await workflows.contents(
        service.db, workflow_id, deliverables_only=scope == "deliverables", tenant=service.tenant
    )
    entries = plan(items)
    filename = f"{safe_segment(workflow_id, 'workflow')}.{fmt}"
    head = manifest(workflow_id, scope, entries)
    return ArchiveResponse(fmt, filename, head, entries, service.stream)  # type: ignore[arg-type]


@route("/artifacts/{artifact_id:str}", http_method=PAGE_METHODS, opt=UI, name="ui_artifact")
async def artifact_page(artifact_id: FromPath[str], request: AnyRequest) -> Answer:
    who = await viewer(request)
    service = service_for(request, who)
    artifact = await service.get(artifact_id)
    kind = render.kind_of(artifact)
    text = await _shown_text(service, artifact, kind)
    if kind in ("markdown", "json", "text") and text is None:
        kind = "binary"
    content: Any = text
    if text is not None and kind in ("markdown", "json"):
        shape = render.markdown_html if kind == "markdown" else render.pretty_json
        if len(text) > RENDER_ON_LOOP:  # a long document renders off the event loop
            content = await to_thread.run_sync(shape, text)
        else:
            content = shape(text)
    before = _version_cursor(query(request, "versions"))
    versions = await service.versions(artifact.id, limit=VERSIONS_SHOWN, before=before)
    older_url = None
    if versions.next_before is not None:
        token = encode_version_cursor(versions.next_before)
        older_url = f"{artifact_url(artifact.id)}?{urlencode({'versions': token})}#versions-h"
    derived_after = _cursor(query(request, "derived"))
    children = await service.page(
        ListQuery(derived_from=artifact.id), limit=CHILDREN_SHOWN, after=derived_after
    )
    more_derived_url = None
    if children.next_cursor is not None:
        token = children.next_cursor.encode()
        more_derived_url = f"{artifact_url(artifact.id)}?{urlencode({'derived': token})}#derived-h"
    graph = await neighbourhood(
        service.db, artifact.id, depth=2, per_level=render.MAX_PER_LAYER, tenant=service.tenant
    )
    known = {n.id: n.artifact for n in graph.nodes}
    parent_ids = list(artifact.derived_from or ())
    unread = [pid for pid in parent_ids if pid not in known]  # past the graph's first 8
    known.update(await live_artifacts(service.db, unread, tenant=service.tenant))
    parents = [(pid, known.get(pid)) for pid in parent_ids]
    return page(
        "artifact.html",
        who,
        a=artifact,
        kind=kind,
        content=content,
        metadata=render.pretty_json_value(artifact.metadata),
        versions=versions,
        versions_paged=before is not None,
        older_url=older_url,
        parents=parents,
        children=children,
        derived_paged=derived_after is not None,
        more_derived_url=more_derived_url,
        graph=render.lineage_graph(graph),
    )


async def _shown_text(service: ArtifactService, artifact: Artifact, kind: str) -> str | None:
    if kind not in ("markdown", "json", "text") or artifact.size_bytes > render.MAX_SHOWN_TEXT:
        return None
    try:
        return (await service.read_bytes(artifact)).decode("utf-8")
    except UnicodeDecodeError:
        return None


@route(
    "/artifacts/{artifact_id:str}/download",
    http_method=[HttpMethod.GET, HttpMethod.HEAD],
    opt=UI,
    name="ui_download",
)
async def artifact_download(artifact_id: FromPath[str], request: AnyRequest) -> ASGIApp:
    """The exact bytes, with every header of /artifacts/{id}/download: `attachment`,
    `nosniff` and `Content-Security-Policy: sandbox`, so nothing uploaded runs on this origin
    (an <img> of the page shows an image whatever its disposition)."""
    who = await viewer(request, is_page=False)
    service = service_for(request, who)
    number = query(request, "version")
    if number is None:
        return await serve_bytes(request, service, await service.get(artifact_id))
    if not (number.isascii() and number.isdigit() and 0 < len(number) <= 10):
        raise BadRequest("A version is a positive number.")
    artifact, version = await service.get_version(artifact_id, int(number))
    return await serve_bytes(request, service, at_version(artifact, version))


# -- signing in and out ----------------------------------------------------------------------


def _secure(request: AnyRequest) -> bool:
    """The cookie is Secure when the browser reached us over https: directly, or through the
    proxy ARTIFACTS_PUBLIC_URL names."""
    public = request.app.state.settings.public_url or ""
    return request.scope.get("scheme") == "https" or public.startswith("https://")


def _same_origin(request: AnyRequest) -> bool:
    """A form post from our own pages: its Origin (when the browser sends one) is ours."""
    origin = header(request, "origin")
    if origin is None:
        return True
    host = header(request, "host") or ""
    return origin in (f"http://{host}", f"https://{host}")


async def _form(request: AnyRequest) -> dict[str, str]:
    data = b""
    async for chunk in receive_body(request):
        data += chunk
        if len(data) > MAX_FORM_BYTES:
            raise BadRequest("The form is too large.")
    return dict(parse_qsl(data.decode("utf-8", "replace")))


class SignInLimit:
    """Failed sign-ins per client address (the `limits` library's moving window, in memory,
    as app/auth.py limits each key's requests): past `rate`, every sign-in from that address
    answers 429, a correct key included, until the window has moved past the failures. One per
    app, made at its first sign-in (`app.state.ui_sign_in_limit`)."""

    def __init__(self, rate: str = SIGN_IN_FAILURES) -> None:
        self.rate: RateLimitItem = parse(rate)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def wait(self, address: str) -> int:
        """Seconds before `address` may try again; 0: it may now."""
        if self._limiter.test(self.rate, address):
            return 0
        reset, _ = self._limiter.get_window_stats(self.rate, address)
        return max(1, math.ceil(reset - time.time()))

    def failed(self, address: str) -> None:
        self._limiter.hit(self.rate, address)


def _sign_in_limit(request: AnyRequest) -> SignInLimit:
    state = request.app.state
    limit = state.get("ui_sign_in_limit")
    if limit is None:
        state.ui_sign_in_limit = limit = SignInLimit()
    assert isinstance(limit, SignInLimit)
    return limit


def _address(request: AnyRequest) -> str:
    """The client's address as the server saw it (behind a proxy: the proxy's, unless the
    server runs with uvicorn's --proxy-headers and a trusted --forwarded-allow-ips)."""
    client = request.scope.get("client")
    return str(client[0]) if client else "unknown"


@route("/sign-in", http_method=PAGE_METHODS, opt=UI, name="ui_sign_in_form")
async def sign_in_form(request: AnyRequest) -> Answer:
    auth: Authenticator = request.app.state.auth
    who = await viewer_of(request)
    return page("sign_in.html", who, open_mode=await auth.is_open(), error=None)


@post("/sign-in", opt=UI, name="ui_sign_in", status_code=303)
async def sign_in(request: AnyRequest) -> Answer:
    """Checks the key against the key store (active, and allowed to read), then sets the
    session cookie. A wrong key is one answer whatever was wrong with it."""
    if not _same_origin(request):
        return _error_page(403, "Refused", "This form may only be sent from this site's pages.")
    limit, address = _sign_in_limit(request), _address(request)
    wait = limit.wait(address)
    if wait:  # checked before the key is: past the limit, no key is even looked at
        return _error_page(
            429,
            "Too many sign-in attempts",
            f"Too many failed sign-ins from your address. Try again in {wait} seconds.",
            {"Retry-After": str(wait)},
        )
    form = await _form(request)
    auth: Authenticator = request.app.state.auth
    secret = form.get("key", "").strip()
    key = await auth.keys.authenticate(secret) if secret else None
    if key is None or not key.allows(READ_SCOPE):
        limit.failed(address)
        return page(
            "sign_in.html",
            None,
            401,
            open_mode=await auth.is_open(),
            error="That key is unknown, revoked or expired, or it cannot read artifacts.",
        )
    value, max_age = session_value(request.app.state.signer, key, time.time())
    cookie = set_cookie(value, max_age, _secure(request))
    headers = {**PAGE_HEADERS, "Location": "/ui/", "Set-Cookie": cookie}
    return Answer(b"", 303, headers, media_type=None)


@post("/sign-out", opt=UI, name="ui_sign_out", status_code=303)
async def sign_out(request: AnyRequest) -> Answer:
    if not _same_origin(request):
        return _error_page(403, "Refused", "This form may only be sent from this site's pages.")
    cookie = clear_cookie(_secure(request))
    headers = {**PAGE_HEADERS, "Location": "/ui/sign-in", "Set-Cookie": cookie}
    return Answer(b"", 303, headers, media_type=None)


@route(
    "/static/{name:str}", http_method=[HttpMethod.GET, HttpMethod.HEAD], opt=UI, name="ui_static"
)
async def static(name: FromPath[str], request: AnyRequest) -> Answer:
    asset = ASSETS.get(name)
    if asset is None:
        return Answer(b"Not Found\n", 404, PAGE_HEADERS, media_type="text/plain; charset=utf-8")
    headers = {
        "ETag": asset.etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if header(request, "if-none-match") == asset.etag:
        return Answer(b"", 304, headers, media_type=None)
    return Answer(asset.body, 200, headers, media_type=asset.media_type)


HANDLERS: dict[type[Exception], Any] = {
    SignInNeeded: _sign_in_needed,
    StorageError: _storage_error,
    BadRequest: _bad_request,
}

ROUTER = Router(
    "/ui",
    route_handlers=[
        workflows_page,
        workflow_page,
        workflow_live,
        workflow_export,
        artifact_page,
        artifact_download,
        sign_in_form,
        sign_in,
        sign_out,
        static,
    ],
    include_in_schema=False,
    exception_handlers=HANDLERS,  # type: ignore[arg-type]
)
