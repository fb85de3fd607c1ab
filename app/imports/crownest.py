"""A client for the parts of the CrowNest API the importer needs (spec: ../shared/spec/000-003).

Written on httpx rather than the `crownest` SDK because the SDK's `list()` reads only the first
page and its `download()` buffers the whole file in memory; the tests hold this client and the
SDK to the same fake server. Retries (tenacity): 429 honours Retry-After; 5xx and dropped
connections back off exponentially, bounded; 401/403 stop at once.

Downloads use the SDK's own route, `GET /v1/artifacts/{id}/download` on the API host, streamed.
The docs say downloads are short-lived signed URLs, so a redirect from that route is followed
(at most MAX_REDIRECTS hops): a signed URL carries its own authorisation and needs no key. The
API key is only ever sent to the configured origin (scheme, host and port): a request hook
strips it from every request bound anywhere else, whatever httpx's own redirect rules.

Errors that mean the configuration is wrong (host unreachable, not CrowNest, key rejected) name
the setting to check in `CrowNestError.setting`; the CLI turns them into one line and exit 2.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

CHUNK = 1 << 20
MAX_REDIRECTS = 5
BASE_URL_SETTING = "ARTIFACTS_CROWNEST_BASE_URL"
KEY_SETTING = "CROWNEST_API_KEY"


class UpstreamArtifact(BaseModel):
    """CrowNest's artifact JSON (camelCase; optional keys omitted; unknown keys tolerated)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)
    name: str = ""
    sizeBytes: int = Field(ge=0)
    orgId: str | None = None
    projectId: str | None = None
    sandboxId: str | None = None
    sourcePath: str | None = None
    objectKey: str | None = None
    contentType: str | None = None
    createdAt: str | None = None
    deletedAt: str | None = None
    retentionExpiresAt: str | None = None


class CrowNestError(Exception):
    """An answer (or a failure to get one) from CrowNest, with its code. `setting` names the
    setting to check when the error means the configuration is wrong; `fatal` ones stop a job."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str = "upstream_error",
        retry_after: float | None = None, setting: str | None = None, fatal: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.code, self.retry_after = status, code, retry_after
        self.setting, self.fatal = setting, fatal

    @property
    def retryable(self) -> bool:
        return self.status == 429 or (self.status is not None and self.status >= 500)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, CrowNestError):
        return exc.retryable
    return isinstance(exc, httpx.TransportError)  # refused, reset, cut-off body, timeouts


def check_base_url(url: str) -> str | None:
    """Why `url` cannot be CrowNest's base URL, or None when it can."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        return f"{BASE_URL_SETTING} {url!r} is not a URL ({exc})."
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return f"{BASE_URL_SETTING} {url!r} is not an http:// or https:// URL with a host."
    return None


def _origin_of(url: httpx.URL) -> tuple[str, str, int | None]:
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host.lower(), port


def _crownest_error(body: bytes) -> dict[str, Any] | None:
    """CrowNest's `{"error": {"code", "message"}}`, or None when the body is something else."""
    try:
        error = httpx.Response(200, content=body).json().get("error")
    except (ValueError, AttributeError):
        return None
    return error if isinstance(error, dict) and error.get("code") else None


def _no_query(url: httpx.URL) -> str:
    """The URL without its query: a signed URL's signature is a secret while it is valid."""
    return str(url.copy_with(query=None, fragment=None))


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _reason(exc: httpx.TransportError) -> str:
    """'connection refused', 'name or service not known', 'ReadTimeout', …: the cause in words."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno is not None:
            text = os.strerror(cause.errno) if cause.errno > 0 else str(cause.strerror)
            return text[:1].lower() + text[1:]
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in time ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class CrowNestClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        retry_after_max: float = 60.0,
        page_size: int = 100,
    ) -> None:
        problem = check_base_url(base_url)
        if problem is not None:
            raise CrowNestError(problem, code="bad_base_url", setting=BASE_URL_SETTING)
        self.base_url = base_url.rstrip("/")
        self._origin = _origin_of(httpx.URL(self.base_url))
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self.max_attempts = max_attempts
        # jitter scales with the base: a fixed (default 1 s) jitter would dwarf a small base
        self.backoff = wait_exponential_jitter(
            multiplier=backoff_base, max=backoff_max, jitter=backoff_base
        )
        self.retry_after_max = retry_after_max
        self.page_size = page_size
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            follow_redirects=False,
            max_redirects=MAX_REDIRECTS,
            event_hooks={"request": [self._key_stays_home]},
        )

    async def __aenter__(self) -> CrowNestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def _key_stays_home(self, request: httpx.Request) -> None:
        """Every request, redirect hops included: no Authorization off the configured origin."""
        if _origin_of(request.url) != self._origin:
            request.headers.pop("Authorization", None)

    def _error_of(self, response: httpx.Response, body: bytes) -> CrowNestError:
        """What an answer of status >= 300 means, in words for a person."""
        status, error = response.status_code, _crownest_error(body)
        retry_after = _retry_after(response) if status == 429 else None
        if response.history or _origin_of(response.url) != self._origin:
            said = f": {error.get('message')}" if error and error.get("message") else "."
            return CrowNestError(
                f"{_no_query(response.url)} (where CrowNest redirected the download) "
                f"answered {status}{said}",
                status=status, code="redirect_target_error", retry_after=retry_after,
            )  # fmt: skip
        if error is None and status != 429 and status < 500:
            return self._not_crownest(response)
        code = str((error or {}).get("code") or "upstream_error")
        said = str((error or {}).get("message") or f"CrowNest answered {status}")
        if status not in (401, 403):
            return CrowNestError(said, status=status, code=code, retry_after=retry_after)
        what = "rejected the API key" if status == 401 else "gave the API key no access"
        need = "" if status == 401 else "it needs artifact:read; "
        return CrowNestError(
            f"CrowNest at {self.base_url} {what} ({code}): {need}check {KEY_SETTING}. {said}",
            status=status, code=code, setting=KEY_SETTING, fatal=True,
        )  # fmt: skip

    def _not_crownest(self, response: httpx.Response) -> CrowNestError:
        if response.has_redirect_location:
            what = f"redirected to {_no_query(httpx.URL(response.headers['location']))}"
        else:
            what = f"answered {response.status_code} with a body that is not CrowNest's"
        return CrowNestError(
            f"{self.base_url} {what}: it does not look like the CrowNest API. "
            f"Check {BASE_URL_SETTING}.",
            status=response.status_code, code="not_crownest", setting=BASE_URL_SETTING,
        )  # fmt: skip

    def _unreachable(self, exc: httpx.TransportError) -> CrowNestError:
        return CrowNestError(
            f"Cannot reach CrowNest at {self.base_url}: {_reason(exc)} "
            f"({self.max_attempts} attempts). Check {BASE_URL_SETTING}.",
            code="unreachable",
            setting=BASE_URL_SETTING,
        )

    def retrying(self) -> AsyncRetrying:
        """The retry policy: use as `async for attempt in client.retrying(): with attempt: …`."""

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, CrowNestError) and exc.retry_after is not None:
                return min(max(exc.retry_after, 0.0), self.retry_after_max)
            return float(self.backoff(state))

        return AsyncRetrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(self.max_attempts),
            wait=wait,
            reraise=True,
        )

    async def _json(self, method: str, path: str, **params: Any) -> dict[str, Any]:
        try:
            async for attempt in self.retrying():
                with attempt:
                    return await self._json_once(method, path, **params)
        except httpx.TransportError as exc:  # still failing after the retries
            raise self._unreachable(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _json_once(self, method: str, path: str, **params: Any) -> dict[str, Any]:
        response = await self._http.request(method, path, params=params or None, headers=self._auth)
        if response.status_code >= 300:
            raise self._error_of(response, response.content)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise CrowNestError(
                f"{self.base_url} answered {path} with a body that is not CrowNest's JSON: "
                f"it does not look like the CrowNest API. Check {BASE_URL_SETTING}.",
                code="not_crownest",
                setting=BASE_URL_SETTING,
            )
        return body

    async def list_artifacts(self, sandbox_id: str) -> AsyncIterator[UpstreamArtifact]:
        """Every artifact of the sandbox, following `nextCursor` through every page."""
        cursor: str | None = None
        seen: set[str] = set()
        path = f"/v1/sandboxes/{sandbox_id}/artifacts"
        while True:
            params: dict[str, Any] = {"limit": self.page_size}
            if cursor is not None:
                params["cursor"] = cursor
            page = await self._json("GET", path, **params)
            for item in page.get("data") or []:
                yield self._parse(item)
            if not page.get("hasMore"):
                return
            cursor = page.get("nextCursor")
            if not cursor:
                raise CrowNestError(
                    "CrowNest said more pages follow but gave no nextCursor; stopping.",
                    code="pagination_broken",
                )
            if cursor in seen:
                raise CrowNestError(
                    f"CrowNest repeated the cursor {cursor!r}; stopping to avoid a loop.",
                    code="pagination_broken",
                )
            seen.add(cursor)

    async def get_artifact(self, artifact_id: str) -> UpstreamArtifact:
        body = await self._json("GET", f"/v1/artifacts/{artifact_id}")
        return self._parse(body.get("artifact"))

    @staticmethod
    def _parse(item: Any) -> UpstreamArtifact:
        try:
            return UpstreamArtifact.model_validate(item)
        except ValidationError as exc:
            raise CrowNestError(f"CrowNest sent an artifact we cannot read: {exc}") from None

    @asynccontextmanager
    async def open_download(self, artifact_id: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """The artifact's bytes as a stream, from `GET /v1/artifacts/{id}/download` as the
        SDK's download() (one attempt: the caller retries the whole transfer). Redirects are
        followed; the key goes only to the configured origin (see the module docstring)."""
        path = f"/v1/artifacts/{artifact_id}/download"
        headers = {**self._auth, "Accept": "application/octet-stream"}
        async with self._http.stream("GET", path, headers=headers, follow_redirects=True) as r:
            if r.status_code >= 300:
                raise self._error_of(r, await r.aread())
            yield r.aiter_bytes(CHUNK)
