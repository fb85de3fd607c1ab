"""The web UI (/ui/) in Debian's Chromium, headless, against real `artifacts serve` processes:
what a person sees over a seeded workflow (headings, the primary marker, rendered markdown, an
inline image, the lineage graph's nodes), XSS attempts that must not run, sign-in and sign-out,
another project's artifacts out of reach, and a workflow page that shows a new artifact without
a reload. Every page is also checked for console errors (a CSP violation is one).

Screenshots of each page are saved for a person to look at: in $ARTIFACTS_UI_SCREENSHOTS, else
tests/system/.screenshots/ (ignored by git); the run prints where.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    expect,
)

from storage.apikeys import ApiKeys
from storage.db.engine import Database, sqlite_url
from tests.support.servers import Server, start_server
from tests.support.ui import PNG, XSS_TITLE, Seeded, seed, seed_hostile

expect.set_options(timeout=20_000)  # a loaded 2-core machine
HERE = Path(__file__).resolve().parent
SHOTS = Path(os.environ.get("ARTIFACTS_UI_SCREENSHOTS") or HERE / ".screenshots")


def ui_url(server: Server, path: str) -> str:
    return server.url + path


def workflow_path(workflow: str) -> str:
    return "/ui/workflow?" + str(httpx.QueryParams(id=workflow))


@pytest.fixture(scope="module")
def shots(request: pytest.FixtureRequest) -> Iterator[Path]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield SHOTS
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    saved = sorted(p.name for p in SHOTS.glob("*.png"))
    if reporter is not None:
        reporter.write_line(f"web UI screenshots ({len(saved)}) saved in {SHOTS}")


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Seeded]]:
    srv = start_server(tmp_path_factory.mktemp("ui-open") / "data")
    try:
        with srv.client() as c:
            s = seed(c)
            seed_hostile(c, s)
        yield srv, s
    finally:
        srv.stop()


@dataclass
class Tab:
    page: Page
    context: BrowserContext
    problems: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def shot(self, directory: Path, name: str) -> None:
        self.page.screenshot(path=str(directory / f"{name}.png"), full_page=True)


def new_tab(browser: Browser) -> Tab:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    tab = Tab(page, context)

    def console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            tab.problems.append(f"{message.type}: {message.text}")

    def dialog(d: object) -> None:
        tab.dialogs.append(getattr(d, "message", "?"))
        d.dismiss()  # type: ignore[attr-defined]

    page.on("console", console)
    page.on("pageerror", lambda exc: tab.problems.append(f"pageerror: {exc}"))
    page.on("dialog", dialog)
    # nothing may leave the server's origin
    page.route(
        re.compile(r"^(?!http://127\.0\.0\.1:\d+/).*"),
        lambda route: (tab.problems.append(f"off-origin request {route.request.url}"),
                       route.abort()),
    )  # fmt: skip
    return tab


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    t = new_tab(browser)
    try:
        yield t
    finally:
        t.context.close()


def title(tab: Tab) -> Locator:
    """The page's own heading (a rendered markdown document may have an h1 of its own)."""
    return tab.page.locator("main > h1")


def expect_clean(tab: Tab) -> None:
    assert tab.dialogs == [], tab.dialogs
    assert tab.problems == [], tab.problems
    assert tab.page.evaluate("window.__xss") is None


# -- what a person sees --------------------------------------------------------------------------


def test_workflows_page(tab: Tab, open_server: tuple[Server, Seeded], shots: Path) -> None:
    srv, s = open_server
    tab.page.goto(ui_url(srv, "/ui/"))
    expect(title(tab)).to_have_text("Workflows")
    row = tab.page.get_by_role("row").filter(has_text=s.workflow)
    expect(row.get_by_role("cell").first).to_have_text("11")  # artifacts
    expect(row).to_contain_text("discovery")
    expect(tab.page.get_by_label("Filter by workflow id")).to_be_visible()
    tab.shot(shots, "01-workflows")
    row.get_by_role("link", name=s.workflow).click()
    expect(title(tab)).to_have_text(f"Workflow {s.workflow}")
    expect_clean(tab)


def test_workflow_page_marks_each_primary_first(
    tab: Tab, open_server: tuple[Server, Seeded], shots: Path
) -> None:
    srv, s = open_server
    tab.page.goto(ui_url(srv, workflow_path(s.workflow)))
    headings = tab.page.get_by_role("heading", level=2).all_inner_texts()
    phases = [h for h in headings if h.startswith("Phase: ")]
    assert phases[:2] == ["Phase: discovery", "Phase: analysis"], headings
    for phase, title in (("discovery", "Findings"), ("analysis", "Sources")):
        section = tab.page.locator("section.phase").filter(
            has=tab.page.get_by_role("heading", name=f"Phase: {phase}")
        )
        card = section.locator(".primary-card")
        expect(card).to_contain_text("★ Primary deliverable")
        expect(card.get_by_role("link")).to_have_text(title)
        # the card comes before the phase's table
        box_card, box_table = card.bounding_box(), section.locator("table").bounding_box()
        assert box_card and box_table and box_card["y"] < box_table["y"]
        expect(section.locator("tr.is-primary")).to_contain_text(title)
    expect(tab.page.get_by_role("link", name="zip, all artifacts")).to_be_visible()
    tab.shot(shots, "02-workflow")
    with tab.page.expect_download() as download:
        tab.page.get_by_role("link", name="zip, deliverables").click()
    assert download.value.suggested_filename == "research_ui-demo.zip"
    expect_clean(tab)


def test_markdown_artifact_with_hash_copy_and_lineage_graph(
    tab: Tab, open_server: tuple[Server, Seeded], shots: Path
) -> None:
    srv, s = open_server
    tab.context.grant_permissions(["clipboard-read", "clipboard-write"])
    tab.page.goto(ui_url(srv, f"/ui/artifacts/{s.data}"))  # the middle of the chain
    expect(title(tab)).to_have_text("Sources")
    expect(tab.page.locator("pre.json")).to_contain_text('"title": "paper"')
    graph = tab.page.locator("svg.lineage")
    expect(graph).to_be_visible()
    nodes = graph.locator("g.node")
    ids = [nodes.nth(i).get_attribute("data-id") for i in range(nodes.count())]
    # two levels up (the report) and down (code, then its run log)
    assert set(ids) == {s.report, s.data, s.code, s.grandchild}, ids
    expect(graph.locator("g.node.root")).to_contain_text("Sources")
    tab.shot(shots, "03-artifact-json-lineage")
    # a node is a link: to the report, rendered markdown
    graph.locator("a.node-link").filter(has_text="Findings").click()
    expect(title(tab)).to_have_text("Findings")
    article = tab.page.get_by_role("article", name="Rendered markdown")
    expect(article.get_by_role("heading", name="Findings")).to_be_visible()
    expect(article.locator("strong")).to_have_text("three")
    expect(article.get_by_role("table")).to_contain_text("paper")
    copy = tab.page.get_by_role("button", name="Copy the SHA-256 hash")
    copy.click()
    expect(copy).to_have_text("Copied")
    digest = tab.page.locator("#hash").inner_text()
    assert tab.page.evaluate("navigator.clipboard.readText()") == digest
    tab.shot(shots, "04-artifact-markdown")
    expect_clean(tab)


def test_image_inline_and_code_as_text(
    tab: Tab, open_server: tuple[Server, Seeded], shots: Path
) -> None:
    srv, s = open_server
    tab.page.goto(ui_url(srv, f"/ui/artifacts/{s.image}"))
    image = tab.page.get_by_role("img", name="Chart")
    expect(image).to_be_visible()
    tab.page.wait_for_function("document.querySelector('img.artifact-image').naturalWidth > 0")
    assert image.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [48, 24]
    tab.shot(shots, "05-artifact-image")
    with tab.page.expect_download() as download:
        tab.page.get_by_role("link", name="Download", exact=True).click()
    assert Path(download.value.path()).read_bytes() == PNG
    tab.page.goto(ui_url(srv, f"/ui/artifacts/{s.code}"))
    expect(tab.page.locator("pre.code")).to_contain_text("print('<b>not bold</b>')")
    tab.page.goto(ui_url(srv, f"/ui/artifacts/{s.binary}"))
    expect(tab.page.get_by_role("link", name=re.compile("Download it"))).to_be_visible()
    expect_clean(tab)


def test_keyboard_reaches_the_content(tab: Tab, open_server: tuple[Server, Seeded]) -> None:
    srv, s = open_server
    tab.page.goto(ui_url(srv, "/ui/"))
    tab.page.keyboard.press("Tab")
    assert tab.page.evaluate("document.activeElement.textContent") == "Skip to content"
    tab.page.keyboard.press("Enter")
    assert tab.page.evaluate("document.activeElement.id") == "main"
    for _ in range(12):  # on to the first workflow's link, through the filter form
        tab.page.keyboard.press("Tab")
        if tab.page.evaluate("document.activeElement.textContent") == s.workflow:
            break
    else:
        raise AssertionError("the workflow's link is not reachable by Tab")
    tab.page.keyboard.press("Enter")
    expect(title(tab)).to_have_text(f"Workflow {s.workflow}")
    expect_clean(tab)


# -- safe by construction ------------------------------------------------------------------------


def test_xss_attempts_do_not_run(
    tab: Tab, open_server: tuple[Server, Seeded], shots: Path
) -> None:
    srv, s = open_server
    pages = [
        workflow_path(s.workflow),
        f"/ui/artifacts/{s.report}",
        *(f"/ui/artifacts/{a}" for a in s.hostile),
    ]
    for number, path in enumerate(pages):
        tab.page.goto(ui_url(srv, path))
        tab.page.mouse.move(300, 400)
        tab.page.mouse.move(400, 600)
        assert tab.page.locator("#injected-div").count() == 0, path
        assert tab.page.locator("main script, main iframe, main svg[onload]").count() == 0, path
        tab.shot(shots, f"06-hostile-{number}")
    tab.page.goto(ui_url(srv, f"/ui/artifacts/{s.hostile[0]}"))
    expect(title(tab)).to_have_text(XSS_TITLE)  # as text
    expect(tab.page.get_by_role("article")).to_contain_text("<script>window.__xss=3")
    # an SVG with scripts: drawn through <img>, its scripts never run
    tab.page.goto(ui_url(srv, f"/ui/artifacts/{s.svg_file}"))
    tab.page.wait_for_function("document.querySelector('img.artifact-image').naturalWidth > 0")
    assert tab.page.locator("img.artifact-image").evaluate("i => i.naturalWidth") == 40
    # an uploaded HTML file: shown as text, and its download is an attachment, never a page
    tab.page.goto(ui_url(srv, f"/ui/artifacts/{s.html_file}"))
    expect(tab.page.locator("pre.code")).to_contain_text("<script>window.__xss=11")
    with tab.page.expect_download():
        tab.page.get_by_role("link", name="Download", exact=True).click()
    expect_clean(tab)


# -- keys: sign-in, projects, the live page -------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, dict[str, str], Seeded, Seeded]]:
    data = tmp_path_factory.mktemp("ui-keyed") / "data"
    srv = start_server(data, env={"ARTIFACTS_RATE_LIMIT": ""})

    async def make() -> dict[str, str]:
        db = Database(sqlite_url(data / "artifacts.db"))
        try:
            keys = ApiKeys(db)
            fleeting, fleeting_secret = await keys.create("team-a", ["artifact:read"])
            return {
                "fleeting": fleeting_secret,  # revoked by a test
                "fleeting_id": fleeting.id,
                "mine": (await keys.create("team-a", ["artifact:read"]))[1],
                "writer": (await keys.create("team-a", ["admin"]))[1],
                "theirs": (await keys.create("team-b", ["admin"]))[1],
            }
        finally:
            await db.dispose()

    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Playwright's loop runs here
            keys = pool.submit(asyncio.run, make()).result()
        with srv.client() as c:
            deadline = time.monotonic() + 10  # the server sees the first key within a second
            while c.get("/artifacts").status_code != 401 and time.monotonic() < deadline:
                time.sleep(0.1)
            mine = seed(c, "team-a/report", {"Authorization": f"Bearer {keys['writer']}"})
            theirs = seed(c, "team-b/secret", {"Authorization": f"Bearer {keys['theirs']}"})
        yield srv, keys, mine, theirs
    finally:
        srv.stop()


def sign_in(tab: Tab, srv: Server, key: str) -> None:
    tab.page.goto(ui_url(srv, "/ui/"))
    expect(tab.page).to_have_url(ui_url(srv, "/ui/sign-in"))
    tab.page.get_by_label("API key").fill(key)
    tab.page.get_by_role("button", name="Sign in").click()
    expect(tab.page).to_have_url(ui_url(srv, "/ui/"))


def test_sign_in_sees_only_the_keys_project_and_sign_out_ends_it(
    tab: Tab, keyed_server: tuple[Server, dict[str, str], Seeded, Seeded], shots: Path
) -> None:
    srv, keys, mine, theirs = keyed_server
    tab.page.goto(ui_url(srv, "/ui/"))
    expect(title(tab)).to_have_text("Sign in")
    tab.page.get_by_label("API key").fill("wfa_not-a-key")
    tab.page.get_by_role("button", name="Sign in").click()
    expect(tab.page.get_by_role("alert")).to_contain_text("unknown, revoked or expired")
    tab.shot(shots, "07-sign-in-refused")
    tab.problems.clear()  # the refused sign-in's 401 is logged by the browser
    sign_in(tab, srv, keys["mine"])
    expect(tab.page.get_by_text("Project team-a")).to_be_visible()
    expect(tab.page.get_by_role("link", name=mine.workflow)).to_be_visible()
    expect(tab.page.get_by_role("link", name=theirs.workflow)).to_have_count(0)
    tab.shot(shots, "08-signed-in")
    cookie = next(c for c in tab.context.cookies() if c["name"] == "wfa_ui")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert cookie["expires"] > 0
    assert "wfa_ui" not in tab.page.evaluate("document.cookie")  # HttpOnly: no script reads it
    tab.page.goto(ui_url(srv, f"/ui/artifacts/{mine.image}"))
    tab.page.wait_for_function("document.querySelector('img.artifact-image').naturalWidth > 0")
    for unreachable in (f"/ui/artifacts/{theirs.report}", workflow_path(theirs.workflow)):
        response = tab.page.goto(ui_url(srv, unreachable))
        assert response is not None and response.status == 404
        expect(title(tab)).to_contain_text("not found")
    tab.problems.clear()  # the 404s
    tab.page.goto(ui_url(srv, "/ui/"))
    tab.page.get_by_role("button", name="Sign out").click()
    expect(tab.page).to_have_url(ui_url(srv, "/ui/sign-in"))
    assert not [c for c in tab.context.cookies() if c["name"] == "wfa_ui"]
    tab.page.goto(ui_url(srv, f"/ui/artifacts/{mine.report}"))
    expect(tab.page).to_have_url(ui_url(srv, "/ui/sign-in"))
    expect_clean(tab)


def test_a_new_artifact_appears_on_an_open_workflow_page(
    tab: Tab, keyed_server: tuple[Server, dict[str, str], Seeded, Seeded], shots: Path
) -> None:
    srv, keys, mine, _ = keyed_server
    sign_in(tab, srv, keys["mine"])
    tab.page.goto(ui_url(srv, workflow_path(mine.workflow)))
    expect(tab.page.locator("#live-status")).to_contain_text("Live")
    tab.page.evaluate("window.__notReloaded = true")
    with srv.client() as c:
        r = c.post(
            "/artifacts",
            json={"workflow_id": mine.workflow, "phase_id": "review", "artifact_type": "plan",
                  "title": "Arrived live", "content": "# Late", "is_primary_deliverable": True},
            headers={"Authorization": f"Bearer {keys['writer']}"},
        )  # fmt: skip
        assert r.status_code == 201, r.text
    section = tab.page.locator("section.phase").filter(
        has=tab.page.get_by_role("heading", name="Phase: review")
    )
    expect(section.locator(".primary-card")).to_contain_text("Arrived live")
    expect(tab.page.locator("#live-status")).to_contain_text("Updated")
    assert tab.page.evaluate("window.__notReloaded") is True  # the same document: no reload
    tab.shot(shots, "09-live-update")
    expect_clean(tab)


def test_the_live_update_stops_and_says_so_when_the_key_is_revoked(
    tab: Tab, keyed_server: tuple[Server, dict[str, str], Seeded, Seeded], shots: Path
) -> None:
    """Revoking the key of an open page's session: the live feed's next piece is a
    `signed-out` event instead, and the page stops updating and says how to get back in."""
    srv, keys, mine, _ = keyed_server
    sign_in(tab, srv, keys["fleeting"])
    tab.page.goto(ui_url(srv, workflow_path(mine.workflow)))
    status = tab.page.locator("#live-status")
    expect(status).to_contain_text("Live")

    async def revoke() -> None:
        db = Database(sqlite_url(srv.data_dir / "artifacts.db"))
        try:
            await ApiKeys(db).revoke(keys["fleeting_id"])
        finally:
            await db.dispose()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Playwright's loop runs here
        pool.submit(asyncio.run, revoke()).result()
    time.sleep(1.2)  # the feed looks the key up again at most once a second
    with srv.client() as c:
        r = c.post(
            "/artifacts",
            json={"workflow_id": mine.workflow, "artifact_type": "text",
                  "title": "After revocation", "content": "late"},
            headers={"Authorization": f"Bearer {keys['writer']}"},
        )  # fmt: skip
        assert r.status_code == 201, r.text
    expect(status).to_contain_text("Signed out — sign in again.")
    expect(status.get_by_role("link", name="sign in again")).to_have_attribute(
        "href", "/ui/sign-in"
    )
    tab.page.wait_for_timeout(3000)  # past the feed's retry: nothing reconnects, nothing updates
    expect(status).to_contain_text("Signed out")
    expect(tab.page.get_by_text("After revocation")).to_have_count(0)
    tab.shot(shots, "10-live-signed-out")
    expect_clean(tab)


CONTRAST_JS = """
() => {
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length >= 3 && (c.length < 4 || c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const worst = [];
  for (const el of document.querySelectorAll("main *, header *")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || el.closest("svg") || !el.getClientRects().length) continue;
    const a = lum(rgb(getComputedStyle(el).color)), b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const what = el.tagName + " " + el.textContent.trim().slice(0, 30);
    if (ratio < 4.5) worst.push(what + " " + ratio.toFixed(2));
  }
  return worst;
}
"""


def test_text_contrast_is_readable(tab: Tab, open_server: tuple[Server, Seeded]) -> None:
    """Every piece of text on each page has at least 4.5:1 contrast with its background
    (WCAG AA for body text), as the browser computes the colours."""
    srv, s = open_server
    for path in ("/ui/", workflow_path(s.workflow), f"/ui/artifacts/{s.report}", "/ui/sign-in"):
        tab.page.goto(ui_url(srv, path))
        assert tab.page.evaluate(CONTRAST_JS) == [], path
    expect_clean(tab)
