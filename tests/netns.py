"""Throw-away network namespaces for tests and benchmarks (Linux, root only).

Multicast (mDNS) does not work reliably on plain loopback, so tests that need
a LAN build one out of network namespaces: each host is a namespace with
``lo`` up and one interface ``eth0`` carrying ``10.203.<net>.<host>/24`` and a
``224.0.0.0/4`` route (zeroconf needs one when the namespace has no default
route). Two hosts are joined by a veth pair; three or more hang off a bridge
that lives in its own namespace. Nothing is created in the root namespace: the
veth ends are created directly inside the namespaces, so interface names never
clash between parallel runs, and only addresses inside our namespaces exist.

Usage::

    from tests.netns import lan, skip_reason

    with lan(2) as net:                    # tears down even on failure
        a, b = net.hosts
        argv = a.exec_args(sys.executable, "-c", "...")   # run inside a
        net.link_down(b); net.link_up(b)

Namespace names are ``fp-<pid>-<n>-<role>``, unique per process and call;
:func:`cleanup_stale` removes ``fp-<pid>-*`` namespaces whose process is gone
(left behind by a killed run), never anything else. Teardown SIGKILLs the
processes still running inside our namespaces (``ip netns pids``) before
deleting them.

Import it as ``tests.netns`` (``tests/`` is a package; pytest puts the repo
root on ``sys.path``; ``bench/discovery.py`` does the same by hand).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator, Sequence

import attrs

__all__ = ["PREFIX", "Host", "Lan", "cleanup_stale", "hosts_of", "lan", "skip_reason"]

PREFIX = "fp-"
SUBNET = "10.203"
_COUNTER = itertools.count(1)
_NAME_RE = re.compile(r"^fp-(\d+)-")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def skip_reason() -> str | None:
    """Why namespace tests cannot run here (None when they can).

    Needs root, the ``ip`` command (iproute2) and permission to create a
    network namespace (some containers forbid it even to root).
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to create network namespaces (run the e2e tests as root)"
    if shutil.which("ip") is None:
        return "needs the `ip` command from iproute2 (apt-get install iproute2)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        made = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` failed: {exc}"
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _list_namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _delete_namespace(name: str) -> None:
    # Processes we started inside keep a namespace alive; end them by pid and
    # wait (bounded) until they are gone, then delete the name.
    for _ in range(50):
        pids = _ip("netns", "pids", name, check=False).stdout.split()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.1)
    for _ in range(3):
        done = _ip("netns", "del", name, check=False)
        if done.returncode == 0 or name not in _list_namespaces():
            return
        time.sleep(0.2)
    warnings.warn(f"could not delete network namespace {name}: {done.stderr.strip()}", stacklevel=2)


def cleanup_stale() -> list[str]:
    """Delete ``fp-<pid>-*`` namespaces whose creating process no longer exists."""
    removed = []
    for name in _list_namespaces():
        m = _NAME_RE.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _delete_namespace(name)
            removed.append(name)
    return removed


@attrs.frozen
class Host:
    """One namespace on the LAN: its name, interface and address."""

    ns: str
    address: str
    ifname: str = "eth0"

    def exec_args(self, *argv: str) -> list[str]:
        """``argv`` prefixed to run inside this namespace (``ip netns exec``)."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a short command inside the namespace and wait for it (30 s max)."""
        return subprocess.run(
            self.exec_args(*argv), check=check, capture_output=True, text=True, timeout=30
        )

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ip -n <ns> ...``."""
        return _ip("-n", self.ns, *args, check=check)


@attrs.define
class Lan:
    """The namespaces of one test LAN. Build it with :func:`lan`."""

    prefix: str
    hosts: list[Host]
    bridge_ns: str | None = None
    namespaces: list[str] = attrs.field(factory=list)

    def link_down(self, host: Host) -> None:
        """Take ``host``'s interface down (addresses stay; packets stop)."""
        host.ip("link", "set", host.ifname, "down")

    def link_up(self, host: Host) -> None:
        """Bring ``host``'s interface back up and restore its multicast route."""
        host.ip("link", "set", host.ifname, "up")
        host.ip("route", "replace", "224.0.0.0/4", "dev", host.ifname)

    def add_address(self, host: Host, address: str) -> None:
        """Add another ``address`` (``/24``) to ``host``'s interface."""
        host.ip("addr", "add", f"{address}/24", "dev", host.ifname)

    def remove_address(self, host: Host, address: str) -> None:
        """Remove ``address`` (``/24``) from ``host``'s interface."""
        host.ip("addr", "del", f"{address}/24", "dev", host.ifname)

    def teardown(self) -> None:
        """Kill what runs inside and delete every namespace (idempotent)."""
        for name in reversed(self.namespaces):
            _delete_namespace(name)
        self.namespaces.clear()


def _add_namespace(net: Lan, name: str) -> None:
    _ip("netns", "add", name)
    net.namespaces.append(name)
    _ip("-n", name, "link", "set", "lo", "up")


def _configure(host: Host) -> None:
    host.ip("addr", "add", f"{host.address}/24", "dev", host.ifname)
    host.ip("link", "set", host.ifname, "up")
    host.ip("route", "add", "224.0.0.0/4", "dev", host.ifname)


@contextlib.contextmanager
def lan(count: int = 2, *, bridge: bool | None = None, net: int = 0) -> Iterator[Lan]:
    """A LAN of ``count`` hosts (namespaces) at ``10.203.<net>.1..count``.

    Two hosts are joined by a veth pair unless ``bridge=True``; three or more
    always use a bridge in an extra namespace. Everything is deleted on exit,
    even when the body or the set-up fails. Raises ``subprocess.CalledProcessError``
    when ``ip`` refuses (call :func:`skip_reason` first).
    """
    if not 1 <= count <= 250:
        raise ValueError("count must be 1..250")
    cleanup_stale()
    prefix = f"{PREFIX}{os.getpid()}-{next(_COUNTER)}"
    use_bridge = count > 2 or bool(bridge) or count == 1
    hosts = [Host(f"{prefix}-h{i}", f"{SUBNET}.{net}.{i}") for i in range(1, count + 1)]
    result = Lan(prefix=prefix, hosts=hosts)
    try:
        for host in hosts:
            _add_namespace(result, host.ns)
        if use_bridge:
            br = f"{prefix}-br"
            result.bridge_ns = br
            _add_namespace(result, br)
            _ip("-n", br, "link", "add", "br0", "type", "bridge")
            # Flood all multicast: no IGMP querier lives on this LAN.
            _ip("-n", br, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
            _ip("-n", br, "link", "set", "br0", "up")
            for i, host in enumerate(hosts, 1):
                port = f"p{i}"
                _ip("link", "add", "eth0", "netns", host.ns, "type", "veth",
                    "peer", "name", port, "netns", br)  # fmt: skip
                _ip("-n", br, "link", "set", port, "master", "br0")
                _ip("-n", br, "link", "set", port, "up")
        else:
            a, b = hosts
            _ip("link", "add", "eth0", "netns", a.ns, "type", "veth",
                "peer", "name", "eth0", "netns", b.ns)  # fmt: skip
        for host in hosts:
            _configure(host)
        yield result
    finally:
        result.teardown()


def hosts_of(net: Lan, names: Sequence[str]) -> dict[str, Host]:
    """Give the hosts of ``net`` role names, in order: ``{"a": hosts[0], ...}``."""
    return dict(zip(names, net.hosts, strict=False))
