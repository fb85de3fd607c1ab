"""`wfa`, the client's command, as CI runs it: a subprocess whose output is a pipe (not a
terminal), against a real `artifacts serve`. Its exit codes, its plain progress lines (never a
redrawn bar), its tables, and one-line errors for bad input."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from workflow_artifacts_client import ArtifactsClient

from tests.support.servers import Server, free_port

pytestmark = pytest.mark.timeout(120)


def wfa(
    *args: str, url: str | None, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ARTIFACTS_")}
    if url is not None:
        environ["ARTIFACTS_URL"] = url
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "workflow_artifacts_client", *args],
        env=environ,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def plain(run: subprocess.CompletedProcess[str]) -> None:
    """Output for a log: no carriage returns, no terminal escapes, no traceback."""
    for text in (run.stdout, run.stderr):
        assert "\r" not in text and "\x1b[" not in text
        assert "Traceback" not in text


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_push_a_directory_and_files_then_pull_them_back(srv: Server, wf: str, tmp_path: Path):
    src = tmp_path / "results"
    (src / "sub").mkdir(parents=True)
    (src / "report.md").write_text("# Report\n")
    (src / "sub" / "data.json").write_text('{"a": 1}\n')
    (src / "sub" / "blob.bin").write_bytes(os.urandom(3_000_000))
    single = tmp_path / "notes.txt"
    single.write_text("notes\n")

    run = wfa(
        "push",
        str(src),
        str(single),
        "--workflow",
        wf,
        "--phase",
        "build",
        "--session",
        "s-1",
        url=srv.url,
    )
    plain(run)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    for rel in ("results/report.md", "results/sub/data.json", "results/sub/blob.bin", "notes.txt"):
        assert f"push {rel} (" in run.stdout
        assert any(re.match(rf"  {re.escape(rel)}: ok ", line) for line in lines)
    assert "total: 4/4 files" in run.stdout
    table = lines[lines.index(next(x for x in lines if x.startswith("file "))) :]
    assert len(table) == 2 + 4 and all(row.rstrip().endswith("ok") for row in table[2:])

    with ArtifactsClient(srv.url) as client:
        rows = {r.title: r for r in client.list(workflow_id=wf)}
        assert set(rows) == {
            "results/report.md",
            "results/sub/data.json",
            "results/sub/blob.bin",
            "notes.txt",
        }
        assert rows["results/report.md"].artifact_type == "markdown"
        assert rows["results/sub/data.json"].artifact_type == "json"
        record = client.get(rows["results/sub/blob.bin"].id)
        assert record.metadata == {"path": "results/sub/blob.bin"}
        assert (record.session_id, record.phase_id) == ("s-1", "build")

    dest = tmp_path / "out"
    run = wfa("pull", "--workflow", wf, "--phase", "build", str(dest), url=srv.url)
    plain(run)
    assert run.returncode == 0, run.stderr
    pulled = tree(dest)
    manifest = json.loads(pulled.pop("wfa-manifest.json"))
    assert pulled == {f"results/{k}": v for k, v in tree(src).items()} | {"notes.txt": b"notes\n"}
    assert {f["path"] for f in manifest["files"]} == set(pulled)
    for entry in manifest["files"]:
        assert entry["sha256"] == hashlib.sha256(pulled[entry["path"]]).hexdigest()

    # again: every file is there and verified, nothing is fetched
    run = wfa("pull", "--workflow", wf, "--phase", "build", str(dest), url=srv.url)
    assert run.returncode == 0 and run.stdout.count("unchanged") == 2 * 4  # line and table

    # without --phase, each phase is a folder
    run = wfa("pull", "-w", wf, str(tmp_path / "all"), url=srv.url)
    assert run.returncode == 0
    assert "build/results/report.md" in tree(tmp_path / "all")


def test_large_files_print_progress_lines_not_bars(srv: Server, wf: str, tmp_path: Path):
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        for _ in range(48):
            f.write(os.urandom(1 << 20))
    run = wfa("push", str(big), "-w", wf, url=srv.url, env={"ARTIFACTS_API_KEY": ""})
    plain(run)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("push big.bin (48.0 MiB)\n")
    assert re.search(r"  big\.bin: ok 48\.0 MiB in [\d.]+ s", run.stdout)


def test_primary_deliverables_lineage_ls_cat_and_rm(srv: Server, wf: str, tmp_path: Path):
    (tmp_path / "plan.md").write_text("# Plan\n")
    (tmp_path / "impl.py").write_text("print(1)\n")
    assert (
        wfa(
            "push", str(tmp_path / "plan.md"), "-w", wf, "-p", "plan", "--primary", url=srv.url
        ).returncode
        == 0
    )
    with ArtifactsClient(srv.url) as client:
        plan = next(client.list(workflow_id=wf))
    run = wfa(
        "push",
        str(tmp_path / "impl.py"),
        "-w",
        wf,
        "-p",
        "build",
        "--primary",
        "--derived-from",
        plan.id,
        "--type",
        "code",
        url=srv.url,
    )
    assert run.returncode == 0, run.stderr

    run = wfa("ls", "--workflow", wf, url=srv.url)
    plain(run)
    assert run.returncode == 0
    header, _rule, *rows = run.stdout.splitlines()
    assert header.split() == [
        "id",
        "type",
        "workflow",
        "phase",
        "title",
        "size",
        "created",
        "primary",
    ]
    assert [r.split()[1] for r in rows] == ["code", "markdown"]
    assert all(r.rstrip().endswith("*") for r in rows)
    run = wfa("ls", "-w", wf, "--type", "code", "--json", url=srv.url)
    (impl,) = [json.loads(line) for line in run.stdout.splitlines()]
    assert impl["title"] == "impl.py"

    run = wfa("lineage", plan.id[:8], url=srv.url)
    assert run.returncode == 0
    assert run.stdout.splitlines() == [
        f"{plan.id[:8]} plan.md [markdown]",
        "used by:",
        f"└── {impl['id'][:8]} impl.py [code]",
    ]
    run = wfa("lineage", impl["id"], "--direction", "up", url=srv.url)
    assert run.stdout.splitlines()[1:] == ["derived from:", f"└── {plan.id[:8]} plan.md [markdown]"]

    pulled = tmp_path / "deliverables"
    run = wfa("pull", "-w", wf, "--deliverables", str(pulled), url=srv.url)
    assert run.returncode == 0, run.stderr
    assert set(tree(pulled)) == {"plan/plan.md", "build/impl.py", "wfa-manifest.json"}

    cat = subprocess.run(
        [sys.executable, "-m", "workflow_artifacts_client", "cat", impl["id"]],
        env={**os.environ, "ARTIFACTS_URL": srv.url},
        capture_output=True,
        timeout=60,
    )
    assert (cat.returncode, cat.stdout) == (0, b"print(1)\n")

    run = wfa("rm", impl["id"], url=srv.url)
    assert (run.returncode, run.stdout) == (0, f"deleted {impl['id']}\n")
    run = wfa("rm", impl["id"], url=srv.url)
    plain(run)
    assert run.returncode == 1 and "artifact_not_found" in run.stderr
    assert len(run.stderr.splitlines()) == 1


def test_a_failed_file_fails_the_push_and_says_which(srv: Server, wf: str, tmp_path: Path):
    (tmp_path / "a.md").write_text("a")
    (tmp_path / "b.md").write_text("b")
    run = wfa("push", str(tmp_path), "-w", wf, "--derived-from", str(uuid.uuid4()), url=srv.url)
    plain(run)
    assert run.returncode == 1
    assert run.stdout.count("FAILED") >= 2 and "artifact_not_found" in run.stdout
    assert "2 of 2 file(s) failed" in run.stderr


def test_bad_input_is_one_line_and_a_nonzero_exit(srv: Server, wf: str, tmp_path: Path):
    cases = [
        (["push", "missing.md", "-w", wf], srv.url, 2, "no such file or directory: missing.md"),
        (["push", str(tmp_path), "-w", wf], srv.url, 2, "nothing to push"),
        (["ls"], "not a url", 2, "not a usable server URL"),
        (["ls", "--retries", "0"], f"http://127.0.0.1:{free_port()}", 1, "Connection refused"),
        (["cat", "00000000"], srv.url, 1, "404 artifact_not_found"),
        (["pull", "-w", f"{wf}-none", str(tmp_path / "x")], srv.url, 1, "nothing to pull"),
    ]
    for args, url, code, message in cases:
        run = wfa(*args, url=url)
        plain(run)
        assert run.returncode == code, (args, run.stdout, run.stderr)
        assert run.stderr.startswith("wfa: ") and message in run.stderr, (args, run.stderr)
        assert len(run.stderr.splitlines()) == 1, run.stderr
    (tmp_path / "a.md").write_text("a")
    run = wfa(
        "push", str(tmp_path / "a.md"), str(tmp_path / "a.md"), "-w", wf, "--primary", url=srv.url
    )
    assert run.returncode == 2 and "--primary marks one file" in run.stderr
    run = wfa("push", "-w", wf, url=srv.url)  # argparse's own usage error
    assert run.returncode == 2 and "usage: wfa push" in run.stderr
    assert wfa("--help", url=None).returncode == 0


def test_in_a_terminal_with_rich_push_and_pull_draw_bars(srv: Server, wf: str, tmp_path: Path):
    pytest.importorskip("rich")
    import pty

    (tmp_path / "a.bin").write_bytes(os.urandom(2_000_000))

    def in_terminal(*args: str) -> tuple[int, str]:
        leader, follower = pty.openpty()
        env = {**os.environ, "ARTIFACTS_URL": srv.url, "COLUMNS": "120", "TERM": "xterm"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "workflow_artifacts_client", *args],
            stdin=follower,
            stdout=follower,
            stderr=follower,
            env=env,
        )
        os.close(follower)
        out = b""
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the other end closed
                break
            if not data:
                break
            out += data
        os.close(leader)
        return proc.wait(30), out.decode("utf-8", "replace")

    code, out = in_terminal("push", str(tmp_path / "a.bin"), "-w", wf)
    assert code == 0, out
    assert "\x1b[" in out and "━" in out  # a drawn bar, not plain lines
    assert "┃" in out or "│" in out  # the summary as a rich table
    assert "push a.bin (" not in out
    code, out = in_terminal("pull", "-w", wf, str(tmp_path / "out"))
    assert code == 0, out
    assert (tmp_path / "out" / "a.bin").read_bytes() == (tmp_path / "a.bin").read_bytes()


def test_push_and_pull_move_files_in_parallel_with_readable_lines(
    srv: Server, wf: str, tmp_path: Path
):
    src = tmp_path / "many"
    src.mkdir()
    files = {f"f{i:02d}.bin": os.urandom(150_000 + i * 1000) for i in range(20)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    line = re.compile(
        r"(?:push|pull) many/f\d\d\.bin \([\d.]+ KiB\)"  # a file starts
        r"|  many/f\d\d\.bin: (?:ok|\d+%) .*"  # its progress or its end
        r"|  \[\d+/20 files, .* of .*, \d+%\]"  # the running total
        r"|total: 20/20 files, .*"
        r"|file +id +size +sha256 +status|[- ]+|many/f\d\d\.bin +\S+ +[\d.]+ KiB +\w+ +ok"
    )

    def check(run: subprocess.CompletedProcess[str], verb: str) -> list[str]:
        plain(run)
        assert run.returncode == 0, run.stdout + run.stderr
        lines = run.stdout.splitlines()
        assert [x for x in lines if not line.fullmatch(x)] == []  # no line mixed with another
        assert sum(1 for x in lines if x.startswith(f"{verb} many/")) == 20
        assert sum(1 for x in lines if re.fullmatch(r"  many/f\d\d\.bin: ok .*", x)) == 20
        totals = [int(m[1]) for x in lines if (m := re.fullmatch(r"  \[(\d+)/20 files.*", x))]
        assert totals == list(range(1, 21))  # each file's end is followed by the total it makes
        starts = [i for i, x in enumerate(lines) if x.startswith(f"{verb} ")]
        first_end = next(i for i, x in enumerate(lines) if ": ok " in x)
        assert starts[1] < first_end  # a second file started before the first ended
        table = lines[lines.index(next(x for x in lines if x.startswith("file "))) + 2 :]
        assert [row.split()[0] for row in table] == [f"many/{n}" for n in sorted(files)]
        return lines

    check(wfa("push", str(src), "-w", wf, "--jobs", "4", url=srv.url), "push")
    dest = tmp_path / "back"
    check(wfa("pull", "-w", wf, "--jobs", "4", str(dest), url=srv.url), "pull")
    pulled = tree(dest)
    manifest = json.loads(pulled.pop("wfa-manifest.json"))
    assert pulled == {f"many/{n}": data for n, data in files.items()}
    assert sorted(f["path"] for f in manifest["files"]) == sorted(pulled)
    for entry in manifest["files"]:
        assert entry["sha256"] == hashlib.sha256(pulled[entry["path"]]).hexdigest()

    run = wfa("pull", "-w", wf, "--jobs", "0", str(dest), url=srv.url)
    assert run.returncode == 2 and "--jobs takes 1 to 64" in run.stderr
