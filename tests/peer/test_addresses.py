"""URL and address helpers of fedpeer.peer.addresses (pure, no network but a UDP
connect that sends no packet)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedpeer.errors import InvalidRequest
from fedpeer.peer.addresses import (
    address_group,
    address_share,
    is_loopback_host,
    is_wildcard,
    loopback_url,
    reachable_url,
)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),  # as a URL's netloc spells it
        ("10.0.0.1", False),
        ("[fe80::1]", False),
        ("0.0.0.0", False),
        ("example.org", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_wildcards_become_loopback_for_a_local_client() -> None:
    assert is_wildcard("0.0.0.0")
    assert is_wildcard("::")
    assert not is_wildcard("127.0.0.1")
    assert loopback_url("http://0.0.0.0:8080/") == "http://127.0.0.1:8080"
    assert loopback_url("http://[::]:8080") == "http://[::1]:8080"
    assert loopback_url("https://10.0.0.2:1/") == "https://10.0.0.2:1"


def test_a_loopback_only_node_cannot_give_a_lan_peer_its_url() -> None:
    assert reachable_url(["http://127.0.0.1:5"], "http://[::1]:6") == "http://127.0.0.1:5"
    with pytest.raises(InvalidRequest) as caught:
        reachable_url(["http://127.0.0.1:5"], "http://192.0.2.7:6")
    assert "--host 0.0.0.0" in caught.value.message


# --- address_group: what per-address limits count by ---


@pytest.mark.parametrize(
    ("host", "group"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::5]", "2001:db8:1:2::/64"),  # bracketed as in a netloc
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),  # the next /64 is another caller
        ("::ffff:192.0.2.7", "192.0.2.7"),  # dual-stack socket: the IPv4 caller
        ("fe80::1%eth0", "fe80::1"),  # link-local: a LAN address, by itself; no zone
        ("fe80::2", "fe80::2"),
        ("fd12:3456:789a:1::5", "fd12:3456:789a:1::5"),  # unique local: also the LAN
        ("::1", "::/64"),
        ("unknown", "unknown"),  # not an address: itself
        ("", ""),
    ],
)
def test_address_group(host: str, group: str) -> None:
    assert address_group(host) == group


@pytest.mark.parametrize(
    ("host", "share"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2::1", "2001:db8:1::/48"),  # a site's /64s weigh together
        ("2001:db8:1:ffff::1", "2001:db8:1::/48"),
        ("2001:db8:2::1", "2001:db8:2::/48"),  # another site
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::1"),  # LAN addresses: by themselves, as for the caps
        ("fd12:3456:789a:1::5", "fd12:3456:789a:1::5"),
        ("unknown", "unknown"),
    ],
)
def test_address_share(host: str, share: str) -> None:
    """What eviction at the total connection cap weighs a caller by."""
    assert address_share(host) == share


def _by_64(addr: ipaddress.IPv6Address) -> bool:
    """Whether ``addr`` is grouped by its /64 (not mapped IPv4, not a LAN address)."""
    return not (
        addr.ipv4_mapped is not None
        or addr.is_link_local
        or addr in ipaddress.IPv6Network("fc00::/7")
    )


@given(st.ip_addresses(v=6), st.integers(0, 2**64 - 1))
def test_every_address_of_a_64_is_one_group(addr: ipaddress.IPv6Address, low: int) -> None:
    if not _by_64(addr):
        return  # counted by itself or as IPv4 (the table above)
    sibling = ipaddress.IPv6Address((int(addr) >> 64 << 64) | low)
    if _by_64(sibling):
        assert address_group(str(addr)) == address_group(str(sibling))
    other = ipaddress.IPv6Address(int(addr) ^ (1 << 64))  # flip the /64's last bit
    if _by_64(other):
        assert address_group(str(other)) != address_group(str(addr))


@given(st.ip_addresses(v=6))
def test_lan_ipv6_addresses_are_their_own_group(addr: ipaddress.IPv6Address) -> None:
    if _by_64(addr) or addr.ipv4_mapped is not None:
        return
    assert address_group(str(addr)) == str(addr)


@given(st.ip_addresses(v=4))
def test_ipv4_addresses_are_their_own_group(addr: ipaddress.IPv4Address) -> None:
    assert address_group(str(addr)) == str(addr)
    assert address_group(f"::ffff:{addr}") == str(addr)
