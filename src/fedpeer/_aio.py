"""The few things anyio does not offer the same way on trio and asyncio.

:func:`threadsafe_soon` gives a function that another thread may call to run a
callback soon on the event loop of the calling task, without waiting for it
(trio's ``TrioToken.run_sync_soon``, asyncio's ``loop.call_soon_threadsafe``);
once the loop has finished, the callback is dropped. zeroconf's browser thread
uses it to hand events over.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import sniffio

__all__ = ["backend_name", "threadsafe_soon"]


def backend_name() -> str:
    """``"trio"`` or ``"asyncio"``: the async library of the calling task."""
    return sniffio.current_async_library()


def threadsafe_soon() -> Callable[[Callable[[], object]], None]:
    """A non-blocking "run this soon on my loop" for other threads (see module doc).

    Call it from a task; the result may be called from any thread, never blocks,
    and silently drops callbacks once the loop is gone.
    """
    if backend_name() == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()

        def trio_soon(fn: Callable[[], object]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(fn)

        return trio_soon
    import asyncio

    loop = asyncio.get_running_loop()

    def asyncio_soon(fn: Callable[[], object]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(fn)

    return asyncio_soon
