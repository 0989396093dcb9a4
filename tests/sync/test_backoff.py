"""The retry policy: exponential growth, equal jitter, the cap, Retry-After."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeer.sync.backoff import DEFAULT_BACKOFF, Backoff


def test_default_policy_is_one_second_base_five_minute_cap() -> None:
    assert DEFAULT_BACKOFF.base_s == 1.0
    assert DEFAULT_BACKOFF.cap_s == 300.0


def test_ceiling_doubles_then_caps_at_300() -> None:
    got = [DEFAULT_BACKOFF.ceiling(n) for n in range(12)]
    assert got == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    assert DEFAULT_BACKOFF.ceiling(10**9) == 300  # no overflow
    assert DEFAULT_BACKOFF.ceiling(-3) == 1


def test_delay_sequence_is_deterministic_for_a_seed_and_grows_within_bounds() -> None:
    a = [DEFAULT_BACKOFF.delay(n, rng=random.Random(7)) for n in range(15)]
    b = [DEFAULT_BACKOFF.delay(n, rng=random.Random(7)) for n in range(15)]
    assert a == b
    for n, d in enumerate(a):
        high = min(300.0, 2.0**n)
        assert high / 2 <= d <= high
    assert max(a) <= 300.0
    assert a[-1] >= 150.0  # capped attempts still wait at least half the cap


def test_jitter_spreads_over_the_upper_half() -> None:
    rng = random.Random(1)
    draws = [DEFAULT_BACKOFF.delay(5, rng=rng) for _ in range(200)]
    assert all(16 <= d <= 32 for d in draws)
    assert min(draws) < 18
    assert max(draws) > 30
    assert len(set(draws)) > 150


def test_retry_after_is_a_floor() -> None:
    rng = random.Random(0)
    assert DEFAULT_BACKOFF.delay(0, rng=rng, retry_after=120) == 120
    # a Retry-After shorter than the computed delay does not shorten it
    d = DEFAULT_BACKOFF.delay(8, rng=random.Random(0), retry_after=1)
    assert 128 <= d <= 256


def test_huge_or_bogus_retry_after_is_clamped_or_ignored() -> None:
    rng = random.Random(0)
    assert DEFAULT_BACKOFF.delay(0, rng=rng, retry_after=10**9) == 3600
    assert DEFAULT_BACKOFF.delay(0, rng=rng, retry_after=math.inf) == 3600
    for bogus in (math.nan, -5.0, 0.0):
        assert 0.5 <= DEFAULT_BACKOFF.delay(0, rng=rng, retry_after=bogus) <= 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_s": 0},
        {"base_s": -1},
        {"cap_s": math.inf},
        {"base_s": 10, "cap_s": 5},
        {"max_retry_after_s": math.nan},
    ],
)
def test_bad_policy_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Backoff(**kwargs)


@settings(max_examples=200, deadline=None)
@given(
    base=st.floats(0.01, 10),
    cap_factor=st.floats(1, 1000),
    attempt=st.integers(-5, 5000),
    retry_after=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    seed=st.integers(0, 2**32),
)
def test_delay_always_within_bounds(
    base: float, cap_factor: float, attempt: int, retry_after: float | None, seed: int
) -> None:
    policy = Backoff(base_s=base, cap_s=base * cap_factor)
    d = policy.delay(attempt, rng=random.Random(seed), retry_after=retry_after)
    low, high = policy.bounds(attempt, retry_after)
    assert low <= d <= high
    assert math.isfinite(d)
    assert d >= base / 2
    ra_floor = 0.0
    if retry_after is not None and not math.isnan(retry_after) and retry_after > 0:
        ra_floor = min(retry_after, policy.max_retry_after_s)
    assert d <= max(policy.cap_s, ra_floor)
    assert d >= ra_floor
