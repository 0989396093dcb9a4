"""A source node whose store goes back in time must not make its readers skip records.

The source's ``store.sqlite3`` is backed up while it runs (SQLite's online
backup API, as ``sqlite3 .backup`` does), more records are appended and pulled
by a second node, then the source stops, the older copy is put back (what an
operator restoring a backup does; losing the WAL tail after a power cut with
``synchronous=NORMAL`` looks the same) and the source starts again on the same
port and appends new records. Those reuse the seqs the reader's cursor already
passed. Before cursors carried a fingerprint of the record at their seq, the
reader carried on from its cursor and silently skipped them.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path

import pytest
import trio

from fedpeer.peer import Node, NodeConfig, open_node
from fedpeer.peer.node import STORE_FILE
from fedpeer.store import Store
from fedpeer.sync import Cursor, fingerprint
from fedpeer.sync.backoff import Backoff
from fedpeer.sync.options import SyncEvent, SyncOptions
from fedpeer.sync.pairs import Pair, PairState

FAST = SyncOptions(backoff=Backoff(base_s=0.02, cap_s=0.3), seed=3)
BEFORE, AFTER_SNAPSHOT = 10, 10


def _port(node: Node) -> int:
    port = urllib.parse.urlsplit(node.url).port
    assert port is not None
    return port


def _token(node: Node) -> str:
    assert node.admin_token_path is not None
    return node.admin_token_path.read_text().strip()


def _backup(src: Path, dst: Path) -> None:
    """An online, consistent copy of a live SQLite store (the backup API)."""
    with sqlite3.connect(src) as live, sqlite3.connect(dst) as copy:
        live.backup(copy)
    live.close()
    copy.close()


def _restore(copy: Path, data_dir: Path) -> None:
    """Put the older copy back while the node is stopped (its WAL goes too)."""
    for suffix in ("", "-wal", "-shm"):
        (data_dir / (STORE_FILE + suffix)).unlink(missing_ok=True)
    (data_dir / STORE_FILE).write_bytes(copy.read_bytes())


async def _cids(store: Store) -> list[bytes]:
    out: list[bytes] = []
    since = 0
    for _ in range(1000):
        page = await store.changes(since, 1000)
        out.extend(r.cid for r in page.records)
        if page.last_seq >= page.head_seq:
            return out
        since = page.last_seq
    raise AssertionError("unbounded feed")


@pytest.mark.parametrize(
    "appended_after_restore",
    [
        15,  # the new records run past the reader's old cursor: it must not skip seqs 11..20
        5,  # the head stays below the reader's cursor: a rollback, not "from the future"
    ],
)
async def test_restored_source_store_resets_the_reader_and_it_misses_nothing(
    tmp_path: Path, appended_after_restore: int
) -> None:
    a_dir, snapshot = tmp_path / "a", tmp_path / "a-backup.sqlite3"
    events: list[SyncEvent] = []
    cfg = NodeConfig(handle="source")
    async with open_node(tmp_path / "b", sync=FAST) as b:
        b.pairs.add_listener(events.append)
        async with open_node(a_dir, config=cfg) as a:
            port, token, epoch = _port(a), _token(a), a.store.epoch
            for i in range(BEFORE):
                await a.append(namespace="ns", thread="t", kind="k", body={"old": i})
            await trio.to_thread.run_sync(_backup, a_dir / STORE_FILE, snapshot)
            for i in range(AFTER_SNAPSHOT):
                await a.append(namespace="ns", thread="t", kind="k", body={"lost": i})
            pair = await b.pair_with(a.url, token=token, peer_did=a.did)
            with trio.fail_after(30):
                first = await b.pairs.wait_for(
                    pair.id, lambda p: p.state is PairState.CAUGHT_UP and p.stats.records >= 20
                )
            assert Cursor.decode(first.cursor or "").seq == BEFORE + AFTER_SNAPSHOT
            pulled_before = set(await _cids(b.store))
            assert len(pulled_before) == BEFORE + AFTER_SNAPSHOT
            # The reader holds off while the source is down and refilled, so its
            # first request after the restore sees the refilled store (otherwise
            # it could race the appends and meet the shorter store first).
            await b.pairs.pause(pair.id)
        await trio.to_thread.run_sync(_restore, snapshot, a_dir)
        async with open_node(a_dir, port=port, config=cfg) as a2:
            assert a2.store.epoch == epoch  # the same store, gone back in time
            assert await a2.store.head_seq() == BEFORE
            for i in range(appended_after_restore):
                await a2.append(namespace="ns", thread="t", kind="k", body={"new": i})
            head = await a2.store.head_seq()
            assert head == BEFORE + appended_after_restore
            source_cids = set(await _cids(a2.store))
            head_cid = await a2.store.cid_at(head)
            assert head_cid is not None
            await b.pairs.resume(pair.id)

            def done(p: Pair) -> bool:
                if p.state is not PairState.CAUGHT_UP or p.cursor is None:
                    return False
                c = Cursor.decode(p.cursor)
                return c.seq == head and c.fingerprint == fingerprint(
                    head_cid, key=a2.store.cursor_key
                )

            with trio.fail_after(30):
                await b.pairs.wait_for(pair.id, done)
            got = await _cids(b.store)
            assert len(got) == len(set(got))  # no duplicate rows
            missing = (pulled_before | source_cids) - set(got)
            assert not missing, f"the reader skipped {len(missing)} records after the restore"
            assert set(got) == pulled_before | source_cids
            assert len(got) == BEFORE + AFTER_SNAPSHOT + appended_after_restore
            resets = [e for e in events if e.kind == "reset" and e.pair.id == pair.id]
            assert [e.code for e in resets] == ["CURSOR_RESET"]
            audit = [e.event for e in await b.store.audit_log(limit=1000)]
            assert any(ev.get("type") == "sync.cursor_reset" for ev in audit)
