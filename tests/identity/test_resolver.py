"""DID resolver: registry, did:key offline, did:web against a real hypercorn on loopback."""

from __future__ import annotations

import datetime
import json
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypercorn.config import Config
from hypercorn.trio import serve

from fedpeer.errors import DidInvalid, DidMethodUnsupported, DidNotFound, KeyUnknown
from fedpeer.identity import (
    DidKeyDriver,
    DidWebDriver,
    Resolver,
    SigningKey,
    b64url_encode,
    did_document,
    did_from_public_key,
    did_web_url,
    ed25519_multibase,
    find_verification_method,
    public_key_from_method,
    sign_document,
    verify_document_resolved,
    x25519_multibase,
)
from fedpeer.identity.resolver import CACHE_MAX_VALUES

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

KEY = SigningKey.from_seed(bytes(range(32)))
OTHER = SigningKey.from_seed(bytes(range(1, 33)))


class DocServer:
    """A tiny raw ASGI app: path -> (status, body, extra headers); counts hits per path."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, list[tuple[bytes, bytes]]]] = {}
        self.hits: Counter[str] = Counter()
        self.release = trio.Event()  # for the "never answers" route
        self.hit = trio.Event()  # set (and replaced) on every request

    def put_json(self, path: str, obj: object, status: int = 200) -> None:
        self.routes[path] = (status, json.dumps(obj).encode(), [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http"
        path = scope["path"]
        self.hits[path] += 1
        self.hit.set()
        self.hit = trio.Event()
        if path == "/hang/did.json":
            await self.release.wait()
        status, body, headers = self.routes.get(path, (404, b"not found", []))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), *headers],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[tuple[DocServer, int]]:
    app = DocServer()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1
    shutdown = trio.Event()
    urls: list[str] = await nursery.start(
        partial(serve, app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
    )
    port = int(urls[0].rsplit(":", 1)[1])
    try:
        yield app, port
    finally:
        app.release.set()
        shutdown.set()


def _web_did(port: int, *path: str) -> str:
    return ":".join([f"did:web:127.0.0.1%3A{port}", *path])


def _web_doc(did: str, key: SigningKey = KEY) -> dict[str, object]:
    """A did:web document with the key in three spellings."""
    return {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did,
        "verificationMethod": [
            {
                "id": f"{did}#mk",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": ed25519_multibase(key.public_key),
            },
            {
                "id": "#ed2020",
                "type": "Ed25519VerificationKey2020",
                "controller": did,
                "publicKeyMultibase": ed25519_multibase(key.public_key),
            },
            {
                "id": f"{did}#jwk",
                "type": "JsonWebKey2020",
                "controller": did,
                "publicKeyJwk": {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": b64url_encode(key.public_key),
                },
            },
            {
                "id": f"{did}#x25519",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": x25519_multibase(bytes(range(32))),
            },
            {
                "id": f"{did}#bad-point",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": ed25519_multibase(bytes(32)),
            },
            {
                "id": f"{did}#rsa",
                "type": "JsonWebKey2020",
                "controller": did,
                "publicKeyJwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            },
        ],
        "assertionMethod": [f"{did}#mk", "#ed2020", f"{did}#jwk"],
    }


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _web_resolver(client: httpx.AsyncClient | None = None, **kw: Any) -> Resolver:
    return Resolver(drivers={"web": DidWebDriver(client, allow_http=True, timeout_s=5)}, **kw)


# --- did:web URL mapping (pure) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("did", "url"),
    [
        ("did:web:example.com", "https://example.com/.well-known/did.json"),
        ("did:web:example.com:user:alice", "https://example.com/user/alice/did.json"),
        ("did:web:example.com%3A3000", "https://example.com:3000/.well-known/did.json"),
        ("did:web:example.com%3a3000:u", "https://example.com:3000/u/did.json"),
        ("did:web:w3c-ccg.github.io:user:alice", "https://w3c-ccg.github.io/user/alice/did.json"),
        ("did:web:127.0.0.1%3A8080", "https://127.0.0.1:8080/.well-known/did.json"),
        ("did:web:example.com:a%20b", "https://example.com/a%20b/did.json"),
    ],
)
def test_did_web_url(did: str, url: str) -> None:
    assert did_web_url(did) == url


def test_did_web_http_only_on_loopback_when_allowed() -> None:
    assert did_web_url("did:web:localhost%3A8080", allow_http=True) == (
        "http://localhost:8080/.well-known/did.json"
    )
    assert (
        did_web_url("did:web:127.0.0.1%3A1:x", allow_http=True) == "http://127.0.0.1:1/x/did.json"
    )
    assert did_web_url("did:web:127.9.9.9", allow_http=True).startswith("http://")
    assert did_web_url("did:web:example.com", allow_http=True).startswith("https://")
    assert did_web_url("did:web:10.0.0.1", allow_http=True).startswith("https://")
    assert did_web_url("did:web:localhost").startswith("https://")


@pytest.mark.parametrize(
    "did",
    [
        "did:key:z6Mk",
        "did:web:",
        "did:web:exa_mple.com",
        "did:web:-example.com",
        "did:web:example..com",
        "did:web:user@example.com",
        "did:web:example.com%3A",
        "did:web:example.com%3A0",
        "did:web:example.com%3A65536",
        "did:web:example.com%3Aabc",
        "did:web:example.com::x",
        "did:web:example.com:x:",
        "did:web:example.com:..",
        "did:web:example.com:.",
        "did:web:example.com:%2e%2e",
        "did:web:example.com:a%2Fb",
        "did:web:example.com:a/b",
        "did:web:example.com:a?b",
        "did:web:example.com#frag",
        "did:web:" + "a" * 3000,
    ],
)
def test_did_web_url_invalid(did: str) -> None:
    with pytest.raises(DidInvalid):
        did_web_url(did)


# --- registry ---------------------------------------------------------------------------


async def test_default_methods_and_did_key_offline() -> None:
    resolver = Resolver()
    assert resolver.methods == ("key", "web")
    doc = await resolver.resolve(KEY.did)
    assert doc == did_document(KEY.did)
    assert await resolver.public_key_for(KEY.key_id) == KEY.public_key
    x_id = doc["keyAgreement"][0]  # type: ignore[index]
    with pytest.raises(KeyUnknown):  # the X25519 method is not a signing key
        await resolver.public_key_for(x_id)
    with pytest.raises(KeyUnknown):
        await resolver.public_key_for(f"{KEY.did}#nope")
    with pytest.raises(KeyUnknown):
        await resolver.public_key_for(KEY.did)
    with pytest.raises(KeyUnknown):
        await resolver.public_key_for(f"{KEY.did}#")


@pytest.mark.parametrize(
    "did",
    ["", "did:", "did:key", "did:key:", "DID:key:z6Mk", "did:KEY:x", "did:key:z#x", "did:web:a b"],
)
async def test_bad_did_syntax(did: str) -> None:
    with pytest.raises(DidInvalid):
        await Resolver().resolve(did)


async def test_unsupported_method() -> None:
    resolver = Resolver(drivers={})
    assert resolver.methods == ("key",)
    with pytest.raises(DidMethodUnsupported) as info:
        await resolver.resolve("did:web:example.com")
    assert "did:key" in str(info.value)
    with pytest.raises(DidMethodUnsupported):
        await resolver.public_key_for("did:plc:abc#k")


async def test_invalid_did_key() -> None:
    with pytest.raises(DidInvalid):
        await Resolver().resolve("did:key:z6LSeu9HkTHSfLLeUs2nnzUSNedgDUevfNQgQjQC23ZCit6F")
    with pytest.raises(DidInvalid):
        await DidKeyDriver().resolve("did:key:zzz")


class CountingDriver:
    def __init__(self, make: Callable[[str], dict[str, object]]) -> None:
        self.make = make
        self.calls = 0

    async def resolve(self, did: str) -> dict[str, object]:
        self.calls += 1
        return self.make(did)


async def test_register_replaces_driver_and_checks_document_id() -> None:
    resolver = Resolver(drivers={})
    good = CountingDriver(lambda did: {"id": did})
    resolver.register("example", good)
    assert await resolver.resolve("did:example:a") == {"id": "did:example:a"}
    wrong = CountingDriver(lambda did: {"id": "did:example:someone-else"})
    resolver.register("example", wrong)  # also drops cached did:example documents
    with pytest.raises(DidInvalid):
        await resolver.resolve("did:example:a")
    assert wrong.calls == 1
    with pytest.raises(DidInvalid):
        resolver.register("Bad-Name", good)


async def test_cache_ttl_lru_and_copies() -> None:
    clock = FakeClock()
    driver = CountingDriver(lambda did: {"id": did, "n": [1]})
    resolver = Resolver(drivers={"example": driver}, cache_ttl_s=60, cache_size=2, clock=clock)
    first = await resolver.resolve("did:example:a")
    first["n"].append(2)  # type: ignore[attr-defined]
    assert await resolver.resolve("did:example:a") == {"id": "did:example:a", "n": [1]}
    assert driver.calls == 1
    clock.now += 59.9
    await resolver.resolve("did:example:a")
    assert driver.calls == 1
    clock.now += 0.2  # past the TTL
    await resolver.resolve("did:example:a")
    assert driver.calls == 2
    # LRU bound: a, b, c with size 2 evicts a
    await resolver.resolve("did:example:b")
    await resolver.resolve("did:example:c")
    assert driver.calls == 4
    await resolver.resolve("did:example:a")
    assert driver.calls == 5
    resolver.clear_cache()
    await resolver.resolve("did:example:a")
    assert driver.calls == 6


async def test_the_cache_holds_a_bounded_number_of_values() -> None:
    """Found by an audit: the cache kept 1024 documents of up to 256 KiB each,
    whatever they held; did:web documents of empty objects took 5.8 MB each once
    parsed (6 GB at the cap), for anyone holding an invite URL. The cached
    documents now hold CACHE_MAX_VALUES values at most together (the least
    recently used go first), and a document over that is not cached at all."""
    per = 3000
    driver = CountingDriver(lambda did: {"id": did, "n": [{}] * per})
    resolver = Resolver(drivers={"example": driver}, cache_ttl_s=60)
    fit = CACHE_MAX_VALUES // (per + 4)
    for i in range(fit + 5):
        await resolver.resolve(f"did:example:{i}")
    assert driver.calls == fit + 5
    await resolver.resolve(f"did:example:{fit + 4}")  # the newest is still cached
    assert driver.calls == fit + 5
    await resolver.resolve("did:example:0")  # the oldest was evicted by weight
    assert driver.calls == fit + 6

    huge = CountingDriver(lambda did: {"id": did, "n": [0] * (CACHE_MAX_VALUES + 1)})
    resolver = Resolver(drivers={"example": huge}, cache_ttl_s=60)
    for _ in range(2):
        await resolver.resolve("did:example:big")
    assert huge.calls == 2  # never cached


async def test_ttl_zero_disables_cache_and_failures_are_not_cached() -> None:
    outcomes = [DidNotFound("down"), None]

    async def flaky(did: str) -> dict[str, object]:
        err = outcomes.pop(0) if outcomes else None
        if err is not None:
            raise err
        return {"id": did}

    class Flaky:
        resolve = staticmethod(flaky)

    resolver = Resolver(drivers={"example": Flaky()})
    with pytest.raises(DidNotFound):
        await resolver.resolve("did:example:a")
    assert await resolver.resolve("did:example:a") == {"id": "did:example:a"}

    driver = CountingDriver(lambda did: {"id": did})
    uncached = Resolver(drivers={"example": driver}, cache_ttl_s=0)
    await uncached.resolve("did:example:a")
    await uncached.resolve("did:example:a")
    assert driver.calls == 2


def test_find_method_and_key_material_pure() -> None:
    did = "did:web:example.com"
    doc = _web_doc(did)
    assert find_verification_method(doc, f"{did}#mk")["type"] == "Multikey"
    assert find_verification_method(doc, f"{did}#ed2020")["id"] == "#ed2020"
    for frag in ("mk", "ed2020", "jwk"):
        vm = find_verification_method(doc, f"{did}#{frag}")
        assert public_key_from_method(vm) == KEY.public_key
    for frag in ("x25519", "bad-point", "rsa"):
        with pytest.raises(KeyUnknown):
            public_key_from_method(find_verification_method(doc, f"{did}#{frag}"))
    with pytest.raises(KeyUnknown):
        find_verification_method(doc, f"{did}#missing")
    # embedded in a relationship, and the legacy 2018 form
    from fedpeer.identity import base58btc_encode

    embedded = {
        "id": did,
        "authentication": [
            {
                "id": "#legacy",
                "type": "Ed25519VerificationKey2018",
                "publicKeyBase58": base58btc_encode(KEY.public_key),
            }
        ],
    }
    assert (
        public_key_from_method(find_verification_method(embedded, f"{did}#legacy"))
        == KEY.public_key
    )


# --- did:web over a real HTTP server ---------------------------------------------------------


async def test_did_web_200_and_keys(server: tuple[DocServer, int]) -> None:
    app, port = server
    did = _web_did(port)
    app.put_json("/.well-known/did.json", _web_doc(did))
    async with httpx.AsyncClient() as client:
        resolver = _web_resolver(client)
        doc = await resolver.resolve(did)
        assert doc["id"] == did
        for frag in ("mk", "ed2020", "jwk"):
            assert await resolver.public_key_for(f"{did}#{frag}") == KEY.public_key
        for frag in ("x25519", "bad-point", "rsa", "missing"):
            with pytest.raises(KeyUnknown):
                await resolver.public_key_for(f"{did}#{frag}")
    assert app.hits["/.well-known/did.json"] == 1  # everything after the first came from cache


async def test_did_web_path_form_with_default_client(server: tuple[DocServer, int]) -> None:
    app, port = server
    did = _web_did(port, "user", "alice")
    app.put_json("/user/alice/did.json", _web_doc(did, OTHER))
    resolver = _web_resolver()  # the driver makes its own short-lived client
    assert await resolver.public_key_for(f"{did}#jwk") == OTHER.public_key
    assert app.hits["/user/alice/did.json"] == 1


async def test_did_web_is_fetched_over_https_without_allow_http() -> None:
    """A public host is fetched over https, from the address its lookup gave; the
    server and the certificate check still see the name (no network: a transport
    records the request, a lookup answers for DNS)."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=_web_doc("did:web:example.com%3A8443:u"))

    looked_up: list[tuple[str, int]] = []

    async def lookup(host: str, port: int) -> list[str]:
        looked_up.append((host, port))
        return ["93.184.215.14"]

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        driver = DidWebDriver(client, timeout_s=5, lookup=lookup)
        doc = await Resolver(drivers={"web": driver}).resolve("did:web:example.com%3A8443:u")
    assert doc["id"] == "did:web:example.com%3A8443:u"
    assert looked_up == [("example.com", 8443)]
    (request,) = seen
    assert str(request.url) == "https://93.184.215.14:8443/u/did.json"
    assert request.headers["host"] == "example.com:8443"
    assert request.extensions["sni_hostname"] == "example.com"


@pytest.mark.parametrize(
    "addresses",
    [
        ["127.0.0.1"],
        ["10.0.0.5"],
        ["::1"],
        ["fd00::1"],
        ["fe80::1%eth0"],
        ["::ffff:127.0.0.1"],
        ["93.184.215.14", "192.168.1.20"],  # one internal address is enough
        [],
        ["not-an-address"],
    ],
)
async def test_a_did_web_name_that_looks_up_to_an_internal_address_is_not_fetched(
    addresses: list[str],
) -> None:
    """DNS rebinding: any name can look up to this machine or the LAN, so the
    address check applies to what the name looks up to, and nothing is fetched."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=_web_doc("did:web:rebind.example"))

    async def lookup(host: str, port: int) -> list[str]:
        return addresses

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        resolver = Resolver(drivers={"web": DidWebDriver(client, timeout_s=5, lookup=lookup)})
        with pytest.raises(DidNotFound):
            await resolver.resolve("did:web:rebind.example")
    assert seen == []


async def test_a_did_web_name_that_does_not_look_up_is_not_found() -> None:
    async def lookup(host: str, port: int) -> list[str]:
        raise OSError(-2, "Name or service not known")

    resolver = Resolver(drivers={"web": DidWebDriver(timeout_s=5, lookup=lookup)})
    with pytest.raises(DidNotFound, match="cannot look up"):
        await resolver.resolve("did:web:nowhere.example")


def _tls_files(tmp_path: Path, dns_name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``dns_name`` only (no IP address in it), and
    its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / f"{dns_name}.crt", tmp_path / f"{dns_name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_did_web_connects_to_the_checked_address_and_checks_the_name(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A real HTTPS server on 127.0.0.1 whose certificate names ``docs.example``
    only. The lookup answers two addresses: nothing listens on the first, so the
    driver tries the second, connects to the address (not to the name, which no
    DNS here knows) and checks the certificate against the name."""
    cert_file, key_file = _tls_files(tmp_path, "docs.example")
    app = DocServer()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.certfile, config.keyfile = str(cert_file), str(key_file)
    config.accesslog = config.errorlog = None
    config.graceful_timeout = 1
    shutdown = trio.Event()
    urls: list[str] = await nursery.start(
        partial(serve, app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
    )
    port = int(urls[0].rsplit(":", 1)[1])
    did = f"did:web:docs.example%3A{port}"
    app.put_json("/.well-known/did.json", _web_doc(did))
    looked_up: list[str] = []

    async def lookup(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return ["127.0.0.2", "127.0.0.1"]  # 127.0.0.2: nothing listens there

    trusted = ssl.create_default_context(cafile=str(cert_file))
    try:
        async with httpx.AsyncClient(verify=trusted) as client:
            # allow_http lets loopback addresses through (tests only); the name
            # is still fetched over https
            driver = DidWebDriver(client, allow_http=True, timeout_s=10, lookup=lookup)
            assert await Resolver(drivers={"web": driver}).resolve(did) == _web_doc(did)
            assert looked_up == ["docs.example"]
            assert app.hits["/.well-known/did.json"] == 1
            # the same server under another name: its certificate does not name it
            other = f"did:web:other.example%3A{port}"
            with pytest.raises(DidNotFound):
                await Resolver(drivers={"web": driver}).resolve(other)
            assert app.hits["/.well-known/did.json"] == 1
    finally:
        shutdown.set()


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "10.0.0.1",
        "192.168.1.20",
        "169.254.1.1",
        "100.64.0.1",
        "0.0.0.0",
        "localhost",
        "LOCALHOST",
        "node.localhost",
    ],
)
async def test_did_web_at_an_internal_address_is_not_fetched(
    server: tuple[DocServer, int], host: str
) -> None:
    """A did:web names the host the resolver connects to, and strangers name DIDs
    (an invite redeemer its own): an internal address literal is refused without
    a connection, so a DID cannot be used to probe the node's network."""
    app, port = server
    did = f"did:web:{host}%3A{port}"
    app.put_json("/.well-known/did.json", _web_doc(did))
    resolver = Resolver(drivers={"web": DidWebDriver(timeout_s=5)})
    with pytest.raises(DidNotFound, match="must be a public one"):
        await resolver.resolve(did)
    assert not app.hits
    if host in ("127.0.0.1", "localhost"):  # tests' allow_http lets loopback through
        assert await _web_resolver().resolve(did) == _web_doc(did)


@pytest.mark.parametrize(
    "host", ["127.1", "2130706433", "0x7f000001", "0", "10.1", "999.1.1.1", "127.000.000.001"]
)
async def test_a_did_web_host_ending_in_a_number_must_be_a_dotted_quad(
    server: tuple[DocServer, int], host: str
) -> None:
    """URL parsers and getaddrinfo read these as IPv4 addresses (most of them as
    127.0.0.1); the address check must not see a "DNS name" there. Refused as
    DID_INVALID, without a connection, and never an unexpected exception."""
    app, port = server
    did = f"did:web:{host}%3A{port}"
    with pytest.raises(DidInvalid, match="dotted-quad"):
        did_web_url(did)
    for resolver in (Resolver(drivers={"web": DidWebDriver(timeout_s=5)}), _web_resolver()):
        with pytest.raises(DidInvalid):
            await resolver.resolve(did)
    assert not app.hits


async def test_one_driver_serves_asyncio_and_trio(server: tuple[DocServer, int]) -> None:
    """The fetch limiter belongs to one event loop library: a driver used from
    asyncio first (an embedder) still works under trio after."""
    app, port = server
    did = _web_did(port)
    app.put_json("/.well-known/did.json", _web_doc(did))
    driver = DidWebDriver(allow_http=True, timeout_s=5)
    got = await trio.to_thread.run_sync(lambda: anyio.run(driver.resolve, did, backend="asyncio"))
    assert got == _web_doc(did)
    assert await driver.resolve(did) == _web_doc(did)


async def test_did_web_fetches_run_a_few_at_a_time(server: tuple[DocServer, int]) -> None:
    """Resolutions that hang hold at most ``max_concurrent`` connections; the rest
    wait for a turn within their own timeout."""
    app, port = server
    driver = DidWebDriver(allow_http=True, timeout_s=30, max_concurrent=2)
    resolver = Resolver(drivers={"web": driver})
    hang = _web_did(port, "hang")

    async def resolve_hang() -> None:
        with pytest.raises(DidNotFound):
            await resolver.resolve(hang)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(resolve_hang)
        with trio.fail_after(10):
            while app.hits["/hang/did.json"] < 2:
                await app.hit.wait()
        await trio.testing.wait_all_tasks_blocked(0.2)
        assert app.hits["/hang/did.json"] == 2  # the other three wait for a turn
        app.release.set()
    assert app.hits["/hang/did.json"] == 5


async def test_did_web_404(server: tuple[DocServer, int]) -> None:
    app, port = server
    with pytest.raises(DidNotFound, match="404"):
        await _web_resolver().resolve(_web_did(port, "nobody"))
    assert app.hits["/nobody/did.json"] == 1


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (200, b"this is not json", []),
        (200, b"[1, 2, 3]", []),
        (200, b"\xff\xfe\x00", []),
        (200, b"[" * 100_000, []),
        (500, b"{}", []),
        (302, b"", [(b"location", b"/elsewhere/did.json")]),
        (200, b'{"id": "' + b"a" * 300_000 + b'"}', []),
    ],
)
async def test_did_web_bad_answers_are_not_found(
    server: tuple[DocServer, int], status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    app, port = server
    app.routes["/bad/did.json"] = (status, body, headers)
    with pytest.raises(DidNotFound):
        await _web_resolver().resolve(_web_did(port, "bad"))
    assert app.hits["/bad/did.json"] == 1
    assert app.hits["/elsewhere/did.json"] == 0  # redirects are not followed


async def test_did_web_id_mismatch(server: tuple[DocServer, int]) -> None:
    app, port = server
    did = _web_did(port, "mallory")
    app.put_json("/mallory/did.json", _web_doc(_web_did(port, "alice")))
    with pytest.raises(DidInvalid, match="another DID"):
        await _web_resolver().resolve(did)
    app.put_json("/mallory/did.json", {"verificationMethod": []})  # no id at all
    with pytest.raises(DidInvalid):
        await _web_resolver().resolve(did)


async def test_did_web_network_error() -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(DidNotFound, match="cannot fetch"):
        await _web_resolver().resolve(_web_did(port))


async def test_did_web_timeout(server: tuple[DocServer, int]) -> None:
    app, port = server
    resolver = Resolver(drivers={"web": DidWebDriver(allow_http=True, timeout_s=0.3)})
    with trio.fail_after(10):
        with pytest.raises(DidNotFound, match="timed out"):
            await resolver.resolve(_web_did(port, "hang"))
    assert app.hits["/hang/did.json"] == 1


async def test_did_web_refuses_a_document_of_many_values(server: tuple[DocServer, int]) -> None:
    """A DID document holds a few keys: one of more than MAX_DOCUMENT_VALUES values
    (here 200 KB of empty objects, under the byte cap) is DID_NOT_FOUND."""
    app, port = server
    did = _web_did(port)
    doc = _web_doc(did)
    app.put_json("/.well-known/did.json", {**doc, "padding": [{}] * 50_000})
    resolver = Resolver(drivers={"web": DidWebDriver(allow_http=True)})
    with pytest.raises(DidNotFound, match="values"):
        await resolver.resolve(did)
    app.put_json("/.well-known/did.json", {**doc, "padding": [{}] * 100})
    assert await resolver.public_key_for(f"{did}#mk") == KEY.public_key


async def test_did_web_cache_ttl_counts_server_hits(server: tuple[DocServer, int]) -> None:
    app, port = server
    did = _web_did(port)
    app.put_json("/.well-known/did.json", _web_doc(did))
    clock = FakeClock()
    async with httpx.AsyncClient() as client:
        resolver = _web_resolver(client, cache_ttl_s=300, clock=clock)
        await resolver.resolve(did)
        await resolver.resolve(did)
        assert await resolver.public_key_for(f"{did}#mk") == KEY.public_key
        assert app.hits["/.well-known/did.json"] == 1
        clock.now += 299
        await resolver.resolve(did)
        assert app.hits["/.well-known/did.json"] == 1
        clock.now += 2  # now past the TTL
        # The document changed meanwhile (key rotation): the new one is served.
        app.put_json("/.well-known/did.json", _web_doc(did, OTHER))
        assert await resolver.public_key_for(f"{did}#mk") == OTHER.public_key
        assert app.hits["/.well-known/did.json"] == 2
        await resolver.resolve(did)
        assert app.hits["/.well-known/did.json"] == 2


async def test_did_web_signed_document_end_to_end(server: tuple[DocServer, int]) -> None:
    app, port = server
    did = _web_did(port)
    app.put_json("/.well-known/did.json", _web_doc(did))
    # Sign as the did:web identity: same key, key_id in the did:web document.
    doc = sign_document({"hello": "web"}, KEY, ttl_s=60, now=1_800_000_000)
    from fedpeer.identity import jcs

    member = doc["signature"]
    assert isinstance(member, dict)
    member["key_id"] = f"{did}#mk"
    del member["signature"]
    member["signature"] = b64url_encode(KEY.sign(jcs(doc)))
    resolver = _web_resolver()
    res = await verify_document_resolved(doc, resolver, expected_did=did, now=1_800_000_010)
    assert res.did == did
    # The same signature under the X25519 method id is refused as KEY_UNKNOWN.
    member["key_id"] = f"{did}#x25519"
    with pytest.raises(KeyUnknown):
        await verify_document_resolved(doc, resolver, now=1_800_000_010)


async def test_did_key_driver_matches_module_function() -> None:
    for i in range(3):
        key = SigningKey.from_seed(bytes([i]) * 32)
        assert await DidKeyDriver().resolve(key.did) == did_document(key.did)
        assert did_from_public_key(key.public_key) == key.did
