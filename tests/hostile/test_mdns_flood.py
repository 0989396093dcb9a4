"""A flood of mDNS names that never resolve keeps the node's books bounded, and a
real peer announced in the middle of it still shows up at once.

Found by a read-only audit: every announced name started a resolve task (each
holding a slot of the one limiter the manifest checks also used, for its 3 s
timeout), every name that did not resolve was tried again on every poll, and a
goodbye left an entry behind for good. 5,000 names with a PTR record and nothing
else left 4,233 tasks waiting, and after goodbyes for all of them 5,000 entries.
Now a name resolves from zeroconf's cache when its announcement is complete there
(an honest peer's is: SRV, TXT and addresses come in one packet), at most
``_MAX_RESOLVING`` names go to the network at once, the rest wait in a bounded
list (MAX_ENTRIES, the longest-waiting one makes room) with a retry delay that
doubles up to five minutes, goodbye bookkeeping only exists while a name is
being resolved, and manifest checks have their own limiter.

The zeroconf here is a stand-in for the one thing this machine cannot produce,
a LAN host sending thousands of PTR records: its cache is zeroconf's own
``DNSCache``, and the real peer's announcement in it is a real signed one.
"""

from __future__ import annotations

import threading
import time

import anyio
import attrs

from fedpeer.identity.keys import SigningKey
from fedpeer.peer._mdns_roster import MAX_ENTRIES
from fedpeer.peer.discovery import _MAX_RESOLVING, _RETRY_MAX_S, SERVICE_TYPE, Discovery

FLOOD = 5000


class FloodZeroconf:
    """Zeroconf as a flooded LAN shows it: names whose resolve waits its whole
    timeout and finds nothing (a PTR with no SRV or TXT), and a cache that holds
    whatever complete announcement the test puts in it."""

    def __init__(self) -> None:
        from zeroconf._cache import DNSCache

        self.cache = DNSCache()
        self.network_resolves = 0
        self._lock = threading.Lock()

    def get_service_info(self, type_: str, name: str, timeout: int = 3000) -> None:
        with self._lock:  # called from worker threads
            self.network_resolves += 1
        time.sleep(timeout / 1000)  # the resolve's own timeout, in a worker thread
        return None


def _names(n: int) -> list[str]:
    return [f"flood-{i}.{SERVICE_TYPE}" for i in range(n)]


async def test_a_flood_of_unresolvable_names_is_bounded_and_a_real_peer_still_shows() -> None:
    # resolves outlast the test: the slots it sees taken stay taken
    discovery = Discovery(key=SigningKey.generate(), port=8750, resolve_timeout_ms=5000)
    zc = FloodZeroconf()
    peer = Discovery(key=SigningKey.generate(), port=8751)
    peer_name = f"bob-peer.{SERVICE_TYPE}"
    announcement = peer._service_info(peer_name, ["127.0.0.1"], time.time())
    send, recv = anyio.create_memory_object_stream[tuple[str, str]](FLOOD * 2 + 10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(discovery._consume, zc, recv, tg)  # type: ignore[arg-type]
        for name in _names(FLOOD):
            send.send_nowait((name, "added"))
        # the real peer, after the flood: its announcement is in the cache
        zc.cache.async_add_records(
            [announcement.dns_service(), announcement.dns_text(), *announcement.dns_addresses()]
        )
        seen = discovery.version
        send.send_nowait((peer_name, "added"))
        with anyio.fail_after(10):  # it comes after 5,000 names, without waiting on them
            while discovery.roster.get(peer_name) is None:
                seen = await discovery.wait_changed(seen)
        assert discovery.roster.get(peer_name).did == peer.key.did  # type: ignore[union-attr]
        assert len(discovery._resolving) <= _MAX_RESOLVING
        assert len(discovery._unresolved) <= MAX_ENTRIES
        assert zc.network_resolves <= _MAX_RESOLVING  # not one per name
        # goodbyes for every name: nothing is kept for names not being resolved
        for name in _names(FLOOD):
            send.send_nowait((name, "removed"))
        send.send_nowait((peer_name, "removed"))
        with anyio.fail_after(10):
            while discovery.roster.get(peer_name) is not None:
                seen = await discovery.wait_changed(seen)
        assert discovery._unresolved == {}
        assert set(discovery._epoch) <= set(discovery._resolving)
        assert len(discovery._resolving) <= _MAX_RESOLVING
        tg.cancel_scope.cancel()


def test_a_name_that_does_not_resolve_waits_longer_each_time_and_the_list_is_bounded() -> None:
    discovery = Discovery(key=SigningKey.generate(), port=8750, poll_s=5.0)
    delays = []
    for _ in range(10):
        discovery._park("x", "x", failed=True)
        delays.append(discovery._unresolved["x"].delay)
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0, 300.0]
    assert _RETRY_MAX_S == 300.0
    # a new announcement of a waiting name does not cut its wait
    due = discovery._unresolved["x"].due
    discovery._park("x", "x", failed=False)
    assert discovery._unresolved["x"] == attrs.evolve(discovery._unresolved["x"], due=due)
    assert discovery._unresolved["x"].delay == 300.0
    # a name waiting only for a free slot is due at once
    discovery._park("fresh", "fresh", failed=False)
    assert discovery._unresolved["fresh"].delay == 0.0
    assert discovery._unresolved["fresh"].due <= time.monotonic()
    for i in range(MAX_ENTRIES + 50):
        discovery._park(f"n{i}", f"n{i}", failed=True)
    assert len(discovery._unresolved) == MAX_ENTRIES
    assert "x" not in discovery._unresolved  # the name that failed most made room first
    assert "fresh" in discovery._unresolved  # never failed: kept
    assert f"n{MAX_ENTRIES + 49}" in discovery._unresolved


class SlowFloodZeroconf(FloodZeroconf):
    """The flood, plus one real peer that answers a network query at once (its
    announcement is not in the cache: it must take a network slot)."""

    def __init__(self, real: str, info: object) -> None:
        super().__init__()
        self.real, self.info = real, info

    def get_service_info(self, type_: str, name: str, timeout: int = 3000) -> object:
        if name == self.real:
            return self.info
        return super().get_service_info(type_, name, timeout)


async def test_a_peer_waiting_for_a_network_slot_gets_one_as_soon_as_one_frees() -> None:
    """Slots go to waiting names as they free up (not only on the next poll, which
    this test does not run), and a name that failed is not tried again before
    its delay: 200 flood names are each tried once."""
    discovery = Discovery(key=SigningKey.generate(), port=8750, resolve_timeout_ms=100)
    peer = Discovery(key=SigningKey.generate(), port=8751)
    peer_name = f"carol-peer.{SERVICE_TYPE}"
    zc = SlowFloodZeroconf(peer_name, peer._service_info(peer_name, ["127.0.0.1"], time.time()))
    send, recv = anyio.create_memory_object_stream[tuple[str, str]](1000)
    async with anyio.create_task_group() as tg:
        tg.start_soon(discovery._consume, zc, recv, tg)  # type: ignore[arg-type]
        for name in _names(200):
            send.send_nowait((name, "added"))
        send.send_nowait((peer_name, "added"))  # waits behind the flood for a slot
        for name in _names(200):  # announced again while waiting: no extra resolves
            send.send_nowait((name, "updated"))
        seen = discovery.version
        with anyio.fail_after(30):
            while discovery.roster.get(peer_name) is None:
                seen = await discovery.wait_changed(seen)
        tg.cancel_scope.cancel()
    assert zc.network_resolves <= 200 + _MAX_RESOLVING, zc.network_resolves
