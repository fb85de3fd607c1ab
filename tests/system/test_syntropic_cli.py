"""Syntropic137's `syn` CLI (0.25.4, from ../shared/clients, unchanged) against a real server.

`artifacts list|show|content|create` as a person types them, each both as shipped (the CLI
calls `/api/v1/artifacts…`) and with `SYN_NO_PREFIX=1` (root paths): what it prints, the
requests that reached the server (through a recording proxy), and what the server then holds.
Its commands for Syntropic's other APIs (`workflow`, `health`, `metrics`, …) meet our 404 and
must say so in one line, not crash. One server (SQLite under tmp) and one npm install serve the
whole module.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from tests.support.servers import Server
from tests.support.syntropic import (
    WORKFLOW,
    Seeded,
    SeededWorkflow,
    Syn,
    SynResult,
    install_syn,
    running_api,
    seed_other_workflow,
    seed_workflow,
    start_recording_proxy,
)


@pytest.fixture(scope="session")
def syn_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_syn(tmp_path_factory.mktemp("syn-cli"))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_api(tmp_path_factory.mktemp("syn-api")) as server:
        yield server


@pytest.fixture(scope="module")
def http(api: Server) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


@pytest.fixture(scope="module")
def other(http: httpx.Client) -> Seeded:
    return seed_other_workflow(http)


@pytest.fixture(scope="module")
def wf(http: httpx.Client, other: Seeded) -> SeededWorkflow:
    return seed_workflow(http)


@pytest.fixture(scope="module")
def syn(syn_script: Path, api: Server) -> Iterator[Syn]:
    proxy = start_recording_proxy(api.url)
    try:
        yield Syn(syn_script, proxy)
    finally:
        proxy.stop()


@pytest.fixture(params=[pytest.param(True, id="api-v1"), pytest.param(False, id="root")])
def prefix(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def base(prefix: bool) -> str:
    return "/api/v1" if prefix else ""


# --------------------------------------------------------------------------- what it prints


def shown_time(created_at: str) -> str:
    """The CLI's `formatTimestamp` in UTC: `toLocaleDateString("en-US", {month: "short", day,
    hour, minute: "2-digit", hour12: false})`, whose ICU writes midnight as hour 24."""
    t = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    return f"{t:%b %d}, {t.hour or 24:02d}:{t:%M}"


def table_rows(result: SynResult) -> list[list[str]]:
    """The rows of the `Artifacts` table: ID, Type, Title, Size, Created."""
    lines = result.stdout.splitlines()
    assert lines[0] == "Artifacts", result
    assert re.split(r"\s{2,}", lines[1].strip()) == ["ID", "Type", "Title", "Size", "Created"]
    assert set(lines[2].replace(" ", "")) == {"─"}
    return [re.split(r"\s{2,}", line.strip()) for line in lines[3:]]


def expected_rows(http: httpx.Client, **query: str | int) -> list[list[str]]:
    """The table the server's own list implies (ids cut to 12, sizes as `<n>B`)."""
    r = http.get("/artifacts", params=query)
    assert r.status_code == 200, r.text
    return [
        [
            a["id"][:12],
            a["artifact_type"],
            a["title"],
            f"{a['size_bytes']}B",
            shown_time(a["created_at"]),
        ]
        for a in r.json()
    ]


def list_request(result: SynResult, prefix: bool) -> dict[str, str]:
    """The one request `artifacts list` sent, as its query; checks its path."""
    [request] = result.requests
    method, target = request.split(" ", 1)
    parts = urlsplit(target)
    assert (method, parts.path) == ("GET", f"{base(prefix)}/artifacts"), result
    return dict(parse_qsl(parts.query, keep_blank_values=True))


def shown_artifact(a: Seeded, record: dict[str, object], *, content: bool) -> str:
    lines = [
        f"Artifact: {a.id}",
        f"  Type:    {a.artifact_type}",
        f"  Title:   {a.title}",
        f"  Workflow: {WORKFLOW}",
        f"  Phase:   {a.phase_id}",
        f"  Created: {shown_time(str(record['created_at']))}",
        f"  Size:    {len(a.content.encode()):,} bytes",
    ]
    text = "\n".join(lines) + "\n"
    return text + f"\n{a.content}\n" if content else text


def assert_one_line_error(result: SynResult, message: str) -> None:
    """Exit 1, nothing on stdout, one `Error: …` line on stderr: no stack trace."""
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"Error: {message}\n"), (
        result
    )


# --------------------------------------------------------------------------- artifacts list


def test_list_a_workflow_shows_every_artifact_newest_first(
    syn: Syn, http: httpx.Client, wf: SeededWorkflow, prefix: bool
) -> None:
    result = syn.run("artifacts", "list", "-w", WORKFLOW, prefix=prefix)
    assert (result.returncode, result.stderr) == (0, ""), result
    rows = table_rows(result)
    newest_first = list(reversed(wf.artifacts.values()))
    assert [(r[1], r[2]) for r in rows] == [(a.artifact_type, a.title) for a in newest_first]
    assert [r[0] for r in rows] == [a.id[:12] for a in newest_first]
    assert rows == expected_rows(http, workflow_id=WORKFLOW)
    assert list_request(result, prefix) == {"workflow_id": WORKFLOW, "limit": "50"}


def test_list_without_filters_shows_both_workflows(
    syn: Syn, http: httpx.Client, wf: SeededWorkflow, other: Seeded, prefix: bool
) -> None:
    result = syn.run("artifacts", "list", prefix=prefix)
    assert result.returncode == 0, result
    rows = table_rows(result)
    assert {r[2] for r in rows} >= {a.title for a in wf.artifacts.values()} | {other.title}
    assert rows == expected_rows(http)
    assert list_request(result, prefix) == {"limit": "50"}  # absent options are not sent


def test_list_filters_by_workflow_phase_type_and_limit(
    syn: Syn, http: httpx.Client, wf: SeededWorkflow, other: Seeded, prefix: bool
) -> None:
    args = ["-w", WORKFLOW, "-p", "build", "-t", "image", "--limit", "5"]
    result = syn.run("artifacts", "list", *args, prefix=prefix)
    assert result.returncode == 0, result
    assert [r[2] for r in table_rows(result)] == [wf["diagram"].title]
    assert list_request(result, prefix) == {
        "workflow_id": WORKFLOW,
        "phase_id": "build",
        "artifact_type": "image",
        "limit": "5",
    }

    # A phase across workflows: the other workflow's `research` artifact too.
    result = syn.run("artifacts", "list", "-p", "research", prefix=prefix)
    titles = [r[2] for r in table_rows(result)]
    assert titles == [wf["survey"].title, wf["research"].title, other.title], result

    result = syn.run("artifacts", "list", "-w", WORKFLOW, "-t", "markdown", prefix=prefix)
    assert [r[2] for r in table_rows(result)] == [wf["notes"].title, wf["research"].title]

    # The limit applies after the filters: the two newest of this workflow.
    result = syn.run("artifacts", "list", "-w", WORKFLOW, "--limit", "2", prefix=prefix)
    assert [r[2] for r in table_rows(result)] == [wf["notes"].title, wf["diagram"].title]
    assert table_rows(result) == expected_rows(http, workflow_id=WORKFLOW, limit=2)


def test_list_with_a_type_nobody_has_says_so(syn: Syn, wf: SeededWorkflow, prefix: bool) -> None:
    result = syn.run("artifacts", "list", "-w", WORKFLOW, "-t", "github_pr", prefix=prefix)
    assert (result.returncode, result.stdout, result.stderr) == (0, "No artifacts found.\n", "")
    result = syn.run("artifacts", "list", "-t", "no-such-type", prefix=prefix)
    assert (result.returncode, result.stdout, result.stderr) == (0, "No artifacts found.\n", "")

    # An empty type is no filter (the CLI sends it as `artifact_type=`).
    result = syn.run("artifacts", "list", "-w", WORKFLOW, "-t", "", prefix=prefix)
    assert len(table_rows(result)) == len(wf.artifacts), result
    assert list_request(result, prefix)["artifact_type"] == ""


# --------------------------------------------------------------------------- show and content


def test_show_by_full_id_list_id_and_prefix(
    syn: Syn, http: httpx.Client, wf: SeededWorkflow, prefix: bool
) -> None:
    research = wf["research"]
    record = http.get(f"/artifacts/{research.id}").json()
    listed_id = next(
        r[0]
        for r in table_rows(syn.run("artifacts", "list", "-w", WORKFLOW, prefix=prefix))
        if r[2] == research.title
    )
    assert len(listed_id) == 12
    for ref in (research.id, listed_id, research.id[:8]):
        result = syn.run("artifacts", "show", ref, prefix=prefix)
        assert (result.returncode, result.stderr) == (0, ""), result
        assert result.stdout == shown_artifact(research, record, content=True)
        assert result.requests == (f"GET {base(prefix)}/artifacts/{ref}?include_content=true",)

        result = syn.run("artifacts", "show", ref, "--no-content", prefix=prefix)
        assert (result.returncode, result.stderr) == (0, ""), result
        assert result.stdout == shown_artifact(research, record, content=False)
        assert result.requests == (f"GET {base(prefix)}/artifacts/{ref}?include_content=false",)


def test_show_json_and_code_print_them_verbatim(
    syn: Syn, http: httpx.Client, wf: SeededWorkflow, prefix: bool
) -> None:
    for key in ("survey", "code", "diagram"):
        a = wf[key]
        result = syn.run("artifacts", "show", a.id[:8], prefix=prefix)
        record = http.get(f"/artifacts/{a.id}").json()
        assert result.stdout == shown_artifact(a, record, content=True), result


def test_content_prints_the_exact_text(syn: Syn, wf: SeededWorkflow, prefix: bool) -> None:
    for key in ("research", "survey", "code"):
        a = wf[key]
        for ref in (a.id, a.id[:12], a.id[:8]):
            result = syn.run("artifacts", "content", ref, prefix=prefix)
            assert (result.returncode, result.stderr) == (0, ""), result
            assert result.stdout == a.content + "\n"  # print() adds one newline
            assert result.requests == (f"GET {base(prefix)}/artifacts/{ref}/content",)


def test_show_and_content_of_an_unknown_id_say_not_found(syn: Syn, prefix: bool) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    assert_one_line_error(
        syn.run("artifacts", "show", missing, prefix=prefix),
        f"Get artifact: Artifact '{missing}' was not found.",
    )
    assert_one_line_error(
        syn.run("artifacts", "content", "deadbeef", prefix=prefix),
        "Get artifact content: Artifact 'deadbeef' was not found.",
    )


def test_a_prefix_too_short_says_the_minimum(syn: Syn, wf: SeededWorkflow, prefix: bool) -> None:
    short = wf["research"].id[:7]
    sentence = (
        f"The artifact id {short!r} is too short: give the full id or a unique prefix of at "
        "least 8 characters."
    )
    assert_one_line_error(
        syn.run("artifacts", "show", short, prefix=prefix), f"Get artifact: {sentence}"
    )
    assert_one_line_error(
        syn.run("artifacts", "content", short, prefix=prefix), f"Get artifact content: {sentence}"
    )


# --------------------------------------------------------------------------- create


def test_create_stores_what_it_was_given(syn: Syn, http: httpx.Client, prefix: bool) -> None:
    workflow = f"wf-created-{'api-v1' if prefix else 'root'}"
    text = "# Rollout\n\n- canary on Monday\n- everyone on Thursday\n"
    args = ["-w", workflow, "-t", "plan", "--title", "Rollout plan", "-c", text, "-p", "planning"]
    result = syn.run("artifacts", "create", *args, prefix=prefix)
    assert (result.returncode, result.stderr) == (0, ""), result
    lines = result.stdout.splitlines()
    assert lines[0] == "Created artifact: Rollout plan"
    assert lines[2] == "  Type: plan"
    new_id = lines[1].removeprefix("  ID: ")
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", new_id
    )
    assert len(lines) == 3, result
    assert result.requests == (f"POST {base(prefix)}/artifacts",)

    stored: dict[str, object] = {
        "id": new_id,
        "workflow_id": workflow,
        "phase_id": "planning",
        "session_id": None,
        "artifact_type": "plan",
        "title": "Rollout plan",
        "content": text,
        "content_type": "text/markdown",
        "content_hash": hashlib.sha256(text.encode()).hexdigest(),
        "size_bytes": len(text.encode()),
        "derived_from": [],
        "is_primary_deliverable": False,
    }
    record = http.get(f"/artifacts/{new_id}").json()
    assert {k: record[k] for k in stored} == stored
    assert [a["id"] for a in http.get("/artifacts", params={"workflow_id": workflow}).json()] == [
        new_id
    ]

    # And the CLI reads back what it wrote.
    result = syn.run("artifacts", "content", new_id[:8], prefix=prefix)
    assert result.stdout == text + "\n", result


def test_create_without_a_phase_stores_none(syn: Syn, http: httpx.Client, prefix: bool) -> None:
    workflow = f"wf-created-nophase-{'api-v1' if prefix else 'root'}"
    args = ["-w", workflow, "-t", "Markdown", "--title", "Scratch", "-c", "just text"]
    result = syn.run("artifacts", "create", *args, prefix=prefix)
    assert result.returncode == 0, result
    new_id = result.stdout.splitlines()[1].removeprefix("  ID: ")
    record = http.get(f"/artifacts/{new_id}").json()
    assert (record["phase_id"], record["artifact_type"], record["content"]) == (
        None,
        "markdown",  # the type is case-insensitive on input, stored lowercase
        "just text",
    )


def test_invalid_input_is_a_one_line_error(syn: Syn, http: httpx.Client, prefix: bool) -> None:
    """Our 422s are FastAPI's shape, a list under `detail`; the CLI prints such a list as
    `[object Object]` (a documented limit of the client, the same against Syntropic)."""
    args = ["-w", "wf-bad", "-t", "not-a-type", "--title", "x", "-c", "y"]
    result = syn.run("artifacts", "create", *args, prefix=prefix)
    assert_one_line_error(result, "Create artifact: [object Object]")
    assert http.get("/artifacts", params={"workflow_id": "wf-bad"}).json() == []
    assert_one_line_error(
        syn.run("artifacts", "list", "--limit", "0", prefix=prefix),
        "List artifacts: [object Object]",
    )


# --------------------------------------------------------------------------- Syntropic's other APIs

OTHER_COMMANDS = [
    (("workflow", "list"), "Failed to list workflows: Not Found", "/workflows"),
    (("workflow", "show", WORKFLOW), "Failed to list workflows: Not Found", "/workflows"),
    (
        ("workflow", "export", WORKFLOW),
        "Failed to export workflow: Not Found",
        f"/workflows/{WORKFLOW}/export",
    ),
    (("health",), "Health check: Not Found", "/health"),
    (("metrics", "show"), "Fetch metrics: Not Found", "/metrics"),
    (("metrics", "show", "-w", WORKFLOW), "Fetch metrics: Not Found", "/metrics"),
    (("sessions", "list"), "Failed to list sessions: Not Found", "/sessions"),
    (("execution", "list"), "Failed to list executions: Not Found", "/executions"),
]


@pytest.mark.parametrize(
    ("args", "message", "path"), OTHER_COMMANDS, ids=[" ".join(c[0]) for c in OTHER_COMMANDS]
)
def test_syntropic_commands_meet_our_404_with_one_line(
    syn: Syn,
    wf: SeededWorkflow,
    prefix: bool,
    args: tuple[str, ...],
    message: str,
    path: str,
    tmp_path: Path,
) -> None:
    """Against our server these commands find no Syntropic API: each says `Not Found` and exits
    1, with no stack trace and nothing written (`workflow export` is run in an empty folder)."""
    result = syn.run(
        *args, *(("-o", str(tmp_path / "out")) if "export" in args else ()), prefix=prefix
    )
    assert_one_line_error(result, message)
    assert len(result.requests) == 1, result
    assert urlsplit(result.requests[0].split(" ", 1)[1]).path == f"{base(prefix)}{path}"
    assert list(tmp_path.iterdir()) == []
