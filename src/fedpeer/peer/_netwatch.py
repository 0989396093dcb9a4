"""Notice this machine's network coming back, so failing pairs retry at once.

A laptop that slept, changed Wi-Fi or got its cable back has pairs backing off
for up to the backoff cap (5 min by default). :func:`watch_network` polls a
cheap snapshot of the network (each interface's operational state from
``/sys/class/net`` on Linux, and every interface address) and, when an
interface came up or an address appeared, calls ``on_change()``: the node then
wakes every failing pair (:meth:`~fedpeer.sync.PairManager.wake`). A link going
down is not reported (nothing to retry). Polling, not netlink: it works the
same on every platform and in every network namespace, costs one directory
walk per second, and needs no privileges.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import anyio

__all__ = [
    "FAILING_READ_WAIT_CAP_S",
    "NetworkSnapshot",
    "came_up",
    "failing_read_wait_s",
    "snapshot",
    "watch_network",
]

log = logging.getLogger("fedpeer.net")

NetworkSnapshot = frozenset[tuple[str, str]]
"""``{(interface, "up"|"down"|...), (interface, "ip:<address>")}``."""

_SYS_NET = Path("/sys/class/net")


def snapshot() -> NetworkSnapshot:
    """The network as seen now: interface states and addresses (blocking, cheap)."""
    import ifaddr

    items: set[tuple[str, str]] = set()
    try:
        for entry in _SYS_NET.iterdir():
            try:
                state = (entry / "operstate").read_text().strip()
            except OSError:
                continue
            items.add((entry.name, state))
    except OSError:
        pass  # not Linux: the addresses alone tell
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            items.add((adapter.nice_name, f"ip:{text}"))
    return frozenset(items)


def came_up(before: NetworkSnapshot, after: NetworkSnapshot) -> list[str]:
    """What is new in ``after`` that may let a peer be reached again: an interface
    whose state became ``up`` (or ``unknown``, what loopback-like links report) or
    an address that appeared. Pure."""
    states_before = {name: state for name, state in before if not state.startswith("ip:")}
    out = []
    for name, state in sorted(after - before):
        if state.startswith("ip:"):
            out.append(f"{name} {state[3:]}")
        elif state in ("up", "unknown") and states_before.get(name) != state:
            out.append(f"{name} {state}")
    return out


FAILING_READ_WAIT_CAP_S = 60.0
"""The longest wait between two reads of the interfaces while reading fails."""


def failing_read_wait_s(interval_s: float, failures: int) -> float:
    """The wait after the ``failures``-th failed read in a row: ``interval_s``
    doubled per failure after the first, capped at :data:`FAILING_READ_WAIT_CAP_S`
    (or ``interval_s`` if that is longer). A machine whose interfaces cannot be
    read (a container without netlink) costs a thread hop a minute, not a second."""
    cap = max(interval_s, FAILING_READ_WAIT_CAP_S)
    if failures <= 1:
        return min(interval_s, cap)
    return min(cap, interval_s * 2.0 ** min(failures - 1, 64))


async def watch_network(
    on_change: Callable[[list[str]], object],
    *,
    stop: anyio.Event | None = None,
    interval_s: float = 1.0,
    read: Callable[[], NetworkSnapshot] = snapshot,
) -> None:
    """Poll the network every ``interval_s`` and call ``on_change(what)`` when
    something came up (see :func:`came_up`). Runs until ``stop`` is set or it is
    cancelled. A failing read (``read``: :func:`snapshot`, tests inject theirs) is
    logged once and retried, less often while it keeps failing
    (:func:`failing_read_wait_s`), the first read included: the watcher starts
    comparing from the first snapshot it gets, and polls every ``interval_s``
    again once a read works."""
    async with anyio.create_task_group() as tg:
        if stop is not None:

            async def _stopper() -> None:
                await stop.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(_stopper)
        await _poll(on_change, interval_s, read)
        tg.cancel_scope.cancel()


async def _poll(
    on_change: Callable[[list[str]], object],
    interval_s: float,
    read: Callable[[], NetworkSnapshot],
) -> None:
    last: NetworkSnapshot | None = None
    failures = 0
    while True:
        try:
            now = await anyio.to_thread.run_sync(read)
        except Exception as exc:  # ifaddr trouble must never stop the node (nor the watcher)
            if not failures:
                log.warning(
                    "cannot read the network interfaces (%s); retrying, less often while it "
                    "fails (up to every %g s); network changes go unnoticed meanwhile",
                    exc,
                    max(interval_s, FAILING_READ_WAIT_CAP_S),
                )
            failures += 1
            await anyio.sleep(failing_read_wait_s(interval_s, failures))
            continue
        if failures:
            log.info("reading the network interfaces works again")
        failures = 0
        what = came_up(last, now) if last is not None else []
        last = now
        if what:
            log.info("network changed (%s): waking failing pairs", ", ".join(what[:8]))
            try:
                on_change(what)
            except Exception:
                log.exception("the network-change hook failed")
        await anyio.sleep(interval_s)
