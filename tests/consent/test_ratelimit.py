"""Token-bucket rate limiter, driven by an explicit clock (no sleeps)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeer.consent import RateDecision, RateLimiter
from fedpeer.errors import ConfigInvalid, RateLimited


def test_burst_then_refused_with_the_right_retry_after() -> None:
    rl = RateLimiter(rate_per_s=2.0, burst=3)
    got = [rl.check("a", now=100.0) for _ in range(3)]
    assert [d.allowed for d in got] == [True, True, True]
    assert [d.remaining for d in got] == [2, 1, 0]
    assert all(d.limit == 3 and d.retry_after_s == 0.0 for d in got)
    assert got[-1].reset_s == pytest.approx(1.5)  # 3 tokens at 2/s

    refused = rl.check("a", now=100.0)
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.retry_after_s == pytest.approx(0.5)
    assert refused.reset_s == pytest.approx(1.5)
    assert refused.headers() == {
        "X-RateLimit-Limit": "3",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "2",
        "Retry-After": "1",
    }
    err = refused.error()
    assert isinstance(err, RateLimited)
    assert err.http_status == 429
    assert err.retry_after == pytest.approx(0.5)


def test_a_refused_request_takes_nothing_and_the_wait_shrinks() -> None:
    rl = RateLimiter(rate_per_s=1.0, burst=1)
    assert rl.check("k", now=0.0).allowed
    for _ in range(5):  # hammering does not push the retry time out
        d = rl.check("k", now=0.25)
        assert not d.allowed
        assert d.retry_after_s == pytest.approx(0.75)
    d = rl.check("k", now=0.9)
    assert not d.allowed
    assert d.retry_after_s == pytest.approx(0.1)
    assert d.headers()["Retry-After"] == "1"  # rounded up, never 0
    assert rl.check("k", now=1.0).allowed


def test_refill_is_linear_and_capped_at_burst() -> None:
    rl = RateLimiter(rate_per_s=10.0, burst=5)
    for _ in range(5):
        assert rl.check("k", now=0.0).allowed
    assert not rl.check("k", now=0.0).allowed
    d = rl.check("k", now=0.1)  # exactly one token back
    assert d.allowed
    assert d.remaining == 0
    assert not rl.check("k", now=0.1).allowed
    d = rl.check("k", now=0.35)  # 2.5 tokens back, one taken
    assert d.allowed
    assert d.remaining == 1
    d = rl.check("k", now=1000.0)  # long idle: full, not more
    assert d.allowed
    assert d.remaining == 4
    assert d.reset_s == pytest.approx(0.1)
    assert d.headers() == {
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "4",
        "X-RateLimit-Reset": "1",
    }


def test_float_rounding_never_refuses_a_due_request() -> None:
    rl = RateLimiter(rate_per_s=10.0, burst=1)
    t = 0.0
    for i in range(1000):  # one request every 0.1 s, accumulated in floats
        assert rl.check("k", now=t).allowed, i
        t += 0.1


def test_keys_are_independent() -> None:
    rl = RateLimiter(rate_per_s=1.0, burst=1)
    assert rl.check("a", now=0.0).allowed
    assert not rl.check("a", now=0.0).allowed
    assert rl.check("b", now=0.0).allowed
    assert len(rl) == 2


def test_a_clock_going_backwards_adds_nothing() -> None:
    rl = RateLimiter(rate_per_s=1.0, burst=2)
    assert rl.check("k", now=10.0).allowed
    assert rl.check("k", now=10.0).allowed
    d = rl.check("k", now=5.0)  # time went back 5 s
    assert not d.allowed
    assert d.retry_after_s == pytest.approx(1.0)
    assert not rl.check("k", now=10.5).allowed  # refill counts from 10.0, not 5.0
    assert rl.check("k", now=11.0).allowed


def test_cost_takes_several_tokens() -> None:
    rl = RateLimiter(rate_per_s=1.0, burst=10)
    d = rl.check("k", now=0.0, cost=7)
    assert d.allowed
    assert d.remaining == 3
    d = rl.check("k", now=0.0, cost=4)
    assert not d.allowed
    assert d.retry_after_s == pytest.approx(1.0)
    with pytest.raises(ValueError, match="cost"):
        rl.check("k", now=0.0, cost=11)
    with pytest.raises(ValueError, match="cost"):
        rl.check("k", now=0.0, cost=0)


def test_max_keys_evicts_the_longest_idle_key() -> None:
    rl = RateLimiter(rate_per_s=0.001, burst=1, max_keys=3)
    for key in "abc":
        assert rl.check(key, now=0.0).allowed
    assert not rl.check("a", now=1.0).allowed  # "a" is now the most recently used
    assert rl.check("d", now=2.0).allowed  # over the bound: "b" (idle longest) goes
    assert len(rl) == 3
    assert rl.check("b", now=3.0).allowed  # came back full; this evicts "c"
    assert not rl.check("a", now=3.0).allowed  # "a" was kept, still empty
    assert not rl.check("d", now=3.0).allowed
    assert rl.check("c", now=3.0).allowed  # "c" was evicted by "b"
    assert len(rl) == 3


def test_memory_stays_bounded_under_many_keys() -> None:
    rl = RateLimiter(rate_per_s=1.0, burst=1, max_keys=100)
    for i in range(10_000):
        rl.check(f"client-{i}", now=float(i))
        assert len(rl) <= 100
    assert len(rl) == 100
    # The most recent 100 keys are the ones kept: each is still empty.
    assert not rl.check("client-9999", now=9999.0).allowed
    assert rl.check("client-0", now=9999.0).allowed  # forgotten, so full again


def test_forget_drops_a_key() -> None:
    rl = RateLimiter(rate_per_s=1.0, burst=1)
    assert rl.check("k", now=0.0).allowed
    rl.forget("k")
    rl.forget("never-seen")
    assert len(rl) == 0
    assert rl.check("k", now=0.0).allowed


def test_without_now_it_uses_the_monotonic_clock() -> None:
    rl = RateLimiter(rate_per_s=0.001, burst=2)
    assert rl.check("k").allowed
    assert rl.check("k").allowed
    assert not rl.check("k").allowed


@pytest.mark.parametrize(
    ("rate", "burst", "max_keys"),
    [
        (0.0, 1, 10),
        (-1.0, 1, 10),
        (math.nan, 1, 10),
        (math.inf, 1, 10),
        (1.0, 0, 10),
        (1.0, 1.5, 10),
        (1.0, True, 10),
        (1.0, 1, 0),
    ],
)
def test_bad_configuration_is_refused(rate: float, burst: int, max_keys: int) -> None:
    with pytest.raises(ConfigInvalid):
        RateLimiter(rate_per_s=rate, burst=burst, max_keys=max_keys)


def test_allowed_decision_has_no_retry_after_header() -> None:
    d = RateDecision(allowed=True, limit=2, remaining=1, reset_s=0.2, retry_after_s=0.0)
    assert "Retry-After" not in d.headers()
    assert d.headers()["X-RateLimit-Reset"] == "1"


@settings(max_examples=60, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    burst=st.integers(1, 8),
    gaps=st.lists(st.floats(0.0, 2.0, allow_nan=False), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_refill(rate: float, burst: int, gaps: list[float]) -> None:
    rl = RateLimiter(rate_per_s=rate, burst=burst)
    t = 0.0
    allowed_at: list[float] = []
    for gap in gaps:
        t += gap
        d = rl.check("k", now=t)
        assert 0 <= d.remaining <= burst
        assert d.retry_after_s >= 0.0
        if d.allowed:
            allowed_at.append(t)
        else:
            # Refused means a token really is not there: retry_after is honest.
            assert d.retry_after_s > 0.0
            assert rl.check("k", now=t + d.retry_after_s).allowed
            allowed_at.append(t + d.retry_after_s)
            t += d.retry_after_s
    # In any window [s, e], at most burst + rate * (e - s) requests got through.
    for i, start in enumerate(allowed_at):
        for j in range(i, len(allowed_at)):
            span = allowed_at[j] - start
            assert j - i + 1 <= burst + rate * span + 1e-6
