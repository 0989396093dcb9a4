"""``fedpeer._values.count_values``: the one count of values in a decoded value
(record and request bodies, DID documents), exact up to its cap."""

from __future__ import annotations

import pytest

from fedpeer._values import count_values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        ([], 1),
        ({}, 1),
        ([1, 2], 3),
        ({"a": 1}, 3),  # the map, its key, its value
        ({"a": [1, {}]}, 5),
        ([[[[]]]], 4),
    ],
)
def test_exact_below_the_cap(value: object, expected: int) -> None:
    assert count_values(value, 100) == expected


def test_stops_at_the_cap_without_copying_a_long_container() -> None:
    huge = [[]] * 10_000_000  # copying it onto the stack would take a while
    assert count_values(huge, 1000) == 1001
    assert count_values({str(i): i for i in range(5000)}, 1000) == 1001
    assert count_values([[]] * 999, 1000) == 1000  # exactly at the cap: exact
    assert count_values([[]] * 1000, 1000) == 1001
