"""A small mounted file system a test can fill to the last byte and free again."""

from __future__ import annotations

import errno
import os
from pathlib import Path

_CHUNK = 64 * 1024


class SmallDisk:
    """``path`` is the mount point; :meth:`fill` takes every free byte, :meth:`free`
    gives them back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler.bin"

    def fill(self) -> int:
        """Write a filler file until the kernel says ENOSPC; return its size.

        Bounded: a few thousand chunk writes at most for a 4 MiB disk (then
        1-byte writes for the tail a chunk did not fit).
        """
        written = 0
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (_CHUNK, 4096, 1):
                block = b"\0" * size
                for _ in range(10_000):
                    try:
                        written += os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
                else:
                    raise AssertionError("the disk never filled up")
        finally:
            os.close(fd)
        return written

    def take(self, size: int) -> None:
        """Write a filler file of ``size`` bytes (at most the free space)."""
        block = b"\0" * _CHUNK
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            left = size
            while left > 0:
                left -= os.write(fd, block[: min(left, _CHUNK)])
        finally:
            os.close(fd)

    def free(self) -> None:
        """Delete the filler: the space is back."""
        self._filler.unlink()
