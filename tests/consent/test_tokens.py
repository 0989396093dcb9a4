"""Service accounts and bearer tokens against every real store implementation."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from functools import partial
from pathlib import Path
from typing import cast

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from fedpeer.consent import (
    ALL_SCOPES,
    PRESETS,
    IssuedToken,
    Principal,
    ServiceAccount,
    authenticate,
    authenticate_bearer,
    bootstrap_admin,
    create_service_account,
    get_service_account,
    hash_bearer,
    is_bootstrapped,
    list_service_accounts,
    revoke_service_account,
    rotate_key,
    rotate_token,
)
from fedpeer.consent.tokens import MAX_ROTATE_TTL_MS
from fedpeer.errors import (
    BootstrapClosed,
    Conflict,
    DidInvalid,
    FedpeerError,
    InvalidRequest,
    RotateNotSelf,
    ServiceAccountNotFound,
    TokenExpired,
    TokenInvalid,
)
from fedpeer.store.base import StateTx, Store

NODE_DID = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
HOLDER_DID = "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG"
OTHER_DID = "did:web:example.com:users:alice"
T0 = 1_700_000_000_000

BEARER_RE = re.compile(r"fp_([0-9a-f]{20})_([0-9a-f]{64})")
STATE_TABLES = ("service_accounts", "tokens", "meta")


async def create(
    store: Store,
    *,
    scopes: list[str] | None = None,
    name: str = "laptop",
    holder: str = HOLDER_DID,
    origin: str = "api",
    ttl_ms: int | None = None,
    now_ms: int = T0,
) -> tuple[ServiceAccount, IssuedToken]:
    def fn(tx: StateTx) -> tuple[ServiceAccount, IssuedToken]:
        return create_service_account(
            tx,
            name=name,
            holder_did=holder,
            scopes=scopes if scopes is not None else ["reader"],
            origin=origin,
            ttl_ms=ttl_ms,
            now_ms=now_ms,
        )

    return await store.transact(fn)


async def auth(store: Store, bearer: str, now_ms: int = T0) -> Principal:
    """Authenticate both ways (in a transaction and by get_state); they must agree."""
    try:
        via_tx: Principal | FedpeerError = await store.transact(
            lambda tx: authenticate(tx, bearer, now_ms)
        )
    except FedpeerError as exc:
        via_tx = exc
    try:
        via_reads: Principal | FedpeerError = await authenticate_bearer(store, bearer, now_ms)
    except FedpeerError as exc:
        via_reads = exc
    if isinstance(via_tx, FedpeerError):
        assert isinstance(via_reads, FedpeerError)
        assert (type(via_tx), via_tx.message) == (type(via_reads), via_reads.message)
        raise via_reads
    assert via_reads == via_tx
    return via_tx


async def invalid_message(store: Store, bearer: str, now_ms: int = T0) -> str:
    with pytest.raises(TokenInvalid) as info:
        await auth(store, bearer, now_ms)
    assert info.value.code == "TOKEN_INVALID"
    assert info.value.http_status == 401
    return info.value.message


async def everything_stored(store: Store) -> str:
    """All state rows of the consent tables and the whole audit log, as text."""
    parts: list[object] = []
    for table in STATE_TABLES:
        parts.append(await store.list_state(table))
    parts.extend(e.event for e in await store.audit_log(0, 10_000))
    return json.dumps(parts)


async def audit_events(store: Store) -> list[dict[str, object]]:
    return [e.event for e in await store.audit_log(0, 10_000)]


# --- token format ------------------------------------------------------------


async def test_create_gives_a_well_formed_token_shown_once(store: Store) -> None:
    sa, tok = await create(store, scopes=["contributor"], ttl_ms=None)
    m = BEARER_RE.fullmatch(tok.bearer)
    assert m is not None
    assert m.group(1) == sa.id == tok.sa_id
    assert re.fullmatch(r"[0-9a-f]{20}", sa.id)
    assert re.fullmatch(r"[0-9a-f]{16}", tok.token_id)
    assert tok.token_id not in tok.bearer  # the public id is not part of the secret
    assert tok.bearer.count("_") == 2
    assert sa.name == "laptop"
    assert sa.holder_did == tok.holder_did == HOLDER_DID
    assert sa.scopes == PRESETS["contributor"]
    assert sa.origin == "api"
    assert (sa.created_ms, sa.revoked_ms) == (T0, None)
    assert sa.token_ids == (tok.token_id,)
    assert (tok.created_ms, tok.expires_ms) == (T0, None)
    assert tok.bearer not in repr(tok)
    assert m.group(2) not in repr(tok)
    assert tok.to_dict()["token"] == tok.bearer
    assert "token" not in sa.to_dict()
    # What get and list give back equals what create returned.
    assert await store.transact(lambda tx: get_service_account(tx, sa.id)) == sa
    assert await store.transact(list_service_accounts) == [sa]


async def test_secrets_are_random_and_at_least_128_bits(store: Store) -> None:
    made = [await create(store, now_ms=T0 + i) for i in range(40)]
    secrets_ = [BEARER_RE.fullmatch(tok.bearer).group(2) for _, tok in made]  # type: ignore[union-attr]
    assert len(set(secrets_)) == 40
    assert len({sa.id for sa, _ in made}) == 40
    assert len({tok.token_id for _, tok in made}) == 40
    assert all(len(s) * 4 >= 128 for s in secrets_)  # 64 hex chars = 256 bits
    # Every hex digit turns up at every position often enough to be random:
    # 40 draws from 16 symbols per position; a constant position would show 1.
    for pos in range(0, 64, 8):
        assert len({s[pos] for s in secrets_}) >= 6
    counts = Counter("".join(secrets_))
    assert set(counts) == set("0123456789abcdef")


async def test_authenticate_gives_the_principal(store: Store) -> None:
    sa, tok = await create(store, scopes=["reader"], ttl_ms=60_000)
    p = await auth(store, tok.bearer, T0 + 1)
    assert p == Principal(
        sa_id=sa.id,
        token_id=tok.token_id,
        holder_did=HOLDER_DID,
        scopes=PRESETS["reader"],
        expires_ms=T0 + 60_000,
    )
    assert p.allows("records:read")
    assert not p.allows("records:write")


# --- hashes only at rest -------------------------------------------------------


async def test_only_the_hash_is_stored_never_the_plaintext(store: Store, tmp_path: Path) -> None:
    bearers: list[str] = []
    _admin_sa, admin_tok = await store.transact(lambda tx: bootstrap_admin(tx, NODE_DID, T0))
    bearers.append(admin_tok.bearer)
    sa, tok = await create(store, ttl_ms=10_000)
    bearers.append(tok.bearer)
    p = await auth(store, tok.bearer)
    rotated = await store.transact(lambda tx: rotate_token(tx, tok.token_id, p, now_ms=T0 + 1))
    bearers.append(rotated.bearer)
    rekeyed = await store.transact(lambda tx: rotate_key(tx, sa.id, now_ms=T0 + 2))
    bearers.append(rekeyed.bearer)
    await store.transact(lambda tx: revoke_service_account(tx, sa.id, now_ms=T0 + 3))

    dump = await everything_stored(store)
    for bearer in bearers:
        secret = bearer.rsplit("_", 1)[1]
        assert bearer not in dump
        assert secret not in dump
        assert secret[:32] not in dump
        assert secret[32:] not in dump
    # The hash is what is kept, and it is SHA-256 of the whole bearer.
    row = await store.get_state("tokens", rekeyed.token_id)
    assert row is not None
    assert row["hash"] == hashlib.sha256(rekeyed.bearer.encode()).hexdigest()
    assert row["hash"] == hash_bearer(rekeyed.bearer)
    # The audit log does not even carry the hashes.
    audit_text = json.dumps(await audit_events(store))
    for bearer in bearers:
        assert hash_bearer(bearer) not in audit_text
    assert '"hash"' not in audit_text

    # And not on disk either (SQLite: the database, WAL and any other file).
    await store.aclose()
    blobs = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    for bearer in bearers:
        assert bearer.rsplit("_", 1)[1].encode() not in blobs
    if type(store).__name__ == "SQLiteStore":
        assert hash_bearer(admin_tok.bearer).encode() in blobs  # the scan does see the rows


# --- rejection -------------------------------------------------------------------


async def test_wrong_secret_with_right_sa_id_is_rejected(store: Store) -> None:
    sa, tok = await create(store)
    prefix, secret = tok.bearer.rsplit("_", 1)
    flipped = secret[:-1] + ("0" if secret[-1] != "0" else "1")
    msg_flip = await invalid_message(store, f"{prefix}_{flipped}")
    msg_other = await invalid_message(store, f"{prefix}_{'a' * 64}")
    # Another account's secret with this account's id does not work either.
    _, tok2 = await create(store)
    msg_swap = await invalid_message(store, f"{prefix}_{tok2.bearer.rsplit('_', 1)[1]}")
    msg_unknown_sa = await invalid_message(store, f"fp_{'0' * 20}_{secret}")
    # One message for every way of being wrong: nothing leaks which part was.
    assert msg_flip == msg_other == msg_swap == msg_unknown_sa
    assert (await auth(store, tok.bearer)).sa_id == sa.id  # the real one still works


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: "",
        lambda b: "fp_",
        lambda b: b.upper(),
        lambda b: b.replace("fp_", "fq_", 1),
        lambda b: b[3:],
        lambda b: b + "0",
        lambda b: b[:-1],
        lambda b: b + "_00",
        lambda b: b.replace("_", "-"),
        lambda b: b[:10] + "_" + b[11:],
        lambda b: b[:-1] + "é",
        lambda b: " " + b,
        lambda b: b + "\n",
        lambda b: "Bearer " + b,
        lambda b: b * 100,
    ],
)
async def test_malformed_bearers_get_the_same_refusal(store: Store, mangle: object) -> None:
    _, tok = await create(store)
    reference = await invalid_message(store, f"fp_{'0' * 20}_{'0' * 64}")
    bad = cast("type[str]", mangle)(tok.bearer)
    assert bad != tok.bearer
    assert await invalid_message(store, bad) == reference


async def test_non_string_bearer_is_invalid_not_a_crash(store: Store) -> None:
    with pytest.raises(TokenInvalid):
        await auth(store, cast(str, None))
    with pytest.raises(TokenInvalid):
        await auth(store, cast(str, b"fp_"))


# --- revoke ----------------------------------------------------------------------------


async def test_revoked_accounts_tokens_are_rejected(store: Store) -> None:
    sa, tok = await create(store)
    keep_sa, keep_tok = await create(store, now_ms=T0 + 1)
    reference = await invalid_message(store, f"fp_{'0' * 20}_{'0' * 64}")
    revoked = await store.transact(lambda tx: revoke_service_account(tx, sa.id, now_ms=T0 + 5))
    assert revoked.revoked_ms == T0 + 5
    assert revoked.token_ids == ()
    assert await invalid_message(store, tok.bearer, T0 + 6) == reference
    assert (await auth(store, keep_tok.bearer)).sa_id == keep_sa.id
    row = await store.get_state("tokens", tok.token_id)
    assert row is not None
    assert row["revoked_ms"] == T0 + 5
    # Still listed (with revoked_ms), unless asked for live ones only.
    all_ = await store.transact(list_service_accounts)
    assert [s.id for s in all_] == [sa.id, keep_sa.id]
    live = await store.transact(lambda tx: list_service_accounts(tx, include_revoked=False))
    assert [s.id for s in live] == [keep_sa.id]
    # Revoking again is a no-op: same result, no new audit event.
    n_events = len(await audit_events(store))
    again = await store.transact(lambda tx: revoke_service_account(tx, sa.id, now_ms=T0 + 9))
    assert again == revoked
    assert len(await audit_events(store)) == n_events
    # A revoked account cannot be re-keyed back to life.
    with pytest.raises(Conflict):
        await store.transact(lambda tx: rotate_key(tx, sa.id, now_ms=T0 + 10))
    assert await invalid_message(store, tok.bearer, T0 + 11) == reference


async def test_a_revoked_account_alone_is_enough_to_refuse(store: Store) -> None:
    # Defence in depth: even if a token row were somehow left live, the
    # account's own revoked mark refuses it (and a revoked token row alone too).
    sa, tok = await create(store)
    _, tok2 = await create(store)

    def mark(tx: StateTx) -> None:
        sa_row = tx.get("service_accounts", sa.id)
        token_row = tx.get("tokens", tok2.token_id)
        assert sa_row is not None
        assert token_row is not None
        tx.put("service_accounts", sa.id, {**sa_row, "revoked_ms": T0})
        tx.put("tokens", tok2.token_id, {**token_row, "revoked_ms": T0})

    await store.transact(mark)
    with pytest.raises(TokenInvalid):
        await auth(store, tok.bearer)
    with pytest.raises(TokenInvalid):
        await auth(store, tok2.bearer)


async def test_unknown_accounts_are_not_found(store: Store) -> None:
    for sa_id in ["0" * 20, "nope", "", "../etc", "A" * 20]:
        with pytest.raises(ServiceAccountNotFound) as info:
            await store.transact(partial(revoke_service_account, sa_id=sa_id, now_ms=T0))
        assert info.value.http_status == 404
        with pytest.raises(ServiceAccountNotFound):
            await store.transact(partial(get_service_account, sa_id=sa_id))
        with pytest.raises(ServiceAccountNotFound):
            await store.transact(partial(rotate_key, sa_id=sa_id, now_ms=T0))
    assert await audit_events(store) == []


# --- rotate-key ------------------------------------------------------------------------


async def test_rotate_key_revokes_old_token_and_new_one_works(store: Store) -> None:
    sa, old = await create(store, scopes=["admin"])
    new = await store.transact(lambda tx: rotate_key(tx, sa.id, ttl_ms=5_000, now_ms=T0 + 10))
    assert new.sa_id == sa.id
    assert new.token_id != old.token_id
    assert new.bearer != old.bearer
    assert new.expires_ms == T0 + 5_010
    assert BEARER_RE.fullmatch(new.bearer)
    with pytest.raises(TokenInvalid):
        await auth(store, old.bearer, T0 + 11)
    p = await auth(store, new.bearer, T0 + 11)
    assert (p.sa_id, p.token_id, p.scopes) == (sa.id, new.token_id, ALL_SCOPES)
    after = await store.transact(lambda tx: get_service_account(tx, sa.id))
    assert after.token_ids == (new.token_id,)
    old_row = await store.get_state("tokens", old.token_id)
    assert old_row is not None
    assert (old_row["revoked_ms"], old_row["replaced_by"]) == (T0 + 10, new.token_id)
    ev = (await audit_events(store))[-1]
    assert ev["type"] == "service_account.key_rotated"
    assert (ev["sa_id"], ev["token_id"], ev["revoked_token_ids"]) == (
        sa.id,
        new.token_id,
        [old.token_id],
    )


async def test_rotate_key_is_atomic_with_the_callers_transaction(store: Store) -> None:
    sa, old = await create(store)
    minted: list[IssuedToken] = []

    def fn(tx: StateTx) -> None:
        minted.append(rotate_key(tx, sa.id, now_ms=T0 + 1))
        raise RuntimeError("the caller fails after rotating")

    with pytest.raises(RuntimeError):
        await store.transact(fn)
    # Rolled back as a whole: old token works, the new one never existed.
    assert (await auth(store, old.bearer, T0 + 2)).token_id == old.token_id
    with pytest.raises(TokenInvalid):
        await auth(store, minted[0].bearer, T0 + 2)
    assert await store.get_state("tokens", minted[0].token_id) is None
    assert [e["type"] for e in await audit_events(store)] == ["service_account.created"]


# --- expiry ------------------------------------------------------------------------------


async def test_expiry_uses_the_injected_clock(store: Store) -> None:
    _, tok = await create(store, ttl_ms=1_000, now_ms=T0)
    assert tok.expires_ms == T0 + 1_000
    assert (await auth(store, tok.bearer, T0 + 999)).expires_ms == T0 + 1_000
    with pytest.raises(TokenExpired) as info:
        await auth(store, tok.bearer, T0 + 1_000)
    assert info.value.code == "TOKEN_EXPIRED"
    assert info.value.http_status == 401
    # Only the holder of the right secret learns "expired"; a guess stays "invalid".
    prefix, secret = tok.bearer.rsplit("_", 1)
    with pytest.raises(TokenInvalid):
        await auth(store, f"{prefix}_{secret[::-1]}", T0 + 5_000)
    # A token without ttl never expires.
    _, forever = await create(store)
    assert (await auth(store, forever.bearer, T0 + 10**12)).expires_ms is None


@pytest.mark.parametrize("ttl", [0, -1, True, 1.5, "60"])
async def test_bad_ttl_is_refused_and_nothing_is_written(store: Store, ttl: object) -> None:
    with pytest.raises(InvalidRequest, match="ttl_ms"):
        await create(store, ttl_ms=cast(int, ttl))
    assert await store.list_state("service_accounts") == []
    assert await store.list_state("tokens") == []
    assert await audit_events(store) == []


# --- input validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"scopes": ["root"]}, InvalidRequest),
        ({"scopes": []}, InvalidRequest),
        ({"name": ""}, InvalidRequest),
        ({"name": "   "}, InvalidRequest),
        ({"name": "x" * 129}, InvalidRequest),
        ({"name": "bad\nname"}, InvalidRequest),
        ({"holder": "alice"}, DidInvalid),
        ({"holder": "did:key:"}, DidInvalid),
        ({"holder": "did:KEY:z6Mk"}, DidInvalid),
        ({"holder": "did:key:z6Mk:"}, DidInvalid),
        ({"holder": "did:key:" + "z" * 3000}, DidInvalid),
        ({"origin": "cli"}, InvalidRequest),
        ({"origin": "invite:"}, InvalidRequest),
        ({"origin": "invite:a b"}, InvalidRequest),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_written(
    store: Store, kwargs: dict[str, object], error: type[FedpeerError]
) -> None:
    with pytest.raises(error):
        await create(store, **kwargs)  # type: ignore[arg-type]
    assert await store.list_state("service_accounts") == []
    assert await store.list_state("tokens") == []
    assert await audit_events(store) == []


async def test_accepted_origins_and_dids(store: Store) -> None:
    sa1, _ = await create(store, origin="invite:inv_3f9a-Bc.1", holder=OTHER_DID)
    sa2, _ = await create(store, origin="bootstrap", name="Ada's phone ☎", now_ms=T0 + 1)
    assert (sa1.origin, sa1.holder_did) == ("invite:inv_3f9a-Bc.1", OTHER_DID)
    assert (sa2.origin, sa2.name) == ("bootstrap", "Ada's phone ☎")
    listed = await store.transact(list_service_accounts)
    assert listed == [sa1, sa2]


# --- bootstrap -------------------------------------------------------------------------------


async def test_bootstrap_happens_once(store: Store) -> None:
    assert not await store.transact(is_bootstrapped)
    sa, tok = await store.transact(lambda tx: bootstrap_admin(tx, NODE_DID, T0))
    assert await store.transact(is_bootstrapped)
    assert (sa.origin, sa.holder_did, sa.scopes, sa.name) == (
        "bootstrap",
        NODE_DID,
        ALL_SCOPES,
        "admin",
    )
    assert tok.expires_ms is None
    p = await auth(store, tok.bearer, T0 + 10**9)
    assert p.holder_did == NODE_DID
    assert all(p.allows(s) for s in ALL_SCOPES)
    meta = await store.get_state("meta", "consent.bootstrap")
    assert meta == {"sa_id": sa.id, "closed_ms": T0}

    with pytest.raises(BootstrapClosed) as info:
        await store.transact(lambda tx: bootstrap_admin(tx, NODE_DID, T0 + 1))
    assert info.value.code == "BOOTSTRAP_CLOSED"
    assert info.value.http_status == 409
    # Still closed after the admin account is revoked: no second way in.
    await store.transact(lambda tx: revoke_service_account(tx, sa.id, now_ms=T0 + 2))
    with pytest.raises(BootstrapClosed):
        await store.transact(lambda tx: bootstrap_admin(tx, NODE_DID, T0 + 3))
    assert len(await store.list_state("service_accounts")) == 1
    types = [e["type"] for e in await audit_events(store)]
    assert types == ["service_account.created", "bootstrap.closed", "service_account.revoked"]


async def test_failed_bootstrap_leaves_it_open(store: Store) -> None:
    with pytest.raises(DidInvalid):
        await store.transact(lambda tx: bootstrap_admin(tx, "not-a-did", T0))
    assert not await store.transact(is_bootstrapped)
    sa, _ = await store.transact(lambda tx: bootstrap_admin(tx, NODE_DID, T0))
    assert sa.origin == "bootstrap"


async def test_concurrent_bootstraps_give_exactly_one_admin(store: Store) -> None:
    outcomes: list[str] = []

    async def attempt() -> None:
        try:
            await store.transact(lambda tx: bootstrap_admin(tx, NODE_DID, T0))
        except BootstrapClosed:
            outcomes.append("closed")
        else:
            outcomes.append("created")

    with anyio.fail_after(30):
        async with anyio.create_task_group() as nursery:
            for _ in range(8):
                nursery.start_soon(attempt)
    assert sorted(outcomes) == ["closed"] * 7 + ["created"]
    assert len(await store.list_state("service_accounts")) == 1


# --- rotate_token (self-rotation) --------------------------------------------------------------


async def test_rotate_token_is_self_only(store: Store) -> None:
    _, tok_a = await create(store)
    _, tok_b = await create(store)
    pa = await auth(store, tok_a.bearer)
    with pytest.raises(RotateNotSelf) as info:
        await store.transact(lambda tx: rotate_token(tx, tok_b.token_id, pa, now_ms=T0 + 1))
    assert info.value.code == "ROTATE_NOT_SELF"
    assert info.value.http_status == 403
    with pytest.raises(RotateNotSelf):
        await store.transact(lambda tx: rotate_token(tx, "0" * 16, pa, now_ms=T0 + 1))
    # Nothing changed for either token.
    assert (await auth(store, tok_a.bearer, T0 + 2)).token_id == tok_a.token_id
    assert (await auth(store, tok_b.bearer, T0 + 2)).token_id == tok_b.token_id


async def test_rotate_token_invalidates_the_old_bearer(store: Store) -> None:
    sa, old = await create(store, scopes=["contributor"])
    p = await auth(store, old.bearer)
    new = await store.transact(lambda tx: rotate_token(tx, old.token_id, p, now_ms=T0 + 50))
    assert (new.sa_id, new.holder_did, new.created_ms) == (sa.id, HOLDER_DID, T0 + 50)
    assert new.token_id != old.token_id
    assert new.expires_ms is None  # the old one never expired, so neither does this
    with pytest.raises(TokenInvalid):
        await auth(store, old.bearer, T0 + 51)
    p2 = await auth(store, new.bearer, T0 + 51)
    assert (p2.sa_id, p2.token_id, p2.scopes) == (sa.id, new.token_id, PRESETS["contributor"])
    # The old principal cannot rotate again (its token is gone).
    with pytest.raises(TokenInvalid):
        await store.transact(lambda tx: rotate_token(tx, old.token_id, p, now_ms=T0 + 52))
    assert (await store.transact(lambda tx: get_service_account(tx, sa.id))).token_ids == (
        new.token_id,
    )
    ev = (await audit_events(store))[-1]
    assert ev == {
        "type": "token.rotated",
        "sa_id": sa.id,
        "token_id": new.token_id,
        "old_token_id": old.token_id,
        "expires_ms": None,
    }


async def test_rotate_token_slides_the_expiry(store: Store) -> None:
    _, tok = await create(store, ttl_ms=1_000, now_ms=T0)
    p = await auth(store, tok.bearer, T0 + 900)
    slid = await store.transact(lambda tx: rotate_token(tx, tok.token_id, p, now_ms=T0 + 900))
    assert slid.expires_ms == T0 + 1_900  # same lifetime, counted from now
    assert (await auth(store, slid.bearer, T0 + 1_899)).token_id == slid.token_id
    with pytest.raises(TokenExpired):
        await auth(store, slid.bearer, T0 + 1_900)
    p = await auth(store, slid.bearer, T0 + 1_000)
    # A holder cannot outlive the issuer's policy: a longer ttl (found by an audit:
    # 10**9 s turned a one-hour invite token into a 31-year one) is cut to the
    # token's own lifetime; a shorter one is taken.
    longer = await store.transact(
        lambda tx: rotate_token(tx, slid.token_id, p, ttl_ms=60_000, now_ms=T0 + 1_000)
    )
    assert longer.expires_ms == T0 + 2_000
    p = await auth(store, longer.bearer, T0 + 1_100)
    shorter = await store.transact(
        lambda tx: rotate_token(tx, longer.token_id, p, ttl_ms=300, now_ms=T0 + 1_100)
    )
    assert shorter.expires_ms == T0 + 1_400
    # a token that never expired: a ttl makes it expire, within MAX_ROTATE_TTL_MS
    _, forever = await create(store, now_ms=T0)
    p = await auth(store, forever.bearer, T0)
    capped = await store.transact(
        lambda tx: rotate_token(tx, forever.token_id, p, ttl_ms=10**15, now_ms=T0)
    )
    assert capped.expires_ms == T0 + MAX_ROTATE_TTL_MS


async def test_rotate_token_refuses_expired_and_revoked(store: Store) -> None:
    sa, tok = await create(store, ttl_ms=1_000, now_ms=T0)
    p = await auth(store, tok.bearer, T0)
    with pytest.raises(TokenExpired):
        await store.transact(lambda tx: rotate_token(tx, tok.token_id, p, now_ms=T0 + 1_000))
    with pytest.raises(InvalidRequest):
        await store.transact(lambda tx: rotate_token(tx, tok.token_id, p, ttl_ms=0, now_ms=T0))
    await store.transact(lambda tx: revoke_service_account(tx, sa.id, now_ms=T0 + 1))
    with pytest.raises(TokenInvalid):
        await store.transact(lambda tx: rotate_token(tx, tok.token_id, p, now_ms=T0 + 2))
    # A principal that claims another account's token id gets nowhere either.
    _, tok2 = await create(store)
    forged = Principal(
        sa_id=sa.id,
        token_id=tok2.token_id,
        holder_did=HOLDER_DID,
        scopes=ALL_SCOPES,
        expires_ms=None,
    )
    with pytest.raises(TokenInvalid):
        await store.transact(lambda tx: rotate_token(tx, tok2.token_id, forged, now_ms=T0 + 3))
    assert (await auth(store, tok2.bearer, T0 + 4)).token_id == tok2.token_id


async def test_concurrent_self_rotations_yield_one_winner(store: Store) -> None:
    _, tok = await create(store)
    p = await auth(store, tok.bearer)
    winners: list[IssuedToken] = []
    losers: list[FedpeerError] = []

    async def attempt(i: int) -> None:
        try:
            winners.append(
                await store.transact(lambda tx: rotate_token(tx, tok.token_id, p, now_ms=T0 + i))
            )
        except TokenInvalid as exc:
            losers.append(exc)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as nursery:
            for i in range(6):
                nursery.start_soon(attempt, i)
    assert len(winners) == 1
    assert len(losers) == 5
    assert (await auth(store, winners[0].bearer, T0 + 10)).token_id == winners[0].token_id
    assert len(await store.list_state("tokens")) == 2


# --- concurrency and audit ------------------------------------------------------------


async def test_concurrent_creates_get_distinct_ids(store: Store) -> None:
    made: list[tuple[ServiceAccount, IssuedToken]] = []

    async def one(i: int) -> None:
        made.append(await create(store, name=f"device {i}", now_ms=T0 + i))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as nursery:
            for i in range(25):
                nursery.start_soon(one, i)
    assert len(made) == 25
    assert len({sa.id for sa, _ in made}) == 25
    assert len({tok.token_id for _, tok in made}) == 25
    assert len({tok.bearer for _, tok in made}) == 25
    listed = await store.transact(list_service_accounts)
    assert sorted(s.id for s in listed) == sorted(sa.id for sa, _ in made)
    assert [s.created_ms for s in listed] == sorted(s.created_ms for s in listed)
    for sa, tok in made:
        assert (await auth(store, tok.bearer)).sa_id == sa.id
    assert len(await audit_events(store)) == 25


async def test_every_mutation_is_audited_without_secrets(store: Store) -> None:
    admin, _ = await store.transact(lambda tx: bootstrap_admin(tx, NODE_DID, T0))
    sa, tok = await create(store, scopes=["reader"], origin="invite:abc", ttl_ms=500)
    p = await auth(store, tok.bearer)
    rot = await store.transact(lambda tx: rotate_token(tx, tok.token_id, p, now_ms=T0 + 1))
    key = await store.transact(lambda tx: rotate_key(tx, sa.id, now_ms=T0 + 2))
    await store.transact(lambda tx: revoke_service_account(tx, sa.id, now_ms=T0 + 3))
    entries = await store.audit_log(0, 100)
    events = [e.event for e in entries]
    assert [e["type"] for e in events] == [
        "service_account.created",
        "bootstrap.closed",
        "service_account.created",
        "token.rotated",
        "service_account.key_rotated",
        "service_account.revoked",
    ]
    # Stamped with the injected time, not the wall clock.
    assert [e.ts_ms for e in entries] == [T0, T0, T0, T0 + 1, T0 + 2, T0 + 3]
    assert events[2] == {
        "type": "service_account.created",
        "sa_id": sa.id,
        "token_id": tok.token_id,
        "name": "laptop",
        "holder_did": HOLDER_DID,
        "scopes": ["records:read", "sync:read"],
        "origin": "invite:abc",
        "expires_ms": T0 + 500,
    }
    assert events[1]["sa_id"] == admin.id
    assert events[3]["old_token_id"] == tok.token_id
    assert events[4]["revoked_token_ids"] == [rot.token_id]
    assert events[4]["token_id"] == key.token_id
    assert events[5] == {
        "type": "service_account.revoked",
        "sa_id": sa.id,
        "revoked_token_ids": [key.token_id],
    }
    for ev in events:
        assert not ({"bearer", "token", "secret", "hash"} & set(ev))


async def test_authenticate_bearer_needs_no_transaction(store: Store) -> None:
    _, tok = await create(store)

    class ReadsOnly:
        """Only get_state: proves authenticate_bearer opens no transaction."""

        calls = 0

        async def get_state(self, table: str, key: str) -> dict[str, object] | None:
            self.calls += 1
            return await store.get_state(table, key)

    reads = ReadsOnly()
    p = await authenticate_bearer(reads, tok.bearer, T0)
    assert p.token_id == tok.token_id
    assert reads.calls == 2  # the account, then its one live token
    reads.calls = 0
    with pytest.raises(TokenInvalid):
        await authenticate_bearer(reads, "garbage", T0)
    assert reads.calls == 0  # malformed bearers never touch the store
