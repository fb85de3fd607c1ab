"""Syntropic's own clients (its `syn` CLI and dashboard) call Syntropic's other APIs on the same
host: `/workflows?page=&page_size=`, `/events`, `/sessions/{id}`, `/sse/activity`, … Those clients
handle a 404 gracefully and break on an answer of another shape, so none of this service's routes
sits on those paths: every one of them answers 404 here, at `/` and under `/api/v1`, with or
without a key. Our own workflow views and change feed live under `/store/`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.inprocess import start_app
from tests.support.keys import bearer, make_keys

# The path families Syntropic's API owns, with a request a client of it really sends.
SYNTROPIC_PATHS = (
    "/workflows?page=1&page_size=20",
    "/workflows/wf-1",
    "/workflows/wf-1/history",
    "/workflows/wf-1/export",
    "/events",
    "/events/recent",
    "/sessions/s-1",
    "/executions?limit=20",
    "/metrics",
    "/insights/overview",
    "/sse/activity",
    "/costs/summary",
    "/conversations/c-1",
    "/observability/traces",
    "/organizations",
    "/repos",
    "/systems",
    "/github/installations",
    "/triggers",
    "/webhooks/github",
    "/health",
)


@pytest.fixture
def keyed(tmp_path: Path, database_url: str) -> Iterator[tuple[httpx.Client, str]]:
    admin = make_keys(database_url).admin
    srv = start_app(tmp_path / "data", database_url=database_url)
    try:
        with srv.client() as c:
            yield c, admin
    finally:
        srv.stop()


@pytest.mark.parametrize("prefix", ["", "/api/v1"])
def test_syntropic_paths_answer_404_in_open_mode(client: httpx.Client, prefix: str) -> None:
    client.post(
        "/artifacts",
        json={"workflow_id": "wf-1", "artifact_type": "text", "title": "t", "content": "x"},
    )
    for path in SYNTROPIC_PATHS:
        for method in ("GET", "POST"):
            r = client.request(method, prefix + path)
            assert (r.status_code, r.json()) == (404, {"detail": "Not Found"}), (method, path)


@pytest.mark.parametrize("prefix", ["", "/api/v1"])
def test_syntropic_paths_answer_404_with_and_without_a_key(
    keyed: tuple[httpx.Client, str], prefix: str
) -> None:
    c, admin = keyed
    for path in SYNTROPIC_PATHS:
        for headers in ({}, bearer(admin)):
            r = c.get(prefix + path, headers=headers)
            assert (r.status_code, r.json()) == (404, {"detail": "Not Found"}), path


@pytest.mark.parametrize("prefix", ["", "/api/v1"])
def test_our_views_live_under_store(client: httpx.Client, prefix: str) -> None:
    client.post(
        "/artifacts",
        json={"workflow_id": "wf-1", "artifact_type": "text", "title": "t", "content": "x"},
    )
    [summary] = client.get(f"{prefix}/store/workflows").json()
    assert (summary["workflow_id"], summary["artifact_count"]) == ("wf-1", 1)
    assert client.get(f"{prefix}/store/workflows/wf-1").json()["workflow_id"] == "wf-1"
    r = client.get(f"{prefix}/store/events", headers={"Accept": "application/json"})
    assert [e["type"] for e in r.json()["events"]] == ["artifact.created"]
    r = client.get(f"{prefix}/store/workflows/wf-1/export", params={"format": "tar"})
    assert (r.status_code, r.headers["content-type"]) == (200, "application/x-tar")
