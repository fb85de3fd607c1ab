"""The targets of issue 9, evaluated against one run's JSON, and the markdown table of it."""

from __future__ import annotations

import math
from typing import Any

from bench.common import fmt_size

UPLOAD_TARGET = 0.6  # x the same run's sha256+write MB/s
DOWNLOAD_TARGET = 1.5
RSS_TARGET_MIB = 64  # growth at 1 GiB
CREATE_TARGET = 0.6  # x the in-process durable-create loop
READ_TARGET = 0.3  # x a plain Litestar fixed-JSON handler
P99_SCALING_TARGET = 2.0  # p99 at the largest scale / p99 at the smallest


def status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "gap")


def num(x: Any, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def times(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}x"


def read_reference(report: dict[str, Any]) -> tuple[str, float | None]:
    """(name, req/s) of the small-request reference: Litestar when it ran, else bare ASGI."""
    refs = report.get("limits", {}).get("requests", {})
    for name in ("litestar_uvicorn", "bare_asgi_uvicorn"):
        rps = refs.get(name, {}).get("rps")
        if rps:
            return name, float(rps)
    return "none", None


def evaluate(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with its figure and status; also written into the JSON."""
    out: list[dict[str, Any]] = []

    def add(group: str, what: str, figure: str, ok: bool | None, note: str = "") -> None:
        out.append(
            {"group": group, "target": what, "figure": figure, "status": status(ok), "note": note}
        )

    rows = report.get("bytes", {}).get("results", [])
    for r in rows:
        label = f"{r['scenario']} {fmt_size(r['size'])} x{r['clients']}"
        goal = UPLOAD_TARGET if r["scenario"] == "upload" else DOWNLOAD_TARGET
        add("bytes", f"{label} >= {goal}x sha256+write", f"{r['ratio']:.2f}x", r["ratio"] >= goal)
        if r["size"] >= 1 << 30:
            add(
                "bytes",
                f"{label} RSS growth < {RSS_TARGET_MIB} MiB",
                f"{r['rss_growth_MiB']:.1f} MiB",
                r["rss_growth_MiB"] < RSS_TARGET_MIB,
            )
        if "vs_mlflow" in r:
            add("peer", f"{label} ahead of MLflow", f"{r['vs_mlflow']:.2f}x", r["vs_mlflow"] > 1)
    if rows and not any("vs_mlflow" in r for r in rows):
        add(
            "peer",
            "ahead of MLflow on every byte scenario",
            "–",
            None,
            report.get("peer", {}).get("skipped", "not run"),
        )
    if rows and not any(r["size"] >= 1 << 30 for r in rows):
        add(
            "bytes",
            f"RSS growth < {RSS_TARGET_MIB} MiB at 1 GiB",
            "–",
            None,
            "no 1 GiB in this mode",
        )

    durable = report.get("limits", {}).get("durable_create", {}).get("per_s")
    ref_name, ref_rps = read_reference(report)
    for db, result in report.get("metadata", {}).items():
        scales = result.get("scales", []) if isinstance(result, dict) else []
        for scale in scales:
            n = f"{scale['rows']:,}"
            for r in scale["results"]:
                if r["scenario"] == "create" and r["concurrency"] == 16:
                    ratio = r["rps"] / durable if durable else None
                    add(
                        f"metadata {db}",
                        f"create c16 @{n} >= {CREATE_TARGET}x durable loop",
                        times(ratio),
                        None if ratio is None else ratio >= CREATE_TARGET,
                    )
                elif r["scenario"] in ("get", "list_first"):
                    ratio = r["rps"] / ref_rps if ref_rps else None
                    what = (
                        "get by id" if r["scenario"] == "get" else f"list first page {r['filter']}"
                    )
                    add(
                        f"metadata {db}",
                        f"{what} @{n} >= {READ_TARGET}x {ref_name}",
                        times(ratio),
                        None if ratio is None else ratio >= READ_TARGET,
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
                add(
                    f"metadata {db}",
                    f"{r['scenario']} {r['filter']} p99 @{large['rows']:,} <= "
                    f"{P99_SCALING_TARGET}x p99 @{small['rows']:,}",
                    f"{ratio:.2f}x",
                    ratio <= P99_SCALING_TARGET,
                )
        elif scales:
            add(
                f"metadata {db}",
                f"list p99 at 1M <= {P99_SCALING_TARGET}x p99 at 10k",
                "–",
                None,
                "one scale in this mode",
            )
    return out


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

    limits = report.get("limits", {})
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
        "bare_asgi_uvicorn": "bare ASGI fixed JSON, uvicorn, c16",
        "litestar_uvicorn": "plain Litestar fixed JSON, uvicorn, c16",
        "bare_asgi_granian": "bare ASGI fixed JSON, granian, c16",
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
            "| scenario | size | clients | MB/s | × sha256+write | target | × bare ASGI | "
            "CPU s/GB | RSS growth | peak RSS |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            byte_goal = UPLOAD_TARGET if r["scenario"] == "upload" else DOWNLOAD_TARGET
            lines.append(
                f"| {r['scenario']} | {fmt_size(r['size'])} | {r['clients']} | {r['MBps']:,.0f} "
                f"| {r['ratio']:.2f} | ≥ {byte_goal}: {status(r['ratio'] >= byte_goal)} "
                f"| {r['vs_reference']:.2f} | {r['cpu_s_per_GB']:.2f} "
                f"| {r['rss_growth_MiB']:.1f} MiB | {r['peak_rss_MiB']:.0f} MiB |"
            )
        lines.append("")
    elif "bytes" in report.get("skipped", {}):
        lines += ["## Bytes", "", f"Skipped: {report['skipped']['bytes']}", ""]

    lines += ["## Peer: the MLflow artifact server", ""]
    peer_rows = [r for r in rows if "vs_mlflow" in r]
    if peer_rows:
        lines += [
            "`mlflow server --artifacts-only --workers 1` (its job runner off), pinned like ours; "
            "one server for the run, as it takes 30-60 s to start here, with a warm-up before "
            "each timed transfer; the same files through PUT/GET "
            "`/api/2.0/mlflow-artifacts/artifacts/…`. Its CPU and RSS cover all its processes.",
            "",
            "| scenario | size | clients | ours MB/s | MLflow MB/s | ours / MLflow | ahead | "
            "MLflow CPU s/GB | MLflow peak RSS |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in peer_rows:
            lines.append(
                f"| {r['scenario']} | {fmt_size(r['size'])} | {r['clients']} | {r['MBps']:,.0f} "
                f"| {r['mlflow_MBps']:,.0f} | {r['vs_mlflow']:.2f} | {status(r['vs_mlflow'] > 1)} "
                f"| {r['mlflow_cpu_s_per_GB']:.2f} | {r['mlflow_peak_rss_MiB']:.0f} MiB |"
            )
    else:
        lines.append(f"Skipped: {report.get('peer', {}).get('skipped', 'not run')}.")
    lines.append("")

    durable = limits.get("durable_create", {}).get("per_s")
    ref_name, ref_rps = read_reference(report)
    for db, result in report.get("metadata", {}).items():
        lines += [f"## Metadata: {db}", ""]
        if not isinstance(result, dict) or "scales" not in result:
            lines += [f"Skipped: {result}", ""]
            continue
        lines += [
            f"Reads against {ref_name} ({num(ref_rps)} req/s), creates against the durable loop "
            f"({num(durable)} /s). req/s at the concurrency shown; p50/p99 at concurrency 1 "
            "(creates: at their own concurrency). Server CPU: cores used by the server process "
            "(PostgreSQL's own processes are not pinned and not counted).",
            "",
        ]
        for scale in result["scales"]:
            load = scale["load"]
            lines += [
                f"### {scale['rows']:,} artifacts (loader: {load['added']:,} rows in "
                f"{load['seconds']:.1f} s)",
                "",
                "| scenario | filter | matching | c | req/s | × ref | target | p50 ms | p99 ms | "
                "server CPU |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in scale["results"]:
                ratio: float | None
                goal: float | None
                if r["scenario"] == "create":
                    ratio = r["rps"] / durable if durable else None
                    goal = CREATE_TARGET if r["concurrency"] == 16 else None
                    p50, p99 = r["p50_ms"], r["p99_ms"]
                else:
                    ratio = r["rps"] / ref_rps if ref_rps else None
                    goal = READ_TARGET if r["scenario"] in ("get", "list_first") else None
                    p50, p99 = r.get("c1_p50_ms"), r.get("c1_p99_ms")
                target = (
                    "–" if goal is None or ratio is None else f"≥ {goal}: {status(ratio >= goal)}"
                )
                where = r.get("cursor_position")
                matching = num(r.get("matching")) if "matching" in r else ""
                if where and r["scenario"] == "list_deep":
                    matching += f" (cursor at {where:,})"
                lines.append(
                    f"| {r['scenario']} | {r['filter'] or ''} | {matching} "
                    f"| {r['concurrency']} | {r['rps']:,.0f} | {num(ratio, 2)} | {target} "
                    f"| {num(p50, 2)} | {num(p99, 2)} | {r['server_cpu']:.2f} |"
                )
            lines.append("")
        scales = result["scales"]
        if len(scales) >= 2:
            lines += [
                "### List p99 (concurrency 1) across scales",
                "",
                "| scenario | filter | "
                + " | ".join(f"p99 @{s['rows']:,}" for s in scales)
                + f" | largest / smallest | ≤ {P99_SCALING_TARGET} |",
                "|---|---|" + "---|" * len(scales) + "---|---|",
            ]
            keyed: list[dict[tuple[str, str], Any]] = [
                {(r["scenario"], r["filter"]): r for r in s["results"]} for s in scales
            ]
            for kind, filt in keyed[0]:
                if not kind.startswith("list"):
                    continue
                p99s = [k.get((kind, filt), {}).get("c1_p99_ms") for k in keyed]
                ratio = p99s[-1] / p99s[0] if p99s[0] and p99s[-1] else None
                lines.append(
                    f"| {kind} | {filt} | "
                    + " | ".join(num(p, 2) for p in p99s)
                    + f" | {num(ratio, 2)} | {status(None if ratio is None else ratio <= P99_SCALING_TARGET)} |"  # noqa: E501
                )
            lines.append("")

    targets = report.get("targets", [])
    if targets:
        met = sum(t["status"] == "met" for t in targets)
        gap = sum(t["status"] == "gap" for t in targets)
        lines += [f"## Targets: {met} met, {gap} gap, {len(targets) - met - gap} n/a", ""]
        lines += ["| group | target | figure | status |", "|---|---|---|---|"]
        for t in targets:
            note = f" ({t['note']})" if t.get("note") else ""
            lines.append(f"| {t['group']} | {t['target']} | {t['figure']} | {t['status']}{note} |")
        lines.append("")
    return "\n".join(lines)
