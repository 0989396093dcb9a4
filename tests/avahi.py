"""Avahi inside a test network namespace, for interop tests (Linux, root only).

avahi-daemon normally runs under systemd with the system D-Bus. In a test it
runs in one of :mod:`tests.netns`'s namespaces instead, without systemd:

- a private mount namespace (``unshare --mount``) with a fresh ``tmpfs`` on
  ``/run``, so this daemon's pid file, its D-Bus socket and its own
  ``/run/avahi-daemon`` never meet the host's (or another test's);
- a private ``dbus-daemon --system`` in there (the stock system policy already
  lets root own ``org.freedesktop.Avahi``), listening on
  ``/run/dbus/system_bus_socket`` *of that mount namespace*;
- ``avahi-daemon --no-drop-root --no-chroot`` in the foreground with a config
  written for the test: only the namespace's interface, IPv4 only, a unique
  host name, D-Bus required (``enable-dbus=yes``: no bus, no daemon).

The clients (``avahi-browse``, ``avahi-publish``) reach that bus by entering
the daemon's mount and network namespaces: :meth:`AvahiDaemon.client_args`
prefixes ``nsenter --target <pid> --mount --net``.

Processes are run through a :class:`ProcessGroup` (an async context manager
owning a nursery): each one's stdout and stderr are read line by line into a
:class:`Lines`, which tests wait on with a timeout; leaving the group ends every
process it started, by pid (SIGTERM, then SIGKILL after a bounded wait).
:func:`open_avahi` does the same for the daemon and its bus. The namespaces'
own teardown (``netns.lan``) is the backstop.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType

import attrs
import trio

from tests import netns

__all__ = [
    "REQUIRED_COMMANDS",
    "AvahiDaemon",
    "BrowseEvent",
    "Lines",
    "ProcessGroup",
    "daemon_config",
    "open_avahi",
    "parse_browse_line",
    "skip_reason",
    "unescape",
]

# command -> Debian package that provides it (for the skip message).
REQUIRED_COMMANDS = {
    "avahi-daemon": "avahi-daemon",
    "avahi-browse": "avahi-utils",
    "avahi-publish": "avahi-utils",
    "dbus-daemon": "dbus",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "stdbuf": "coreutils",
}


def skip_reason() -> str | None:
    """Why the Avahi interop tests cannot run here (None when they can).

    The namespace prerequisites (:func:`tests.netns.skip_reason`: root, ``ip``)
    plus the Avahi, D-Bus and util-linux commands. ``make test`` installs the
    missing Debian packages when run as root.
    """
    reason = netns.skip_reason()
    if reason:
        return reason
    missing = sorted({pkg for cmd, pkg in REQUIRED_COMMANDS.items() if shutil.which(cmd) is None})
    if missing:
        return (
            f"needs {', '.join(missing)} for the Avahi interop test "
            f"(apt-get install {' '.join(missing)}; `make test` does it when root)"
        )
    return None


class Lines:
    """The output lines of one process (stdout and stderr merged), as they arrive."""

    def __init__(self, name: str, proc: trio.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[str] = []
        self.eof = False
        self._changed = trio.Event()

    async def pump(self) -> None:
        """Read the process's output until EOF (run it in a nursery)."""
        assert self.proc.stdout is not None
        buf = b""
        async for chunk in self.proc.stdout:
            buf += chunk
            *done, buf = buf.split(b"\n")
            self.lines.extend(line.decode("utf-8", "replace") for line in done)
            self._changed.set()
            self._changed = trio.Event()
        if buf:
            self.lines.append(buf.decode("utf-8", "replace"))
        self.eof = True
        self._changed.set()

    def tail(self, n: int = 30) -> str:
        """The last ``n`` lines, for failure messages."""
        return "\n".join(self.lines[-n:])

    async def wait_for(
        self, pred: Callable[[str], bool], timeout: float, what: str, *, since: int = 0
    ) -> str:
        """The first line from index ``since`` on that satisfies ``pred``.

        Fails (AssertionError with the output's tail) after ``timeout`` seconds,
        or when the process ends without printing such a line.
        """
        index = since
        with trio.move_on_after(timeout):
            while True:  # bounded by move_on_after
                for line in self.lines[index:]:
                    if pred(line):
                        return line
                index = len(self.lines)
                if self.eof:  # all output read: the line will never come
                    await self.proc.wait()  # for the exit status in the message
                    break
                await self._changed.wait()
        state = "running" if self.proc.returncode is None else f"exited {self.proc.returncode}"
        raise AssertionError(f"{self.name} ({state}): waiting for {what}; output:\n{self.tail()}")

    async def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; the exit status (None if stuck)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(timeout):
                return await self.proc.wait()
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with trio.move_on_after(5):
                await self.proc.wait()
        return self.proc.returncode


class ProcessGroup:
    """Starts processes, reads their output, and ends them all on exit."""

    def __init__(self) -> None:
        self.started: list[Lines] = []
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: contextlib.AbstractAsyncContextManager[trio.Nursery] | None = None

    async def __aenter__(self) -> ProcessGroup:
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._nursery_cm is not None
        with trio.CancelScope(shield=True):
            for lines in reversed(self.started):
                await lines.stop(timeout=5)
        return await self._nursery_cm.__aexit__(exc_type, exc, tb)

    async def start(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> Lines:
        """Start ``argv`` (stdout and stderr to one pipe) and begin reading its lines."""
        assert self._nursery is not None, "use `async with ProcessGroup()`"
        proc = await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, **(env or {})),
        )
        lines = Lines(name, proc)
        self.started.append(lines)
        self._nursery.start_soon(lines.pump)
        return lines


def daemon_config(host_name: str, interface: str) -> str:
    """An ``avahi-daemon.conf`` for one test namespace.

    Only ``interface``, IPv4 only (no AAAA records either, so announcements
    carry exactly the namespace's IPv4 address), D-Bus required, nothing
    published but what the test asks for.
    """
    return "\n".join(
        [
            "[server]",
            f"host-name={host_name}",
            "domain-name=local",
            "use-ipv4=yes",
            "use-ipv6=no",
            f"allow-interfaces={interface}",
            "enable-dbus=yes",
            "disallow-other-stacks=no",
            "ratelimit-interval-usec=1000000",
            "ratelimit-burst=1000",
            "[wide-area]",
            "enable-wide-area=no",
            "[publish]",
            "publish-addresses=yes",
            "publish-hinfo=no",
            "publish-workstation=no",
            "publish-aaaa-on-ipv4=no",
            "publish-a-on-ipv6=no",
            "[reflector]",
            "enable-reflector=no",
            "",
        ]
    )


@attrs.frozen
class AvahiDaemon:
    """A running avahi-daemon in ``host``'s namespace, with its private system bus."""

    host: netns.Host
    host_name: str
    pid: int
    dbus_pid: int
    log: Lines

    def client_args(self, *argv: str) -> list[str]:
        """``argv`` run in the daemon's network and mount namespaces (its D-Bus)."""
        return ["nsenter", f"--target={self.pid}", "--mount", "--net", *argv]


_STARTED = "Server startup complete"


@contextlib.asynccontextmanager
async def open_avahi(
    group: ProcessGroup, host: netns.Host, workdir: Path, *, timeout: float = 15
) -> AsyncIterator[AvahiDaemon]:
    """Start dbus-daemon and avahi-daemon in ``host``'s namespace; stop both on exit.

    Waits (at most ``timeout`` s) until avahi-daemon reports "Server startup
    complete" (it has joined the multicast group and registered its address).
    Raises AssertionError with the daemon's output when it does not start.
    """
    host_name = f"fpavahi-{host.ns.removeprefix(netns.PREFIX)}"
    conf = workdir / f"avahi-{host.ns}.conf"
    conf.write_text(daemon_config(host_name, host.ifname))
    # The shell runs in a new mount namespace; it prints its own pid (which then
    # becomes avahi-daemon's through exec) and dbus-daemon's, one per line.
    script = " && ".join(
        [
            "mount -t tmpfs -o mode=0755 fedpeer-test-run /run",
            "mkdir -p /run/dbus /run/avahi-daemon",
            'echo "shell-pid $$"',
            "printf 'dbus-pid '",
            "dbus-daemon --system --fork --nopidfile --print-pid=1",
            "exec avahi-daemon --no-drop-root --no-chroot --no-rlimits --no-proc-title"
            f" -f {shlex.quote(str(conf))}",
        ]
    )
    argv = host.exec_args("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
    log = await group.start(f"avahi-daemon[{host.ns}]", argv)
    dbus_pid: int | None = None
    try:
        shell = await log.wait_for(lambda s: s.startswith("shell-pid "), timeout, "its pid")
        dbus = await log.wait_for(lambda s: s.startswith("dbus-pid "), timeout, "dbus-daemon")
        dbus_pid = int(dbus.split()[1])
        await log.wait_for(lambda s: _STARTED in s, timeout, "avahi-daemon to start")
        yield AvahiDaemon(host, host_name, int(shell.split()[1]), dbus_pid, log)
    finally:
        with trio.CancelScope(shield=True):
            await log.stop(timeout=5)
            if dbus_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(dbus_pid, signal.SIGTERM)


# --- avahi-browse -p output ---------------------------------------------------------------

_ESCAPE = re.compile(r"\\(\d{3}|.)")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def unescape(text: str) -> str:
    """Undo Avahi's escaping in parsable output (``\\032`` is a space, ``\\.`` a dot).

    ``\\DDD`` is one byte (Avahi escapes every TXT byte outside printable
    ASCII, so UTF-8 arrives as escaped bytes); the bytes are decoded as UTF-8.
    """
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(text):
        out += text[pos : m.start()].encode()
        out += bytes([int(m[1]) & 0xFF]) if m[1].isdigit() else m[1].encode()
        pos = m.end()
    out += text[pos:].encode()
    return out.decode("utf-8", "replace")


@attrs.frozen
class BrowseEvent:
    """One line of ``avahi-browse --parsable``: ``+`` new, ``-`` gone, ``=`` resolved."""

    kind: str
    interface: str
    protocol: str
    name: str
    service_type: str
    domain: str
    host_name: str = ""
    address: str = ""
    port: int = 0
    txt: tuple[tuple[str, str], ...] = ()

    def txt_dict(self) -> dict[str, str]:
        """The TXT strings as ``{key: value}`` (a key without ``=`` maps to "")."""
        return dict(self.txt)


def parse_browse_line(line: str) -> BrowseEvent | None:
    """Parse one ``avahi-browse -p`` line; None for anything else (errors, blank lines).

    Fields are ``;``-separated; names are escaped (see :func:`unescape`); the
    TXT field of a resolved (``=``) line is a list of double-quoted strings.
    """
    parts = line.rstrip("\n").split(";", 9)
    if len(parts) < 6 or parts[0] not in ("+", "-", "="):
        return None
    kind, iface, proto, name, stype, domain = parts[:6]
    if kind != "=":
        return BrowseEvent(kind, iface, proto, unescape(name), stype, domain)
    if len(parts) != 10:
        return None
    host_name, address, port, txt_field = parts[6:]
    txt = []
    for item in _QUOTED.findall(txt_field):
        key, _, value = unescape(item).partition("=")
        txt.append((key, value))
    return BrowseEvent(
        kind, iface, proto, unescape(name), stype, domain, host_name, address, int(port), tuple(txt)
    )
