"""mDNS discovery: signed TXT announcements, the roster, manifest checks, and real
zeroconf between network namespaces.

The first part is pure (no network). The HTTP parts use real nodes on
127.0.0.1. The ``e2e`` part runs real nodes with real zeroconf, each as a
subprocess inside its own network namespace (multicast does not work on plain
loopback, and namespaces are per process), and waits on the JSON lines they
print (``tests/peer/discovery_node.py``); it is skipped, with the reason, when
not root or without ``ip``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO

import anyio
import attrs
import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from zeroconf import ServiceStateChange

from fedpeer._aio import threadsafe_soon
from fedpeer.errors import (
    BadSignature,
    ConfigInvalid,
    DidInvalid,
    DidMismatch,
    DiscoveryUnavailable,
    FedpeerError,
    Malformed,
    SignatureExpired,
)
from fedpeer.identity.canonical import b64url_decode, b64url_encode, jcs
from fedpeer.identity.keys import SigningKey, verify_signature
from fedpeer.peer import Node, NodeConfig, open_node
from fedpeer.peer._mdns_roster import CheckResult, Roster, RosterEntry, prefer_addresses, url_for
from fedpeer.peer.discovery import (
    DOMAIN_PREFIX,
    SERVICE_TYPE,
    Discovery,
    _Adapter,
    _forwarder,
    _make_plan,
    decode_txt,
    instance_label,
    sign_txt,
    signing_input,
    verify_peer,
    verify_txt,
)
from tests import netns
from tests.conftest import BOTH_BACKENDS

NOW = 1_800_000_000.0
SEED_A = bytes(range(32))
SEED_B = bytes(range(1, 33))
KEY_A = SigningKey.from_seed(SEED_A)
KEY_B = SigningKey.from_seed(SEED_B)


def txt_for(key: SigningKey = KEY_A, **kw: object) -> dict[str, str]:
    args: dict[str, object] = {
        "handle": "alice",
        "port": 8750,
        "namespaces": ("notes", "photos/2024"),
        "capabilities": ("sync", "invites"),
        "seq": 7,
        "now": NOW,
    }
    args.update(kw)
    return sign_txt(key, **args)  # type: ignore[arg-type]


def resign(txt: dict[str, str], key: SigningKey = KEY_A) -> dict[str, str]:
    out = {k: v for k, v in txt.items() if k != "sig"}
    out["sig"] = b64url_encode(key.sign(signing_input(out)))
    return out


# --- TXT signing: pure ------------------------------------------------------------------


def test_sign_and_verify_round_trip() -> None:
    txt = txt_for()
    assert set(txt) == {"v", "did", "handle", "ns", "caps", "port", "seq", "exp", "sig"}
    assert txt["did"] == KEY_A.did
    assert txt["exp"] == str(int(NOW) + 3600)
    ann = verify_txt(txt, now=NOW, expected_did=KEY_A.did)
    assert ann.did == KEY_A.did
    assert ann.handle == "alice"
    assert ann.port == 8750
    assert ann.namespaces == ("notes", "photos/2024")
    assert ann.capabilities == ("sync", "invites")
    assert ann.seq == 7
    assert ann.expires_at == int(NOW) + 3600
    assert ann.extra == ()


def test_signed_bytes_are_domain_separated_jcs_without_sig() -> None:
    txt = txt_for()
    body = {k: v for k, v in txt.items() if k != "sig"}
    assert signing_input(txt) == DOMAIN_PREFIX + jcs(body)
    assert DOMAIN_PREFIX == b"fedpeer-mdns-v1\x00"
    sig = b64url_decode(txt["sig"])
    verify_signature(KEY_A.public_key, DOMAIN_PREFIX + jcs(body), sig)
    with pytest.raises(BadSignature):  # the bare JCS (a document signature) does not verify
        verify_signature(KEY_A.public_key, jcs(body), sig)


def test_key_order_does_not_matter() -> None:
    txt = txt_for()
    shuffled = dict(reversed(list(txt.items())))
    assert verify_txt(shuffled, now=NOW) == verify_txt(txt, now=NOW)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("v", "2", Malformed),
        ("did", KEY_B.did, BadSignature),
        ("handle", "mallory", BadSignature),
        ("ns", "notes", BadSignature),
        ("caps", "sync", BadSignature),
        ("port", "8751", BadSignature),
        ("seq", "8", BadSignature),
        ("exp", str(int(NOW) + 7200), BadSignature),
    ],
)
def test_tampering_any_field_is_refused(field: str, value: str, error: type[FedpeerError]) -> None:
    txt = txt_for()
    assert txt[field] != value
    txt[field] = value
    with pytest.raises(error):
        verify_txt(txt, now=NOW)


def test_tampered_signature_and_added_keys_are_refused() -> None:
    txt = txt_for()
    sig = bytearray(b64url_decode(txt["sig"]))
    sig[10] ^= 1
    with pytest.raises(BadSignature):
        verify_txt(dict(txt, sig=b64url_encode(bytes(sig))), now=NOW)
    with pytest.raises(Malformed):
        verify_txt(dict(txt, sig=txt["sig"][:40]), now=NOW)
    with pytest.raises(Malformed):
        verify_txt(dict(txt, sig=txt["sig"] + "="), now=NOW)
    with pytest.raises(BadSignature):  # an unsigned extra key
        verify_txt(dict(txt, url="http://evil.example"), now=NOW)
    signed_extra = resign(dict(txt, zz="abc"))
    assert verify_txt(signed_extra, now=NOW).extra == (("zz", "abc"),)
    # ``tls`` is known (§6.6): a signed pin must have the pin's shape
    with pytest.raises(Malformed, match="tls"):
        verify_txt(resign(dict(txt, tls="abc")), now=NOW)
    pinned = verify_txt(resign(dict(txt, tls="P" * 43)), now=NOW)
    assert pinned.tls_pin == "P" * 43


@pytest.mark.parametrize(
    "missing", ["v", "did", "handle", "ns", "caps", "port", "seq", "exp", "sig"]
)
def test_missing_key_is_malformed(missing: str) -> None:
    txt = txt_for()
    del txt[missing]
    with pytest.raises(Malformed, match=missing):
        verify_txt(txt, now=NOW)


def test_expiry_with_skew() -> None:
    txt = txt_for(ttl_s=60)
    exp = int(NOW) + 60
    assert verify_txt(txt, now=exp + 299).expires_at == exp
    with pytest.raises(SignatureExpired):
        verify_txt(txt, now=exp + 301)
    with pytest.raises(SignatureExpired):
        verify_txt(txt, now=exp + 10, max_skew_s=5)


def test_expiry_too_far_ahead_is_refused() -> None:
    txt = txt_for(expires_at=int(NOW) + 30 * 24 * 3600)
    with pytest.raises(Malformed, match="validity"):
        verify_txt(txt, now=NOW)
    assert verify_txt(txt, now=NOW, max_ttl_s=31 * 24 * 3600).seq == 7


def test_wrong_or_invalid_did() -> None:
    txt = txt_for()
    with pytest.raises(DidMismatch):
        verify_txt(txt, now=NOW, expected_did=KEY_B.did)
    for did in ("did:web:example.com", "did:key:zNotBase58!", ""):
        with pytest.raises(DidInvalid):
            verify_txt(dict(txt, did=did), now=NOW)
    # Signed by B but claiming A's DID: the signature cannot match A's key.
    forged = resign(dict(txt_for(KEY_B), did=KEY_A.did), KEY_B)
    with pytest.raises(BadSignature):
        verify_txt(forged, now=NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [("seq", "07"), ("seq", "-1"), ("seq", "1e3"), ("port", "0"), ("port", "70000"), ("exp", "")],
)
def test_numbers_must_be_canonical_even_when_signed(field: str, value: str) -> None:
    txt = resign(dict(txt_for(), **{field: value}))
    with pytest.raises(Malformed):
        verify_txt(txt, now=NOW)


def test_bad_list_items_and_handles_are_refused_even_when_signed() -> None:
    for field, value in [("ns", "a,,b"), ("ns", "/abs"), ("caps", "a b"), ("handle", "")]:
        with pytest.raises(Malformed):
            verify_txt(resign(dict(txt_for(), **{field: value})), now=NOW)
    with pytest.raises(Malformed):
        verify_txt(resign(dict(txt_for(), handle="bell\x07")), now=NOW)


def test_sign_txt_refuses_what_cannot_be_announced() -> None:
    with pytest.raises(ConfigInvalid):
        txt_for(handle="")
    with pytest.raises(ConfigInvalid):
        txt_for(port=0)
    with pytest.raises(ConfigInvalid):
        txt_for(namespaces=("a,b",))
    with pytest.raises(ConfigInvalid):
        txt_for(capabilities=("has space",))
    with pytest.raises(ConfigInvalid, match="255"):
        txt_for(namespaces=tuple(f"namespace-{i:03}" for i in range(30)))
    with pytest.raises(ConfigInvalid):
        txt_for(seq=-1)


def test_decode_txt() -> None:
    assert decode_txt({b"did": b"x", b"handle": "é".encode()}) == {"did": "x", "handle": "é"}
    with pytest.raises(Malformed, match="twice"):
        decode_txt({b"did": b"x", b"DID": b"y"})
    with pytest.raises(Malformed, match="no value"):
        decode_txt({b"did": None})
    with pytest.raises(Malformed, match="UTF-8"):
        decode_txt({b"handle": b"\xff\xfe"})
    with pytest.raises(Malformed):
        decode_txt({b"a=b": b"x"})
    with pytest.raises(Malformed):
        decode_txt({"ключ": "x"})


_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@+\-]{0,15}", fullmatch=True)


@settings(max_examples=40, deadline=None)
@given(
    handle=st.text(
        st.characters(blacklist_categories=("Cc", "Cs", "Co", "Cn", "Cf", "Zl", "Zp")),
        min_size=1,
        max_size=40,
    ),
    port=st.integers(1, 65535),
    seq=st.integers(0, 2**53 - 1),
    namespaces=st.lists(_names, max_size=4),
    caps=st.lists(_names, max_size=3),
    flip=st.integers(0, 63),
)
def test_round_trip_and_any_flipped_signature_byte(
    handle: str, port: int, seq: int, namespaces: list[str], caps: list[str], flip: int
) -> None:
    txt = txt_for(handle=handle, port=port, seq=seq, namespaces=namespaces, capabilities=caps)
    ann = verify_txt(decode_txt({k.encode(): v.encode() for k, v in txt.items()}), now=NOW)
    assert (ann.handle, ann.port, ann.seq) == (handle, port, seq)
    assert ann.namespaces == tuple(namespaces)
    assert ann.capabilities == tuple(caps)
    sig = bytearray(b64url_decode(txt["sig"]))
    sig[flip] ^= 0x01
    with pytest.raises(BadSignature):
        verify_txt(dict(txt, sig=b64url_encode(bytes(sig))), now=NOW)


# --- the roster: pure -------------------------------------------------------------------


def props(txt: dict[str, str]) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in txt.items()}


NAME_A = "alice-xyz._fedpeer._tcp.local."


def test_roster_lifecycle_unverified_verified_removed() -> None:
    roster = Roster(own_did=KEY_B.did)
    entry, needs = roster.observe(NAME_A, props(txt_for()), ["10.0.0.5"], 8750, now=NOW)
    assert needs
    assert entry is not None
    assert entry.status == "unverified"
    assert not entry.offerable
    assert entry.url == "http://10.0.0.5:8750"
    assert entry.first_seen == entry.last_seen == NOW
    v1 = roster.version
    done = roster.apply_check(
        NAME_A, entry.generation, CheckResult("verified", "", "http://10.0.0.5:8750"), now=NOW + 1
    )
    assert done is not None
    assert done.status == "verified"
    assert done.offerable
    assert roster.version > v1
    assert roster.verified(KEY_A.did) == done
    # A re-signed announcement (new seq, same endpoint) keeps the verdict, no new check.
    again, needs = roster.observe(NAME_A, props(txt_for(seq=8)), ["10.0.0.5"], 8750, now=NOW + 2)
    assert not needs
    assert again is not None
    assert again.status == "verified"
    assert again.seq == 8
    assert again.first_seen == NOW
    # Removal (goodbye or TTL expiry).
    v2 = roster.version
    assert roster.remove(NAME_A.upper()) is not None
    assert roster.get(NAME_A) is None
    assert roster.version > v2
    assert len(roster) == 0
    assert roster.remove(NAME_A) is None


def test_a_flood_of_announcements_keeps_the_roster_bounded_and_the_verified_peer() -> None:
    """A host on the LAN announcing under endless fresh keys (each TXT validly signed)
    cannot grow the roster or its replay table past their caps; the verified peer
    stays, the flood replaces itself."""
    roster = Roster(max_entries=20, max_dids=40)
    entry, _ = roster.observe(NAME_A, props(txt_for()), ["10.0.0.5"], 8750, now=NOW)
    assert entry is not None
    roster.apply_check(
        NAME_A, entry.generation, CheckResult("verified", "", "http://10.0.0.5:8750"), now=NOW
    )
    for i in range(300):
        key = SigningKey.from_seed(i.to_bytes(4, "big") * 8)
        roster.observe(f"flood-{i}._fedpeer._tcp.local.", props(txt_for(key)), ["10.0.0.9"],
                       8750, now=NOW + 1 + i)  # fmt: skip
        assert len(roster) <= 20
        assert len(roster._max_seq) <= 40
    kept = roster.verified(KEY_A.did)
    assert kept is not None
    assert kept.name == NAME_A
    # the newest flood entries are the ones kept beside it
    assert roster.get("flood-299._fedpeer._tcp.local.") is not None
    assert roster.get("flood-0._fedpeer._tcp.local.") is None


def test_roster_endpoint_change_needs_a_new_check_and_drops_stale_results() -> None:
    roster = Roster()
    first, _ = roster.observe(NAME_A, props(txt_for()), ["10.0.0.5"], 8750, now=NOW)
    assert first is not None
    roster.apply_check(NAME_A, first.generation, CheckResult("verified", url="u"), now=NOW)
    moved, needs = roster.observe(NAME_A, props(txt_for(seq=8)), ["10.0.0.6"], 8750, now=NOW + 1)
    assert needs
    assert moved is not None
    assert moved.status == "unverified"
    assert moved.generation != first.generation
    # A result for the old address arrives late: dropped.
    assert roster.apply_check(NAME_A, first.generation, CheckResult("verified"), now=NOW) is None
    assert roster.get(NAME_A) == moved


def test_roster_ignores_older_seq_and_flags_replays_under_other_names() -> None:
    roster = Roster()
    roster.observe(NAME_A, props(txt_for(seq=10)), ["10.0.0.5"], 8750, now=NOW)
    kept, needs = roster.observe(NAME_A, props(txt_for(seq=9)), ["10.0.0.9"], 8750, now=NOW)
    assert kept is not None
    assert not needs
    assert kept.seq == 10
    assert kept.addresses == ("10.0.0.5",)
    replay, needs = roster.observe(
        "mallory._fedpeer._tcp.local.", props(txt_for(seq=9)), ["10.0.0.66"], 8750, now=NOW
    )
    assert replay is not None
    assert not needs
    assert replay.status == "invalid"
    assert replay.reason.startswith("STALE_ANNOUNCEMENT")


def test_roster_impostors_get_their_own_invalid_entries() -> None:
    roster = Roster()
    real, _ = roster.observe(NAME_A, props(txt_for()), ["10.0.0.5"], 8750, now=NOW)
    assert real is not None
    roster.apply_check(NAME_A, real.generation, CheckResult("verified", url="u"), now=NOW)
    forged = resign(dict(txt_for(KEY_B), did=KEY_A.did), KEY_B)
    bad, needs = roster.observe("mallory._fedpeer._tcp.local.", props(forged), ["10.0.0.66"],
                                8750, now=NOW)  # fmt: skip
    assert bad is not None
    assert not needs
    assert bad.status == "invalid"
    assert bad.reason.startswith("BAD_SIGNATURE")
    assert bad.did == KEY_A.did
    assert not bad.offerable
    assert {e.status for e in roster.by_did(KEY_A.did)} == {"verified", "invalid"}
    verified = roster.verified(KEY_A.did)
    assert verified is not None
    assert verified.name == NAME_A
    # Same bad announcement again: no churn.
    v = roster.version
    roster.observe("mallory._fedpeer._tcp.local.", props(forged), ["10.0.0.66"], 8750, now=NOW)
    assert roster.version == v


def test_roster_port_mismatch_own_entries_and_unusable_addresses() -> None:
    roster = Roster(own_did=KEY_A.did, own_names={"me._fedpeer._tcp.local."})
    assert roster.observe("ME._fedpeer._tcp.local.", props(txt_for(KEY_B)), ["10.0.0.1"], 8750,
                          now=NOW) == (None, False)  # fmt: skip
    assert roster.observe(NAME_A, props(txt_for()), ["10.0.0.1"], 8750, now=NOW) == (None, False)
    assert len(roster) == 0
    name_b = "bob._fedpeer._tcp.local."
    bad, _ = roster.observe(name_b, props(txt_for(KEY_B)), ["10.0.0.2"], 9999, now=NOW)
    assert bad is not None
    assert bad.status == "invalid"
    assert "PORT_MISMATCH" in bad.reason
    lonely, needs = roster.observe(
        name_b, props(txt_for(KEY_B, seq=8)), ["127.0.0.1", "fe80::1"], 8750, now=NOW
    )
    assert lonely is not None
    assert not needs
    assert lonely.status == "unverified"
    assert lonely.addresses == ()
    assert lonely.url is None


def test_roster_last_seen_alone_is_not_a_change() -> None:
    roster = Roster()
    first, _ = roster.observe(NAME_A, props(txt_for()), ["10.0.0.5"], 8750, now=NOW)
    assert first is not None
    v = roster.version
    entry, needs = roster.observe(NAME_A, props(txt_for()), ["10.0.0.5"], 8750, now=NOW + 5)
    assert entry is not None
    assert entry.last_seen == NOW + 5
    assert roster.version == v
    # Still waiting for its first check: the same generation (a check in flight applies).
    assert needs
    assert entry.generation == first.generation
    assert roster.clear() == 1
    assert len(roster) == 0
    assert roster.version == v + 1


def test_roster_expiry_and_due_checks() -> None:
    roster = Roster()
    entry, _ = roster.observe(NAME_A, props(txt_for(ttl_s=600)), ["10.0.0.5"], 8750, now=NOW)
    assert entry is not None
    assert roster.due_for_check(NOW, retry_s=10, reverify_s=100) == (entry,)
    roster.apply_check(NAME_A, entry.generation, CheckResult("unverified", "unreachable"), now=NOW)
    assert roster.due_for_check(NOW + 5, retry_s=10, reverify_s=100) == ()
    assert len(roster.due_for_check(NOW + 10, retry_s=10, reverify_s=100)) == 1
    entry = roster.get(NAME_A)
    assert entry is not None
    roster.apply_check(NAME_A, entry.generation, CheckResult("verified", url="u"), now=NOW + 10)
    assert roster.due_for_check(NOW + 50, retry_s=10, reverify_s=100) == ()
    assert len(roster.due_for_check(NOW + 110, retry_s=10, reverify_s=100)) == 1
    late = NOW + 600 + 301
    assert roster.mark_expired(NOW + 600) == ()
    (stale,) = roster.mark_expired(late)
    assert stale.status == "unverified"
    assert "expired" in stale.reason
    assert roster.due_for_check(late, retry_s=10, reverify_s=100) == ()  # waits for a fresh one
    assert roster.mark_expired(late + 1) == ()  # no churn


def test_prefer_addresses_and_urls() -> None:
    got = prefer_addresses(
        [
            "fe80::1",
            "fe80::2%3",
            "2001:db8::5",
            "169.254.1.1",
            "127.0.0.1",
            "::1",
            "10.0.0.5",
            "10.0.0.5",
            "::ffff:10.0.0.7",
            "garbage",
            "0.0.0.0",
            "224.0.0.251",
        ]
    )
    assert got == ("10.0.0.5", "169.254.1.1", "2001:db8::5", "fe80::2%3")
    assert url_for("10.0.0.5", 80) == "http://10.0.0.5:80"
    assert url_for("2001:db8::5", 80) == "http://[2001:db8::5]:80"
    assert url_for("fe80::2%3", 80) == "http://[fe80::2%253]:80"


def test_instance_labels_are_unique_and_fit_a_dns_label() -> None:
    assert instance_label("alice", KEY_A.did) == f"alice-{KEY_A.did[-8:]}"
    assert instance_label("alice", KEY_A.did, 2) == f"alice-{KEY_A.did[-8:]} (2)"
    assert instance_label("alice", KEY_A.did) != instance_label("alice", KEY_B.did)
    long = instance_label("é" * 100, KEY_A.did, 5)
    assert len(long.encode()) <= 63
    assert long.endswith(f"-{KEY_A.did[-8:]} (5)")
    assert "." not in instance_label("a.b.c", KEY_A.did)


def _adapter(name: str, v4: tuple[str, ...] = (), v6: tuple[tuple[str, int], ...] = (),
             index: int = 2) -> _Adapter:  # fmt: skip
    return _Adapter(name, index, v4, v6)


ADAPTERS = [
    _adapter("lo", ("127.0.0.1",), (("::1", 0),), 1),
    _adapter("eth0", ("10.1.0.2",), (("fe80::2", 2), ("2001:db8::2", 0)), 2),
    _adapter("wlan0", ("192.168.1.9",), (), 3),
]


def test_plan_addresses_and_interfaces() -> None:
    plan = _make_plan(ADAPTERS, (), "0.0.0.0")
    assert plan.advertise == ("10.1.0.2", "192.168.1.9")
    assert plan.listen == frozenset({"eth0/10.1.0.2", "wlan0/192.168.1.9"})
    assert plan.adapters == frozenset({"eth0", "wlan0"})
    plan = _make_plan(ADAPTERS, ("eth0",), "0.0.0.0")
    assert plan.advertise == ("10.1.0.2",)
    assert plan.zc_interfaces == ("10.1.0.2",)
    plan = _make_plan(ADAPTERS, ("eth0",), "::")
    assert plan.listen == frozenset({"eth0/10.1.0.2", "eth0/if2"})
    assert plan.advertise == ("10.1.0.2", "2001:db8::2")
    assert plan.zc_interfaces == ("10.1.0.2", 2)
    plan = _make_plan(ADAPTERS, (), "192.168.1.9")
    assert plan.advertise == ("192.168.1.9",)
    plan = _make_plan(ADAPTERS, (), "127.0.0.1")
    assert plan.advertise == ()
    assert "--host 0.0.0.0" in plan.note
    with pytest.raises(DiscoveryUnavailable, match="eth9"):
        _make_plan(ADAPTERS, ("eth9",), "0.0.0.0")
    with pytest.raises(DiscoveryUnavailable, match="no usable address"):
        _make_plan([*ADAPTERS, _adapter("tun0")], ("tun0",), "0.0.0.0")


# --- the zeroconf -> event loop hand-off (trio and asyncio) -------------------------------


@pytest.mark.parametrize("anyio_backend", BOTH_BACKENDS)
async def test_browser_handler_hands_events_to_the_loop_without_blocking() -> None:
    send, recv = anyio.create_memory_object_stream[tuple[str, str]](1)
    handler = _forwarder(threadsafe_soon(), send)

    def zeroconf_thread() -> None:  # what ServiceBrowser does: keyword arguments, its thread
        for change in (ServiceStateChange.Added, ServiceStateChange.Removed):
            handler(zeroconf=None, service_type=SERVICE_TYPE, name="n", state_change=change)
        handler(zeroconf=None, service_type="_other._tcp.local.", name="o",
                state_change=ServiceStateChange.Added)  # fmt: skip

    await anyio.to_thread.run_sync(zeroconf_thread)  # returns although the buffer holds 1
    with anyio.fail_after(5):
        assert await recv.receive() == ("n", "added")
    await anyio.wait_all_tasks_blocked()
    with pytest.raises(anyio.WouldBlock):  # the second event was dropped, not blocking anyone
        recv.receive_nowait()


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
def test_browser_handler_after_the_loop_finished_is_harmless(backend: str) -> None:
    box: list[Callable[..., None]] = []

    async def main() -> None:
        send, _recv = anyio.create_memory_object_stream[tuple[str, str]](1)
        box.append(_forwarder(threadsafe_soon(), send))

    anyio.run(main, backend=backend)
    box[0](zeroconf=None, service_type=SERVICE_TYPE, name="n",
           state_change=ServiceStateChange.Added)  # fmt: skip


# --- manifest checks and the route, against real nodes on loopback -----------------------


def entry_for(did: str, port: int, address: str = "127.0.0.1") -> RosterEntry:
    return RosterEntry(name="x._fedpeer._tcp.local.", did=did, handle="x", addresses=(address,),
                       port=port)  # fmt: skip


def port_of(node: Node) -> int:
    return int(node.url.rsplit(":", 1)[1])


async def test_verify_peer_against_real_nodes(tmp_path: Path) -> None:
    async with open_node(None, key=KEY_A) as a:
        ok = await verify_peer(entry_for(KEY_A.did, port_of(a)), timeout_s=5)
        assert ok.status == "verified"
        assert ok.url == a.url
        # Someone announces A's DID but the address serves another node's manifest.
        bad = await verify_peer(entry_for(KEY_B.did, port_of(a)), timeout_s=5)
        assert bad.status == "invalid"
        assert bad.reason.startswith("DID_MISMATCH")
        # The first address is dead, the second proves the DID.
        two = attrs.evolve(entry_for(KEY_A.did, port_of(a)), addresses=("127.0.0.2", "127.0.0.1"))
        ok2 = await verify_peer(two, timeout_s=5)  # nothing listens on 127.0.0.2
        assert ok2.status == "verified"
        assert ok2.url == a.url
    closed = await verify_peer(entry_for(KEY_A.did, port_of(a)), timeout_s=5)
    assert closed.status == "unverified"
    assert closed.reason.startswith("unreachable")


async def test_verify_peer_times_out_on_a_silent_server() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:

        async def accept_and_hold() -> None:
            held = []
            for _ in range(4):  # bounded
                held.append(await listeners[0].accept())

        nursery.start_soon(accept_and_hold)
        t0 = trio.current_time()
        result = await verify_peer(entry_for(KEY_A.did, port), timeout_s=0.5)
        assert trio.current_time() - t0 < 3
        assert result.status == "unverified"
        assert "within 0.5 s" in result.reason
        nursery.cancel_scope.cancel()
    await listeners[0].aclose()


async def test_verify_peer_refuses_a_non_fedpeer_server() -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    async def app(
        scope: dict[str, object],
        receive: object,
        send: Callable[[dict[str, object]], Awaitable[None]],
    ) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b'{"hello": "world"}'})

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(functools.partial(serve, app, config))  # type: ignore[arg-type]
        port = int(urls[0].rsplit(":", 1)[1])
        result = await verify_peer(entry_for(KEY_A.did, port), timeout_s=5)
        assert result.status == "invalid"
        assert result.reason.startswith("PEER_INVALID")
        nursery.cancel_scope.cancel()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with open_node(tmp_path / "n", config=NodeConfig(handle="routes")) as n:
        yield n


async def test_route_requires_admin_and_reports_off(node: Node) -> None:
    assert node.discovery is None
    token = node.admin_token_path.read_text().strip()  # type: ignore[union-attr]
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        anon = await http.get("/v1/discovery/mdns")
        assert anon.status_code == 401
        assert anon.json()["error"]["code"] == "AUTH_REQUIRED"
        r = await http.get("/v1/discovery/mdns", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        body = r.json()
        assert body["enabled"] is False
        assert body["status"] == "off"
        assert body["peers"] == []
        assert body["did"] == node.did
        spec = await http.get("/v1/openapi.json")
        op = spec.json()["paths"]["/v1/discovery/mdns"]["get"]
        assert op["x-fedpeer-scope"] == "admin"


async def test_route_returns_the_roster(node: Node) -> None:
    disc = Discovery(key=node.key, port=port_of(node), handle="routes")
    entry, _ = disc.roster.observe(NAME_A, props(txt_for(now=time.time())), ["10.0.0.5"], 8750,
                                   now=time.time())  # fmt: skip
    assert entry is not None
    disc.roster.apply_check(NAME_A, entry.generation, CheckResult("verified", url="http://10.0.0.5:8750"),
                            now=time.time())  # fmt: skip
    node.state.discovery = disc
    token = node.admin_token_path.read_text().strip()  # type: ignore[union-attr]
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        r = await http.get("/v1/discovery/mdns", headers={"Authorization": f"Bearer {token}"})
    body = r.json()
    assert body["enabled"] is True
    assert body["status"] == "stopped"
    (peer,) = body["peers"]
    assert peer["did"] == KEY_A.did
    assert peer["status"] == "verified"
    assert peer["url"] == "http://10.0.0.5:8750"
    assert peer["namespaces"] == ["notes", "photos/2024"]
    assert peer["addresses"] == ["10.0.0.5"]
    assert isinstance(peer["first_seen_ms"], int)


async def test_discovery_failure_never_stops_the_node(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fedpeer.discovery")
    cfg = NodeConfig(handle="lonely", discovery=True, interfaces=("fp-no-such-if0",))
    t_closed = 0.0
    async with open_node(tmp_path / "n", config=cfg) as n:
        disc = n.discovery
        assert disc is not None
        assert n.state.discovery is disc
        seen = disc.version
        with trio.fail_after(10):
            while disc.status != "failed":  # bounded by fail_after
                seen = await disc.wait_changed(seen)
        assert disc.last_error is not None
        assert disc.last_error.startswith("DISCOVERY_UNAVAILABLE")
        assert "fp-no-such-if0" in disc.last_error
        assert any("mDNS discovery unavailable" in r.getMessage() for r in caplog.records)
        async with httpx.AsyncClient(base_url=n.url, timeout=10) as http:
            assert (await http.get("/health")).status_code == 200
        t_closed = trio.current_time()
    assert trio.current_time() - t_closed < 3  # discovery does not hold up shutdown
    final: str = disc.status
    assert final == "stopped"


def test_discovery_for_node_takes_the_port_from_the_url() -> None:
    cfg = NodeConfig(handle="h", advertised_namespaces=("notes",), interfaces=("eth0",))
    disc = Discovery.for_node(KEY_A, cfg, url="http://0.0.0.0:8750", bind_host="0.0.0.0")
    assert (disc.port, disc.handle, disc.namespaces, disc.interfaces) == (
        8750,
        "h",
        ("notes",),
        ("eth0",),
    )
    with pytest.raises(ConfigInvalid):
        Discovery.for_node(KEY_A, cfg, url="http://host", bind_host="0.0.0.0")
    with pytest.raises(ConfigInvalid):
        Discovery(key=KEY_A, port=0)


# --- real zeroconf between network namespaces (e2e) ------------------------------------

HELPER = str(Path(__file__).with_name("discovery_node.py"))
e2e = pytest.mark.e2e


@pytest.fixture
def lan2() -> Iterator[netns.Lan]:
    reason = netns.skip_reason()
    if reason:
        pytest.skip(reason)
    with netns.lan(2) as net:
        yield net


@pytest.fixture
def lan3() -> Iterator[netns.Lan]:
    reason = netns.skip_reason()
    if reason:
        pytest.skip(reason)
    with netns.lan(3) as net:
        yield net


class NodeProc:
    """A discovery_node.py subprocess and the JSON events it printed."""

    def __init__(self, proc: trio.Process, stderr_path: Path) -> None:
        self.proc = proc
        self.events: list[dict[str, object]] = []
        self.stderr_path = stderr_path
        self._changed = trio.Event()

    async def pump(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        async for chunk in self.proc.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    self.events.append(json.loads(line))
            self._changed.set()
            self._changed = trio.Event()
        self._changed.set()

    async def wait_for(
        self,
        pred: Callable[[dict[str, object]], bool],
        timeout: float,
        what: str,
        *,
        since: int = 0,
    ) -> dict[str, object]:
        """The first event from index ``since`` on that satisfies ``pred``."""
        index = since
        try:
            with trio.fail_after(timeout):
                while True:  # bounded by fail_after
                    for event in self.events[index:]:
                        if pred(event):
                            return event
                    index = len(self.events)
                    if self.proc.returncode is not None:
                        raise AssertionError(f"node exited ({self.proc.returncode}) before {what}")
                    await self._changed.wait()
        except (trio.TooSlowError, AssertionError):
            tail = self.stderr_path.read_text()[-3000:]
            last = self.events[-1] if self.events else None
            raise AssertionError(
                f"waiting for {what}; last event {last}; stderr:\n{tail}"
            ) from None

    async def stop(self, timeout: float = 10) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(timeout):
            return await self.proc.wait()


def peers(event: dict[str, object]) -> list[dict[str, object]]:
    if event.get("event") != "discovery":
        return []
    found = event["peers"]
    assert isinstance(found, list)
    return found


def has_peer(did: str, status: str) -> Callable[[dict[str, object]], bool]:
    return lambda e: any(p["did"] == did and p["status"] == status for p in peers(e))


Spawn = Callable[..., Awaitable[NodeProc]]


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    procs: list[NodeProc] = []
    files: list[IO[bytes]] = []
    async with trio.open_nursery() as nursery:

        async def start(host: netns.Host, *args: str) -> NodeProc:
            err_path = tmp_path / f"{host.ns}-{len(procs)}.stderr"
            err = err_path.open("wb")
            files.append(err)
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            proc = await trio.lowlevel.open_process(
                host.exec_args(sys.executable, HELPER, *args),
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )
            node = NodeProc(proc, err_path)
            procs.append(node)
            nursery.start_soon(node.pump)
            return node

        try:
            yield start
        finally:
            with trio.CancelScope(shield=True):
                for p in procs:
                    if p.proc.returncode is None:
                        p.proc.kill()
                        with trio.move_on_after(5):
                            await p.proc.wait()
            for f in files:
                f.close()


async def ready_did(node: NodeProc) -> str:
    ready = await node.wait_for(lambda e: e["event"] == "ready", 20, "the node to start")
    return str(ready["did"])


@e2e
async def test_nodes_see_each_other_verified_and_goodbye_removes(
    lan2: netns.Lan, spawn: Spawn
) -> None:
    """Alice's node runs on trio, Bob's on asyncio: mDNS works from either loop."""
    a_host, b_host = lan2.hosts
    a = await spawn(a_host, "--handle", "alice")
    b = await spawn(b_host, "--handle", "bob", "--backend", "asyncio")  # zeroconf on both loops
    did_a, did_b = await ready_did(a), await ready_did(b)
    seen = await b.wait_for(has_peer(did_a, "verified"), 15, "B to see A verified")
    (entry,) = [p for p in peers(seen) if p["did"] == did_a]
    assert entry["addresses"] == [a_host.address]
    assert entry["handle"] == "alice"
    assert entry["url"] == f"https://{a_host.address}:{entry['port']}"
    assert str(entry["name"]).startswith(f"alice-{did_a[-8:]}")
    await a.wait_for(has_peer(did_b, "verified"), 15, "A to see B verified")
    # Neither lists itself.
    assert not any(p["did"] == did_a for e in a.events for p in peers(e))
    # A shuts down cleanly: its goodbye removes it from B's roster long before any TTL.
    mark = len(b.events)
    assert await a.stop() == 0
    assert a.events[-1]["event"] == "stopped"
    t0 = time.monotonic()
    await b.wait_for(
        lambda e: e["event"] == "discovery" and not any(p["did"] == did_a for p in peers(e)),
        10,
        "A's goodbye to reach B",
        since=mark,
    )
    assert time.monotonic() - t0 < 10
    assert await b.stop() == 0


@e2e
async def test_impostor_announcing_someone_elses_did_is_invalid(
    lan3: netns.Lan, spawn: Spawn
) -> None:
    a_host, b_host, c_host = lan3.hosts
    a = await spawn(a_host, "--handle", "alice")
    b = await spawn(b_host, "--handle", "bob")
    did_a = await ready_did(a)
    await ready_did(b)
    registered = await a.wait_for(lambda e: bool(e.get("txt")), 15, "A to register")
    txt = registered["txt"]
    assert isinstance(txt, dict)
    await b.wait_for(has_peer(did_a, "verified"), 15, "B to see A verified")
    c = await spawn(
        c_host, "--handle", "mallory", "--impostor-of", did_a, "--replay-txt", json.dumps(txt),
        "--port", txt["port"], "--address", c_host.address,
    )  # fmt: skip
    await c.wait_for(lambda e: e["event"] == "impostor", 20, "the impostor to announce")

    def judged(e: dict[str, object]) -> bool:
        mine = {str(p["name"]).split(".")[0]: p for p in peers(e) if p["did"] == did_a}
        return (
            mine.get("impostor-forged", {}).get("status") == "invalid"
            and mine.get("impostor-replay", {}).get("status") == "invalid"
        )

    event = await b.wait_for(judged, 20, "B to judge both impostors invalid")
    mine = {str(p["name"]).split(".")[0]: p for p in peers(event) if p["did"] == did_a}
    assert str(mine["impostor-forged"]["reason"]).startswith("BAD_SIGNATURE")
    assert mine["impostor-forged"]["checked_at_ms"] is None  # refused before any connection
    assert str(mine["impostor-replay"]["reason"]).startswith("TLS_PIN_MISMATCH")
    assert mine["impostor-replay"]["addresses"] == [c_host.address]
    real = [p for n, p in mine.items() if n.startswith("alice-")]
    assert len(real) == 1
    assert real[0]["status"] == "verified"
    assert real[0]["addresses"] == [a_host.address]
    for node in (c, a, b):
        assert await node.stop() == 0


@e2e
async def test_address_changes_are_announced(lan2: netns.Lan, spawn: Spawn) -> None:
    a_host, b_host = lan2.hosts
    a = await spawn(a_host, "--handle", "alice", "--poll", "0.3")
    b = await spawn(b_host, "--handle", "bob", "--poll", "1")
    did_a = await ready_did(a)
    await b.wait_for(has_peer(did_a, "verified"), 15, "B to see A verified")

    def a_on(*addresses: str) -> Callable[[dict[str, object]], bool]:
        want = sorted(addresses)
        return lambda e: any(
            p["did"] == did_a and p["status"] == "verified" and sorted(p["addresses"]) == want  # type: ignore[call-overload]
            for p in peers(e)
        )

    # An address added to the same interface: update_service, no goodbye in between.
    # (Another subnet: deleting a primary address also deletes its secondaries.)
    extra = "10.203.1.11"
    b_host.ip("route", "add", "10.203.1.0/24", "dev", b_host.ifname)
    a_host.ip("route", "add", "10.203.0.0/24", "dev", a_host.ifname, "metric", "100")
    mark = len(b.events)
    lan2.add_address(a_host, extra)
    moved = await b.wait_for(a_on(a_host.address, extra), 15, "B to see A's new address",
                             since=mark)  # fmt: skip
    between = [e for e in b.events[mark : b.events.index(moved)] if e["event"] == "discovery"]
    assert all(any(p["did"] == did_a for p in peers(e)) for e in between), "A flapped"
    # The address zeroconf was bound to goes away: a new session on the other one;
    # B notices the flushed address record when it re-reads its cache.
    mark = len(b.events)
    lan2.remove_address(a_host, a_host.address)
    await b.wait_for(a_on(extra), 20, "B to see A only on its remaining address", since=mark)
    for node in (a, b):
        assert await node.stop() == 0


def test_an_expired_announcement_seen_again_keeps_its_verdict() -> None:
    """The SIGNATURE_EXPIRED reason holds the time; seen again on the next poll,
    the same verdict must keep its generation (its warning is logged once per
    verdict, not every 5 s for each cached announcement; review)."""
    roster = Roster()
    first, _ = roster.observe(NAME_A, props(txt_for()), ["10.0.0.5"], 8750, now=NOW + 4000)
    again, _ = roster.observe(NAME_A, props(txt_for()), ["10.0.0.5"], 8750, now=NOW + 4005)
    assert first is not None
    assert again is not None
    assert first.status == again.status == "invalid"
    assert again.reason.startswith("SIGNATURE_EXPIRED")
    assert again.generation == first.generation


def test_an_invalid_announcements_unchecked_handle_is_kept_escaped() -> None:
    """An announcement that fails its checks keeps its raw handle for display
    (`fedpeer peers`); any LAN host can send one, unsigned, so control and format
    characters in it are escaped, never stored raw (audit)."""
    txt = txt_for(handle="alice")
    txt["handle"] = "mallory\x1b]0;PWNED\x07\x1b[2J\u202e"  # the signature no longer fits
    entry, needs = Roster().observe(NAME_A, props(txt), ["10.0.0.5"], 8750, now=NOW)
    assert entry is not None
    assert not needs
    assert entry.status == "invalid"
    assert entry.handle == "mallory\\x1b]0;PWNED\\x07\\x1b[2J\\u202e"


def test_an_announcement_that_keeps_failing_its_check_is_checked_less_often() -> None:
    """Any LAN host can announce, with a fresh key, addresses and ports of other
    hosts: each unverified entry used to be checked every 10 s for as long as
    its announcement lived (about 100 connections a second from 256 entries),
    and an announcement with new addresses was checked at once (audit). Now the
    wait doubles with each failed check, up to 5 min, and the same DID moving
    to new addresses (directly, or after an announcement without addresses or
    an invalid one) waits for its turn."""
    roster = Roster()
    day = 24 * 3600  # an announcement that lives long enough for the whole test
    entry, needs = roster.observe(NAME_A, props(txt_for(ttl_s=day)), ["10.0.0.5"], 8750, now=NOW)
    assert entry is not None
    assert needs
    failed = CheckResult("unverified", "PEER_UNREACHABLE: refused")
    t = float(NOW)
    waits = []
    for _ in range(12):
        entry = roster.apply_check(NAME_A, entry.generation, failed, now=t)
        assert entry is not None
        due_at = next(
            dt
            for dt in (2.0**k for k in range(14))
            if roster.due_for_check(t + dt, retry_s=10.0, reverify_s=600.0)
        )
        waits.append(due_at)
        t += due_at
    assert waits[:4] == [16.0, 32.0, 64.0, 128.0]  # 10, 20, 40, 80 s: the next power of 2
    assert max(waits) == 512.0  # capped at 5 min (300 s: the next power of 2)
    assert entry.failed_checks == 12
    entry = roster.apply_check(NAME_A, entry.generation, failed, now=t)  # the 13th, at t
    assert entry is not None
    # the same DID announcing new addresses: no check at once, its turn comes
    moved, needs = roster.observe(
        NAME_A, props(txt_for(seq=8, ttl_s=day)), ["10.0.0.6"], 8750, now=t + 1
    )
    assert moved is not None
    assert not needs
    assert moved.failed_checks == 13
    assert not roster.due_for_check(t + 60, retry_s=10.0, reverify_s=600.0)
    assert roster.due_for_check(t + 300, retry_s=10.0, reverify_s=600.0) == (moved,)
    # through an announcement without addresses, or an invalid one: still waiting
    roster.observe(NAME_A, props(txt_for(seq=9, ttl_s=day)), [], 8750, now=t + 2)
    bad = txt_for(seq=10, ttl_s=day, port=9999)  # PORT_MISMATCH with the SRV port
    roster.observe(NAME_A, props(bad), ["10.0.0.7"], 8750, now=t + 3)
    again, needs = roster.observe(
        NAME_A, props(txt_for(seq=11, ttl_s=day)), ["10.0.0.8"], 8750, now=t + 4
    )
    assert again is not None
    assert not needs
    assert again.failed_checks == 13
    # a check that passes starts the count again
    ok = CheckResult("verified", "", "http://10.0.0.8:8750")
    after = roster.apply_check(NAME_A, again.generation, ok, now=t + 300)
    assert after is not None
    assert after.failed_checks == 0
