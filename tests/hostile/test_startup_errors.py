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


def _open_files_under(path: Path) -> list[str]:
    """The files under ``path`` this process holds open (Linux: /proc/self/fd)."""
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile (the directory listing's own fd)
        if target.startswith(str(path)):
            held.append(target)
    return held


def _tls_key_is_garbage(d: Path) -> None:
    (d / "tls.key").write_text("not a PEM key")
    os.chmod(d / "tls.key", 0o600)
    (d / "tls.crt").write_text("not a PEM certificate")


def _port_is_taken(_d: Path) -> None:
    pass  # the test binds the port


@pytest.mark.parametrize("fail", [_tls_key_is_garbage, _port_is_taken])
async def test_a_start_failing_after_the_store_opened_gives_everything_back(
    tmp_path: Path, fail: Callable[[Path], None]
) -> None:
    """A start that fails after the lock is taken and the store opened (the TLS files,
    the port) closes the store and releases the lock: no file of the data dir stays
    open in the process, and the next start on it works."""
    from fedpeer._datadir import lock_holder
    from fedpeer.errors import FedpeerError
    from fedpeer.peer import NodeConfig, open_node

    data_dir = tmp_path / "node"
    async with open_node(data_dir):
        pass  # the store, the key and the admin token exist
    fail(data_dir)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1] if fail is _port_is_taken else 0
        with pytest.raises(BaseException) as caught:  # noqa: PT011 - may be a group
            async with open_node(data_dir, port=port, config=NodeConfig(tls=True)):
                pytest.fail("the node started")
    err = caught.value
    while isinstance(err, BaseExceptionGroup):
        err = err.exceptions[0]
    assert isinstance(err, FedpeerError), err
    assert err.code == ("START_FAILED" if fail is _port_is_taken else "DATA_DIR_ERROR")
    assert _open_files_under(data_dir) == []
    assert lock_holder(data_dir) is None
    (data_dir / "tls.key").unlink(missing_ok=True)
    (data_dir / "tls.crt").unlink(missing_ok=True)
    async with open_node(data_dir, config=NodeConfig(tls=True)) as node:
        assert node.url.startswith("https://")
