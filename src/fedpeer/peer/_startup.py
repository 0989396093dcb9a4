"""Start-up errors that name their cause: the HTTP server's bind failure.

hypercorn binds its sockets inside ``serve`` and an ``OSError`` from there
reaches the caller as is (maybe wrapped in exception groups), which looks like
any other ``OSError`` (a data dir, a key file...). Here a failure *before* the
server reported it is listening becomes :class:`~fedpeer.errors.StartFailed`
naming the address; errors after that point pass through unchanged.
"""

from __future__ import annotations

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from ..errors import StartFailed

__all__ = ["os_error_in", "serve_reporting_bind_errors"]


class _StartedFlag:
    """A task status that remembers whether the server reported it is listening."""

    def __init__(self, inner: trio.TaskStatus[list[str]]) -> None:
        self._inner = inner
        self.started_ = False

    def started(self, value: list[str]) -> None:
        self.started_ = True
        self._inner.started(value)


def os_error_in(exc: BaseException) -> OSError | None:
    """The OSError inside ``exc`` (itself, or in nested exception groups), if any."""
    stack: list[BaseException] = [exc]
    for _ in range(1000):  # bounded walk of the group tree
        if not stack:
            return None
        item = stack.pop()
        if isinstance(item, OSError):
            return item
        if isinstance(item, BaseExceptionGroup):
            stack.extend(item.exceptions)
    return None


async def serve_reporting_bind_errors(
    app: object,
    config: HypercornConfig,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[list[str]],
    address: str,
) -> None:
    """hypercorn's trio ``serve``; an OSError before it listens is ``StartFailed``."""
    status = _StartedFlag(task_status)
    try:
        await serve(app, config, shutdown_trigger=shutdown.wait, task_status=status)  # type: ignore[arg-type]
    except BaseException as exc:
        bind_error = None if status.started_ else os_error_in(exc)
        if bind_error is None:
            raise
        raise StartFailed(
            f"cannot listen on {address}: {bind_error.strerror or bind_error}; is another "
            "node using that port? (pick another port)"
        ) from exc
