"""Waking failing pairs (issue 14): a peer seen again is retried at once.

The backoff here is an hour, so a pair that is not woken would not retry within
the test's timeout: the wake alone makes it converge. Real stores, real pullers;
the source is the in-memory page source of test_puller.py (no HTTP).
"""

from __future__ import annotations

import anyio
import anyio.abc
import anyio.lowlevel

from fedpeer.errors import PeerUnreachable
from fedpeer.peer.services._views import PairStatus
from fedpeer.sync._puller import Puller
from fedpeer.sync.backoff import Backoff
from fedpeer.sync.manager import WAKE_MIN_INTERVAL_S, next_try_s
from fedpeer.sync.options import SyncOptions
from fedpeer.sync.pairs import PairState
from tests.sync.test_puller import OTHER_KEY, SRC_KEY, caught_up, make_records, start_env

HOUR = Backoff(base_s=3600, cap_s=3600)


def failing(p: object) -> bool:
    return getattr(p, "state", None) is PairState.FAILING


async def test_wake_retries_a_failing_pair_of_that_peer_at_once(
    nursery: anyio.abc.TaskGroup,
) -> None:
    env = await start_env(nursery, SyncOptions(backoff=HOUR, seed=1), timeout=20)
    env.source.fail = PeerUnreachable("the peer is away")
    pair = await env.create()
    other = await env.create(peer_did=OTHER_KEY.did)
    await env.wait(pair.id, failing)
    await env.wait(other.id, failing)
    await entered_backoff(env.manager.puller(pair.id))
    # `pairs` shows when the next try is: about half an hour to an hour from now
    status = env.manager.stats(pair.id)
    assert isinstance(status["next_try_s"], float)
    assert status["next_try_s"] >= 1700

    await env.source_store.put([r.to_new() for r in make_records(3)])
    env.source.fail = None
    assert env.manager.wake("did:key:z6MkNobodyPairedWithThisNode", reason="test") == []
    assert env.manager.wake(SRC_KEY.did, reason="test") == [pair.id]
    done = await env.wait(pair.id, caught_up)
    assert done.retries == 0
    assert env.manager.stats(pair.id)["next_try_s"] is None
    # the other peer's pair was not touched: still failing, still backing off
    assert env.manager.get(other.id).state is PairState.FAILING
    env.manager.stop()


async def test_wake_leaves_healthy_pairs_alone_and_is_rate_limited(
    nursery: anyio.abc.TaskGroup,
) -> None:
    env = await start_env(nursery, SyncOptions(backoff=HOUR, seed=2), timeout=20)
    pair = await env.create()
    await env.wait(pair.id, caught_up)
    assert env.manager.wake(SRC_KEY.did, reason="test") == []  # caught up: nothing to do
    env.source.fail = PeerUnreachable("gone")
    await env.manager.kick(pair.id)
    await env.wait(pair.id, failing)
    await entered_backoff(env.manager.puller(pair.id))
    requests = len(env.source.requests)
    fetched = env.source.fetched
    # A network change wakes every failing pair; a second wake within
    # WAKE_MIN_INTERVAL_S is refused: a chatty peer cannot make this node retry it in a
    # tight loop.
    assert env.manager.wake(None, reason="network") == [pair.id]
    assert env.manager.wake(SRC_KEY.did, reason="again") == []
    assert WAKE_MIN_INTERVAL_S >= 1
    with anyio.fail_after(20):
        await fetched.wait()
    await env.wait(pair.id, failing)
    await entered_backoff(env.manager.puller(pair.id))
    assert len(env.source.requests) == requests + 1  # one retry, then the backoff again
    env.manager.stop()


async def entered_backoff(puller: Puller) -> None:
    """Yield until the driver sleeps in its backoff (bounded; no wall-clock sleep)."""
    for _ in range(10_000):
        if puller.next_try_ms is not None:
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("the pair never entered its backoff")


def test_next_try_s_and_the_pair_view() -> None:
    assert next_try_s(None, 1000) is None
    assert next_try_s(6_000, 1_000) == 5.0
    assert next_try_s(500, 1_000) == 0.0  # overdue shows 0, never negative
    assert PairStatus.__attrs_attrs__.next_try_s.default is None  # type: ignore[attr-defined]
