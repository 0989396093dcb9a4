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

    ``watch_network=True`` polls this machine's interfaces every second and, when
    one comes up or gains an address, retries every failing pair at once
    (``fedpeer run`` turns it on; :mod:`fedpeer.peer._netwatch`). Whatever this
    setting, a failing pair is also retried at once when its peer is seen again:
    a verified mDNS announcement, a request from the peer, a manifest fetched.
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
    watch_network: bool = False
