"""Idle readers with narrow grants cost a commit nothing: a longpoll or a continuous
feed is woken only by a commit that stored a record it may see (its grants and its
filter), and then promptly.

A real node (SQLite, hypercorn on loopback) whose store is wrapped in a counter of
``wait_for_seq`` wake-ups; readers are real HTTP clients. Before the waiter index
every commit woke every waiter, which then re-read its grants and rescanned the
feed: 40 idle narrow longpollers cut the append rate from 240/s to 51/s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing

from fedpeer.consent import grants, tokens
from fedpeer.consent.grants import Target
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import NodeConfig, PeerClient, open_node
from fedpeer.store import ChangeFilter, SQLiteStore, StateTx

CFG = NodeConfig(rate_per_s=1e6, rate_burst=10**6)
WAIT = 15.0


class CountingStore:
    """A Store that counts ``wait_for_seq`` wake-ups per interest (delegates the rest)."""

    def __init__(self, inner: SQLiteStore) -> None:
        self._inner = inner
        self.epoch = inner.epoch
        self.parked = 0
        self.woken: list[tuple[tuple[ChangeFilter, ...] | None, int]] = []
        self._changed = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def wait_for_seq(
        self, after_seq: int, interest: Sequence[ChangeFilter] | None = None
    ) -> int:
        self.parked += 1
        self._poke()
        try:
            extra = () if interest is None else (interest,)
            head = await self._inner.wait_for_seq(after_seq, *extra)
        finally:
            self.parked -= 1
            self._poke()
        self.woken.append((None if interest is None else tuple(interest), head))
        return head

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, pred: Callable[[], bool]) -> None:
        for _ in range(10_000):
            if pred():
                return
            await self._changed.wait()
        raise AssertionError("gave up waiting")

    def wakes_for(self, interest: tuple[ChangeFilter, ...] | None) -> int:
        return sum(1 for i, _h in self.woken if i == interest)


def _reader(tx: StateTx, name: str, target: Target) -> tuple[str, str]:
    did = SigningKey.generate().did
    _sa, issued = tokens.create_service_account(tx, name=name, holder_did=did, scopes=["reader"])
    grants.create_grant(tx, grantee_did=did, target=target)
    return did, issued.bearer


async def _head_cursor(url: str, token: str) -> str:
    async with PeerClient(url, token=token) as peer:
        return (await peer.changes()).next_cursor


async def test_narrow_waiters_sleep_through_other_commits_and_wake_for_theirs(
    tmp_path: Path,
) -> None:
    inner = await SQLiteStore.open(tmp_path / "store.sqlite3")
    store = CountingStore(inner)
    try:
        async with open_node(None, store=store, config=CFG) as node:  # type: ignore[arg-type]

            def mint(tx: StateTx) -> dict[str, str]:
                _d, narrow = _reader(tx, "narrow", Target("namespace", "mine/"))
                _d, wide = _reader(tx, "wide", Target("namespace", "app/"))
                _s, admin = tokens.create_service_account(
                    tx, name="ops", holder_did=SigningKey.generate().did, scopes=["admin"]
                )
                return {"narrow": narrow, "wide": wide, "admin": admin.bearer}

            tok = await node.store.transact(mint)
            await node.append(namespace="app/x", thread="t", kind="k", body="before")
            cursors = {name: await _head_cursor(node.url, t) for name, t in tok.items()}
            pages: dict[str, list[str]] = {}
            done = {name: trio.Event() for name in ("narrow", "wide", "admin")}
            streamed: list[str] = []
            stream_got = trio.Event()

            async def longpoll(name: str, namespace: str | None = None) -> None:
                async with PeerClient(node.url, token=tok[name]) as peer:
                    page = await peer.changes(
                        cursors[name], feed="longpoll", namespace=namespace, timeout=30
                    )
                pages[name] = [str(r.record.namespace) for r in page.records]
                done[name].set()

            async def stream() -> None:
                async with PeerClient(node.url, token=tok["narrow"]) as peer:
                    async for ev in peer.stream_changes(cursors["narrow"]):
                        if ev.record is not None:
                            streamed.append(ev.record.record.namespace)
                            stream_got.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(longpoll, "narrow")
                nursery.start_soon(longpoll, "wide")
                nursery.start_soon(longpoll, "admin", "other/")  # sees all, asks for other/
                nursery.start_soon(stream)
                with trio.fail_after(WAIT):
                    await store.until(lambda: store.parked == 4)

                # 50 commits the narrow readers may not see
                for i in range(50):
                    await node.append(namespace="app/x", thread="t", kind="k", body=i)
                with trio.fail_after(WAIT):  # the one reader that may see them: promptly
                    await done["wide"].wait()
                assert pages["wide"]
                assert set(pages["wide"]) == {"app/x"}  # the first of them (not "before")
                await trio.testing.wait_all_tasks_blocked()
                # one wake-up in all: the wide reader's (it asked for the first of them)
                assert len(store.woken) == 1
                assert store.woken[0][0] == (ChangeFilter("app/"),)
                assert store.parked == 3  # narrow longpoll, its stream, the admin's

                # now theirs: each wakes at once, with its record
                await node.append(namespace="mine/a", thread="t", kind="k", body="for narrow")
                with trio.fail_after(WAIT):
                    await done["narrow"].wait()
                    await stream_got.wait()
                assert pages["narrow"] == ["mine/a"]
                assert streamed == ["mine/a"]
                assert not done["admin"].is_set()
                await node.append(namespace="other/z", thread="t", kind="k", body="for admin")
                with trio.fail_after(WAIT):
                    await done["admin"].wait()
                assert pages["admin"] == ["other/z"]
                # one each for the narrow longpoll and stream, one for the admin's
                assert store.wakes_for((ChangeFilter("mine/"),)) == 2
                assert store.wakes_for((ChangeFilter("other/"),)) == 1
                nursery.cancel_scope.cancel()
    finally:
        await inner.aclose()


async def test_a_grant_change_wakes_a_narrow_waiter_to_look_again(tmp_path: Path) -> None:
    inner = await SQLiteStore.open(tmp_path / "store.sqlite3")
    store = CountingStore(inner)
    try:
        async with open_node(None, store=store, config=CFG) as node:  # type: ignore[arg-type]
            minted: dict[str, str] = {}

            def mint(tx: StateTx) -> None:
                minted["did"], minted["token"] = _reader(tx, "r", Target("namespace", "mine/"))

            await node.store.transact(mint)
            cursor = await _head_cursor(node.url, minted["token"])
            got: list[str] = []
            done = trio.Event()

            async def longpoll() -> None:
                async with PeerClient(node.url, token=minted["token"]) as peer:
                    page = await peer.changes(cursor, feed="longpoll", timeout=30)
                got.extend(r.record.namespace for r in page.records)
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(longpoll)
                with trio.fail_after(WAIT):
                    await store.until(lambda: store.parked == 1)
                await node.append(namespace="app/x", thread="t", kind="k", body=0)
                await trio.testing.wait_all_tasks_blocked()
                assert store.woken == []  # not its namespace

                def widen(tx: StateTx) -> None:
                    grants.create_grant(
                        tx, grantee_did=minted["did"], target=Target("namespace", "app/")
                    )

                await node.store.transact(widen)
                # woken by the grant at once (not at the end of its 30 s): its cursor is
                # still before the app/x record, which it may see now
                with trio.fail_after(WAIT):
                    await done.wait()
                assert got == ["app/x"]
                assert len(store.woken) == 1
    finally:
        await inner.aclose()


async def test_many_idle_narrow_longpolls_are_not_woken_by_a_burst(tmp_path: Path) -> None:
    inner = await SQLiteStore.open(tmp_path / "store.sqlite3")
    store = CountingStore(inner)
    try:
        async with (
            open_node(None, store=store, config=CFG) as node,  # type: ignore[arg-type]
            httpx.AsyncClient(base_url=node.url, timeout=30) as client,
        ):

            def mint(tx: StateTx) -> list[str]:
                return [_reader(tx, f"r{i}", Target("namespace", f"own{i}/"))[1] for i in range(40)]

            bearers = await node.store.transact(mint)
            cursor = await _head_cursor(node.url, bearers[0])

            async def longpoll(bearer: str) -> None:
                await client.get(
                    "/v1/sync/changes",
                    params={"feed": "longpoll", "since": cursor, "timeout": "30"},
                    headers={"Authorization": f"Bearer {bearer}"},
                )

            async with trio.open_nursery() as nursery:
                for bearer in bearers:
                    nursery.start_soon(longpoll, bearer)
                with trio.fail_after(WAIT):
                    await store.until(lambda: store.parked == 40)
                for i in range(100):
                    await node.append(namespace="busy", thread="t", kind="k", body=i)
                await trio.testing.wait_all_tasks_blocked()
                assert store.woken == []
                assert store.parked == 40
                nursery.cancel_scope.cancel()
    finally:
        await inner.aclose()
