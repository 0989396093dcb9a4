"""An asyncio event loop on a virtual clock: trio's autojump ``MockClock`` for asyncio.

When no callback is ready and the loop would wait for its next timer, it does
not wait: it moves its clock to that timer at once (I/O that is ready is still
handled first; with no timer at all it waits for I/O for real). So a test of
30 s backoffs takes milliseconds, and ``anyio.current_time()`` /
``anyio.fail_after`` follow the virtual clock. Like trio's autojump with a zero
threshold, time jumps even while a worker thread runs.
"""

from __future__ import annotations

import asyncio
import selectors


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:
            return super().select(timeout)
        ready = super().select(0)
        if not ready:
            self._loop.advance(timeout)
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """See the module doc."""

    def __init__(self) -> None:
        self._offset = 0.0
        super().__init__(selector=_JumpingSelector(self))

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self._offset += seconds

    def time(self) -> float:
        return super().time() + self._offset
