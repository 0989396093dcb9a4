"""What every service of a node shares: identity, store, config, limits, URLs, the
HTTP client for peers, the DID resolver and the signed manifest.

:class:`NodeCore` is plain state plus the few operations that more than one
service needs (the consent revision the manifest shows, the signed manifest
itself). It imports nothing from the HTTP edge (routes, app) or the node runner.
"""

from __future__ import annotations

import anyio
import attrs
import httpx

from ..._clock import now_ms
from ...consent import grants as grants_mod
from ...errors import InvalidRequest
from ...identity.keys import SigningKey
from ...identity.resolver import Resolver
from ...store.base import Store
from ...sync.records import DEFAULT_LIMITS, Limits
from .._config import NodeConfig
from ..manifest import ManifestSigner, capabilities, federation_body
from ..tls import TlsIdentity

__all__ = ["NodeCore", "lifetime_ms"]


def lifetime_ms(ttl_s: object, what: str = "ttl_s") -> int | None:
    """A lifetime given in whole seconds (None: none) as ms; INVALID_REQUEST otherwise."""
    if ttl_s is None:
        return None
    if not isinstance(ttl_s, int) or isinstance(ttl_s, bool) or ttl_s <= 0:
        raise InvalidRequest(f"{what} must be a positive whole number of seconds")
    return ttl_s * 1000


@attrs.define(eq=False)
class NodeCore:
    """The shared context of one node's services.

    ``urls`` are the URLs the node serves at (filled in once it listens; empty
    for an app that is not served). ``http`` is the one client the node uses to
    talk to other nodes (None: the services that need it refuse with
    INTERNAL_ERROR). ``tls`` is the served certificate (None: plain HTTP).
    ``closing`` is set when the node shuts down, so long waits
    (longpolls, streams) end at once.
    """

    key: SigningKey
    store: Store
    config: NodeConfig = attrs.field(factory=NodeConfig)
    limits: Limits = DEFAULT_LIMITS
    urls: list[str] = attrs.field(factory=list)
    http: httpx.AsyncClient | None = None
    closing: anyio.Event = attrs.field(factory=anyio.Event)
    consent_revision: int = 0
    tls: TlsIdentity | None = None
    _resolver: Resolver | None = None
    _signer: ManifestSigner | None = None

    @property
    def did(self) -> str:
        """This node's did:key."""
        return self.key.did

    @property
    def resolver(self) -> Resolver:
        """The DID resolver for federated invite holders (did:key offline, did:web
        over https), created on first use."""
        if self._resolver is None:
            self._resolver = Resolver()
        return self._resolver

    @property
    def signer(self) -> ManifestSigner:
        """Signs the federation manifest and keeps the signed copy until it ages."""
        if self._signer is None:
            cfg = self.config
            self._signer = ManifestSigner(self.key, cfg.manifest_ttl_s, cfg.manifest_resign_after_s)
        return self._signer

    def now_ms(self) -> int:
        """The wall clock in ms (one place, so a test can see every use)."""
        return now_ms()

    async def refresh_consent_revision(self) -> int:
        """Read the committed consent revision (store meta) into
        :attr:`consent_revision`, which the manifest shows; return it."""
        self.consent_revision = await grants_mod.load_revision(self.store)
        return self.consent_revision

    def capabilities(self) -> dict[str, object]:
        """The capabilities manifest (unsigned)."""
        return capabilities(
            did=self.did,
            max_record_bytes=self.limits.max_record_bytes,
            page_limit_max=self.config.page_limit_max,
        )

    def manifest_body(self) -> dict[str, object]:
        """The federation manifest before signing."""
        cfg = self.config
        consent = {
            "posture": "grants-required" if cfg.auth_enabled else "auth-disabled",
            "revision": self.consent_revision,
        }
        return federation_body(
            did=self.did,
            handle=cfg.handle,
            urls=self.urls,
            namespaces=list(cfg.advertised_namespaces),
            consent=consent,
            tls_pins=self.tls.pins if self.tls is not None else (),
        )

    async def signed_manifest(self) -> dict[str, object]:
        """The signed federation manifest, re-signed when its content (e.g. the
        consent revision after a grant change) changed or it aged."""
        await self.refresh_consent_revision()
        return self.signer.current(self.manifest_body())
