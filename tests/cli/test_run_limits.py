"""``fedpeer run`` raises a low open-files limit at start (protocol.md §6.3: the node's
total connection cap is three quarters of that limit, so 256 would mean 192)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.nodeproc import clean_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_NOFILE is Unix")


# Lowers the soft limit, then becomes `python -m fedpeer ARGS` (exec keeps the limit).
LOW_LIMIT = (
    "import os, resource, sys; "
    "_s, h = resource.getrlimit(resource.RLIMIT_NOFILE); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (256, h)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'fedpeer', *sys.argv[1:]])"
)


def test_run_raises_a_low_open_files_limit(tmp_path: Path) -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit here is {hard}: nothing to raise")
    argv = [sys.executable, "-c", LOW_LIMIT, "--data-dir", str(tmp_path / "d")]
    proc = subprocess.Popen(
        [*argv, "run", "--host", "127.0.0.1", "--port", "0", "--no-discovery"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env({"XDG_CONFIG_HOME": str(tmp_path / "config")}),
    )
    watchdog = threading.Timer(60, proc.kill)  # bounds the blocking reads
    watchdog.start()
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for _ in range(200):
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "ready" in line:
                break
        assert any("ready" in line for line in lines), "".join(lines)
        want = min(65_536, hard)
        assert any(f"raised the open files limit from 256 to {want}" in line for line in lines), (
            "".join(lines)
        )
        assert not any("only" in line and "open files allowed" in line for line in lines)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
