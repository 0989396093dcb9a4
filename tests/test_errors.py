"""The error tree: stable codes, HTTP statuses, round trip through the wire form."""

from __future__ import annotations

import re

import pytest

from fedpeer import errors
from fedpeer.errors import FedpeerError, all_codes, error_from_code


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
    back = error_from_code(body["error"]["code"], body["error"]["message"])
    assert type(back) is cls
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
