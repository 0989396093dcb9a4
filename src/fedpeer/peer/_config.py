"""Node configuration: one frozen value, validated on construction."""

from __future__ import annotations

from typing import Any

import attrs

from ..errors import ConfigInvalid

PAGE_MAX_BYTES = 8 * 1024 * 1024
"""A feed page's byte budget: records past it wait for the next page."""


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigInvalid(f"{attr.name} must be > 0, got {value!r}")


def _positive_or_none(inst: object, attr: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigInvalid(f"{attr.name} must be a whole number or None, got {value!r}")
        _positive(inst, attr, value)


def _seconds(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= 366 * 24 * 3600
    ):
        raise ConfigInvalid(f"{attr.name} must be a number of seconds, 0 to a year, got {value!r}")


def _percent_floor(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 50:
        raise ConfigInvalid(f"{attr.name} must be a number from 0 to 50, got {value!r}")


MAX_HEARTBEAT_S = 15.0
"""protocol.md §8.5: a stream's heartbeat comes at least every 15 s; clients drop a
stream silent for four intervals (fedpeer: 60 s), so a longer one would have every
fedpeer client drop this node's healthy streams."""


def _heartbeat(inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    _positive(inst, attr, value)
    if value > MAX_HEARTBEAT_S:
        raise ConfigInvalid(
            f"heartbeat_s must be at most {MAX_HEARTBEAT_S:g} s (protocol.md §8.5: clients "
            f"drop a stream silent for 60 s), got {value!r}"
        )


@attrs.frozen
class NodeConfig:
    """Tunables of a node. Every limit an entry point enforces is here.

    ``auth_enabled=False`` is for local development only: non-admin routes then
    accept anonymous callers, admin routes still require an admin token.

    ``discovery=True`` advertises the node over mDNS and browses for others
    (see :mod:`fedpeer.peer.discovery`); off by default for embedded nodes and
    tests, ``fedpeer run`` turns it on. ``interfaces`` restricts mDNS to those
    network interfaces (names such as ``"eth0"``); empty means all.

    ``tls``: serve HTTPS with the node's self-signed certificate pinned by its
    DID (docs/protocol.md §6.6). None (the default) means HTTPS unless the node
    listens on loopback only; ``fedpeer run`` passes True. Plain HTTP on
    another address needs ``insecure_http=True`` (``--insecure-http``): the
    node then logs a warning and shows it in ``/health``. ``insecure_http`` also
    lets this node pull from plain-HTTP peers that are not on loopback.
    ``page_max_bytes`` bounds every read answer (feed and stream pages, record
    listings, batch fetches) by the size of its records' wire bytes (at least
    one record), so a puller's byte cap (this budget plus slack) is never hit by
    an honest node and no answer holds more than that in memory. ``header_timeout_s`` and
    ``body_timeout_s`` bound how long a client may take to send its request
    head and body (the TLS handshake too); ``max_conns_per_ip`` caps the
    requests one source address has in flight (one more is answered 429 at
    once). ``max_open_conns_per_ip`` caps the connections one address holds
    open in any state (idle, mid-handshake, sending its head), and
    ``max_open_conns`` those of all addresses together: past either, a new
    connection is closed as soon as it is accepted (at the total cap, an idle
    connection of the address holding the most goes first when that address
    holds at least two more than the newcomer's, else one silent for a second:
    see :class:`~fedpeer.peer.OpenConnections`), so trickling connections
    cannot use up the node's file descriptors (``max_open_conns`` is also held
    to three quarters of the process's descriptor limit: 768 under a soft
    ``ulimit -n`` of 1024; ``fedpeer run`` raises that limit to the hard one).
    A global IPv6 address counts by its /64 for all three.

    ``pull_max_page_bytes`` and ``pull_page_deadline_s`` bound what this node's
    pullers accept from a peer: the bytes of one page answer (PAGE_TOO_LARGE)
    and the seconds one page request may take, longpoll hold aside
    (PEER_TOO_SLOW).
    ``watch_network=True`` polls this machine's interfaces every second and, when
    one comes up or gains an address, retries every failing pair at once
    (``fedpeer run`` turns it on; :mod:`fedpeer.peer._netwatch`). Whatever this
    setting, a failing pair is also retried at once when its peer is seen again:
    a verified mDNS announcement, a request from the peer, a manifest fetched.

    ``write_quota_records`` and ``write_quota_bytes`` bound what each service
    account may write over its life (each redemption of an invite makes one):
    records (every one it sends, those the node already had included) and
    their bytes (``data`` plus ``sig``). A write that would pass either is
    QUOTA_EXCEEDED and stores nothing; ``fedpeer token list`` shows what each
    account wrote. None: no bound. The owner's accounts (admins, and accounts
    bound to this node's own DID) are counted, not bounded; the node's own
    appends and anonymous writes (auth off) are not counted. What a pair set
    up by a redeem may pull has its own bound (``SyncOptions.redeem_quota_*``).

    ``rotate_min_age_s``: a holder may rotate its own token (``POST
    /v1/tokens/{id}/rotate``) once the token is that old (an hour), or a quarter
    of its lifetime if that is less (RATE_LIMITED before): each rotation is a
    durable write, and an audit entry kept for good, not to be repeated at the
    request rate.

    ``min_free_disk_percent`` (0 to 50; 0: none): the share of the disk holding
    the data dir's store that records never eat into (as Syncthing keeps 1 %
    free): a write of records (an append, an import, a pulled page) that would
    leave less free is STORE_FULL (507) and stores nothing; pairs retry with
    backoff and writes resume once space is back. Another program filling the
    disk, or many holders each within their quota, leave the machine usable.
    """

    handle: str = "fedpeer"
    auth_enabled: bool = True
    write_admin_token_file: bool = True
    max_body_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    page_limit_default: int = attrs.field(default=1000, validator=_positive)
    page_limit_max: int = attrs.field(default=10_000, validator=_positive)
    page_max_bytes: int = attrs.field(default=PAGE_MAX_BYTES, validator=_positive)
    longpoll_max_s: float = attrs.field(default=30.0, validator=_positive)
    heartbeat_s: float = attrs.field(default=MAX_HEARTBEAT_S, validator=_heartbeat)
    batch_fetch_max: int = attrs.field(default=1000, validator=_positive)
    rate_per_s: float = attrs.field(default=50.0, validator=_positive)
    rate_burst: int = attrs.field(default=200, validator=_positive)
    manifest_ttl_s: int = attrs.field(default=7 * 24 * 3600, validator=_positive)
    manifest_resign_after_s: int = attrs.field(default=24 * 3600, validator=_positive)
    graceful_timeout_s: float = attrs.field(default=2.0, validator=_positive)
    header_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    body_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    max_conns_per_ip: int = attrs.field(default=64, validator=_positive)
    max_open_conns_per_ip: int = attrs.field(default=256, validator=_positive)
    max_open_conns: int = attrs.field(default=4096, validator=_positive)
    pull_max_page_bytes: int = attrs.field(
        default=PAGE_MAX_BYTES + 4 * 1024 * 1024, validator=_positive
    )
    pull_page_deadline_s: float = attrs.field(default=60.0, validator=_positive)
    advertised_namespaces: tuple[str, ...] = ()
    discovery: bool = False
    interfaces: tuple[str, ...] = ()
    tls: bool | None = None
    insecure_http: bool = False
    watch_network: bool = False
    write_quota_records: int | None = attrs.field(default=1_000_000, validator=_positive_or_none)
    write_quota_bytes: int | None = attrs.field(default=1 << 30, validator=_positive_or_none)
    rotate_min_age_s: float = attrs.field(default=3600.0, validator=_seconds)
    min_free_disk_percent: float = attrs.field(default=1.0, validator=_percent_floor)
