"""What the HTTP routes share: the node's services and the edge's own state.

:class:`AppState` is typed (no grab bag): the routes reach the application
layer through its service attributes, plus the rate limiter and the mDNS
discovery the edge reports on.
"""

from __future__ import annotations

import anyio
import attrs

from ..consent.ratelimit import RateLimiter
from ..store.base import Store
from ..sync.records import Limits
from ._config import NodeConfig
from .discovery import Discovery
from .manifest import ManifestSigner
from .services import (
    GrantService,
    InviteService,
    NodeCore,
    PairService,
    RecordService,
    TokenService,
)

__all__ = ["AppState"]


@attrs.define(eq=False)
class AppState:
    """The node as the routes see it.

    ``pairs`` is None for an app without sync (then the pair routes answer
    INTERNAL_ERROR); ``discovery`` is the running mDNS discovery or None.
    """

    core: NodeCore
    records: RecordService
    grants: GrantService
    tokens: TokenService
    invites: InviteService
    rate_limiter: RateLimiter
    pairs: PairService | None = None
    discovery: Discovery | None = None

    @classmethod
    def create(cls, core: NodeCore, *, pairs: PairService | None = None) -> AppState:
        """The services of ``core`` (and ``pairs``, when sync runs)."""
        grants = GrantService(core)
        return cls(
            core=core,
            records=RecordService(core),
            grants=grants,
            tokens=TokenService(core),
            invites=InviteService(core, pairs),
            rate_limiter=RateLimiter(core.config.rate_per_s, core.config.rate_burst),
            pairs=pairs,
        )

    def peer_seen(self, did: str, reason: str) -> None:
        """``did`` reached us (an authenticated request, a verified announcement):
        wake its failing pairs (:meth:`~fedpeer.sync.PairManager.wake`). Never blocks."""
        if self.pairs is not None and did != self.core.did:
            self.pairs.manager.wake(did, reason=reason)

    @property
    def did(self) -> str:
        """The node's DID."""
        return self.core.did

    @property
    def store(self) -> Store:
        """The node's store."""
        return self.core.store

    @property
    def config(self) -> NodeConfig:
        """The node's configuration."""
        return self.core.config

    @property
    def limits(self) -> Limits:
        """The record limits."""
        return self.core.limits

    @property
    def urls(self) -> list[str]:
        """The URLs the node serves at."""
        return self.core.urls

    @property
    def signer(self) -> ManifestSigner:
        """Signs the federation manifest (re-signs when it changes or ages)."""
        return self.core.signer

    @property
    def closing(self) -> anyio.Event:
        """Set when the node shuts down (long waits end at once)."""
        return self.core.closing
