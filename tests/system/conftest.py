"""Tests that need real processes: `server` here is `artifacts serve` (uvicorn) in a process of
its own on a loopback port, over the same `database_url` parameters as the in-process one. Every
test under tests/system/ is marked `system` (`pytest -m "not system"` is the in-process suite)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.servers import Server, start_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.system)


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[Server]:
    srv = start_server(tmp_path / "data", database_url=database_url)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium driven by Playwright, one per test module (the tests of the web UI,
    the docs pages and Syntropic's dashboard); skips, saying why, where it is missing."""
    from playwright.sync_api import sync_playwright

    from tests.support.syntropic import CHROMIUM_ARGS, chromium_executable

    executable = chromium_executable()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def srv(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`artifacts serve` on SQLite, one per test module (the client's tests share it); a module
    sets SERVER_ENV for settings of its own."""
    env = getattr(request.module, "SERVER_ENV", None)
    server = start_server(tmp_path_factory.mktemp(request.module.__name__) / "data", env=env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def wf() -> str:
    """A workflow id of this test's own on a shared server."""
    return f"wf-{uuid.uuid4().hex[:10]}"
