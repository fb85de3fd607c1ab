"""Who is looking at the web UI: the open-mode user, or the holder of a session cookie.

Signing in (POST /ui/sign-in) takes an API key once, checks it against the key store, and sets
a cookie that names the key, never its secret:

    wfa_ui = v1.<key id>.<expires, unix seconds>.<MAC>

The MAC is HMAC-SHA256 under a key derived from the signing secret (app/signing.py,
`LinkSigner.derived_key`), so rotating ARTIFACTS_SIGNING_KEY ends every session; each request
checks the MAC in constant time, the expiry, and that the key is still active, so revoking the
key (or its expiry) ends its sessions at the next request. The cookie is HttpOnly,
SameSite=Strict, Path=/ui, Secure when the request came over https, and lives
SESSION_SECONDS at most (never past the key's own expiry).
"""

from __future__ import annotations

import base64
import hmac
import re
import time
from dataclasses import dataclass
from typing import Any

from litestar import Request

from app.auth import Authenticator
from app.signing import LinkSigner
from storage.apikeys import ApiKey
from storage.db.tables import DEFAULT_TENANT

COOKIE = "wfa_ui"
SESSION_SECONDS = 8 * 3600
READ_SCOPE = "artifact:read"
_PURPOSE = "ui-session"
_KEY_ID = re.compile(r"[0-9a-f-]{36}")
_EXPIRES = re.compile(r"[1-9][0-9]{0,15}")
_MAC = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class Viewer:
    """Whose artifacts the pages show: `tenant`; `key_prefix` None in open mode."""

    tenant: str
    key_prefix: str | None
    expires_at: int | None = None

    @property
    def signed_in(self) -> bool:
        return self.key_prefix is not None


def _mac(signer: LinkSigner, key_id: str, expires: int) -> str:
    message = f"v1\n{key_id}\n{expires}".encode()
    digest = hmac.digest(signer.derived_key(_PURPOSE), message, "sha256")
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def session_value(signer: LinkSigner, key: ApiKey, now: float) -> tuple[str, int]:
    """The cookie's value for `key`, and how many seconds it lives."""
    expires = int(now) + SESSION_SECONDS
    if key.expires_at is not None:
        expires = min(expires, key.expires_at // 1_000_000)
    return f"v1.{key.id}.{expires}.{_mac(signer, key.id, expires)}", max(expires - int(now), 0)


def _cookie_value(request: Request[Any, Any, Any]) -> str | None:
    for name, value in request.scope["headers"]:
        if name.lower() != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            key, sep, text = part.strip().partition("=")
            if sep and key == COOKIE:
                return text
    return None


def parse_session(signer: LinkSigner, value: str, now: float) -> tuple[str, int] | None:
    """(key id, expires) of a cookie value this server signed and that has not expired."""
    parts = value.split(".")
    if len(parts) != 4 or parts[0] != "v1":
        return None
    _, key_id, expires_text, mac = parts
    if not (_KEY_ID.fullmatch(key_id) and _EXPIRES.fullmatch(expires_text) and _MAC.fullmatch(mac)):
        return None
    expires = int(expires_text)
    if not hmac.compare_digest(_mac(signer, key_id, expires).encode(), mac.encode()):
        return None
    if expires <= now or expires > now + SESSION_SECONDS + 60:
        return None
    return key_id, expires


async def viewer_of(request: Request[Any, Any, Any]) -> Viewer | None:
    """The viewer of this request: the open-mode user when no key exists (loopback), else the
    holder of a valid session cookie whose key is active and may read; None otherwise."""
    state = request.app.state
    auth: Authenticator = state.auth
    if await auth.is_open():
        return Viewer(DEFAULT_TENANT, None)
    value = _cookie_value(request)
    if value is None:
        return None
    parsed = parse_session(state.signer, value, time.time())
    if parsed is None:
        return None
    key_id, expires = parsed
    key = await auth.keys.active_key(key_id)
    if key is None or not key.allows(READ_SCOPE):
        return None
    return Viewer(key.tenant, key.prefix, expires)


def set_cookie(value: str, max_age: int, secure: bool) -> str:
    flags = "; Secure" if secure else ""
    return f"{COOKIE}={value}; Max-Age={max_age}; Path=/ui; HttpOnly; SameSite=Strict{flags}"


def clear_cookie(secure: bool) -> str:
    flags = "; Secure" if secure else ""
    return f"{COOKIE}=; Max-Age=0; Path=/ui; HttpOnly; SameSite=Strict{flags}"
