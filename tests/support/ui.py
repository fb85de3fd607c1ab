"""A workflow for the web UI's tests (tests/test_ui.py in process, tests/system/test_ui_browser.py
in Chromium), made through the API as a client would: two phases with a primary deliverable
each (a markdown report, JSON data), code, an image, a binary file, lineage three deep, and
artifacts whose title, metadata, file name and markdown try to inject script. Plus a small HTML
reader for what a page holds."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import httpx

WORKFLOW = "research/ui-demo"  # a `/` in the id: the UI names workflows in the query


def make_png(width: int = 48, height: int = 24) -> bytes:
    """A small RGB gradient as a real PNG (zlib and the PNG chunk layout, no imaging library)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, 160)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PNG = make_png()
MARKDOWN = """# Findings

The sources agree on **three** points:

1. keyset pagination
2. content addressing
3. lineage

| source | weight |
|---|---:|
| paper | 0.7 |
"""
JSON_TEXT = '{"sources":[{"title":"paper","weight":0.7}],"count":1}'
CODE = "def main() -> None:\n    print('<b>not bold</b>')\n"

# Each tries to run script or add an element if it reached the page unescaped.
XSS_TITLE = '<img src=x onerror="window.__xss=1;alert(1)"><script>window.__xss=2</script>'
XSS_MARKDOWN = """# Hostile

<script>window.__xss=3;alert(3)</script>

<img src=x onerror="window.__xss=4">

[click](javascript:window.__xss=5) and <a href="javascript:alert(6)">raw link</a>

<div onmouseover="window.__xss=7" id="injected-div">hover</div>

<iframe src="javascript:alert(8)"></iframe>
"""
XSS_METADATA = {"note": "</code></pre><script>window.__xss=9</script>", "<b>key</b>": "x"}
XSS_FILENAME = '"><svg onload="window.__xss=10">.txt'
# An SVG image that tries to run script: shown through an <img>, which runs none of it.
SVG_BYTES = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20" onload="window.__xss=13">'
    b'<script>window.__xss=14;alert(14)</script><rect width="40" height="20" fill="teal"/></svg>'
)
HTML_BYTES = b"<html><body><script>window.__xss=11;alert(11)</script>served inline?</body></html>"


@dataclass
class Seeded:
    workflow: str
    report: str  # markdown, primary deliverable of `discovery`
    data: str  # JSON, derived from report, primary of `analysis`
    code: str  # derived from data
    image: str
    binary: str
    grandchild: str  # derived from code: report -> data -> code -> grandchild
    hostile: list[str] = field(default_factory=list)  # XSS attempts
    html_file: str = ""
    svg_file: str = ""
    ids: dict[str, str] = field(default_factory=dict)


def create(client: httpx.Client, headers: dict[str, str] | None = None, **body: Any) -> str:
    r = client.post("/artifacts", json=body, headers=headers or {})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def upload_new(
    client: httpx.Client,
    fields: dict[str, str],
    filename: str,
    data: bytes,
    content_type: str,
    headers: dict[str, str] | None = None,
) -> str:
    r = client.post(
        "/artifacts",
        data=fields,
        files={"file": (filename, data, content_type)},
        headers=headers or {},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def seed(
    client: httpx.Client, workflow: str = WORKFLOW, headers: dict[str, str] | None = None
) -> Seeded:
    h = headers or {}
    base = {"workflow_id": workflow}
    report = create(
        client, h, **base, phase_id="discovery", session_id="s-1",
        artifact_type="research_summary", title="Findings", content=MARKDOWN,
        is_primary_deliverable=True, metadata={"sources": 3, "model": "m-1"},
    )  # fmt: skip
    create(
        client, h, **base, phase_id="discovery", session_id="s-1", artifact_type="text",
        title="Scratch notes", content="notes", content_type="text/plain",
    )  # fmt: skip
    data = create(
        client, h, **base, phase_id="analysis", session_id="s-2", artifact_type="json",
        title="Sources", content=JSON_TEXT, content_type="application/json",
        derived_from=[report], is_primary_deliverable=True,
    )  # fmt: skip
    code = create(
        client, h, **base, phase_id="analysis", session_id="s-2", artifact_type="code",
        title="main.py", content=CODE, content_type="text/x-python", derived_from=[data],
    )  # fmt: skip
    grandchild = create(
        client, h, **base, phase_id="analysis", artifact_type="text", title="Run log",
        content="ok", content_type="text/plain", derived_from=[code],
    )  # fmt: skip
    fields = {**base, "phase_id": "analysis", "artifact_type": "other"}
    image = upload_new(client, {**fields, "title": "Chart"}, "chart.png", PNG, "image/png", h)
    binary = upload_new(
        client, {**fields, "title": "Blob"}, "blob.bin", bytes(range(256)),
        "application/octet-stream", h,
    )  # fmt: skip
    return Seeded(workflow, report, data, code, image, binary, grandchild)


def seed_hostile(
    client: httpx.Client, seeded: Seeded, headers: dict[str, str] | None = None
) -> None:
    """Artifacts whose every user-written field tries to inject script, into `seeded`'s
    workflow (phase `hostile`)."""
    h = headers or {}
    base = {"workflow_id": seeded.workflow, "phase_id": "hostile<script>alert(0)</script>"}
    seeded.hostile.append(
        create(
            client, h, **base, artifact_type="markdown", title=XSS_TITLE, content=XSS_MARKDOWN,
            metadata=XSS_METADATA, session_id='"><script>window.__xss=12</script>',
            derived_from=[seeded.report],
        )
    )
    seeded.hostile.append(
        upload_new(
            client,
            {**base, "artifact_type": "other", "title": "file " + XSS_TITLE,
             "metadata": json.dumps(XSS_METADATA)},
            XSS_FILENAME, b"plain text", "text/plain", h,
        )
    )
    seeded.html_file = upload_new(
        client,
        {**base, "artifact_type": "other", "title": "An HTML file"},
        "page.html", HTML_BYTES, "text/html", h,
    )  # fmt: skip
    seeded.hostile.append(seeded.html_file)
    seeded.svg_file = upload_new(
        client,
        {**base, "artifact_type": "other", "title": "A scripted SVG"},
        "drawing.svg", SVG_BYTES, "image/svg+xml", h,
    )  # fmt: skip
    seeded.hostile.append(seeded.svg_file)


class Page(HTMLParser):
    """What a page holds: every element (tag, attributes) in order, and its text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text_parts: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text_parts.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.text_parts).split())

    def tags(self, name: str) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.elements if tag == name]

    def script_problems(self) -> list[str]:
        """Anything that would run script or load from elsewhere: a <script> that is not our
        one file, an on* attribute, a javascript: URL, an iframe/object/embed, a style."""
        found = []
        for tag, attrs in self.elements:
            if tag == "script" and attrs.get("src") != "/ui/static/ui.js":
                found.append(f"<script {attrs}>")
            if tag in ("iframe", "object", "embed", "style", "base", "meta") and not (
                tag == "meta" and set(attrs) <= {"charset", "name", "content"}
            ):
                found.append(f"<{tag} {attrs}>")
            for name, value in attrs.items():
                if name.startswith("on") or name == "style":
                    found.append(f"<{tag} {name}={value!r}>")
                if name in ("href", "src", "action") and (value or "").strip().lower().startswith(
                    ("javascript:", "data:text", "vbscript:")
                ):
                    found.append(f"<{tag} {name}={value!r}>")
        return found
