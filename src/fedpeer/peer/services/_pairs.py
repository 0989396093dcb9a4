"""Sync pairs of this node (``node.pairs``): create (verified), pair from an invite
(both ways), the issuer's reverse pair, and the running pairs' state and health.

"Target pulls from source": a pair lives on the node that pulls. Creating one
refuses this node's own URL or DID (PAIR_SELF), fetches the peer's manifest and
verifies it (signature, expiry, and the DID when the caller named one), then
hands it to the :class:`~fedpeer.sync.PairManager`, which persists it and runs
its puller.

Pairing from one invite (:meth:`PairService.from_invite`), the redeemer's side:

1. read the invite URL and fetch the issuer's signed invite preview (the
   issuer's manifest must be signed by the DID in the URL: a LAN impostor
   cannot take the redemption);
2. when two-way, mint on this node a read-only account and a grant for the
   issuer DID, mirroring the invite's read scopes and target: the *reciprocal*
   credential;
3. redeem (federated: prove our DID) and hand over the reciprocal credential
   with our reachable URL;
4. create the local pair "pull from the issuer".

The issuer (:meth:`PairService.reverse_after_redeem`, called by the invite
service), on a federated redemption carrying a reciprocal credential, creates
the reverse pair after checking that the URL it was given serves a manifest
signed by the holder DID it just verified. Both sides show the same
confirmation code.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Iterable

import anyio
import attrs
import httpx

from ...consent import grants as _grants
from ...consent import tokens as _tokens
from ...consent.invites import (
    RECIPROCAL_TABLE,
    Credential,
    check_invite_preview,
    parse_invite_url,
    revoke_credential,
)
from ...consent.scopes import RECORDS_READ, SYNC_READ
from ...errors import (
    DidMismatch,
    FedpeerError,
    InternalError,
    InvalidRequest,
    PageTooLarge,
    PairNotFound,
    PairSelf,
    PeerInvalid,
    PeerTooSlow,
    PeerUnreachable,
    RedirectRefused,
    TlsPinMismatch,
)
from ...store.base import StateTx
from ...sync.manager import PairManager, next_try_s
from ...sync.options import Listener, SyncOptions
from ...sync.pairs import Pair, PairFilter, PairState
from .._pairing import _is_local_host, host_port, is_own_url
from .._pinning import check_peer
from .._unpair import (
    PAIR_CREDENTIALS_TABLE,
    build_unpair_request,
    check_unpair_request,
    check_unused,
    forget_peer,
    known_peer,
    remember_nonce,
)
from ..addresses import reachable_url
from ..client import PeerClient
from ._core import NodeCore
from ._views import PairingResult, PairStatus, UnpairResult

__all__ = ["InvitePairing", "PairService", "filter_for_target"]

log = logging.getLogger("fedpeer.pairing")

READ_SCOPES = (RECORDS_READ, SYNC_READ)
MANIFEST_TIMEOUT_S = 10.0


@attrs.frozen
class InvitePairing:
    """What pairing from an invite did (in-process: with the credential).

    ``pair`` is the local pair (pulling from the issuer), ``created`` False when
    it existed (its credential was then replaced and the pair resumed).
    ``reverse`` is the issuer's report on the pair back to us (``{"id",
    "created"}``, ``{"error": {code, message}}``, or None when one-way).
    """

    pair: Pair
    created: bool
    credential: Credential
    confirmation_code: str
    two_way: bool
    reciprocal_url: str | None
    reverse: dict[str, object] | None


def filter_for_target(target: _grants.Target) -> PairFilter | None:
    """The pair filter matching an invite's scope target (None: everything)."""
    if target.type == "namespace":
        return PairFilter(namespace=target.value)
    if target.type == "thread":
        return PairFilter(namespace=target.namespace, thread=target.value)
    return None


class PairService:
    """The node's sync pairs. In-process methods hand back live :class:`Pair`
    values (which hold the credential); :meth:`status` / :meth:`statuses` give the
    public :class:`PairStatus` the HTTP API shows."""

    def __init__(self, core: NodeCore, manager: PairManager) -> None:
        self._core = core
        self._manager = manager

    @property
    def manager(self) -> PairManager:
        """The :class:`~fedpeer.sync.PairManager` running the pullers."""
        return self._manager

    @property
    def options(self) -> SyncOptions:
        """How the pullers behave."""
        return self._manager.options

    def _http(self) -> httpx.AsyncClient:
        if self._core.http is None:
            raise InternalError("this node has no HTTP client for peers")
        return self._core.http

    def _require_secure(self, url: str) -> None:
        """Refuse plain HTTP to a peer off loopback unless the node allows it
        (``insecure_http``): the bearer or invite secret would cross the network
        in clear and the peer's DID could not be bound to the connection."""
        parts = host_port(url)
        if (
            url.lower().startswith("http://")
            and parts is not None
            and not _is_local_host(parts[0])
            and not self._core.config.insecure_http
        ):
            raise InvalidRequest(
                f"{url} is plain HTTP on the network: the credential would travel readable "
                "and unbound to the peer's DID. Use the peer's https:// URL (what `fedpeer "
                "run` serves by default), or run both nodes with --insecure-http"
            )

    # --- creating ---

    async def create(
        self,
        peer_url: str,
        *,
        token: str | None = None,
        peer_did: str | None = None,
        filter: PairFilter | None = None,
        author_allowlist: Iterable[str] | None = None,
    ) -> tuple[Pair, bool]:
        """Verify the peer at ``peer_url`` and pull from it (showing it ``token``).

        Returns ``(pair, created)``: the same peer and filter again gives the
        existing pair unchanged (``created`` False). Raises PAIR_SELF when the URL
        or the manifest's DID is this node; INVALID_REQUEST for a URL that is not
        http(s) or cannot be requested; PEER_UNREACHABLE; DID_MISMATCH when the
        manifest is signed by another DID than ``peer_did``; TLS_PIN_MISMATCH when an
        https peer's certificate is not the one its signed manifest pins (§6.6);
        INVALID_REQUEST for plain HTTP off loopback without ``insecure_http``;
        PEER_INVALID when the
        peer does not serve a valid fedpeer manifest; DID_INVALID. Blocks on one
        HTTP request (at most 10 s).
        """
        return await self._create(
            peer_url,
            token=token,
            peer_did=peer_did,
            filter=filter,
            author_allowlist=author_allowlist,
            origin="owner",
        )

    async def _create(
        self,
        peer_url: str,
        *,
        token: str | None,
        peer_did: str | None,
        filter: PairFilter | None,
        author_allowlist: Iterable[str] | None,
        origin: str,
    ) -> tuple[Pair, bool]:
        """:meth:`create`, for a pair that ``origin`` set up (``Pair.origin``)."""
        local = self._core.did
        if peer_did is not None and peer_did == local:
            raise PairSelf(
                f"peer_did is this node's own DID ({local}): a node cannot pull from itself. "
                "Use the other node's DID and URL."
            )
        parts = host_port(peer_url) if isinstance(peer_url, str) else None
        if parts is None or not peer_url.lower().startswith(("http://", "https://")):
            raise InvalidRequest(
                f"peer_url must be an http:// or https:// URL, got {peer_url!r:.120}"
            )
        if is_own_url(peer_url, self._core.urls):
            raise PairSelf(
                f"{peer_url} is this node's own address: a node cannot pull from itself. "
                "Use the other node's URL (check the invite or the address you typed)."
            )
        self._require_secure(peer_url)
        try:
            verified = await check_peer(
                self._http(), peer_url, peer_did, timeout=MANIFEST_TIMEOUT_S
            )
        except (
            PeerUnreachable,
            DidMismatch,
            TlsPinMismatch,
            PageTooLarge,
            PeerTooSlow,
            RedirectRefused,
        ):
            raise  # identity, or the peer's bounded read failed: say how, do not call it invalid
        except FedpeerError as err:
            raise PeerInvalid(
                f"{peer_url} did not serve a valid fedpeer manifest ({err.code}: {err.message}); "
                "check the URL"
            ) from None
        except (httpx.InvalidURL, httpx.HTTPError, UnicodeError, ValueError) as exc:
            raise InvalidRequest(f"peer_url {peer_url!r:.120} cannot be requested: {exc}") from None
        if verified.did == local:
            raise PairSelf(
                f"{peer_url} is this node ({local}): a node cannot pull from itself. "
                "Use the other node's URL."
            )
        self._manager.wake(verified.did, reason="manifest")
        return await self._manager.create(
            peer_did=verified.did,
            peer_url=peer_url,
            credential=token,
            filter=filter,
            author_allowlist=author_allowlist,
            origin=origin,
        )

    async def from_invite(
        self, invite_url: str, *, bidirectional: bool = True, label: str | None = None
    ) -> InvitePairing:
        """Redeem another node's invite and set up sync with it (see the module doc).

        Raises MALFORMED (not an invite URL), PAIR_SELF (our own invite),
        DID_MISMATCH (the node at the URL is not the issuer), the issuer's invite
        errors (INVITE_EXPIRED, INVITE_EXHAUSTED, INVITE_REVOKED,
        INVITE_SECRET_INVALID, HOLDER_TYPE_MISMATCH, ...), INVALID_REQUEST when the
        invite does not grant sync:read or two-way is asked but this node is not
        reachable from the issuer, and PEER_UNREACHABLE. Whatever was minted for a
        failed redemption is removed. Blocks on a few HTTP requests.
        """
        core = self._core
        invite = parse_invite_url(invite_url)
        if invite.issuer_did == core.did:
            raise PairSelf("this is this node's own invite; redeem it on the other device")
        http = self._http()
        self._require_secure(invite.node_url)
        await check_peer(
            http,
            invite.node_url,
            invite.issuer_did,
            oob_pins=[invite.pin] if invite.pin else (),
            timeout=MANIFEST_TIMEOUT_S,
        )
        async with PeerClient(invite.node_url, client=http, limits=core.limits) as issuer:
            doc = check_invite_preview(
                await issuer.get_value(f"/v1/invites/{invite.invite_id}"), invite
            )
        target = _grants.parse_target(doc.get("scope_target", {"type": "instance"}))
        raw_scopes = doc.get("scopes", [])
        offered = set(raw_scopes) if isinstance(raw_scopes, list) else set()
        if not {SYNC_READ, "admin"} & offered:
            raise InvalidRequest(
                f"this invite grants {', '.join(sorted(map(str, offered))) or 'nothing'}, not "
                "sync:read, so there is nothing to pull: ask for an invite with the reader preset"
            )
        back = [s for s in READ_SCOPES if s in offered or "admin" in offered] or list(READ_SCOPES)
        if SYNC_READ not in back:
            back.append(SYNC_READ)

        reciprocal: dict[str, object] | None = None
        minted: tuple[str, str] | None = None
        if bidirectional:
            my_url = reachable_url(core.urls, invite.node_url)
            name = f"pair {invite.issuer_did[-8:]} (invite {invite.invite_id[:8]})"

            def mint(tx: StateTx) -> tuple[str, str, str]:
                sa, issued = _tokens.create_service_account(
                    tx, name=name, holder_did=invite.issuer_did, scopes=back, origin="api"
                )
                grant = _grants.create_grant(
                    tx, grantee_did=invite.issuer_did, target=target, scopes=back, sa_id=sa.id
                )
                return sa.id, grant.id, issued.bearer

            sa_id, grant_id, bearer = await core.store.transact(mint)
            minted = (sa_id, grant_id)
            reciprocal = {"token": bearer, "scopes": back, "url": my_url}
        try:
            async with PeerClient(invite.node_url, client=http) as issuer:
                credential, answer = await issuer.redeem_with_answer(
                    invite_url, holder_key=core.key, label=label, reciprocal=reciprocal
                )
        except BaseException:
            if minted is not None:
                with anyio.CancelScope(shield=True):
                    await self._undo_mint(minted[0])
            raise
        if minted is not None:
            # Pairing again replaces the credential the issuer held for us: one active.
            # Shielded: the issuer now holds the new one, so a cancellation here must
            # not leave the old one active beside it.
            with anyio.CancelScope(shield=True):
                await self._replace_pair_credential(invite.issuer_did, *minted)
        pair, created = await self.create(
            credential.peer_url,
            token=credential.token,
            peer_did=credential.peer_did,
            filter=filter_for_target(credential.scope_target),
        )
        if not created:
            pair = await self._refresh(pair, credential.token)
        reverse = answer.get("reverse_pair")
        return InvitePairing(
            pair=pair,
            created=created,
            credential=credential,
            confirmation_code=credential.confirmation_code,
            two_way=reciprocal is not None,
            reciprocal_url=None if reciprocal is None else str(reciprocal["url"]),
            reverse=dict(reverse) if isinstance(reverse, dict) else None,
        )

    def pairing_result(self, result: InvitePairing) -> PairingResult:
        """The public view of a pairing (what ``POST /v1/sync/pairs/from-invite`` answers)."""
        cred = result.credential
        return PairingResult(
            pair=self.status(result.pair.id),
            created=result.created,
            confirmation_code=result.confirmation_code,
            issuer_did=cred.peer_did,
            issuer_url=cred.peer_url,
            invite_id=cred.invite_id,
            scopes=tuple(sorted(cred.scopes)),
            two_way=result.two_way,
            reciprocal_url=result.reciprocal_url,
            reverse_pair=result.reverse,
        )

    async def _refresh(self, pair: Pair, token: str) -> Pair:
        """An existing pair takes the new credential and runs again if it had stopped."""
        pair = await self._manager.set_credential(pair.id, token)
        if pair.state in (PairState.STOPPED, PairState.PAUSED):
            pair = await self._manager.resume(pair.id)
        return pair

    async def _replace_pair_credential(self, peer_did: str, sa_id: str, grant_id: str) -> None:
        """Remember ``sa_id`` as the credential ``peer_did`` holds for pulling from us,
        revoking the one an earlier pairing minted (never two active)."""
        now = self._core.now_ms()

        def swap(tx: StateTx) -> None:
            old = tx.get(PAIR_CREDENTIALS_TABLE, peer_did)
            old_sa = None if old is None else old.get("sa_id")
            if isinstance(old_sa, str) and old_sa != sa_id:
                revoke_credential(tx, old_sa, now_ms=now)
            tx.put(PAIR_CREDENTIALS_TABLE, peer_did, {"sa_id": sa_id, "grant_id": grant_id})

        await self._core.store.transact(swap)

    # --- unpairing (protocol.md §11.3) ---

    async def unpair(self, pair_or_did: str, *, notify: bool = True) -> UnpairResult:
        """Forget a peer, on both sides: ``pair_or_did`` is one of this node's pair
        ids or a peer DID.

        Revokes every credential the peer holds on this node (its tokens stop
        working at once) and the grants bound to them, stops and deletes the local
        pairs pulling from the peer (the records they pulled stay), then
        (``notify``) sends the peer a signed request (``POST /v1/sync/unpair``) to
        do the same and drop its pairs pulling from us. The peer's answer, or why
        it could not be asked (PEER_UNREACHABLE...), is in
        :attr:`UnpairResult.peer`: this side is unpaired either way (also when the
        call is cancelled while the peer is asked).

        Raises PAIR_NOT_FOUND when ``pair_or_did`` is neither a pair id nor a DID
        this node has a pair or a credential for; PAIR_SELF for this node's DID.
        Blocks on at most one HTTP request (10 s).
        """
        if not isinstance(pair_or_did, str) or not pair_or_did:
            raise InvalidRequest("name a pair id or a peer DID")
        if pair_or_did == self._core.did:
            raise PairSelf("that is this node's own DID: name the peer's DID or a pair id")
        pairs = self._manager.list()
        by_id = [p for p in pairs if p.id == pair_or_did]
        peer_did = by_id[0].peer_did if by_id else pair_or_did
        mine = [p for p in pairs if p.peer_did == peer_did]
        urls = [p.peer_url for p in mine]
        if not mine:
            if not await self._core.store.transact(lambda tx: known_peer(tx, peer_did)):
                raise PairNotFound(
                    f"no pair {pair_or_did!r:.90} and no peer with that DID here; list pairs "
                    "and their peers with `fedpeer pairs`"
                )
            reciprocal = await self._core.store.get_state(RECIPROCAL_TABLE, peer_did)
            if reciprocal is not None and isinstance(reciprocal.get("url"), str):
                urls.append(str(reciprocal["url"]))
        now = self._core.now_ms()
        revoked = await self._core.store.transact(lambda tx: forget_peer(tx, peer_did, now_ms=now))
        # This side is done before the peer is asked: a slow or cancelled request
        # to the peer never leaves our pairs running with the credentials revoked.
        deleted = await self._delete_pairs(mine)
        peer: dict[str, object]
        if not notify:
            peer = {"asked": False}
        elif not urls:
            peer = {
                "error": {
                    "code": "PEER_UNREACHABLE",
                    "message": "no known URL for the peer: run `fedpeer unpair "
                    f"{self._core.did}` on the other device too",
                }
            }
        else:
            peer = await self._ask_peer_to_unpair(peer_did, urls[0])
        log.info(
            "unpaired %s: pairs %s deleted, credentials %s revoked", peer_did, deleted, revoked
        )
        return UnpairResult(
            peer_did=peer_did,
            pairs_deleted=tuple(deleted),
            credentials_revoked=tuple(revoked),
            peer=peer,
        )

    async def _ask_peer_to_unpair(self, peer_did: str, url: str) -> dict[str, object]:
        request = build_unpair_request(self._core.key, peer_did)
        try:
            async with PeerClient(
                url, client=self._http(), timeout=MANIFEST_TIMEOUT_S, limits=self._core.limits
            ) as peer:
                answer = await peer.post_value("/v1/sync/unpair", request)
        except FedpeerError as err:
            log.warning("could not ask %s at %s to unpair: %s", peer_did, url, err)
            return {
                "error": {
                    "code": err.code,
                    "message": f"{err.message}; run `fedpeer unpair {self._core.did}` on the "
                    "other device",
                }
            }
        return dict(answer) if isinstance(answer, dict) else {"answer": answer}

    async def unpaired_by_peer(self, request: object) -> dict[str, object]:
        """The receiving side of protocol.md §11.3: check the signed request, then
        revoke what the sender holds here and delete the pairs pulling from it.

        Returns ``{"pairs_deleted": [...], "credentials_revoked": [...]}``. Raises
        INVALID_REQUEST, DID_INVALID, the signature errors of §4.4 and
        PROOF_REPLAYED; nothing changes then. A request from a DID this node
        neither pulls from nor holds credentials for changes nothing and stores
        nothing (not even its nonce: strangers cannot grow the store).
        """
        sender, nonce, expires_ms = check_unpair_request(request, local_did=self._core.did)
        now = self._core.now_ms()
        pulling = any(p.peer_did == sender for p in self._manager.list())

        def apply(tx: StateTx) -> builtins.list[str]:
            check_unused(tx, sender, nonce)
            if not pulling and not known_peer(tx, sender):
                return []
            remember_nonce(tx, sender, nonce, expires_ms, now)
            return forget_peer(tx, sender, now_ms=now)

        revoked = await self._core.store.transact(apply)
        deleted = await self._delete_pairs(p for p in self._manager.list() if p.peer_did == sender)
        log.info("%s unpaired from us: pairs %s deleted, credentials %s revoked",
                 sender, deleted, revoked)  # fmt: skip
        return {"pairs_deleted": deleted, "credentials_revoked": revoked}

    async def _delete_pairs(self, pairs: Iterable[Pair]) -> builtins.list[str]:
        """Delete ``pairs``; the ids of those deleted (one already gone is skipped)."""
        deleted: builtins.list[str] = []
        for p in pairs:
            try:
                await self._manager.delete(p.id)
            except PairNotFound:
                continue
            deleted.append(p.id)
        return deleted

    async def _undo_mint(self, sa_id: str) -> None:
        try:
            await self._core.store.transact(lambda tx: revoke_credential(tx, sa_id))
        except FedpeerError as err:
            log.warning("could not remove the reciprocal credential %s: %s", sa_id, err)

    async def reverse_after_redeem(
        self, *, holder_did: str, url: str, token: str, target: _grants.Target
    ) -> dict[str, object]:
        """Issuer side of a two-way pairing: pull back from the redeemer with the
        reciprocal credential.

        :meth:`create` verifies that ``url`` serves a manifest signed by
        ``holder_did`` (the DID the redemption proved), so a redeemer cannot point
        the issuer at a third node. Never raises a FedpeerError: a failure is
        returned as ``{"error": {code, message}}`` (the redemption itself stands;
        the redeemer can still pull) and logged.
        """
        try:
            # a pull set up by someone else: what it may store is bounded
            # (SyncOptions.redeem_quota_*)
            pair, created = await self._create(
                url,
                token=token,
                peer_did=holder_did,
                filter=filter_for_target(target),
                author_allowlist=None,
                origin="redeem",
            )
            if not created:
                pair = await self._refresh(pair, token)
        except FedpeerError as err:
            log.warning("reverse pair to %s at %s failed: %s", holder_did, url, err)
            return {"error": {"code": err.code, "message": err.message}}
        log.info("reverse pair %s to %s created=%s", pair.id, holder_did, created)
        return {"id": pair.id, "created": created}

    # --- the running pairs ---

    def list(self) -> builtins.list[Pair]:
        """Every pair, by creation time then id."""
        return self._manager.list()

    def get(self, pair_id: str) -> Pair:
        """The pair ``pair_id`` (PAIR_NOT_FOUND)."""
        return self._manager.get(pair_id)

    def status(self, pair_id: str) -> PairStatus:
        """The public view of a pair: no credential; stats snapshot; lag."""
        puller = self._manager.puller(pair_id)
        now = self._core.now_ms()
        return PairStatus.of(
            puller.pair, puller.lag(now), now, next_try_s=next_try_s(puller.next_try_ms, now)
        )

    def statuses(self) -> builtins.list[PairStatus]:
        """:meth:`status` of every pair."""
        return [self.status(p.id) for p in self._manager.list()]

    async def pause(self, pair_id: str) -> Pair:
        """Pause a pair (a request in flight is abandoned). PAIR_STATE_INVALID."""
        return await self._manager.pause(pair_id)

    async def resume(self, pair_id: str) -> Pair:
        """Resume a paused or stopped pair (retries reset)."""
        return await self._manager.resume(pair_id)

    async def kick(self, pair_id: str) -> Pair:
        """Poll now: cut a backoff short, restart a longpoll (retries reset)."""
        return await self._manager.kick(pair_id)

    async def delete(self, pair_id: str) -> Pair:
        """Delete a pair: its row goes, the records it pulled stay."""
        return await self._manager.delete(pair_id)

    async def set_credential(self, pair_id: str, credential: str | None) -> Pair:
        """Replace the bearer token shown to the peer (a stopped pair then needs resume)."""
        return await self._manager.set_credential(pair_id, credential)

    def stats(self, pair_id: str) -> dict[str, object]:
        """A pair's counters, rolling rate, latency histogram, errors, backoff, lag."""
        return self._manager.stats(pair_id)

    def health(self) -> dict[str, object]:
        """Sync health over every pair (see :meth:`PairManager.health`)."""
        return self._manager.health()

    async def health_summary(self) -> dict[str, object]:
        """The short form shown by ``/health``."""
        return await self._manager.health_summary()

    async def wait_for(self, pair_id: str, predicate: Callable[[Pair], bool]) -> Pair:
        """Block until ``predicate(pair)`` holds (no polling); bound it with
        ``anyio.fail_after``. PAIR_NOT_FOUND."""
        return await self._manager.wait_for(pair_id, predicate)

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` after each persisted pair change; returns an
        unsubscribe function."""
        return self._manager.add_listener(listener)
