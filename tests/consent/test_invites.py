"""Invites: URLs, codes, proofs, and the transaction functions against every real store."""

from __future__ import annotations

import hashlib
import json

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from fedpeer.consent import grants as g
from fedpeer.consent import invites as inv
from fedpeer.consent.invites import (
    InviteParams,
    IssuedInvite,
    Reciprocal,
    RedeemRequest,
    bulk_revoke,
    check_invite_preview,
    confirmation_code,
    create_invite,
    credential_from_answer,
    get_invite,
    invite_url,
    parse_invite_params,
    parse_invite_url,
    parse_redeem_request,
    redeem_in_tx,
    redeem_proof_payload,
    revoke_invite,
    sign_redeem_proof,
    verify_redeem_proof,
)
from fedpeer.consent.tokens import authenticate
from fedpeer.errors import (
    BadProof,
    DidInvalid,
    DidMismatch,
    FedpeerError,
    FreshnessViolation,
    HolderTypeMismatch,
    InvalidRequest,
    InviteExhausted,
    InviteExpired,
    InviteNotFound,
    InviteRevoked,
    InviteSecretInvalid,
    KeyUnknown,
    Malformed,
    PairSelf,
    PeerInvalid,
    ProofReplayed,
    TokenInvalid,
)
from fedpeer.identity import Resolver, SigningKey, b64url_encode, jcs
from fedpeer.identity.didkey import ed25519_multibase, x25519_multibase
from fedpeer.identity.envelope import verify_document
from fedpeer.store.base import Store

T0 = 1_700_000_000_000
NODE = SigningKey.from_seed(bytes(range(32)))
HOLDER = SigningKey.from_seed(bytes(range(1, 33)))
OTHER = SigningKey.from_seed(bytes(range(2, 34)))
# A small-order point: 32 bytes that are not a usable Ed25519 key.
SMALL_ORDER = bytes.fromhex("0100000000000000000000000000000000000000000000000000000000000000")


# --- URLs and codes --------------------------------------------------------------------


def test_url_round_trip_keeps_secret_in_fragment() -> None:
    secret = inv.new_invite_secret()
    url = invite_url("http://192.168.1.5:8765/", "ab" * 16, NODE.did, secret)
    assert url.startswith("http://192.168.1.5:8765/v1/invites/" + "ab" * 16 + "?issuer=did:key:")
    assert url.index("#") < url.index(secret)  # only after '#'
    parsed = parse_invite_url(url)
    assert parsed.node_url == "http://192.168.1.5:8765"
    assert (parsed.invite_id, parsed.issuer_did, parsed.secret) == ("ab" * 16, NODE.did, secret)
    assert secret not in repr(parsed)
    # A path prefix (a node behind a reverse proxy) is kept.
    prefixed = parse_invite_url(invite_url("https://h.example/fp", "cd" * 16, NODE.did, secret))
    assert prefixed.node_url == "https://h.example/fp"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda u: u.split("#")[0],  # no secret
        lambda u: u.replace("#secret=", "#token="),
        lambda u: u[:-1],  # secret one char short
        lambda u: u.replace("http://", "ftp://"),
        lambda u: u.replace("/v1/invites/", "/v1/invite/"),
        lambda u: u.replace("?issuer=", "?who="),
        lambda u: u.replace("?issuer=did:key:", "?issuer=key:"),
        lambda u: u.replace("ab" * 16, "AB" * 16),
        lambda u: "not a url",
    ],
)
def test_bad_invite_urls(mangle: object) -> None:
    url = invite_url("http://127.0.0.1:1", "ab" * 16, NODE.did, inv.new_invite_secret())
    with pytest.raises(FedpeerError) as info:
        parse_invite_url(mangle(url))  # type: ignore[operator]
    assert info.value.code in ("MALFORMED", "DID_INVALID")


def test_confirmation_code() -> None:
    a = confirmation_code(NODE.did, HOLDER.did, "ab" * 16)
    digest = hashlib.sha256(jcs([NODE.did, HOLDER.did, "ab" * 16])).digest()
    assert a == f"{int.from_bytes(digest[:8], 'big') % 1_000_000:06d}"
    assert len(a) == 6
    assert a.isdigit()
    assert confirmation_code(NODE.did, HOLDER.did, "ab" * 16) == a
    # Both DIDs and the invite id matter (order too); over a few variants at least
    # one differs (a collision of all is a 1e-18 event).
    variants = {
        confirmation_code(HOLDER.did, NODE.did, "ab" * 16),
        confirmation_code(NODE.did, OTHER.did, "ab" * 16),
        confirmation_code(NODE.did, HOLDER.did, "cd" * 16),
    }
    assert variants - {a}


# --- proofs ----------------------------------------------------------------------------

IID = "ef" * 16


def _verify(proof: str, issued: int, *, now: int, holder: str = HOLDER.did) -> bytes:
    keys = [HOLDER.public_key]
    return verify_redeem_proof(
        keys,
        proof,
        invite_id=IID,
        audience=NODE.did,
        holder_did=holder,
        issued_at_ms=issued,
        now_ms=now,
    )


def test_proof_accepts_the_right_one() -> None:
    proof, issued = sign_redeem_proof(HOLDER, invite_id=IID, audience=NODE.did, issued_at_ms=T0)
    assert issued == T0
    assert len(_verify(proof, T0, now=T0)) == 64
    assert _verify(proof, T0, now=T0 + 60_000)  # the window is inclusive
    assert _verify(proof, T0, now=T0 - 60_000)


def test_proof_rejections() -> None:
    def signed(key: SigningKey, **over: object) -> str:
        payload = redeem_proof_payload(
            invite_id=IID, audience=NODE.did, holder_did=HOLDER.did, issued_at_ms=T0
        )
        payload.update(over)
        return b64url_encode(key.sign(jcs(payload)))

    with pytest.raises(BadProof):
        _verify(signed(OTHER), T0, now=T0)  # wrong key
    with pytest.raises(BadProof):
        _verify(signed(HOLDER, invite_id="00" * 16), T0, now=T0)  # wrong invite
    with pytest.raises(BadProof):
        _verify(signed(HOLDER, audience=OTHER.did), T0, now=T0)  # wrong audience
    with pytest.raises(BadProof):
        _verify(signed(HOLDER, purpose="fedpeer-login-v1"), T0, now=T0)  # other purpose
    with pytest.raises(BadProof):
        _verify(signed(HOLDER), T0 + 1, now=T0)  # issued_at as signed differs
    with pytest.raises(FreshnessViolation):
        _verify(signed(HOLDER), T0, now=T0 + 61_000)  # 61 s old
    with pytest.raises(FreshnessViolation):
        _verify(signed(HOLDER), T0, now=T0 - 61_000)  # 61 s ahead
    for garbage in ("", "not base64!", b64url_encode(b"x" * 63), 5):
        with pytest.raises(BadProof):
            _verify(garbage, T0, now=T0)  # type: ignore[arg-type]
    with pytest.raises(KeyUnknown):
        verify_redeem_proof(
            [SMALL_ORDER],
            signed(HOLDER),
            invite_id=IID,
            audience=NODE.did,
            holder_did=HOLDER.did,
            issued_at_ms=T0,
            now_ms=T0,
        )


class _Driver:
    def __init__(self, doc: dict[str, object] | None) -> None:
        self.doc = doc

    async def resolve(self, did: str) -> dict[str, object]:
        if self.doc is None:
            from fedpeer.errors import DidNotFound

            raise DidNotFound("gone")
        return self.doc


async def test_holder_keys_through_the_resolver() -> None:
    assert await inv.holder_public_keys(Resolver({}), HOLDER.did) == [HOLDER.public_key]
    did = "did:example:alice"
    doc: dict[str, object] = {
        "id": did,
        "verificationMethod": [
            {
                "id": did + "#k1",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": ed25519_multibase(HOLDER.public_key),
            },
            {
                "id": did + "#k2",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": ed25519_multibase(OTHER.public_key),
            },
        ],
        "authentication": ["#k1"],  # k2 exists but may not authenticate
    }
    assert await inv.holder_public_keys(Resolver({"example": _Driver(doc)}), did) == [
        HOLDER.public_key
    ]
    with pytest.raises(KeyUnknown):
        await inv.holder_public_keys(Resolver({"example": _Driver(None)}), did)
    with pytest.raises(KeyUnknown):
        await inv.holder_public_keys(Resolver({"example": _Driver({"id": did})}), did)
    with pytest.raises(KeyUnknown):
        await inv.holder_public_keys(Resolver({}), did)  # no driver for did:example


# --- request parsing -------------------------------------------------------------------


def test_invite_params() -> None:
    p = parse_invite_params({})
    assert (p.ttl_s, p.max_uses) == (86_400, 1)
    assert p.scopes == frozenset({"records:read", "sync:read"})
    assert p.target == g.Target("instance")
    assert p.accept_holder_types == ("guest", "federated")
    p = parse_invite_params(
        {
            "scopes": ["contributor"],
            "scope_target": {"type": "namespace", "value": "app/"},
            "accept_holder_types": ["federated"],
            "max_uses": 5,
            "device_label": "Ana's phone",
            "notes": "line one\nline two",
        }
    )
    assert "records:write" in p.scopes
    assert p.accept_holder_types == ("federated",)
    bads: list[dict[str, object]] = [
        {"ttl_s": 0},
        {"ttl_s": True},
        {"max_uses": 1001},
        {"scopes": "reader"},
        {"accept_holder_types": []},
        {"accept_holder_types": ["robot"]},
        {"scope_target": {"type": "galaxy"}},
        {"device_label": "x" * 129},
        {"device_label": "bell\x07"},
        {"surprise": 1},
    ]
    for bad in bads:
        with pytest.raises(InvalidRequest):
            parse_invite_params(bad)


def test_redeem_request_parsing() -> None:
    b64 = b64url_encode(HOLDER.public_key)
    guest = parse_redeem_request({"holder_type": "guest", "holder_pubkey": b64, "secret": "s"})
    assert guest.holder_did == HOLDER.did
    assert guest.holder_type == "guest"
    multibase = ed25519_multibase(HOLDER.public_key)
    again = parse_redeem_request(
        {"holder_type": "guest", "holder_pubkey": multibase, "secret": "s", "holder_label": "l"}
    )
    assert again.holder_did == HOLDER.did
    assert again.label == "l"
    with pytest.raises(KeyUnknown):
        parse_redeem_request(
            {"holder_type": "guest", "holder_pubkey": b64url_encode(SMALL_ORDER), "secret": "s"}
        )
    for bad in (
        {"holder_type": "guest", "holder_pubkey": "abc", "secret": "s"},
        {"holder_type": "guest", "holder_pubkey": b64, "secret": "s", "holder_did": "did:x:y"},
        {"holder_type": "guest", "holder_pubkey": b64},
        {"holder_type": "robot", "secret": "s"},
        {"holder_type": "federated", "holder_did": HOLDER.did, "secret": "s"},
        {
            "holder_type": "federated",
            "holder_did": HOLDER.did,
            "holder_proof": "x",
            "holder_proof_issued_at_ms": -1,
            "secret": "s",
        },
        {
            "holder_type": "guest",
            "holder_pubkey": b64,
            "secret": "s",
            "reciprocal": {"token": "t", "scopes": ["reader"], "url": "ftp://x"},
        },
    ):
        with pytest.raises((InvalidRequest, Malformed)):
            parse_redeem_request(bad)
    # a did:key that is not an Ed25519 key (here X25519) is refused with the body
    # (protocol.md §2.1, §10.5 step 1), not as KEY_UNKNOWN after the invite checks
    x25519_did = "did:key:" + x25519_multibase(bytes(range(32)))
    with pytest.raises(DidInvalid):
        parse_redeem_request(
            {
                "holder_type": "federated",
                "holder_did": x25519_did,
                "holder_proof": "x",
                "holder_proof_issued_at_ms": 1,
                "secret": "s",
            }
        )


# --- transactions ----------------------------------------------------------------------


async def issue(store: Store, now_ms: int = T0, **params: object) -> IssuedInvite:
    p = parse_invite_params(params)
    return await store.transact(
        lambda tx: create_invite(tx, NODE, p, node_url="http://127.0.0.1:9", now_ms=now_ms)
    )


def guest(secret: str, key: SigningKey = HOLDER, **kw: object) -> RedeemRequest:
    return RedeemRequest(
        holder_type="guest",
        holder_did=key.did,
        secret=secret,
        holder_pubkey=key.public_key,
        **kw,  # type: ignore[arg-type]
    )


async def redeem(
    store: Store, issued: IssuedInvite, req: RedeemRequest, **kw: object
) -> inv.Redeemed:
    iid = issued.invite.invite_id
    return await store.transact(lambda tx: redeem_in_tx(tx, iid, req, now_ms=T0, **kw))  # type: ignore[arg-type]


async def test_issue_signs_and_stores_only_a_hash(store: Store) -> None:
    issued = await issue(store, notes="for Ana", device_label="Ana's laptop")
    doc = issued.invite.document
    verified = verify_document(doc, expected_did=NODE.did, now=T0 / 1000)
    assert verified.document["invite_id"] == issued.invite.invite_id
    assert doc["type"] == "fedpeer-invite"
    assert "notes" not in doc
    assert parse_invite_url(issued.url).secret == issued.secret
    stored = json.dumps(
        [await store.list_state("invites"), [e.event for e in await store.audit_log(0, 100)]]
    )
    assert issued.secret not in stored
    assert inv.hash_secret(issued.secret) in stored  # the hash is what is kept
    assert issued.secret not in repr(issued)
    preview = issued.invite.to_preview(T0)
    assert "notes" not in preview
    assert "secret_hash" not in preview
    assert inv.hash_secret(issued.secret) not in json.dumps(preview)
    assert check_invite_preview(preview, parse_invite_url(issued.url), now=T0 / 1000) == doc


async def test_guest_redeem_creates_account_grant_and_token(store: Store) -> None:
    issued = await issue(store, scope_target={"type": "namespace", "value": "app/"}, max_uses=2)
    r = await redeem(store, issued, guest(issued.secret))
    assert r.holder_did == HOLDER.did
    assert r.service_account.origin == f"invite:{issued.invite.invite_id}"
    assert r.token.expires_ms == T0 + 30 * 24 * 3600 * 1000
    principal = await store.transact(lambda tx: authenticate(tx, r.token.bearer, T0))
    assert principal.holder_did == HOLDER.did
    assert r.grant.sa_id == r.service_account.id
    assert r.grant.target == g.Target("namespace", "app/")
    account = await store.get_state(inv.ACCOUNT_TABLE, r.service_account.id)
    assert account is not None
    assert account["holder_type"] == "guest"
    invite = await store.transact(lambda tx: get_invite(tx, issued.invite.invite_id))
    assert (invite.uses, invite.uses_remaining, invite.state(T0)) == (1, 1, "active")
    assert r.confirmation_code == confirmation_code(NODE.did, HOLDER.did, invite.invite_id)
    answer = r.to_dict()
    cred = credential_from_answer(answer, parse_invite_url(issued.url), holder_did=HOLDER.did)
    assert cred.token == r.token.bearer
    assert cred.peer_did == NODE.did
    code = str(answer["confirmation_code"])
    wrong = code[:-1] + str((int(code[-1]) + 1) % 10)
    for bad in ({"confirmation_code": wrong}, {"issuer_did": OTHER.did}, {"token": None}):
        with pytest.raises(PeerInvalid):
            credential_from_answer(
                {**answer, **bad}, parse_invite_url(issued.url), holder_did=HOLDER.did
            )
    await redeem(store, issued, guest(issued.secret, OTHER))
    with pytest.raises(InviteExhausted):
        await redeem(store, issued, guest(issued.secret, OTHER))


async def test_redeem_refusals_store_nothing(store: Store) -> None:
    issued = await issue(store, accept_holder_types=["guest"])
    before = await store.list_state("service_accounts")
    with pytest.raises(InviteSecretInvalid):
        await redeem(store, issued, guest("x" * 43))
    fed = RedeemRequest(
        holder_type="federated", holder_did=HOLDER.did, secret=issued.secret, proof="p"
    )
    with pytest.raises(HolderTypeMismatch):
        await redeem(store, issued, fed, used_proof_hash="h")
    with pytest.raises(PairSelf):
        await redeem(store, issued, guest(issued.secret, NODE))
    with pytest.raises(InviteNotFound):
        await store.transact(lambda tx: redeem_in_tx(tx, "00" * 16, guest(issued.secret)))
    assert await store.list_state("service_accounts") == before
    assert await store.list_state("grants") == []
    invite = await store.transact(lambda tx: get_invite(tx, issued.invite.invite_id))
    assert invite.uses == 0


async def test_expired_invite(store: Store) -> None:
    issued = await issue(store, now_ms=T0 - 120_000, ttl_s=60)
    assert issued.invite.state(T0) == "expired"
    with pytest.raises(InviteExpired):
        await redeem(store, issued, guest(issued.secret))


async def test_federated_proof_is_single_use(store: Store) -> None:
    issued = await issue(store, max_uses=5)
    fed = RedeemRequest(
        holder_type="federated",
        holder_did=HOLDER.did,
        secret=issued.secret,
        proof="p",
        issued_at_ms=T0,
    )
    await redeem(store, issued, fed, used_proof_hash="a" * 64)
    with pytest.raises(ProofReplayed):
        await redeem(store, issued, fed, used_proof_hash="a" * 64)
    await redeem(store, issued, fed, used_proof_hash="b" * 64)
    # Used proofs are pruned once no proof that old could be fresh anyway.
    later = T0 + 2 * inv.FRESHNESS_MS + 1
    iid = issued.invite.invite_id
    await store.transact(
        lambda tx: redeem_in_tx(tx, iid, fed, used_proof_hash="c" * 64, now_ms=later)
    )
    assert [k for k, _ in await store.list_state("proofs")] == ["c" * 64]


def federated(secret: str, key: SigningKey = HOLDER, **kw: object) -> RedeemRequest:
    """A federated request whose proof the caller has verified (redeem with a
    ``used_proof_hash``)."""
    return RedeemRequest(
        holder_type="federated",
        holder_did=key.did,
        secret=secret,
        proof="p",
        issued_at_ms=T0,
        **kw,  # type: ignore[arg-type]
    )


async def test_revoke_kills_tokens_grants_and_reciprocal(store: Store) -> None:
    issued = await issue(store, max_uses=3, accept_holder_types=["guest", "federated"])
    recip = Reciprocal(token="fp_back", scopes=frozenset({"sync:read"}), url="http://10.0.0.2:1")
    a = await redeem(
        store, issued, federated(issued.secret, reciprocal=recip), used_proof_hash="a" * 64
    )
    b = await redeem(store, issued, guest(issued.secret, OTHER))
    row = await store.get_state(inv.RECIPROCAL_TABLE, HOLDER.did)
    assert row is not None
    assert row["token"] == "fp_back"
    assert row["url"] == "http://10.0.0.2:1"
    assert row["invite_id"] == issued.invite.invite_id
    assert row["scopes"] == ["sync:read"]
    revision = await g.load_revision(store)
    iid = issued.invite.invite_id
    invite, changed = await store.transact(lambda tx: revoke_invite(tx, iid, now_ms=T0))
    assert changed
    assert invite.state(T0) == "revoked"
    for r in (a, b):
        with pytest.raises(TokenInvalid):
            await store.transact(lambda tx, r=r: authenticate(tx, r.token.bearer, T0))  # type: ignore[misc]
    assert await store.list_state("grants") == []
    assert await store.get_state(inv.RECIPROCAL_TABLE, HOLDER.did) is None
    assert await g.load_revision(store) == revision + 1
    n_events = len(await store.audit_log(0, 1000))
    again, changed = await store.transact(lambda tx: revoke_invite(tx, iid, now_ms=T0 + 5))
    assert not changed
    assert again.revoked_ms == T0
    assert len(await store.audit_log(0, 1000)) == n_events  # idempotent: no new event
    with pytest.raises(InviteRevoked):
        await redeem(store, issued, guest(issued.secret))
    with pytest.raises(InviteNotFound):
        await store.transact(lambda tx: revoke_invite(tx, "11" * 16))


async def test_a_guest_reciprocal_is_ignored(store: Store) -> None:
    """A guest's DID is only the key it names, and a paired peer's key is public:
    its reciprocal must neither replace the peer's reciprocal credential nor
    revoke the account the peer's federated redemption gave it."""
    issued = await issue(store, max_uses=3, accept_holder_types=["guest", "federated"])
    recip = Reciprocal(token="fp_back", scopes=frozenset({"sync:read"}), url="http://10.0.0.2:1")
    peer = await redeem(
        store, issued, federated(issued.secret, reciprocal=recip), used_proof_hash="a" * 64
    )
    evil = Reciprocal(token="evil", scopes=frozenset({"sync:read"}), url="http://10.6.6.6:1")
    impostor = await redeem(store, issued, guest(issued.secret, reciprocal=evil))
    assert impostor.holder_did == peer.holder_did == HOLDER.did
    row = await store.get_state(inv.RECIPROCAL_TABLE, HOLDER.did)
    assert row is not None
    assert (row["token"], row["url"], row["sa_id"]) == (
        "fp_back",
        "http://10.0.0.2:1",
        peer.service_account.id,
    )
    await store.transact(lambda tx: authenticate(tx, peer.token.bearer, T0))  # still valid
    events = [e for e in await store.audit_log(0, 1000) if e.event["type"] == "invite.redeemed"]
    assert [e.event["reciprocal"] for e in events] == [True, False]
    # a guest alone stores none either
    await store.transact(lambda tx: inv.revoke_credential(tx, peer.service_account.id, now_ms=T0))
    await store.transact(lambda tx: tx.delete(inv.RECIPROCAL_TABLE, HOLDER.did))
    await redeem(store, issued, guest(issued.secret, OTHER, reciprocal=evil))
    assert await store.get_state(inv.RECIPROCAL_TABLE, OTHER.did) is None


async def test_bulk_revoke(store: Store) -> None:
    expired = await issue(store, now_ms=T0 - 120_000, ttl_s=60)
    used = await issue(store)
    active = await issue(store)
    r = await redeem(store, used, guest(used.secret))
    out = await store.transact(lambda tx: bulk_revoke(tx, "exhausted", now_ms=T0))
    assert [i.invite_id for i in out] == [used.invite.invite_id]
    with pytest.raises(TokenInvalid):
        await store.transact(lambda tx: authenticate(tx, r.token.bearer, T0))
    out = await store.transact(lambda tx: bulk_revoke(tx, "expired", now_ms=T0))
    assert [i.invite_id for i in out] == [expired.invite.invite_id]
    states = {
        i.invite_id: i.state(T0) for i in await store.transact(lambda tx: inv.list_invites(tx))
    }
    assert states == {
        expired.invite.invite_id: "revoked",
        used.invite.invite_id: "revoked",
        active.invite.invite_id: "active",
    }
    with pytest.raises(InvalidRequest):
        await store.transact(lambda tx: bulk_revoke(tx, "active", now_ms=T0))  # type: ignore[arg-type]


@pytest.mark.parametrize("max_uses", [1, 5])
async def test_concurrent_redeems_in_the_store(store: Store, max_uses: int) -> None:
    issued = await issue(store, max_uses=max_uses)
    outcomes: list[str] = []

    async def one(i: int) -> None:
        key = SigningKey.from_seed(i.to_bytes(32, "big"))
        try:
            await redeem(store, issued, guest(issued.secret, key))
            outcomes.append("ok")
        except InviteExhausted:
            outcomes.append("exhausted")

    with anyio.fail_after(30):
        async with anyio.create_task_group() as nursery:
            for i in range(1, 51):
                nursery.start_soon(one, i)
    assert outcomes.count("ok") == max_uses
    assert outcomes.count("exhausted") == 50 - max_uses
    invite = await store.transact(lambda tx: get_invite(tx, issued.invite.invite_id))
    assert invite.uses == max_uses
    assert len(invite.sa_ids) == max_uses


def test_preview_check_refuses_other_issuers_and_dead_invites() -> None:
    secret = inv.new_invite_secret()
    doc = {"type": "fedpeer-invite", "invite_id": IID, "issuer": NODE.did}
    from fedpeer.identity.envelope import sign_document

    url = parse_invite_url(invite_url("http://127.0.0.1:1", IID, NODE.did, secret))
    good = {"state": "active", "invite": sign_document(doc, NODE, ttl_s=60, now=T0 / 1000)}
    assert check_invite_preview(good, url, now=T0 / 1000)["invite_id"] == IID
    forged = {"state": "active", "invite": sign_document(doc, OTHER, ttl_s=60, now=T0 / 1000)}
    with pytest.raises(DidMismatch):
        check_invite_preview(forged, url, now=T0 / 1000)
    other_id = {
        "state": "active",
        "invite": sign_document({**doc, "invite_id": "00" * 16}, NODE, ttl_s=60, now=T0 / 1000),
    }
    with pytest.raises(PeerInvalid):
        check_invite_preview(other_id, url, now=T0 / 1000)
    with pytest.raises(InviteExpired):
        check_invite_preview({**good, "state": "expired"}, url, now=T0 / 1000)
    with pytest.raises(PeerInvalid):
        check_invite_preview({"state": "active"}, url)


def test_invite_params_value_defaults() -> None:
    assert InviteParams().target == g.Target("instance")
