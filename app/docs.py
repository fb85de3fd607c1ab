"""The contract document and the pages that render it (public routes: no scope)."""

from __future__ import annotations

from pathlib import Path

from litestar import HttpMethod, route

from app import contract
from app.http import Answer

SWAGGER_UI = """<!DOCTYPE html>
<html>
<head>
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link type="text/css" rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
<title>workflow-artifacts - Swagger UI</title>
</head>
<body>
<div id="swagger-ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
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
<script src="https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js"></script>
</body>
</html>
"""

# Swagger UI's OAuth2 redirect page, as the reference serves it (the UI's own helper script).
OAUTH2_REDIRECT = (Path(__file__).parent / "pages" / "oauth2-redirect.html").read_bytes()

GET_HEAD = [HttpMethod.GET, HttpMethod.HEAD]
HTML = "text/html; charset=utf-8"


@route("/schema/openapi.json", http_method=GET_HEAD, sync_to_thread=False)
def openapi_document() -> Answer:
    return Answer(contract.document_json())


@route("/docs", http_method=GET_HEAD, sync_to_thread=False)
def swagger_ui() -> Answer:
    return Answer(SWAGGER_UI.encode(), media_type=HTML)


@route("/redoc", http_method=GET_HEAD, sync_to_thread=False)
def redoc() -> Answer:
    return Answer(REDOC.encode(), media_type=HTML)


@route("/docs/oauth2-redirect", http_method=GET_HEAD, sync_to_thread=False)
def swagger_ui_oauth2_redirect() -> Answer:
    return Answer(OAUTH2_REDIRECT, media_type=HTML)


ROUTES = [openapi_document, swagger_ui, redoc, swagger_ui_oauth2_redirect]
