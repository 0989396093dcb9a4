"""RFC 8785 (JCS) against the cyberphone test data and the ES6 number edge cases."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from fedpeer.errors import Malformed
from fedpeer.identity._dagjson import es6_number
from fedpeer.identity.canonical import dagjson_decode, dagjson_encode, jcs
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
