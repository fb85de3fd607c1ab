"""The contract document and the pages that render it (public routes: no scope)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles
import swagger_ui
from litestar import HttpMethod, Request, route
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

from app import contract
from app.http import Answer, header

PAGES = Path(__file__).parent / "pages"

# Every asset the pages load is served from here (`/docs/assets/...`), so the docs work offline
# and on a network that blocks CDNs: Swagger UI from the pinned swagger-ui-py package (it ships
# swagger-ui-dist), ReDoc's standalone bundle from app/pages/redoc/ (its npm release, with its
# licence; ReDoc has no Python package).
ASSET_FILES = {
    "swagger-ui.css": (Path(swagger_ui.__file__).parent / "static" / "swagger-ui.css", "text/css"),
    "swagger-ui-bundle.js": (
        Path(swagger_ui.__file__).parent / "static" / "swagger-ui-bundle.js",
        "text/javascript",
    ),
    "redoc.standalone.js": (PAGES / "redoc" / "redoc.standalone.js", "text/javascript"),
}

SWAGGER_UI = """<!DOCTYPE html>
<html>
<head>
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link type="text/css" rel="stylesheet" href="/docs/assets/swagger-ui.css">
<title>workflow-artifacts - Swagger UI</title>
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>
SwaggerUIBundle({url: "/schema/openapi.json", dom_id: "#swagger-ui", layout: "BaseLayout",
  deepLinking: true, presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]})
</script>
</body>
</html>
"""  # noqa: E501

REDOC = """<!DOCTYPE html>
<html>
<head>
<title>workflow-artifacts - ReDoc</title>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body { margin: 0; padding: 0; }</style>
</head>
<body>
<redoc spec-url="/schema/openapi.json"></redoc>
<script src="/docs/assets/redoc.standalone.js"></script>
</body>
</html>
"""

# Swagger UI's OAuth2 redirect page, as the reference serves it (the UI's own helper script).
OAUTH2_REDIRECT = (PAGES / "oauth2-redirect.html").read_bytes()

GET_HEAD = [HttpMethod.GET, HttpMethod.HEAD]
HTML = "text/html; charset=utf-8"


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


_assets: dict[str, Asset] = {}


async def load_asset(name: str) -> Asset | None:
    """Read once (without blocking the event loop), then served from memory."""
    if name not in ASSET_FILES:
        return None
    if name not in _assets:
        path, media_type = ASSET_FILES[name]
        async with aiofiles.open(path, "rb") as f:
            body = await f.read()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        _assets[name] = Asset(body, f"{media_type}; charset=utf-8", etag)
    return _assets[name]


@route("/schema/openapi.json", http_method=GET_HEAD, sync_to_thread=False)
def openapi_document() -> Answer:
    return Answer(contract.document_json())


@route("/docs", http_method=GET_HEAD, sync_to_thread=False)
def swagger_ui_page() -> Answer:
    return Answer(SWAGGER_UI.encode(), media_type=HTML)


@route("/redoc", http_method=GET_HEAD, sync_to_thread=False)
def redoc() -> Answer:
    return Answer(REDOC.encode(), media_type=HTML)


@route("/docs/oauth2-redirect", http_method=GET_HEAD, sync_to_thread=False)
def swagger_ui_oauth2_redirect() -> Answer:
    return Answer(OAUTH2_REDIRECT, media_type=HTML)


@route("/docs/assets/{name:str}", http_method=GET_HEAD)
async def docs_asset(name: FromPath[str], request: Request[Any, Any, Any]) -> Answer:
    asset = await load_asset(name)
    if asset is None:
        raise NotFoundException
    headers = {"etag": asset.etag, "cache-control": "public, max-age=86400"}
    if header(request, "if-none-match") == asset.etag:
        return Answer(b"", 304, headers)
    return Answer(asset.body, 200, headers, media_type=asset.media_type)


ROUTES = [openapi_document, swagger_ui_page, redoc, swagger_ui_oauth2_redirect, docs_asset]
