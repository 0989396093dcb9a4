"""A pulling node killed with SIGKILL at random points converges without loss,
duplicates or gaps.

The source A runs in this process (a real node on 127.0.0.1); the target B is a
child process (``sync_node_child.py``) on its own data dir, killed at least ten
times mid-sync at random points and restarted each time. After every kill B's
store must hold exactly the records its stored cursor covers (records and cursor
commit in one transaction); at the end it holds A's records exactly once, with
contiguous sequence numbers.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from fedpeer.identity.keys import SigningKey
from fedpeer.peer import Node, open_node
from fedpeer.store import SQLiteStore
from fedpeer.store.base import StateTx
from fedpeer.sync.feed import Cursor
from fedpeer.sync.records import build_record

CHILD = Path(__file__).with_name("sync_node_child.py")
N = 5000
PAGE = 50
KILLS = 10

pytestmark = pytest.mark.slow


class Child:
    """A child node process and its JSON-line output."""

    def __init__(self, proc: trio.Process) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self._stream = proc.stdout
        self._buffer = b""
        self.events: list[dict[str, object]] = []

    async def wait_for(self, pred: object) -> dict[str, object]:
        """Read lines until one satisfies ``pred`` (bounded by the caller's timeout)."""
        assert callable(pred)
        for ev in self.events:
            if pred(ev):
                return ev
        while True:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                raise AssertionError(f"child exited early; events: {self.events[-5:]}")
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                new: dict[str, object] = json.loads(line)
                self.events.append(new)
                if pred(new):
                    return new

    async def kill(self) -> None:
        self.proc.kill()
        with trio.fail_after(30):
            await self.proc.wait()
        assert self.proc.returncode == -signal.SIGKILL


async def start_child(b_dir: Path, a: Node, token: str, log: Path) -> Child:
    with log.open("ab") as err:
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(CHILD), str(b_dir), a.url, token, str(PAGE)],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    return Child(proc)


async def check_store(path: Path, expect_cids: list[bytes] | None = None) -> int:
    """B's store after a kill: intact, cursor == records stored, no gaps or duplicates."""
    store = await SQLiteStore.open(path)
    try:
        assert await store.integrity_check() == "ok"
        pairs = await store.list_state("pairs")
        assert len(pairs) == 1
        cursor = pairs[0][1]["cursor"]
        seq = Cursor.decode(str(cursor)).seq if cursor else 0
        page = await store.changes(0, 100_000)
        seqs = [r.seq for r in page.records]
        assert seqs == list(range(1, len(seqs) + 1))  # contiguous, no duplicate rows
        cids = [r.cid for r in page.records]
        assert len(set(cids)) == len(cids)
        # the cursor never runs ahead of (or behind) the records it covers
        assert len(cids) == seq
        if expect_cids is not None:
            assert cids == expect_cids[: len(cids)]
        return seq
    finally:
        await store.aclose()


async def test_sigkill_mid_sync_converges_without_loss_or_duplicates(tmp_path: Path) -> None:
    key = SigningKey.generate()
    now = int(time.time() * 1000)
    recs = [
        build_record(key, namespace="ns", thread=f"t{i % 5}", kind="k", body={"i": i}, ts=now)
        for i in range(N)
    ]
    a_dir = tmp_path / "a"
    a_dir.mkdir()
    b_dir = tmp_path / "b"
    log = tmp_path / "child.log"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    async with open_node(a_dir, key=key) as a:
        news = [r.to_new() for r in recs]

        def commit(tx: StateTx) -> None:
            tx.put_records(news)

        await a.store.transact(commit)
        assert a.admin_token_path is not None
        token = a.admin_token_path.read_text().strip()
        a_cids = [r.cid.raw for r in recs]
        mid_sync_kills = 0
        last = 0
        for _ in range(KILLS):
            # Each kill point lies one or two pages past what B already stored, so
            # every kill lands mid-sync however fast B pulls (B commits at most three
            # pages at a time: at most ~250 records of progress a round, far from N).
            target = last + rng.randint(1, 2) * PAGE
            child = await start_child(b_dir, a, token, log)
            try:
                with trio.fail_after(60):
                    seen = await child.wait_for(
                        lambda ev, t=target: (
                            ev.get("event") in ("page", "caught_up")
                            and int(str(ev.get("seq"))) >= t
                        )
                    )
                await trio.sleep(rng.uniform(0, 0.01))  # picks the kill point, not synchronisation
            finally:
                await child.kill()
            if int(str(seen["seq"])) < N:
                mid_sync_kills += 1
            stored = await check_store(b_dir / "store.sqlite3", a_cids)
            assert stored >= last  # progress is never lost
            last = stored
        assert mid_sync_kills >= KILLS, f"seed {seed}"
        # a last run to the end
        child = await start_child(b_dir, a, token, log)
        try:
            with trio.fail_after(60):
                done = await child.wait_for(lambda ev: ev.get("event") == "caught_up")
        finally:
            await child.kill()
        assert done["seq"] == N, f"seed {seed}"
        assert done["count"] == N, f"seed {seed}"
        assert await check_store(b_dir / "store.sqlite3", a_cids) == N
