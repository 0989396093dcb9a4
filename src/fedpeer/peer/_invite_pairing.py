"""Pairing from one invite, both ways.

The redeemer (:func:`pair_from_invite`):

1. reads the invite URL and fetches the issuer's signed invite preview (the
   issuer's manifest must be signed by the DID in the URL: a LAN impostor
   cannot take the redemption);
2. when two-way, mints on its own node a read-only account and a grant for the
   issuer DID, mirroring the invite's read scopes and target: the *reciprocal*
   credential;
3. redeems (federated: it proves its DID) and hands over the reciprocal
   credential with its own reachable URL;
4. creates the local pair "pull from the issuer".

The issuer (:func:`reverse_pair_after_redeem`), on a federated redemption that
carries a reciprocal credential, creates the reverse pair "pull from the
redeemer" after checking that the URL it was given serves a manifest signed by
the holder DID it just verified. So one invite gives sync both ways, and both
sides show the same short confirmation code.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs
import trio

from .._netutil import reachable_url
from ..consent import grants as _grants
from ..consent import tokens as _tokens
from ..consent.invites import Credential, check_invite_preview, parse_invite_url
from ..consent.scopes import RECORDS_READ, SYNC_READ
from ..errors import FedpeerError, InvalidRequest, PairSelf
from ..store.base import StateTx
from ..sync.pairs import Pair, PairFilter, PairState
from .client import PeerClient

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("fedpeer.pairing")

READ_SCOPES = (RECORDS_READ, SYNC_READ)


@attrs.frozen
class InvitePairing:
    """What pairing from an invite did.

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


async def pair_from_invite(
    node: Node,
    invite_url: str,
    *,
    bidirectional: bool = True,
    label: str | None = None,
) -> InvitePairing:
    """Redeem ``invite_url`` as ``node`` and set up the pair(s); see the module doc.

    Raises MALFORMED (not an invite URL), PAIR_SELF (our own invite),
    DID_MISMATCH (the node at the URL is not the issuer), the issuer's invite
    errors (INVITE_EXPIRED, INVITE_EXHAUSTED, INVITE_REVOKED,
    INVITE_SECRET_INVALID, HOLDER_TYPE_MISMATCH, ...), INVALID_REQUEST when
    two-way is asked but this node is not reachable from the issuer, and
    PEER_UNREACHABLE. Whatever was minted for a failed redemption is removed.
    """
    invite = parse_invite_url(invite_url)
    if invite.issuer_did == node.did:
        raise PairSelf("this is this node's own invite; redeem it on the other device")
    async with PeerClient(invite.node_url, client=node.http, limits=node.state.limits) as issuer:
        await issuer.manifest(expected_did=invite.issuer_did)
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
        my_url = reachable_url(node.urls, invite.node_url)
        name = f"pair {invite.issuer_did[-8:]} (invite {invite.invite_id[:8]})"
        origin = "api"

        def mint(tx: StateTx) -> tuple[str, str, str]:
            sa, issued = _tokens.create_service_account(
                tx, name=name, holder_did=invite.issuer_did, scopes=back, origin=origin
            )
            grant = _grants.create_grant(
                tx, grantee_did=invite.issuer_did, target=target, scopes=back, sa_id=sa.id
            )
            return sa.id, grant.id, issued.bearer

        sa_id, grant_id, bearer = await node.store.transact(mint)
        minted = (sa_id, grant_id)
        reciprocal = {"token": bearer, "scopes": back, "url": my_url}
    try:
        async with PeerClient(invite.node_url, client=node.http) as issuer:
            credential, answer = await issuer.redeem_with_answer(
                invite_url, holder_key=node.key, label=label, reciprocal=reciprocal
            )
    except BaseException:
        if minted is not None:
            with trio.CancelScope(shield=True):
                await _undo_mint(node, *minted)
        raise
    pair, created = await node.create_pair(
        credential.peer_url,
        token=credential.token,
        peer_did=credential.peer_did,
        filter=filter_for_target(credential.scope_target),
    )
    if not created:
        pair = await _refresh(node, pair, credential.token)
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


async def _refresh(node: Node, pair: Pair, token: str) -> Pair:
    """An existing pair takes the new credential and runs again if it had stopped."""
    pair = await node.pairs.set_credential(pair.id, token)
    if pair.state in (PairState.STOPPED, PairState.PAUSED):
        pair = await node.pairs.resume(pair.id)
    return pair


async def _undo_mint(node: Node, sa_id: str, grant_id: str) -> None:
    def undo(tx: StateTx) -> None:
        _tokens.revoke_service_account(tx, sa_id)
        _grants.delete_grant(tx, grant_id)

    try:
        await node.store.transact(undo)
    except FedpeerError as err:
        log.warning("could not remove the reciprocal credential %s: %s", sa_id, err)


async def reverse_pair_after_redeem(
    node: Node,
    *,
    holder_did: str,
    url: str,
    token: str,
    target: _grants.Target,
) -> dict[str, object]:
    """Issuer side: pull back from the redeemer with the reciprocal credential.

    ``create_pair`` verifies that ``url`` serves a manifest signed by
    ``holder_did`` (the DID the redemption proved), so a redeemer cannot point
    the issuer at a third node. Never raises a FedpeerError: a failure is
    returned as ``{"error": {code, message}}`` (the redemption itself stands;
    the redeemer can still pull) and logged.
    """
    try:
        pair, created = await node.create_pair(
            url, token=token, peer_did=holder_did, filter=filter_for_target(target)
        )
        if not created:
            pair = await _refresh(node, pair, token)
    except FedpeerError as err:
        log.warning("reverse pair to %s at %s failed: %s", holder_did, url, err)
        return {"error": {"code": err.code, "message": err.message}}
    log.info("reverse pair %s to %s created=%s", pair.id, holder_did, created)
    return {"id": pair.id, "created": created}
