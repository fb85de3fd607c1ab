"""`wfa`: push files to a workflow-artifacts server and pull them back, for people and CI.

    wfa push PATH… --workflow W [--phase P] [--session S] [--type T] [--primary]
                               [--derived-from ID]… [--jobs N]
    wfa pull --workflow W [--phase P] [--deliverables] [--jobs N] DEST
    wfa ls [filters]   wfa cat ID   wfa rm ID   wfa lineage ID

The server and key come from --url / --api-key or ARTIFACTS_URL / ARTIFACTS_API_KEY. Exit
codes: 0 all done, 1 something failed (each failure is listed), 2 bad usage or configuration,
130 interrupted. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from workflow_artifacts_client import _common
from workflow_artifacts_client._sync import ArtifactsClient
from workflow_artifacts_client.cli import output
from workflow_artifacts_client.errors import ArtifactsError, ConfigurationError
from workflow_artifacts_client.models import Artifact, Lineage

MANIFEST = "wfa-manifest.json"
TYPES_BY_SUFFIX = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".json": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".txt": "text",
    ".py": "code",
    ".js": "code",
    ".ts": "code",
    ".go": "code",
    ".rs": "code",
    ".java": "code",
    ".sh": "script",
    ".toml": "configuration",
    ".ini": "configuration",
    ".cfg": "configuration",
}


class UsageError(Exception):
    """Bad arguments: exit 2."""


class Stopped(Exception):
    """Raised in a transfer's progress callback once another one failed unexpectedly or the
    run was interrupted: files in flight stop at their next chunk."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `wfa` (console script); returns the exit code when called directly."""
    code = run(argv)
    if argv is None:
        sys.exit(code)
    return code


def run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        client = ArtifactsClient(
            getattr(args, "url", None),
            getattr(args, "api_key", None),
            timeout=getattr(args, "timeout", 60.0),
            retry=_common.Retry(attempts=getattr(args, "retries", 5)),
        )
    except ConfigurationError as exc:
        return fail(str(exc), 2)
    try:
        with client:
            return int(args.handler(client, args))
    except UsageError as exc:
        return fail(str(exc), 2)
    except ConfigurationError as exc:
        return fail(str(exc), 2)
    except ArtifactsError as exc:
        return fail(str(exc), 1)
    except BrokenPipeError:  # `wfa cat ID | head`: the reader left, as it may
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        return fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), 1)
    except KeyboardInterrupt:
        return fail("interrupted", 130)


def fail(message: str, code: int) -> int:
    print(f"wfa: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)  # accepted before or after the command
    common.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help="server URL (default: $ARTIFACTS_URL, else http://127.0.0.1:8000)",
    )
    common.add_argument(
        "--api-key", default=argparse.SUPPRESS, help="API key (default: $ARTIFACTS_API_KEY)"
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        help="seconds to wait for the server (60)",
    )
    common.add_argument(
        "--retries", type=int, default=argparse.SUPPRESS, help="retries of a failed request (5)"
    )
    parser = argparse.ArgumentParser(
        prog="wfa",
        description="Push files to a workflow-artifacts server and pull them back.",
        epilog="The server and key default to ARTIFACTS_URL and ARTIFACTS_API_KEY. "
        "Exit codes: 0 done, 1 something failed, 2 bad usage or configuration.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add = functools.partial(sub.add_parser, parents=[common])

    p = add("push", help="upload files and directories to a workflow")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or directories")
    p.add_argument("--workflow", "-w", required=True)
    p.add_argument("--phase", "-p")
    p.add_argument("--session", "-s")
    p.add_argument("--type", "-t", dest="artifact_type", help="artifact type (default: by suffix)")
    p.add_argument("--primary", action="store_true", help="the phase's primary deliverable")
    p.add_argument("--derived-from", action="append", default=[], metavar="ID")
    p.add_argument("--jobs", "-j", type=int, default=4, metavar="N", help=JOBS_HELP)
    p.set_defaults(handler=push)

    p = add("pull", help="download a workflow's files, each verified by sha256")
    p.add_argument("dest", metavar="DEST", help="directory to write into")
    p.add_argument("--workflow", "-w", required=True)
    p.add_argument("--phase", "-p")
    p.add_argument("--deliverables", action="store_true", help="each phase's primary only")
    p.add_argument("--jobs", "-j", type=int, default=4, metavar="N", help=JOBS_HELP)
    p.set_defaults(handler=pull)

    p = add("ls", help="list artifacts as a table")
    p.add_argument("--workflow", "-w")
    p.add_argument("--phase", "-p")
    p.add_argument("--session", "-s")
    p.add_argument("--type", "-t", dest="artifact_type")
    p.add_argument("--content-type")
    p.add_argument("--primary", action="store_true", default=None)
    p.add_argument("--derived-from", metavar="ID")
    p.add_argument("--created-after", metavar="ISO")
    p.add_argument("--created-before", metavar="ISO")
    p.add_argument("--limit", type=int, default=100, help="rows at most (100; 0: all)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=ls)

    p = add("cat", help="write an artifact's bytes to stdout (verified)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--version", type=int)
    p.set_defaults(handler=cat)

    p = add("rm", help="delete artifacts")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(handler=rm)

    p = add("lineage", help="an artifact's parents and children as a tree")
    p.add_argument("id", metavar="ID")
    p.add_argument("--direction", choices=("up", "down", "both"), default="both")
    p.add_argument("--depth", type=int, default=5)
    p.set_defaults(handler=lineage)
    return parser


# -- push ---------------------------------------------------------------------------------------


@dataclass
class Upload:
    path: Path
    rel: str  # the path kept in the title and in metadata["path"]
    size: int


def collect(paths: Sequence[str]) -> list[Upload]:
    """Every file to push: files as given, directories walked (sorted), each with the relative
    path it is known by (a directory's own name first, so `results/a.md`)."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise UsageError(f"no such file or directory: {', '.join(missing)}")
    out: list[Upload] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            base = path.resolve()
            prefix = PurePosixPath(base.name) if path.name else PurePosixPath()
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if file.name.endswith(".wfa-part"):
                    continue
                rel = prefix / PurePosixPath(file.resolve().relative_to(base).as_posix())
                out.append(Upload(file, str(rel), file.stat().st_size))
        elif path.is_file():
            out.append(Upload(path, path.name, path.stat().st_size))
        else:
            raise UsageError(f"not a regular file or directory: {given}")
    if not out:
        raise UsageError("nothing to push: the directories are empty")
    return out


def push(client: ArtifactsClient, args: argparse.Namespace) -> int:
    uploads = collect(args.paths)
    if args.primary and len(uploads) > 1:
        raise UsageError(f"--primary marks one file as the deliverable; got {len(uploads)} files")
    jobs = check_jobs(args.jobs)
    progress = output.reporter("push", len(uploads), sum(u.size for u in uploads))
    stop = threading.Event()

    def one(up: Upload) -> list[Any]:
        task = progress.task(up.rel, up.size)
        try:
            created = client.create_from_file(
                args.workflow,
                up.path,
                title=up.rel,
                filename=up.path.name,
                artifact_type=args.artifact_type or guess_type(up.path),
                phase_id=args.phase,
                session_id=args.session,
                is_primary_deliverable=args.primary,
                derived_from=args.derived_from or None,
                metadata={"path": up.rel},
                progress=unless_stopped(task, stop),
            )
        except (ArtifactsError, OSError) as exc:
            task.finish(False, one_line(exc))
            return [up.rel, "-", output.size(up.size), "-", f"FAILED: {one_line(exc)}"]
        task.finish(True)
        return [up.rel, created.id, output.size(up.size), created.content_hash[:12], "ok"]

    try:
        rows = in_parallel(one, uploads, jobs, stop)
    finally:
        progress.close()
    output.table(["file", "id", "size", "sha256", "status"], rows)
    failed = sum(1 for row in rows if row[-1] != "ok")
    if failed:
        print(f"wfa: {failed} of {len(uploads)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


JOBS_HELP = "files moved at once (4)"
T = TypeVar("T")
R = TypeVar("R")


def check_jobs(jobs: int) -> int:
    if not 1 <= jobs <= 64:
        raise UsageError(f"--jobs takes 1 to 64 files at once, not {jobs}")
    return jobs


def in_parallel(
    work: Callable[[T], R], items: Sequence[T], jobs: int, stop: threading.Event
) -> list[R]:
    """work(item) for every item, `jobs` at a time in threads (the sync client is shared: httpx's
    Client is thread-safe), the results in the items' order. An unexpected error or an
    interrupt stops the rest: files not started are not, files in flight stop at their next
    chunk (see unless_stopped), and the error is raised once they have."""
    with ThreadPoolExecutor(max_workers=min(jobs, max(len(items), 1))) as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            stop.set()
            for f in futures:
                f.cancel()
            raise


def unless_stopped(task: output.Task, stop: threading.Event) -> Callable[[int], None]:
    """`task` as a progress callback that raises Stopped once `stop` is set."""

    def moved(n: int) -> None:
        if stop.is_set():
            raise Stopped("stopped")
        task(n)

    return moved


def guess_type(path: Path) -> str:
    return TYPES_BY_SUFFIX.get(path.suffix.lower(), "other")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# -- pull ---------------------------------------------------------------------------------------

_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"|?*\\]')


def safe_rel(value: str | None) -> PurePosixPath | None:
    """A relative path that stays inside DEST: no absolute path, no `..`, no odd characters."""
    if not value:
        return None
    parts = [
        _UNSAFE.sub("_", p).strip().rstrip(".")
        for p in PurePosixPath(value.replace("\\", "/")).parts
        if p not in ("/", "", ".", "..")
    ]
    parts = [p for p in parts if p]
    return PurePosixPath(*parts) if parts else None


def target_of(a: Artifact, by_phase: bool) -> PurePosixPath:
    meta_path = a.metadata.get("path") if isinstance(a.metadata, dict) else None
    rel = safe_rel(meta_path if isinstance(meta_path, str) else None)
    rel = rel or safe_rel(a.filename) or safe_rel(a.title) or PurePosixPath(a.id)
    phase = safe_rel(a.phase_id) if by_phase else None
    if phase is not None:  # without --phase, each phase is a folder (no phase: DEST itself)
        rel = phase / rel
    return rel


def plan_pull(artifacts: list[Artifact], by_phase: bool) -> list[tuple[Artifact, PurePosixPath]]:
    """Each artifact's path under DEST; when two want one path (the same file pushed twice),
    the newest keeps it and the others get their id's first 8 characters before the suffix."""
    taken: set[str] = {MANIFEST.lower()}
    out = []
    for a in sorted(artifacts, key=lambda x: (x.created_at, x.id), reverse=True):
        rel = target_of(a, by_phase)
        if str(rel).lower() in taken:
            rel = rel.with_name(f"{rel.stem} ({a.id[:8]}){rel.suffix}")
        taken.add(str(rel).lower())
        out.append((a, rel))
    return sorted(out, key=lambda x: str(x[1]))


def pull(client: ArtifactsClient, args: argparse.Namespace) -> int:
    dest = Path(args.dest)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"DEST must be a directory: {dest}")
    jobs = check_jobs(args.jobs)
    stop = threading.Event()
    if args.deliverables:
        artifacts = [
            a
            for a in client.deliverables(args.workflow)
            if args.phase is None or a.phase_id == args.phase
        ]
    else:
        # A list row has no metadata, file name, version or lineage, which the paths and the
        # manifest need: each artifact's record is read, `jobs` at a time.
        rows = list(client.list(workflow_id=args.workflow, phase_id=args.phase))
        artifacts = in_parallel(
            lambda s: client.get(s.id, include_content=False), rows, jobs, stop
        )
    if not artifacts:
        print(f"wfa: nothing to pull from workflow {args.workflow!r}", file=sys.stderr)
        return 1
    planned = plan_pull(artifacts, by_phase=args.phase is None)
    created_dest = not dest.exists()
    progress = output.reporter("pull", len(planned), sum(a.size_bytes for a, _ in planned))

    def one(item: tuple[Artifact, PurePosixPath]) -> tuple[list[Any], dict[str, Any] | None]:
        artifact, rel = item
        target = dest / Path(*rel.parts)
        task = progress.task(str(rel), artifact.size_bytes)
        status = "ok"
        try:
            if target.is_file() and file_sha256(target) == artifact.content_hash:
                task(artifact.size_bytes)
                status = "unchanged"
            else:
                got = client.download(
                    artifact.id,
                    target,
                    expected_sha256=artifact.content_hash,  # names the part file: no HEAD
                    progress=unless_stopped(task, stop),
                )
                if got.resumed_from:
                    status = f"resumed at {output.size(got.resumed_from)}"
        except (ArtifactsError, OSError) as exc:
            task.finish(False, one_line(exc))
            row = [
                str(rel),
                artifact.id,
                output.size(artifact.size_bytes),
                "-",
                f"FAILED: {one_line(exc)}",
            ]
            return row, None
        task.finish(True, "" if status == "ok" else status)
        row = [
            str(rel),
            artifact.id,
            output.size(artifact.size_bytes),
            artifact.content_hash[:12],
            status,
        ]
        return row, manifest_entry(artifact, rel)

    try:
        done = in_parallel(one, planned, jobs, stop)
    finally:
        progress.close()
    output.table(["file", "id", "size", "sha256", "status"], [row for row, _ in done])
    entries = [entry for _, entry in done if entry is not None]
    failed = len(done) - len(entries)
    if failed:
        if created_dest:
            prune_empty(dest)
        print(
            f"wfa: {failed} of {len(planned)} file(s) failed; run again to resume "
            "(verified files are kept)",
            file=sys.stderr,
        )
        return 1
    write_manifest(dest / MANIFEST, args, entries)
    return 0


def manifest_entry(a: Artifact, rel: PurePosixPath) -> dict[str, Any]:
    return {
        "path": str(rel),
        "id": a.id,
        "version": a.version,
        "sha256": a.content_hash,
        "size_bytes": a.size_bytes,
        "title": a.title,
        "artifact_type": a.artifact_type,
        "content_type": a.content_type,
        "phase_id": a.phase_id,
        "session_id": a.session_id,
        "is_primary_deliverable": a.is_primary_deliverable,
        "derived_from": a.derived_from,
        "created_at": a.created_at,
    }


def write_manifest(path: Path, args: argparse.Namespace, entries: list[dict[str, Any]]) -> None:
    body = {
        "workflow_id": args.workflow,
        "phase_id": args.phase,
        "deliverables_only": args.deliverables,
        "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": entries,
    }
    part = path.with_name(f".{path.name}.wfa-part")
    path.parent.mkdir(parents=True, exist_ok=True)
    part.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(part, path)


def prune_empty(root: Path) -> None:
    """Directories a failed pull made and left empty (nothing wrong is left behind)."""
    if not root.is_dir():
        return
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    _common.hash_file(path, h)
    return h.hexdigest()


# -- ls, cat, rm, lineage -----------------------------------------------------------------------


def ls(client: ArtifactsClient, args: argparse.Namespace) -> int:
    rows_iter = client.list(
        workflow_id=args.workflow,
        phase_id=args.phase,
        session_id=args.session,
        artifact_type=args.artifact_type,
        content_type=args.content_type,
        is_primary_deliverable=args.primary,
        derived_from=args.derived_from,
        created_after=args.created_after,
        created_before=args.created_before,
        page_size=min(args.limit, 200) if args.limit > 0 else 200,
    )
    rows = list(limited(rows_iter, args.limit))
    if args.json:
        for s in rows:
            print(json.dumps({**s.extra, **{k: v for k, v in vars(s).items() if k != "extra"}}))
        return 0
    output.table(
        ["id", "type", "workflow", "phase", "title", "size", "created", "primary"],
        [
            [
                s.id[:8],
                s.artifact_type,
                s.workflow_id,
                s.phase_id or "-",
                s.title if len(s.title) <= 60 else s.title[:57] + "...",
                output.size(s.size_bytes),
                s.created_at[:19].replace("T", " "),
                "*" if s.is_primary_deliverable else "",
            ]
            for s in rows
        ],
    )
    return 0


def limited(rows: Iterator[Any], limit: int) -> Iterator[Any]:
    for i, row in enumerate(rows):
        if limit > 0 and i >= limit:
            return
        yield row


def cat(client: ArtifactsClient, args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    client.download(args.id, out, version=args.version)
    out.flush()
    return 0


def rm(client: ArtifactsClient, args: argparse.Namespace) -> int:
    failed = 0
    for ref in args.ids:
        try:
            done = client.delete(ref)
        except ArtifactsError as exc:
            failed += 1
            print(f"wfa: {ref}: {one_line(exc)}", file=sys.stderr)
            continue
        print(f"deleted {done.artifact_id}")
    return 1 if failed else 0


def lineage(client: ArtifactsClient, args: argparse.Namespace) -> int:
    graph = client.lineage(args.id, direction=args.direction, depth=args.depth)
    for line in render_lineage(graph, args.direction):
        print(line)
    return 0


def render_lineage(graph: Lineage, direction: str) -> list[str]:
    """The root, then its parents (up) and children (down) as indented trees."""
    nodes = {n.id: n for n in graph.nodes}

    def label(node_id: str) -> str:
        n = nodes.get(node_id)
        if n is None:
            return node_id[:8]
        if n.deleted:
            return f"{node_id[:8]} (deleted)"
        return f"{node_id[:8]} {n.title} [{n.artifact_type}]"

    parents: dict[str, list[str]] = {}
    children: dict[str, list[str]] = {}
    for e in graph.edges:
        parents.setdefault(e.child, []).append(e.parent)
        children.setdefault(e.parent, []).append(e.child)

    lines = [label(graph.root)]

    def walk(node: str, links: dict[str, list[str]], prefix: str, seen: set[str]) -> None:
        kids = links.get(node, [])
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{label(kid)}")
            if kid not in seen:
                walk(kid, links, prefix + ("    " if last else "│   "), seen | {kid})

    if direction in ("up", "both") and parents.get(graph.root):
        lines.append("derived from:")
        walk(graph.root, parents, "", {graph.root})
    if direction in ("down", "both") and children.get(graph.root):
        lines.append("used by:")
        walk(graph.root, children, "", {graph.root})
    if graph.truncated:
        lines.append("(more beyond --depth)")
    return lines
