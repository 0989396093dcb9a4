"""URL and address helpers: wildcard and loopback addresses, this node's URL as a peer
can reach it. Shared by the node, pairing and the CLI; no network I/O but a UDP
``connect`` (no packet sent) in :func:`source_address`."""

from __future__ import annotations

import functools
import ipaddress
import socket
import urllib.parse
from collections.abc import Sequence

from ..errors import InvalidRequest


def is_wildcard(host: str) -> bool:
    """True for an address that means "every interface" (0.0.0.0, ::)."""
    return host in ("0.0.0.0", "::", "")  # noqa: S104 (compared, not bound)


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (an IPv6 one bracketed or not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=4096)
def address_group(host: str) -> str:
    """The key per-address limits count ``host`` under (protocol.md §6.3, §6.5).

    An IPv4 address is its own group. A global IPv6 address counts as its /64
    (``"2001:db8:1:2::/64"``): one host or site is routinely handed a whole /64
    and can send from any of its 2**64 addresses, so a cap per IPv6 address
    would cap nothing. Link-local (``fe80::/10``) and unique local
    (``fc00::/7``) addresses are LAN addresses, shared by every device on the
    link or site, so each counts by itself, like an IPv4 address on a LAN (a
    LAN host using many of them is still bounded by the node's caps in all). An
    IPv4 address mapped into IPv6 (``::ffff:192.0.2.7``, what a dual-stack
    socket reports) is the IPv4 address; a zone index (``fe80::1%eth0``) is
    dropped. Anything else (a Unix socket peer, an ASGI server's placeholder)
    is itself. Cached: every request asks twice (in-flight cap, rate limit).
    """
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv4Address):
        return str(addr)
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    if addr.is_link_local or addr in _UNIQUE_LOCAL:
        return str(ipaddress.IPv6Address(int(addr)))  # without the zone index
    return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))


_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")


@functools.lru_cache(maxsize=4096)
def address_share(host: str) -> str:
    """What the open-connection eviction weighs ``host`` under (protocol.md §6.3):
    its :func:`address_group`, except that a global IPv6 address counts as its /48
    (``"2001:db8:1::/48"``), a site's usual allocation, so a flood from one
    site's many /64s is one share, however many groups it spreads over."""
    group = address_group(host)
    if not group.endswith("/64"):
        return group
    return str(ipaddress.IPv6Network(group).supernet(new_prefix=48))


def with_host(url: str, host: str) -> str:
    """``url`` with its host replaced by ``host`` (IPv6 bracketed)."""
    parts = urllib.parse.urlsplit(url)
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")


def loopback_url(url: str) -> str:
    """``url`` with a wildcard host replaced by loopback, for a client on this machine."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in ("0.0.0.0", ""):  # noqa: S104 (compared, not bound)
        return with_host(url, "127.0.0.1")
    if host == "::":
        return with_host(url, "::1")
    return url.rstrip("/")


def source_address(toward_url: str) -> str | None:
    """The local address this machine would use to reach ``toward_url``, or None.

    Uses a UDP ``connect`` (no packet is sent). Blocking only on name resolution.
    """
    parts = urllib.parse.urlsplit(toward_url)
    host = parts.hostname
    if not host:
        return None
    try:
        infos = socket.getaddrinfo(host, parts.port or 80, type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            return str(sock.getsockname()[0])
    except (OSError, IndexError):
        return None


def reachable_url(own_urls: Sequence[str], toward_url: str) -> str:
    """This node's URL as the node at ``toward_url`` can reach it.

    Raises InvalidRequest when this node listens on loopback only and the other
    node is elsewhere, or when no local address toward it can be found.
    """
    if not own_urls:
        raise InvalidRequest("this node reports no URL")
    mine = own_urls[0]
    host = urllib.parse.urlsplit(mine).hostname or ""
    peer_host = urllib.parse.urlsplit(toward_url).hostname or ""
    if is_loopback_host(host):
        if is_loopback_host(peer_host):
            return mine.rstrip("/")
        raise InvalidRequest(
            f"this node listens on {host} only, so {peer_host} cannot pull from it: "
            "run it with `--host 0.0.0.0` for two-way sync, or pair one way"
        )
    if not is_wildcard(host):
        return mine.rstrip("/")
    if is_loopback_host(peer_host):
        return loopback_url(mine)
    source = source_address(toward_url)
    if not source or is_loopback_host(source):
        raise InvalidRequest(
            f"cannot tell which address of this node {peer_host} can reach; "
            "pair one way, or bind the node to its LAN address"
        )
    return with_host(mine, source)
