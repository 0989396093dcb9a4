"""Scopes and presets: parsing, implication by admin, refusal of anything unknown."""

from __future__ import annotations

from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedpeer.consent
from fedpeer.consent import (
    ADMIN,
    ALL_SCOPES,
    PRESETS,
    RECORDS_READ,
    RECORDS_WRITE,
    SYNC_READ,
    has_scope,
    parse_scopes,
    require_scope,
    scopes_to_list,
)
from fedpeer.errors import InvalidRequest, ScopeForbidden

VALID_NAMES = sorted(ALL_SCOPES | set(PRESETS))


def test_the_four_scopes_and_three_presets() -> None:
    assert {"records:read", "records:write", "sync:read", "admin"} == ALL_SCOPES
    assert (RECORDS_READ, RECORDS_WRITE, SYNC_READ, ADMIN) == (
        "records:read",
        "records:write",
        "sync:read",
        "admin",
    )
    assert PRESETS["reader"] == {"records:read", "sync:read"}
    assert PRESETS["contributor"] == {"records:read", "sync:read", "records:write"}
    assert PRESETS["admin"] == ALL_SCOPES
    assert set(PRESETS) == {"reader", "contributor", "admin"}


@pytest.mark.parametrize("scope", sorted(ALL_SCOPES - {"admin"}))
def test_each_scope_parses_to_itself(scope: str) -> None:
    assert parse_scopes([scope]) == {scope}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_bare_preset_names_expand(preset: str) -> None:
    assert parse_scopes([preset]) == PRESETS[preset]


def test_admin_means_all_four_and_mixing_and_duplicates_are_fine() -> None:
    assert parse_scopes(["admin"]) == ALL_SCOPES
    assert parse_scopes(["reader", "records:write"]) == PRESETS["contributor"]
    assert parse_scopes(["sync:read", "sync:read"]) == {"sync:read"}
    assert parse_scopes(("records:read",)) == {"records:read"}  # any iterable but str
    assert isinstance(parse_scopes(["reader"]), frozenset)


@pytest.mark.parametrize(
    "bad",
    [
        "Records:Read",
        "records:read ",
        " reader",
        "preset:reader",
        "records",
        "records:*",
        "read",
        "",
        "ADMIN",
        "records:delete",
    ],
)
def test_unknown_names_are_refused_with_the_valid_list(bad: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_scopes(["records:read", bad])
    assert info.value.code == "INVALID_REQUEST"
    assert info.value.http_status == 400
    for name in VALID_NAMES:
        assert name in info.value.message
    assert repr(bad) in info.value.message


def test_refuses_empty_string_input_non_str_items_and_too_many() -> None:
    with pytest.raises(InvalidRequest, match="at least one"):
        parse_scopes([])
    with pytest.raises(InvalidRequest, match="list of names"):
        parse_scopes("reader")  # a str is iterable, but not a list of names
    with pytest.raises(InvalidRequest, match="list of names"):
        parse_scopes(cast(list[str], b"reader"))
    with pytest.raises(InvalidRequest, match="list of names"):
        parse_scopes(cast(list[str], 42))
    with pytest.raises(InvalidRequest, match="must be strings"):
        parse_scopes(cast(list[str], ["reader", 1]))
    with pytest.raises(InvalidRequest, match="too many"):
        parse_scopes(["reader"] * 33)
    assert parse_scopes(["reader"] * 32) == PRESETS["reader"]


def test_a_huge_unknown_name_is_not_echoed_whole() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_scopes(["x" * 10_000])
    assert len(info.value.message) < 400


def test_admin_implies_every_scope() -> None:
    for scope in ALL_SCOPES:
        assert has_scope({"admin"}, scope)
        require_scope({"admin"}, scope)
    reader = PRESETS["reader"]
    assert has_scope(reader, "records:read")
    assert has_scope(reader, "sync:read")
    assert not has_scope(reader, "records:write")
    assert not has_scope(reader, "admin")
    assert not has_scope(PRESETS["contributor"], "admin")
    assert not has_scope(frozenset(), "records:read")


def test_require_scope_raises_scope_forbidden_naming_the_scope() -> None:
    with pytest.raises(ScopeForbidden) as info:
        require_scope(PRESETS["reader"], "records:write")
    assert info.value.code == "SCOPE_FORBIDDEN"
    assert info.value.http_status == 403
    assert "records:write" in info.value.message


def test_has_scope_refuses_an_unknown_required_scope() -> None:
    # A route naming a scope that does not exist is a programming error.
    with pytest.raises(ValueError, match="unknown scope"):
        has_scope({"admin"}, "records:reed")


def test_scopes_to_list_is_sorted() -> None:
    assert scopes_to_list(ALL_SCOPES) == ["admin", "records:read", "records:write", "sync:read"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(VALID_NAMES), st.text(max_size=20)), max_size=8))
def test_random_names_are_never_accepted_unless_valid(names: list[str]) -> None:
    all_valid = bool(names) and all(n in VALID_NAMES for n in names)
    try:
        result = parse_scopes(names)
    except InvalidRequest:
        assert not all_valid
        return
    assert all_valid
    assert result
    assert result <= ALL_SCOPES
    expected: set[str] = set()
    for n in names:
        expected |= PRESETS.get(n, frozenset({n}))
    assert result == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from(VALID_NAMES), min_size=1, max_size=5),
    st.lists(st.sampled_from(VALID_NAMES), min_size=1, max_size=5),
)
def test_parsing_distributes_over_concatenation(a: list[str], b: list[str]) -> None:
    assert parse_scopes(a + b) == parse_scopes(a) | parse_scopes(b)


def test_public_names_are_reexported() -> None:
    expected = {
        "ADMIN",
        "ALL_SCOPES",
        "PRESETS",
        "RECORDS_READ",
        "RECORDS_WRITE",
        "SYNC_READ",
        "AsyncStateReader",
        "IssuedToken",
        "Principal",
        "RateDecision",
        "RateLimiter",
        "ServiceAccount",
        "StateReader",
        "WriteQuota",
        "charge_write",
        "authenticate",
        "authenticate_bearer",
        "bootstrap_admin",
        "create_service_account",
        "get_service_account",
        "has_scope",
        "hash_bearer",
        "is_bootstrapped",
        "list_service_accounts",
        "parse_scopes",
        "require_scope",
        "revoke_service_account",
        "rotate_key",
        "rotate_token",
        "scopes_to_list",
        # grants and invites (tests/consent/test_grants.py, test_invites.py)
        "EVERYTHING",
        "NOTHING",
        "ConsentView",
        "Credential",
        "Grant",
        "Invite",
        "InviteParams",
        "InviteUrl",
        "IssuedInvite",
        "RedeemRequest",
        "Redeemed",
        "Target",
        "bulk_revoke",
        "confirmation_code",
        "create_grant",
        "create_invite",
        "delete_grant",
        "get_invite",
        "list_grants",
        "list_invites",
        "load_view",
        "parse_invite_params",
        "parse_invite_url",
        "parse_redeem_request",
        "parse_target",
        "redeem_in_tx",
        "redeem_proof_payload",
        "revoke_invite",
        "sign_redeem_proof",
        "verify_redeem_proof",
        "view_for",
    }
    public = {n for n in dir(fedpeer.consent) if not n.startswith("_")} - {
        "annotations",
        "grants",
        "invites",
        "ratelimit",
        "scopes",
        "tokens",
    }
    assert public == expected
