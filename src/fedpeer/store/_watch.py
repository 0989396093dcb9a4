"""Wake-ups for :meth:`Store.wait_for_seq`: an index of waiters by what they may see.

Theory of operation
-------------------
A longpoll or a continuous feed waits for "a new record I may see". Waking
every waiter on every commit made each of them rescan the feed and re-read its
grants: 40 idle readers with narrow grants cut a node's append rate by four.
So a waiter says what it is interested in, as change filters (namespace
prefix and/or exact thread, see :class:`~fedpeer.store.base.ChangeFilter`;
None means "any commit"), and each commit announces the ``(namespace,
thread)`` pairs of the records it stored. A waiter is woken only by a commit
that stored a record one of its filters matches, by :meth:`HeadWatch.wake_all`
(what readers may see changed, e.g. a grant), or by :meth:`HeadWatch.close`.

The index: waiters interested in everything in one set; filters with a thread
under that thread; filters with only a namespace prefix under the prefix,
with a count of the prefix lengths in use. A commit looks up, per distinct
``(namespace, thread)`` it touched, the thread's bucket and the bucket of each
prefix length's prefix of the namespace: the cost per commit is a few dict
lookups however many waiters there are, and only matching waiters run.

Waiters still re-check (they rescan the feed after waking), so a spurious
wake-up is harmless; the index only has to be a superset of what matters (a
thread target pinned to an exact namespace is indexed as that namespace
*prefix*). A waiter that registers while the head is already past its
``after_seq`` returns at once (the caller rescans): a commit cannot slip in
between a caller's scan and its wait. :meth:`HeadWatch.observe` raises the
head without waking anyone (a reader saw a commit before the writer
announced it; the writer's announcement does the waking). Only the event loop
thread touches this object.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import anyio
import anyio.lowlevel

from ..errors import StoreClosed
from .base import ChangeFilter

__all__ = ["HeadWatch"]

Touched = Iterable[tuple[str, str]]
"""The ``(namespace, thread)`` of the records a commit stored."""


class _Waiter:
    __slots__ = ("event", "filters")

    def __init__(self, filters: tuple[ChangeFilter, ...] | None) -> None:
        self.event = anyio.Event()
        self.filters = filters


class HeadWatch:
    """The highest committed seq and the waiters, indexed by their interest."""

    __slots__ = (
        "_all",
        "_by_prefix",
        "_by_thread",
        "_closed",
        "_no_commit",
        "_prefix_lens",
        "head",
        "wakeups",
    )

    def __init__(self, head: int) -> None:
        self.head = head
        self.wakeups = 0
        """How many waiters were woken so far (tests and metrics)."""
        self._all: set[_Waiter] = set()
        self._no_commit: set[_Waiter] = set()  # interest () : only wake_all / close
        self._by_thread: dict[str, set[_Waiter]] = {}
        self._by_prefix: dict[str, set[_Waiter]] = {}
        self._prefix_lens: Counter[int] = Counter()
        self._closed = False

    # --- the index --------------------------------------------------------------

    def _keys(self, w: _Waiter) -> list[tuple[str, str]]:
        """Where ``w`` sits in the index: ("all", ""), ("none", ""), ("thread", t) or
        ("prefix", p)."""
        if w.filters is None:
            return [("all", "")]
        if not w.filters:
            return [("none", "")]
        keys: list[tuple[str, str]] = []
        for f in w.filters:
            if f.is_empty:
                return [("all", "")]
            if f.thread is not None:
                keys.append(("thread", f.thread))
            else:
                keys.append(("prefix", f.namespace_prefix or ""))
        return list(dict.fromkeys(keys))

    def _add(self, w: _Waiter) -> None:
        for kind, key in self._keys(w):
            if kind == "all":
                self._all.add(w)
            elif kind == "none":
                self._no_commit.add(w)
            elif kind == "thread":
                self._by_thread.setdefault(key, set()).add(w)
            else:
                self._by_prefix.setdefault(key, set()).add(w)
                self._prefix_lens[len(key)] += 1

    def _remove(self, w: _Waiter) -> None:
        for kind, key in self._keys(w):
            if kind in ("all", "none"):
                (self._all if kind == "all" else self._no_commit).discard(w)
                continue
            index = self._by_thread if kind == "thread" else self._by_prefix
            bucket = index.get(key)
            if bucket is None or w not in bucket:
                continue
            bucket.discard(w)
            if not bucket:
                del index[key]
            if kind == "prefix":
                self._prefix_lens[len(key)] -= 1
                if not self._prefix_lens[len(key)]:
                    del self._prefix_lens[len(key)]

    def _wake(self, w: _Waiter) -> None:
        if not w.event.is_set():
            self.wakeups += 1
            w.event.set()
        self._remove(w)

    def _matching(self, touched: Touched) -> set[_Waiter]:
        found: set[_Waiter] = set(self._all)
        lens = sorted(self._prefix_lens)
        for namespace, thread in set(touched):
            for w in self._by_thread.get(thread, ()):
                if w not in found and _thread_filter_matches(w.filters, namespace, thread):
                    found.add(w)
            for n in lens:
                if n > len(namespace):
                    break
                found.update(self._by_prefix.get(namespace[:n], ()))
        return found

    # --- announcements ----------------------------------------------------------

    def advance(self, head: int, touched: Touched | None = None) -> None:
        """A commit stored records up to ``head`` (ignored unless it is new data).

        ``touched`` names the ``(namespace, thread)`` of the stored records; the
        waiters whose interest matches one of them are woken. None: not known,
        every waiter is woken.
        """
        if head > self.head:
            self.head = head
        elif touched is None:
            return
        if touched is None:
            self.wake_all()
            return
        for w in self._matching(touched):
            self._wake(w)

    def observe(self, head: int) -> None:
        """Raise the head without waking anyone (a reader saw an unannounced commit)."""
        if head > self.head:
            self.head = head

    def _every_waiter(self) -> set[_Waiter]:
        waiters = self._all | self._no_commit
        for index in (self._by_thread, self._by_prefix):
            for bucket in index.values():
                waiters.update(bucket)
        return waiters

    def wake_all(self) -> None:
        """Wake every waiter, whatever its interest (what readers may see changed)."""
        for w in self._every_waiter():
            self._wake(w)

    def close(self) -> None:
        """Wake every waiter; they (and later callers) get ``StoreClosed``."""
        self._closed = True
        self.wake_all()

    def waiting(self) -> int:
        """How many waiters are parked (tests and metrics)."""
        return len(self._every_waiter())

    # --- waiting ----------------------------------------------------------------

    async def wait_above(
        self, after_seq: int, interest: Sequence[ChangeFilter] | None = None
    ) -> int:
        """Block until ``head > after_seq`` (``interest`` None), or until a commit that
        matches ``interest`` or a :meth:`wake_all`; return head (with an interest, a
        :meth:`wake_all` returns it even when it did not move, so the caller can
        work out its interest again). Returns at once when the head is already
        past ``after_seq``. Cancellable; ``StoreClosed`` once closed."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        filters = None if interest is None else tuple(interest)
        for _ in range(1_000_000):  # each turn needs a wake-up: a commit, or close
            if self._closed:
                raise StoreClosed("the store was closed")
            if self.head > after_seq:
                await anyio.lowlevel.cancel_shielded_checkpoint()
                return self.head
            w = _Waiter(filters)
            self._add(w)
            try:
                await w.event.wait()
            finally:
                self._remove(w)
            if not self._closed and (filters is not None or self.head > after_seq):
                return self.head
        raise AssertionError("unreachable: a waiter woken a million times")  # pragma: no cover


def _thread_filter_matches(
    filters: tuple[ChangeFilter, ...] | None, namespace: str, thread: str
) -> bool:
    if filters is None:
        return True
    return any(f.thread == thread and f.matches(namespace, thread) for f in filters)
