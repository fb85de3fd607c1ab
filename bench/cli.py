"""The benchmark suite: limits, bytes (with the MLflow peer) and metadata on SQLite and
PostgreSQL, every figure a ratio to a reference measured in the same run.

  scripts/bench            quick mode (under 5 minutes here): 1 and 64 MiB; 10k artifacts
  scripts/bench --full     1 MiB, 64 MiB and 1 GiB, 3 repetitions; 10k, 100k and 1M artifacts
  scripts/bench --smoke    seconds: tiny sizes, no peer (CI runs it; no timing is asserted)
  scripts/bench --baseline REF [--only bytes|metadata]
                           before/after: the create and byte figures of the server of git ref
                           REF ("before") and of this tree ("after"), alternated in one run

Reads are compared with a plain Litestar handler answering JSON of the same size
(bench/litestar_ref.py, measured at each scale right before ours), JSON creates with the durable
create loop, bytes with this machine's sha256+write.

Writes bench-results/<date>.json (every raw figure and ratio) and .md (a table per section:
figure, reference, ratio, target, met). How it measures: ../shared/design/MEASURED.md and
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import ROOT, MiB, pinning

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass
class Mode:
    name: str
    sizes: list[int]
    clients: list[int]
    reps: int
    scales: list[int]
    warmup: float
    throughput: float
    latency: float
    create: float
    reference_seconds: float
    durable_seconds: float
    peer: bool
    extra: dict[str, Any] = field(default_factory=dict)


MODES = {
    "smoke": Mode("smoke", [MiB], [1], 1, [1000], 0.2, 0.3, 0.3, 0.3, 0.5, 0.5, peer=False),
    "quick": Mode(
        "quick", [MiB, 64 * MiB], [1, 8], 1, [10_000], 0.3, 1.5, 0.75, 1.5, 2.0, 2.0, peer=True
    ),
    "full": Mode(
        "full",
        [MiB, 64 * MiB, 1 << 30],
        [1, 8],
        3,
        [10_000, 100_000, 1_000_000],
        1.0,
        5.0,
        3.0,
        5.0,
        5.0,
        5.0,
        peer=True,
    ),
}


def postgres_admin_url(arg: str | None) -> str | None:
    """--postgres, BENCH_POSTGRES_URL or ARTIFACTS_TEST_POSTGRES_URL, else 127.0.0.1:5432 when
    something answers there; None for none."""
    url = (
        arg or os.environ.get("BENCH_POSTGRES_URL") or os.environ.get("ARTIFACTS_TEST_POSTGRES_URL")
    )
    if url:
        return url
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return DEFAULT_PG
    except OSError:
        return None


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=10,
            check=False,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="the default")
    which.add_argument("--full", action="store_true")
    which.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--only",
        help="comma-separated groups: limits,bytes,metadata (with --baseline: bytes,metadata)",
    )
    parser.add_argument(
        "--reps",
        type=int,
        help="byte repetitions, or with --baseline the repetitions of every compared figure "
        "(median of ratios reported)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="compare the create and byte figures of this tree's server with those of git ref "
        "REF's, alternated in this run (a worktree of REF under var/bench-baseline/)",
    )
    parser.add_argument("--scales", help="artifact counts, e.g. 10000,100000")
    parser.add_argument(
        "--baseline-order",
        choices=["ab", "abba"],
        default="ab",
        help="with --baseline: before then after in every repetition (ab, the default), or "
        "after first in every other repetition (abba)",
    )
    parser.add_argument(
        "--postgres", help=f"admin URL to create a database on (default {DEFAULT_PG} if it answers)"
    )
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--no-peer", action="store_true", help="skip MLflow")
    parser.add_argument("--peer", action="store_true", help="run MLflow even in --smoke")
    parser.add_argument(
        "--no-bench-venv",
        action="store_true",
        help="do not make var/bench-venv: no MLflow peer, no granian reference",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args(argv)

    mode = MODES["full" if args.full else "smoke" if args.smoke else "quick"]
    if args.reps:
        mode.reps = args.reps
    if args.scales:
        mode.scales = [int(x) for x in args.scales.split(",")]
    default_groups = "bytes,metadata" if args.baseline else "limits,bytes,metadata"
    groups = set((args.only or default_groups).split(","))
    log = lambda text: print(text, flush=True)  # noqa: E731
    started = time.monotonic()
    setup: dict[str, Any] | None = None
    if args.baseline:
        from bench.baseline import BaselineRefused, prepare

        if not groups or groups - {"bytes", "metadata"}:
            parser.error(
                "with --baseline, --only takes bytes and/or metadata (the references are "
                "measured inside each repetition)"
            )
        try:  # before anything is measured
            setup = prepare(args.baseline, git_commit(), log)
        except BaselineRefused as exc:
            print(f"bench: refusing --baseline {args.baseline}: {exc}", file=sys.stderr)
            return 2
    server_core, client_core = pinning()
    if client_core is not None:
        os.sched_setaffinity(0, {client_core})  # this process and the load generators it starts

    report: dict[str, Any] = {"errors": [], "skipped": {}, "mode": asdict(mode)}

    def attempt(group: str, func: Any, *a: Any, **kw: Any) -> Any:
        t = time.monotonic()
        try:
            return func(*a, **kw)
        except Exception as exc:
            report["errors"].append(f"{group}: {type(exc).__name__}: {exc}")
            log(f"bench: {group} failed:\n{traceback.format_exc()}")
            return {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            log(f"bench: {group} took {time.monotonic() - t:.1f} s")

    bench_python: Path | None = None
    if args.no_bench_venv:
        bench_why = "--no-bench-venv"
    elif setup is not None:
        bench_why = "--baseline (no peer and no granian in a before/after run)"
    elif mode.name == "smoke" and not args.peer:
        bench_why = "--smoke (the bench-only environment is not made in smoke runs)"
    else:
        from bench.envs import BenchEnvUnavailable, bench_venv

        try:
            bench_python = bench_venv()
            bench_why = ""
        except BenchEnvUnavailable as exc:
            bench_why = str(exc)
            report["errors"].append(f"bench-venv: {exc}")

    base = ROOT / "var"
    base.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base, prefix="bench-") as tmp:
        work = Path(tmp)
        if setup is not None:
            report["baseline"] = attempt(
                "baseline", run_comparison, args, mode, setup, groups, work, server_core, log
            )
            report["errors"] += report["baseline"].get("problems", [])
            groups = set()  # the comparison is the whole run
        if "limits" in groups:
            log("== limits")
            report["limits"] = attempt(
                "limits", run_limits, mode, work, server_core, bench_python, bench_why, log
            )
            for name, r in report["limits"].get("requests", {}).items():
                if "error" in r:
                    report["errors"].append(f"limits: reference {name}: {r['error']}")
        if "bytes" in groups:
            log("== bytes")
            peer_python = bench_python if (mode.peer or args.peer) and not args.no_peer else None
            if peer_python is None:
                why = "--no-peer" if args.no_peer else bench_why or f"--{mode.name}"
                report["peer"] = {"skipped": why}
            else:
                report["peer"] = {"server": "mlflow server --artifacts-only --workers 1"}
            from bench.bytepath import run_bytes

            (work / "bytes").mkdir()
            report["bytes"] = attempt(
                "bytes",
                run_bytes,
                work / "bytes",
                mode.sizes,
                mode.clients,
                mode.reps,
                server_core,
                peer_python,
                log,
            )
        if "metadata" in groups:
            report["metadata"] = run_databases(args, mode, work, server_core, report, attempt, log)
    from bench.report import evaluate, markdown

    report["targets"] = evaluate(report)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    report["run"] = {
        "date": stamp,
        "mode": mode.name,
        "commit": git_commit(),
        "elapsed_s": time.monotonic() - started,
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        "server_core": server_core,
        "client_core": client_core,
        "load_average": os.getloadavg(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{stamp}.json"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    text = markdown(report)
    (args.out / f"{stamp}.md").write_text(text + "\n")
    print(text)
    log(
        f"bench: wrote {json_path} and {json_path.with_suffix('.md')} "
        f"in {report['run']['elapsed_s']:.0f} s"
    )
    return 1 if report["errors"] else 0


def run_limits(
    mode: Mode, work: Path, core: int | None, bench_python: Path | None, why: str, log: Any
) -> dict[str, Any]:
    from bench.limits import durable_create, request_references

    out: dict[str, Any] = {}
    out["durable_create"] = durable_create(work / "durable", mode.durable_seconds, core)
    log(f"  durable create loop: {out['durable_create']['per_s']:,.0f} /s")
    out["requests"] = request_references(
        str(bench_python) if bench_python else None,
        core,
        work,
        concurrency=16,
        duration=mode.reference_seconds,
        warmup=mode.warmup,
    )
    for name, r in out["requests"].items():
        log(
            f"  {name}: "
            + (
                f"{r['rps']:,.0f} req/s (server CPU {r['server_cpu']:.2f}, "
                f"client CPU {r['client_cpu']:.2f})"
                if "rps" in r
                else r["error"]
            )
        )
    if bench_python is None:
        out["skipped"] = {"bare_asgi_granian": why}
    return out


def run_comparison(
    args: argparse.Namespace,
    mode: Mode,
    setup: dict[str, Any],
    groups: set[str],
    work: Path,
    core: int | None,
    log: Any,
) -> dict[str, Any]:
    """--baseline: bench/baseline.py over the mode's byte sizes (up to 64 MiB) and client counts,
    and creates on SQLite and, when one answers, PostgreSQL."""
    from bench.baseline import REPS, SIZES, VOLUME, run_baseline
    from bench.metadata import Durations

    databases: dict[str, str | None] = {"sqlite": None}
    admin = None if args.no_postgres else postgres_admin_url(args.postgres)
    databases["postgresql"] = admin or (
        "skipped: --no-postgres"
        if args.no_postgres
        else "skipped: nothing answers on 127.0.0.1:5432 (give --postgres)"
    )
    return run_baseline(
        setup,
        groups,
        reps=args.reps or REPS[mode.name],
        sizes=SIZES[mode.name],
        client_counts=mode.clients,
        volume=VOLUME[mode.name],
        durations=Durations(mode.warmup, mode.throughput, mode.latency, mode.create),
        durable_seconds=mode.durable_seconds,
        databases=databases,
        work=work,
        order=args.baseline_order,
        core=core,
        log=log,
    )


def run_databases(
    args: argparse.Namespace,
    mode: Mode,
    work: Path,
    core: int | None,
    report: dict[str, Any],
    attempt: Any,
    log: Any,
) -> dict[str, Any]:
    from bench.metadata import Durations, pg_database, run_metadata

    durations = Durations(mode.warmup, mode.throughput, mode.latency, mode.create)
    out: dict[str, Any] = {}
    log("== metadata: sqlite")
    out["sqlite"] = attempt(
        "metadata sqlite", run_metadata, "sqlite", None, work, mode.scales, durations, core, log
    )
    admin = None if args.no_postgres else postgres_admin_url(args.postgres)
    if admin is None:
        out["postgresql"] = "skipped: " + (
            "--no-postgres"
            if args.no_postgres
            else "nothing answers on 127.0.0.1:5432 (give --postgres)"
        )
        report["skipped"]["postgresql"] = out["postgresql"]
    else:
        log("== metadata: postgresql")
        try:
            url, drop = pg_database(admin)
        except Exception as exc:
            report["errors"].append(f"metadata postgresql: cannot create a database: {exc}")
            out["postgresql"] = {"error": str(exc)}
        else:
            try:
                out["postgresql"] = attempt(
                    "metadata postgresql",
                    run_metadata,
                    "postgresql",
                    url,
                    work,
                    mode.scales,
                    durations,
                    core,
                    log,
                )
            finally:
                drop()
    for result in out.values():
        for scale in result.get("scales", []) if isinstance(result, dict) else []:
            report["errors"] += scale["problems"]
    return out


if __name__ == "__main__":
    sys.exit(main())
