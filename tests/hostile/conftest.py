"""Fixtures for the hostile suite: a small real file system to fill up."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.diskfill import SmallDisk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 4 MiB tmpfs mounted for this test (root only; skipped otherwise, with the reason).

    A real file system that really runs out of space: SQLite gets ENOSPC from
    the kernel, nothing is simulated.
    """
    mount = shutil.which("mount") or "/bin/mount"
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (tests run as root in CI)")
    where = tmp_path / "small-disk"
    where.mkdir()
    r = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield SmallDisk(where)
    finally:
        umount = shutil.which("umount") or "/bin/umount"
        r = subprocess.run([umount, str(where)], capture_output=True, timeout=30)
        if r.returncode != 0:  # something still has a file open: detach it anyway
            subprocess.run([umount, "-l", str(where)], capture_output=True, timeout=30)
