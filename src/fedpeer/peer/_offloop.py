"""Heavy CPU work off the event loop, one piece at a time per loop.

Decoding or rendering a value of millions of tiny items takes seconds of pure
Python; on the event loop that stalls every request of the node. :func:`off_loop`
runs such work in a worker thread, one at a time per event loop (threads
contend for the GIL with the loop), with the cyclic collector paused. No
starlette or HTTP here: the client side uses it too.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from functools import partial
from typing import TypeVar, TypeVarTuple

import anyio
from anyio.lowlevel import RunVar

from .._values import count_values

__all__ = ["INLINE_MAX", "off_loop", "values_exceed"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

INLINE_MAX = 8 * 1024
"""Bodies, and records to decode or render, weighing more than this are handled
in a worker thread (:func:`off_loop`), not on the event loop. Bytes are a poor
measure of the work when a value is many tiny items: 8 KiB of empty lists takes
about 5 ms to verify as a record (64 KiB took 107 ms, on the event loop, for
every holder's post), so the bound is low; a larger value pays one thread hop."""
_DECODE_LIMITER: RunVar[anyio.CapacityLimiter] = RunVar("fedpeer_decode_limiter")  # per loop
_GC_LOCK = threading.Lock()
_gc_pauses = 0  # decodes running with the collector paused (under _GC_LOCK)
_gc_resume = False  # whether the first of them found it enabled


async def off_loop(fn: Callable[[*Ts], T], *args: *Ts) -> T:
    """``fn(*args)`` in a worker thread, one at a time per event loop (threads
    contend for the GIL with the event loop), with the cyclic collector paused:
    for the heavy work of decoding or rendering a large value (millions of tiny
    items take seconds), so every other request goes on meanwhile."""
    try:
        limiter = _DECODE_LIMITER.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(1)
        _DECODE_LIMITER.set(limiter)
    return await anyio.to_thread.run_sync(_without_gc, partial(fn, *args), limiter=limiter)


def _without_gc(fn: Callable[[], T]) -> T:
    """``fn()`` with the cyclic collector paused: a value of millions of tiny
    containers otherwise sets off full collections over all of them, each
    holding the GIL (and so the event loop) for a second or more. A decoded or
    rendered value holds no cycles until someone makes one, so nothing is
    missed; the collector runs as usual once it is back on. Calls of several
    event loops (threads) overlap safely: the last one to finish turns it back
    on, if the first found it on."""
    global _gc_pauses, _gc_resume
    with _GC_LOCK:
        if _gc_pauses == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        return fn()
    finally:
        with _GC_LOCK:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_resume:
                gc.enable()


def values_exceed(value: object, budget: int) -> bool:
    """Whether ``value`` holds more than ``budget`` values (map keys and values,
    list items, nested ones included); stops counting there. Pure."""
    return count_values(value, budget) > budget
