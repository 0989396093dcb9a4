"""How the CLI ends and prints: exit codes, ``CODE: message`` errors, JSON and tables.

Exit codes (stable):

- 0  success
- 1  a fedpeer error (the line printed says ``CODE: what to do``)
- 2  bad usage: unknown command or option, bad option or argument value (click's own)
- 3  the node could not start (port in use: ``START_FAILED``; bad key file:
     ``KEY_FILE_*``; store cannot be opened: ``STORE_*``; data dir unusable:
     ``DATA_DIR_ERROR``; bad config: ``CONFIG_INVALID``)
- 4  the node is not running (``NODE_NOT_RUNNING``: nothing answers at its URL)
- 5  ``doctor`` found a problem (each failed check says how to fix it)
- 6  a bounded wait ran out (``TIMED_OUT``, e.g. ``pair --timeout``); the work may
     still complete in the node
- 7  ``run``: another node is running on this data dir (``DATA_DIR_LOCKED``, naming
     its PID); stop it or pick another ``--data-dir``
- 130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import click
import trio

from ..errors import FedpeerError, NodeNotRunning, TimedOut, clean_remote_text

__all__ = [
    "EXIT_DOCTOR",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "EXIT_NOT_RUNNING",
    "EXIT_OK",
    "EXIT_START",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "exit_code_for",
    "fail",
    "leaf",
    "run_async",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_START = 3
EXIT_NOT_RUNNING = 4
EXIT_DOCTOR = 5
EXIT_TIMEOUT = 6
EXIT_LOCKED = 7
EXIT_INTERRUPTED = 130

T = TypeVar("T")
Json = dict[str, Any]


def exit_code_for(err: FedpeerError) -> int:
    """The exit code of a command that failed with ``err``."""
    if isinstance(err, NodeNotRunning):
        return EXIT_NOT_RUNNING
    if isinstance(err, TimedOut):
        return EXIT_TIMEOUT
    return EXIT_ERROR


def fail(err: FedpeerError, code: int | None = None) -> NoReturn:
    """Print ``CODE: message`` on stderr and exit (default code: :func:`exit_code_for`)."""
    click.echo(f"{err.code}: {err.message}", err=True)
    sys.exit(exit_code_for(err) if code is None else code)


def leaf(exc: BaseException) -> BaseException:
    """The most telling exception inside (possibly nested) exception groups."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves: list[BaseException] = []
    stack: list[BaseException] = [exc]
    for _ in range(10_000):  # bounded walk of the group tree
        if not stack:
            break
        item = stack.pop(0)
        if isinstance(item, BaseExceptionGroup):
            stack.extend(item.exceptions)
        else:
            leaves.append(item)
    for kind in (FedpeerError, KeyboardInterrupt, OSError):
        for found in leaves:
            if isinstance(found, kind):
                return found
    return leaves[0] if leaves else exc


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """``trio.run(fn)``; a FedpeerError ends the command with ``CODE: message`` and
    the exit code of :func:`exit_code_for`, Ctrl-C with 130."""
    try:
        return trio.run(fn)
    except BaseException as exc:
        found = leaf(exc)
        if isinstance(found, FedpeerError):
            fail(found)
        if isinstance(found, KeyboardInterrupt):
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        if found is not exc:
            raise found from exc
        raise


# --- printing ---------------------------------------------------------------------------


def json_out(value: object) -> None:
    """Print ``value`` as indented JSON (sorted keys)."""
    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def console() -> Any:
    """A rich console for tables and progress (long lines when piped)."""
    from rich.console import Console

    # Piped output (scripts, tests) gets long lines instead of wrapped cells.
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    return Console(highlight=False, soft_wrap=False, emoji=False, markup=False, width=width)


def table(*columns: str) -> Any:
    """A borderless rich table with these columns. A cell too wide for the
    terminal wraps onto more lines (``overflow="fold"``): nothing is cut, so a URL
    or an id copied from a table is always whole. Every command that prints a
    table also takes ``--json``."""
    from rich.table import Table

    class SafeTable(Table):
        # Cells carry other nodes' text (handles, error messages, record bodies):
        # control and format characters (ESC, newlines, bidi overrides) are shown
        # escaped, never sent to the terminal.
        def add_row(self, *cells: Any, **kwargs: Any) -> None:
            super().add_row(
                *(clean_remote_text(c, len(c)) if isinstance(c, str) else c for c in cells),
                **kwargs,
            )

    out = SafeTable(box=None)
    for col in columns:
        out.add_column(col, overflow="fold")
    return out


def short_did(did: object) -> str:
    """``did:key:z6Mk…abcdef`` for tables."""
    text = str(did or "")
    if text.startswith("did:key:") and len(text) > 24:
        return f"{text[:12]}…{text[-6:]}"
    return text


def when(ms: object) -> str:
    """A local date and time, or ``-``."""
    if not isinstance(ms, int) or isinstance(ms, bool):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))


def human_bytes(n: int) -> str:
    """``512 B``, ``1.5 KiB``, ``20.0 MiB``, ``1.0 GiB`` for tables."""
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def ago(ms: object, now_ms: int | None = None) -> str:
    """``5m ago`` (or ``-``)."""
    if not isinstance(ms, int) or isinstance(ms, bool):
        return "-"
    now_s = time.time() if now_ms is None else now_ms / 1000
    seconds = max(0, int(now_s - ms / 1000))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
