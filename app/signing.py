"""Signed, expiring download links: HMAC-SHA256 over one artifact's exact bytes, for a while.

A link is `/artifacts/{id}/download?expires=<unix seconds>&sig=<mac>`. It lets whoever holds it
GET (or HEAD) that artifact, as the tenant it was made for, while the artifact still has the
content it had when the link was made, until `expires`. Nothing about a link is stored: the
server re-derives the MAC from the artifact row and the query, so replacing an artifact's content
or rotating the key invalidates every link made before, and a link can never outlive
ARTIFACTS_DOWNLOAD_URL_MAX_TTL, even if it was minted with a leaked key and a far expiry.

A link to one version, `/artifacts/{id}/versions/{n}/download?expires=…&sig=…`, is bound to that
version and its bytes (immutable), so uploads after it was made do not change what it serves;
it stops working when the artifact is deleted or retention purges the version.

The MAC input is a fixed layout no field value can forge: a purpose-and-version tag, then each
field as an 8-byte big-endian length and its UTF-8 bytes, in a fixed order (method, artifact id,
tenant, content hash, expiry; a version link adds the version). See `_mac_input`.

The key comes from ARTIFACTS_SIGNING_KEY, or else from `<data_dir>/signing.key`, which the first
process to need it creates (see `load_signing_secret`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import logging
import math
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from app.settings import Settings

log = logging.getLogger("artifacts.signing")

# Query parameter names. Short, and the conventional words for what they carry (S3 and GCS
# presigned URLs say Expires / Signature): `expires` is a plain absolute deadline a person can
# read and a client can act on ("renew before 1717171717") without decoding anything; `sig` is
# the MAC. The download route takes no query parameters of its own, so neither can collide, and
# verify() refuses any other parameter, so nothing unsigned can ride along on a signed link.
EXPIRES = "expires"
SIG = "sig"
PARAMS = frozenset({EXPIRES, SIG})

MIN_SECRET_BYTES = 32
KEY_FILE = "signing.key"

# b"<purpose>/<version>\n": a MAC made for anything else, or by a later layout, never matches.
_TAG = b"workflow-artifacts/download-link/v1\n"
# A link to one version of an artifact (/artifacts/{id}/versions/{n}/download) has a purpose of
# its own and the version number as one more field: it never opens the current download, nor
# another version, even one with the same bytes.
_VERSION_TAG = b"workflow-artifacts/version-link/v1\n"
_METHOD = b"GET"  # HEAD is GET without the body (RFC 9110 9.3.2): the route accepts both
# A positive decimal integer without sign, leading zeros, spaces, `_` or non-ASCII digits (all of
# which int() would accept), so one expiry has exactly one spelling. 16 digits is year 3e8.
_EXPIRES_RE = re.compile(r"[1-9][0-9]{0,15}")
_MAX_EXPIRES = 10**16 - 1
# The MAC as unpadded URL-safe base64: 32 bytes -> 43 characters from [A-Za-z0-9_-], nothing
# to escape in a URL. It is compared as text against the one canonical encoding, so the spare
# bits of the last character cannot give a second spelling of the same MAC.
_SIG_RE = re.compile(r"[A-Za-z0-9_-]{43}")

RefusalReason = Literal[
    "missing_parameter",
    "unexpected_parameter",
    "duplicate_parameter",
    "malformed_parameter",
    "bad_signature",
    "expired",
    "expiry_too_far",
]

_SENTENCES: dict[str, str] = {
    "missing_parameter": "The link lacks its expires or sig parameter.",
    "unexpected_parameter": "The link carries a parameter that is not part of a signed link.",
    "duplicate_parameter": "The link repeats a parameter.",
    "malformed_parameter": "The link's expires or sig parameter is malformed.",
    "bad_signature": "The link's signature does not match this artifact.",
    "expired": "The link has expired.",
    "expiry_too_far": "The link's expiry is further away than any link may be.",
}


class LinkRefused(Exception):
    """A signed link that does not grant this download. `reason` is one of RefusalReason;
    str(exc) is a sentence for the client. Only a link whose signature matched is ever refused
    as `expired` or `expiry_too_far`, so the reason tells a forger nothing."""

    def __init__(self, reason: RefusalReason) -> None:
        super().__init__(_SENTENCES[reason])
        self.reason: RefusalReason = reason


class SigningKeyError(Exception):
    """The signing key cannot be used (bad ARTIFACTS_SIGNING_KEY, unsafe or damaged key file).
    The message says what to do; it never contains the key."""


def _field(value: str) -> bytes:
    # surrogatepass: every str (even one with a lone surrogate from a mangled path) encodes, and
    # distinct strings still give distinct bytes.
    data = value.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(8, "big") + data


def _mac_input(
    artifact_id: str, tenant: str, content_hash: str, expires: int, version: int | None = None
) -> bytes:
    """The exact bytes the MAC covers. Length-prefixed fields: no value can end one field and
    start the next, whatever it contains. A link to the current content (version None) is
    signed exactly as before versions existed."""
    fields = [
        len(_METHOD).to_bytes(8, "big") + _METHOD,
        _field(artifact_id),
        _field(tenant),
        _field(content_hash),
        _field(str(expires)),
    ]
    if version is None:
        return _TAG + b"".join(fields)
    return _VERSION_TAG + b"".join([*fields, _field(str(version))])


def _pairs(query: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[object, object]]:
    """Every (name, value) of a query, duplicates kept: a multi-dict (Starlette's
    request.query_params, Werkzeug's MultiDict) through getlist(), a plain mapping through
    items(), or a sequence of pairs (urllib.parse.parse_qsl)."""
    if isinstance(query, str | bytes):
        raise TypeError("verify() takes the parsed query (request.query_params), not its text")
    if isinstance(query, Mapping):
        getlist = getattr(query, "getlist", None)
        if callable(getlist):
            return [(name, value) for name in query for value in getlist(name)]
        return list(query.items())
    return list(query)


class LinkSigner:
    """Makes and checks signed download links with one secret.

    `max_lifetime` (seconds, ARTIFACTS_DOWNLOAD_URL_MAX_TTL) is enforced by verify() against the
    clock, not only when a link is made: a link whose expiry is further than that from now is
    refused even with a valid signature.
    """

    __slots__ = ("_secret", "max_lifetime")

    def __init__(self, secret: bytes, max_lifetime: float) -> None:
        if not isinstance(secret, bytes):
            raise TypeError("the signing secret must be bytes")
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the signing secret must be at least {MIN_SECRET_BYTES} bytes")
        if not (math.isfinite(max_lifetime) and max_lifetime >= 1):
            raise ValueError("max_lifetime must be at least one second")
        self._secret = secret
        self.max_lifetime = float(max_lifetime)

    def __repr__(self) -> str:
        return f"LinkSigner(max_lifetime={self.max_lifetime:g})"

    def derived_key(self, purpose: str) -> bytes:
        """A key of its own for another use of this secret (the web UI's session cookie):
        HMAC of the purpose under the secret, so a MAC made with it never opens a link, nor
        the reverse, and rotating ARTIFACTS_SIGNING_KEY voids both."""
        tagged = b"workflow-artifacts/derived-key/v1\n" + purpose.encode()
        return hmac.digest(self._secret, tagged, "sha256")

    def _sig(
        self,
        artifact_id: str,
        tenant: str,
        content_hash: str,
        expires: int,
        version: int | None = None,
    ) -> str:
        mac = hmac.digest(
            self._secret,
            _mac_input(artifact_id, tenant, content_hash, expires, version),
            "sha256",
        )
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def sign(
        self,
        *,
        artifact_id: str,
        tenant: str,
        content_hash: str,
        expires_at: int,
        version: int | None = None,
    ) -> dict[str, str]:
        """The query parameters to append to /artifacts/{artifact_id}/download (or, with
        `version`, to /artifacts/{artifact_id}/versions/{version}/download, `content_hash`
        being that version's): {"expires": "<expires_at>", "sig": "<43 chars>"}.

        `artifact_id` must be the artifact's full id (not a prefix) and `content_hash` its current
        content_hash, exactly as verify() will be given them. `expires_at` is absolute unix
        seconds; compute it as int(now) + lifetime(...) (floor, not ceil, so a link made for the
        full max lifetime is not over the cap at once).
        """
        for name, value in (
            ("artifact_id", artifact_id),
            ("tenant", tenant),
            ("content_hash", content_hash),
        ):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str")
        if isinstance(expires_at, bool) or not isinstance(expires_at, int):
            raise TypeError("expires_at must be an int (unix seconds)")
        if not 1 <= expires_at <= _MAX_EXPIRES:
            raise ValueError("expires_at is out of range")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise TypeError("version must be an int")
        return {
            EXPIRES: str(expires_at),
            SIG: self._sig(artifact_id, tenant, content_hash, expires_at, version),
        }

    def verify(
        self,
        *,
        artifact_id: str,
        tenant: str,
        content_hash: str,
        query: Mapping[str, str] | Iterable[tuple[str, str]],
        now: float,
        version: int | None = None,
    ) -> None:
        """Returns if `query` is a valid, unexpired link for exactly this artifact id, tenant and
        content hash at time `now` (unix seconds); raises LinkRefused otherwise, whatever the
        query holds. Pass the whole parsed query (request.query_params itself: dict() of it
        would hide a duplicate). A link has one spelling: `expires`, then `sig`; reordered,
        another parameter, or either of them twice, is refused.

        Checked in this order: parameter set, format, signature (constant time), then expiry
        (expires <= now: expired) and cap (expires > now + max_lifetime).
        """
        if not math.isfinite(now):
            raise ValueError("now must be a finite time")
        values: dict[str, str] = {}
        for name, value in _pairs(query):
            if not isinstance(name, str) or name not in PARAMS:
                raise LinkRefused("unexpected_parameter")
            if name in values:
                raise LinkRefused("duplicate_parameter")
            if not isinstance(value, str):
                raise LinkRefused("malformed_parameter")
            values[name] = value
        if len(values) != len(PARAMS):
            raise LinkRefused("missing_parameter")
        if list(values) != [EXPIRES, SIG]:  # one spelling per link: reordered is refused
            raise LinkRefused("malformed_parameter")
        expires_text, sig = values[EXPIRES], values[SIG]
        # fullmatch on str with these ASCII-only classes: anything non-ASCII is refused here,
        # before int() or compare_digest() (which raises on non-ASCII str) can see it.
        if _EXPIRES_RE.fullmatch(expires_text) is None or _SIG_RE.fullmatch(sig) is None:
            raise LinkRefused("malformed_parameter")
        expires = int(expires_text)
        expected = self._sig(artifact_id, tenant, content_hash, expires, version)
        if not hmac.compare_digest(expected.encode("ascii"), sig.encode("ascii")):
            raise LinkRefused("bad_signature")
        if expires <= now:
            raise LinkRefused("expired")
        if expires > now + self.max_lifetime:
            raise LinkRefused("expiry_too_far")


def lifetime(requested: int | None, default: int, cap: int) -> int:
    """Seconds a new link lives: `requested` (or `default` when None), clamped to [1, cap].
    Pass the settings as ints: lifetime(q, int(s.download_url_ttl), int(s.download_url_max_ttl))."""
    if cap < 1:
        raise ValueError("cap must be at least one second")
    wanted = default if requested is None else requested
    return int(min(max(wanted, 1), cap))


# -- the secret --------------------------------------------------------------------------------

_HEX_RE = re.compile(r"[0-9A-Fa-f]+")
_B64_RE = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_KEY_HELP = (
    "ARTIFACTS_SIGNING_KEY must be at least 32 random bytes written as hex "
    "(openssl rand -hex 32) or base64 (openssl rand -base64 32)"
)


def decode_signing_key(text: str) -> bytes:
    """ARTIFACTS_SIGNING_KEY's value as key bytes.

    Accepted: hex (a value made only of hex digits is always read as hex), else standard or
    URL-safe base64, padded or not; at least 32 bytes either way. Surrounding whitespace is
    ignored. Passphrases are refused, not hashed into a key: anyone holding one signed link can
    test passphrase guesses offline against its MAC, so the key must be random bytes.
    """
    value = text.strip()
    if not value:
        raise SigningKeyError(
            "ARTIFACTS_SIGNING_KEY is set but empty; set a key or unset it to use "
            f"<data_dir>/{KEY_FILE}"
        )
    if _HEX_RE.fullmatch(value):
        if len(value) % 2:
            raise SigningKeyError(f"{_KEY_HELP}; it has an odd number of hex digits")
        key = bytes.fromhex(value)
    elif _B64_RE.fullmatch(value) and len(value.rstrip("=")) % 4 != 1:
        body = value.rstrip("=").replace("-", "+").replace("_", "/")
        try:
            key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise SigningKeyError(f"{_KEY_HELP}; it is not valid base64") from None
    else:
        raise SigningKeyError(f"{_KEY_HELP}; it is neither (passphrases are not accepted)")
    if len(key) < MIN_SECRET_BYTES:
        raise SigningKeyError(f"{_KEY_HELP}; it decodes to only {len(key)} bytes")
    return key


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_key_file(path: Path) -> bytes:
    """The key in an existing key file: raw bytes, used as they are. Raises FileNotFoundError
    when there is none, SigningKeyError when it is unsafe or damaged."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)  # of the file opened, not of whatever the name points at later
        if not stat.S_ISREG(info.st_mode):
            raise SigningKeyError(f"signing key file {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise SigningKeyError(
                f"signing key file {path} has mode {mode:04o}: group or others can read or "
                f"write it, so the key must be considered leaked. Run `chmod 600 {path}` if "
                "it is not, or delete the file to make a new key (outstanding links stop "
                "working), or set ARTIFACTS_SIGNING_KEY"
            )
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
            if sum(map(len, chunks)) > 65536:
                raise SigningKeyError(f"signing key file {path} is too large to be a key")
    finally:
        os.close(fd)
    key = b"".join(chunks)
    if len(key) < MIN_SECRET_BYTES:
        raise SigningKeyError(
            f"signing key file {path} holds {len(key)} bytes, fewer than {MIN_SECRET_BYTES}; "
            "delete it to make a new key"
        )
    return key


def _create_key_file(path: Path) -> bytes:
    """Make a new key file, or read the one another process made first.

    The key is written to a private temp file (O_EXCL, 0600), fsynced, then link()ed to the
    final name: link never replaces an existing name, so of processes starting at once exactly
    one wins, and the others, getting EEXIST, read the winner's complete, fsynced file.
    """
    key = secrets.token_bytes(MIN_SECRET_BYTES)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
            view = memoryview(key)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_key_file(path)  # another process won: its key is the key
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    log.info("created signing key file %s", path)
    return key


def load_signing_secret(settings: Settings) -> bytes:
    """The HMAC key: ARTIFACTS_SIGNING_KEY when set (see decode_signing_key; the key file is
    then neither read nor created), else `<data_dir>/signing.key`, created on first use with 32
    random bytes, mode 0600. Raises SigningKeyError with a sentence saying what to fix, e.g.
    for a key file group or others can read. Never logs the key.

    Servers that do not share one data_dir must share ARTIFACTS_SIGNING_KEY, or a link made by
    one is refused by the others.
    """
    if settings.signing_key is not None:
        return decode_signing_key(settings.signing_key.get_secret_value())
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / KEY_FILE
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        return _create_key_file(path)


class RedactSignatures(logging.Filter):
    """Keeps link signatures out of the access log: `sig=<mac>` is logged as `sig=REDACTED`."""

    _SIG_VALUE = re.compile(r"(?<=[?&]sig=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self._SIG_VALUE.sub("REDACTED", a) if isinstance(a, str) else a for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = self._SIG_VALUE.sub("REDACTED", record.msg)
        return True

    @classmethod
    def install(cls) -> None:
        for name in ("uvicorn.access", "uvicorn.error", "artifacts"):
            logger = logging.getLogger(name)
            if not any(isinstance(f, cls) for f in logger.filters):
                logger.addFilter(cls())


def signer_from_settings(settings: Settings) -> LinkSigner:
    """A LinkSigner with the configured key and ARTIFACTS_DOWNLOAD_URL_MAX_TTL as its cap."""
    return LinkSigner(load_signing_secret(settings), settings.download_url_max_ttl)


__all__ = [
    "EXPIRES",
    "SIG",
    "LinkRefused",
    "LinkSigner",
    "RedactSignatures",
    "RefusalReason",
    "SigningKeyError",
    "decode_signing_key",
    "lifetime",
    "load_signing_secret",
    "signer_from_settings",
]
