"""SQLiteStore survives SIGKILL at random points: whole transactions or nothing.

A real child process (same interpreter) commits batches of 50 records plus a
state row naming the batch, in one transaction each, and is killed with
SIGKILL at a random moment. After every kill the store must reopen with
``integrity_check == ok``, hold exactly ``50 * batch`` records, every batch
complete, and every batch the child reported as committed must be there
(WAL is durable against process death even with synchronous=NORMAL; the
default FULL adds power loss).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from fedpeer.store import ChangeFilter, SQLiteStore

CHILD = Path(__file__).with_name("crash_child.py")
BATCH = 50


class ChildOutput:
    def __init__(self, proc: anyio.abc.Process) -> None:
        assert proc.stdout is not None
        self._stream = proc.stdout
        self.buffer = b""

    async def wait_for_line(self, prefix: str) -> None:
        """Read until a line starting with ``prefix`` arrived (bounded by the caller)."""
        while not any(line.startswith(prefix) for line in self.lines()):
            try:
                chunk = await self._stream.receive(65536)
            except anyio.EndOfStream:
                raise AssertionError(f"child exited before printing {prefix!r}") from None
            self.buffer += chunk

    async def drain(self) -> None:
        for _ in range(100_000):  # bounded: the child is dead, its pipe ends
            try:
                self.buffer += await self._stream.receive(65536)
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return

    def lines(self) -> list[str]:
        return [ln for ln in self.buffer.decode().split("\n")[:-1]]

    def last_committed(self) -> int:
        done = [int(ln.split()[1]) for ln in self.lines() if ln.startswith("committed ")]
        return max(done, default=0)


async def run_and_kill(path: Path, rng: random.Random, wait_for: str) -> int:
    """Start the child, wait for ``wait_for``, kill it after a random delay.

    Returns the highest batch the child reported committed.
    """
    proc = await anyio.open_process(
        [sys.executable, str(CHILD), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out = ChildOutput(proc)
    try:
        with anyio.fail_after(30):
            await out.wait_for_line(wait_for)
        await anyio.sleep(rng.uniform(0, 0.04))  # picks the kill point, not synchronisation
    finally:
        proc.kill()
        with anyio.fail_after(30):
            await proc.wait()
            await out.drain()
    if proc.returncode != -signal.SIGKILL:
        assert proc.stderr is not None
        err = await proc.stderr.receive(65536)
        raise AssertionError(f"child ended on its own ({proc.returncode}): {err.decode()}")
    return out.last_committed()


async def check_store(path: Path, reported: int) -> int:
    store = await SQLiteStore.open(path)
    try:
        assert await store.integrity_check() == "ok"
        state = await store.get_state("crash", "progress")
        batch = int(str(state["batch"])) if state else 0
        assert batch >= reported, "a batch reported committed was lost"
        assert await store.count() == BATCH * batch
        threads = await store.threads()
        assert sorted(t.namespace for t in threads) == sorted(f"b{n}" for n in range(1, batch + 1))
        assert all(t.count == BATCH for t in threads)
        if batch:
            page = await store.changes(0, BATCH, ChangeFilter(namespace_prefix=f"b{batch}"))
            assert len(page.records) == BATCH or page.last_seq < page.head_seq
        return batch
    finally:
        await store.aclose()


@pytest.mark.slow
async def test_sigkill_never_leaves_a_partial_batch(tmp_path: Path) -> None:
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    # fresh files killed right after "start": the kill may land inside open/migration
    for i in range(6):
        path = tmp_path / f"fresh-{i}.db"
        reported = await run_and_kill(path, rng, "start")
        if path.exists():
            await check_store(path, reported)
    # one file killed again and again while it commits
    path = tmp_path / "main.db"
    total = 0
    for _ in range(20):
        reported = await run_and_kill(path, rng, "committed ")
        assert reported > total, f"seed {seed}: the child made no progress"
        total = await check_store(path, reported)
    assert total >= 20
