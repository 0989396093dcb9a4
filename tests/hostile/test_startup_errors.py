"""A node that cannot start says why: the data dir, the key file, the store (damaged,
full disk) or the port, each with its own code, never a port message for a store
problem. Real ``fedpeer run`` processes; exit code 3 (EXIT_START) for all."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fedpeer.cli import EXIT_START
from tests.hostile.diskfill import SmallDisk


def _run(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``fedpeer run`` that is expected to fail at start (bounded: a node that does
    start instead is stopped by the timeout and the test fails)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDPEER_")}
    return subprocess.run(
        [sys.executable, "-m", "fedpeer", "--data-dir", str(data_dir), "run",
         "--no-discovery", "--host", "127.0.0.1", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )  # fmt: skip


def _error(r: subprocess.CompletedProcess[str]) -> str:
    """The error line: the last line on stderr (log lines of the start come before it)."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines, "no error printed"
    assert "Traceback" not in r.stderr, r.stderr
    return lines[-1]


def _init(data_dir: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "fedpeer", "--data-dir", str(data_dir), "init"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def _first_start(data_dir: Path) -> None:
    """Run a node once (creates the store and admin token), then stop it."""
    import trio

    from fedpeer.peer import open_node

    async def once() -> None:
        async with open_node(data_dir):
            pass

    trio.run(once)


def _store_is_a_directory(d: Path) -> Path:
    _init(d)
    (d / "store.sqlite3").mkdir()
    return d


def _store_is_garbage(d: Path) -> Path:
    _init(d)
    (d / "store.sqlite3").write_bytes(b"this is not a database " * 100)
    return d


def _key_readable_by_others(d: Path) -> Path:
    _init(d)
    os.chmod(d / "node.key", 0o644)
    return d


def _key_is_garbage(d: Path) -> Path:
    d.mkdir()
    (d / "node.key").write_text("{not json")
    os.chmod(d / "node.key", 0o600)
    return d


@pytest.mark.parametrize(
    ("setup", "code", "names"),
    [
        (_store_is_a_directory, "STORE_ERROR", "store.sqlite3"),
        (_store_is_garbage, "STORE_CORRUPT", "store.sqlite3"),
        (_key_readable_by_others, "KEY_FILE_INSECURE", "chmod 600"),
        (_key_is_garbage, "KEY_FILE_INVALID", "node.key"),
    ],
)
def test_start_up_error_names_its_cause(
    tmp_path: Path, setup: Callable[[Path], Path], code: str, names: str
) -> None:
    data_dir = setup(tmp_path / "node")
    r = _run(data_dir, "--port", "0")
    assert r.returncode == EXIT_START, r.stderr
    err = _error(r)
    assert err.startswith(f"{code}: "), r.stderr
    assert names in err
    assert "listen" not in err
    assert "port" not in err
    assert not (data_dir / "node.url").exists()


def test_busy_port_is_start_failed_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        r = _run(tmp_path / "node", "--port", str(port))
    assert r.returncode == EXIT_START
    assert _error(r).startswith(f"START_FAILED: cannot listen on 127.0.0.1:{port}: "), r.stderr


def test_full_disk_at_start_is_store_full(small_disk: SmallDisk) -> None:
    data_dir = small_disk.path / "node"
    _first_start(data_dir)
    small_disk.fill()
    r = _run(data_dir, "--port", "0")
    assert r.returncode == EXIT_START, r.stderr
    err = _error(r)
    assert err.startswith("STORE_FULL: "), r.stderr
    assert "store.sqlite3" in err
    assert "free some space" in err
    assert "listen" not in err
    small_disk.free()


def test_fresh_node_on_a_full_disk_says_the_key_cannot_be_written(small_disk: SmallDisk) -> None:
    small_disk.fill()
    r = _run(small_disk.path / "fresh", "--port", "0")
    assert r.returncode == EXIT_START, r.stderr
    err = _error(r)
    assert err.startswith("KEY_FILE_INVALID: cannot write the key file"), r.stderr
    assert "No space left on device" in err
    assert "listen" not in err


def test_read_only_data_dir_is_data_dir_error(small_disk: SmallDisk) -> None:
    data_dir = small_disk.path / "node"
    _first_start(data_dir)
    (data_dir / "node.lock").unlink()  # as on a copy of the data dir made elsewhere
    remount = ["mount", "-o", "remount,ro", str(small_disk.path)]
    if subprocess.run(remount, capture_output=True, timeout=30).returncode != 0:
        pytest.skip("cannot remount the test tmpfs read-only here")
    try:
        r = _run(data_dir, "--port", "0")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk.path)], timeout=30)
    assert r.returncode == EXIT_START, r.stderr
    err = _error(r)
    assert err.startswith("DATA_DIR_ERROR: cannot open the lock file"), r.stderr
    assert "Read-only file system" in err
    assert "listen" not in err


async def test_open_node_under_a_file_is_data_dir_error(tmp_path: Path) -> None:
    from fedpeer.errors import DataDirError
    from fedpeer.peer import open_node

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(DataDirError, match="cannot create the data dir"):
        async with open_node(blocker / "node"):
            pytest.fail("started under a file")
