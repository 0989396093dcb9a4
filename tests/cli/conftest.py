"""Fixtures for CLI tests: real nodes (real SQLite, real hypercorn on 127.0.0.1)
running in a background thread with their own ``trio.run``, so that click's
CliRunner (which calls ``trio.run`` itself) can drive the CLI against them from
the test's thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from click.testing import CliRunner, Result

from fedpeer.cli import cli
from fedpeer.peer import Node, NodeConfig, open_node

T = TypeVar("T")

START_TIMEOUT_S = 30.0


class NodeThread:
    """Nodes served from one background thread (one trio loop).

    ``nodes`` are the running :class:`Node` objects; touch them only through
    :meth:`call` (it runs a coroutine on the nodes' loop and waits for it).
    """

    def __init__(self, data_dirs: list[Path], config: NodeConfig) -> None:
        self._dirs = data_dirs
        self._config = config
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self.nodes: list[Node] = []
        self._thread = threading.Thread(target=self._run, name="cli-test-nodes", daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            for d in self._dirs:
                node = await stack.enter_async_context(open_node(d, config=self._config))
                self.nodes.append(node)
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()

    def start(self) -> NodeThread:
        self._thread.start()
        assert self._ready.wait(START_TIMEOUT_S), "nodes did not start in time"
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the nodes' loop; return its result."""
        assert self._token is not None
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def close(self) -> None:
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(START_TIMEOUT_S)
        assert not self._thread.is_alive(), "nodes did not stop in time"
        if self._error is not None:
            raise self._error


@contextlib.contextmanager
def running_nodes(
    tmp_path: Path, *names: str, config: NodeConfig | None = None
) -> Iterator[NodeThread]:
    """Nodes with data dirs ``tmp_path / name``, stopped (and checked) on exit."""
    runner = NodeThread(
        [tmp_path / n for n in names], config or NodeConfig(handle="cli-test")
    ).start()
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[NodeThread]:
    """Nodes ``a`` and ``b`` (data dirs ``tmp_path/a`` and ``tmp_path/b``)."""
    with running_nodes(tmp_path, "a", "b") as nodes:
        yield nodes


@pytest.fixture
def one_node(tmp_path: Path) -> Iterator[NodeThread]:
    """Node ``a`` (data dir ``tmp_path/a``)."""
    with running_nodes(tmp_path, "a") as nodes:
        yield nodes


def fp(
    node: Node, *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> Result:
    """Run ``fedpeer --data-dir <node's dir> --url <node's url> ARGS`` in-process."""
    assert node.data_dir is not None
    argv = ["--data-dir", str(node.data_dir), "--url", node.url, *args]
    return CliRunner().invoke(cli, argv, input=input, env=env, catch_exceptions=False)
