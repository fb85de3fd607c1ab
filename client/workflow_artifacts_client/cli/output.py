"""Progress and tables for `wfa`: rich bars and tables in a terminal when rich is installed
(the `cli` extra), plain lines otherwise (no rich, or output that is not a terminal: CI logs
get one line per step, never a redrawn bar)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol, TextIO

try:  # the `cli` extra
    import rich  # noqa: F401

    HAVE_RICH = True
except ImportError:  # pragma: no cover - exercised by the fresh-venv install test
    HAVE_RICH = False


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


class Task(Protocol):
    def __call__(self, n: int) -> None: ...

    def finish(self, ok: bool, note: str = "") -> None: ...


class Reporter(Protocol):
    def task(self, name: str, total: int) -> Task: ...

    def close(self) -> None: ...


def use_rich(stream: TextIO) -> bool:
    return HAVE_RICH and stream.isatty()


def reporter(verb: str, files: int, total: int, stream: TextIO | None = None) -> Reporter:
    stream = stream or sys.stdout
    if use_rich(stream):
        return RichReporter(verb, files, total, stream)
    return PlainReporter(verb, files, total, stream)


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    stream: TextIO | None = None,
    title: str | None = None,
) -> None:
    stream = stream or sys.stdout
    if use_rich(stream):
        from rich.console import Console
        from rich.table import Table

        t = Table(*headers, title=title)
        for row in rows:
            t.add_row(*(str(v) for v in row))
        Console(file=stream).print(t)
        return
    cells = [[str(h) for h in headers], *[[str(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(title, file=stream)
    for i, row in enumerate(cells):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=stream)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=stream)


# -- plain lines ------------------------------------------------------------------------------


class PlainReporter:
    """One line when a file starts, every 10% (at most every 2 s) of a large one, when it
    ends, and the running total after each file. Files moved at once (`--jobs`) report from
    their own threads: each line is written whole, under a lock, so lines never mix, and a
    file's last line and the running total after it stay together."""

    def __init__(self, verb: str, files: int, total: int, stream: TextIO) -> None:
        self.verb, self.files, self.total, self.stream = verb, files, total, stream
        self.done_files = 0
        self.done_bytes = 0
        self.started = time.monotonic()
        self.lock = threading.RLock()

    def print(self, *lines: str) -> None:
        with self.lock:
            self.stream.write("".join(f"{line}\n" for line in lines))
            self.stream.flush()

    def task(self, name: str, total: int) -> PlainTask:
        self.print(f"{self.verb} {name} ({size(total)})")
        return PlainTask(self, name, total)

    def close(self) -> None:
        seconds = max(time.monotonic() - self.started, 1e-6)
        self.print(
            f"total: {self.done_files}/{self.files} files, {size(self.done_bytes)} "
            f"in {seconds:.1f} s ({self.done_bytes / seconds / 1e6:.1f} MB/s)"
        )


class PlainTask:
    def __init__(self, parent: PlainReporter, name: str, total: int) -> None:
        self.parent, self.name, self.total = parent, name, total
        self.done = 0
        self.shown = 0  # the last tenth printed
        self.last = time.monotonic()
        self.started = self.last

    def __call__(self, n: int) -> None:
        self.done += n
        if n < 0:
            self.parent.print(f"  {self.name}: retrying from {size(self.done)}")
            self.shown = self.done * 10 // max(self.total, 1)
            return
        tenth = self.done * 10 // max(self.total, 1)
        now = time.monotonic()
        if tenth > self.shown and tenth < 10 and now - self.last >= 2.0:
            self.shown, self.last = tenth, now
            rate = self.done / max(now - self.started, 1e-6) / 1e6
            self.parent.print(
                f"  {self.name}: {tenth * 10}% {size(self.done)}/{size(self.total)} "
                f"({rate:.1f} MB/s)"
            )

    def finish(self, ok: bool, note: str = "") -> None:
        seconds = time.monotonic() - self.started
        state = "ok" if ok else "FAILED"
        extra = f": {note}" if note else ""
        p = self.parent
        with p.lock:  # the file's line and the total it makes, together and in order
            if ok:
                p.done_files += 1
                p.done_bytes += self.total
            share = p.done_bytes * 100 // max(p.total, 1)
            p.print(
                f"  {self.name}: {state} {size(self.done)} in {seconds:.1f} s{extra}",
                f"  [{p.done_files}/{p.files} files, {size(p.done_bytes)} of {size(p.total)}, "
                f"{share}%]",
            )


# -- rich bars --------------------------------------------------------------------------------


class RichReporter:
    def __init__(self, verb: str, files: int, total: int, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
        )
        self.progress.start()
        self.overall = self.progress.add_task(f"{verb} {files} file(s)", total=total)

    def task(self, name: str, total: int) -> RichTask:
        return RichTask(self, self.progress.add_task(name, total=total), name)

    def close(self) -> None:
        self.progress.stop()


class RichTask:
    def __init__(self, parent: RichReporter, task_id: Any, name: str) -> None:
        self.parent, self.task_id, self.name = parent, task_id, name
        self.done = 0

    def __call__(self, n: int) -> None:
        self.done += n
        self.parent.progress.advance(self.task_id, n)
        self.parent.progress.advance(self.parent.overall, n)

    def finish(self, ok: bool, note: str = "") -> None:
        if not ok:
            self.parent.progress.update(self.task_id, description=f"{self.name} FAILED")
            self.parent.progress.advance(self.parent.overall, -self.done)
