"""The data dir lock: one running node per data dir.

A node that opens a data dir (``fedpeer run``, ``open_node(data_dir=...)``)
holds an exclusive ``flock`` on ``<data_dir>/node.lock`` for as long as it
runs, so two processes never share one identity and one store: the second
fails with ``DATA_DIR_LOCKED`` naming the holder's PID. The lock belongs to
the open file, so it goes away with the process however it ends (a SIGKILL
too): no stale lock to clean up. The file itself stays; its content is the
holder's ``{"pid", "host", "started_ms"}`` (JSON), written only while holding
the lock and emptied on a clean release, so it is never another process's PID
when the lock is free.

Why ``flock`` and not ``fcntl.lockf``: POSIX record locks belong to the
*process*, so a second ``open_node`` on the same data dir in the same process
would get the lock too, and closing any descriptor of the file drops it.
``flock`` locks belong to the open file description: a second open, even in
this process, is refused. The descriptor is close-on-exec, so worker
processes started by the node never inherit the lock.

Operator commands (``pairs``, ``records``, ``token``, ``doctor``...) do not take
the lock: they talk to the running node over HTTP or read files.
:func:`lock_holder` tells who holds it (``fedpeer doctor`` shows it).

Blocking file I/O; call from a worker thread in async code.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

import attrs

from ._clock import now_ms
from .errors import DataDirError, DataDirLocked

__all__ = ["LOCK_FILE", "DataDirLock", "LockHolder", "ensure_data_dir", "lock_holder"]

LOCK_FILE = "node.lock"
"""The lock file's name in the data dir (a contract, like ``node.key``)."""

_MAX_INFO_BYTES = 4096
_RETRIES = 20  # a holder that is just starting (or a doctor probing) has no PID written yet
_RETRY_S = 0.025


@attrs.frozen
class LockHolder:
    """Who holds a data dir's lock, as the holder wrote it (None fields: not known)."""

    pid: int | None
    host: str | None = None
    started_ms: int | None = None

    def describe(self) -> str:
        """``pid 123 on host, since <time>`` (what is known of it)."""
        who = f"pid {self.pid}" if self.pid is not None else "a process whose PID is not known"
        local = not self.host or self.host == socket.gethostname()
        if not local:
            who += f" on {self.host}"
        elif self.pid is not None and not _alive(self.pid):
            who += " (no longer running: a process it forked may still hold the lock)"
        if self.started_ms is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_ms / 1000))
            who += f", since {stamp}"
        return who


def ensure_data_dir(data_dir: Path) -> None:
    """Create the data dir (mode 0700, parents too) if it is missing.

    Raises ``DataDirError`` naming the path and the reason (a file in the way,
    no permission, a read-only or full disk).
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise DataDirError(
            f"cannot create the data dir {data_dir}: {exc.strerror or exc}; pick another "
            "--data-dir or fix the path"
        ) from exc
    if not data_dir.is_dir():  # pragma: no cover - mkdir(exist_ok) raises for a file
        raise DataDirError(f"the data dir {data_dir} is not a directory")


def _read_holder(fd: int) -> LockHolder | None:
    try:
        raw = os.pread(fd, _MAX_INFO_BYTES, 0)
    except OSError:
        return None
    try:
        info = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    pid, host, started = info.get("pid"), info.get("host"), info.get("started_ms")
    return LockHolder(
        pid=pid if type(pid) is int and pid > 0 else None,
        host=host if isinstance(host, str) else None,
        started_ms=started if type(started) is int else None,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DataDirLock:
    """The held lock of one data dir. Get one with :meth:`acquire`; :meth:`release` it."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Take the exclusive lock of ``data_dir`` (created if missing) without waiting.

        Raises ``DataDirLocked`` when another node holds it (the message names its
        PID and what to do), ``DataDirError`` when the lock file cannot be opened.
        """
        ensure_data_dir(data_dir)
        path = data_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise DataDirError(
                f"cannot open the lock file {path}: {exc.strerror or exc}; is the data dir "
                "writable?"
            ) from exc
        try:
            holder = cls._lock(fd, path)
            if holder is not None:
                raise DataDirLocked(
                    f"the data dir {data_dir} is in use by another fedpeer node "
                    f"({holder.describe()}); stop that node first, or give this one another "
                    "--data-dir. Operator commands (pairs, records, token, doctor) work "
                    "while it runs."
                )
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started_ms": now_ms()}
            # who holds it is a courtesy for the next one; a full disk must not stop
            # the lock itself (the key or store write that needs space names that)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(data_dir, fd)

    @staticmethod
    def _lock(fd: int, path: Path) -> LockHolder | None:
        """None once locked; else who holds it. A holder without a live PID written
        may be one just starting or a probe: ask again briefly (bounded)."""
        holder: LockHolder | None = None
        for attempt in range(_RETRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise DataDirError(
                        f"cannot lock {path}: {exc.strerror or exc}; the data dir must be on a "
                        "file system with flock() locks (a local disk, not some network "
                        "shares): pick another --data-dir"
                    ) from exc
            else:
                return None
            holder = _read_holder(fd) or LockHolder(pid=None)
            if holder.pid is not None and _alive(holder.pid):
                return holder
            if attempt < _RETRIES - 1:
                time.sleep(_RETRY_S)
        return holder

    @property
    def held(self) -> bool:
        """True until :meth:`release`."""
        return self._fd is not None

    def release(self) -> None:
        """Empty the file and drop the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor releases the flock


def lock_holder(data_dir: Path) -> LockHolder | None:
    """Who holds ``data_dir``'s lock right now, or None when nobody does.

    Probes with a shared, non-blocking lock that is released at once (never
    creates the file). Blocking file I/O.
    """
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return _read_holder(fd) or LockHolder(pid=None)
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
