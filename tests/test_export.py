"""GET /store/workflows/{id}/export against the real app in process, checked through real archives.

One workflow per backend holds every kind of content (JSON-created text, raw and multipart
uploads, invalid UTF-8, an empty file, a few MiB of binary), several phases (a null one, one
whose id is hostile), names that collide (case, folders that sanitise to the same name, a title
crafted to equal another entry's suffixed name) and names that try to escape (`../x`, `a/b`,
`..`, control characters, very long, non-ASCII). Each archive is read from its bytes and
extracted to disk; every member is checked against the manifest, the API record and the
download, and every member name against what an extractor must be able to trust.

Streaming seen from the outside (the server's peak RSS, open files, a client that goes away
mid-archive, a blob missing from disk) is tests/system/test_export_server.py, against a real
server process.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.databases import (
    BACKENDS,
    fresh_database,
)
from tests.support.exports import (
    HOSTILE_TITLES,
    MEDIA,
    Builder,
    Live,
    Workflow,
    build_mixed,
    check_export,
    export,
    read_archive,
    sha,
)
from tests.support.inprocess import start_app


@pytest.fixture(scope="module", params=BACKENDS)
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("export")
    with fresh_database(root, request.param) as url:
        server = start_app(root / "data", database_url=url)
        try:
            yield Live(server, url)
        finally:
            server.stop()


@pytest.fixture(scope="module")
def http(live: Live):
    with live.server.client() as client:
        yield client


@pytest.fixture(scope="module")
def mixed(http: httpx.Client) -> Workflow:
    return build_mixed(http)


# -- the archive and its manifest ----------------------------------------------------------


@pytest.mark.parametrize("scope", ["all", "deliverables"])
@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_export_matches_manifest_api_and_downloads(
    http: httpx.Client, mixed: Workflow, fmt: str, scope: str, tmp_path: Path
) -> None:
    r = export(http, mixed.id, fmt, scope)
    assert r.headers["content-type"] == MEDIA[fmt]
    assert r.headers["content-disposition"] == (
        f"attachment; filename=\"{mixed.id}.{fmt}\"; filename*=UTF-8''{mixed.id}.{fmt}"
    )
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["transfer-encoding"] == "chunked"  # streamed: no length known up front
    assert "content-length" not in r.headers
    manifest = check_export(http, mixed, fmt, scope, r.content, tmp_path)
    ids = {f["artifact_id"] for f in manifest["files"]}
    if scope == "deliverables":
        primaries = {i.id for i in mixed.live() if i.primary}
        assert ids == primaries and len(primaries) == 4
        listed = http.get(
            "/artifacts", params={"workflow_id": mixed.id, "is_primary_deliverable": "true"}
        )
        assert {a["id"] for a in listed.json()} == primaries
        deliverables = http.get(f"/store/workflows/{mixed.id}/deliverables")
        assert {a["id"] for a in deliverables.json()} == primaries
    else:
        assert ids == {i.id for i in mixed.live()}
        assert not ids & {i.id for i in mixed.items if i.deleted}
        listed = http.get("/artifacts", params={"workflow_id": mixed.id, "limit": 200})
        assert {a["id"] for a in listed.json()} == ids
        hostile = {i.id for i in mixed.live() if i.title in HOSTILE_TITLES}
        assert len(hostile) == len(HOSTILE_TITLES)  # each one exported, under a safe name


def test_lineage_in_manifest_is_the_hash_at_link_time(http: httpx.Client, mixed: Workflow) -> None:
    manifest = json.loads(read_archive("zip", export(http, mixed.id, "zip").content)[0][1])
    diagram = next(f for f in manifest["files"] if f["path"] == "design/diagram.png")
    notes = next(f for f in manifest["files"] if f["path"] == "discovery/notes.md")
    linked = {p["id"]: p["content_hash"] for p in diagram["derived_from"]}
    assert linked[notes["artifact_id"]] == sha("# Notes\n\nété 🚀\n".encode())
    assert notes["sha256"] == sha(b"# Notes v2\n") != linked[notes["artifact_id"]]


def test_names_that_collide_after_suffixing_stay_unique(http: httpx.Client) -> None:
    """Folders `a/b` and `a_b` sanitise alike; a title equal to another entry's suffixed name,
    in the phase that sorts first, must not make two members share a path."""
    b = Builder(http, f"wf-collide-{uuid.uuid4().hex[:8]}")
    b.create("first", "a/b", "opens phase a/b first")
    b.create("x.md", "a_b", "one")
    second = b.create("x.md", "a_b", "two")
    crafted = b.create(f"x ({second.id[:8]}).md", "a/b", "crafted")
    b.create("X.MD", "a_b", "three")
    for fmt in ("zip", "tar"):
        members = read_archive(fmt, export(http, b.wf.id, fmt).content)
        names = [n for n, _ in members]
        assert len({n.lower() for n in names}) == len(names), names
        manifest = json.loads(members[0][1])
        paths = {f["artifact_id"]: f["path"] for f in manifest["files"]}
        assert paths[crafted.id] == f"a_b/x ({second.id[:8]}).md"
        assert paths[second.id] != paths[crafted.id]
        assert dict(members)[paths[second.id]] == b"two"
        assert dict(members)[paths[crafted.id]] == b"crafted"


def test_deliverables_scope_without_primaries_is_just_the_manifest(http: httpx.Client) -> None:
    b = Builder(http, f"wf-noprimary-{uuid.uuid4().hex[:8]}")
    b.create("a", "p", "a")
    for fmt in ("zip", "tar"):
        members = read_archive(fmt, export(http, b.wf.id, fmt, "deliverables").content)
        assert [n for n, _ in members] == ["manifest.json"]
        assert json.loads(members[0][1])["files"] == []


def test_bad_format_or_scope_is_422(http: httpx.Client, mixed: Workflow) -> None:
    r = http.get(f"/store/workflows/{mixed.id}/export", params={"format": "rar"})
    assert r.status_code == 422
    assert r.json() == {
        "detail": [
            {
                "type": "literal_error",
                "loc": ["query", "format"],
                "msg": "Input should be 'zip' or 'tar'",
                "input": "rar",
                "ctx": {"expected": "'zip' or 'tar'"},
            }
        ]
    }
    r = http.get(f"/store/workflows/{mixed.id}/export", params={"scope": "some"})
    assert r.status_code == 422
    assert r.json() == {
        "detail": [
            {
                "type": "literal_error",
                "loc": ["query", "scope"],
                "msg": "Input should be 'all' or 'deliverables'",
                "input": "some",
                "ctx": {"expected": "'all' or 'deliverables'"},
            }
        ]
    }
    r = http.get("/store/workflows/no-such-workflow/export", params={"format": "ZIP"})
    assert r.status_code == 422  # validated before the lookup; case matters


def test_unknown_or_emptied_workflow_is_404(http: httpx.Client) -> None:
    for fmt in ("zip", "tar"):
        r = http.get("/store/workflows/no-such-workflow/export", params={"format": fmt})
        assert r.status_code == 404
        assert r.json() == {
            "detail": "Workflow 'no-such-workflow' has no artifacts.",
            "code": "workflow_not_found",
        }
    b = Builder(http, f"wf-emptied-{uuid.uuid4().hex[:8]}")
    b.delete(b.create("only", "p", "x", primary=True))
    for scope in ("all", "deliverables"):
        r = http.get(f"/store/workflows/{b.wf.id}/export", params={"scope": scope})
        assert r.status_code == 404
        assert r.json()["code"] == "workflow_not_found"
    r = http.get("/api/v1/store/workflows/no-such-workflow/export")
    assert r.status_code == 404 and r.json()["code"] == "workflow_not_found"


def test_long_names_keep_their_extension_and_headers_carry_exact_names() -> None:
    from app.workflows.export import _attachment, safe_segment

    name = safe_segment("r" * 300 + ".md", "fallback")
    assert name == "r" * 197 + ".md" and len(name.encode()) == 200
    assert safe_segment("é" * 150, "f") == "é" * 100  # cut on a character boundary
    assert safe_segment("x" * 250 + ".averyveryverylongextension", "f") == ("x" * 200)
    assert _attachment('wf-é"x.zip') == (
        "attachment; filename=\"wf-__x.zip\"; filename*=UTF-8''wf-%C3%A9%22x.zip"
    )


# -- extensions from the content type -------------------------------------------------------

NAMED = "0123abcd-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    ("title", "filename", "content_type", "expected"),
    [
        # the case: a title without an extension takes the type's
        ("Sources", None, "application/json", "Sources.json"),
        ("Sources", None, "text/markdown; charset=utf-8", "Sources.md"),
        ("Sources", None, "TEXT/MARKDOWN", "Sources.md"),
        ("script", None, "text/x-python", "script.py"),
        ("run", None, "text/x-shellscript", "run.sh"),
        ("notes", None, "text/plain", "notes.txt"),
        ("guide", None, "text/x-rst", "guide.rst"),
        ("config", None, "application/yaml", "config.yaml"),
        ("config", None, "text/yaml", "config.yaml"),
        ("config", None, "application/x-yaml", "config.yaml"),
        ("feed", None, "application/xml", "feed.xml"),
        ("events", None, "application/vnd.acme.events+json", "events.json"),
        ("table", None, "text/csv", "table.csv"),
        ("page", None, "text/html", "page.html"),
        ("chart", None, "image/png", "chart.png"),
        ("photo", None, "image/jpeg", "photo.jpg"),
        ("paper", None, "application/pdf", "paper.pdf"),
        ("blob", None, "application/octet-stream", "blob.bin"),
        ("thing", None, "application/x-unknown-to-anyone", "thing"),  # no extension known
        # a title's last dot starts an extension only if a file type is known by it
        ("Sources.json", None, "text/markdown", "Sources.json"),
        ("README.MD", None, "text/markdown", "README.MD"),
        ("main.rs", None, "text/plain", "main.rs"),
        ("bundle.tar.gz", None, "application/octet-stream", "bundle.tar.gz"),
        ("Analysis v1.2", None, "text/markdown", "Analysis v1.2.md"),
        ("Dr. Who", None, "text/plain", "Dr. Who.txt"),
        ("report.", None, "text/markdown", "report.md"),  # trailing dots go first
        # an uploaded filename is a file's name: any short suffix is its extension
        ("t", "data.backup", "application/octet-stream", "data.backup"),
        ("t", "v1.2", "text/plain", "v1.2"),
        ("t", "IMG_0001", "image/jpeg", "IMG_0001.jpg"),
        # safe as before, and the extension added after the name is made safe
        ("../../etc/passwd", None, "text/plain", "_.._etc_passwd.txt"),
        ("a/b", None, "application/json", "a_b.json"),
        ("...", None, "text/markdown", f"{NAMED}.md"),  # no usable title: the id
        ("r" * 300, None, "application/json", "r" * 195 + ".json"),  # 200 bytes, kept
    ],
)
def test_an_entry_without_an_extension_takes_its_types(
    title: str, filename: str | None, content_type: str, expected: str
) -> None:
    from app.workflows.export import entry_name, plan
    from storage.records import Artifact

    artifact = Artifact(
        id=NAMED, workflow_id="wf", phase_id="p", session_id=None, artifact_type="text",
        title=title, content_type=content_type, filename=filename, content_hash="0" * 64,
        size_bytes=0, is_text=True, is_primary_deliverable=False, created_by=None, metadata={},
        created_at=0, updated_at=0, derived_from=(),
    )  # fmt: skip
    assert entry_name(artifact) == expected
    assert len(expected.encode()) <= 200
    assert [e.path for e in plan([(artifact, [])])] == [f"p/{expected}"]


def test_extensions_over_http_stay_unique_and_match_the_manifest(http: httpx.Client) -> None:
    b = Builder(http, f"wf-ext-{uuid.uuid4().hex[:8]}")
    sources = b.create("Sources", "discovery", "{}", content_type="application/json", primary=True)
    again = b.create("Sources", "discovery", "[]", content_type="application/json")
    named = b.create("Sources.json", "discovery", "{}", content_type="application/json")
    notes = b.create("Notes", "discovery", "# n", content_type="text/markdown; charset=utf-8")
    plain = b.create("Sources", "discovery", "plain", content_type="text/plain")
    code = b.create("solver", "build", "print(1)", content_type="text/x-python")
    conf = b.create("settings", "build", "a: 1", content_type="application/yaml", primary=True)
    odd = b.create("blob", "build", "?", content_type="application/x-nobody-knows")
    expected = {
        sources.id: "discovery/Sources.json",
        again.id: f"discovery/Sources ({again.id[:8]}).json",
        named.id: f"discovery/Sources ({named.id[:8]}).json",
        notes.id: "discovery/Notes.md",
        plain.id: "discovery/Sources.txt",
        code.id: "build/solver.py",
        conf.id: "build/settings.yaml",
        odd.id: "build/blob",
    }
    for fmt in ("zip", "tar"):
        for scope in ("all", "deliverables"):
            members = read_archive(fmt, export(http, b.wf.id, fmt, scope).content)
            manifest = json.loads(members[0][1])
            paths = {f["artifact_id"]: f["path"] for f in manifest["files"]}
            wanted = {sources.id, conf.id} if scope == "deliverables" else set(expected)
            assert paths == {i: p for i, p in expected.items() if i in wanted}
            assert [n for n, _ in members[1:]] == [f["path"] for f in manifest["files"]]
            content = dict(members)
            assert content[expected[sources.id]] == b"{}"
            if scope == "all":
                assert content[expected[again.id]] == b"[]"
                assert content[expected[code.id]] == b"print(1)"
