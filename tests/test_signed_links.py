"""Signed download links over HTTP: a link needs no key; any change to it, an expired one, one
re-signed with another key, one for deleted or replaced content, is refused; the lifetime is
capped. (Signatures stay out of the access log: tests/system/test_signed_links_server.py.)"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from app.signing import LinkSigner
from tests.support.inprocess import AppServer, start_app
from tests.support.links import CONTENT, fetch, link_of, linked_server


@pytest.fixture
def linked(
    tmp_path: Path, database_url: str
) -> Iterator[tuple[AppServer, httpx.Client, httpx.Client, str, str]]:
    with linked_server(start_app, tmp_path, database_url) as linked:
        yield linked


def assert_refused(r: httpx.Response, what: object) -> None:
    assert r.status_code in (401, 403, 404), (what, r.status_code, r.text)
    assert CONTENT[:16] not in r.content, what


def test_a_link_needs_no_key_and_serves_the_exact_bytes(linked) -> None:
    srv, a, _, aid, _ = linked
    link = link_of(a, aid)
    assert link["method"] == "GET" and link["url"].startswith(
        f"{srv.url}/artifacts/{aid}/download?"
    )
    expires_at = datetime.fromisoformat(link["expires_at"].replace("Z", "+00:00")).timestamp()
    left = time.time() + 3600 - expires_at
    assert -5 < left < 5, link
    got = fetch(srv, link["url"])
    assert got.status_code == 200 and got.content == CONTENT
    head = fetch(srv, link["url"], "HEAD")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(CONTENT))
    with srv.client() as anonymous:
        ranged = anonymous.get(link["url"], headers={"Range": "bytes=0-3"})
    assert ranged.status_code == 206 and ranged.content == CONTENT[:4]
    # the link opens this one download, nothing else
    assert fetch(srv, link["url"].replace("/download?", "?")).status_code == 401


def test_the_lifetime_is_capped_and_the_request_checked(linked) -> None:
    _, a, _, aid, writer = linked
    capped = link_of(a, aid, expires_in=10**9)
    expires = int(dict(parse_qsl(urlsplit(capped["url"]).query))["expires"])
    assert expires <= time.time() + 3600 + 1
    assert a.post(f"/artifacts/{aid}/download-url", params={"expires_in": 0}).status_code == 422
    no_read = a.post(
        f"/artifacts/{aid}/download-url", headers={"Authorization": f"Bearer {writer}"}
    )
    assert no_read.status_code == 403 and "artifact:read" in no_read.json()["detail"]


def test_every_byte_of_a_link_changed_is_refused(linked) -> None:
    srv, a, _, aid, _ = linked
    url = link_of(a, aid)["url"]
    parts = urlsplit(url)
    target = parts.path + "?" + parts.query
    start = target.index(aid)
    with srv.client() as anonymous:  # no key
        for i in range(start, len(target)):
            original = target[i]
            for replacement in {"0" if original != "0" else "1", "A" if original != "A" else "B"}:
                if target[i] in "&=?/":
                    replacement = "x"
                changed = target[:i] + replacement + target[i + 1 :]
                assert_refused(anonymous.get(changed), (i, changed))
        query = dict(parse_qsl(parts.query))
        variants = {
            "truncated sig": [(k, v[:-1] if k == "sig" else v) for k, v in query.items()],
            "no sig": [("expires", query["expires"])],
            "no expires": [("sig", query["sig"])],
            "reordered": [("sig", query["sig"]), ("expires", query["expires"])],
            "swapped values": [("expires", query["sig"]), ("sig", query["expires"])],
            "duplicated": [*query.items(), ("sig", query["sig"])],
            "extra": [*query.items(), ("download", "1")],
            "later expiry": [("expires", str(int(query["expires"]) + 1)), ("sig", query["sig"])],
        }
        for n in range(len(query["sig"])):
            variants[f"sig[:{n}]"] = [("expires", query["expires"]), ("sig", query["sig"][:n])]
        for what, pairs in variants.items():
            assert_refused(anonymous.get(f"{parts.path}?{urlencode(pairs)}"), what)
        wrong_key = LinkSigner(secrets.token_bytes(32), 3600).sign(
            artifact_id=aid,
            tenant="t1",
            content_hash=got_hash(a, aid),
            expires_at=int(query["expires"]),
        )
        r = anonymous.get(f"{parts.path}?{urlencode(wrong_key)}")
        assert r.status_code == 403 and r.json()["code"] == "invalid_link"
        assert anonymous.get(target).status_code == 200  # the original still works


def got_hash(c: httpx.Client, aid: str) -> str:
    return c.get(f"/artifacts/{aid}").json()["content_hash"]


def test_expired_deleted_replaced_and_foreign_links_are_refused(linked) -> None:
    srv, a, b, aid, _ = linked
    short = link_of(a, aid, expires_in=1)
    time.sleep(2.1)
    r = fetch(srv, short["url"])
    assert r.status_code == 403 and r.json()["code"] == "link_expired"

    replaced = link_of(a, aid)
    up = a.post(f"/artifacts/{aid}/upload", content=b"new", headers={"content-type": "text/plain"})
    assert up.status_code == 200
    assert fetch(srv, replaced["url"]).json()["code"] == "invalid_link"
    assert fetch(srv, link_of(a, aid)["url"]).content == b"new"

    # a link for one artifact opens no other, even with the same bytes
    twin = a.post(
        "/artifacts",
        json={"workflow_id": "w", "artifact_type": "text", "title": "t", "content": "new"},
    ).json()["id"]
    url = link_of(a, aid)["url"]
    assert_refused(fetch(srv, url.replace(aid, twin)), "other artifact")
    # another tenant's key makes no link for it, and its link is refused after a delete
    assert b.post(f"/artifacts/{aid}/download-url").status_code == 404
    doomed = link_of(a, twin)["url"]
    assert a.delete(f"/artifacts/{twin}").status_code == 200
    assert fetch(srv, doomed).json()["code"] == "invalid_link"
