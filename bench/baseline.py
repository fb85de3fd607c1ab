"""Before/after in one run (`scripts/bench --baseline REF`): the create and byte figures of this
worktree's server ("after") and of a baseline git ref's ("before"), measured alternately in the
same run against the same references as the groups they come from.

The baseline's code is checked out as a detached git worktree under var/bench-baseline/<sha>
(made on first use, reused while it is clean and at that commit; the least recently used beyond
KEEP are removed). Its server is the same interpreter and the same `python -c` entry as ours
(bench/common.py our_server), run with its cwd and PYTHONPATH in the baseline worktree, so its
`app` and `storage` are imported and its own code migrates its store (`serve` does); every server
reports where its `app` and `storage` came from, and a run stops at once if that is not the tree
it was meant to be. Both sides share this worktree's environment (.venv), so a baseline whose
requirements.lock differs from ours is refused before anything is measured: its figures would be
another environment's.

Per repetition, for each figure: the reference, then before, then after (each a fresh server
pinned to the server core, warmed up right before its timed run), so drift hits both sides;
reported per figure are the medians of before and after, each one's ratio to the reference, and
after/before as the median of the per-repetition ratios, "met" when that is at least THRESHOLD.

- JSON creates, 1 KiB, at concurrency 16 and 64 (bench/metadata.py's create phases) into an empty
  store migrated by each side's own code (a loaded store would need our loader to write the
  baseline's schema): on SQLite, and on PostgreSQL (a fresh database per server) when one
  answers. Reference: the durable create loop (bench/durable.py), measured in each repetition.
- Uploads (multipart, the real route) and verified downloads of 1 MiB and 64 MiB, with the
  mode's client counts (bench/bytepath.py's `ours`), each client repeating its transfer until
  the timed run moves VOLUME (every upload a new artifact and new bytes). Reference:
  sha256+write MB/s (the byte target's), measured in each repetition, and the bare ASGI app
  doing the same transfers.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import ROOT, MiB, code_env, code_origin, fmt_size, median, our_server

# after/before at least this is "met". The bound of this machine's run-to-run noise on these
# figures, to be confirmed by running --baseline against the commit itself (docs/benchmarks.md).
THRESHOLD = 0.95
# where baseline worktrees live (BENCH_BASELINE_DIR: elsewhere, e.g. a test's temporary folder)
WORKTREES = Path(os.environ.get("BENCH_BASELINE_DIR") or ROOT / "var" / "bench-baseline")
KEEP = 3  # baseline worktrees kept for reuse; the least recently used beyond this are removed
REPS = {"smoke": 1, "quick": 5, "full": 9}  # default repetitions per mode (--reps overrides)
SIZES = {"smoke": [MiB], "quick": [MiB, 64 * MiB], "full": [MiB, 64 * MiB]}
# bytes moved per timed byte run, at least: a single 1 MiB transfer takes milliseconds, far too
# short to time, so each client repeats its transfer (rounds) until the run moves this much
VOLUME = {"smoke": 16 * MiB, "quick": 256 * MiB, "full": 512 * MiB}
CREATE_CONCURRENCY = (16, 64)
PROBE = (
    "import json, app, storage; "
    "print(json.dumps({'app': app.__file__, 'storage': storage.__file__}))"
)


class BaselineRefused(Exception):
    """Why the comparison cannot be measured; said before anything is measured."""


@dataclass
class Side:
    name: str  # "before" or "after"
    root: Path  # the tree whose app and storage it serves
    commit: str


def git(*args: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    if out.returncode != 0:
        raise BaselineRefused(f"git {' '.join(args)}: {out.stderr.strip() or out.returncode}")
    return out.stdout.strip()


def resolve(ref: str) -> str:
    """The commit sha a ref names in this repository."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except BaselineRefused:
        raise BaselineRefused(f"--baseline {ref}: no such commit in this repository") from None


def _is_clean_worktree(path: Path, sha: str) -> bool:
    """path is a worktree of this repository (not just a folder inside this one), at sha, with
    no tracked file changed."""
    try:
        top = git("rev-parse", "--show-toplevel", cwd=path)
        head = git("rev-parse", "HEAD", cwd=path)
        changed = git("status", "--porcelain", "--untracked-files=no", cwd=path)
    except BaselineRefused:
        return False
    return Path(top).resolve() == path.resolve() and head == sha and not changed


def _remove_worktree(path: Path) -> None:
    try:
        git("worktree", "remove", "--force", str(path))
    except BaselineRefused:
        shutil.rmtree(path, ignore_errors=True)
        git("worktree", "prune")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One run at a time makes or removes baseline worktrees."""
    WORKTREES.mkdir(parents=True, exist_ok=True)
    with (WORKTREES / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def shown(path: Path) -> str:
    """A path as the logs show it: relative to this tree when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def worktree(sha: str, log: Callable[[str], None]) -> Path:
    """var/bench-baseline/<sha>: reused when it is a clean worktree at sha, else made anew with
    `git worktree add --detach`; baseline worktrees beyond the KEEP most recently used go."""
    path = WORKTREES / sha[:12]
    with _locked():
        git("worktree", "prune")
        if path.exists() and not _is_clean_worktree(path, sha):
            log(f"  {path} is not a clean worktree at {sha[:12]}: making it anew")
            _remove_worktree(path)
        if path.exists():
            log(f"  reusing {shown(path)}")
        else:
            git("worktree", "add", "--detach", str(path), sha)
            log(f"  made {shown(path)} (git worktree add --detach)")
        (WORKTREES / f"{path.name}.used").touch()
        others = [p for p in WORKTREES.iterdir() if p.is_dir() and p != path]

        def used(p: Path) -> float:
            stamp = WORKTREES / f"{p.name}.used"
            return stamp.stat().st_mtime if stamp.exists() else p.stat().st_mtime

        for old in sorted(others, key=used, reverse=True)[KEEP - 1 :]:
            log(f"  removing the baseline worktree {shown(old)} (least recently used)")
            _remove_worktree(old)
            (WORKTREES / f"{old.name}.used").unlink(missing_ok=True)
    return path


def pins(text: str) -> list[str]:
    """A lock file's requirement lines: comments (pip-compile's "# via") and blank lines out."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def lock_difference(sha: str) -> str | None:
    """None when the commit's requirements.lock pins what ours does, else a diff of the pins
    (read from git: nothing is checked out to refuse)."""
    mine = pins((ROOT / "requirements.lock").read_text())
    try:
        theirs = pins(git("show", f"{sha}:requirements.lock"))
    except BaselineRefused as exc:
        return f"the baseline has no readable requirements.lock: {exc}"
    if mine == theirs:
        return None
    diff = difflib.unified_diff(
        theirs, mine, "baseline requirements.lock", "requirements.lock", lineterm="", n=0
    )
    lines = list(diff)
    return "\n".join(lines[:40] + (["…"] if len(lines) > 40 else []))


def probe(root: Path) -> dict[str, Any]:
    """Where this interpreter imports `app` and `storage` from with root's cwd and PYTHONPATH
    (what every server of that side will run); BaselineRefused unless both are root's."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=root,
        env={**os.environ, **code_env(root)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if out.returncode != 0:
        raise BaselineRefused(f"cannot import app and storage in {root}: {out.stderr[-2000:]}")
    found: dict[str, Any] = json.loads(out.stdout)
    wrong = code_origin(found, root)
    if wrong is not None:
        raise BaselineRefused(f"the code served would not be {root}'s: {wrong}")
    return found


def prepare(ref: str, after_commit: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Before anything is measured: the baseline's worktree, the same lock, the code check."""
    sha = resolve(ref)
    log(f"== baseline: {ref} = {sha[:12]}")
    diff = lock_difference(sha)
    if diff is not None:
        raise BaselineRefused(
            f"the baseline {ref} ({sha[:12]}) pins other dependencies than this tree; both "
            "would run on this tree's .venv, so its figures would not be its own. "
            f"requirements.lock (its pins, comments aside) differs:\n{diff}"
        )
    root = worktree(sha, log)
    before, after = probe(root), probe(ROOT)
    log(f"  before imports app from {before['app']}")
    log(f"  after imports app from {after['app']}")
    return {
        "ref": ref,
        "sha": sha,
        "worktree": str(root),
        "sides": [Side("before", root, sha[:12]), Side("after", ROOT, after_commit)],
        "probes": {"before": before, "after": after},
    }


class Record:
    """What a comparison measured: per figure, per repetition, the reference and each side; the
    order in which servers ran; and what each side's servers said they imported."""

    def __init__(self, sides: list[Side], order: str = "ab") -> None:
        self.sides = sides
        self.order_name = order
        self.sequence: list[str] = []
        self.code: dict[str, dict[str, Any]] = {
            s.name: {"root": str(s.root), "commit": s.commit, "servers": 0, "apps": []}
            for s in sides
        }
        self.problems: list[str] = []

    def order(self, rep: int) -> list[Side]:
        """The sides in the order repetition `rep` runs them: before then after ("ab"), or
        that order and its reverse in turn ("abba": cancels a steady drift and any advantage
        of running second)."""
        if self.order_name == "abba" and rep % 2:
            return self.sides[::-1]
        return self.sides

    def served(self, side: Side, label: str, code: dict[str, Any]) -> None:
        self.sequence.append(f"{label} {side.name}")
        seen = self.code[side.name]
        seen["servers"] += 1
        if code.get("app") not in seen["apps"]:
            seen["apps"].append(code.get("app"))


def figure_row(
    group: str,
    label: str,
    unit: str,
    reference: str,
    per_rep: list[dict[str, float]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One compared figure: per_rep holds {"reference", "before", "after"} per repetition, and
    the server CPU per unit of each side ("before_cpu", "after_cpu"; MEASURED.md: steadier than
    the rate, so its after/before is shown beside as a second opinion, lower is cheaper)."""
    ratios = [r["after"] / r["before"] for r in per_rep if r["before"]]
    ratio = median(ratios) if ratios else None
    cpu = [r["after_cpu"] / r["before_cpu"] for r in per_rep if r.get("before_cpu")]
    return {
        "group": group,
        "figure": label,
        "unit": unit,
        "reference": reference,
        "reps": len(per_rep),
        "reference_figure": median([r["reference"] for r in per_rep]),
        "before": median([r["before"] for r in per_rep]),
        "after": median([r["after"] for r in per_rep]),
        "before_vs_reference": median([r["before"] / r["reference"] for r in per_rep]),
        "after_vs_reference": median([r["after"] / r["reference"] for r in per_rep]),
        "after_vs_before": ratio,
        "after_vs_before_per_rep": ratios,
        "threshold": THRESHOLD,
        "met": None if ratio is None else ratio >= THRESHOLD,
        "before_cpu": median([r.get("before_cpu", math.nan) for r in per_rep]),
        "after_cpu": median([r.get("after_cpu", math.nan) for r in per_rep]),
        "cpu_after_vs_before": median(cpu) if cpu else None,
        "per_rep": per_rep,
        **(extra or {}),
    }


def compare_bytes(
    work: Path,
    sizes: list[int],
    client_counts: list[int],
    reps: int,
    volume: int,
    core: int | None,
    record: Record,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    from bench.bytepath import ours, reference
    from bench.limits import byte_limits

    rows = []
    for size in sizes:
        data = work / f"data-{size}"
        with data.open("wb") as f:
            for _ in range(max(size // MiB, 1)):
                f.write(os.urandom(min(size, MiB)))
        for clients in client_counts:
            rounds = max(1, volume // (size * clients))
            runs: dict[str, list[dict[str, Any]]] = {"upload": [], "download": []}
            for rep in range(reps):
                limit = byte_limits(work, min(size * clients, 256 * MiB))["sha256_write_MBps"]
                for kind in ("upload", "download"):
                    label = f"{kind} {fmt_size(size)} x{clients} #{rep + 1}"
                    bare = reference(kind, data, clients, work, core, rounds)
                    one: dict[str, Any] = {"reference": limit, "bare_asgi": bare.MBps}
                    for side in record.order(rep):
                        t = ours(
                            kind,
                            data,
                            clients,
                            work,
                            core,
                            code_root=side.root,
                            log=work / f"server-{side.name}.log",
                            rounds=rounds,
                        )
                        record.served(side, label, t.code)
                        one[side.name] = t.MBps
                        one[f"{side.name}_cpu"] = t.cpu_s_per_GB
                    runs[kind].append(one)
            for kind, per_rep in runs.items():
                row = figure_row(
                    "bytes",
                    f"{kind} {fmt_size(size)} x{clients}",
                    "MB/s",
                    "sha256+write",
                    per_rep,
                    {
                        "scenario": kind,
                        "size": size,
                        "clients": clients,
                        "rounds": rounds,
                        "bare_asgi_MBps": median([r["bare_asgi"] for r in per_rep]),
                        **{
                            f"{side}_vs_bare_asgi": median(
                                [r[side] / r["bare_asgi"] for r in per_rep]
                            )
                            for side in ("before", "after")
                        },
                        "cpu_unit": "CPU s/GB",
                    },
                )
                rows.append(row)
                log_row(row, log)
        data.unlink()
    return rows


def compare_creates(
    db: str,
    admin_url: str | None,
    work: Path,
    reps: int,
    durations: Any,
    durable_seconds: float,
    core: int | None,
    record: Record,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """JSON creates into an empty store of each side's own schema: SQLite when admin_url is
    None, else a fresh PostgreSQL database per server."""
    from bench.limits import durable_create
    from bench.loadgen import drive
    from bench.metadata import create_requests, pg_database, phase, problems_of

    creates = create_requests()
    runs: dict[int, list[dict[str, Any]]] = {c: [] for c in CREATE_CONCURRENCY}
    for rep in range(reps):
        loop_dir = work / f"durable-{db}-{rep}"
        durable = durable_create(loop_dir, durable_seconds, core)["per_s"]
        shutil.rmtree(loop_dir, ignore_errors=True)
        ones: dict[int, dict[str, Any]] = {c: {"reference": durable} for c in CREATE_CONCURRENCY}
        for side in record.order(rep):
            data_dir = work / f"create-{db}-{side.name}-{rep}"
            url, drop = pg_database(admin_url) if admin_url else (None, lambda: None)
            try:
                with our_server(
                    data_dir,
                    core,
                    database_url=url,
                    log=work / f"server-{side.name}.log",
                    code_root=side.root,
                ) as server:
                    record.served(side, f"create {db} #{rep + 1}", server.code)
                    phases = [
                        phase(f"create:c{c}", c, durations.create, durations.warmup, creates)
                        for c in CREATE_CONCURRENCY
                    ]
                    results = drive(server.port, phases, server.pids())
            finally:
                drop()
                shutil.rmtree(data_dir, ignore_errors=True)
            record.problems += problems_of(f"baseline {side.name} {db}", *results)
            for c, result in zip(CREATE_CONCURRENCY, results, strict=True):
                ones[c][side.name] = result["rps"]
                ones[c][f"{side.name}_p99_ms"] = result["p99_ms"]
                # server CPU-seconds per create, in ms: steadier than the rate
                rate = result["rps"]
                ones[c][f"{side.name}_cpu"] = result["server_cpu"] / rate * 1e3 if rate else 0.0
        for c in CREATE_CONCURRENCY:
            runs[c].append(ones[c])
    rows = []
    for c, per_rep in runs.items():
        row = figure_row(
            f"creates {db}",
            f"JSON create 1 KiB, {db}, c{c}",
            "/s",
            "durable create loop",
            per_rep,
            {
                "database": db,
                "concurrency": c,
                "cpu_unit": "CPU ms per create",
                "before_p99_ms": median([r["before_p99_ms"] for r in per_rep]),
                "after_p99_ms": median([r["after_p99_ms"] for r in per_rep]),
            },
        )
        rows.append(row)
        log_row(row, log)
    return rows


def log_row(row: dict[str, Any], log: Callable[[str], None]) -> None:
    ratio = row["after_vs_before"]
    log(
        f"  {row['figure']:36} before {row['before']:9,.1f}  after {row['after']:9,.1f} "
        f"{row['unit']:5} after/before {'-' if ratio is None else f'{ratio:.3f}'} "
        f"({'met' if row['met'] else 'NOT MET'} at ≥ {THRESHOLD})"
    )


def run_baseline(
    setup: dict[str, Any],
    groups: set[str],
    *,
    reps: int,
    sizes: list[int],
    client_counts: list[int],
    volume: int,
    durations: Any,
    durable_seconds: float,
    databases: dict[str, str | None],
    work: Path,
    order: str = "ab",
    core: int | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The comparison: `databases` maps sqlite/postgresql to None (SQLite) or an admin URL;
    a database mapped to a string starting with "skipped" is listed as skipped."""
    record = Record(setup["sides"], order)
    out: dict[str, Any] = {
        "ref": setup["ref"],
        "sha": setup["sha"],
        "worktree": setup["worktree"],
        "lock": "requirements.lock identical",
        "threshold": THRESHOLD,
        "reps": reps,
        "order": order,
        "probes": setup["probes"],
        "figures": [],
        "skipped": {},
    }
    if "metadata" in groups:
        for db, admin in databases.items():
            if isinstance(admin, str) and admin.startswith("skipped"):
                out["skipped"][f"creates {db}"] = admin
                continue
            log(f"== baseline: creates on {db}")
            out["figures"] += compare_creates(
                db, admin, work, reps, durations, durable_seconds, core, record, log
            )
    if "bytes" in groups:
        log("== baseline: bytes")
        (work / "baseline-bytes").mkdir()
        out["figures"] += compare_bytes(
            work / "baseline-bytes", sizes, client_counts, reps, volume, core, record, log
        )
    out["sequence"] = record.sequence
    out["code"] = record.code
    out["problems"] = record.problems
    return out
