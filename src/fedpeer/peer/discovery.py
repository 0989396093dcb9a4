"""mDNS discovery: advertise this node, browse for others, verify what they claim.

Theory of operation
-------------------

A :class:`Discovery` runs in the node's nursery (``open_node`` starts it when
``NodeConfig.discovery`` is on; ``fedpeer run`` turns it on). It advertises
``_fedpeer._tcp.local.`` with a signed TXT record (:func:`sign_txt`), browses
for other nodes and keeps a :class:`Roster`. mDNS is unauthenticated, so a
newly announced peer is checked twice: its TXT signature at once, without
connecting (:func:`verify_txt`; a bad one makes the entry ``invalid``), then
its well-known manifest, fetched from the announced address and port and
verified against the DID in the TXT (:func:`verify_peer`). Only ``verified``
entries are ever offered for pairing.

zeroconf runs its own asyncio loop on its own thread (the sync ``Zeroconf``
class constructed in a worker thread, where no loop runs), on trio and on
asyncio alike: the node's loop never runs zeroconf code, so a slow or stuck
mDNS stack cannot stall it, and an asyncio host's loop is left alone. Its
blocking calls (constructor, ``register_service``, ``update_service``,
``get_service_info``, ``unregister_service``, ``ServiceBrowser`` start and
``cancel``, ``close``) go through ``anyio.to_thread.run_sync``; each has an
internal timeout. The ``ServiceBrowser`` handler runs on zeroconf's thread: it
only hands the event to the node's loop (``TrioToken.run_sync_soon`` or
``loop.call_soon_threadsafe``, see :mod:`fedpeer._aio`) onto a memory stream
(``send_nowait``), never blocks and never touches the loop's objects itself.
Every roster change happens on the node's loop.

One *session* is one ``Zeroconf`` instance: browse first (so our own probes
and the answers to them are seen), then register (RFC 6762 probing, ~1.5 s),
then maintain: every ``poll_s`` seconds re-read the local addresses, re-sign
the TXT at half its lifetime, re-check peers that are due, and re-read every
peer from zeroconf's cache (the browser reports added address records but not
flushed ones; ``last_seen`` is refreshed that way). A name is taken from the
cache when its announcement is complete there; otherwise it is resolved over the
network, at most ``_MAX_RESOLVING`` at a time, and one that does not resolve
waits in a bounded list (``MAX_ENTRIES``) for a retry whose delay doubles up to
``_RETRY_MAX_S``, so a LAN host flooding names costs bounded work and memory. An address added to an
interface already in use is re-announced with ``update_service``; a new
interface, or the loss of an address the multicast sockets are bound to,
restarts the session. A session that fails is logged, the status turns
``failed`` and it is retried with exponential backoff: mDNS trouble never
stops the node. Leaving a session, even by cancellation, sends goodbye
packets and closes zeroconf in a shielded, time-bounded cleanup.

Own announcements are filtered by instance name and DID. Instance names are
the handle plus a DID fragment (``alice-D8tKeAuE``); a name conflict found by
probing (``NonUniqueNameException``) is retried as ``alice-D8tKeAuE (2)`` and
so on. Addresses of peers are ranked IPv4 first; unscoped IPv6 link-local
addresses (which Avahi announces) are dropped.

``GET /v1/discovery/mdns`` (admin scope: the roster reveals the LAN addresses
of other devices, which mDNS itself only shows to the local link) returns
:meth:`Discovery.to_json`, or ``{"enabled": false, ...}`` when discovery is off.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias

import anyio
import anyio.abc
import attrs
import httpx
import ifaddr
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from .._aio import threadsafe_soon
from ..errors import (
    ConfigInvalid,
    DidInvalid,
    DiscoveryUnavailable,
    FedpeerError,
    Malformed,
    NonCanonical,
    PeerInvalid,
    SignatureError,
)
from ..identity.keys import SigningKey
from ._config import NodeConfig
from ._mdns_roster import (
    MAX_ENTRIES,
    CheckResult,
    Roster,
    RosterEntry,
    Status,
    prefer_addresses,
    url_for,
)
from ._mdns_txt import (
    DEFAULT_TXT_TTL_S,
    DOMAIN_PREFIX,
    SERVICE_TYPE,
    Announcement,
    decode_txt,
    sign_txt,
    signing_input,
    verify_txt,
)
from ._pinning import check_peer
from ._transport import new_http_client

__all__ = [
    "DEFAULT_CAPABILITIES",
    "DOMAIN_PREFIX",
    "SERVICE_TYPE",
    "Announcement",
    "CheckResult",
    "Discovery",
    "DiscoveryStatus",
    "Roster",
    "RosterEntry",
    "Status",
    "decode_txt",
    "instance_label",
    "prefer_addresses",
    "sign_txt",
    "signing_input",
    "url_for",
    "verify_peer",
    "verify_txt",
]

log = logging.getLogger("fedpeer.discovery")

DEFAULT_CAPABILITIES = ("sync", "invites")
DiscoveryStatus = Literal["off", "stopped", "starting", "running", "browse-only", "failed"]

_EVENT_BUFFER = 1024
_MAX_RESOLVING = 32  # names resolved over the network at once (each may wait its timeout)
_RETRY_MAX_S = 300.0  # longest wait before a name that did not resolve is tried again
_MAX_VERIFY_ADDRESSES = 4
_MAX_NAME_ATTEMPTS = 5
_CLOSE_TIMEOUT_S = 5.0
_INSTANCE_MAX_BYTES = 63  # one DNS label
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 (compared, never bound)

_Change: TypeAlias = Literal["added", "updated", "removed"]
_Event: TypeAlias = tuple[str, _Change]


# --- manifest check ------------------------------------------------------------------


async def _check_entry(
    client: httpx.AsyncClient, url: str, entry: RosterEntry, timeout_s: float, now: float | None
) -> None:
    await check_peer(
        client,
        url,
        entry.did,
        oob_pins=[entry.tls_pin] if entry.tls_pin else (),
        oob_source="mDNS TXT",
        timeout=timeout_s,
        now=now,
    )


async def verify_peer(
    entry: RosterEntry,
    *,
    timeout_s: float = 5.0,
    client: httpx.AsyncClient | None = None,
    now: float | None = None,
) -> CheckResult:
    """Fetch ``entry``'s well-known manifest and check it against ``entry.did``
    (and, for an https entry, the served certificate against the TXT's signed
    ``tls`` pin and the manifest's ``tls_spki_sha256``: §6.6, TLS_PIN_MISMATCH
    makes the entry ``invalid``).

    Tries the entry's addresses best first (at most 4), each bounded by
    ``timeout_s``. The first manifest that verifies (signed by ``entry.did``,
    not expired, ``did`` member equal to the signer) gives ``verified`` with
    that base URL. Otherwise, if some address answered with a manifest that
    does not prove the DID (BAD_SIGNATURE, DID_MISMATCH, SIGNATURE_EXPIRED,
    KEY_UNKNOWN, PEER_INVALID, garbage), the result is ``invalid``; if none
    answered, ``unverified`` with the reasons in ``reason``. Never raises for
    network trouble; cancellable. ``client`` is reused if given.
    """
    if not entry.did or not entry.addresses or not entry.port:
        return CheckResult("unverified", "no usable address")
    unreachable: list[str] = []
    invalid: str | None = None
    for url in entry.urls[:_MAX_VERIFY_ADDRESSES]:
        with anyio.move_on_after(timeout_s) as scope:
            try:
                if client is None:
                    async with new_http_client(timeout=timeout_s) as own:
                        await _check_entry(own, url, entry, timeout_s, now)
                else:
                    await _check_entry(client, url, entry, timeout_s, now)
                return CheckResult("verified", "", url)
            except (SignatureError, PeerInvalid, DidInvalid, Malformed, NonCanonical) as err:
                if invalid is None:
                    invalid = f"{err.code}: {url} does not prove {entry.did}: {err}"
            except FedpeerError as err:
                unreachable.append(f"{url}: {err.code}")
            except (httpx.HTTPError, ValueError, OSError) as err:
                unreachable.append(f"{url}: {type(err).__name__}")
        if scope.cancelled_caught:
            unreachable.append(f"{url}: no answer within {timeout_s:g} s")
    if invalid is not None:
        return CheckResult("invalid", invalid)
    return CheckResult("unverified", "unreachable: " + "; ".join(unreachable))


# --- local addresses -------------------------------------------------------------------


@attrs.frozen
class _Adapter:
    name: str
    index: int
    ipv4: tuple[str, ...]
    ipv6: tuple[tuple[str, int], ...]  # (address, scope id)


def _adapters() -> list[_Adapter]:
    """The host's network adapters (ifaddr). Blocking-ish: call from a thread."""
    out = []
    for a in ifaddr.get_adapters():
        v4 = tuple(str(ip.ip) for ip in a.ips if ip.is_IPv4)
        v6 = tuple(
            (str(ip.ip[0]), int(ip.ip[2]))
            for ip in a.ips
            if ip.is_IPv6 and isinstance(ip.ip, tuple)
        )
        out.append(_Adapter(a.name, int(a.index or 0), v4, v6))
    return out


@attrs.frozen
class _Plan:
    """What one zeroconf session binds to and advertises."""

    zc_interfaces: InterfaceChoice | tuple[str | int, ...]
    ip_version: IPVersion
    advertise: tuple[str, ...]
    listen: frozenset[str]  # "adapter/address" the multicast sockets are bound to
    adapters: frozenset[str]  # adapters with such an address
    note: str = ""


def _is_loopback(text: str) -> bool:
    try:
        return ipaddress.ip_address(text.partition("%")[0]).is_loopback
    except ValueError:
        return False


def _make_plan(adapters: Sequence[_Adapter], interfaces: Sequence[str], bind_host: str) -> _Plan:
    """Decide sockets and advertised addresses. Pure; raises DiscoveryUnavailable."""
    v6 = ":" in bind_host
    if interfaces:
        by_name = {a.name: a for a in adapters}
        unknown = [n for n in interfaces if n not in by_name]
        if unknown:
            names = ", ".join(sorted(by_name)) or "none"
            raise DiscoveryUnavailable(
                f"network interface(s) {unknown} not found; available: {names}"
            )
        chosen = [by_name[n] for n in interfaces]
    else:
        chosen = list(adapters)
    v4_addrs = [ip for a in chosen for ip in a.ipv4 if not _is_loopback(ip)]
    v6_global = [
        ip
        for a in chosen
        for ip, _scope in a.ipv6
        if not _is_loopback(ip) and not ipaddress.ip_address(ip).is_link_local
    ]
    zc_interfaces: InterfaceChoice | tuple[str | int, ...]
    if interfaces:
        picked: list[str | int] = list(v4_addrs)
        if v6:
            picked += [a.index for a in chosen if a.ipv6 and a.index]
        if not picked:
            raise DiscoveryUnavailable(
                f"network interface(s) {list(interfaces)} have no usable address yet"
            )
        zc_interfaces = tuple(picked)
    else:
        zc_interfaces = InterfaceChoice.All
    note = ""
    if bind_host in _WILDCARDS:
        advertise = tuple(v4_addrs + (v6_global if v6 else []))
    elif _is_loopback(bind_host):
        advertise = ()
        note = (
            f"the node listens on {bind_host} only, so it is not advertised; "
            "start it with --host 0.0.0.0 to be found on the network"
        )
    elif interfaces and bind_host not in v4_addrs + v6_global:
        advertise = ()
        note = f"the node listens on {bind_host}, which is not on {list(interfaces)}"
    else:
        advertise = (bind_host,)
    if not advertise and not note:
        note = "no non-loopback address to advertise yet"
    listen = {f"{a.name}/{ip}" for a in chosen for ip in a.ipv4 if not _is_loopback(ip)}
    if v6:
        listen |= {f"{a.name}/if{a.index}" for a in chosen if a.ipv6 and a.name != "lo"}
    return _Plan(
        zc_interfaces=zc_interfaces,
        ip_version=IPVersion.All if v6 else IPVersion.V4Only,
        advertise=advertise,
        listen=frozenset(listen),
        adapters=frozenset(item.partition("/")[0] for item in listen),
        note=note,
    )


def _pack(address: str) -> bytes:
    host = address.partition("%")[0]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_pton(family, host)


def instance_label(handle: str, did: str, attempt: int = 1) -> str:
    """The DNS-SD instance label: handle plus a DID fragment, at most 63 bytes.

    ``attempt`` > 1 appends `` (n)`` (after a name conflict). Dots and control
    characters in the handle become ``-``.
    """
    fragment = did[-8:]
    suffix = f"-{fragment}" + (f" ({attempt})" if attempt > 1 else "")
    clean = "".join("-" if c == "." or not c.isprintable() else c for c in handle) or "fedpeer"
    budget = _INSTANCE_MAX_BYTES - len(suffix.encode())
    while len(clean.encode()) > budget:
        clean = clean[:-1]
    return clean + suffix


def _state_name(change: object) -> _Change | None:
    if change is ServiceStateChange.Added:
        return "added"
    if change is ServiceStateChange.Updated:
        return "updated"
    if change is ServiceStateChange.Removed:
        return "removed"
    return None


@attrs.frozen
class _Parked:
    """A name waiting for a network resolve: due at ``due`` (monotonic seconds);
    ``delay`` is the wait after its last failed attempt (0: none failed yet)."""

    name: str
    due: float
    delay: float


def _from_cache(zc: Zeroconf, name: str) -> ServiceInfo | None:
    """``name``'s announcement when zeroconf's cache holds all of it (no network,
    no waiting: a few dict lookups, as zeroconf's own resolve does first), else
    None."""
    try:
        info = ServiceInfo(SERVICE_TYPE, name)
        return info if info.load_from_cache(zc) else None
    except Exception:  # a name zeroconf will not parse, a cache without it: resolve instead
        return None


def _forwarder(
    soon: Callable[[Callable[[], object]], None], send: MemoryObjectSendStream[_Event]
) -> Callable[..., None]:
    """A ServiceBrowser handler that hands events to the node's loop and returns at once.

    It runs on zeroconf's thread (arguments by keyword). ``soon`` (see
    :func:`fedpeer._aio.threadsafe_soon`) queues ``push`` for the loop's thread
    without waiting; ``push`` runs there and never blocks either (a full stream
    drops the event and says so).
    """

    def push(event: _Event) -> None:  # runs on the node's loop
        try:
            send.send_nowait(event)
        except anyio.WouldBlock:
            log.warning("mDNS event queue full; dropped %s for %r", event[1], event[0])
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def on_service_state_change(
        *, zeroconf: object, service_type: str, name: str, state_change: object
    ) -> None:  # runs on zeroconf's thread
        kind = _state_name(state_change)
        if kind is None or service_type != SERVICE_TYPE:
            return
        soon(functools.partial(push, (name, kind)))

    return on_service_state_change


async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


# --- the driver ------------------------------------------------------------------------


@attrs.define(eq=False)
class Discovery:
    """Advertise one node over mDNS, browse for others and keep a verified roster.

    ``key`` signs the announcements; ``port`` is the node's HTTP port (SRV and
    TXT). ``interfaces`` (names such as ``"eth0"``) restricts mDNS to those
    interfaces; empty means all. ``bind_host`` is the HTTP server's bind
    address: a wildcard advertises every non-loopback IPv4 address of the
    chosen interfaces (plus global IPv6 for ``::``), a specific address only
    itself, a loopback address nothing (browse only).

    Run it with ``await nursery.start(discovery.run)``; read ``roster``,
    ``status`` (see :data:`DiscoveryStatus`), ``last_error``,
    ``instance_name``, ``advertised_addresses`` and ``announcement`` (the TXT
    currently advertised); wait for changes with :meth:`wait_changed`.
    Timing knobs are in seconds.
    """

    key: SigningKey
    port: int
    handle: str = "fedpeer"
    namespaces: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    interfaces: tuple[str, ...] = ()
    bind_host: str = "0.0.0.0"  # noqa: S104 (what the server bound; decides what to advertise)
    txt_ttl_s: int = DEFAULT_TXT_TTL_S
    record_ttl_s: int = 120
    poll_s: float = 5.0
    retry_s: float = 10.0
    reverify_s: float = 120.0
    verify_timeout_s: float = 5.0
    resolve_timeout_ms: int = 3000
    restart_max_s: float = 60.0
    tls_pin: Callable[[], str | None] | None = None
    on_seen: Callable[[str], None] | None = None
    """Called with a peer's DID each time its announcement and manifest check out
    (a new announcement, e.g. after the peer restarted, or a periodic re-check):
    the node wakes that peer's failing pairs. Must not block; errors are logged."""
    roster: Roster = attrs.field(init=False)
    status: DiscoveryStatus = attrs.field(init=False, default="stopped")
    last_error: str | None = attrs.field(init=False, default=None)
    instance_name: str | None = attrs.field(init=False, default=None)
    advertised_addresses: tuple[str, ...] = attrs.field(init=False, default=())
    announcement: dict[str, str] | None = attrs.field(init=False, default=None)
    version: int = attrs.field(init=False, default=0)
    _changed: anyio.Event = attrs.field(init=False, factory=anyio.Event)
    _roster_version: int = attrs.field(init=False, default=0)
    _seq: int = attrs.field(init=False, default=0)
    # Resolves and manifest checks have a limiter each, so a flood of names that
    # never resolve (each waiting out its timeout) cannot hold up the checks.
    _limiter: anyio.CapacityLimiter = attrs.field(
        init=False, factory=lambda: anyio.CapacityLimiter(8)
    )
    _check_limiter: anyio.CapacityLimiter = attrs.field(
        init=False, factory=lambda: anyio.CapacityLimiter(8)
    )
    _checking: set[tuple[str, int]] = attrs.field(init=False, factory=set)
    # names being resolved over the network (at most _MAX_RESOLVING): True = once more
    _resolving: dict[str, bool] = attrs.field(init=False, factory=dict)
    # names waiting for a (next) network resolve, oldest first, at most MAX_ENTRIES
    _unresolved: dict[str, _Parked] = attrs.field(init=False, factory=dict)
    # goodbyes seen during a name's resolve (only names being resolved have one)
    _epoch: dict[str, int] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigInvalid(f"discovery needs the node's port (1..65535), got {self.port}")
        self.roster = Roster(own_did=self.key.did)

    @classmethod
    def for_node(
        cls,
        key: SigningKey,
        config: NodeConfig,
        *,
        url: str,
        bind_host: str,
        tls_pin: Callable[[], str | None] | None = None,
    ) -> Discovery:
        """The Discovery ``open_node`` runs: handle, namespaces and interfaces from
        ``config``, port from the node's bound ``url``, the TLS pin announced in
        the TXT from ``tls_pin()`` (read at each announcement, so a rotation shows)."""
        port = urllib.parse.urlsplit(url).port
        if port is None:
            raise ConfigInvalid(f"cannot tell the node's port from {url!r}")
        return cls(
            key=key,
            port=port,
            handle=config.handle,
            namespaces=tuple(config.advertised_namespaces),
            interfaces=tuple(config.interfaces),
            bind_host=bind_host,
            tls_pin=tls_pin,
        )

    # --- observing -----------------------------------------------------------------

    def _notify(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = anyio.Event()

    def _sync_roster(self) -> None:
        if self.roster.version != self._roster_version:
            self._roster_version = self.roster.version
            self._notify()

    def _set_status(self, status: DiscoveryStatus, error: str | None = None) -> None:
        if (status, error) != (self.status, self.last_error):
            self.status = status
            self.last_error = error
            self._notify()

    async def wait_changed(self, seen: int) -> int:
        """Wait until :attr:`version` differs from ``seen``; return the new version.

        The version grows on every roster change (entry added, removed, status
        or announcement changed) and every status change. Cancellable; does
        not time out by itself (wrap it in ``anyio.fail_after``).
        """
        while self.version == seen:
            await self._changed.wait()
        return self.version

    def to_json(self) -> dict[str, object]:
        """The ``GET /v1/discovery/mdns`` body: status and roster."""
        return {
            "enabled": True,
            "status": self.status,
            "last_error": self.last_error,
            "did": self.key.did,
            "instance": self.instance_name,
            "addresses": list(self.advertised_addresses),
            "port": self.port,
            "peers": [e.to_json() for e in self.roster.entries()],
        }

    # --- running -------------------------------------------------------------------

    async def run(
        self,
        *,
        stop: anyio.Event | None = None,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Advertise, browse and verify until cancelled or ``stop`` is set.

        Reports started at once (before any mDNS traffic): discovery never
        delays or stops the node. Failures are logged, shown in ``status`` /
        ``last_error`` and retried with backoff (1 s doubling to
        ``restart_max_s``). On the way out, even when cancelled, goodbye
        packets are sent and zeroconf is closed (shielded, at most ~5 s).
        """
        self._set_status("starting")
        task_status.started()
        try:
            async with anyio.create_task_group() as nursery:
                if stop is not None:
                    nursery.start_soon(_cancel_when, stop, nursery.cancel_scope)
                await self._supervise()
        finally:
            self.instance_name = None
            self.advertised_addresses = ()
            self._set_status("stopped")

    async def _supervise(self) -> None:
        delay = 1.0
        while True:  # ends by cancellation only
            try:
                await self._session()
                delay = 1.0
                continue
            except FedpeerError as exc:
                error = f"{exc.code}: {exc}"
            except Exception as exc:  # mDNS trouble never stops the node
                error = (
                    f"{DiscoveryUnavailable.code}: the mDNS socket failed ({type(exc).__name__}); "
                    "`fedpeer doctor` checks multicast on each interface"
                )
                log.debug("mDNS failure", exc_info=True)
            log.warning("mDNS discovery unavailable (%s); retrying in %.0f s", error, delay)
            # Without a working browser the roster would only go stale.
            self.roster.clear()
            self._sync_roster()
            self._set_status("failed", error)
            await anyio.sleep(delay)
            delay = min(delay * 2, self.restart_max_s)

    async def _session(self) -> None:
        """One zeroconf instance; returns when it must be recreated."""
        adapters = await anyio.to_thread.run_sync(_adapters)
        plan = _make_plan(adapters, self.interfaces, self.bind_host)
        # zeroconf wants a list (not a tuple) of addresses / interface indexes
        choice = plan.zc_interfaces
        zc_choice = list(choice) if isinstance(choice, tuple) else choice
        zc = await anyio.to_thread.run_sync(
            functools.partial(Zeroconf, interfaces=zc_choice, ip_version=plan.ip_version)
        )
        browser: list[ServiceBrowser] = []
        registered: list[ServiceInfo] = []
        try:
            send, recv = anyio.create_memory_object_stream[_Event](_EVENT_BUFFER)
            handler = _forwarder(threadsafe_soon(), send)

            def start_browser() -> None:
                browser.append(ServiceBrowser(zc, SERVICE_TYPE, handlers=[handler]))

            await anyio.to_thread.run_sync(start_browser)
            async with anyio.create_task_group() as nursery:
                nursery.start_soon(self._consume, zc, recv, nursery)
                if plan.advertise:
                    await self._register(zc, plan, registered)
                    self._set_status("running")
                else:
                    log.warning("mDNS: browsing only: %s", plan.note)
                    self._set_status("browse-only", plan.note)
                await self._maintain(zc, plan, registered, nursery)
                nursery.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._close(zc, browser, registered)

    def _next_seq(self, now: float) -> int:
        self._seq = max(self._seq + 1, int(now * 1000))
        return self._seq

    def _service_info(self, name: str, addresses: Sequence[str], now: float) -> ServiceInfo:
        txt = sign_txt(
            self.key,
            handle=self.handle[:128] or "fedpeer",
            port=self.port,
            namespaces=self.namespaces,
            capabilities=self.capabilities,
            seq=self._next_seq(now),
            ttl_s=self.txt_ttl_s,
            now=now,
            tls_pin=self.tls_pin() if self.tls_pin is not None else None,
        )
        return ServiceInfo(
            SERVICE_TYPE,
            name,
            port=self.port,
            properties=txt,
            server=f"fedpeer-{self.key.did[-12:].lower()}.local.",
            addresses=[_pack(a) for a in addresses],
            host_ttl=self.record_ttl_s,
            other_ttl=self.record_ttl_s,
        )

    async def _register(self, zc: Zeroconf, plan: _Plan, registered: list[ServiceInfo]) -> None:
        def register(info: ServiceInfo) -> None:
            zc.register_service(info)
            registered.append(info)  # before returning: a cancelled caller still sees it

        for attempt in range(1, _MAX_NAME_ATTEMPTS + 1):
            name = f"{instance_label(self.handle, self.key.did, attempt)}.{SERVICE_TYPE}"
            self.roster.own_names.add(name.lower())
            self.roster.remove(name)
            info = self._service_info(name, plan.advertise, time.time())
            try:
                await anyio.to_thread.run_sync(register, info)
            except NonUniqueNameException:
                self.roster.own_names.discard(name.lower())
                log.warning("mDNS name %r is taken on this network; trying another", name)
                continue
            self.instance_name = name
            self.advertised_addresses = plan.advertise
            self.announcement = decode_txt(info.properties)
            self._sync_roster()
            log.info("mDNS: advertising %s on %s port %d", name, plan.advertise, self.port)
            return
        raise DiscoveryUnavailable(
            f"every mDNS instance name tried for {self.handle!r} is taken on this network"
        )

    async def _close(
        self, zc: Zeroconf, browser: list[ServiceBrowser], registered: list[ServiceInfo]
    ) -> None:
        """Goodbyes, then close; bounded, each step abandoned if it hangs."""
        with anyio.move_on_after(_CLOSE_TIMEOUT_S):
            for info in registered:
                try:
                    await anyio.to_thread.run_sync(
                        zc.unregister_service, info, abandon_on_cancel=True
                    )
                except Exception as exc:
                    log.debug("mDNS unregister failed: %r", exc)
            for b in browser:
                try:
                    await anyio.to_thread.run_sync(b.cancel, abandon_on_cancel=True)
                except Exception as exc:
                    log.debug("mDNS browser cancel failed: %r", exc)
            try:
                await anyio.to_thread.run_sync(zc.close, abandon_on_cancel=True)
            except Exception as exc:
                log.debug("mDNS close failed: %r", exc)
        for info in registered:
            self.roster.own_names.discard(info.name.lower())
        self.instance_name = None
        self.announcement = None

    async def _consume(
        self,
        zc: Zeroconf,
        recv: MemoryObjectReceiveStream[_Event],
        nursery: anyio.abc.TaskGroup,
    ) -> None:
        async for name, kind in recv:
            key = name.lower()
            if key in self.roster.own_names:
                continue
            if kind == "removed":
                if key in self._resolving:
                    self._epoch[key] = self._epoch.get(key, 0) + 1
                self._unresolved.pop(key, None)
                if self.roster.remove(name) is not None:
                    log.info("mDNS: %r left", name)  # a stranger's name: repr
                    self._sync_roster()
            else:
                self._request_resolve(zc, name, nursery)

    def _request_resolve(self, zc: Zeroconf, name: str, nursery: anyio.abc.TaskGroup) -> None:
        """Resolve ``name``: from zeroconf's cache at once when its announcement
        is complete there (an honest peer's usually is: SRV, TXT and addresses
        come in one packet), else over the network in a task, at most
        ``_MAX_RESOLVING`` at a time; past that the name waits in ``_unresolved``
        for a free slot (:meth:`_maintain`)."""
        key = name.lower()
        if key in self._resolving:
            self._resolving[key] = True  # resolve once more when the current one ends
            return
        info = _from_cache(zc, name)
        if info is not None:
            self._unresolved.pop(key, None)
            self._apply(name, info, nursery)
            return
        parked = self._unresolved.get(key)
        if len(self._resolving) >= _MAX_RESOLVING or (
            parked is not None and parked.due > time.monotonic()  # still waiting its delay
        ):
            self._park(key, name, failed=False)
            return
        self._unresolved.pop(key, None)
        self._resolving[key] = False
        nursery.start_soon(self._resolve, zc, name, nursery)

    def _resolve_next(self, zc: Zeroconf, nursery: anyio.abc.TaskGroup) -> bool:
        """Resolve the waiting name that is due and has failed least (a name
        parked only for want of a slot first); False when none is due or no
        network slot is free. Called as a slot frees up and on every poll, so
        waiting names are served in one order whichever comes first."""
        if len(self._resolving) >= _MAX_RESOLVING:
            return False
        now = time.monotonic()
        best: tuple[float, float, str] | None = None
        for key, parked in self._unresolved.items():
            if parked.due <= now and key not in self._resolving:
                rank = (parked.delay, parked.due, key)
                if best is None or rank < best:
                    best = rank
        if best is None:
            return False
        # from the cache or to the network: either way it leaves the waiting list
        self._request_resolve(zc, self._unresolved[best[2]].name, nursery)
        return True

    def _park(self, key: str, name: str, *, failed: bool) -> None:
        """Keep ``name`` for a later resolve: due now (no free slot), or after a
        wait that doubles with every failed attempt (``poll_s`` up to
        ``_RETRY_MAX_S``). At most MAX_ENTRIES names wait; the one waiting
        longest makes room (a flood of names cannot grow this)."""
        now = time.monotonic()
        old = self._unresolved.pop(key, None)
        if failed:
            before = 0.0 if old is None else old.delay  # 0: never failed yet
            delay = min(max(before * 2, self.poll_s), _RETRY_MAX_S)
            parked = _Parked(name, now + delay, delay)
        elif old is not None:
            parked = _Parked(name, old.due, old.delay)  # a new event does not cut its wait
        else:
            parked = _Parked(name, now, 0.0)
        while len(self._unresolved) >= MAX_ENTRIES:
            # the name that failed most makes room (then the one waiting longest)
            worst = max(self._unresolved, key=lambda k: self._unresolved[k].delay)
            del self._unresolved[worst]
        self._unresolved[key] = parked

    def _apply(self, name: str, info: ServiceInfo, nursery: anyio.abc.TaskGroup) -> None:
        """Take a resolved announcement into the roster (and check it if needed)."""
        if info.port is None:
            self._park(name.lower(), name, failed=True)
            return
        before = self.roster.get(name)
        entry, needs_check = self.roster.observe(
            name,
            info.properties,
            info.parsed_scoped_addresses(),
            info.port,
            now=time.time(),
        )
        self._sync_roster()
        if entry is not None and needs_check:
            self._start_check(entry, nursery)
        elif (
            entry is not None
            and entry.status == "invalid"
            and (before is None or before.generation != entry.generation)
        ):
            # once per verdict, not on every poll (a LAN host can keep hundreds of
            # bad announcements cached); the name is a stranger's text: repr
            log.warning("mDNS: %r is invalid: %s", name, entry.reason)

    async def _resolve(self, zc: Zeroconf, name: str, nursery: anyio.abc.TaskGroup) -> None:
        key = name.lower()
        epoch = 0  # a goodbye between _request_resolve and this task counts too
        try:
            for _ in range(3):  # bounded: updates arriving meanwhile get one more round each
                async with self._limiter:
                    info = await anyio.to_thread.run_sync(
                        functools.partial(
                            zc.get_service_info, SERVICE_TYPE, name, self.resolve_timeout_ms
                        ),
                        abandon_on_cancel=True,
                    )
                if self._epoch.get(key, 0) != epoch or key in self.roster.own_names:
                    pass  # removed (or became ours) while resolving
                elif info is None:
                    self._park(key, name, failed=True)
                else:
                    self._unresolved.pop(key, None)
                    self._apply(name, info, nursery)
                if not self._resolving.get(key):
                    break
                self._resolving[key] = False
                epoch = self._epoch.get(key, 0)
        finally:
            self._resolving.pop(key, None)
            self._epoch.pop(key, None)
        self._resolve_next(zc, nursery)  # not when cancelled: the session is ending

    def _start_check(self, entry: RosterEntry, nursery: anyio.abc.TaskGroup) -> None:
        marker = (entry.name.lower(), entry.generation)
        if marker in self._checking:
            return
        self._checking.add(marker)
        nursery.start_soon(self._check, entry, marker)

    async def _check(self, entry: RosterEntry, marker: tuple[str, int]) -> None:
        try:
            async with self._check_limiter:
                result = await verify_peer(entry, timeout_s=self.verify_timeout_s)
            updated = self.roster.apply_check(entry.name, entry.generation, result, now=time.time())
            if updated is not None and result.status == "verified" and self.on_seen is not None:
                try:
                    self.on_seen(entry.did)
                except Exception:
                    log.exception("mDNS: the on_seen hook failed")
            if updated is not None:
                self._sync_roster()
                if updated.status != entry.status:  # log transitions, not every re-check
                    level = logging.WARNING if result.status == "invalid" else logging.INFO
                    log.log(level, "mDNS: %r (%s) is %s %s", entry.name, entry.did,
                            result.status, result.reason)  # fmt: skip
        finally:
            self._checking.discard(marker)

    async def _maintain(
        self,
        zc: Zeroconf,
        plan: _Plan,
        registered: list[ServiceInfo],
        nursery: anyio.abc.TaskGroup,
    ) -> None:
        """Poll addresses, re-sign, re-check; return when the session must restart.

        zeroconf's sockets are bound per interface address when the session
        starts: a bound address that vanished or a new interface needs a new
        session; an address added to an interface already covered only needs
        ``update_service`` (new A records), so peers see no goodbye/hello flap.
        """
        session = plan
        resign_at = time.time() + self.txt_ttl_s / 2
        while True:  # ends by cancellation or restart
            await anyio.sleep(self.poll_s)
            now = time.time()
            try:
                adapters = await anyio.to_thread.run_sync(_adapters)
                new_plan = _make_plan(adapters, self.interfaces, self.bind_host)
            except DiscoveryUnavailable as exc:
                log.warning("mDNS: %s; restarting discovery", exc)
                return
            vanished = session.listen - new_plan.listen
            appeared = new_plan.adapters - session.adapters
            if vanished or appeared or bool(new_plan.advertise) != bool(registered):
                log.info(
                    "mDNS: network changed (gone: %s, new interfaces: %s); restarting",
                    sorted(vanished),
                    sorted(appeared),
                )
                return
            if registered and (new_plan.advertise != plan.advertise or now >= resign_at):
                info = self._service_info(registered[0].name, new_plan.advertise, now)
                await anyio.to_thread.run_sync(zc.update_service, info)
                registered[0] = info
                self.announcement = decode_txt(info.properties)
                resign_at = now + self.txt_ttl_s / 2
                if new_plan.advertise != plan.advertise:
                    log.info("mDNS: re-announced with addresses %s", new_plan.advertise)
                    self.advertised_addresses = new_plan.advertise
                    self._notify()
                plan = new_plan
            if self.roster.mark_expired(now):
                self._sync_roster()
            # Re-read every entry from zeroconf's cache: the browser reports new
            # address records but not flushed ones (a peer that lost an address).
            # Cache hits are cheap. Then names that did not resolve, once due
            # (their wait doubles), while network slots are free.
            for entry in self.roster.entries():
                self._request_resolve(zc, entry.name, nursery)
            for _ in range(len(self._unresolved)):  # each round takes a name off the list
                if not self._resolve_next(zc, nursery):
                    break
            for entry in self.roster.due_for_check(
                now, retry_s=self.retry_s, reverify_s=self.reverify_s
            ):
                self._start_check(entry, nursery)
