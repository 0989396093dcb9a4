"""The network watcher (issue 14): what counts as the network coming back."""

from __future__ import annotations

import itertools
import time

import anyio
import anyio.from_thread

from fedpeer.peer._netwatch import (
    FAILING_READ_WAIT_CAP_S,
    came_up,
    failing_read_wait_s,
    snapshot,
    watch_network,
)


def test_an_interface_coming_up_or_a_new_address_is_reported() -> None:
    down = frozenset({("eth0", "lowerlayerdown"), ("eth0", "ip:10.0.0.2"), ("lo", "unknown")})
    up = frozenset({("eth0", "up"), ("eth0", "ip:10.0.0.2"), ("lo", "unknown")})
    assert came_up(down, up) == ["eth0 up"]
    assert came_up(up, down) == []  # going down: nothing to retry
    moved = frozenset({("eth0", "up"), ("eth0", "ip:10.0.0.9"), ("lo", "unknown")})
    assert came_up(up, moved) == ["eth0 10.0.0.9"]
    assert came_up(up, up) == []


def test_a_snapshot_of_this_machine_lists_loopback() -> None:
    snap = snapshot()
    assert any(state == "ip:127.0.0.1" for _name, state in snap)


async def test_the_watcher_stops_when_told() -> None:
    stop = anyio.Event()
    calls: list[list[str]] = []
    polled = anyio.Event()
    reads: list[int] = []

    def read() -> frozenset[tuple[str, str]]:
        reads.append(1)
        anyio.from_thread.run_sync(polled.set)  # read() runs in a worker thread
        return snapshot()

    with anyio.fail_after(10):  # the watcher, running, ends once told: fail_after proves it
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: watch_network(calls.append, stop=stop, interval_s=0.01, read=read)
            )
            await polled.wait()  # it is polling
            stop.set()
    assert reads  # it really ran before it was stopped
    assert all(isinstance(c, list) for c in calls)  # it ended; any report is a list


UP = frozenset({("eth0", "up"), ("lo", "unknown")})


async def _watch_script(script: list[object], interval_s: float) -> tuple[list[str], list[float]]:
    """Run the watcher on reads that follow ``script`` (a snapshot, or an exception
    to raise; then UP) until its first report; returns that report and when each
    read happened."""
    read_at: list[float] = []

    def read() -> frozenset[tuple[str, str]]:
        read_at.append(time.monotonic())
        item = script.pop(0) if script else UP
        if isinstance(item, Exception):
            raise item
        assert isinstance(item, frozenset)
        return item

    calls: list[list[str]] = []
    reported = anyio.Event()
    stop = anyio.Event()

    def on_change(what: list[str]) -> None:
        calls.append(what)
        reported.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: watch_network(on_change, stop=stop, interval_s=interval_s, read=read)
            )
            await reported.wait()
            stop.set()
    return calls[0], read_at


async def test_the_watcher_survives_failing_reads_even_the_first_ones() -> None:
    """ifaddr trouble at start (or later) must not end the watcher: it retries and
    reports what came up once reads work."""
    down = frozenset({("eth0", "lowerlayerdown"), ("lo", "unknown")})
    script: list[object] = [OSError("no netlink"), OSError("still none"), down, OSError("x"), UP]
    report, _read_at = await _watch_script(script, 0.001)
    assert report == ["eth0 up"]
    assert not script  # every scripted read happened, failures included


def test_the_wait_between_failing_reads_doubles_to_a_minute() -> None:
    waits = [failing_read_wait_s(1.0, n) for n in range(1, 10)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert failing_read_wait_s(1.0, 10**6) == FAILING_READ_WAIT_CAP_S  # no overflow
    assert failing_read_wait_s(120.0, 5) == 120.0  # a slower poll is never sped up


async def test_reads_that_keep_failing_are_retried_less_and_less_often() -> None:
    """A machine whose interfaces cannot be read (a container without netlink) is not
    asked every interval forever: the waits between failing reads double; once a read
    works the watcher reports again."""
    interval = 0.01
    lo_only = frozenset({("lo", "unknown")})
    report, read_at = await _watch_script([OSError("no netlink")] * 5 + [lo_only, UP], interval)
    assert report == ["eth0 up"]
    gaps = [b - a for a, b in itertools.pairwise(read_at[:6])]
    assert len(gaps) == 5
    for k, gap in enumerate(gaps):  # after the (k+1)-th failure: interval * 2**k
        assert gap >= failing_read_wait_s(interval, k + 1) * 0.99
    assert failing_read_wait_s(interval, 5) == interval * 16
