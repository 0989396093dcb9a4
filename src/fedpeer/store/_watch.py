"""Wake-ups for :meth:`Store.wait_for_seq`: one anyio.Event per generation.

Each commit that stores new records ends the current generation: the head
moves forward, the generation's Event is set (waking every waiter at once) and
a fresh Event starts the next one. Waiters re-check the head after waking, so
spurious wake-ups are harmless and nothing polls. Only the event loop thread touches
this object.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel

from ..errors import StoreClosed


class HeadWatch:
    """The highest committed seq and the Event of the current generation."""

    __slots__ = ("_closed", "_event", "head")

    def __init__(self, head: int) -> None:
        self.head = head
        self._event = anyio.Event()
        self._closed = False

    def advance(self, head: int) -> None:
        """Record a new head (ignored unless it grows) and wake the waiters."""
        if head > self.head:
            self.head = head
            event, self._event = self._event, anyio.Event()
            event.set()

    def close(self) -> None:
        """Wake every waiter; they (and later callers) get ``StoreClosed``."""
        self._closed = True
        self._event.set()

    async def wait_above(self, after_seq: int) -> int:
        """Block until ``head > after_seq``; return head. Cancellable."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._closed:
                raise StoreClosed("the store was closed")
            if self.head > after_seq:
                await anyio.lowlevel.cancel_shielded_checkpoint()
                return self.head
            await self._event.wait()
