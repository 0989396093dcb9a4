"""DID resolution: a registry of method drivers with a TTL cache.

Shaped like the JavaScript ``did-resolver``: a :class:`Resolver` maps a DID
method name (``key``, ``web``) to a driver whose ``resolve(did)`` returns the
DID document. did:key is built in and offline (:class:`DidKeyDriver`);
:class:`DidWebDriver` fetches ``did.json`` over HTTPS with httpx. This is the
one I/O piece of the identity layer.

Errors (all from :mod:`fedpeer.errors`):

- ``DID_INVALID`` (:class:`~fedpeer.errors.DidInvalid`): bad DID syntax, or a
  document whose ``id`` is not the DID that was asked for;
- ``DID_METHOD_UNSUPPORTED``: no driver for the method;
- ``DID_NOT_FOUND``: HTTP 404 or any other non-200 answer, a network error or
  timeout, a body that is not a JSON object, or one that is too large;
- ``KEY_UNKNOWN``: :meth:`Resolver.public_key_for` found no usable Ed25519 key.

Successful resolutions are cached for ``cache_ttl_s`` seconds on an injectable
monotonic clock; failures are not cached. Concurrent first resolutions of the
same DID may each reach the driver.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import anyio
import httpx
import sniffio

from fedpeer._values import count_values
from fedpeer.errors import DidInvalid, DidMethodUnsupported, DidNotFound, FedpeerError, KeyUnknown

from ._syntax import MAX_DID_LEN, METHOD_RE, is_did
from .canonical import b64url_decode
from .didkey import base58btc_decode, did_document, ed25519_from_multibase
from .keys import is_valid_public_key

__all__ = [
    "DidDriver",
    "DidKeyDriver",
    "DidWebDriver",
    "Lookup",
    "Resolver",
    "did_web_url",
    "find_verification_method",
    "public_key_from_method",
    "system_lookup",
]

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_PATH_SEGMENT_RE = re.compile(r"(?:[A-Za-z0-9._~-]|%[0-9A-Fa-f]{2})+")
_RELATIONSHIPS = (
    "authentication",
    "assertionMethod",
    "capabilityInvocation",
    "capabilityDelegation",
    "keyAgreement",
)


class DidDriver(Protocol):
    """A DID method driver: turns a DID of its method into a DID document."""

    async def resolve(self, did: str) -> dict[str, object]:
        """The DID document of ``did`` (syntax already checked by the Resolver).

        Raises ``DidInvalid`` or ``DidNotFound``.
        """
        ...


class DidKeyDriver:
    """The did:key driver: offline, via :func:`fedpeer.identity.didkey.did_document`."""

    async def resolve(self, did: str) -> dict[str, object]:
        """The did:key document (Multikey form). Raises ``DidInvalid``. No I/O."""
        return did_document(did)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _did_web_parts(did: str) -> tuple[str, str | None, list[str]]:
    """``(host, port text or None without "%3A", path segments)`` of a did:web,
    unchecked."""
    domain, *path = did[len("did:web:") :].split(":")
    host, sep, port = domain.replace("%3a", "%3A").partition("%3A")
    return host, port if sep else None, path


def did_web_url(did: str, *, allow_http: bool = False) -> str:
    """The URL of the DID document of a did:web (did:web spec, "Read").

    ``did:web:example.com`` -> ``https://example.com/.well-known/did.json``;
    ``did:web:example.com:user:alice`` -> ``https://example.com/user/alice/did.json``;
    a port is percent-encoded: ``did:web:localhost%3A8443``. With ``allow_http``
    a loopback host (``localhost``, ``127.0.0.0/8``) is fetched over plain http (for
    tests); other hosts always use https.

    Raises :class:`~fedpeer.errors.DidInvalid` for anything but a did:web whose host
    is a DNS name or IPv4 address (optionally with a port) and whose path segments
    are non-empty, percent-encoded and not ``.``/``..``. Pure.
    """
    if not isinstance(did, str) or not did.startswith("did:web:") or len(did) > MAX_DID_LEN:
        raise DidInvalid("not a did:web (did:web:<host>[:<path>...])")
    host, port, path = _did_web_parts(did)
    if _HOST_RE.fullmatch(host) is None:
        raise DidInvalid("the did:web host must be a DNS name or IPv4 address")
    last = host.rsplit(".", 1)[-1].lower()
    if last.isdigit() or last.startswith("0x"):
        # A host ending in a number is an IPv4 address to URL parsers and to
        # getaddrinfo ("127.1", "2130706433", "0x7f000001", "0" all reach this
        # machine): only the dotted-quad spelling is one, so nothing reads it
        # as another address than the one checked.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise DidInvalid(
                "a did:web host ending in a number must be a dotted-quad IPv4 address"
            ) from None
    if port is not None and (not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536):
        raise DidInvalid("the did:web port (after %3A) must be a number 1..65535")
    for seg in path:
        if _PATH_SEGMENT_RE.fullmatch(seg) is None or seg in (".", ".."):
            raise DidInvalid("each did:web path segment must be non-empty idchars")
        lowered = seg.lower()
        if "%2f" in lowered or "%5c" in lowered or lowered in ("%2e", "%2e%2e", ".%2e", "%2e."):
            raise DidInvalid("a did:web path segment cannot encode '/', '\\' or dot segments")
    scheme = "http" if allow_http and _is_loopback(host) else "https"
    authority = host if port is None else f"{host}:{port}"
    suffix = "/".join(path) + "/did.json" if path else ".well-known/did.json"
    return f"{scheme}://{authority}/{suffix}"


class Lookup(Protocol):
    """Resolves a host name to IP address texts, for :class:`DidWebDriver`."""

    def __call__(self, host: str, port: int, /) -> Awaitable[Sequence[str]]:
        """The addresses of ``host`` (``port`` is the one to be connected to);
        ``OSError`` when it does not resolve."""
        ...


MAX_ADDRESSES = 8
MAX_DOCUMENT_VALUES = 4096
"""The most values (object members, array items, nested ones included) a did:web
document may hold. A real one holds tens; 256 KiB of ``[{},{},...]`` is about
85,000 and took 5.8 MB of memory once parsed, per document."""
CACHE_MAX_VALUES = 65_536
"""The most values all the documents a :class:`Resolver` caches may hold together
(about 5 MB): documents of strangers' choosing must not fill memory."""


"""Addresses of one did:web host name that are checked and tried, at most."""


async def system_lookup(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` gives for ``host`` (TCP), in its order,
    without repeats. Raises ``OSError`` when the name does not resolve."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]), None)
    return list(seen)


def _is_internal_address(host: str) -> bool:
    """Whether ``host`` names this machine or is an IP address that is not a
    global one (private, loopback, link-local, shared, reserved...): ``localhost``
    and ``*.localhost`` (RFC 6761) count as loopback."""
    lowered = host.lower()
    if lowered == "localhost" or lowered.endswith(".localhost"):
        return True
    try:
        return not ipaddress.ip_address(host).is_global
    except ValueError:
        return False  # another DNS name


class DidWebDriver:
    """The did:web driver: GET the document over HTTPS with httpx.

    ``client``: an ``httpx.AsyncClient`` to reuse (you own and close it; use it for
    did:web fetches only, as its pooled connections are keyed by address, with
    no proxy and HTTP/1.1 only); by default a short-lived client is made per
    resolution, connecting directly (proxy variables are not read).
    ``allow_http``: fetch loopback hosts over plain http (tests only).
    ``timeout_s`` bounds the whole fetch, waiting for a turn included, and
    ``max_bytes`` the document size. Redirects are not followed.

    A did:web names the host the resolver connects to, and strangers name DIDs
    (an invite redeemer names its own): so at most ``max_concurrent`` fetches run
    at a time (per event loop library), and the host must not be this machine or
    an internal address (``did:web:10.0.0.1``, ``did:web:localhost%3A22`` are
    ``DID_NOT_FOUND`` without a connection; with ``allow_http``, loopback is
    allowed; a host ending in a number must be a dotted quad, see
    :func:`did_web_url`). A DNS name is looked up first (``lookup``, by default
    :func:`system_lookup`): if any of its addresses is internal it is refused the
    same way, and the fetch then connects to a checked address (the URL names
    the address; ``Host`` and the TLS server name, checked against the
    certificate, stay the DNS name), so a name cannot answer the check with a
    public address and the connection with an internal one (DNS rebinding).
    """

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        allow_http: bool = False,
        *,
        timeout_s: float = 10.0,
        max_bytes: int = 256 * 1024,
        max_concurrent: int = 4,
        lookup: Lookup = system_lookup,
    ) -> None:
        self._client = client
        self._lookup = lookup
        self._allow_http = allow_http
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._max_concurrent = max_concurrent
        self._limiters: dict[str, anyio.CapacityLimiter] = {}

    async def resolve(self, did: str) -> dict[str, object]:
        """Fetch and parse the document of ``did``.

        Raises :class:`~fedpeer.errors.DidInvalid` (syntax, or the document's ``id``
        is not ``did``) and :class:`~fedpeer.errors.DidNotFound` (non-200 status,
        network error, timeout, body too large, not a JSON object, more than
        :data:`MAX_DOCUMENT_VALUES` values). Network I/O
        bounded by ``timeout_s``; cancellable.
        """
        url = did_web_url(did, allow_http=self._allow_http)
        host = _did_web_parts(did)[0]  # checked by did_web_url
        if _is_internal_address(host) and not (self._allow_http and _is_loopback(host)):
            raise DidNotFound(
                "a did:web host must be a public one; "
                f"{host} is this machine or a private, loopback or reserved address"
            )
        # one limiter per event loop library (an embedder may use asyncio and trio)
        library = sniffio.current_async_library()
        limiter = self._limiters.get(library)
        if limiter is None:
            limiter = self._limiters[library] = anyio.CapacityLimiter(self._max_concurrent)
        body = b""
        with anyio.move_on_after(self._timeout_s) as scope:
            async with limiter:
                targets = await self._checked_targets(url, host)
                if self._client is not None:
                    body = await self._fetch_first(self._client, url, targets)
                else:
                    # direct: through an HTTP(S)_PROXY the checked address would be
                    # the proxy's business (and httpcore's tunnel ignores the TLS name)
                    async with httpx.AsyncClient(trust_env=False) as client:
                        body = await self._fetch_first(client, url, targets)
        if scope.cancelled_caught:
            raise DidNotFound(f"fetching {url} timed out after {self._timeout_s:g} s")
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise DidNotFound(f"{url} did not return JSON; it is not a DID document") from None
        if not isinstance(doc, dict):
            raise DidNotFound(f"{url} did not return a JSON object; it is not a DID document")
        if count_values(doc, MAX_DOCUMENT_VALUES) > MAX_DOCUMENT_VALUES:
            raise DidNotFound(
                f"the document at {url} holds more than {MAX_DOCUMENT_VALUES} values; "
                "a DID document holds a few keys"
            )
        if doc.get("id") != did:
            raise DidInvalid(f"the document at {url} is for another DID; its id must be {did}")
        return doc

    async def _checked_targets(self, url: str, host: str) -> list[str | None]:
        """The addresses to connect to for ``url``: ``[None]`` (connect to the URL's
        host as it is) for an address literal or a loopback name tests allow;
        otherwise the looked-up addresses of the DNS name, every one of them
        public (``DID_NOT_FOUND`` if not, or if the name does not resolve)."""
        if _is_loopback(host) or _is_internal_address(host):
            return [None]  # resolve() let it through: loopback in tests
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)
            return [None]  # a public address literal
        port = httpx.URL(url).port or (443 if url.startswith("https:") else 80)
        try:
            found = list(await self._lookup(host, port))
        except OSError as err:
            raise DidNotFound(f"cannot look up the did:web host {host} ({err})") from err
        addresses: list[str | None] = []
        for text in found[:MAX_ADDRESSES]:
            try:
                address = ipaddress.ip_address(text.partition("%")[0])
            except ValueError:
                raise DidNotFound(f"the did:web host {host} looked up to {text!r}") from None
            if not address.is_global and not (self._allow_http and address.is_loopback):
                raise DidNotFound(
                    "a did:web host must be a public one; "
                    f"{host} resolves to a private, loopback or reserved address"
                )
            addresses.append(str(address))
        if not addresses:
            raise DidNotFound(f"the did:web host {host} has no address")
        return addresses

    async def _fetch_first(
        self, client: httpx.AsyncClient, url: str, targets: Sequence[str | None]
    ) -> bytes:
        """Fetch ``url`` from the first of ``targets`` that takes the connection."""
        for i, target in enumerate(targets):
            try:
                return await self._fetch(client, url, target)
            except DidNotFound as err:
                if i + 1 == len(targets) or not isinstance(err.__cause__, httpx.ConnectError):
                    raise
        raise AssertionError("unreachable: targets is never empty")

    async def _fetch(self, client: httpx.AsyncClient, url: str, address: str | None) -> bytes:
        headers = {"Accept": "application/did+json, application/json"}
        extensions: dict[str, str] = {}
        target = httpx.URL(url)
        if address is not None:
            # connect to the checked address; the server and its certificate
            # still see the DNS name. httpx pools connections by address, not by
            # the name checked: "close" keeps a connection that proved one name
            # from serving a request for another at the same address.
            headers["Host"] = target.netloc.decode("ascii")
            headers["Connection"] = "close"
            if target.scheme == "https":
                extensions["sni_hostname"] = target.host
            target = target.copy_with(host=address)
        try:
            async with client.stream(
                "GET", target, headers=headers, follow_redirects=False, extensions=extensions
            ) as resp:
                if resp.status_code == 404:
                    raise DidNotFound(f"{url} answered 404: no DID document is published there")
                if resp.status_code != 200:
                    raise DidNotFound(f"{url} answered HTTP {resp.status_code}, not a DID document")
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise DidNotFound(
                            f"the document at {url} is larger than {self._max_bytes} bytes"
                        )
                return bytes(body)
        except (httpx.HTTPError, httpx.InvalidURL) as err:
            raise DidNotFound(
                f"cannot fetch {url} ({err.__class__.__name__}); check the host is reachable"
            ) from err


def find_verification_method(document: Mapping[str, object], key_id: str) -> dict[str, object]:
    """The verification method of ``document`` whose id is ``key_id``.

    ``key_id`` is an absolute DID URL (``did:...#frag``); a method may spell its id
    absolutely or relatively (``#frag``). Looks in ``verificationMethod`` and in
    methods embedded in the verification relationships. Raises
    :class:`~fedpeer.errors.KeyUnknown` if there is none. Pure.
    """
    _, sep, fragment = key_id.partition("#")
    if not sep or not fragment:
        raise KeyUnknown("a key id is a DID URL with a fragment, like did:...#key-1")
    relative = "#" + fragment
    candidates: list[object] = []
    vms = document.get("verificationMethod")
    if isinstance(vms, list):
        candidates.extend(vms)
    for rel in _RELATIONSHIPS:
        entries = document.get(rel)
        if isinstance(entries, list):
            candidates.extend(e for e in entries if isinstance(e, dict))
    for vm in candidates:
        if isinstance(vm, dict) and vm.get("id") in (key_id, relative):
            return vm
    raise KeyUnknown("the DID document has no verification method with this key id")


def public_key_from_method(method: Mapping[str, object]) -> bytes:
    """The raw 32-byte Ed25519 key of a verification method.

    Understands ``publicKeyMultibase`` (types ``Multikey`` and
    ``Ed25519VerificationKey2020``; multicodec ed25519-pub), ``publicKeyJwk``
    (``kty`` OKP, ``crv`` Ed25519) and ``publicKeyBase58``
    (``Ed25519VerificationKey2018``). Raises :class:`~fedpeer.errors.KeyUnknown`
    for any other method, malformed key material, or a key that is not a valid,
    non-small-order point. Pure.
    """
    kind = method.get("type")
    raw: bytes | None = None
    try:
        if "publicKeyMultibase" in method and kind in ("Multikey", "Ed25519VerificationKey2020"):
            raw = ed25519_from_multibase(method["publicKeyMultibase"])  # type: ignore[arg-type]
        elif "publicKeyJwk" in method:
            jwk = method["publicKeyJwk"]
            if (
                isinstance(jwk, dict)
                and jwk.get("kty") == "OKP"
                and jwk.get("crv") == "Ed25519"
                and isinstance(jwk.get("x"), str)
            ):
                raw = b64url_decode(jwk["x"])
        elif "publicKeyBase58" in method and kind == "Ed25519VerificationKey2018":
            value = method["publicKeyBase58"]
            if isinstance(value, str) and len(value) <= 64:
                raw = base58btc_decode(value)
    except FedpeerError:
        raw = None
    if raw is None or len(raw) != 32:
        raise KeyUnknown("the verification method is not an Ed25519 public key fedpeer can read")
    if not is_valid_public_key(raw):
        raise KeyUnknown("the verification method's key is not a valid Ed25519 point")
    return raw


class Resolver:
    """DID resolver: method drivers plus a TTL cache.

    ``drivers`` maps method names to drivers. ``None`` (the default) registers
    :class:`DidKeyDriver` for ``key`` and a default :class:`DidWebDriver` (https
    only) for ``web``; a mapping registers ``key`` plus exactly the given drivers
    (which may replace ``key``). ``cache_ttl_s`` (0 disables caching),
    ``cache_size`` entries at most, holding :data:`CACHE_MAX_VALUES` values at
    most together (least recently used evicted), ``clock`` a monotonic clock in
    seconds (inject one in tests).
    """

    def __init__(
        self,
        drivers: Mapping[str, DidDriver] | None = None,
        *,
        cache_ttl_s: float = 300.0,
        cache_size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = cache_ttl_s
        self._cache_size = cache_size
        self._clock = clock
        # did -> (expiry, document, its values): the values of all add up to
        # CACHE_MAX_VALUES at most (_cache_values)
        self._cache: OrderedDict[str, tuple[float, dict[str, object], int]] = OrderedDict()
        self._cache_values = 0
        self._drivers: dict[str, DidDriver] = {"key": DidKeyDriver()}
        if drivers is None:
            self._drivers["web"] = DidWebDriver()
        else:
            for method, driver in drivers.items():
                self.register(method, driver)

    def register(self, method: str, driver: DidDriver) -> None:
        """Use ``driver`` for DIDs ``did:<method>:...`` (replacing any earlier one).

        ``method`` is the bare method name (``"web"``), lower-case letters and digits.
        """
        if METHOD_RE.fullmatch(method) is None:
            raise DidInvalid("a DID method name is lower-case letters and digits, like 'web'")
        self._drivers[method] = driver
        for did in [d for d in self._cache if d.startswith(f"did:{method}:")]:
            self._forget(did)

    @property
    def methods(self) -> tuple[str, ...]:
        """The registered method names, sorted."""
        return tuple(sorted(self._drivers))

    def clear_cache(self) -> None:
        """Forget every cached document."""
        self._cache.clear()
        self._cache_values = 0

    def _forget(self, did: str) -> None:
        self._cache_values -= self._cache.pop(did)[2]

    async def _resolve_shared(self, did: str) -> dict[str, object]:
        if not isinstance(did, str) or len(did) > MAX_DID_LEN:
            raise DidInvalid("a DID is a string like did:key:z6Mk...")
        if not is_did(did):
            raise DidInvalid("not a valid DID (did:<method>:<id>, no path, query or fragment)")
        method = did.split(":", 2)[1]
        cached = self._cache.get(did)
        if cached is not None:
            if self._clock() < cached[0]:
                self._cache.move_to_end(did)
                return cached[1]
            self._forget(did)
        driver = self._drivers.get(method)
        if driver is None:
            raise DidMethodUnsupported(
                f"no resolver for did:{method}; supported: "
                + ", ".join(f"did:{x}" for x in self.methods)
            )
        doc = await driver.resolve(did)
        if not isinstance(doc, dict) or doc.get("id") != did:
            raise DidInvalid(f"the resolved document is for another DID; its id must be {did}")
        values = count_values(doc, CACHE_MAX_VALUES)
        if self._ttl > 0 and values <= CACHE_MAX_VALUES:
            if did in self._cache:  # resolved twice at once: keep one
                self._forget(did)
            self._cache[did] = (self._clock() + self._ttl, doc, values)
            self._cache_values += values
            while len(self._cache) > self._cache_size or self._cache_values > CACHE_MAX_VALUES:
                self._forget(next(iter(self._cache)))
        return doc

    async def resolve(self, did: str) -> dict[str, object]:
        """The DID document of ``did`` (a fresh copy, safe to mutate).

        Served from the cache while younger than ``cache_ttl_s``. Raises
        :class:`~fedpeer.errors.DidInvalid`,
        :class:`~fedpeer.errors.DidMethodUnsupported`,
        :class:`~fedpeer.errors.DidNotFound`. May do network I/O through a driver;
        cancellable (a cancelled resolution caches nothing).
        """
        return copy.deepcopy(await self._resolve_shared(did))

    async def public_key_for(self, key_id: str) -> bytes:
        """The raw Ed25519 public key named by the DID URL ``key_id`` (``did:...#frag``).

        Resolves the DID (errors as :meth:`resolve`), finds the verification method
        by absolute or relative id and reads its key (see
        :func:`public_key_from_method`). Raises :class:`~fedpeer.errors.KeyUnknown`
        if ``key_id`` has no fragment, no such method exists, or its key is not a
        usable Ed25519 key.
        """
        if not isinstance(key_id, str):
            raise KeyUnknown("a key id is a DID URL string")
        did, sep, fragment = key_id.partition("#")
        if not sep or not fragment:
            raise KeyUnknown("a key id is a DID URL with a fragment, like did:...#key-1")
        doc = await self._resolve_shared(did)
        return public_key_from_method(find_verification_method(doc, key_id))
