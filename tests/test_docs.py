"""The documentation pages load nothing from another origin: every script and stylesheet that
/docs and /redoc name is served by the app itself, byte for byte the pinned release's file, so the
pages work offline and behind a proxy that blocks CDNs."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import swagger_ui

from app.docs import ASSET_FILES

ROOT = Path(__file__).resolve().parent.parent
SWAGGER_STATIC = Path(swagger_ui.__file__).parent / "static"


def referenced(html: str) -> list[str]:
    return re.findall(r'(?:src|href|spec-url|url)\s*[=:]\s*"([^"]+)"', html)


def test_pages_name_only_their_own_origin(client: httpx.Client) -> None:
    seen = set()
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert (r.status_code, r.headers["content-type"]) == (200, "text/html; charset=utf-8")
        urls = referenced(r.text)
        assert urls, page
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), (page, url)
            got = client.get(url)
            assert got.status_code == 200, (page, url)
            seen.add(url)
    assert seen == {
        "/schema/openapi.json",
        "/docs/assets/swagger-ui.css",
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/redoc.standalone.js",
    }


def test_assets_are_the_pinned_files(client: httpx.Client) -> None:
    expected = {
        "swagger-ui.css": (SWAGGER_STATIC / "swagger-ui.css", "text/css; charset=utf-8"),
        "swagger-ui-bundle.js": (
            SWAGGER_STATIC / "swagger-ui-bundle.js",
            "text/javascript; charset=utf-8",
        ),
        "redoc.standalone.js": (
            ROOT / "app" / "pages" / "redoc" / "redoc.standalone.js",
            "text/javascript; charset=utf-8",
        ),
    }
    assert set(ASSET_FILES) == set(expected)
    for name, (path, media_type) in expected.items():
        r = client.get(f"/docs/assets/{name}")
        assert r.status_code == 200
        assert r.headers["content-type"] == media_type
        assert r.content == path.read_bytes()
        assert len(r.content) > 100_000  # the real bundle, not a placeholder
        etag = r.headers["etag"]
        again = client.get(f"/docs/assets/{name}", headers={"If-None-Match": etag})
        assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
        head = client.head(f"/docs/assets/{name}")
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["content-length"] == str(len(r.content))


def test_only_the_listed_assets_are_served(client: httpx.Client) -> None:
    for name in ("index.css", "swagger-editor.js", "LICENSE", "..%2Fdocs.py", "%2e%2e", "x.js"):
        r = client.get(f"/docs/assets/{name}")
        assert (r.status_code, r.json()) == (404, {"detail": "Not Found"}), name
    assert client.get("/docs/assets/../docs.py").status_code == 404
    assert client.get("/docs/assets/").status_code in (307, 404)
