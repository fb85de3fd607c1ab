"""What tests/system/test_schemathesis.py found wrong in the server, pinned as plain, fast tests."""

from __future__ import annotations

import httpx
import pytest

PREFIXES = ("", "/api/v1")


def create(client: httpx.Client, **fields: object) -> httpx.Response:
    body = {"workflow_id": "wf", "artifact_type": "text", "title": "t", "content": "x", **fields}
    return client.post("/artifacts", json=body)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_405_allow_names_every_method_of_the_path(client: httpx.Client, prefix: str) -> None:
    artifact_id = create(client).json()["id"]
    for method, path, allow in (
        ("PATCH", f"/artifacts/{artifact_id}", "GET, PUT, DELETE"),  # three routes, one path
        ("OPTIONS", "/artifacts", "GET, POST"),
        ("OPTIONS", f"/artifacts/{artifact_id}/download", "GET, HEAD"),
        ("PUT", f"/artifacts/{artifact_id}/content", "GET"),
        ("OPTIONS", "/imports/crownest", "POST"),  # not the GET of /imports/{import_id}
    ):
        r = client.request(method, prefix + path)
        assert (r.status_code, r.headers["allow"], r.text) == (
            405,
            allow,
            '{"detail":"Method Not Allowed"}',
        ), (method, path)


@pytest.mark.parametrize(
    "content_type", ["0", "text", "text/plain\r\nSet-Cookie: a=1", "text/plain\x7f", "/x", "a/"]
)
def test_content_type_must_be_a_media_type(client: httpx.Client, content_type: str) -> None:
    """It is served back as the download's Content-Type: "0" is malformed there, and a CR/LF
    used to make the stored artifact undownloadable (uvicorn refuses the header)."""
    r = create(client, content_type=content_type)
    assert r.status_code == 422
    assert r.json()["detail"] == [
        {
            "type": "media_type",
            "loc": ["body", "content_type"],
            "msg": "Input should be a media type such as text/markdown",
            "input": content_type,
        }
    ]
    form = {"workflow_id": "wf", "artifact_type": "text", "title": "t", "content_type": "0"}
    r = client.post("/artifacts", data=form, files={"file": ("a.bin", b"x")})
    assert (r.status_code, r.json()["detail"][0]["loc"]) == (422, ["body", "content_type"])
    assert client.get("/artifacts").json() == []


def test_media_types_with_parameters_are_kept(client: httpx.Client) -> None:
    for content_type in ("text/plain;charset=UTF-8", 'application/vnd.x+json; v="2"', "A/B"):
        artifact_id = create(client, content_type=content_type).json()["id"]
        r = client.get(f"/artifacts/{artifact_id}/download")
        assert r.headers["content-type"] == content_type


def test_upload_content_type_must_be_a_media_type(client: httpx.Client) -> None:
    artifact_id = create(client).json()["id"]
    r = client.post(f"/artifacts/{artifact_id}/upload", content=b"y", headers={"content-type": "0"})
    assert (r.status_code, r.json()["code"]) == (415, "unsupported_media_type")
    files = {"file": ("a.bin", b"y", "0")}
    r = client.post(f"/artifacts/{artifact_id}/upload", files=files)
    assert (r.status_code, r.json()["detail"][0]["loc"]) == (422, ["body", "file"])
    assert client.get(f"/artifacts/{artifact_id}/download").content == b"x"


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/artifacts", "created_after"),
        ("/artifacts", "created_before"),
        ("/store/workflows", "active_after"),
        ("/store/workflows", "active_before"),
    ],
)
def test_date_filters_take_iso_8601_not_unix_time(
    client: httpx.Client, path: str, name: str
) -> None:
    for number in ("0.5", "1", "-1", "1700000000"):
        r = client.get(path, params={name: number})
        assert r.status_code == 422, number
        assert r.json()["detail"][0]["type"] == "datetime_parsing"
        assert r.json()["detail"][0]["loc"] == ["query", name]
    assert client.get(path, params={name: "2026-01-01T00:00:00Z"}).status_code == 200


def test_a_content_type_that_cannot_be_a_header_is_refused(client: httpx.Client) -> None:
    """Found by Schemathesis: a non-ASCII parameter was stored, then the download's
    Content-Type header could not be encoded (500)."""
    body = {"workflow_id": "w", "artifact_type": "text", "title": "t", "content": "x"}
    r = client.post("/artifacts", json={**body, "content_type": "text/plain; x=\u00e9\u4e2d"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "media_type"
