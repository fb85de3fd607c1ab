"""The committed wire contract, `openapi/openapi.json`: the document the server serves at
/schema/openapi.json and answers `Allow` from. tests/test_openapi.py holds the app's routes to
it both ways (paths, methods, parameters, scopes, statuses)."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

DOCUMENT = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"
METHODS = ("get", "head", "post", "put", "patch", "delete")  # the order `Allow` lists them in
API_PREFIX = "/api/v1"  # every secured path is served under it too


@functools.cache
def document_bytes() -> bytes:
    return DOCUMENT.read_bytes()


@functools.cache
def document_json() -> bytes:
    """The document as compact JSON, as the reference served it."""
    return json.dumps(document(), ensure_ascii=False, separators=(",", ":")).encode()


@functools.cache
def document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(document_bytes())
    return doc


@functools.cache
def _allow_table() -> list[tuple[re.Pattern[str], str]]:
    """(regex, Allow) per path template, literal paths before templates that also match them."""
    rows = []
    for template, item in document()["paths"].items():
        parts = re.split(r"(\{[^}]+\})", template)
        regex = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
        allow = ", ".join(m.upper() for m in METHODS if m in item)
        rows.append((template.count("{"), re.compile(regex), allow))
    rows.sort(key=lambda row: row[0])
    return [(regex, allow) for _, regex, allow in rows]


PAGES = frozenset({"/schema/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def allowed_methods(path: str) -> str | None:
    """The methods the contract lists for a request path (`/api/v1` mirrors the rest); the
    pages that show the contract itself answer GET and HEAD."""
    if path in PAGES:
        return "GET, HEAD"
    if path.startswith(API_PREFIX + "/"):
        path = path.removeprefix(API_PREFIX)
    for regex, allow in _allow_table():
        if regex.fullmatch(path):
            return allow
    return None
