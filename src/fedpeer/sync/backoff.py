"""Retry delays for failing pairs: exponential backoff with equal jitter.

Theory of operation
-------------------
The n-th retry after a failure (``attempt`` counts from 0) waits

    ceiling = min(cap_s, base_s * 2**attempt)
    delay   = ceiling / 2 + uniform(0, ceiling / 2)        # "equal jitter"

so the delay always lies in ``[ceiling / 2, ceiling]``. Equal jitter (rather
than "full jitter", ``uniform(0, ceiling)``) keeps a floor under every delay: a
peer that keeps failing is never retried in a tight loop, and the growth is
visible to an operator reading the pair's stats, while the random half still
spreads out many pairs that failed at the same moment (a peer coming back from
an outage is not hit by every puller at once).

A server's ``Retry-After`` (429, some 503s) is honoured as a floor: the delay is
``max(retry_after, computed)``. A hostile or broken server cannot park a pair
forever with a huge ``Retry-After``: the value is clamped to
``max_retry_after_s`` (one hour by default).

The policy holds no state. The attempt number lives in the pair
(``Pair.retries``, persisted) so a restarted node keeps backing off where it left
off; a success or a user's kick sets it back to 0. Randomness comes from an
injected :class:`random.Random`, so tests are deterministic.
"""

from __future__ import annotations

import math
import random

import attrs

__all__ = ["DEFAULT_BACKOFF", "Backoff"]


def _positive(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{attr.name} must be a positive finite number, got {value!r}")


@attrs.frozen
class Backoff:
    """Exponential backoff with equal jitter (see the module docstring).

    ``base_s`` is the ceiling of the first retry (attempt 0), ``cap_s`` the largest
    ceiling, ``max_retry_after_s`` the largest ``Retry-After`` honoured. Raises
    ``ValueError`` on construction for non-positive or non-finite values, or when
    ``cap_s < base_s``.
    """

    base_s: float = attrs.field(default=1.0, validator=_positive)
    cap_s: float = attrs.field(default=300.0, validator=_positive)
    max_retry_after_s: float = attrs.field(default=3600.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.cap_s < self.base_s:
            raise ValueError(f"cap_s ({self.cap_s}) must be >= base_s ({self.base_s})")

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay for retry number ``attempt`` (0-based).

        ``min(cap_s, base_s * 2**attempt)``; a negative attempt counts as 0.
        Never overflows, whatever the attempt number.
        """
        attempt = max(0, attempt)
        # 2**attempt grows past any cap quickly; stop multiplying once it is reached.
        if attempt >= 64 or self.base_s * 2.0**attempt >= self.cap_s:
            return self.cap_s
        return self.base_s * 2.0**attempt

    def bounds(self, attempt: int, retry_after: float | None = None) -> tuple[float, float]:
        """``(low, high)``: every value :meth:`delay` can return for these arguments."""
        high = self.ceiling(attempt)
        low = high / 2
        floor = self._retry_after_floor(retry_after)
        return max(low, floor), max(high, floor)

    def delay(
        self,
        attempt: int,
        *,
        rng: random.Random,
        retry_after: float | None = None,
    ) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based).

        The result is in ``bounds(attempt, retry_after)``: equal jitter inside
        ``[ceiling / 2, ceiling]``, raised to ``retry_after`` (clamped to
        ``max_retry_after_s``) when the server sent one. Deterministic for a given
        ``rng`` state; consumes exactly one ``rng.random()`` call. Pure: no I/O.
        """
        high = self.ceiling(attempt)
        computed = high / 2 + rng.random() * (high / 2)
        return max(computed, self._retry_after_floor(retry_after))

    def _retry_after_floor(self, retry_after: float | None) -> float:
        if retry_after is None or math.isnan(retry_after) or retry_after <= 0:
            return 0.0
        return min(float(retry_after), self.max_retry_after_s)


DEFAULT_BACKOFF = Backoff()
"""1 s base, 5 min cap, Retry-After honoured up to one hour (issue 5)."""
