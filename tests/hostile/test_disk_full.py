"""A full disk: writes fail with STORE_FULL (507) and a log line, reads keep
serving, writes resume once space is back. The store sits on a real 4 MiB tmpfs
that the test fills to the last byte (the kernel's ENOSPC, not a mock)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from fedpeer.errors import ConfigInvalid
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import Node, NodeConfig, open_node
from fedpeer.store import SQLiteStore
from fedpeer.sync.backoff import Backoff
from fedpeer.sync.options import SyncOptions
from fedpeer.sync.pairs import Pair, PairState
from fedpeer.sync.records import build_record
from tests.hostile.diskfill import SmallDisk

NOAUTH = NodeConfig(auth_enabled=False, rate_per_s=1e6, rate_burst=10**6)


def _body(i: int, size: int = 2000) -> dict[str, object]:
    return {"namespace": "notes", "thread": "t", "kind": "note", "body": f"{i}:" + "x" * size}


async def _post_until_full(client: httpx.AsyncClient) -> httpx.Response:
    """Append until one is refused (bounded): the disk is already full, so that is soon
    (a commit may still fit in space SQLite had already allocated)."""
    for i in range(2000):
        r = await client.post("/v1/records", json=_body(i))
        if r.status_code != 201:
            return r
    raise AssertionError("2000 appends of 2 KB each fitted on a full 4 MiB disk")


async def test_full_disk_refuses_writes_with_507_keeps_reads_and_recovers(
    small_disk: SmallDisk, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fedpeer.store")
    async with (
        open_node(small_disk.path / "node", config=NOAUTH) as node,
        httpx.AsyncClient(base_url=node.url, timeout=30) as client,
    ):
        before = []
        for i in range(5):
            r = await client.post("/v1/records", json=_body(i, 100))
            assert r.status_code == 201, r.text
            before.append(r.json()["cid"])
        small_disk.fill()
        refused = await _post_until_full(client)
        assert refused.status_code == 507, refused.text
        error = refused.json()["error"]
        assert error["code"] == "STORE_FULL"
        assert "free some space" in error["message"]
        full_lines = [r for r in caplog.records if "STORE_FULL" in r.getMessage()]
        assert full_lines
        assert full_lines[0].levelno == logging.ERROR
        assert str(small_disk.path) in full_lines[0].getMessage()
        count = (await client.get("/health")).json()["records"]
        # a second refusal: same answer, no second log line within the minute
        again = await client.post("/v1/records", json=_body(10_000))
        assert again.status_code == 507
        assert len([r for r in caplog.records if "STORE_FULL" in r.getMessage()]) == 1

        # reads keep serving, with everything stored before
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json()["records"] == count
        feed = await client.get("/v1/sync/changes", params={"limit": 1000})
        assert feed.status_code == 200
        listed = [r["cid"]["/"] for r in feed.json()["records"]]
        assert listed[:5] == before
        assert len(listed) == count
        got = await client.get(f"/v1/records/{before[0]}")
        assert got.status_code == 200

        # space comes back: the next write works, nothing was lost
        small_disk.free()
        back = await client.post("/v1/records", json=_body(20_000))
        assert back.status_code == 201, back.text
        assert (await client.get("/health")).json()["records"] == count + 1
        assert any("writes work again" in r.getMessage() for r in caplog.records)
        assert await node.store.integrity_check() == "ok"  # type: ignore[attr-defined]


async def test_pull_into_a_full_disk_fails_with_store_full_then_resumes(
    small_disk: SmallDisk, tmp_path: Path
) -> None:
    opts = SyncOptions(backoff=Backoff(base_s=0.05, cap_s=0.2), seed=7)
    async with (
        open_node(tmp_path / "source", config=NOAUTH) as source,
        open_node(small_disk.path / "target", sync=opts) as target,
    ):
        pair = await target.pair_with(source.url, token=None)
        with trio.fail_after(30):
            await target.pairs.wait_for(pair.id, lambda p: p.state is PairState.CAUGHT_UP)
        small_disk.fill()
        for i in range(300):  # the target's open longpoll answers: it pulls, and cannot store
            await source.append(namespace="notes", thread="t", kind="note", body=_body(i)["body"])

        def failing_full(p: Pair) -> bool:
            return p.last_error is not None and p.last_error.code == "STORE_FULL"

        with trio.fail_after(30):
            failed = await target.pairs.wait_for(pair.id, failing_full)
        assert failed.state is PairState.FAILING
        assert await target.store.count() < 300
        small_disk.free()

        def caught_up(p: Pair) -> bool:
            # all 300 (a page fetched while the disk was full may be an older one)
            return (
                p.state is PairState.CAUGHT_UP and p.last_error is None and p.stats.records >= 300
            )

        with trio.fail_after(30):
            await target.pairs.wait_for(pair.id, caught_up)
        assert await target.store.count() == 300
        await _same_cids(source, target)


async def _same_cids(a: Node, b: Node) -> None:
    pa = await a.store.changes(0, 1000)
    pb = await b.store.changes(0, 1000)
    assert {r.cid for r in pa.records} == {r.cid for r in pb.records}


async def test_records_never_eat_into_the_free_disk_floor(small_disk: SmallDisk) -> None:
    """A peer or holder that sends records without end, each within its quota,
    must not take the machine's last free space: records stop at the share of
    the disk the node keeps free (``min_free_disk_percent``), as on a full disk
    (507 STORE_FULL, nothing stored, reads serving), while the disk still has
    room; writes resume once space is back. Here the floor is 50 % of the 4 MiB
    tmpfs and a filler file takes the disk just below it."""
    cfg = attrs.evolve(NOAUTH, min_free_disk_percent=50)
    async with (
        open_node(small_disk.path / "node", config=cfg) as node,
        httpx.AsyncClient(base_url=node.url, timeout=30) as client,
    ):
        first = await client.post("/v1/records", json=_body(0, 100))
        assert first.status_code == 201, first.text
        st = os.statvfs(small_disk.path)
        free = st.f_bavail * st.f_frsize
        # leave 45 % of the disk free: under the floor, with room to spare
        small_disk.take(free - int(st.f_blocks * st.f_frsize * 0.45))
        count = await node.store.count()
        refused = await client.post("/v1/records", json=_body(1, 100))
        assert refused.status_code == 507, refused.text
        assert refused.json()["error"]["code"] == "STORE_FULL"
        assert "min_free_disk_percent" in refused.json()["error"]["message"]
        st = os.statvfs(small_disk.path)
        assert st.f_bavail * st.f_frsize > st.f_blocks * st.f_frsize * 0.4  # not full at all
        assert await node.store.count() == count
        got = await client.get(f"/v1/records/{first.json()['cid']}")
        assert got.status_code == 200
        # state writes still go through (a pair's cursor, a grant)
        await node.store.transact(lambda tx: tx.put("meta", "probe", {"ok": True}))

        small_disk.free()
        back = await client.post("/v1/records", json=_body(2, 100))
        assert back.status_code == 201, back.text
        assert await node.store.count() == count + 1


async def test_the_floor_is_checked_when_the_store_opens(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_free_percent"):
        await SQLiteStore.open(tmp_path / "s.db", min_free_percent=51)
    with pytest.raises(ConfigInvalid):
        NodeConfig(min_free_disk_percent=-1)
    with pytest.raises(ConfigInvalid):
        NodeConfig(min_free_disk_percent=True)  # type: ignore[arg-type]
    assert NodeConfig().min_free_disk_percent == 1.0


async def test_a_file_system_that_reports_no_size_is_not_held_to_a_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: some FUSE and virtual file systems report no blocks at all; the
    floor was then 0 and so was the free space, and every record write was
    STORE_FULL. Such a file system is not held to the floor (this one cannot be
    mounted here: its statvfs answer is faked)."""
    import fedpeer.store.sqlite as sqlite_mod

    real = os.statvfs

    def sizeless(path: object) -> os.statvfs_result:
        st = real(path)  # type: ignore[arg-type]
        fields = list(st)
        fields[0] = fields[1] = 4096  # f_bsize, f_frsize
        fields[2] = fields[3] = fields[4] = 0  # f_blocks, f_bfree, f_bavail
        return os.statvfs_result(fields)

    store = await SQLiteStore.open(tmp_path / "s.db", min_free_percent=10)
    try:
        monkeypatch.setattr(sqlite_mod.os, "statvfs", sizeless)
        key = SigningKey.generate()
        rec = build_record(key, namespace="n", thread="t", kind="k", body=1)
        result = await store.put([rec.to_new()])
        assert len(result.new) == 1
    finally:
        await store.aclose()
