"""One node per data dir: a second ``fedpeer run`` (or ``open_node``) on the same data
dir is refused with DATA_DIR_LOCKED naming the running node's PID, and it never
touches the first node's ``node.url``. Real ``fedpeer run`` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from fedpeer._datadir import LOCK_FILE, lock_holder
from fedpeer.cli import EXIT_LOCKED
from fedpeer.errors import DataDirLocked
from fedpeer.peer import local_client_context, open_node

WAIT_S = 30.0


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FEDPEER_")}


def _fedpeer(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedpeer", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )


class RunProcess:
    """``fedpeer run`` on loopback, port 0, no mDNS; :meth:`wait_ready` reads its
    start-up lines (bounded by a watchdog that kills a hung process)."""

    def __init__(self, data_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fedpeer", "--data-dir", str(data_dir), "run",
             "--host", "127.0.0.1", "--port", "0", "--no-discovery"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )  # fmt: skip
        self._watchdog = threading.Timer(WAIT_S * 2, self.proc.kill)
        self._watchdog.start()

    def wait_ready(self) -> dict[str, str]:
        assert self.proc.stdout is not None
        return _lines_until(self.proc.stdout, "mdns")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=WAIT_S)
        finally:
            self._watchdog.cancel()
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def _lines_until(stream: IO[str], prefix: str, limit: int = 20) -> dict[str, str]:
    lines: dict[str, str] = {}
    for _ in range(limit):
        line = stream.readline()
        if not line:
            break
        key, _, value = line.partition(":")
        lines[key.strip()] = value.strip()
        if line.startswith(prefix):
            break
    return lines


@pytest.fixture
def first_run(tmp_path: Path) -> Iterator[tuple[RunProcess, dict[str, str]]]:
    node = RunProcess(tmp_path)
    try:
        lines = node.wait_ready()
        assert "url" in lines, lines
        yield node, lines
    finally:
        node.stop()


def test_second_run_on_the_same_data_dir_is_refused_and_the_first_keeps_serving(
    tmp_path: Path, first_run: tuple[RunProcess, dict[str, str]]
) -> None:
    first, lines = first_run
    url = lines["url"]
    assert (tmp_path / "node.url").read_text().strip() == url

    second = subprocess.Popen(
        [sys.executable, "-m", "fedpeer", "--data-dir", str(tmp_path), "run",
         "--host", "127.0.0.1", "--port", "0", "--no-discovery"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )  # fmt: skip
    try:
        out, err = second.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        second.send_signal(signal.SIGTERM)  # it started: the bug; stop it cleanly
        out, err = second.communicate(timeout=WAIT_S)
        pytest.fail(f"a second `fedpeer run` started on the same data dir:\n{out}\n{err}")
    assert second.returncode == EXIT_LOCKED, err
    assert err.startswith("DATA_DIR_LOCKED: "), err
    assert f"pid {first.proc.pid}" in err
    assert "Traceback" not in err
    assert "did:" not in out  # it never came up

    # the first node's node.url is intact and it still serves, as the same identity
    assert (tmp_path / "node.url").read_text().strip() == url
    health = httpx.get(
        url + "/health", timeout=10, verify=local_client_context(tmp_path) or True
    ).json()
    assert health["did"] == lines["did"]

    # operator commands work while it runs (they do not take the lock)
    added = _fedpeer(tmp_path, "records", "add", "--namespace", "notes", "--thread", "t",
                     "--kind", "note", '{"n": 1}')  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = _fedpeer(tmp_path, "records", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert added.stdout.strip() in listed.stdout
    assert _fedpeer(tmp_path, "pairs", "--json").returncode == 0
    tokens = _fedpeer(tmp_path, "token", "list", "--json")
    assert tokens.returncode == 0, tokens.stderr
    doctor = _fedpeer(tmp_path, "doctor", "--json", "--port", "0")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    lock = checks["data dir lock"]
    assert lock["status"] == "ok"
    assert f"pid {first.proc.pid}" in lock["detail"]

    # a clean stop releases the lock and removes node.url
    assert first.stop() == 0
    assert not (tmp_path / "node.url").exists()
    assert lock_holder(tmp_path) is None


def test_a_killed_node_leaves_no_stale_lock(tmp_path: Path) -> None:
    node = RunProcess(tmp_path)
    try:
        assert "url" in node.wait_ready()
        holder = lock_holder(tmp_path)
        assert holder is not None
        assert holder.pid == node.proc.pid
        node.proc.kill()  # SIGKILL: no clean-up runs
        node.proc.wait(timeout=WAIT_S)
    finally:
        node.stop()
    assert lock_holder(tmp_path) is None  # the kernel dropped the lock with the process
    again = RunProcess(tmp_path)
    try:
        assert "url" in again.wait_ready()
    finally:
        assert again.stop() == 0


async def test_open_node_twice_on_one_data_dir_in_one_process(tmp_path: Path) -> None:
    async with open_node(tmp_path) as node:
        with pytest.raises(BaseException) as caught:  # noqa: PT011 - may be a group
            async with open_node(tmp_path):
                pytest.fail("a second node opened the same data dir")
        err = caught.value
        while isinstance(err, BaseExceptionGroup):
            err = err.exceptions[0]
        assert isinstance(err, DataDirLocked)
        assert f"pid {os.getpid()}" in err.message
        info = json.loads((tmp_path / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid()
        assert (tmp_path / LOCK_FILE).stat().st_mode & 0o777 == 0o600
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(node.url + "/health")).status_code == 200
    assert lock_holder(tmp_path) is None
    assert (tmp_path / LOCK_FILE).read_text() == ""  # emptied on release
    async with open_node(tmp_path):  # free again
        pass


def test_a_file_system_without_locks_is_data_dir_error_naming_the_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some network file systems answer flock() with ENOLCK. The start then fails
    with DATA_DIR_ERROR naming the lock file and what to do (not a bare
    "No locks available"), and the lock file's descriptor is closed. The file
    system is simulated (no such mount here): flock raises ENOLCK."""
    import errno

    from fedpeer import _datadir
    from fedpeer.errors import DataDirError

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(_datadir.fcntl, "flock", no_locks)
    opened_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(DataDirError) as caught:
        _datadir.DataDirLock.acquire(tmp_path)
    message = caught.value.message
    assert str(tmp_path / LOCK_FILE) in message
    assert os.strerror(errno.ENOLCK) in message
    assert "pick another --data-dir" in message
    assert set(os.listdir("/proc/self/fd")) <= opened_before
