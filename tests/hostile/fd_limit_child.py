"""A node in a process with few file descriptors, for tests/hostile/test_open_connections.py.

Run: ``python -m tests.hostile.fd_limit_child DATA_DIR SOFT_LIMIT``. Lowers its own
soft RLIMIT_NOFILE to SOFT_LIMIT, starts a node (plain HTTP on 127.0.0.1, header
timeout 60 s) and prints ``{"url", "total_cap"}``. Then it reads a number N from
stdin, waits (at most 30 s) until N connections have reached the node (held open
or refused by a cap), and prints ``{"open_fds", "total", "refused"}``; it exits
when stdin closes.
"""

from __future__ import annotations

import json
import os
import resource
import sys

import anyio

from fedpeer.peer import NodeConfig, open_node


async def main(data_dir: str, soft: int) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    async with open_node(data_dir, config=NodeConfig(header_timeout_s=60)) as node:
        conns = node.connections
        assert conns is not None
        conns.stale_after_s = 3600  # refusals, not evictions of silent ones, are counted here
        print(json.dumps({"url": node.url, "total_cap": conns.total_cap}), flush=True)
        n = int(await anyio.to_thread.run_sync(sys.stdin.readline))
        with anyio.fail_after(30):
            await conns.wait_until(lambda c: c.total + c.refused >= n)
        report = {
            "open_fds": len(os.listdir("/proc/self/fd")),
            "total": conns.total,
            "refused": conns.refused,
        }
        print(json.dumps(report), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the test closes it


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]), backend="trio")
