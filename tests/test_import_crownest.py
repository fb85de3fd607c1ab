"""The CrowNest importer (issue 5) against tests/support/crownest.py, over real HTTP on loopback.

CrowNestImporter with a real CrowNestClient, a real database (SQLite file or a fresh PostgreSQL
database) and a real blob directory; and the import routes of the real app in process, with
CROWNEST_API_KEY / ARTIFACTS_CROWNEST_BASE_URL pointing at the fake. A server killed with SIGKILL
mid-job and the `artifacts import crownest` CLI: tests/system/test_import_crownest_process.py.
Every stored artifact is compared with the fake's own bytes and record.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

from storage.artifacts import ArtifactService
from storage.imports import Item
from tests.support.crownest import (  # noqa: F401  (crownest_fake is a fixture)
    FORBIDDEN_API_KEY,
    Artifact,
    FakeCrowNest,
    FakeState,
    Fault,
    RecordedRequest,
    crownest_fake,
)
from tests.support.databases import count_rows
from tests.support.imports import (
    AUTH,
    DRY,
    MAPPING,
    PERSISTENT,
    TRANSIENT,
    WF,
    MiB,
    Recorded,
    assert_imported,
    blob_files,
    closed_port,
    crownest_rows,
    finished,
    hits,
    make_importer,
    not_crownest,
    poll,
    rows_of,
    run_import,
    server_env,
    sha,
    staging,
    tally,
)
from tests.support.inprocess import start_app

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fake(crownest_fake: FakeCrowNest) -> FakeCrowNest:  # noqa: F811
    return crownest_fake


@pytest.mark.anyio
async def test_sandbox_across_pages_imports_exactly_the_live_artifacts(
    service: ArtifactService, fake: FakeCrowNest, blob_dir: Path
) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    special: dict[str, tuple[str, str]] = {}
    for i, (name, ctype, want_ct, want_type) in enumerate(MAPPING):
        up = st.add_artifact(
            sbx.id,
            f"{name} #{i}\n".encode() * (i + 1),
            name=name,
            content_type=ctype,
            source_path=f"/workspace/out/{i}/{name}",
            retention_expires_at="2026-09-01T00:00:00.000Z" if i % 2 else None,
        )
        special[up.id] = (want_ct, want_type)
    st.add_artifacts(sbx.id, 240, kind="mixed")  # 60 of them deleted upstream
    ups = list(st.artifacts.values())
    live = {a.id: a for a in ups if a.deleted_at is None}
    deleted = {a.id: a for a in ups if a.deleted_at is not None}
    data = {a.id: a.data for a in live.values()}
    assert (len(ups), len(live), len(deleted)) == (251, 191, 60)

    importer = make_importer(service, fake, page_size=100)
    job, items = await run_import(importer, sbx.id, phase_id="ph-1", session_id="s-1")

    assert (job.status, job.error, job.finished_at is not None) == ("succeeded", None, True)
    assert job.counts == tally(imported=191, skipped=60)
    assert job.bytes == sum(len(d) for d in data.values())
    lists = hits(st, "list", sbx.id)
    assert [r.params.get("limit") for r in lists] == [["100"]] * 3  # 100 + 100 + 51
    assert [("cursor" in r.params) for r in lists] == [False, True, True]
    assert set(items) == set(live) | set(deleted)
    for up in deleted.values():
        assert items[up.id] == Item(
            up.id, up.name, "skipped", f"deleted upstream at {up.deleted_at}", None, None
        )
    downloaded = [r.path.split("/")[3] for r in hits(st, "download")]
    assert sorted(downloaded) == sorted(live)  # each live one once, by the SDK's own route
    assert hits(st, "download_url") == []
    for up in live.values():
        assert up.data is not None
        if up.id in special:
            content_type, artifact_type = special[up.id]
        else:
            assert up.content_type in ("text/plain", "application/octet-stream", None)
            content_type, artifact_type = up.content_type or "application/octet-stream", "other"
        await assert_imported(
            service,
            up,
            data[up.id],
            items[up.id],
            content_type=content_type,
            artifact_type=artifact_type,
            phase_id="ph-1",
            session_id="s-1",
        )
    rows = await crownest_rows(service)
    assert sorted(rows) == sorted(live) and all(len(ids) == 1 for ids in rows.values())
    assert blob_files(blob_dir) == {sha(d) for d in data.values()}
    assert staging(blob_dir) == []
    for i, (name, *_rest) in enumerate(MAPPING):  # retention kept where CrowNest gave it
        up = next(a for a in live.values() if a.name == name)
        a = await service.find_by_source("crownest", up.id)
        assert a is not None
        assert a.metadata["crownest"]["retentionExpiresAt"] == (
            "2026-09-01T00:00:00.000Z" if i % 2 else None
        )

    # A second run creates nothing, downloads nothing and reports every live one unchanged.
    downloads = len(hits(st, "download"))
    job2, items2 = await run_import(importer, sbx.id, phase_id="ph-1", session_id="s-1")
    assert (job2.status, job2.counts, job2.bytes) == (
        "succeeded",
        tally(unchanged=191, skipped=60),
        0,
    )
    for up_id, item in items2.items():
        if up_id in live:
            assert (item.status, item.artifact_id) == ("unchanged", items[up_id].artifact_id)
    assert len(hits(st, "download")) == downloads
    assert await crownest_rows(service) == rows


@pytest.mark.anyio
async def test_artifact_type_option_overrides_the_extension(
    service: ArtifactService, fake: FakeCrowNest
) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    ups = [st.add_artifact(sbx.id, f"x{n}", name=n) for n in ("a.md", "b.py", "c.bin")]
    job, items = await run_import(
        make_importer(service, fake), sbx.id, artifact_type="documentation"
    )
    assert (job.status, job.counts) == ("succeeded", tally(imported=3))
    for up in ups:
        assert up.data is not None
        await assert_imported(
            service,
            up,
            up.data,
            items[up.id],
            artifact_type="documentation",
            content_type=up.content_type or "application/octet-stream",
        )


@pytest.mark.anyio
async def test_changed_upstream_bytes_are_reported_not_overwritten(
    service: ArtifactService, fake: FakeCrowNest
) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    ups = st.add_artifacts(sbx.id, 3)
    importer = make_importer(service, fake)
    job, items = await run_import(importer, sbx.id)
    assert job.counts == tally(imported=3)
    old = ups[0].data
    assert old is not None
    with st._lock:
        ups[0].data = b"rewritten upstream, and longer than before\n"
        ups[0].size_bytes = len(ups[0].data)
    downloads = len(hits(st, "download"))

    job2, items2 = await run_import(importer, sbx.id)
    first = items[ups[0].id].artifact_id
    assert (job2.status, job2.error) == ("failed", "1 item(s) failed")
    assert job2.counts == tally(unchanged=2, failed=1)
    assert items2[ups[0].id] == Item(
        ups[0].id,
        ups[0].name,
        "failed",
        f"upstream bytes changed: {ups[0].size_bytes} bytes now, {len(old)} when imported "
        f"as {first}; not overwritten",
        first,
        None,
    )
    assert len(hits(st, "download")) == downloads
    a = await service.find_by_source("crownest", ups[0].id)
    assert a is not None and a.id == first
    assert (await service.read_bytes(a), a.size_bytes) == (old, len(old))
    assert sorted(await crownest_rows(service)) == sorted(u.id for u in ups)


@pytest.mark.anyio
async def test_artifact_ids_filter_imports_only_those(
    service: ArtifactService, fake: FakeCrowNest
) -> None:
    st = fake.state
    sbx, other = st.add_sandbox(), st.add_sandbox()
    ups = st.add_artifacts(sbx.id, 5)
    gone = st.add_artifact(sbx.id, "bye", name="gone.txt", deleted=True)
    elsewhere = st.add_artifact(other.id, "other", name="other.txt")
    wanted = [ups[1].id, ups[3].id, "art_missing", gone.id, elsewhere.id]

    job, items = await run_import(make_importer(service, fake), sbx.id, artifact_ids=wanted)

    assert hits(st, "list") == []
    assert [r.path for r in hits(st, "get")] == [f"/v1/artifacts/{a}" for a in wanted]
    assert (job.status, job.error) == ("failed", "1 item(s) failed")
    assert job.counts == tally(imported=2, skipped=2, failed=1)
    for up in (ups[1], ups[3]):
        assert up.data is not None
        await assert_imported(
            service, up, up.data, items[up.id], content_type="text/plain", artifact_type="other"
        )
    assert items["art_missing"] == Item(
        "art_missing", None, "failed", "not found in CrowNest", None, None
    )
    assert items[gone.id].reason == f"deleted upstream at {gone.deleted_at}"
    assert items[elsewhere.id] == Item(
        elsewhere.id, "other.txt", "skipped", f"belongs to sandbox {other.id}", None, None
    )
    assert sorted(await crownest_rows(service)) == sorted([ups[1].id, ups[3].id])


@pytest.mark.anyio
async def test_source_path_prefix_filter(service: ArtifactService, fake: FakeCrowNest) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    paths = {
        "a.md": "/workspace/out/a.md",
        "b.json": "/workspace/out/sub/b.json",
        "c.py": "/workspace/other/c.py",
        "d.txt": "/workspace/d.txt",
        "e.txt": None,
    }
    ups = {n: st.add_artifact(sbx.id, n * 3, name=n, source_path=p) for n, p in paths.items()}
    prefix = "/workspace/out/"
    job, items = await run_import(make_importer(service, fake), sbx.id, source_path_prefix=prefix)
    assert (job.status, job.counts) == ("succeeded", tally(imported=2, skipped=3))
    for name, artifact_type in (("a.md", "markdown"), ("b.json", "json")):
        up = ups[name]
        assert up.data is not None and up.content_type is not None
        await assert_imported(
            service,
            up,
            up.data,
            items[up.id],
            artifact_type=artifact_type,
            content_type=up.content_type,
        )
    for name in ("c.py", "d.txt", "e.txt"):
        assert items[ups[name].id].status == "skipped"
        assert items[ups[name].id].reason == f"filtered: source path not under {prefix}"
    assert hits(st, "download", ups["c.py"].id) == []
    assert sorted(await crownest_rows(service)) == sorted([ups["a.md"].id, ups["b.json"].id])


@pytest.mark.anyio
async def test_dry_run_stores_nothing_and_reports_what_it_would_import(
    service: ArtifactService, fake: FakeCrowNest, blob_dir: Path
) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    ups = st.add_artifacts(sbx.id, 8, kind="mixed")
    live = [u for u in ups if u.deleted_at is None]
    progress = Recorded()
    job, items = await run_import(
        make_importer(service, fake), sbx.id, progress, phase_id="ph", dry_run=True
    )
    assert (job.status, job.counts, job.bytes) == ("succeeded", tally(skipped=8), 0)
    for up in ups:
        want = DRY if up.deleted_at is None else f"deleted upstream at {up.deleted_at}"
        assert (items[up.id].status, items[up.id].reason) == ("skipped", want)
    planned = {up.id: new for up, new in progress.would}
    assert sorted(planned) == sorted(u.id for u in live) and progress.errors == []
    for up in live:
        new = planned[up.id]
        assert (new.workflow_id, new.phase_id, new.title, new.source_ref) == (
            WF, "ph", up.name, up.id,
        )  # fmt: skip
        assert new.content_type == up.content_type or (
            up.content_type is None and new.content_type == "application/octet-stream"
        )
    assert hits(st, "download_url") == [] and hits(st, "download") == []
    assert await crownest_rows(service) == {}
    assert blob_files(blob_dir) == set() and staging(blob_dir) == []


@pytest.mark.anyio
async def test_importing_again_elsewhere_says_where_the_artifacts_already_are(
    service: ArtifactService, fake: FakeCrowNest
) -> None:
    """One artifact per CrowNest id: a second import into another workflow (or phase) adds
    nothing, and each item's reason names the workflow and phase that hold it."""
    st = fake.state
    sbx = st.add_sandbox()
    ups = st.add_artifacts(sbx.id, 3)
    importer = make_importer(service, fake)
    job, first = await run_import(importer, sbx.id, workflow_id="wf-a", phase_id="p1")
    assert job.counts == tally(imported=3)
    rows = await crownest_rows(service)
    for options, reason in (
        ({"workflow_id": "wf-b"}, "already in workflow 'wf-a', phase 'p1'"),
        ({"workflow_id": "wf-b", "dry_run": True}, "already in workflow 'wf-a', phase 'p1'"),
        ({"workflow_id": "wf-a"}, "already in workflow 'wf-a', phase 'p1'"),
        ({"workflow_id": "wf-a", "phase_id": "p1"}, None),
    ):
        progress = Recorded()
        job, items = await run_import(importer, sbx.id, progress, **options)
        assert (job.status, job.counts) == ("succeeded", tally(unchanged=3)), options
        for up in ups:
            assert items[up.id] == Item(
                up.id, up.name, "unchanged", reason, first[up.id].artifact_id, None
            )
        assert progress.would == []
    assert await crownest_rows(service) == rows
    for up in ups:
        a = await service.find_by_source("crownest", up.id)
        assert a is not None and (a.workflow_id, a.phase_id) == ("wf-a", "p1")


@pytest.mark.anyio
@pytest.mark.parametrize("case", ["refused", "bad-url", "html-404", "html-200"])
async def test_a_host_that_is_not_crownest_stops_the_job_naming_the_setting(
    service: ArtifactService, fake: FakeCrowNest, case: str
) -> None:
    """Unreachable, not a URL, or some other web server: the job fails at once with one
    sentence (the host, what went wrong, the setting to check), nothing is stored, and the
    error reaches the progress (the CLI's exit 2)."""
    with not_crownest() as web:
        base, error = {
            "refused": (
                f"http://127.0.0.1:{closed_port()}",
                r"Cannot reach CrowNest at http://127\.0\.0\.1:\d+: connection refused "
                r"\(3 attempts\)\. Check ARTIFACTS_CROWNEST_BASE_URL\.",
            ),
            "bad-url": (
                "localhost:8000",
                r"ARTIFACTS_CROWNEST_BASE_URL 'localhost:8000' is not an http:// or https:// "
                r"URL with a host\.",
            ),
            "html-404": (
                web,
                rf"{re.escape(web)} answered 404 with a body that is not CrowNest's: it does "
                r"not look like the CrowNest API\. Check ARTIFACTS_CROWNEST_BASE_URL\.",
            ),
            "html-200": (
                f"{web}/page",
                rf"{re.escape(web)}/page answered /v1/sandboxes/sbx_1/artifacts with a body "
                r"that is not CrowNest's JSON: it does not look like the CrowNest API\. "
                r"Check ARTIFACTS_CROWNEST_BASE_URL\.",
            ),
        }[case]
        progress = Recorded()
        importer = make_importer(service, fake, base_url=base)
        job, items = await run_import(importer, "sbx_1", progress)
    assert (job.status, job.counts, items) == ("failed", tally(), {})
    assert job.error is not None and re.fullmatch(error, job.error), job.error
    (stopped,) = progress.errors
    assert (str(stopped), stopped.setting) == (job.error, "ARTIFACTS_CROWNEST_BASE_URL")
    assert fake.state.requests == [] and await crownest_rows(service) == {}


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(AUTH))
async def test_a_key_problem_reaches_the_progress_naming_the_key_setting(
    service: ArtifactService, fake: FakeCrowNest, case: str
) -> None:
    key, error = AUTH[case]
    sbx = fake.state.add_sandbox()
    progress = Recorded()
    job, _ = await run_import(make_importer(service, fake, api_key=key), sbx.id, progress)
    (stopped,) = progress.errors
    assert (str(stopped), stopped.setting) == (error.format(base=fake.base_url), "CROWNEST_API_KEY")
    assert job.error == str(stopped)


@pytest.mark.anyio
async def test_429_waits_retry_after_then_imports(
    service: ArtifactService, fake: FakeCrowNest
) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    ups = st.add_artifacts(sbx.id, 2)
    st.inject("list", Fault.rate_limited(retry_after=0.5), sandbox_id=sbx.id)
    st.inject("download", Fault.rate_limited(retry_after=1), artifact_id=ups[0].id)
    t0 = time.monotonic()
    job, items = await run_import(make_importer(service, fake), sbx.id)
    elapsed = time.monotonic() - t0
    assert (job.status, job.counts) == ("succeeded", tally(imported=2))
    assert elapsed >= 1.5, elapsed  # 0.5 s + 1 s, not the 0.01 s backoff
    assert [r.status for r in hits(st, "list")] == [429, 200]
    assert [r.status for r in hits(st, "download", ups[0].id)] == [429, 200]
    for up in ups:
        assert up.data is not None
        await assert_imported(
            service, up, up.data, items[up.id], content_type="text/plain", artifact_type="other"
        )
    assert st.pending_faults() == {}


@pytest.mark.anyio
async def test_retry_after_is_capped(service: ArtifactService, fake: FakeCrowNest) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    (up,) = st.add_artifacts(sbx.id, 1)
    st.inject("download", Fault.rate_limited(retry_after=30), artifact_id=up.id)
    importer = make_importer(service, fake, retry_after_max=0.3)
    t0 = time.monotonic()
    job, _ = await run_import(importer, sbx.id)
    elapsed = time.monotonic() - t0
    assert (job.status, job.counts) == ("succeeded", tally(imported=1))
    assert 0.3 <= elapsed < 5, elapsed


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(TRANSIENT))
async def test_transient_fault_is_retried_until_it_clears(
    service: ArtifactService, fake: FakeCrowNest, blob_dir: Path, case: str
) -> None:
    route, fault = TRANSIENT[case]
    st = fake.state
    sbx = st.add_sandbox()
    body = random.Random(1).randbytes(200_000)
    up = st.add_artifact(sbx.id, body, name="big.bin")
    other = st.add_artifact(sbx.id, "fine", name="fine.txt")
    st.inject(route, fault(), fault(), artifact_id=up.id)  # max_attempts is 3
    job, items = await run_import(make_importer(service, fake), sbx.id)
    assert (job.status, job.counts) == ("succeeded", tally(imported=2))
    kind = "drop" if "drop" in case else "raw" if "html" in case else "error"
    assert [r.fault for r in hits(st, route, up.id)] == [kind, kind, None]
    await assert_imported(
        service,
        up,
        body,
        items[up.id],
        content_type="application/octet-stream",
        artifact_type="other",
    )
    assert other.data is not None
    await assert_imported(
        service,
        other,
        other.data,
        items[other.id],
        content_type="text/plain",
        artifact_type="other",
    )
    assert staging(blob_dir) == []


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(PERSISTENT))
async def test_persistent_fault_fails_the_item_after_max_attempts(
    service: ArtifactService, fake: FakeCrowNest, blob_dir: Path, case: str
) -> None:
    route, fault, reason = PERSISTENT[case]
    st = fake.state
    sbx = st.add_sandbox()
    body = random.Random(2).randbytes(200_000)
    first = st.add_artifact(sbx.id, "before", name="before.txt")
    up = st.add_artifact(sbx.id, body, name="doomed.bin")
    last = st.add_artifact(sbx.id, "after", name="after.txt")
    st.inject(route, fault(), fault(), fault(), fault(), artifact_id=up.id)
    job, items = await run_import(make_importer(service, fake), sbx.id)
    assert (job.status, job.error) == ("failed", "1 item(s) failed")
    assert job.counts == tally(imported=2, failed=1)
    assert len(hits(st, route, up.id)) == 3  # max_attempts, not more
    assert st.pending_faults() == {(route, up.id): [fault()]}
    item = items[up.id]
    assert (item.status, item.artifact_id, item.size_bytes) == ("failed", None, None)
    assert item.reason is not None and item.reason.startswith(reason), item.reason
    assert sorted(await crownest_rows(service)) == sorted([first.id, last.id])
    assert blob_files(blob_dir) == {sha(b"before"), sha(b"after")}
    assert staging(blob_dir) == []


@pytest.mark.anyio
async def test_backoff_is_exponential_in_the_configured_base(
    service: ArtifactService, fake: FakeCrowNest
) -> None:
    """4 retries at base 0.05 s: 0.05 + 0.1 + 0.2 + 0.4 s (+ jitter of the same order), and not
    a fixed second of jitter per retry that would make a small base pointless."""
    st = fake.state
    sbx = st.add_sandbox()
    (up,) = st.add_artifacts(sbx.id, 1)
    st.inject("download", *[Fault.unavailable()] * 4, artifact_id=up.id)
    importer = make_importer(service, fake, max_attempts=5, backoff_base=0.05, backoff_max=8)
    t0 = time.monotonic()
    job, _ = await run_import(importer, sbx.id)
    elapsed = time.monotonic() - t0
    assert (job.status, job.counts) == ("succeeded", tally(imported=1))
    assert 0.75 <= elapsed < 1.4, elapsed


@pytest.mark.anyio
async def test_backoff_is_bounded_by_its_maximum(
    service: ArtifactService, fake: FakeCrowNest
) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    (up,) = st.add_artifacts(sbx.id, 1)
    st.inject("download", *[Fault.server_error()] * 4, artifact_id=up.id)
    importer = make_importer(service, fake, max_attempts=5, backoff_base=0.1, backoff_max=0.15)
    t0 = time.monotonic()
    job, _ = await run_import(importer, sbx.id)
    elapsed = time.monotonic() - t0
    assert (job.status, job.counts) == ("succeeded", tally(imported=1))
    assert 0.55 <= elapsed < 1.3, elapsed  # unbounded: 0.1 + 0.2 + 0.4 + 0.8 = 1.5 s at least


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(AUTH))
async def test_401_403_stop_at_once_naming_the_key_problem(
    service: ArtifactService, fake: FakeCrowNest, case: str
) -> None:
    key, error = AUTH[case]
    st = fake.state
    sbx = st.add_sandbox()
    st.add_artifacts(sbx.id, 3)
    job, items = await run_import(make_importer(service, fake, api_key=key), sbx.id)
    assert (job.status, job.error, job.counts) == (
        "failed",
        error.format(base=fake.base_url),
        tally(),
    )
    assert [(r.route, r.status) for r in st.requests] == [
        ("list", 401 if case == "bad-key" else 403)
    ]
    assert items == {} and await crownest_rows(service) == {}


@pytest.mark.anyio
async def test_401_mid_job_stops_without_touching_the_rest(
    service: ArtifactService, fake: FakeCrowNest
) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    ups = st.add_artifacts(sbx.id, 3)
    newest = ups[-1]  # imported first
    st.inject(
        "download", Fault.error(401, "invalid_api_key", "Key revoked."), artifact_id=newest.id
    )
    job, items = await run_import(make_importer(service, fake), sbx.id)
    assert (job.status, job.counts) == ("failed", tally())
    assert job.error == (
        f"CrowNest at {fake.base_url} rejected the API key (invalid_api_key): "
        "check CROWNEST_API_KEY. Key revoked."
    )
    assert [(r.route, r.status) for r in st.requests] == [("list", 200), ("download", 401)]
    assert items == {} and await crownest_rows(service) == {}


@pytest.mark.anyio
async def test_unknown_sandbox_is_a_clear_error(
    service: ArtifactService, fake: FakeCrowNest
) -> None:
    st = fake.state
    job, items = await run_import(make_importer(service, fake), "sbx_does_not_exist")
    assert (job.status, job.counts, items) == ("failed", tally(), {})
    assert job.error == "CrowNest has no sandbox 'sbx_does_not_exist' (not_found)."
    assert job.error is not None and "ARTIFACTS_" not in job.error  # not a setting: exit 1
    assert [(r.route, r.status) for r in st.requests] == [("list", 404)]


@pytest.mark.anyio
async def test_size_mismatch_or_cut_body_fails_that_item_and_stores_nothing(
    service: ArtifactService, fake: FakeCrowNest, blob_dir: Path
) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    body = random.Random(3).randbytes(150_000)
    short = st.add_artifact(sbx.id, body, name="short.bin")
    long = st.add_artifact(sbx.id, body[:1000], name="long.bin")
    lying = st.add_artifact(sbx.id, body[:5000], name="lying.bin", size_bytes=5010)
    fine = st.add_artifact(sbx.id, body[:7], name="fine.bin")
    st.inject("download", Fault.short_body(missing=10), artifact_id=short.id)
    st.inject("download", Fault.long_body(), artifact_id=long.id)
    job, items = await run_import(make_importer(service, fake), sbx.id)
    assert (job.status, job.error) == ("failed", "3 item(s) failed")
    assert job.counts == tally(imported=1, failed=3)
    reasons = {k: (v.status, v.reason) for k, v in items.items() if k != fine.id}
    assert reasons == {
        short.id: ("failed", "CrowNest sent 149990 of 150000 bytes; not stored"),
        long.id: ("failed", "CrowNest sent more than its sizeBytes (1000); not stored"),
        lying.id: ("failed", "CrowNest sent 5000 of 5010 bytes; not stored"),
    }
    for up in (short, long, lying):
        assert len(hits(st, "download", up.id)) == 1
    await assert_imported(
        service,
        fine,
        body[:7],
        items[fine.id],
        content_type="application/octet-stream",
        artifact_type="other",
    )
    assert list(await crownest_rows(service)) == [fine.id]
    assert blob_files(blob_dir) == {sha(body[:7])}
    assert staging(blob_dir) == []


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["has_more_without_cursor", "repeat_cursor", "cycle_cursor"])
async def test_broken_pagination_stops_with_an_error(
    service: ArtifactService, fake: FakeCrowNest, fault: str
) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    st.add_artifacts(sbx.id, 9)
    faults = {
        "has_more_without_cursor": [Fault.has_more_without_cursor()],
        "repeat_cursor": [Fault.passthrough(), Fault.repeat_cursor()],
        "cycle_cursor": [Fault.passthrough(), Fault.passthrough(), Fault.cycle_cursor()],
    }[fault]
    st.inject("list", *faults, sandbox_id=sbx.id)
    job, items = await run_import(make_importer(service, fake, page_size=2), sbx.id)
    assert (job.status, job.counts, items) == ("failed", tally(), {})
    assert job.error is not None
    if fault == "has_more_without_cursor":
        assert job.error == "CrowNest said more pages follow but gave no nextCursor; stopping."
    else:
        assert re.fullmatch(
            r"CrowNest repeated the cursor 'cur_[\w-]+'; stopping to avoid a loop\.", job.error
        )
    assert len(hits(st, "list")) == len(faults)
    assert hits(st, "download") == [] and await crownest_rows(service) == {}


@pytest.mark.anyio
async def test_items_whose_download_url_points_elsewhere_import_through_the_api_route(
    service: ArtifactService, fake: FakeCrowNest
) -> None:
    """Issue 16: the importer used to ask for a download URL and fail the item when it named
    another host. It downloads as the SDK's download() does: GET /v1/artifacts/{id}/download
    on the configured host, with the key and Accept: application/octet-stream."""
    st = fake.state
    sbx = st.add_sandbox()
    ups = [st.add_artifact(sbx.id, n * 10, name=f"{n}.txt") for n in "abc"]
    elsewhere = (
        "{foreign}/v1/artifacts/{id}/download",
        "{other_port}/x/{id}",
        "http://evil.example/x",
    )
    for up, url in zip(ups, elsewhere, strict=True):
        st.inject("download_url", Fault.foreign_url(url), artifact_id=up.id)
    job, items = await run_import(make_importer(service, fake), sbx.id)
    assert (job.status, job.counts) == ("succeeded", tally(imported=3))
    for up in ups:
        assert up.data is not None
        await assert_imported(
            service, up, up.data, items[up.id], content_type="text/plain", artifact_type="other"
        )
        (got,) = hits(st, "download", up.id)
        assert (got.method, got.path, got.server, got.status) == (
            "GET", f"/v1/artifacts/{up.id}/download", fake.base_url.split("//")[1], 200,
        )  # fmt: skip
        assert got.authorization == f"Bearer {fake.api_key}"
        assert got.headers["accept"] == "application/octet-stream"
    assert hits(st, "download_url") == [] and len(st.pending_faults()) == 3
    assert st.foreign_requests() == [] and st.leaks() == []


@pytest.mark.anyio
async def test_a_redirect_of_the_download_is_followed_and_the_key_stays_home(
    service: ArtifactService, fake: FakeCrowNest, blob_dir: Path
) -> None:
    """A redirect (the docs' short-lived signed URL, say on object storage) is followed; the
    key goes only to the configured origin, never to another host or port; the bytes are
    streamed and checked as on the API host; a failure there fails only that item."""
    if fake.foreign_base_url is None or fake.other_port_base_url is None:
        pytest.skip("127.0.0.2 cannot be bound here")
    st = fake.state
    sbx = st.add_sandbox()
    big = st.add_artifact(sbx.id, random.Random(7).randbytes(3 * MiB + 123), name="big.bin")
    port = st.add_artifact(sbx.id, b"on another port", name="port.txt")
    home = st.add_artifact(sbx.id, b"same origin", name="home.txt")
    lying = st.add_artifact(sbx.id, b"12345", name="lying.bin", size_bytes=15)
    gone = st.add_artifact(sbx.id, b"lost", name="gone.txt")
    loop = st.add_artifact(sbx.id, b"loop", name="loop.txt")
    redirects = [
        (big, [Fault.redirect()]),  # to 127.0.0.2
        (port, [Fault.redirect("{other_port}/v1/artifacts/{id}/download", status=307)]),
        (home, [Fault.redirect("{base}/v1/artifacts/{id}/download?signed=1")]),
        (lying, [Fault.redirect()]),
        (gone, [Fault.redirect("{foreign}/storage/{id}?signature=s3cr3t")]),
        (loop, [Fault.redirect("{base}/v1/artifacts/{id}/download")] * 6),
    ]
    for up, faults in redirects:
        st.inject("download", *faults, artifact_id=up.id)

    job, items = await run_import(make_importer(service, fake), sbx.id)

    assert (job.status, job.counts) == ("failed", tally(imported=3, failed=3))
    for up in (big, port, home):
        assert up.data is not None
        await assert_imported(
            service, up, up.data, items[up.id], content_type=up.content_type or
            "application/octet-stream", artifact_type="other",
        )  # fmt: skip
    foreign = fake.foreign_base_url
    assert {up.id: items[up.id].reason for up in (lying, gone, loop)} == {
        lying.id: "CrowNest sent 5 of 15 bytes; not stored",
        gone.id: f"{foreign}/storage/{gone.id} (where CrowNest redirected the download) "
        "answered 404: Nothing here (foreign host).",  # the signature is not repeated
        loop.id: "transfer failed: TooManyRedirects: Exceeded maximum allowed redirects.",
    }
    away = st.foreign_requests()
    assert sorted((r.server, r.path) for r in away) == sorted(
        [
            (foreign.split("//")[1], f"/v1/artifacts/{big.id}/download"),
            (fake.other_port_base_url.split("//")[1], f"/v1/artifacts/{port.id}/download"),
            (foreign.split("//")[1], f"/v1/artifacts/{lying.id}/download"),
            (foreign.split("//")[1], f"/storage/{gone.id}"),
        ]
    )
    assert [r.authorization for r in away] == [None] * 4 and st.leaks() == []
    at_home = [r for r in st.requests if not r.foreign]
    assert all(r.authorization == f"Bearer {fake.api_key}" for r in at_home)
    assert [r.query for r in hits(st, "download", home.id)] == ["", "signed=1"]
    assert len(hits(st, "download", loop.id)) == 6  # five hops followed, then given up
    assert st.pending_faults() == {}
    assert blob_files(blob_dir) == {sha(u.data) for u in (big, port, home) if u.data}
    assert staging(blob_dir) == []


@pytest.mark.anyio
async def test_slow_body_still_imports(service: ArtifactService, fake: FakeCrowNest) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    body = random.Random(4).randbytes(160 * 1024)
    up = st.add_artifact(sbx.id, body, name="slow.bin")
    st.inject("download", Fault.slow(chunk_size=8192, delay=0.03), artifact_id=up.id)
    t0 = time.monotonic()
    job, items = await run_import(make_importer(service, fake), sbx.id)
    assert time.monotonic() - t0 >= 0.6  # 20 chunks, 0.03 s apart: it really trickled
    assert (job.status, job.counts) == ("succeeded", tally(imported=1))
    assert [r.fault for r in hits(st, "download", up.id)] == ["slow"]
    await assert_imported(
        service,
        up,
        body,
        items[up.id],
        content_type="application/octet-stream",
        artifact_type="other",
    )


def test_http_import_job_runs_reports_and_resumes(
    tmp_path: Path, database_url: str, fake: FakeCrowNest
) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    ups = st.add_artifacts(sbx.id, 110, kind="mixed")  # two pages of 100
    live = [u for u in ups if u.deleted_at is None]
    data = {u.id: u.data for u in live}
    doomed = live[-1]  # imported first; its download comes up 3 bytes short
    st.inject("download", Fault.short_body(missing=3), artifact_id=doomed.id)
    server = start_app(tmp_path / "data", database_url=database_url, env=server_env(fake))
    try:
        with server.client() as client:
            body = {"sandbox_id": sbx.id, "workflow_id": WF, "phase_id": "ph", "session_id": "s"}
            r = client.post("/imports/crownest", json=body)
            assert r.status_code == 202, r.text
            accepted = r.json()
            import_id = accepted["import_id"]
            assert accepted == {
                "import_id": import_id,
                "status": "queued",
                "url": f"{server.url}/imports/{import_id}",
            }
            assert r.headers["location"] == accepted["url"]

            state = poll(client, import_id, finished)
            expected_options = {
                **body,
                "artifact_type": None,
                "artifact_ids": [],
                "source_path_prefix": None,
                "dry_run": False,
            }
            assert state["options"] == expected_options
            assert (state["id"], state["source"], state["status"]) == (
                import_id,
                "crownest",
                "failed",
            )
            assert state["error"] == "1 item(s) failed"
            assert state["counts"] == tally(imported=len(live) - 1, skipped=27, failed=1)
            assert state["bytes"] == sum(len(d) for k, d in data.items() if k != doomed.id)
            size = doomed.size_bytes
            assert state["failures"] == [
                {
                    "upstream_id": doomed.id,
                    "name": doomed.name,
                    "reason": f"CrowNest sent {size - 3} of {size} bytes; not stored",
                }
            ]
            assert state["finished_at"] is not None
            assert [r.params["limit"] for r in hits(st, "list", sbx.id)] == [["100"]] * 2

            # resume: only the failed item is fetched again, and now it succeeds
            downloads = len(hits(st, "download"))
            r = client.post(f"/imports/{import_id}/resume")
            assert r.status_code == 202, r.text
            assert r.json() == accepted
            state = poll(client, import_id, finished)
            assert (state["status"], state["error"], state["failures"]) == ("succeeded", None, [])
            assert state["counts"] == tally(imported=len(live), skipped=27)
            assert state["bytes"] == sum(len(d) for d in data.values())
            assert len(hits(st, "download")) == downloads + 1
            assert [r.status for r in hits(st, "download", doomed.id)] == [200, 200]

            rows = rows_of(database_url)
            assert sorted(rows) == sorted(data) and all(len(v) == 1 for v in rows.values())
            for up in live:
                (row,) = rows[up.id]
                record = client.get(f"/artifacts/{row['id']}").json()
                assert {
                    k: record[k]
                    for k in ("workflow_id", "phase_id", "session_id", "title", "filename")
                } == {
                    "workflow_id": WF,
                    "phase_id": "ph",
                    "session_id": "s",
                    "title": up.name,
                    "filename": up.name,
                }
                assert record["content_type"] == (up.content_type or "application/octet-stream")
                assert record["created_by"] == f"crownest:{sbx.id}"
                assert record["metadata"]["crownest"]["objectKey"] == up.object_key
                assert record["content_hash"] == sha(data[up.id])
                download = client.get(f"/artifacts/{row['id']}/download")
                assert download.content == data[up.id]

            # bad bodies and unknown ids; none of them makes a job
            for bad, loc, kind in (
                ({"sandbox_id": "s", "workflow_id": "w", "bogus": 1}, "bogus", "extra_forbidden"),
                ({"sandbox_id": "s", "workflow_id": "w", "artifact_type": "nope"}, None, "enum"),
                ({"workflow_id": "w"}, "sandbox_id", "missing"),
                ({"sandbox_id": "", "workflow_id": "w"}, "sandbox_id", None),
            ):
                r = client.post("/imports/crownest", json=bad)
                assert r.status_code == 422, (bad, r.text)
                (err,) = r.json()["detail"]
                assert err["loc"] == ["body", loc or "artifact_type"]
                assert kind is None or err["type"] == kind
            for method, path in (("GET", "/imports/nope"), ("POST", "/imports/nope/resume")):
                r = client.request(method, path)
                assert r.status_code == 404, r.text
                assert r.json()["code"] == "import_not_found"
        assert count_rows(database_url, "imports") == 1
    finally:
        server.stop()


def test_http_import_without_a_key_is_503(
    tmp_path: Path, database_url: str, fake: FakeCrowNest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CROWNEST_API_KEY", raising=False)
    monkeypatch.delenv("ARTIFACTS_CROWNEST_API_KEY", raising=False)
    env = {"ARTIFACTS_CROWNEST_BASE_URL": fake.base_url}
    server = start_app(tmp_path / "data", database_url=database_url, env=env)
    try:
        with server.client() as client:
            r = client.post("/imports/crownest", json={"sandbox_id": "sbx_1", "workflow_id": WF})
            assert r.status_code == 503, r.text
            assert r.json() == {
                "detail": "Imports need CROWNEST_API_KEY set on the server.",
                "code": "crownest_not_configured",
            }
        assert count_rows(database_url, "imports") == 0
        assert fake.state.requests == []
    finally:
        server.stop()


def test_http_import_with_a_base_url_that_cannot_work_is_503(
    tmp_path: Path, database_url: str, fake: FakeCrowNest
) -> None:
    env = {**server_env(fake), "ARTIFACTS_CROWNEST_BASE_URL": "localhost:8000"}
    server = start_app(tmp_path / "data", database_url=database_url, env=env)
    try:
        with server.client() as client:
            r = client.post("/imports/crownest", json={"sandbox_id": "sbx_1", "workflow_id": WF})
            assert r.status_code == 503, r.text
            assert r.json() == {
                "detail": "Imports cannot run: ARTIFACTS_CROWNEST_BASE_URL 'localhost:8000' is "
                "not an http:// or https:// URL with a host.",
                "code": "crownest_not_configured",
            }
        assert count_rows(database_url, "imports") == 0
        assert fake.state.requests == []
    finally:
        server.stop()
