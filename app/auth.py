"""Who is calling, and may they: API keys as `Authorization: Bearer <key>` or HTTP Basic with the
key as the password (the `syn` CLI sends either), one declared scope per route.

    no credentials, open mode      -> the one local user: tenant "default", every scope
    no credentials, keys exist     -> 401 invalid_api_key, WWW-Authenticate
    unknown, revoked, expired key  -> 401 invalid_api_key (one answer for all three)
    key without the route's scope  -> 403 forbidden, naming the scope
    key past its request rate      -> 429 rate_limited, Retry-After

Open mode is "no active API key exists" (checked at most once a second, so the first key
created locks a running server within a second); it is allowed only on a loopback bind unless
the operator passes --insecure-no-auth. Every route declares its scope with `require(...)`
(a test fails for a route that has none); `/healthz`, `/readyz` and the docs are `public`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Security
from fastapi.openapi.models import HTTPBase, HTTPBearer
from fastapi.security import SecurityScopes
from fastapi.security.base import SecurityBase
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from app.errors import ApiError
from app.signing import EXPIRES, SIG, LinkRefused, LinkSigner
from storage.apikeys import SCOPES, ApiKeys
from storage.db.tables import DEFAULT_TENANT

log = logging.getLogger("artifacts.auth")
OPEN_CHECK_SECONDS = 1.0
CHALLENGE = 'Bearer realm="workflow-artifacts", Basic realm="workflow-artifacts"'


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    scopes: frozenset[str]
    key_id: str | None  # None: the open-mode user

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


OPEN_CALLER = Caller(DEFAULT_TENANT, frozenset(SCOPES), None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def invalid_key(detail: str = "A valid API key is required.") -> ApiError:
    return ApiError(401, "invalid_api_key", detail, headers={"WWW-Authenticate": CHALLENGE})


def secret_from(header: str | None) -> str | None:
    """The key from `Bearer <key>` or `Basic base64(user:key)`; None when there is no header."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise invalid_key("The Basic credentials are not valid base64 of user:key.") from None
        _, sep, password = decoded.partition(":")
        if sep and password:
            return password
    raise invalid_key("Send the API key as 'Authorization: Bearer <key>' or as the Basic password.")


class Authenticator:
    """One per app: verifies keys, knows whether the service is open, limits request rates."""

    def __init__(self, keys: ApiKeys, *, open_allowed: bool, rate: str | None) -> None:
        self.keys = keys
        self.open_allowed = open_allowed
        self._open: bool | None = None
        self._open_checked = 0.0
        self._checking: asyncio.Future[bool] | None = None
        self.rate: RateLimitItem | None = parse(rate) if rate else None
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def is_open(self) -> bool:
        """No active key exists (checked at most about once a second), and open mode is
        allowed here. One check at a time: the requests that find the answer out of date wait
        for the same one (each starting its own, under load, kept the answer permanently out
        of date: it was a twentieth of every open-mode request's CPU)."""
        if not self.open_allowed:
            return False
        if self._open is not None and time.monotonic() - self._open_checked <= OPEN_CHECK_SECONDS:
            return self._open
        if self._checking is None:
            self._checking = asyncio.ensure_future(self._check())
        return await asyncio.shield(self._checking)

    async def _check(self) -> bool:
        try:
            was = self._open
            self._open = open_now = not await self.keys.any_active()
            self._open_checked = time.monotonic()
            if was and not open_now:
                log.warning("an API key exists now: open mode is over, every request needs a key")
            return open_now
        finally:
            self._checking = None

    async def caller(self, authorization: str | None) -> Caller:
        secret = secret_from(authorization)
        if secret is None:
            if await self.is_open():
                return OPEN_CALLER
            raise invalid_key()
        key = await self.keys.authenticate(secret)
        if key is None:
            raise invalid_key("The API key is unknown, revoked or expired.")
        self._limit(key.id)
        return Caller(key.tenant, frozenset(key.scopes), key.id)

    def _limit(self, key_id: str) -> None:
        if self.rate is None or self._limiter.hit(self.rate, key_id):
            return
        reset, _ = self._limiter.get_window_stats(self.rate, key_id)
        wait = max(1, math.ceil(reset - time.time()))
        raise ApiError(
            429,
            "rate_limited",
            f"This API key passed its limit of {self.rate}; retry in {wait} s.",
            headers={"Retry-After": str(wait)},
        )


class _Scheme(SecurityBase):
    """Declares an HTTP auth scheme in OpenAPI; the header is read by `authenticate`."""

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.scheme_name = name

    async def __call__(self, request: Request) -> str | None:
        return request.headers.get("authorization")


bearer = _Scheme(HTTPBearer(description="an API key: `Authorization: Bearer <key>`"), "bearer")
basic = _Scheme(
    HTTPBase(scheme="basic", description="any user name, the API key as password"), "basic"
)


async def authenticate(
    request: Request,
    security_scopes: SecurityScopes,
    _bearer: str | None = Security(bearer),
    _basic: str | None = Security(basic),
) -> Caller:
    return await admit(request, security_scopes.scopes)


async def admit(request: Request, scopes: Sequence[str]) -> Caller:
    """The caller of an API-key request, if it holds every one of `scopes` (401/403/429 else);
    remembered on the request for caller_of()."""
    auth: Authenticator = request.app.state.auth
    caller = await auth.caller(request.headers.get("authorization"))
    for scope in scopes:
        if not caller.allows(scope):
            raise ApiError(403, "forbidden", f"This API key lacks the scope {scope!r}.")
    request.state.caller = caller
    return caller


async def authenticate_link(
    request: Request,
    security_scopes: SecurityScopes,
    _bearer: str | None = Security(bearer),
    _basic: str | None = Security(basic),
) -> Caller:
    """A download: a signed link (`expires` and `sig` in the query) needs no key; anything
    else is an ordinary API-key request. A link that fails any check is refused outright (a
    key sent alongside does not rescue it), and one for a deleted or unknown artifact alike."""
    query = request.query_params
    if EXPIRES not in query and SIG not in query:
        return await authenticate(request, security_scopes, _bearer, _basic)
    signer: LinkSigner = request.app.state.signer
    found = await request.app.state.service.owner_of(request.path_params.get("artifact_id", ""))
    try:
        if found is None:
            raise LinkRefused("bad_signature")
        tenant, artifact = found
        signer.verify(
            artifact_id=artifact.id,
            tenant=tenant,
            content_hash=artifact.content_hash,
            query=query.multi_items(),
            now=time.time(),
        )
    except LinkRefused as exc:
        code = "link_expired" if exc.reason == "expired" else "invalid_link"
        raise ApiError(403, code, str(exc)) from None
    caller = Caller(tenant, frozenset(security_scopes.scopes), None)
    request.state.caller = caller
    request.state.link_content_hash = artifact.content_hash
    return caller


def require(scope: str, *, signed_links: bool = False) -> Any:
    """A route's one scope: `dependencies=[require("artifact:read")]`; `signed_links`: a
    signed download link (app/signing.py) stands in for a key with that scope."""
    assert scope in SCOPES, scope
    return Security(authenticate_link if signed_links else authenticate, scopes=[scope])


def caller_of(request: Request) -> Caller:
    """The caller `require()` admitted (a route without it is a bug the route test catches)."""
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None:
        raise RuntimeError(f"route {request.url.path} declares no scope")
    return caller
