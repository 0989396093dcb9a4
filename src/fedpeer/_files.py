"""Private files (keys, tokens): written atomically, mode 0600 from the start."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: some file systems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# link() errors that mean "this file system has no hard links", not "no"
_NO_LINKS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}
)


class TargetExists(FileExistsError):
    """:func:`place` with ``replace=False`` found its target there already
    (``filename`` is the target). Any other ``FileExistsError`` is about another
    file, such as a caller's own temp name."""


def place(tmp: Path | str, path: Path, *, replace: bool = True) -> None:
    """Move the finished, fsynced file ``tmp`` to ``path`` (same directory), durably.

    ``replace=True``: ``os.replace`` (an existing ``path`` is replaced
    atomically). ``replace=False``: an existing ``path`` is never touched;
    raises :class:`TargetExists` (``filename`` is ``path``) and leaves
    ``tmp`` for the caller to remove. That
    is a hard link (atomic, refuses an existing target) and then the unlink of
    ``tmp``; on a file system without hard links, a check and a rename (a
    narrow race there). Then fsyncs the directory. Blocking; raises OSError.
    """
    path = Path(path)
    exists = TargetExists(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
    if replace:
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise exists from None
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            if os.path.lexists(path):
                raise exists from None
            os.replace(tmp, path)
        else:
            with contextlib.suppress(OSError):  # ``path`` is in place already
                os.unlink(tmp)
    fsync_dir(path.parent)


def write_private(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600.

    Creates the parent directory (mode 0700) if needed, writes a temp file in
    the same directory (never readable by others, not even briefly), fsyncs it,
    moves it to ``path`` with :func:`place` and fsyncs the directory, so a crash
    leaves the old file or the new one. ``replace=False``: an existing ``path``
    is left as it is and ``FileExistsError`` raised (two processes creating the
    same file: one wins, the other learns it lost). Blocking; raises OSError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        place(tmp_name, path, replace=replace)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
