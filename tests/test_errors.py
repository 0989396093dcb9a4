"""The error tree: stable codes, HTTP statuses, round trip through the wire form."""

from __future__ import annotations

import re

import pytest

from fedpeer import errors
from fedpeer.errors import _ABOUT_THE_PEER, FedpeerError, all_codes, error_from_code


def test_every_code_is_upper_snake_and_unique() -> None:
    codes = all_codes()
    assert len(codes) >= 50
    for code, cls in codes.items():
        assert re.fullmatch(r"[A-Z][A-Z0-9_]+", code), code
        assert cls.code == code
        assert 400 <= cls.http_status <= 599


@pytest.mark.parametrize("code", sorted(all_codes()))
def test_round_trip_through_wire_form(code: str) -> None:
    cls = all_codes()[code]
    err = cls("do this next")
    body = err.to_dict()
    assert body == {"error": {"code": code, "message": "do this next"}}
    back = error_from_code(body["error"]["code"], body["error"]["message"], cls.http_status)
    # Codes that say what this side found wrong with a peer come back as plain
    # errors with that code and status: a peer cannot hand us our own verdict.
    assert type(back) is (FedpeerError if code in _ABOUT_THE_PEER else cls)
    assert back.code == code
    assert back.http_status == cls.http_status
    assert str(back) == f"{code}: do this next"


def test_unknown_code_keeps_code_and_status() -> None:
    err = error_from_code("SOMETHING_NEW", "newer server", 418)
    assert isinstance(err, FedpeerError)
    assert err.code == "SOMETHING_NEW"
    assert err.http_status == 418


def test_default_message_is_the_docstring() -> None:
    assert errors.InviteExpired().message.startswith("The invite has expired")


def test_duplicate_code_is_refused() -> None:
    with pytest.raises(TypeError, match="duplicate"):

        class Again(FedpeerError):
            code = "BAD_SIGNATURE"


def test_every_exported_name_exists() -> None:
    for name in errors.__all__:
        assert hasattr(errors, name), name


def test_errors_received_from_another_node_are_cut_escaped_and_checked() -> None:
    """A peer chooses the code and message of the errors it answers: both are
    stored in a pair's last_error, logged and printed (audit)."""
    from fedpeer.errors import (
        MAX_REMOTE_MESSAGE,
        PeerInvalid,
        TokenInvalid,
        clean_remote_text,
        error_from_code,
    )

    err = error_from_code("TOKEN_INVALID", "x" * 100_000, 401)
    assert isinstance(err, TokenInvalid)
    assert len(err.message) == MAX_REMOTE_MESSAGE + 3  # then "..."
    assert clean_remote_text("a\nb\x1b[2J\u202e\U000e0001 c\u2028d\u200de") == (
        "a\\x0ab\\x1b[2J\\u202e\\U000e0001 c\\u2028d\u200de"  # ZWJ is ordinary text
    )
    bad = error_from_code("X\x1b[31m\nY", "m", 403)
    assert isinstance(bad, PeerInvalid)  # not a fedpeer code: not a 403 that stops a pair
    assert "\x1b" not in bad.message
    assert error_from_code("A_NEWER_CODE", "fine", 418).code == "A_NEWER_CODE"
    assert error_from_code("lower", "m").code == "PEER_INVALID"
