"""Node configuration: one frozen value, validated on construction."""

from __future__ import annotations

from typing import Any

import attrs

from ..errors import ConfigInvalid


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigInvalid(f"{attr.name} must be > 0, got {value!r}")


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
    """

    handle: str = "fedpeer"
    auth_enabled: bool = True
    write_admin_token_file: bool = True
    max_body_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    page_limit_default: int = attrs.field(default=1000, validator=_positive)
    page_limit_max: int = attrs.field(default=10_000, validator=_positive)
    longpoll_max_s: float = attrs.field(default=30.0, validator=_positive)
    heartbeat_s: float = attrs.field(default=15.0, validator=_positive)
    batch_fetch_max: int = attrs.field(default=1000, validator=_positive)
    rate_per_s: float = attrs.field(default=50.0, validator=_positive)
    rate_burst: int = attrs.field(default=200, validator=_positive)
    manifest_ttl_s: int = attrs.field(default=7 * 24 * 3600, validator=_positive)
    manifest_resign_after_s: int = attrs.field(default=24 * 3600, validator=_positive)
    graceful_timeout_s: float = attrs.field(default=2.0, validator=_positive)
    advertised_namespaces: tuple[str, ...] = ()
    discovery: bool = False
    interfaces: tuple[str, ...] = ()
    tls: bool | None = None
    insecure_http: bool = False
