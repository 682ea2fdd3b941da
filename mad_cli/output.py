"""Where things go: results to stdout (rich table, or JSON lines with --json), the rest to stderr.

Shell loops pipe and parse stdout, so nothing but results may ever reach it. Progress bars
are drawn only when stderr is a terminal so that logs of piped or CI runs stay clean.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

_stderr = Console(stderr=True, highlight=False)


def stderr_console() -> Console:
    return _stderr


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def log(message: str) -> None:
    """An informational line on stderr."""
    _stderr.print(message, markup=False, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """A warning line on stderr, prefixed so that grep finds it in CI logs."""
    _stderr.print(f"mad: warning: {message}", markup=False, highlight=False, soft_wrap=True)


def to_jsonable(value: Any) -> Any:
    """Plain JSON values: NaN/inf become null, numpy/torch scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return to_jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def json_line(obj: dict[str, Any]) -> str:
    return json.dumps(to_jsonable(obj), allow_nan=False, sort_keys=False)


class _NullProgress:
    def advance(self, n: int = 1) -> None:
        pass

    def update(self, **_: Any) -> None:
        pass


class _RichTask:
    def __init__(self, progress: Progress, task: Any):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def update(self, **fields: Any) -> None:
        """Update the total, description or extra fields (e.g. `loss=`) shown in the bar."""
        self._progress.update(self._task, **fields)


@contextlib.contextmanager
def progress(total: float | None, description: str, *, fields: Sequence[str] = (), enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar on stderr when it is a terminal, a silent stand-in otherwise.

    `fields` names extra task fields to show after the bar (set them with `.update(name=...)`).
    `enabled=False` gives the stand-in anyway (torchrun ranks other than 0 stay quiet).
    """
    if not enabled or not stderr_is_tty():
        yield _NullProgress()
        return
    columns: list[Any] = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    for name in fields:
        columns.append(TextColumn(f"{name} {{task.fields[{name}]}}"))
    with Progress(*columns, console=_stderr, transient=False) as bar:
        task = bar.add_task(description, total=total, **{name: "" for name in fields})
        yield _RichTask(bar, task)


def _format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan"
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(to_jsonable(value))
    return str(value)


class Results:
    """Writes result rows to stdout: one JSON object per line (flushed at once) or a rich table.

    Use as a context manager; the table is printed when the block ends. `columns` limits and
    orders what the table shows; JSON rows always carry every field.
    """

    def __init__(self, json_mode: bool, *, title: str | None = None, columns: Sequence[str] | None = None):
        self.json_mode = json_mode
        self.title = title
        self.columns = list(columns) if columns else None
        self.rows: list[dict[str, Any]] = []

    def __enter__(self) -> "Results":
        return self

    def row(self, obj: dict[str, Any]) -> None:
        if self.json_mode:
            sys.stdout.write(json_line(obj) + "\n")
            sys.stdout.flush()
        else:
            self.rows.append(obj)

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self.json_mode or not self.rows:
            return
        columns = self.columns or list(dict.fromkeys(k for r in self.rows for k in r))
        table = Table(title=self.title)
        for name in columns:
            table.add_column(name, overflow="fold")
        for r in self.rows:
            table.add_row(*(_format_cell(r.get(c)) for c in columns))
        # Piped tables (logs, `| less`) get room for paths instead of rich's 80-column
        # fallback; a terminal's width, or COLUMNS when set, wins.
        wide = sys.stdout.isatty() or "COLUMNS" in os.environ
        Console(highlight=False, width=None if wide else 160).print(table)
