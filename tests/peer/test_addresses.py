"""URL and address helpers of fedpeer.peer.addresses (pure, no network but a UDP
connect that sends no packet)."""

from __future__ import annotations

import pytest

from fedpeer.errors import InvalidRequest
from fedpeer.peer.addresses import is_loopback_host, is_wildcard, loopback_url, reachable_url


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
