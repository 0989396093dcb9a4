"""Per-key token-bucket rate limiting, sans-I/O.

Each key (a client address, a service account id, ...) has a bucket holding up
to ``burst`` tokens that refills at ``rate_per_s`` tokens per second. A request
takes one token; with less than one token left it is refused, and the decision
says how long until a token is back. Time is passed in (``now``, seconds on any
monotonic scale), so tests drive it explicitly and nothing here sleeps.

Memory is bounded: at most ``max_keys`` buckets are kept. Buckets are kept in
least-recently-used order; when a new key would exceed the bound, the key that
has been idle longest is dropped. A dropped bucket comes back full, which only
forgets a limit for a key that has been quiet longer than every other tracked
key; buckets idle long enough to have refilled completely carry no information
at all and are dropped first by the same rule.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

import attrs

from ..errors import ConfigInvalid, RateLimited

__all__ = ["RateDecision", "RateLimiter"]

_EPSILON = 1e-9


@attrs.frozen
class RateDecision:
    """The outcome of :meth:`RateLimiter.check`.

    ``allowed``: let the request through. ``limit``: the burst size.
    ``remaining``: whole tokens left after this request. ``reset_s``: seconds
    until the bucket is full again. ``retry_after_s``: seconds until a request
    would be allowed (0.0 when ``allowed``).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float

    def headers(self) -> dict[str, str]:
        """HTTP headers for this decision.

        ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
        ``X-RateLimit-Reset`` (whole seconds until the bucket is full, rounded
        up: a delta, not a timestamp) always; ``Retry-After`` (whole seconds,
        rounded up, at least 1) only when refused.
        """
        out = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_s)),
        }
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return out

    def error(self) -> RateLimited:
        """The ``RATE_LIMITED`` (429) error for a refused decision."""
        wait = max(1, math.ceil(self.retry_after_s))
        return RateLimited(
            f"too many requests; wait {wait} s and try again", retry_after=self.retry_after_s
        )


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not (isinstance(value, int | float) and value > 0):
        raise ConfigInvalid(f"{attribute.name} must be > 0, got {value!r}")
    if not math.isfinite(value):
        raise ConfigInvalid(f"{attribute.name} must be finite, got {value!r}")


def _positive_int(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigInvalid(f"{attribute.name} must be a whole number >= 1, got {value!r}")


@attrs.define
class RateLimiter:
    """Token buckets keyed by string; see the module docstring.

    ``rate_per_s`` (> 0) tokens are added per second up to ``burst`` (>= 1);
    at most ``max_keys`` (>= 1) buckets are remembered. Bad values raise
    ``CONFIG_INVALID``. Not thread-safe (use it from one event loop thread); never
    blocks.
    """

    rate_per_s: float = attrs.field(validator=_positive)
    burst: int = attrs.field(validator=_positive_int)
    max_keys: int = attrs.field(default=10_000, validator=_positive_int)
    # key -> (tokens, last_seen); LRU order, least recently used first.
    _buckets: OrderedDict[str, tuple[float, float]] = attrs.field(init=False, factory=OrderedDict)

    def __len__(self) -> int:
        """How many keys are tracked (never more than ``max_keys``)."""
        return len(self._buckets)

    def check(self, key: str, now: float | None = None, cost: float = 1.0) -> RateDecision:
        """Take ``cost`` tokens from ``key``'s bucket if it has them.

        ``now`` is seconds on a monotonic scale (None: ``time.monotonic()``).
        A clock that goes backwards is treated as standing still. A refused
        request takes nothing. ``cost`` must be in ``(0, burst]``
        (``ValueError`` otherwise). Returns a :class:`RateDecision`. Pure
        arithmetic; O(1).
        """
        if not (0 < cost <= self.burst):
            raise ValueError(f"cost must be in (0, {self.burst}], got {cost!r}")
        t = time.monotonic() if now is None else now
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            tokens, last = float(self.burst), t
        else:
            tokens, last = bucket
            elapsed = t - last
            if elapsed > 0:
                tokens = min(float(self.burst), tokens + elapsed * self.rate_per_s)
                last = t
        # A hair of tolerance so float rounding in the refill (0.3 - 0.2 s)
        # never refuses a request that is due.
        allowed = tokens + _EPSILON >= cost
        if allowed:
            tokens = max(0.0, tokens - cost)
        self._buckets[key] = (tokens, last)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        retry_after = 0.0 if allowed else (cost - tokens) / self.rate_per_s
        return RateDecision(
            allowed=allowed,
            limit=self.burst,
            remaining=math.floor(tokens),
            reset_s=(self.burst - tokens) / self.rate_per_s,
            retry_after_s=retry_after,
        )

    def forget(self, key: str) -> None:
        """Drop ``key``'s bucket (it comes back full)."""
        self._buckets.pop(key, None)
