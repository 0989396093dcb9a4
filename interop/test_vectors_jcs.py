"""RFC 8785 (JCS) against the cyberphone test data and the ES6 number edge cases."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from fedpeer.errors import Malformed
from fedpeer.identity._dagjson import es6_number
from fedpeer.identity.canonical import dagjson_decode, dagjson_encode, jcs, jcs_received
from interop._vectors import VECTORS, load_json

CYBERPHONE = VECTORS / "jcs" / "cyberphone-testdata"
NAMES = sorted(p.stem for p in (CYBERPHONE / "input").glob("*.json"))

NUMBERS = load_json("jcs/jcs-numbers-es6-edgecases.json")
NUMBER_CASES: list[dict[str, Any]] = NUMBERS["vectors"] + NUMBERS["readme_samples"]
FINITE = [c for c in NUMBER_CASES if c["expected"] is not None]
NOT_FINITE = [c for c in NUMBER_CASES if c["expected"] is None]


def _double(ieee_hex: str) -> float:
    value: float = struct.unpack(">d", bytes.fromhex(ieee_hex.rjust(16, "0")))[0]
    return value


def test_all_files_present() -> None:
    assert NAMES == ["arrays", "french", "structures", "unicode", "values", "weird"]
    assert len(NUMBERS["vectors"]) == NUMBERS["count"] == 166


@pytest.mark.parametrize("name", NAMES)
def test_cyberphone_output(name: str) -> None:
    value = json.loads((CYBERPHONE / "input" / f"{name}.json").read_bytes())
    expected = (CYBERPHONE / "output" / f"{name}.json").read_bytes()
    assert jcs(value) == expected


@pytest.mark.parametrize("name", NAMES)
def test_cyberphone_outhex(name: str) -> None:
    value = json.loads((CYBERPHONE / "input" / f"{name}.json").read_bytes())
    hex_text = (CYBERPHONE / "outhex" / f"{name}.txt").read_text(encoding="ascii")
    assert jcs(value) == bytes.fromhex("".join(hex_text.split()))


@pytest.mark.parametrize("name", NAMES)
def test_cyberphone_output_is_a_fixed_point(name: str) -> None:
    expected = (CYBERPHONE / "output" / f"{name}.json").read_bytes()
    assert jcs(json.loads(expected)) == expected


@pytest.mark.parametrize("case", FINITE, ids=[c["ieee_hex"] for c in FINITE])
def test_number(case: dict[str, Any]) -> None:
    value = _double(case["ieee_hex"])
    assert jcs(value) == case["expected"].encode("ascii")
    assert jcs([value]) == b"[" + case["expected"].encode("ascii") + b"]"
    # DAG-JSON writes floats with the same ES6 digits (plus ".0" when integral).
    assert es6_number(value) == case["expected"]
    assert dagjson_decode(dagjson_encode(value)) == value


@pytest.mark.parametrize("case", NOT_FINITE, ids=[c["ieee_hex"] for c in NOT_FINITE])
def test_nan_and_infinity_are_refused(case: dict[str, Any]) -> None:
    value = _double(case["ieee_hex"])
    with pytest.raises(Malformed):
        jcs(value)
    with pytest.raises(Malformed):
        jcs({"n": value})


@pytest.mark.parametrize("case", FINITE, ids=[c["ieee_hex"] for c in FINITE])
def test_number_text_read_back_is_a_fixed_point(case: dict[str, Any]) -> None:
    """protocol.md §3.1: a verifier canonicalises what a JSON reader gives for the
    expected text; integer-looking text beyond 2**53 (``-333333333333333300000``)
    comes back from Python's reader as an int and must canonicalise as its double."""
    text = case["expected"]
    value = json.loads(text)
    assert jcs_received(value) == text.encode("ascii")
    assert jcs_received({"n": value}) == b'{"n":' + text.encode("ascii") + b"}"
    if isinstance(value, int) and abs(value) > 2**53 - 1:
        with pytest.raises(Malformed, match="I-JSON"):
            jcs(value)  # a signer refuses it (protocol.md §4.3)


def test_large_integer_cases_are_covered() -> None:
    """The edge cases above include integer-looking texts beyond 2**53."""
    big = [c for c in FINITE if isinstance(json.loads(c["expected"]), int)]
    assert any(abs(json.loads(c["expected"])) > 2**53 for c in big)


@pytest.mark.parametrize("name", NAMES)
def test_cyberphone_received_output(name: str) -> None:
    """jcs_received agrees with jcs (and the expected bytes) wherever jcs accepts."""
    value = json.loads((CYBERPHONE / "input" / f"{name}.json").read_bytes())
    expected = (CYBERPHONE / "output" / f"{name}.json").read_bytes()
    assert jcs_received(value) == expected
