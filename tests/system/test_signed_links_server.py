"""Signed download links: their signatures stay out of a real server's access log (the links
themselves are tests/test_signed_links.py, in process)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from tests.support.links import fetch, link_of, linked_server
from tests.support.servers import Server, start_server


@pytest.fixture
def linked(
    tmp_path: Path, database_url: str
) -> Iterator[tuple[Server, httpx.Client, httpx.Client, str, str]]:
    with linked_server(start_server, tmp_path, database_url) as linked:
        yield linked


def test_signatures_are_not_logged(linked) -> None:
    srv, a, _, aid, _ = linked
    url = link_of(a, aid)["url"]
    assert fetch(srv, url).status_code == 200
    sig = dict(parse_qsl(urlsplit(url).query))["sig"]
    deadline = time.monotonic() + 5
    while f"/artifacts/{aid}/download" not in srv.log.read_text():
        assert time.monotonic() < deadline, "no access log line for the download"
        time.sleep(0.05)
    log = srv.log.read_text()
    assert sig not in log and "sig=REDACTED" in log
