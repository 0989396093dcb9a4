"""The discovery roster: who announces fedpeer on the link, and what we know of them.

Pure state, no I/O: the driver in :mod:`fedpeer.peer.discovery` feeds it what
zeroconf resolved (:meth:`Roster.observe`), removals (:meth:`Roster.remove`) and
the outcome of manifest checks (:meth:`Roster.apply_check`).

Entries are keyed by mDNS service instance name, not by DID: an impostor
announcing someone else's DID under another name must show up as its own
(``invalid``) entry, not overwrite the real one.

Status of an entry:

- ``unverified``: the TXT signature is good but the manifest has not been
  checked yet, or the node could not be reached (``reason`` says which);
- ``verified``: the well-known manifest, fetched from the announced address
  and port, is signed by the DID in the TXT;
- ``invalid``: the TXT is malformed, badly signed, expired or replays an older
  announcement, its port disagrees with the SRV record, or the manifest is
  signed by another DID. Never offered for pairing.

A manifest check is tied to a *generation*: the (DID, port, addresses) it was
made for. When any of those change the entry gets a new generation and goes
back to ``unverified``; a check result for an older generation is dropped.
Re-signed announcements (new ``seq``/``exp``, same endpoint) keep the status.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal

import attrs

from ..errors import FedpeerError, clean_remote_text
from ._mdns_txt import DEFAULT_MAX_SKEW_S, TxtProperties, decode_txt, verify_txt

__all__ = [
    "MAX_DIDS",
    "MAX_ENTRIES",
    "CheckResult",
    "Roster",
    "RosterEntry",
    "Status",
    "prefer_addresses",
    "url_for",
]

Status = Literal["unverified", "verified", "invalid"]

NOT_CHECKED = "not checked yet"
NO_ADDRESS = "no usable address (only loopback or unscoped link-local)"
MAX_ENTRIES = 256
"""Roster entries kept at most (a LAN has far fewer fedpeer nodes)."""
MAX_DIDS = 4096
"""DIDs whose highest announcement ``seq`` is remembered at most."""


def _split_scope(text: str) -> tuple[str, str]:
    host, _, scope = text.partition("%")
    return host, scope


def prefer_addresses(addresses: Iterable[str]) -> tuple[str, ...]:
    """Usable peer addresses, best first, without duplicates.

    Order: IPv4, IPv4 link-local (169.254/16), IPv6 global or unique-local,
    IPv6 link-local *with* a scope (``fe80::1%2``). Dropped: loopback,
    unspecified, multicast, IPv4-mapped, unparsable, and link-local IPv6
    without a scope (Avahi announces those; they cannot be dialled).
    """
    ranked: list[tuple[int, int, str]] = []
    seen: set[str] = set()
    for index, text in enumerate(addresses):
        host, scope = _split_scope(text)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
            continue
        if isinstance(ip, ipaddress.IPv4Address):
            rank = 1 if ip.is_link_local else 0
            canonical = str(ip)
        else:
            if ip.ipv4_mapped is not None:
                continue
            if ip.is_link_local:
                if not scope:
                    continue
                rank = 3
                canonical = f"{ip}%{scope}"
            else:
                rank = 2
                canonical = str(ip)
        if canonical in seen:
            continue
        seen.add(canonical)
        ranked.append((rank, index, canonical))
    return tuple(text for _rank, _index, text in sorted(ranked))


def url_for(address: str, port: int, scheme: str = "http") -> str:
    """``http://`` (or ``scheme``) URL of ``address:port`` (IPv6 bracketed, zone id
    as ``%25``)."""
    host, scope = _split_scope(address)
    if ":" in host:
        return f"{scheme}://[{host}%25{scope}]:{port}" if scope else f"{scheme}://[{host}]:{port}"
    return f"{scheme}://{host}:{port}"


@attrs.frozen
class CheckResult:
    """The outcome of one manifest check (see ``discovery.verify_peer``).

    ``url`` is the base URL that answered with a good manifest (verified only).
    """

    status: Status
    reason: str = ""
    url: str | None = None


RECHECK_MAX_S = 300.0
"""The longest wait between manifest checks of an announcement that keeps failing."""


@attrs.frozen
class RosterEntry:
    """One announced service instance, as last seen. Times are unix seconds."""

    name: str
    did: str
    handle: str
    addresses: tuple[str, ...]
    port: int
    namespaces: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    seq: int = 0
    expires_at: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    status: Status = "unverified"
    reason: str = NOT_CHECKED
    verified_url: str | None = None
    checked_at: float | None = None
    generation: int = 0
    tls_pin: str | None = None
    failed_checks: int = 0  # manifest checks in a row that left it unverified

    @property
    def urls(self) -> tuple[str, ...]:
        """Base URLs to try, best address first (https when the TXT carries a pin)."""
        scheme = "https" if self.tls_pin else "http"
        return tuple(url_for(a, self.port, scheme) for a in self.addresses)

    @property
    def url(self) -> str | None:
        """The verified URL, else the best candidate, else None."""
        if self.verified_url is not None:
            return self.verified_url
        return self.urls[0] if self.addresses and self.port else None

    @property
    def offerable(self) -> bool:
        """True only for verified entries: the only ones to offer for pairing."""
        return self.status == "verified"

    def to_json(self) -> dict[str, object]:
        """A JSON/DAG-CBOR-safe view (times as integer milliseconds)."""
        return {
            "name": self.name,
            "did": self.did,
            "handle": self.handle,
            "addresses": list(self.addresses),
            "port": self.port,
            "url": self.url,
            "namespaces": list(self.namespaces),
            "capabilities": list(self.capabilities),
            "seq": self.seq,
            "expires_at_ms": self.expires_at * 1000,
            "first_seen_ms": int(self.first_seen * 1000),
            "last_seen_ms": int(self.last_seen * 1000),
            "status": self.status,
            "reason": self.reason,
            "checked_at_ms": None if self.checked_at is None else int(self.checked_at * 1000),
        }


def _raw_str(properties: TxtProperties, key: str) -> str:
    for k, v in properties.items():
        kt = k.decode("ascii", "replace") if isinstance(k, bytes) else k
        if kt == key and v is not None:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return ""


@attrs.define
class Roster:
    """The set of announced peers. Not thread-safe: use it from one event loop.

    ``own_did`` and ``own_names`` (lower-case instance names) are this node's
    own announcements, which are never listed. ``version`` grows on every
    change that matters (not on a mere ``last_seen`` refresh).
    """

    own_did: str | None = None
    own_names: set[str] = attrs.field(factory=set)
    max_skew_s: float = DEFAULT_MAX_SKEW_S
    max_entries: int = MAX_ENTRIES
    """At most this many entries: a host flooding the LAN with announcements (fresh
    keys sign valid TXTs for free) replaces the least recently seen entries that
    are not verified first, so memory stays bounded and a verified peer is the
    last to go."""
    max_dids: int = MAX_DIDS
    """At most this many DIDs' highest ``seq`` are remembered (replay detection);
    the oldest DIDs with no entry are forgotten first."""
    version: int = 0
    _entries: dict[str, RosterEntry] = attrs.field(factory=dict)
    _max_seq: dict[str, int] = attrs.field(factory=dict)
    _generation: int = 0

    # --- reading -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> RosterEntry | None:
        """The entry for a service instance name (case-insensitive), if any."""
        return self._entries.get(name.lower())

    def entries(self) -> tuple[RosterEntry, ...]:
        """All entries, sorted by handle, then DID, then name."""
        return tuple(sorted(self._entries.values(), key=lambda e: (e.handle, e.did, e.name)))

    def by_did(self, did: str) -> tuple[RosterEntry, ...]:
        """Every entry announcing ``did`` (the real one and any impostors)."""
        return tuple(e for e in self.entries() if e.did == did)

    def verified(self, did: str) -> RosterEntry | None:
        """The verified entry for ``did`` (the one to offer for pairing), or None."""
        for entry in self.by_did(did):
            if entry.status == "verified":
                return entry
        return None

    # --- updates -------------------------------------------------------------------

    def _store(self, entry: RosterEntry, old: RosterEntry | None) -> RosterEntry:
        key = entry.name.lower()
        if key not in self._entries and len(self._entries) >= self.max_entries:
            self._evict_one()
        self._entries[key] = entry
        if old is None or attrs.evolve(old, last_seen=entry.last_seen) != entry:
            self.version += 1
        return entry

    def _evict_one(self) -> None:
        """Drop the least recently seen entry, one that is not verified if any."""
        victim = min(self._entries.values(), key=lambda e: (e.status == "verified", e.last_seen))
        del self._entries[victim.name.lower()]
        self.version += 1

    def _note_seq(self, did: str, seq: int) -> None:
        self._max_seq[did] = max(seq, self._max_seq.pop(did, 0))  # re-insert: newest last
        if len(self._max_seq) <= self.max_dids:
            return
        present = {e.did for e in self._entries.values()}
        for old_did in list(self._max_seq):  # insertion order: least recently noted first
            if len(self._max_seq) <= self.max_dids:
                return
            if old_did not in present:
                del self._max_seq[old_did]

    def _next_generation(self) -> int:
        self._generation += 1
        return self._generation

    def _invalid(self, entry: RosterEntry, reason: str, old: RosterEntry | None) -> RosterEntry:
        # Same verdict (its code: a message may hold the time) on the same DID: keep
        # the generation (no churn, and the warning is logged once).
        same = (
            old is not None
            and old.status == "invalid"
            and old.did == entry.did
            and old.reason.partition(":")[0] == reason.partition(":")[0]
        )
        if same:
            assert old is not None
            generation = old.generation
        else:
            generation = self._next_generation()
        bad = attrs.evolve(entry, status="invalid", reason=reason, generation=generation)
        if old is not None and old.did == entry.did:  # a failing DID keeps its backoff
            bad = attrs.evolve(bad, checked_at=old.checked_at, failed_checks=old.failed_checks)
        return self._store(bad, old)

    def observe(
        self,
        name: str,
        properties: TxtProperties,
        addresses: Iterable[str],
        port: int,
        *,
        now: float,
    ) -> tuple[RosterEntry | None, bool]:
        """Apply one resolved announcement (TXT properties, SRV port, A/AAAA addresses).

        Returns ``(entry, needs_check)``: ``entry`` is None when the
        announcement is this node's own; ``needs_check`` is True when the
        manifest must be fetched for the entry's (new) generation. The TXT is
        checked here (:func:`verify_txt`); failures give an ``invalid`` entry
        whose ``reason`` starts with the error code. An announcement with a
        lower ``seq`` than the one already held for this name is ignored.
        """
        key = name.lower()
        if key in self.own_names:
            return None, False
        raw_did = _raw_str(properties, "did")
        if self.own_did is not None and raw_did == self.own_did:
            return None, False
        old = self._entries.get(key)
        addrs = prefer_addresses(addresses)
        first_seen = now if old is None else old.first_seen
        try:
            ann = verify_txt(decode_txt(properties), now=now, max_skew_s=self.max_skew_s)
        except FedpeerError as err:
            bad = RosterEntry(
                name=name,
                did=raw_did[:200],
                handle=clean_remote_text(_raw_str(properties, "handle"), 128),  # unchecked
                addresses=addrs,
                port=port,
                first_seen=first_seen,
                last_seen=now,
            )
            return self._invalid(bad, f"{err.code}: {err.message}", old), False
        if old is not None and old.did == ann.did and ann.seq < old.seq:
            return old, False  # a stale record arriving after a newer one
        entry = RosterEntry(
            name=name,
            did=ann.did,
            handle=ann.handle,
            addresses=addrs,
            port=port,
            namespaces=ann.namespaces,
            capabilities=ann.capabilities,
            seq=ann.seq,
            expires_at=ann.expires_at,
            first_seen=first_seen,
            last_seen=now,
            tls_pin=ann.tls_pin,
        )
        newest = self._max_seq.get(ann.did)
        if (old is None or old.did != ann.did) and newest is not None and ann.seq < newest:
            reason = (
                f"STALE_ANNOUNCEMENT: replays an older announcement of {ann.did} "
                f"(seq {ann.seq} < {newest})"
            )
            return self._invalid(entry, reason, old), False
        if ann.port != port:
            reason = f"PORT_MISMATCH: TXT says port {ann.port} but SRV says {port}"
            return self._invalid(entry, reason, old), False
        self._note_seq(ann.did, ann.seq)
        same_endpoint = (
            old is not None
            and old.did == ann.did
            and old.port == port
            and set(old.addresses) == set(addrs)
        )
        if same_endpoint:
            assert old is not None
            # Keep a verdict (or a pending first check) made for this very endpoint.
            pending = old.checked_at is None and old.reason in (NOT_CHECKED, NO_ADDRESS)
            if old.checked_at is not None or pending:
                entry = attrs.evolve(
                    entry,
                    status=old.status,
                    reason=old.reason,
                    verified_url=old.verified_url,
                    checked_at=old.checked_at,
                    generation=old.generation,
                    failed_checks=old.failed_checks,
                )
                return self._store(entry, old), pending and bool(addrs)
        if not addrs:
            entry = attrs.evolve(entry, reason=NO_ADDRESS, generation=self._next_generation())
            if old is not None and old.did == ann.did:  # a failing DID keeps its backoff
                entry = attrs.evolve(
                    entry, checked_at=old.checked_at, failed_checks=old.failed_checks
                )
            return self._store(entry, old), False
        entry = attrs.evolve(entry, generation=self._next_generation())
        if old is not None and old.did == ann.did and old.failed_checks:
            # The same DID, failing, now elsewhere: the new endpoint is checked when
            # its backoff says (due_for_check), not at once, so announcing new
            # addresses cannot turn into a connection per packet.
            entry = attrs.evolve(entry, checked_at=old.checked_at, failed_checks=old.failed_checks)
            return self._store(entry, old), False
        return self._store(entry, old), True

    def apply_check(
        self, name: str, generation: int, result: CheckResult, *, now: float
    ) -> RosterEntry | None:
        """Record a manifest check made for ``generation`` of ``name``.

        Returns the updated entry, or None when the entry is gone or has moved
        on to another generation (the result is then stale and dropped).
        """
        old = self._entries.get(name.lower())
        if old is None or old.generation != generation:
            return None
        entry = attrs.evolve(
            old,
            status=result.status,
            reason=result.reason,
            verified_url=result.url if result.status == "verified" else None,
            checked_at=now,
            failed_checks=old.failed_checks + 1 if result.status == "unverified" else 0,
        )
        return self._store(entry, old)

    def remove(self, name: str) -> RosterEntry | None:
        """Drop an entry (goodbye packet or TTL expiry); return it, or None."""
        entry = self._entries.pop(name.lower(), None)
        if entry is not None:
            self.version += 1
        return entry

    def clear(self) -> int:
        """Forget every entry (discovery stopped working); return how many there were."""
        count = len(self._entries)
        self._entries.clear()
        if count:
            self.version += 1
        return count

    def expired(self, now: float) -> tuple[RosterEntry, ...]:
        """Entries whose signed announcement is past ``exp`` (plus skew)."""
        return tuple(
            e
            for e in self._entries.values()
            if e.expires_at and now > e.expires_at + self.max_skew_s and e.status != "invalid"
        )

    def mark_expired(self, now: float) -> tuple[RosterEntry, ...]:
        """Turn entries with an expired announcement ``unverified``; return them.

        Their manifest is not re-checked until a fresh announcement arrives
        (the node re-signs well before expiry; a stale one means it is gone
        or its announcements are not reaching us).
        """
        changed = []
        for old in self.expired(now):
            if old.status == "unverified" and old.checked_at is None:
                continue
            entry = attrs.evolve(
                old,
                status="unverified",
                reason="announcement expired; waiting for a fresh one",
                verified_url=None,
                checked_at=None,
                generation=self._next_generation(),
            )
            changed.append(self._store(entry, old))
        return tuple(changed)

    def due_for_check(
        self, now: float, *, retry_s: float, reverify_s: float
    ) -> tuple[RosterEntry, ...]:
        """Entries whose manifest should be fetched (again) now.

        Unverified entries with an address and a live announcement, checked
        never, or longer ago than ``retry_s`` doubled for each check in a row that
        failed (at most :data:`RECHECK_MAX_S`: announcements pointing at hosts
        that do not answer as the node cost a connection now and then, not every
        ``retry_s``); verified entries checked more than ``reverify_s`` ago (so a
        vanished peer does not stay verified). Invalid entries wait for a new
        announcement.
        """
        due = []
        for e in self._entries.values():
            if not e.addresses or e.status == "invalid":
                continue
            if e.expires_at and now > e.expires_at + self.max_skew_s:
                continue
            if e.status == "unverified":
                wait = min(retry_s * 2 ** min(max(e.failed_checks - 1, 0), 16), RECHECK_MAX_S)
            else:
                wait = reverify_s
            if e.checked_at is None or now - e.checked_at >= wait:
                due.append(e)
        return tuple(due)
