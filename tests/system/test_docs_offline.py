"""/docs (Swagger UI) and /redoc render the contract in headless Chromium with every request off
127.0.0.1 refused: the pages need nothing but this server (app/docs.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.support.servers import Server
from tests.support.syntropic import is_loopback, running_api

REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_api(tmp_path_factory.mktemp("docs-api")) as server:
        yield server


def offline_page(browser: Browser, problems: list[str], left_the_host: list[str]) -> Page:
    page = browser.new_context().new_page()

    def route(r: Route) -> None:
        if is_loopback(r.request.url):
            r.continue_()
        else:
            left_the_host.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return page


def test_swagger_ui_renders_offline(browser: Browser, api: Server) -> None:
    problems: list[str] = []
    left: list[str] = []
    page = offline_page(browser, problems, left)
    page.goto(f"{api.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("workflow-artifacts")
    expect(
        page.locator(".opblock-summary-path", has_text="/artifacts/{artifact_id}")
    ).not_to_have_count(0)
    page.wait_for_load_state("networkidle")
    assert (left, problems) == ([], [])


def test_redoc_renders_offline(browser: Browser, api: Server) -> None:
    problems: list[str] = []
    left: list[str] = []
    page = offline_page(browser, problems, left)
    page.goto(f"{api.url}/redoc")
    expect(page.locator("h1", has_text="workflow-artifacts")).to_be_visible()
    expect(page.get_by_text("/store/workflows/{workflow_id}/export").first).to_be_attached()
    page.wait_for_load_state("networkidle")
    # ReDoc's bundle hard-codes one image, its "API docs by Redocly" logo, which it hides when
    # it fails to load; that request alone may try to leave the host.
    assert set(left) <= {REDOCLY_LOGO}
    assert all(p.startswith("Failed to load resource: net::") for p in problems), problems
    assert len(problems) <= len(left)  # Chromium may log the aborted image, or not yet
