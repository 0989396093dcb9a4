"""Suite-wide fixtures: which async backend a test runs on, and a task group.

Every coroutine test runs on anyio's pytest plugin (``anyio_mode = "auto"``).
trio is the default backend (this ``anyio_backend``); the store, sync and
consent suites override it to run each test on trio and on asyncio
(:data:`BOTH_BACKENDS`). A test that asks for ``virtual_clock`` runs on a
virtual clock that jumps ahead whenever every task waits: trio's autojump
``MockClock``, or the equivalent asyncio loop (:mod:`tests.virtual_time`).

Two session fixtures keep the suite independent of the machine it runs on:
:func:`hold_user_port` (a user's node on 127.0.0.1:8765) and
:func:`clean_environment` (a user's ``FEDPEER_*`` settings and proxies).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.abc
import pytest

BOTH_BACKENDS = ("trio", "asyncio")


def backend_for(request: pytest.FixtureRequest, name: str) -> object:
    """The ``anyio_backend`` value for ``name``: with the virtual clock when the
    test asks for ``virtual_clock``."""
    if "virtual_clock" not in request.fixturenames:
        return name
    if name == "trio":
        import trio.testing

        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    from tests.virtual_time import VirtualClockLoop

    return ("asyncio", {"loop_factory": VirtualClockLoop})


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """trio, first-class and the default."""
    return backend_for(request, "trio")


@pytest.fixture
def virtual_clock() -> None:
    """Ask for it to run the test on a virtual clock (see the module doc)."""


@pytest.fixture
async def task_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    """A task group living as long as the test; cancelled at the end."""
    async with anyio.create_task_group() as tg:
        yield tg
        tg.cancel_scope.cancel()


@pytest.fixture
async def nursery(task_group: anyio.abc.TaskGroup) -> anyio.abc.TaskGroup:
    """The test's task group under its trio name (``nursery.start_soon`` / ``start``)."""
    return task_group


USER_PORT = 8765
"""The port a user's node runs on (``fedpeer run``'s default)."""


@pytest.fixture(scope="session", autouse=True)
def hold_user_port() -> Iterator[socket.socket | None]:
    """Occupy 127.0.0.1:8765 for the whole session, as a user's running node would,
    so a test that depends on that port being free fails every time instead of on
    some machines (issue 14). When the port is already taken (a node runs there),
    it stays taken by that: the same situation. Yields the held socket or None.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As a node binds (and doctor's port check): connections a node that just
    # stopped left in TIME_WAIT must not make the port look busy while nobody
    # listens on it; a listening socket still makes this bind fail.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", USER_PORT))
        sock.listen(1)
    except OSError:
        sock.close()
        yield None
        return
    try:
        yield sock
    finally:
        with contextlib.suppress(OSError):
            sock.close()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a loopback port this test holds bound and
    does not listen on: every connection to it is refused, whatever else runs on
    the machine (unlike a fixed port such as 9)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy"})
"""Proxy settings (any case) httpx and curl read: the suite talks only to loopback
and its own namespaces, never through a proxy."""


@pytest.fixture(scope="session", autouse=True)
def clean_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No ``FEDPEER_*`` setting and no proxy from the developer's shell reaches the
    code under test (for the whole session, so the processes the tests start inherit
    the clean environment too).

    A user who runs a node exports e.g. ``FEDPEER_URL`` and ``FEDPEER_TOKEN`` for it:
    without this, every CLI command a test runs against its own node would talk to
    the user's node or send the user's token. A proxy in ``HTTP_PROXY`` /
    ``HTTPS_PROXY`` / ``ALL_PROXY`` would carry the tests' plain httpx clients'
    requests to 127.0.0.1 (httpx trusts the environment by default) and fail them.
    ``FEDPEER_VECTORS`` (where the vendored test vectors are, read by tests/identity)
    is the suite's own setting and stays. ``XDG_DATA_HOME`` points into the session's
    temporary directory, so a command run without ``--data-dir`` finds an empty
    default data dir, never the user's own node's files (its URL and admin token).
    """
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            fedpeer = name.startswith("FEDPEER_") and name != "FEDPEER_VECTORS"
            if fedpeer or name.lower() in PROXY_VARIABLES:
                mp.delenv(name)
        mp.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
        yield
