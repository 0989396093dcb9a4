"""The waiter index behind ``Store.wait_for_seq(after, interest)``: a waiter wakes iff a
commit stored a record one of its filters matches (checked against a brute-force
oracle), or on ``wake_all``/``close``."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeer.errors import StoreClosed
from fedpeer.store._watch import HeadWatch
from fedpeer.store.base import ChangeFilter

_ns = st.sampled_from(["", "a", "a/", "a/b", "ab", "b", "b/c/d", "%"])
_th = st.sampled_from(["t", "t1", "u"])
_filters = st.lists(st.builds(ChangeFilter, st.none() | _ns, st.none() | _th), max_size=3).map(
    tuple
)
_interest = st.none() | _filters
_commit = st.lists(st.tuples(_ns.filter(bool), _th), min_size=1, max_size=4)


def _oracle(interest: tuple[ChangeFilter, ...] | None, touched: list[tuple[str, str]]) -> bool:
    if interest is None:
        return True
    return any(f.matches(ns, th) for f in interest for ns, th in touched)


@settings(max_examples=150, deadline=None)
@given(interests=st.lists(_interest, min_size=1, max_size=6), commits=st.lists(_commit, max_size=4))
def test_waiters_wake_exactly_on_matching_commits(
    interests: list[tuple[ChangeFilter, ...] | None], commits: list[list[tuple[str, str]]]
) -> None:
    async def body() -> None:
        watch = HeadWatch(0)
        woken_at: dict[int, int] = {}

        async def waiter(i: int) -> None:
            await watch.wait_above(0, interests[i])
            woken_at[i] = watch.head

        async with anyio.create_task_group() as nursery:
            for i in range(len(interests)):
                nursery.start_soon(waiter, i)
            await anyio.wait_all_tasks_blocked()
            assert watch.waiting() == len(interests)
            expected: dict[int, int] = {}
            for n, touched in enumerate(commits, start=1):
                watch.advance(n, touched)
                for i, interest in enumerate(interests):
                    if i not in expected and _oracle(interest, touched):
                        expected[i] = n
                await anyio.wait_all_tasks_blocked()
                assert woken_at == expected
            assert watch.wakeups == len(expected)
            assert watch.waiting() == len(interests) - len(expected)
            nursery.cancel_scope.cancel()
        assert watch.waiting() == 0  # cancelled waiters leave the index

    anyio.run(body, backend="trio")


async def test_observe_raises_the_head_without_waking() -> None:
    watch = HeadWatch(0)
    woken = []

    async def waiter() -> None:
        woken.append(await watch.wait_above(0, (ChangeFilter("a/"),)))

    async with anyio.create_task_group() as nursery:
        nursery.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        watch.observe(3)  # a reader saw the commit first
        await anyio.wait_all_tasks_blocked()
        assert woken == []
        assert watch.head == 3
        watch.advance(3, [("a/x", "t")])  # the writer's announcement still wakes
    assert woken == [3]
    with anyio.fail_after(1):  # past the head already: at once
        assert await watch.wait_above(2, ()) == 3


async def test_unknown_touched_wakes_everyone_and_close_raises() -> None:
    watch = HeadWatch(0)
    results: list[object] = []

    async def waiter(interest: tuple[ChangeFilter, ...] | None, after: int = 0) -> None:
        try:
            results.append(await watch.wait_above(after, interest))
        except StoreClosed:
            results.append("closed")

    async with anyio.create_task_group() as nursery:
        nursery.start_soon(waiter, (ChangeFilter("zzz"),))
        nursery.start_soon(waiter, ())
        await anyio.wait_all_tasks_blocked()
        watch.advance(1)  # who knows what it stored: everybody re-checks
        await anyio.wait_all_tasks_blocked()
        assert results == [1, 1]
        nursery.start_soon(waiter, None, 1)
        await anyio.wait_all_tasks_blocked()
        watch.close()
    assert results == [1, 1, "closed"]
    with pytest.raises(StoreClosed):
        await watch.wait_above(5)
