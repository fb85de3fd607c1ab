"""Tests that need real processes: `server` here is `artifacts serve` (uvicorn) in a process of
its own on a loopback port, over the same `database_url` parameters as the in-process one. Every
test under tests/system/ is marked `system` (`pytest -m "not system"` is the in-process suite)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import Server, start_server

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
