"""HTTPS between nodes, pinned to the DID (docs/protocol.md §6.6; issue 11, issue 10 #3).

Real hypercorn servers on loopback with their self-signed certificates; an
impostor is a real TLS server written here (anyio) that records every byte it
receives after the handshake, so "no credential was sent" is checked on the
wire, not inferred.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest
from anyio.streams.tls import TLSListener

from fedpeer.errors import DidMismatch, TlsPinMismatch
from fedpeer.identity.canonical import dagjson_encode
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import Node, NodeConfig, open_node
from fedpeer.peer._mdns_roster import RosterEntry
from fedpeer.peer._pinning import check_peer
from fedpeer.peer._transport import Pin, new_http_client, origin_of, pins_of
from fedpeer.peer.discovery import verify_peer
from fedpeer.peer.manifest import federation_body, manifest_pins
from fedpeer.peer.tls import (
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    TlsCert,
    local_client_context,
    spki_sha256_of_der,
)
from fedpeer.sync.pairs import Pair, PairState

TLS = NodeConfig(tls=True)
WAIT_S = 20.0


# --- a hostile TLS server that records what it is sent --------------------------------


class Impostor:
    """Listens with its own certificate; answers every request with ``body``
    (JSON); keeps every byte received after the TLS handshake in ``received``."""

    def __init__(self, body: object, cert: TlsCert | None = None) -> None:
        self.cert = cert or TlsCert.generate("did:key:zImpostor")
        self.body = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.received = bytearray()
        self.connections = 0
        self.requested = anyio.Event()

    async def _handle(self, stream: anyio.abc.ByteStream) -> None:
        self.connections += 1
        async with stream:
            buf = bytearray()
            while True:
                try:
                    chunk = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError, OSError):
                    return
                self.received += chunk
                buf += chunk
                if b"\r\n\r\n" not in buf:
                    continue
                buf.clear()
                self.requested.set()
                head = (
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: " + str(len(self.body)).encode() + b"\r\n\r\n"
                )
                try:
                    await stream.send(head + self.body)
                except (anyio.BrokenResourceError, ssl.SSLError, OSError):
                    return

    async def serve(self, port: int, *, task_status: anyio.abc.TaskStatus[int]) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.cert.load_into(ctx)
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)
        tls = TLSListener(listener, ctx, standard_compatible=False)
        task_status.started(bound)
        await tls.serve(self._handle)


async def _well_known(node: Node) -> dict[str, object]:
    async with httpx.AsyncClient(verify=_trust(node)) as http:
        r = await http.get(
            node.url + "/.well-known/fedpeer", headers={"Accept": "application/json"}
        )
    r.raise_for_status()
    return dict(r.json())


def _trust(node: Node) -> ssl.SSLContext:
    """A client context trusting exactly ``node``'s certificate (like the CLI)."""
    assert node.tls is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=node.tls.current.cert_pem.decode())
    return ctx


def _served_pin_blocking(port: int) -> str:
    """The pin of the certificate a fresh TLS connection to ``port`` gets."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    import socket

    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw) as s,
    ):
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return spki_sha256_of_der(der)


async def _served_pin(port: int) -> str:
    return await anyio.to_thread.run_sync(_served_pin_blocking, port)


def _port(url: str) -> int:
    return origin_of(url)[1]


async def _wait_pair(node: Node, pair_id: str, pred: Callable[[Pair], bool]) -> Pair:
    with anyio.fail_after(WAIT_S):
        return await node.pairs.wait_for(pair_id, pred)


@pytest.fixture
async def two_https() -> AsyncIterator[tuple[Node, Node]]:
    async with open_node(config=TLS) as a, open_node(config=TLS) as b:
        yield a, b


# --- the server side ----------------------------------------------------------------


async def test_first_start_makes_tls_files_0600_and_pins_them_in_the_manifest(
    tmp_path: Path,
) -> None:
    """§6.6: the served certificate's SPKI hash is what the signed manifest carries."""
    async with open_node(tmp_path, config=TLS) as node:
        assert node.url.startswith("https://127.0.0.1:")
        for name in (TLS_KEY_FILE, TLS_CERT_FILE):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
        assert node.tls is not None
        pin = node.tls.current.pin
        assert await _served_pin(_port(node.url)) == pin
        wk = await _well_known(node)
        manifest = wk["federation_manifest"]
        assert isinstance(manifest, dict)
        assert manifest["tls_spki_sha256"] == [pin]
        async with httpx.AsyncClient(verify=local_client_context(tmp_path) or False) as http:
            health = (await http.get(node.url + "/health")).json()
        assert health["transport"] == {
            "scheme": "https",
            "tls_spki_sha256": pin,
            "insecure_http": False,
        }
    async with open_node(tmp_path, config=TLS) as again:  # same certificate after a restart
        assert again.tls is not None
        assert again.tls.current.pin == pin


async def test_plain_http_off_loopback_needs_insecure_http() -> None:
    from fedpeer.errors import ConfigInvalid

    with pytest.raises(ConfigInvalid, match="insecure_http"):
        async with open_node(host="0.0.0.0", port=0, config=NodeConfig(tls=False)):
            pass
    async with open_node(config=NodeConfig()) as loop_node:  # loopback default: plain HTTP
        assert loop_node.url.startswith("http://")
        assert loop_node.tls is None


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_pinnedpubkey_accepts_the_manifest_pin_only(
    two_https: tuple[Node, Node],
) -> None:
    """An independent client (curl --pinnedpubkey) checks the served certificate
    against the pin in the signed manifest (§6.6)."""
    node, _ = two_https
    wk = await _well_known(node)
    manifest = wk["federation_manifest"]
    assert isinstance(manifest, dict)
    (pin,) = manifest["tls_spki_sha256"]
    std = base64.b64encode(base64.urlsafe_b64decode(pin + "=")).decode()

    async def curl(pinned: str) -> subprocess.CompletedProcess[bytes]:
        return await anyio.run_process(
            ["curl", "-sS", "-k", "--max-time", "10", "--pinnedpubkey", f"sha256//{pinned}",
             node.url + "/health"],
            check=False,
        )  # fmt: skip

    ok = await curl(std)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["did"] == node.did
    wrong = await curl(base64.b64encode(bytes(32)).decode())
    assert wrong.returncode == 90  # CURLE_SSL_PINNEDPUBKEYNOTMATCH


# --- pairing and sync over HTTPS ------------------------------------------------------


async def test_pair_from_invite_and_sync_over_https(two_https: tuple[Node, Node]) -> None:
    a, b = two_https
    created = await a.invites.create()
    assert a.tls is not None
    assert f"&pin={a.tls.current.pin}#secret=" in created.url
    result = await b.pair_from_invite(created.url)
    assert result.pair.peer_url.startswith("https://")
    for i in range(3):
        await a.append(namespace="n", thread="t", kind="k", body={"i": i})
    await _wait_pair(b, result.pair.id, lambda p: p.stats.records >= 3)
    # both directions run over pinned TLS: each side pinned the other's manifest pins
    b_pins = pins_of(b.http)
    assert b_pins is not None
    pin = b_pins.get(origin_of(a.url))
    assert pin is not None
    assert pin.did == a.did
    assert a.tls.current.pin in pin.spkis


async def test_invite_with_a_wrong_pin_is_refused_before_the_secret(
    two_https: tuple[Node, Node],
) -> None:
    a, b = two_https
    created = await a.invites.create()
    assert a.tls is not None
    forged = created.url.replace(a.tls.current.pin, "A" * 43)
    with pytest.raises(TlsPinMismatch):
        await b.pair_from_invite(forged)
    assert [i.uses for i in await a.invites.list()] == [0]  # never redeemed


# --- impostors ------------------------------------------------------------------------


async def _paired(a: Node, b: Node) -> Pair:
    """b pulls from a (over HTTPS), caught up on one record."""
    created = await a.invites.create()
    result = await b.pair_from_invite(created.url, bidirectional=False)
    await a.append(namespace="n", thread="t", kind="k", body={"i": 0})
    return await _wait_pair(b, result.pair.id, lambda p: p.stats.records >= 1)


async def test_impostor_with_another_certificate_gets_no_credential() -> None:
    """Issue 10 #3 / §6.6: the peer goes away and another machine takes its address,
    replaying its (public, validly signed) manifest with its own certificate: the
    pair stops with TLS_PIN_MISMATCH and the impostor never sees the bearer."""
    async with open_node(config=TLS) as b:
        async with open_node(config=TLS) as a:
            port = _port(a.url)
            pair = await _paired(a, b)
            assert pair.credential
            replay = await _well_known(a)
        impostor = Impostor(replay)
        async with anyio.create_task_group() as tg:
            await tg.start(impostor.serve, port)
            await b.pairs.kick(pair.id)
            stopped = await _wait_pair(b, pair.id, lambda p: p.state is PairState.STOPPED)
            tg.cancel_scope.cancel()
    assert stopped.last_error is not None
    assert stopped.last_error.code == "TLS_PIN_MISMATCH"
    assert "resume" in stopped.last_error.message  # a fix hint
    seen = bytes(impostor.received)
    assert pair.credential.encode() not in seen
    assert b"authorization" not in seen.lower()
    # what it got is only the public manifest request of the identity check
    assert seen.count(b"GET ") == seen.count(b"GET /.well-known/fedpeer ")


async def test_pinned_connection_sends_nothing_to_a_wrong_certificate() -> None:
    """The pin is checked right after the handshake, before any request byte."""
    impostor = Impostor({"nothing": True})
    async with anyio.create_task_group() as tg:
        port = await tg.start(impostor.serve, 0)
        url = f"https://127.0.0.1:{port}"
        http = new_http_client(timeout=10)
        async with http:
            pins = pins_of(http)
            assert pins is not None
            pins.set(url, Pin("did:key:zExpected", frozenset({"B" * 43}), None, "invite"))
            with pytest.raises(TlsPinMismatch):
                await http.get(url + "/v1/sync/changes", headers={"Authorization": "Bearer s3"})
        tg.cancel_scope.cancel()
    assert impostor.connections == 1
    assert bytes(impostor.received) == b""  # not even the request line


async def test_a_pooled_connection_is_not_written_to_once_its_pin_is_replaced() -> None:
    """A kept-alive connection outlives the pin it was accepted under: once the
    origin's pin no longer lists its certificate (another DID checked at that
    address, a rotation), the next request does not go over it; a new handshake
    meets the current pin (TLS_PIN_MISMATCH here) and the old peer gets nothing."""
    impostor = Impostor({"nothing": True})
    async with anyio.create_task_group() as tg:
        port = await tg.start(impostor.serve, 0)
        url = f"https://127.0.0.1:{port}"
        async with new_http_client(timeout=10) as http:
            pins = pins_of(http)
            assert pins is not None
            pins.set(url, Pin("did:key:zWas", frozenset({impostor.cert.pin}), None, "invite"))
            first = await http.get(url + "/first")
            assert first.status_code == 200
            assert impostor.connections == 1
            pins.set(url, Pin("did:key:zNow", frozenset({"B" * 43}), None, "manifest"))
            with pytest.raises(TlsPinMismatch):
                await http.get(url + "/second", headers={"Authorization": "Bearer s3cret"})
        tg.cancel_scope.cancel()
    assert impostor.connections == 2  # a new handshake, not the pooled connection
    seen = bytes(impostor.received)
    assert b"GET /first " in seen
    assert b"/second" not in seen
    assert b"s3cret" not in seen


async def test_another_node_on_the_address_is_did_mismatch_and_the_pair_stops() -> None:
    """Issue 10 #3: a real node with another key takes the peer's address."""
    async with open_node(config=TLS) as b:
        async with open_node(config=TLS) as a:
            port = _port(a.url)
            pair = await _paired(a, b)
        async with open_node(port=port, config=TLS) as other:
            assert other.did != a.did
            await b.pairs.kick(pair.id)
            stopped = await _wait_pair(b, pair.id, lambda p: p.state is PairState.STOPPED)
            assert stopped.last_error is not None
            assert stopped.last_error.code == "DID_MISMATCH"
            assert stopped.peer_did == a.did
            assert await other.store.count() == 0


async def test_plain_http_impostor_on_loopback_is_did_mismatch_without_the_token() -> None:
    """Over plain HTTP (loopback) the pair still checks the signed manifest's DID
    before sending its bearer after any error."""
    async with open_node() as b:
        async with open_node() as a:
            port = _port(a.url)
            pair = await _paired(a, b)
            assert pair.credential
        mallory = SigningKey.generate()
        from fedpeer.identity.envelope import sign_document

        body = federation_body(
            did=mallory.did, handle="m", urls=[], namespaces=[], consent={"revision": 0}
        )
        fake = {
            "capabilities_manifest": {},
            "federation_manifest": sign_document(body, mallory, ttl_s=3600),
        }
        impostor = Impostor(dagjson_encode(fake))

        async def serve_plain(*, task_status: anyio.abc.TaskStatus[int]) -> None:
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
            task_status.started(port)
            await listener.serve(impostor._handle)

        async with anyio.create_task_group() as tg:
            await tg.start(serve_plain)
            await b.pairs.kick(pair.id)
            stopped = await _wait_pair(b, pair.id, lambda p: p.state is PairState.STOPPED)
            tg.cancel_scope.cancel()
    assert stopped.last_error is not None
    assert stopped.last_error.code == "DID_MISMATCH"
    assert pair.credential.encode() not in bytes(impostor.received)
    assert impostor.requested.is_set()


async def test_manifest_with_a_wrong_pin_is_refused() -> None:
    """A manifest validly signed by the expected DID but pinning another
    certificate than the one served is refused (§6.6)."""
    from fedpeer.identity.envelope import sign_document

    key = SigningKey.generate()
    served, other = TlsCert.generate(key.did), TlsCert.generate(key.did)
    body = federation_body(
        did=key.did, handle="x", urls=[], namespaces=[], consent={}, tls_pins=[other.pin]
    )
    impostor = Impostor(
        {"capabilities_manifest": {}, "federation_manifest": sign_document(body, key, ttl_s=3600)},
        served,
    )
    async with anyio.create_task_group() as tg:
        port = await tg.start(impostor.serve, 0)
        http = new_http_client(timeout=10)
        async with http:
            with pytest.raises(TlsPinMismatch, match="not one that"):
                await check_peer(http, f"https://127.0.0.1:{port}", key.did)
            assert pins_of(http) is not None
            assert pins_of(http).get(("127.0.0.1", port)) is None  # type: ignore[union-attr]
            # the same manifest listing the served pin is accepted
            good = federation_body(
                did=key.did, handle="x", urls=[], namespaces=[], consent={}, tls_pins=[served.pin]
            )
            impostor.body = json.dumps(
                {
                    "capabilities_manifest": {},
                    "federation_manifest": sign_document(good, key, ttl_s=3600),
                }
            ).encode()
            verified = await check_peer(http, f"https://127.0.0.1:{port}", key.did)
            assert manifest_pins(verified.document) == {served.pin}
            with pytest.raises(DidMismatch):
                await check_peer(http, f"https://127.0.0.1:{port}", SigningKey.generate().did)
        tg.cancel_scope.cancel()


async def test_txt_with_a_wrong_pin_is_invalid(two_https: tuple[Node, Node]) -> None:
    """Discovery: the TXT's signed ``tls`` pin must be what the node serves (§6.6, §12)."""
    a, _ = two_https
    assert a.tls is not None
    entry = RosterEntry(
        name="a._fedpeer._tcp.local.",
        did=a.did,
        handle="a",
        addresses=("127.0.0.1",),
        port=_port(a.url),
        tls_pin=a.tls.current.pin,
    )
    assert entry.urls == (a.url,)
    good = await verify_peer(entry, timeout_s=10)
    assert good.status == "verified", good.reason
    bad = await verify_peer(
        RosterEntry(
            name=entry.name,
            did=a.did,
            handle="a",
            addresses=entry.addresses,
            port=entry.port,
            tls_pin="C" * 43,
        ),
        timeout_s=10,
    )
    assert bad.status == "invalid"
    assert "TLS_PIN_MISMATCH" in bad.reason


# --- rotation -------------------------------------------------------------------------


async def test_rotation_keeps_a_pair_syncing(tmp_path: Path) -> None:
    """§6.6 rotation: the next certificate is announced in a re-signed manifest,
    then served; the pair re-checks the manifest on the mismatch and goes on."""
    async with open_node(tmp_path / "a", config=TLS) as a, open_node(config=TLS) as b:
        assert a.tls is not None
        pair = await _paired(a, b)
        old = a.tls.current.pin
        new = a.announce_next_tls()
        assert (tmp_path / "a" / "tls.next.key").stat().st_mode & 0o777 == 0o600
        manifest = (await _well_known(a))["federation_manifest"]
        assert isinstance(manifest, dict)
        assert manifest["tls_spki_sha256"] == [old, new]  # announced before use
        assert await _served_pin(_port(a.url)) == old
        assert a.activate_next_tls() == new
        assert await _served_pin(_port(a.url)) == new
        assert not (tmp_path / "a" / "tls.next.key").exists()
        # b still pins only the old certificate: its next connection meets the new one
        b_pins = pins_of(b.http)
        assert b_pins is not None
        before = b_pins.get(origin_of(a.url))
        assert before is not None
        assert new not in before.spkis
        await b.pairs.kick(pair.id)  # drop the open longpoll: a new connection follows
        for i in range(1, 4):
            await a.append(namespace="n", thread="t", kind="k", body={"i": i})
        done = await _wait_pair(b, pair.id, lambda p: p.stats.records >= 4)
        assert done.state is not PairState.STOPPED
        after = b_pins.get(origin_of(a.url))
        assert after is not None
        assert after.spkis == {new}
    async with open_node(tmp_path / "a", config=TLS) as again:  # the rotation persisted
        assert again.tls is not None
        assert again.tls.current.pin == new


# --- plain HTTP, library clients --------------------------------------------------------


async def test_insecure_http_is_loud_and_shown_in_health(caplog: pytest.LogCaptureFixture) -> None:
    cfg = NodeConfig(tls=False, insecure_http=True)
    with caplog.at_level("WARNING", logger="fedpeer.node"):
        async with open_node(host="0.0.0.0", port=0, config=cfg) as node:
            port = _port(node.url)
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"http://127.0.0.1:{port}/health")).json()
    assert health["transport"] == {"scheme": "http", "tls_spki_sha256": None, "insecure_http": True}
    assert any("INSECURE" in r.getMessage() for r in caplog.records)


async def test_pulling_plain_http_off_loopback_is_refused_before_any_connection() -> None:
    from fedpeer.errors import InvalidRequest

    async with open_node(config=TLS) as node:
        with pytest.raises(InvalidRequest, match="plain HTTP"):
            await node.pair_with("http://192.0.2.1:8765", token="t")  # TEST-NET: never reached
        created = await node.invites.create()
    other_url = created.url.replace(node.url, "http://192.0.2.1:8765")
    async with open_node(config=TLS) as b:
        with pytest.raises(InvalidRequest, match="plain HTTP"):
            await b.pair_from_invite(other_url)


async def test_peer_client_pins_after_verify_identity(two_https: tuple[Node, Node]) -> None:
    a, _ = two_https
    await a.append(namespace="n", thread="t", kind="k", body={"i": 1})
    from fedpeer.errors import PeerUnreachable
    from fedpeer.peer import PeerClient

    assert a.admin_token is not None
    async with PeerClient(a.url, token=a.admin_token) as peer:
        with pytest.raises(PeerUnreachable):  # a self-signed certificate, no pin yet
            await peer.changes()
        verified = await peer.verify_identity(a.did)
        assert verified.did == a.did
        page = await peer.changes()
        assert len(page.records) == 1
    async with PeerClient(a.url, token=a.admin_token) as peer:
        with pytest.raises(DidMismatch):
            await peer.verify_identity(SigningKey.generate().did)


async def test_two_way_pairing_syncs_back_over_https(two_https: tuple[Node, Node]) -> None:
    a, b = two_https
    created = await a.invites.create()
    result = await b.pair_from_invite(created.url)
    assert result.reverse is not None
    reverse_id = result.reverse["id"]
    assert isinstance(reverse_id, str)
    assert a.pairs.get(reverse_id).peer_url.startswith("https://")
    await b.append(namespace="n", thread="t", kind="k", body={"from": "b"})
    await _wait_pair(a, reverse_id, lambda p: p.stats.records >= 1)


async def test_a_cached_check_does_not_outlive_a_repin_of_its_origin_by_another_did() -> None:
    """PeerVerifier caches a check per (URL, DID) but pins live per origin: once
    another node holds the address and is checked for its own DID on the same
    client (a pairing from its invite re-pins the origin), the pair's cached check
    must not let its credential go there under that DID's pin: it checks again
    (DID_MISMATCH) and the call carrying the credential never runs."""
    from fedpeer.peer._pinning import PeerVerifier

    async with new_http_client(timeout=10) as http:
        pins = pins_of(http)
        assert pins is not None
        verifier = PeerVerifier(http)
        async with open_node(config=TLS) as a:
            url = a.url
            await verifier.ensure(url, a.did)
            first = pins.get(origin_of(url))
            assert first is not None
            assert first.did == a.did
        async with open_node(port=_port(url), config=TLS) as other:
            assert other.did != a.did
            await check_peer(http, url, other.did)
            repinned = pins.get(origin_of(url))
            assert repinned is not None
            assert repinned.did == other.did
            calls: list[str] = []

            async def call() -> None:
                calls.append("sent")

            with pytest.raises(DidMismatch):
                await verifier.run(url, a.did, call)
            assert calls == []


def test_a_rotation_cut_between_key_and_certificate_is_finished_at_start(
    tmp_path: Path,
) -> None:
    """activate_next writes tls.key then tls.crt: a crash between the two left a
    key that is not the certificate's (the node could not serve). The next start
    sees the announced pair's half in place and finishes the rotation."""
    from fedpeer._files import write_private
    from fedpeer.peer.tls import TLS_NEXT_CERT_FILE, TLS_NEXT_KEY_FILE, TlsIdentity

    did = SigningKey.generate().did
    tls = TlsIdentity.load_or_create(did, tmp_path)
    nxt = tls.announce_next()
    write_private(tmp_path / TLS_KEY_FILE, nxt.key_pem)  # the crash: only the key written
    again = TlsIdentity.load_or_create(did, tmp_path)
    assert again.current.pin == nxt.pin
    assert again.next is None
    assert (tmp_path / TLS_CERT_FILE).read_bytes() == nxt.cert_pem
    assert not (tmp_path / TLS_NEXT_KEY_FILE).exists()
    assert not (tmp_path / TLS_NEXT_CERT_FILE).exists()
    again.server_context()  # the pair loads: the key is the certificate's


def test_a_key_that_is_not_the_certificates_is_a_clear_start_up_error(tmp_path: Path) -> None:
    from fedpeer.errors import DataDirError
    from fedpeer.peer.tls import TlsIdentity

    did = SigningKey.generate().did
    TlsIdentity.load_or_create(did, tmp_path)
    from fedpeer._files import write_private

    write_private(tmp_path / TLS_KEY_FILE, TlsCert.generate(did).key_pem)
    with pytest.raises(DataDirError) as caught:
        TlsIdentity.load_or_create(did, tmp_path)
    assert "not the certificate's" in caught.value.message
    assert "remove both files" in caught.value.message


def _pin_in_memory(ctx: ssl.SSLContext) -> str:
    """The SPKI pin of the certificate ``ctx`` serves, from a handshake over memory BIOs."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="x")
    s = ctx.wrap_bio(s_in, s_out, server_side=True)
    done: set[int] = set()
    for _ in range(10):  # bounded: a TLS 1.3 handshake takes two flights
        for i, side in enumerate((c, s)):
            if i not in done:
                with contextlib.suppress(ssl.SSLWantReadError):
                    side.do_handshake()
                    done.add(i)
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done == {0, 1}:
            break
    assert done == {0, 1}
    der = c.getpeercert(binary_form=True)
    assert der is not None
    return spki_sha256_of_der(der)


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="memfd_create is Linux-only")
def test_loading_the_certificate_puts_the_key_on_no_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ssl`` reads a key from a file only: on Linux that file is an anonymous
    in-memory one, so no copy of tls.key lands in $TMPDIR, and the context serves it."""
    import tempfile

    def no_temp_files(*_a: object, **_k: object) -> tuple[int, str]:
        raise AssertionError("the TLS key went to a temporary file")

    monkeypatch.setattr(tempfile, "mkstemp", no_temp_files)
    cert = TlsCert.generate(SigningKey.from_seed(b"\x33" * 32).did)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.load_into(ctx)
    assert _pin_in_memory(ctx) == cert.pin


def test_a_refused_memfd_falls_back_to_a_private_temp_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A sandbox (seccomp) may refuse memfd_create: the node still starts, through a
    0600 temporary file that is removed at once."""

    def refused(*_a: object, **_k: object) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "memfd_create", refused, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    cert = TlsCert.generate(SigningKey.from_seed(b"\x34" * 32).did)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.load_into(ctx)
    assert _pin_in_memory(ctx) == cert.pin
    assert list(tmp_path.iterdir()) == []  # the temporary copy is gone


def test_new_clients_load_the_certificate_authorities_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loading the CA bundle costs ~25 ms of CPU: each PeerClient, manifest probe
    and CLI command used to pay it twice. Now once per process, shared."""
    from fedpeer.peer import _transport

    calls: list[object] = []
    real = httpx.create_ssl_context

    def counting(*args: object, **kwargs: object) -> ssl.SSLContext:
        calls.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    _transport._system_ca_context.cache_clear()
    try:
        first = new_http_client()
        for _ in range(5):
            new_http_client()
        new_http_client(ca_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        assert len(calls) <= 1  # the one load (httpx may build it through this call)
        assert len(calls) == 1  # ...and it is loaded: not bypassed by some other context
        ctx = _transport._system_ca_context()
        assert ctx.verify_mode == ssl.CERT_REQUIRED  # still the CA-validating context
        assert first.pins is not None
    finally:
        _transport._system_ca_context.cache_clear()
