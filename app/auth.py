"""Who is calling, and may they: API keys as `Authorization: Bearer <key>` or HTTP Basic with the
key as the password (the `syn` CLI sends either), one declared scope per route.

    no credentials, open mode      -> the one local user: tenant "default", every scope
    no credentials, keys exist     -> 401 invalid_api_key, WWW-Authenticate
    unknown, revoked, expired key  -> 401 invalid_api_key (one answer for all three)
    key without the route's scope  -> 403 forbidden, naming the scope
    key past its request rate      -> 429 rate_limited, Retry-After

Open mode is "no API key is on record" (checked at most once a second, so the first key created
locks a running server within a second). Revoked and expired keys stay on record: revoking the
last key leaves a server that refuses every request, and only `artifacts keys reopen` (which
forgets them) brings open mode back, said in the log when a running server sees it. Open mode is
allowed only on a loopback bind unless the operator passes --insecure-no-auth.

Every route declares its scope as `opt={"scope": ...}`, which the app's guard `authorize`
enforces (a test fails for a route that has none); `/healthz`, `/readyz` and the docs declare
none: they are public.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import math
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from litestar.connection import ASGIConnection

from app.errors import ApiError, reference_routing
from app.params import query_items
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


_ANNOUNCED: dict[int, tuple[weakref.ref[object], str]] = {}


def announce(config: object, level: int, message: str) -> None:
    """Log a start-up banner once per configuration object (the same message again for the
    same object is not repeated). `artifacts serve` checks its settings before uvicorn starts
    and the app's lifespan checks them again, both with one Settings object: the operator
    reads the banner once."""
    key = id(config)
    seen = _ANNOUNCED.get(key)
    if seen is not None and seen[0]() is config and seen[1] == message:
        return
    _ANNOUNCED[key] = (weakref.ref(config, lambda _: _ANNOUNCED.pop(key, None)), message)
    log.log(level, "%s", message)


class Authenticator:
    """One per app: verifies keys, knows whether the service is open, limits request rates."""

    def __init__(
        self,
        keys: ApiKeys,
        *,
        open_allowed: bool,
        rate: str | None,
        host: str = "this server",
        open_now: bool | None = None,
    ) -> None:
        """`open_now`: open mode as found at start-up (None: not known yet), so that a change
        before the first request is still said in the log."""
        self.keys = keys
        self.open_allowed = open_allowed
        self.host = host
        self._open: bool | None = open_now
        self._open_checked = time.monotonic() if open_now is not None else 0.0
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
            self._open = open_now = (await self.keys.access()).open
            self._open_checked = time.monotonic()
            if was and not open_now:
                log.warning("an API key exists now: open mode is over, every request needs a key")
            elif was is False and open_now:
                log.warning(
                    "OPEN MODE again: every API key was forgotten (`artifacts keys reopen`), so "
                    "anyone who can reach %s has full access as the project 'default'",
                    self.host,
                )
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


SCOPE_KEY = "artifacts.caller"  # where the admitted caller is kept in the ASGI scope
LINK_KEY = "artifacts.link_content_hash"


async def authorize(connection: ASGIConnection[Any, Any, Any, Any], handler: Any) -> None:
    """The app's one guard (Litestar copies the handler for each guard it runs: one is
    cheaper): the reference's routing answers first (app/errors.py), then the route's
    `opt["scope"]` (None: a public route); with `opt["signed_links"]` a signed download link
    stands in for a key with that scope. The web UI's routes (`opt["ui"]`, app/ui/) are no part
    of the reference's API: they route as Litestar does (`/ui/` is a page) and each handler
    admits its viewer by the session cookie (app/ui/session.py)."""
    if handler.opt.get("ui"):
        return
    reference_routing(connection.scope)
    scope: str | None = handler.opt.get("scope")
    if scope is None:
        return
    if handler.opt.get("signed_links"):
        await admit_link(connection, scope)
    else:
        await admit(connection, (scope,))


async def admit(connection: ASGIConnection[Any, Any, Any, Any], scopes: Sequence[str]) -> Caller:
    """The caller of an API-key request, if it holds every one of `scopes` (401/403/429 else);
    remembered on the connection for caller_of()."""
    auth: Authenticator = connection.app.state.auth
    caller = await auth.caller(_authorization(connection))
    for scope in scopes:
        if not caller.allows(scope):
            raise ApiError(403, "forbidden", f"This API key lacks the scope {scope!r}.")
    connection.scope[SCOPE_KEY] = caller  # type: ignore[literal-required]
    return caller


def _authorization(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    for key, value in connection.scope["headers"]:
        if key.lower() == b"authorization":
            return value.decode("latin-1")
    return None


async def admit_link(connection: ASGIConnection[Any, Any, Any, Any], scope: str) -> Caller:
    """A download: a signed link (`expires` and `sig` in the query) needs no key; anything
    else is an ordinary API-key request. A link that fails any check is refused outright (a
    key sent alongside does not rescue it), and one for a deleted or unknown artifact alike."""
    query = query_items(connection)
    names = {name for name, _ in query}
    if EXPIRES not in names and SIG not in names:
        return await admit(connection, (scope,))
    state = connection.app.state
    signer: LinkSigner = state.signer
    artifact_id = connection.path_params.get("artifact_id", "")
    version = _link_version(connection.path_params.get("version"))
    if version is None:
        found = await state.service.owner_of(artifact_id)
    elif version > 0:  # a link to one version (/versions/{n}/download)
        found = await state.service.owner_of_version(artifact_id, version)
    else:
        found = None
    try:
        if found is None:
            raise LinkRefused("bad_signature")
        tenant, artifact = found
        signer.verify(
            artifact_id=artifact.id,
            tenant=tenant,
            content_hash=artifact.content_hash,
            query=query,
            now=time.time(),
            version=version,
        )
    except LinkRefused as exc:
        code = "link_expired" if exc.reason == "expired" else "invalid_link"
        raise ApiError(403, code, str(exc)) from None
    caller = Caller(tenant, frozenset((scope,)), None)
    connection.scope[SCOPE_KEY] = caller  # type: ignore[literal-required]
    connection.scope[LINK_KEY] = artifact.content_hash  # type: ignore[literal-required]
    return caller


def _link_version(raw: Any) -> int | None:
    """The version a link's path names: None on a route without one, 0 when the segment is not
    a version number as links spell it (digits, no leading zero): no link is signed for it, so
    it is refused like a bad signature. One spelling per link, as for `expires`."""
    if raw is None:
        return None
    text = str(raw)
    if text.isascii() and text.isdigit() and text[0] != "0" and len(text) <= 10:
        return int(text) if int(text) < 2**31 else 0
    return 0


def caller_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    """The caller the guard admitted (a route without a scope is a bug the route test catches)."""
    caller: Caller | None = connection.scope.get(SCOPE_KEY)  # type: ignore[assignment]
    if caller is None:
        raise RuntimeError(f"route {connection.scope['path']} declares no scope")
    return caller


def linked_content_hash(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The content hash a signed link was issued for (None: not a link request)."""
    value: str | None = connection.scope.get(LINK_KEY)  # type: ignore[assignment]
    return value
