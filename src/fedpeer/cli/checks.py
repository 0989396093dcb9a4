"""``fedpeer doctor``: checks of a data dir, the machine and the network.

Each check returns a :class:`Check` (``ok``, ``FAIL`` or ``skip``) with a
one-line detail and, for a failure, how to fix it. The checks are plain
functions so tests can call them one by one; ``cli.doctor`` runs them in order
and exits non-zero when one fails.

The multicast self-test never sends mDNS traffic: it joins an
organisation-local group (``239.255.70.80``, RFC 2365) on one interface and
sends one datagram to itself with TTL 1 and ``IP_MULTICAST_LOOP`` on, then
waits (bounded) for it to come back. That proves the interface can join a
group and that multicast is routed out of it and looped back, which is what
zeroconf needs; it does not prove that other hosts answer (a firewall or a
switch can still drop mDNS). IPv4 only.
"""

from __future__ import annotations

import email.utils
import json
import os
import secrets
import select
import socket
import sqlite3
import ssl
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import attrs
import httpx

from ..errors import FedpeerError
from ..peer import local_client_context, manifest_pins, peer_pin, pinned_context
from ..peer.client import MAX_MANIFEST_BYTES

__all__ = [
    "MULTICAST_GROUP",
    "SKEW_LIMIT_S",
    "Check",
    "check_admin_token",
    "check_clock",
    "check_key",
    "check_lock",
    "check_multicast",
    "check_node",
    "check_port",
    "check_store_readonly",
    "clock_skew_s",
    "data_dir_check",
    "interfaces_ipv4",
    "multicast_self_test",
    "store_result",
]

MULTICAST_GROUP = "239.255.70.80"
SKEW_LIMIT_S = 30.0
"""Clock skew beyond this fails: invite proofs must be fresh within 60 s."""

Status = Literal["ok", "FAIL", "skip"]


@attrs.frozen
class Check:
    """One doctor result: ``name``, ``status``, ``detail`` and for a FAIL a ``fix``."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    @property
    def failed(self) -> bool:
        """True for a FAIL."""
        return self.status == "FAIL"

    def to_dict(self) -> dict[str, object]:
        """JSON form for ``doctor --json``."""
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def check_key(data_dir: Path) -> tuple[Check, str | None]:
    """The identity file: present, mode 0600 (nothing for group/others), loads.

    Returns the check and the key's DID (None when it cannot be loaded).
    """
    from ..identity.keys import SigningKey
    from ..peer.node import KEY_FILE

    path = data_dir / KEY_FILE
    if not path.exists():
        return (
            Check("key", "FAIL", f"no identity at {path}", f"fedpeer --data-dir {data_dir} init"),
            None,
        )
    mode = _mode(path)
    if mode & 0o077:
        return (
            Check(
                "key",
                "FAIL",
                f"{path} has mode {mode:04o}: others can read the node's private key",
                f"chmod 600 {path}",
            ),
            None,
        )
    try:
        key = SigningKey.load(path)
    except FedpeerError as err:
        return (
            Check(
                "key",
                "FAIL",
                f"{err.code}: {err.message}",
                f"restore {path} from a backup, or move it away and run "
                f"`fedpeer init` (a new identity: peers must pair again)",
            ),
            None,
        )
    return Check("key", "ok", f"{path} (mode {mode:04o}) is {key.did}"), key.did


def check_admin_token(data_dir: Path) -> Check:
    """``admin.token``: present once the store exists, mode 0600."""
    from ..peer.node import ADMIN_TOKEN_FILE, STORE_FILE

    path = data_dir / ADMIN_TOKEN_FILE
    if not path.exists():
        if not (data_dir / STORE_FILE).exists():
            return Check("admin token", "skip", "not created yet: the first `fedpeer run` does")
        return Check(
            "admin token",
            "FAIL",
            f"{path} is missing, so operator commands cannot reach the node's admin API",
            f"fedpeer --data-dir {data_dir} token rotate-admin",
        )
    mode = _mode(path)
    if mode & 0o077:
        return Check(
            "admin token",
            "FAIL",
            f"{path} has mode {mode:04o}: others can read the admin token",
            f"chmod 600 {path}; then `fedpeer token rotate-admin` if others may have read it",
        )
    return Check("admin token", "ok", f"{path} (mode {mode:04o})")


def check_lock(data_dir: Path, *, node_running: bool) -> tuple[Check, bool]:
    """Who holds the data dir lock (``node.lock``): the node running on it, or nobody.

    Returns the check and whether the lock is held. Held while the node does
    not answer is a failure (a hung or starting node: the store is in use).
    """
    from ..peer import LOCK_FILE, lock_holder

    holder = lock_holder(data_dir)
    if holder is None:
        return Check("data dir lock", "ok", "free: no node runs on this data dir"), False
    detail = f"held by {holder.describe()} ({data_dir / LOCK_FILE})"
    if node_running:
        return Check("data dir lock", "ok", detail), True
    return (
        Check(
            "data dir lock",
            "FAIL",
            f"{detail}, but no node answers for this data dir",
            f"wait for it to finish starting, or stop that process (kill {holder.pid})"
            if holder.pid is not None
            else "stop the fedpeer process using this data dir",
        ),
        True,
    )


def check_node(
    url: str | None, key_did: str | None, *, timeout: float = 5.0, data_dir: Path | None = None
) -> tuple[Check, bool]:
    """Is a node answering at ``url``, and is it this data dir's identity?

    Returns the check and whether the node runs. A node that does not answer
    is not a failure (``skip``): the checks that need a stopped node run then.
    Over https the node's certificate must be the data dir's (``tls.crt``). The
    detail says how it serves (HTTPS with its pin, or plain HTTP, loudly when
    ``--insecure-http`` exposes it to the network).
    """
    if url is None:
        return Check("node", "skip", "not running (no node.url and no --url)"), False
    verify: ssl.SSLContext | bool = True
    if data_dir is not None and url.startswith("https://"):
        try:
            verify = local_client_context(data_dir) or True
        except OSError:
            verify = True
    try:
        with (
            httpx.Client(verify=verify, timeout=timeout) as client,
            client.stream("GET", url.rstrip("/") + "/health") as r,
        ):
            raw = _read_bounded(r, time.monotonic() + timeout)
        if raw is None:
            raise ValueError("the /health answer is too large or too slow")
        body = json.loads(raw)
    except httpx.HTTPError as exc:
        return Check("node", "skip", f"nothing answers at {url} ({type(exc).__name__})"), False
    except ValueError:
        return (
            Check(
                "node",
                "FAIL",
                f"{url} answers, but not as a fedpeer node",
                "point --url (or FEDPEER_URL) at the node, or stop the program using that port",
            ),
            False,
        )
    did = body.get("did") if isinstance(body, dict) else None
    if key_did is not None and did != key_did:
        return (
            Check(
                "node",
                "FAIL",
                f"the node at {url} is {did}, but this data dir's key is {key_did}",
                "use the matching --data-dir and --url (or remove a stale FEDPEER_URL)",
            ),
            True,
        )
    transport = body.get("transport") if isinstance(body, dict) else None
    how = ""
    if isinstance(transport, dict):
        if transport.get("scheme") == "https":
            how = f" over HTTPS (TLS pin {transport.get('tls_spki_sha256')})"
        elif transport.get("insecure_http"):
            return (
                Check(
                    "node",
                    "FAIL",
                    f"running at {url} as {did} over PLAIN HTTP on the network "
                    "(--insecure-http): tokens and records travel readable",
                    "restart it without --insecure-http (HTTPS is the default)",
                ),
                True,
            )
        else:
            how = " over plain HTTP on loopback"
    return Check("node", "ok", f"running{how} at {url} as {did}"), True


def check_store_readonly(path: Path) -> Check:
    """``PRAGMA integrity_check`` over a read-only connection (safe while the node
    runs: WAL readers never block the writer). Blocks for the whole check."""
    if not path.exists():
        return Check(
            "store", "skip", f"{path} does not exist yet (the first `fedpeer run` creates it)"
        )
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return store_result(path, f"cannot read it: {exc}")
    return store_result(path, "\n".join(str(r[0]) for r in rows))


def store_result(path: Path, outcome: str) -> Check:
    """The store check from an integrity-check answer (``"ok"`` or problems)."""
    if outcome.strip() == "ok":
        return Check("store", "ok", f"{path}: integrity check passed")
    first = outcome.strip().splitlines()[0] if outcome.strip() else "unknown problem"
    return Check(
        "store",
        "FAIL",
        f"{path}: {first[:200]}",
        "stop the node, move the store file (and its -wal/-shm files) away and restore a "
        "backup; or start empty: paired peers sync the records back",
    )


def check_port(host: str, port: int, *, node_running: bool) -> Check:
    """Can ``run`` bind ``host:port``? (Skipped while this node runs on it.)"""
    if node_running:
        return Check("port", "ok", f"{host}:{port} is served by the running node")
    if port == 0:
        return Check("port", "ok", "port 0: the node picks any free port")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        fix = (
            f"stop the program using port {port} (`ss -ltnp 'sport = :{port}'` shows it), "
            "or pick another with --port / FEDPEER_PORT / port in fedpeer.toml"
        )
        if exc.errno in (13,):  # EACCES: ports below 1024 need privileges
            fix = "use a port above 1023 (--port 8765)"
        elif exc.errno in (99,):  # EADDRNOTAVAIL
            fix = f"{host} is not an address of this machine: use --host 0.0.0.0 or one of its own"
        return Check("port", "FAIL", f"cannot bind {host}:{port}: {reason}", fix)
    return Check("port", "ok", f"{host}:{port} is free")


# --- multicast ---------------------------------------------------------------------


def interfaces_ipv4(names: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``(interface, first IPv4 address)`` pairs: of ``names`` (in that order; a name
    without IPv4 gets ``""``), else of every interface with a non-loopback IPv4."""
    import ifaddr

    found: dict[str, str] = {}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and adapter.name not in found:
                found[str(adapter.name)] = ip.ip
    if names:
        return [(n, found.get(n, "")) for n in names]
    return [(n, a) for n, a in found.items() if not a.startswith("127.")]


def multicast_self_test(address: str, *, timeout: float = 1.0) -> str | None:
    """Join :data:`MULTICAST_GROUP` on the interface with IPv4 ``address`` and send
    one datagram to ourselves (TTL 1, loopback on). Returns None on success, else
    what went wrong. Blocks at most ``timeout`` seconds waiting for the echo."""
    nonce = b"fedpeer-doctor " + secrets.token_bytes(16)
    group = MULTICAST_GROUP
    recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        recv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        recv.bind((group, 0))
        port = recv.getsockname()[1]
        try:
            mreq = socket.inet_aton(group) + socket.inet_aton(address)
            recv.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        except OSError as exc:
            return f"cannot join multicast group {group}: {exc.strerror or exc}"
        send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
        send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        try:
            send.sendto(nonce, (group, port))
        except OSError as exc:
            return f"cannot send multicast: {exc.strerror or exc}"
        deadline = time.monotonic() + timeout
        for _ in range(64):  # bounded: stray datagrams on the group are skipped
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([recv], [], [], remaining)
            if not ready:
                break
            data = recv.recv(256)
            if data == nonce:
                return None
        return f"the datagram sent to {group} did not come back within {timeout:g} s"
    except OSError as exc:
        return f"socket error: {exc.strerror or exc}"
    finally:
        recv.close()
        send.close()


def _flags(name: str) -> int | None:
    """The Linux interface flags of ``name`` (None elsewhere or when unknown)."""
    try:
        return int(Path(f"/sys/class/net/{name}/flags").read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def check_multicast(name: str, address: str, *, timeout: float = 1.0) -> Check:
    """The multicast self-test on one interface (see the module docstring)."""
    label = f"multicast {name}"
    if not address:
        return Check(
            label,
            "FAIL",
            f"{name} has no IPv4 address (or does not exist)",
            f"check the name with `ip -br addr`; bring it up with `ip link set {name} up` "
            "and connect it to the network",
        )
    problem = multicast_self_test(address, timeout=timeout)
    if problem is None:
        return Check(label, "ok", f"{name} ({address}) sends and receives multicast")
    hints = []
    flags = _flags(name)
    if flags is not None and not flags & 0x1:  # IFF_UP
        hints.append(f"bring the interface up: `ip link set {name} up`")
    if flags is not None and not flags & 0x1000 and not address.startswith("127."):
        hints.append(f"enable multicast: `ip link set {name} multicast on`")  # IFF_MULTICAST
    hints.append(f"add a multicast route: `ip route add 224.0.0.0/4 dev {name}`")
    hints.append("let UDP port 5353 through the firewall (mDNS)")
    return Check(label, "FAIL", f"{name} ({address}): {problem}", "; or ".join(hints))


# --- clock -------------------------------------------------------------------------


def clock_skew_s(sent_at: float, received_at: float, date_header: str) -> float:
    """How far this machine's clock is ahead of the peer's (negative: behind), in
    seconds, from an HTTP ``Date`` header received between ``sent_at`` and
    ``received_at`` (local unix times). Raises ValueError for a bad header. Pure.

    The header has one-second resolution and is written while the request is
    handled, so the error is at most about one second plus half the round trip.
    """
    remote = email.utils.parsedate_to_datetime(date_header).timestamp()
    return (sent_at + received_at) / 2 - remote


def _read_bounded(response: httpx.Response, deadline: float) -> bytes | None:
    """The body, or None once it is over :data:`MAX_MANIFEST_BYTES` or still coming
    at ``deadline`` (``time.monotonic()``): a peer cannot stall or flood ``doctor``."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > MAX_MANIFEST_BYTES or time.monotonic() > deadline:
            return None
    return bytes(body)


def check_clock(peer_url: str | None, *, timeout: float = 10.0) -> Check:
    """Compare this clock with the peer's ``Date`` header; verify its manifest too."""
    if not peer_url:
        return Check("clock", "skip", "pass --peer URL to compare this clock with a peer's")
    from ..peer.manifest import verify_manifest

    url = peer_url.rstrip("/")
    sent = time.time()
    seen: str | None = None
    try:
        # Any certificate: the pin is checked against the signed manifest below.
        with (
            httpx.Client(verify=pinned_context(), timeout=timeout) as client,
            client.stream("GET", url + "/.well-known/fedpeer") as r,
        ):
            seen = peer_pin(r.extensions.get("network_stream"))
            body = _read_bounded(r, time.monotonic() + timeout)
    except httpx.HTTPError as exc:
        return Check(
            "clock",
            "FAIL",
            f"cannot reach {url}: {type(exc).__name__}",
            "check the URL and that the peer runs (`fedpeer run --host 0.0.0.0` there)",
        )
    received = time.time()
    if body is None:
        return Check(
            "clock",
            "FAIL",
            f"{url} sent a manifest over {MAX_MANIFEST_BYTES} bytes or still sending after "
            f"{timeout:g} s: not a fedpeer node",
            "check the URL: it must be a fedpeer node (`fedpeer run --host 0.0.0.0` there)",
        )
    date = r.headers.get("date")
    if not date:
        return Check("clock", "FAIL", f"{url} sent no Date header", "is it a fedpeer node?")
    try:
        skew = clock_skew_s(sent, received, date)
    except (TypeError, ValueError):
        return Check(
            "clock",
            "FAIL",
            f"{url} sent a bad Date header {date!r:.60}",
            "check the URL: it must be a fedpeer node",
        )
    rtt = received - sent
    note = ""
    try:
        verified = verify_manifest(json.loads(body))
        note = f", manifest of {verified.did} verified"
        if url.startswith("https://"):
            pins = manifest_pins(verified.document)
            note += (
                ", TLS pin matches" if seen in pins else ", TLS pin NOT in the manifest (impostor?)"
            )
    except FedpeerError as err:
        note = f", manifest rejected ({err.code})"
    except ValueError:
        note = ", no manifest (not a fedpeer node?)"
    detail = f"{'ahead of' if skew >= 0 else 'behind'} {url} by {abs(skew):.1f} s{note}"
    if abs(skew) > SKEW_LIMIT_S + 1 + rtt / 2:
        return Check(
            "clock",
            "FAIL",
            detail,
            "synchronise both clocks with NTP (`timedatectl set-ntp true`): invite "
            "redemption needs them within 60 s of each other",
        )
    return Check("clock", "ok", detail)


def data_dir_check(data_dir: Path) -> Check:
    """The data dir exists and is not writable by others."""
    if not data_dir.exists():
        return Check(
            "data dir", "FAIL", f"{data_dir} does not exist", f"fedpeer --data-dir {data_dir} init"
        )
    if not data_dir.is_dir():
        return Check(
            "data dir", "FAIL", f"{data_dir} is not a directory", "pick another --data-dir"
        )
    mode = _mode(data_dir)
    if mode & 0o022:
        return Check(
            "data dir",
            "FAIL",
            f"{data_dir} has mode {mode:04o}: others can replace files in it",
            f"chmod 700 {data_dir}",
        )
    if not os.access(data_dir, os.W_OK):
        return Check(
            "data dir",
            "FAIL",
            f"{data_dir} is not writable by this user",
            f"run fedpeer as the user who owns {data_dir}, or pick another --data-dir",
        )
    return Check("data dir", "ok", f"{data_dir} (mode {mode:04o})")
