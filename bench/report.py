"""The targets of issue 15 (and those of issue 9 that still hold), evaluated against one run's
JSON, and the markdown of it: a table per section with figure, reference, ratio, target, met.

Every ratio is to a reference measured in the same run:
- reads: our get by id / the plain Litestar handler returning one record of the same shape and
  size (bench/litestar_ref.py /ref/get); our first page of 50 with a workflow filter / the same
  handler returning 50 summaries (/ref/list); both measured at each scale, right before ours;
- JSON creates: / the durable create loop (bench/durable.py, limits);
- bytes: upload and verified download MB/s / this machine's sha256+write MB/s (limits, the same
  repetition).

With --baseline (bench/baseline.py) the run is a before/after comparison instead: per figure,
the baseline ref's server ("before") and this tree's ("after"), each with its ratio to the same
reference, and after/before (the median of per-repetition ratios) against its threshold; the
targets are those comparisons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench.common import ROOT, fmt_size

UPLOAD_TARGET = 0.7  # x the same run's sha256+write MB/s
DOWNLOAD_TARGET = 1.5  # verified download, x sha256+write
RSS_TARGET_MIB = 64  # growth at 1 GiB (and 8 clients)
# JSON creates at c16, x the durable create loop (a SQLite commit: the target is SQLite's; other
# databases show the ratio without one)
CREATE_TARGETS = {"sqlite": 0.6}
# reads at c16, x the same-size plain Litestar reference: get by id, list of 50 with a workflow
# filter
READ_TARGETS = {"sqlite": {"get": 0.5, "list": 0.25}, "postgresql": {"get": 0.3, "list": 0.15}}
# the scales the SQLite read targets name: each one absent from a run shows as n/a
NAMED_SCALES = {"sqlite": (10_000, 1_000_000)}
TARGET_LIST = "workflow_id"
P99_SCALING_TARGET = 2.0  # list p99 at the largest scale / p99 at the smallest


def status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "not met")


def num(x: Any, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def times(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def at_least(goal: float | None) -> str:
    return "–" if goal is None else f"≥ {goal}×"


@dataclass
class Check:
    """One figure against its reference: what the tables and the targets are made of."""

    what: str
    figure: float | None
    unit: str
    reference: str
    ref_figure: float | None
    ratio: float | None
    goal: float | None  # a ratio at least this; None: shown, no target
    ours_bytes: int | None = None
    ref_bytes: int | None = None
    note: str = ""

    @property
    def ok(self) -> bool | None:
        if self.goal is None or self.ratio is None:
            return None
        return self.ratio >= self.goal


def scale_checks(db: str, scale: dict[str, Any], durable: float | None) -> list[Check]:
    """The read targets and the create target of one (database, scale)."""
    ref = scale.get("reference", {})
    rows = {(r["scenario"], r["filter"], r["concurrency"]): r for r in scale["results"]}
    out: list[Check] = []
    for what, key, kind in (
        ("get by id", ("get", None, 16), "get"),
        ("list of 50, workflow filter", ("list_first", TARGET_LIST, 16), "list"),
    ):
        r = rows.get(key)
        if r is None:
            continue
        rr = ref.get(kind, {})
        out.append(
            Check(
                what,
                r["rps"],
                "req/s",
                f"plain Litestar {rr.get('path', '/ref/' + kind)}",
                rr.get("rps"),
                r.get("vs_reference"),
                READ_TARGETS.get(db, {}).get(kind),
                r.get("body_bytes"),
                rr.get("body_bytes"),
                f"reference failed: {ref['error']}" if "error" in ref else "",
            )
        )
    create = rows.get(("create", "json_1KiB", 16))
    if create is not None:
        out.append(
            Check(
                "JSON create, 1 KiB",
                create["rps"],
                "/s",
                "durable create loop",
                durable,
                create["rps"] / durable if durable else None,
                CREATE_TARGETS.get(db),
                note="" if durable else "no durable loop in this run (--only)",
            )
        )
    return out


def byte_checks(r: dict[str, Any]) -> list[Check]:
    label = f"{r['scenario']} {fmt_size(r['size'])} x{r['clients']}"
    goal = UPLOAD_TARGET if r["scenario"] == "upload" else DOWNLOAD_TARGET
    ref = r.get("sha256_write_MBps")
    return [Check(label, r["MBps"], "MB/s", "sha256+write", ref, r["ratio"], goal)]


def evaluate(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with its figure, reference, ratio and status; also written into the JSON."""
    out: list[dict[str, Any]] = []

    def add(group: str, c: Check, what: str) -> None:
        out.append(
            {
                "group": group,
                "target": what,
                "figure": None if c.figure is None else f"{num(c.figure)} {c.unit}",
                "reference": f"{c.reference}"
                + ("" if c.ref_figure is None else f" {num(c.ref_figure)} {c.unit}"),
                "ratio": c.ratio,
                "goal": c.goal,
                "status": status(c.ok),
                "note": c.note,
            }
        )

    def missing(group: str, what: str, note: str) -> None:
        out.append(
            {
                "group": group,
                "target": what,
                "figure": None,
                "reference": "",
                "ratio": None,
                "goal": None,
                "status": "n/a",
                "note": note,
            }
        )

    baseline = report.get("baseline", {})
    for f in baseline.get("figures", []):
        out.append(
            {
                "group": "before/after",
                "target": f"{f['figure']}: after / before ≥ {f['threshold']}×",
                "figure": f"after {num(f['after'])} {f['unit']}",
                "reference": f"before ({baseline['sha'][:12]}) {num(f['before'])} {f['unit']}",
                "ratio": f["after_vs_before"],
                "goal": f["threshold"],
                "status": status(f["met"]),
                "note": f"median of {f['reps']} per-repetition ratios",
            }
        )

    rows = report.get("bytes", {}).get("results", [])
    for r in rows:
        for c in byte_checks(r):
            add("bytes", c, f"{c.what} ≥ {c.goal}× sha256+write")
        if r["size"] >= 1 << 30:
            growth = r["rss_growth_MiB"]
            out.append(
                {
                    "group": "bytes",
                    "target": f"{r['scenario']} {fmt_size(r['size'])} x{r['clients']} "
                    f"RSS growth < {RSS_TARGET_MIB} MiB",
                    "figure": f"{growth:.1f} MiB",
                    "reference": "",
                    "ratio": None,
                    "goal": None,
                    "status": status(growth < RSS_TARGET_MIB),
                    "note": "",
                }
            )
        if "vs_mlflow" in r:
            label = f"{r['scenario']} {fmt_size(r['size'])} x{r['clients']}"
            c = Check(label, r["MBps"], "MB/s", "MLflow", r.get("mlflow_MBps"), r["vs_mlflow"], 1.0)
            add("peer", c, f"{label} ahead of MLflow")
    if rows and not any("vs_mlflow" in r for r in rows):
        missing(
            "peer",
            "ahead of MLflow on every byte scenario",
            report.get("peer", {}).get("skipped", "not run"),
        )
    if rows and not any(r["size"] >= 1 << 30 and r["clients"] >= 8 for r in rows):
        missing(
            "bytes",
            f"RSS growth < {RSS_TARGET_MIB} MiB at 1 GiB and 8 clients",
            "no 1 GiB x8 in this run; --full has it",
        )

    durable = report.get("limits", {}).get("durable_create", {}).get("per_s")
    for db, result in report.get("metadata", {}).items():
        scales = result.get("scales", []) if isinstance(result, dict) else []
        group = f"metadata {db}"
        for scale in scales:
            n = f"{scale['rows']:,}"
            for c in scale_checks(db, scale, durable):
                if c.goal is not None:
                    add(group, c, f"{c.what} @{n} ≥ {c.goal}×")
        measured = {s["rows"] for s in scales}
        if scales:
            for rows_named in NAMED_SCALES.get(db, ()):
                if rows_named not in measured:
                    for kind, what in (
                        ("get", "get by id"),
                        ("list", "list of 50, workflow filter"),
                    ):
                        goal = READ_TARGETS[db][kind]
                        missing(
                            group,
                            f"{what} @{rows_named:,} ≥ {goal}×",
                            "scale not in this run"
                            + ("; --full has it" if rows_named == 1_000_000 else ""),
                        )
        if len(scales) >= 2:
            small, large = scales[0], scales[-1]
            before = {(r["scenario"], r["filter"]): r for r in small["results"]}
            for r in large["results"]:
                if not r["scenario"].startswith("list"):
                    continue
                base = before.get((r["scenario"], r["filter"]))
                if not base or not base.get("c1_p99_ms"):
                    continue
                ratio = r["c1_p99_ms"] / base["c1_p99_ms"]
                out.append(
                    {
                        "group": group,
                        "target": f"{r['scenario']} {r['filter']} p99 @{large['rows']:,} ≤ "
                        f"{P99_SCALING_TARGET}× p99 @{small['rows']:,}",
                        "figure": f"{r['c1_p99_ms']:.2f} ms",
                        "reference": f"p99 @{small['rows']:,} {base['c1_p99_ms']:.2f} ms",
                        "ratio": ratio,
                        "goal": None,
                        "status": status(ratio <= P99_SCALING_TARGET),
                        "note": "",
                    }
                )
        elif scales:
            missing(
                group,
                f"list p99 at the largest scale ≤ {P99_SCALING_TARGET}× p99 at the smallest",
                "one scale in this run",
            )
    return out


def check_table(checks: list[Check]) -> list[str]:
    lines = [
        "| what | figure | reference | reference figure | ratio | target | met | "
        "body bytes ours / ref |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        sizes = (
            f"{num(c.ours_bytes)} / {num(c.ref_bytes)}"
            if c.ours_bytes is not None or c.ref_bytes is not None
            else ""
        )
        note = f" ({c.note})" if c.note else ""
        lines.append(
            f"| {c.what} | {num(c.figure)} {c.unit} | {c.reference} | {num(c.ref_figure)} "
            f"{c.unit} | {times(c.ratio)} | {at_least(c.goal)} "
            f"| {'–' if c.goal is None else status(c.ok)}{note} | {sizes} |"
        )
    return lines


def shown(path: str) -> str:
    """A path relative to this tree when it is inside it."""
    return path.removeprefix(str(ROOT) + "/")


def baseline_section(b: dict[str, Any], commit: str) -> list[str]:
    """The before/after comparison of a --baseline run."""
    lines = [
        f"## Before/after: baseline `{b['ref']}` ({b['sha'][:12]}) against this tree (`{commit}`)",
        "",
    ]
    if "error" in b:
        return [*lines, f"Failed: {b['error']}", ""]
    code = b.get("code", {})
    served = "; ".join(
        f"{side}: {c['servers']} servers, `app` from "
        + ", ".join(f"`{shown(a)}`" for a in c["apps"])
        for side, c in code.items()
    )
    lines += [
        "Both servers ran on this tree's environment (the baseline's requirements.lock pins the "
        f"same), the baseline's code from its worktree `{shown(b['worktree'])}`; what each server "
        f"imported, as it reported: {served}. Per repetition ({b['reps']}): the reference, then "
        + (
            "before, then after"
            if b.get("order", "ab") == "ab"
            else "before and after, each first in every other repetition (--baseline-order abba)"
        )
        + ", each a fresh server pinned to the server core and warmed up right "
        "before its timed run. Before and after: medians over the repetitions; × ref: each "
        "side's median per-repetition ratio to the reference; after / before: the median of the "
        "per-repetition ratios (range: lowest–highest), met when at least "
        f"{b['threshold']}× (docs/benchmarks.md says why). Creates go into an empty store "
        "migrated by each side's own code.",
        "",
        "| figure | reference | reference figure | before | after | before × ref | after × ref "
        f"| after / before | range | met (≥ {b['threshold']}×) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in b.get("figures", []):
        ratios = f.get("after_vs_before_per_rep") or []
        spread = f"{min(ratios):.2f}–{max(ratios):.2f}" if ratios else "–"
        unit = f["unit"]
        lines.append(
            f"| {f['figure']} | {f['reference']} | {num(f['reference_figure'])} {unit} "
            f"| {num(f['before'])} {unit} | {num(f['after'])} {unit} "
            f"| {times(f['before_vs_reference'])} | {times(f['after_vs_reference'])} "
            f"| {times(f['after_vs_before'])} | {spread} | {status(f['met'])} |"
        )
    for what, why in b.get("skipped", {}).items():
        lines.append(f"| {what} | – | – | – | – | – | – | – | – | {why} |")
    figures = b.get("figures", [])
    if figures:
        lines += [
            "",
            "Server CPU per unit (MEASURED.md: steadier than the rate; no target, a second "
            "opinion: below 1× after costs less), and how the byte runs were made: each client "
            "repeats its transfer (transfers per client; every upload new bytes to a new "
            "artifact), beside the bare ASGI app doing the same transfers.",
            "",
            "| figure | CPU per unit | before | after | CPU after / before | transfers per client "
            "| bare ASGI MB/s | before × bare | after × bare |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for f in figures:
            bare = f.get("bare_asgi_MBps")
            lines.append(
                f"| {f['figure']} | {f.get('cpu_unit', '–')} | {num(f.get('before_cpu'), 2)} "
                f"| {num(f.get('after_cpu'), 2)} | {times(f.get('cpu_after_vs_before'))} "
                f"| {f.get('rounds', '–')} | {num(bare)} "
                f"| {times(f.get('before_vs_bare_asgi'))} | {times(f.get('after_vs_bare_asgi'))} |"
            )
    lines.append("")
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines: list[str] = []
    meta = report["run"]
    lines += [
        f"# Benchmark run {meta['date']} ({meta['mode']})",
        "",
        f"Commit `{meta.get('commit', '?')}`, {meta['elapsed_s']:.0f} s, {meta['machine']}. "
        f"Server pinned to core {meta['server_core']}, clients on core {meta['client_core']}. "
        "Every ratio is to a reference measured in this run.",
        "",
    ]
    if report.get("errors"):
        lines += ["**Errors:**", ""] + [f"- {e}" for e in report["errors"]] + [""]

    if "baseline" in report:
        lines += baseline_section(report["baseline"], meta.get("commit", "?"))
    limits = report.get("limits", {})
    if "limits" in report or "bytes" in report:
        lines += ["## Limits", "", "| figure | value |", "|---|---|"]
    b = report.get("bytes", {}).get("limits", {})
    for key, label in (
        ("sha256_MBps", "sha256, one core"),
        ("sha256_write_MBps", "sha256 + write"),
        ("sha256_write_fsync_MBps", "sha256 + write + fsync"),
    ):
        if key in b:
            lines.append(f"| {label} | {b[key]:,.0f} MB/s |")
    if "durable_create" in limits:
        lines.append(
            "| durable create loop (staging write, fsync, link, dir fsync, SQLite WAL commit, "
            f"synchronous=FULL) | {limits['durable_create']['per_s']:,.0f} /s |"
        )
    names = {
        "bare_asgi_uvicorn": "bare ASGI fixed small JSON, uvicorn, c16",
        "litestar_uvicorn": "plain Litestar fixed small JSON (/json), uvicorn, c16",
        "bare_asgi_granian": "bare ASGI fixed small JSON, granian, c16",
    }
    for key, r in limits.get("requests", {}).items():
        if "error" in r:
            lines.append(f"| {names.get(key, key)} | error: {r['error'][:120]} |")
        else:
            lines.append(
                f"| {names.get(key, key)} | {r['rps']:,.0f} req/s (p99 {r['p99_ms']:.1f} ms; "
                f"server CPU {r['server_cpu']:.2f}, client CPU {r['client_cpu']:.2f}) |"
            )
    for key, why in limits.get("skipped", {}).items():
        lines.append(f"| {names.get(key, key)} | skipped: {why} |")
    lines.append("")

    rows = report.get("bytes", {}).get("results", [])
    if rows:
        lines += [
            "## Bytes",
            "",
            "Reference: this machine's sha256+write MB/s, measured in the same repetition "
            "(downloads are verified: hashed as they are sent). × bare ASGI: the same transfer "
            "through bench/reference.py.",
            "",
            "| scenario | size | clients | MB/s | sha256+write MB/s | ratio | target | met "
            "| × bare ASGI | CPU s/GB | RSS growth | RSS target | peak RSS |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            [c] = byte_checks(r)
            if r["size"] >= 1 << 30:
                rss = f"< {RSS_TARGET_MIB} MiB: {status(r['rss_growth_MiB'] < RSS_TARGET_MIB)}"
            else:
                rss = "–"
            lines.append(
                f"| {r['scenario']} | {fmt_size(r['size'])} | {r['clients']} | {r['MBps']:,.0f} "
                f"| {num(c.ref_figure)} | {times(c.ratio)} | {at_least(c.goal)} | {status(c.ok)} "
                f"| {r['vs_reference']:.2f}× | {r['cpu_s_per_GB']:.2f} "
                f"| {r['rss_growth_MiB']:.1f} MiB | {rss} | {r['peak_rss_MiB']:.0f} MiB |"
            )
        lines.append("")
    elif "bytes" in report.get("skipped", {}):
        lines += ["## Bytes", "", f"Skipped: {report['skipped']['bytes']}", ""]

    if "bytes" in report or "peer" in report:
        lines += ["## Peer: the MLflow artifact server", ""]
        peer_rows = [r for r in rows if "vs_mlflow" in r]
        if peer_rows:
            lines += [
                "`mlflow server --artifacts-only --workers 1` (its job runner off), pinned like "
                "ours; one server for the run, as it takes 30-60 s to start here, with a warm-up "
                "before each timed transfer; the same files through PUT/GET "
                "`/api/2.0/mlflow-artifacts/artifacts/…`. Its CPU and RSS cover all its "
                "processes.",
                "",
                "| scenario | size | clients | ours MB/s | MLflow MB/s | ours / MLflow | ahead | "
                "MLflow CPU s/GB | MLflow peak RSS |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for r in peer_rows:
                lines.append(
                    f"| {r['scenario']} | {fmt_size(r['size'])} | {r['clients']} "
                    f"| {r['MBps']:,.0f} | {r['mlflow_MBps']:,.0f} | {r['vs_mlflow']:.2f} "
                    f"| {status(r['vs_mlflow'] > 1)} | {r['mlflow_cpu_s_per_GB']:.2f} "
                    f"| {r['mlflow_peak_rss_MiB']:.0f} MiB |"
                )
        else:
            lines.append(f"Skipped: {report.get('peer', {}).get('skipped', 'not run')}.")
        lines.append("")

    durable = limits.get("durable_create", {}).get("per_s")
    for db, result in report.get("metadata", {}).items():
        lines += [f"## Metadata: {db}", ""]
        if not isinstance(result, dict) or "scales" not in result:
            lines += [f"Skipped: {str(result).removeprefix('skipped: ')}", ""]
            continue
        lines += [
            "Reads at concurrency 16 against the plain Litestar reference of the same size, "
            "measured at each scale right before ours (bench/litestar_ref.py: `/ref/get` one "
            "record, `/ref/list` 50 summaries); creates against the durable create loop "
            f"({num(durable)} /s). In the detail: req/s at the concurrency shown, p50/p99 at "
            "concurrency 1 (creates: at their own concurrency); × ref is to `/ref/get` for gets "
            "and to `/ref/list` for every list (a target only for the first page with a "
            "workflow filter). Server CPU: cores used by the server process (PostgreSQL's own "
            "processes are not pinned and not counted).",
            "",
        ]
        for scale in result["scales"]:
            load = scale["load"]
            lines += [
                f"### {scale['rows']:,} artifacts (loader: {load['added']:,} rows in "
                f"{load['seconds']:.1f} s)",
                "",
                *check_table(scale_checks(db, scale, durable)),
                "",
                "| scenario | filter | matching | c | req/s | × ref | p50 ms | p99 ms | "
                "server CPU | body bytes |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            ref = scale.get("reference", {})
            for kind in ("get", "list"):
                if kind in ref:
                    r = ref[kind]
                    lines.append(
                        f"| reference | `{r['path']}` | | 16 | {r['rps']:,.0f} | – "
                        f"| {num(r.get('c1_p50_ms'), 2)} | {num(r.get('c1_p99_ms'), 2)} "
                        f"| {r['server_cpu']:.2f} | {num(r['body_bytes'])} |"
                    )
            for r in scale["results"]:
                if r["scenario"] == "create":
                    ratio = r["rps"] / durable if durable else None
                    p50, p99 = r["p50_ms"], r["p99_ms"]
                    against = "durable loop"
                else:
                    ratio = r.get("vs_reference")
                    p50, p99 = r.get("c1_p50_ms"), r.get("c1_p99_ms")
                    against = f"ref {r.get('reference', '?')}"
                where = r.get("cursor_position")
                matching = num(r.get("matching")) if "matching" in r else ""
                if where and r["scenario"] == "list_deep":
                    matching += f" (cursor at {where:,})"
                lines.append(
                    f"| {r['scenario']} | {r['filter'] or ''} | {matching} "
                    f"| {r['concurrency']} | {r['rps']:,.0f} "
                    f"| {times(ratio)}{' ' + against if ratio is not None else ''} "
                    f"| {num(p50, 2)} | {num(p99, 2)} | {r['server_cpu']:.2f} "
                    f"| {num(r.get('body_bytes'))} |"
                )
            lines.append("")
        scales = result["scales"]
        if len(scales) >= 2:
            lines += [
                "### List p99 (concurrency 1) across scales",
                "",
                "| scenario | filter | "
                + " | ".join(f"p99 @{s['rows']:,}" for s in scales)
                + " | largest / smallest | target | met |",
                "|---|---|" + "---|" * len(scales) + "---|---|---|",
            ]
            keyed: list[dict[tuple[str, str], Any]] = [
                {(r["scenario"], r["filter"]): r for r in s["results"]} for s in scales
            ]
            for kind, filt in keyed[0]:
                if not kind.startswith("list"):
                    continue
                p99s = [k.get((kind, filt), {}).get("c1_p99_ms") for k in keyed]
                ratio = p99s[-1] / p99s[0] if p99s[0] and p99s[-1] else None
                ok = None if ratio is None else ratio <= P99_SCALING_TARGET
                lines.append(
                    f"| {kind} | {filt} | "
                    + " | ".join(num(p, 2) for p in p99s)
                    + f" | {times(ratio)} | ≤ {P99_SCALING_TARGET}× | {status(ok)} |"
                )
            lines.append("")

    targets = report.get("targets", [])
    if targets:
        met = sum(t["status"] == "met" for t in targets)
        gap = sum(t["status"] == "not met" for t in targets)
        lines += [f"## Targets: {met} met, {gap} not met, {len(targets) - met - gap} n/a", ""]
        lines += [
            "| group | target | figure | reference | ratio | met |",
            "|---|---|---|---|---|---|",
        ]
        for t in targets:
            note = f" ({t['note']})" if t.get("note") else ""
            lines.append(
                f"| {t['group']} | {t['target']} | {t['figure'] or '–'} | {t['reference'] or '–'} "
                f"| {times(t['ratio'])} | {t['status']}{note} |"
            )
        lines.append("")
    return "\n".join(lines)
