"""Sync pairs: "target pulls from source" — values, ids, states and stats (pure).

A pair lives on the *target* node and says: pull the records of ``peer_did``
(reachable at ``peer_url``) that pass ``filter`` into the local store, showing
``credential`` (a bearer token the source issued) on every request. The pair id
is derived from both DIDs and the filter, so creating the same pair twice gives
the same id and the caller returns the existing pair.

Theory of the pair states
-------------------------
The states users see (``GET /v1/sync/pairs``, ``fedpeer pairs``) sit in ONE
table, :data:`PAIR_TRANSITIONS`, keyed by state then action::

    state       pause   resume  kick    delete  progress catch_up fail    stop    reset
    running     paused  -       running deleted running  caught_up failing stopped running
    caught_up   paused  -       running deleted running  caught_up failing stopped running
    failing     paused  -       running deleted running  caught_up failing stopped running
    paused      -       running -       deleted -        -         -       -       -
    stopped     -       running -       deleted -        -         -       -       -
    deleted     -       -       -       -       -        -         -       -       -

``pause``, ``resume``, ``kick`` and ``delete`` are user actions; the rest are
what the pull machine (:mod:`fedpeer.sync._machine`) applies as pages and
errors arrive: ``progress`` (a page committed, more to come), ``catch_up`` (a
page committed and the source said ``has_more: false``), ``fail`` (a bad page,
network error, 5xx, 429 — retried with backoff), ``stop`` (401/403: the
credential must be fixed before anything else happens) and ``reset`` (the
source answered CURSOR_RESET; pull everything again). A ``-`` raises
:class:`~fedpeer.errors.PairStateInvalid` (HTTP 409) with a message saying what
to do instead. ``deleted`` is terminal and never stored: the caller removes the
row.

Persistence: :meth:`Pair.to_dict` gives the JSON-able row for the store's
``pairs`` table (credential included: the node needs it to talk to the peer);
:meth:`Pair.from_dict` reads it back and raises ``StoreCorrupt`` on a bad row.
:meth:`Pair.to_public_dict` is what the HTTP API and CLI show: never the
credential.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import re
import urllib.parse
from collections.abc import Iterable, Mapping

import attrs

from .._clock import now_ms as _now_ms
from ..errors import (
    DidInvalid,
    FedpeerError,
    InvalidRequest,
    PairSelf,
    PairStateInvalid,
    StoreCorrupt,
)
from ..identity._syntax import is_did, is_name
from ..identity.canonical import jcs
from ..store.base import ChangeFilter, filter_matches
from .feed import Cursor

__all__ = [
    "LATENCY_BUCKETS_MS",
    "PAIR_ORIGINS",
    "PAIR_TRANSITIONS",
    "LastError",
    "Pair",
    "PairAction",
    "PairFilter",
    "PairState",
    "PairStats",
    "make_pair",
    "pair_id",
    "transition",
]

PAIR_SCHEMA_VERSION = 1
PAIR_ORIGINS = ("owner", "redeem")
"""Who set a pair up (:attr:`Pair.origin`)."""

# --- states and the one transition table ------------------------------------------


class PairState(enum.Enum):
    """What a pair is doing, as users see it (stored as the value string)."""

    RUNNING = "running"
    CAUGHT_UP = "caught_up"
    FAILING = "failing"
    PAUSED = "paused"
    STOPPED = "stopped"
    DELETED = "deleted"


class PairAction(enum.Enum):
    """Inputs of :data:`PAIR_TRANSITIONS` (user actions first, then machine ones)."""

    PAUSE = "pause"
    RESUME = "resume"
    KICK = "kick"
    DELETE = "delete"
    PROGRESS = "progress"
    CATCH_UP = "catch_up"
    FAIL = "fail"
    STOP = "stop"
    RESET = "reset"


USER_ACTIONS = frozenset({PairAction.PAUSE, PairAction.RESUME, PairAction.KICK, PairAction.DELETE})

_S = PairState
_A = PairAction
_ACTIVE = {
    _A.PAUSE: _S.PAUSED,
    _A.KICK: _S.RUNNING,
    _A.DELETE: _S.DELETED,
    _A.PROGRESS: _S.RUNNING,
    _A.CATCH_UP: _S.CAUGHT_UP,
    _A.FAIL: _S.FAILING,
    _A.STOP: _S.STOPPED,
    _A.RESET: _S.RUNNING,
}
_HALTED = {_A.RESUME: _S.RUNNING, _A.DELETE: _S.DELETED}

PAIR_TRANSITIONS: Mapping[PairState, Mapping[PairAction, PairState]] = {
    _S.RUNNING: dict(_ACTIVE),
    _S.CAUGHT_UP: dict(_ACTIVE),
    _S.FAILING: dict(_ACTIVE),
    _S.PAUSED: dict(_HALTED),
    _S.STOPPED: dict(_HALTED),
    _S.DELETED: {},
}
"""state -> action -> new state. Anything missing is refused (PairStateInvalid)."""

_HINTS: dict[tuple[PairState, PairAction], str] = {
    (_S.PAUSED, _A.PAUSE): "it is already paused",
    (_S.PAUSED, _A.KICK): "resume it instead",
    (_S.STOPPED, _A.KICK): "set a working credential and resume it",
    (_S.STOPPED, _A.PAUSE): "it is stopped already; resume it once its credential is fixed",
    (_S.RUNNING, _A.RESUME): "it is not paused or stopped",
    (_S.CAUGHT_UP, _A.RESUME): "it is not paused or stopped",
    (_S.FAILING, _A.RESUME): "it is not paused or stopped; kick it to retry now",
}


def transition(state: PairState, action: PairAction, *, pair_id: str = "") -> PairState:
    """The state after ``action`` in ``state``, from :data:`PAIR_TRANSITIONS`.

    Raises ``PairStateInvalid`` (PAIR_STATE_INVALID, 409) when the table has no
    entry; the message names the pair, its state and what to do instead. Pure.
    """
    new = PAIR_TRANSITIONS[state].get(action)
    if new is None:
        who = f"pair {pair_id}" if pair_id else "the pair"
        if state is _S.DELETED:
            hint = "it was deleted"
        else:
            hint = _HINTS.get((state, action), "that is not allowed from this state")
        raise PairStateInvalid(f"cannot {action.value} {who} while it is {state.value}: {hint}")
    return new


# --- small values --------------------------------------------------------------------

_MAX_NAME_LEN = 256
_MAX_CREDENTIAL_LEN = 4096
_CREDENTIAL_RE = re.compile(r"[\x21-\x7e]+")  # visible ASCII: safe in an HTTP header


def _check_did(value: str, what: str) -> str:
    if not is_did(value):
        raise DidInvalid(f"{what} is not a DID (expected did:<method>:<id>): {value!r:.80}")
    return value


def _empty_to_none(value: str | None) -> str | None:
    return value or None


def _check_name(_inst: object, attr: attrs.Attribute[str | None], value: str | None) -> None:
    if value is None:
        return
    if not is_name(value, _MAX_NAME_LEN):
        raise InvalidRequest(
            f"filter.{attr.name} must be 1..256 characters of [A-Za-z0-9._:@/+-], "
            f"not starting with '/' (or null for no constraint), got {value!r:.80}"
        )


@attrs.frozen
class PairFilter:
    """Which records a pair pulls: ``namespace`` is a prefix, ``thread`` exact.

    Matches the feed's ``namespace=`` / ``thread=`` parameters and the store's
    :class:`~fedpeer.store.base.ChangeFilter` (``namespace`` = raw string prefix).
    ``None`` or ``""`` means no constraint (``""`` is normalised to ``None`` so a
    filter has one spelling and one pair id). Raises ``InvalidRequest`` for a
    name outside the record name alphabet.
    """

    namespace: str | None = attrs.field(
        default=None, converter=_empty_to_none, validator=_check_name
    )
    thread: str | None = attrs.field(default=None, converter=_empty_to_none, validator=_check_name)

    def to_change_filter(self) -> ChangeFilter:
        """The same filter in the store's terms."""
        return ChangeFilter(namespace_prefix=self.namespace, thread=self.thread)

    def matches(self, namespace: str, thread: str) -> bool:
        """Whether a record with this namespace and thread passes the filter.

        The same verdict as ``self.to_change_filter().matches(...)``, without
        building a filter per record (this runs once per pulled record).
        """
        return filter_matches(self.namespace, self.thread, namespace, thread)

    def to_dict(self) -> dict[str, object]:
        """``{"namespace": str | None, "thread": str | None}``."""
        return {"namespace": self.namespace, "thread": self.thread}

    @classmethod
    def from_dict(cls, obj: object) -> PairFilter:
        """Parse ``{"namespace"?, "thread"?}``; ``None`` gives the empty filter.

        Raises ``InvalidRequest`` for unknown keys or bad names.
        """
        if obj is None:
            return cls()
        if not isinstance(obj, Mapping) or not set(obj) <= {"namespace", "thread"}:
            raise InvalidRequest('filter must be an object with optional "namespace", "thread"')
        ns, th = obj.get("namespace"), obj.get("thread")
        for name, v in (("namespace", ns), ("thread", th)):
            if v is not None and not isinstance(v, str):
                raise InvalidRequest(f"filter.{name} must be a string or null")
        return cls(namespace=ns, thread=th)


@attrs.frozen
class LastError:
    """The latest failure of a pair: machine ``code``, human ``message``, when."""

    code: str
    message: str
    at_ms: int

    @classmethod
    def from_error(cls, err: FedpeerError, *, at_ms: int, message: str | None = None) -> LastError:
        """Record ``err`` (its code; ``message`` overrides its message)."""
        return cls(
            code=err.code, message=message if message is not None else err.message, at_ms=at_ms
        )

    def to_dict(self) -> dict[str, object]:
        """``{"code", "message", "at_ms"}``."""
        return {"code": self.code, "message": self.message, "at_ms": self.at_ms}


# --- stats -------------------------------------------------------------------------------

LATENCY_BUCKETS_MS: tuple[int, ...] = (
    *(m * 10**e for e in range(0, 6) for m in (1, 2, 5)),  # 1 ms .. 500 s, 1-2-5 steps
    1_000_000,
    3_600_000,
    86_400_000,
)
"""Upper bounds (inclusive, ms) of the latency histogram buckets; one more bucket
counts everything above the last bound. Latency is record ``ts`` -> received and
verified here, so it includes the author's clock skew and time spent offline."""

RATE_WINDOW_S = 60
ERROR_WINDOW_MS = 3_600_000
MAX_ERROR_TIMES = 1000


def _bucket_of(latency_ms: int) -> int:
    """The index of the first bucket whose bound is >= ``latency_ms`` (the last,
    overflow bucket when none is)."""
    return bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)


def _int_tuple(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(value)


def _pair_tuple(value: Iterable[Iterable[int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for item in value:
        a, b = item
        out.append((a, b))
    return tuple(out)


@attrs.frozen
class PairStats:
    """Counters of one pair (pure value; every update returns a new one).

    ``records``/``bytes``/``pages`` count verified records, their encoded bytes
    and accepted pages since the pair was created. ``rate_window`` holds
    ``(unix_second, records)`` for the last minute (at most 60 entries);
    ``latency_counts`` is a histogram over :data:`LATENCY_BUCKETS_MS` (+1
    overflow bucket); ``error_times_ms`` the failures of the last hour (at most
    1000 kept); ``backoff_s`` the current retry delay while failing.
    :meth:`snapshot` computes the rates and percentiles users see.
    """

    records: int = 0
    bytes: int = 0
    pages: int = 0
    errors_total: int = 0
    last_page_ms: int | None = None
    latency_counts: tuple[int, ...] = attrs.field(
        default=(0,) * (len(LATENCY_BUCKETS_MS) + 1), converter=_int_tuple
    )
    latency_max_ms: int = 0
    rate_window: tuple[tuple[int, int], ...] = attrs.field(default=(), converter=_pair_tuple)
    error_times_ms: tuple[int, ...] = attrs.field(default=(), converter=_int_tuple)
    backoff_s: float | None = None

    def __attrs_post_init__(self) -> None:
        if len(self.latency_counts) != len(LATENCY_BUCKETS_MS) + 1:
            raise ValueError("latency_counts has the wrong number of buckets")

    def with_page(
        self, *, records: int, nbytes: int, latencies_ms: Iterable[int], now_ms: int
    ) -> PairStats:
        """Count one accepted page of ``records`` records (``nbytes`` bytes).

        ``latencies_ms`` are ``now - record.ts`` per record (negative values,
        from authors with fast clocks, count as 0). Clears ``backoff_s``.
        """
        counts = list(self.latency_counts)
        lats = list(map(int, latencies_ms))
        for lat in lats:  # a negative latency lands in bucket 0, as 0 would
            counts[_bucket_of(lat)] += 1
        lat_max = max(self.latency_max_ms, max(lats, default=0))
        now_s = now_ms // 1000
        window = [(s, n) for s, n in self.rate_window if now_s - RATE_WINDOW_S < s <= now_s]
        if records:
            if window and window[-1][0] == now_s:
                window[-1] = (now_s, window[-1][1] + records)
            else:
                window.append((now_s, records))
        return attrs.evolve(
            self,
            records=self.records + records,
            bytes=self.bytes + nbytes,
            pages=self.pages + 1,
            last_page_ms=now_ms,
            latency_counts=tuple(counts),
            latency_max_ms=lat_max,
            rate_window=tuple(window[-RATE_WINDOW_S:]),
            backoff_s=None,
        )

    def with_error(self, *, now_ms: int, backoff_s: float | None = None) -> PairStats:
        """Count one failure at ``now_ms``; keep the last hour (bounded)."""
        times = [t for t in self.error_times_ms if t > now_ms - ERROR_WINDOW_MS]
        times.append(now_ms)
        return attrs.evolve(
            self,
            errors_total=self.errors_total + 1,
            error_times_ms=tuple(times[-MAX_ERROR_TIMES:]),
            backoff_s=backoff_s,
        )

    def with_backoff(self, backoff_s: float | None) -> PairStats:
        """Set (or clear, with ``None``) the current retry delay."""
        return attrs.evolve(self, backoff_s=backoff_s)

    def percentile_ms(self, q: float) -> int | None:
        """Latency at quantile ``q`` (0 < q <= 1): the upper bound of the bucket
        holding it (the observed maximum for the overflow bucket); ``None`` when
        no record was counted."""
        total = sum(self.latency_counts)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(self.latency_counts):
            seen += n
            if n and seen >= rank:
                if i < len(LATENCY_BUCKETS_MS):
                    return min(LATENCY_BUCKETS_MS[i], self.latency_max_ms)
                return self.latency_max_ms
        return self.latency_max_ms  # pragma: no cover - rank <= total always hits above

    def rate_per_s(self, now_ms: int) -> float:
        """Records per second over the last minute ending at ``now_ms``."""
        now_s = now_ms // 1000
        n = sum(c for s, c in self.rate_window if now_s - RATE_WINDOW_S < s <= now_s)
        return n / RATE_WINDOW_S

    def errors_last_hour(self, now_ms: int) -> int:
        """Failures within the hour ending at ``now_ms`` (at most 1000 are kept)."""
        return sum(1 for t in self.error_times_ms if now_ms - ERROR_WINDOW_MS < t <= now_ms)

    def snapshot(self, now_ms: int) -> dict[str, object]:
        """What ``GET /v1/sync/pairs/{id}/stats`` shows (JSON-able)."""
        return {
            "records": self.records,
            "bytes": self.bytes,
            "pages": self.pages,
            "errors_total": self.errors_total,
            "errors_last_hour": self.errors_last_hour(now_ms),
            "rate_per_s": round(self.rate_per_s(now_ms), 3),
            "latency_p50_ms": self.percentile_ms(0.50),
            "latency_p95_ms": self.percentile_ms(0.95),
            "latency_max_ms": self.latency_max_ms if self.records else None,
            "latency_buckets_ms": list(LATENCY_BUCKETS_MS),
            "latency_counts": list(self.latency_counts),
            "last_page_ms": self.last_page_ms,
            "backoff_s": self.backoff_s,
        }

    def to_dict(self) -> dict[str, object]:
        """The raw counters, for the store (round-trips through :meth:`from_dict`)."""
        return {
            "records": self.records,
            "bytes": self.bytes,
            "pages": self.pages,
            "errors_total": self.errors_total,
            "last_page_ms": self.last_page_ms,
            "latency_counts": list(self.latency_counts),
            "latency_max_ms": self.latency_max_ms,
            "rate_window": [list(x) for x in self.rate_window],
            "error_times_ms": list(self.error_times_ms),
            "backoff_s": self.backoff_s,
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, object]) -> PairStats:
        """Inverse of :meth:`to_dict`. Raises ``ValueError``/``TypeError`` on bad shapes
        (``Pair.from_dict`` turns those into ``StoreCorrupt``)."""

        def _int(key: str) -> int:
            v = obj.get(key, 0)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"stats.{key} must be a non-negative int")
            return v

        def _ints(key: str) -> list[int]:
            v = obj.get(key, [])
            if not isinstance(v, list) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in v
            ):
                raise ValueError(f"stats.{key} must be a list of ints")
            return v

        last_page = obj.get("last_page_ms")
        if last_page is not None and (
            not isinstance(last_page, int) or isinstance(last_page, bool)
        ):
            raise ValueError("stats.last_page_ms must be an int or null")
        backoff = obj.get("backoff_s")
        if backoff is not None and (
            not isinstance(backoff, int | float) or isinstance(backoff, bool)
        ):
            raise ValueError("stats.backoff_s must be a number or null")
        window = obj.get("rate_window", [])
        if not isinstance(window, list) or not all(
            isinstance(x, list) and len(x) == 2 and all(isinstance(y, int) for y in x)
            for x in window
        ):
            raise ValueError("stats.rate_window must be a list of [second, count]")
        counts = (
            _ints("latency_counts")
            if "latency_counts" in obj
            else [0] * (len(LATENCY_BUCKETS_MS) + 1)
        )
        return cls(
            records=_int("records"),
            bytes=_int("bytes"),
            pages=_int("pages"),
            errors_total=_int("errors_total"),
            last_page_ms=last_page,
            latency_counts=counts,
            latency_max_ms=_int("latency_max_ms"),
            rate_window=window[-RATE_WINDOW_S:],
            error_times_ms=_ints("error_times_ms")[-MAX_ERROR_TIMES:],
            backoff_s=None if backoff is None else float(backoff),
        )


# --- the pair ------------------------------------------------------------------------------


def pair_id(local_did: str, peer_did: str, filter: PairFilter) -> str:
    """The pair's id: ``"p_"`` + the first 24 hex digits of SHA-256 over the JCS
    form of ``{"v": 1, "local": local_did, "peer": peer_did, "namespace", "thread"}``.

    Deterministic: the same two DIDs and filter always give the same id (so a
    second create finds the first pair); the direction matters (A pulls from B
    and B pulls from A are two pairs). Pure; does not validate its inputs.
    """
    material = {
        "v": PAIR_SCHEMA_VERSION,
        "local": local_did,
        "peer": peer_did,
        "namespace": filter.namespace,
        "thread": filter.thread,
    }
    return "p_" + hashlib.sha256(jcs(material)).hexdigest()[:24]


def _check_url(value: str) -> str:
    if not isinstance(value, str) or len(value) > 2048:
        raise InvalidRequest("peer_url must be an http(s) URL")
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise InvalidRequest(f"peer_url is not a valid URL: {value!r:.120}") from None
    del port
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"peer_url must be an http:// or https:// URL, got {value!r:.120}")
    if parts.username is not None or parts.password is not None:
        # a password in the URL would be shown and logged; the credential field is for that
        raise InvalidRequest("peer_url must not contain a user or password; use credential")
    if parts.query or parts.fragment:
        raise InvalidRequest("peer_url must not have a query or fragment")
    return value.rstrip("/")


def _check_credential(value: str | None) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or len(value) > _MAX_CREDENTIAL_LEN
        or not _CREDENTIAL_RE.fullmatch(value)
    ):
        # never echo the value: it is a secret
        raise InvalidRequest(
            "credential must be a bearer token of 1..4096 visible ASCII characters (no spaces)"
        )
    return value


def _check_allowlist(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise InvalidRequest("author_allowlist must be a list of DIDs, not a string")
    dids = tuple(sorted({_check_did(d, "an author_allowlist entry") for d in value}))
    if not dids:
        raise InvalidRequest("author_allowlist must not be empty; use null to allow every author")
    return dids


@attrs.frozen
class Pair:
    """One sync pair (immutable; every change returns a new value).

    ``credential`` is the bearer token shown to the source; it is excluded from
    ``repr`` and from :meth:`to_public_dict`. ``cursor`` is the source's opaque
    cursor up to which records are stored here (``None``: start from the
    beginning). ``retries`` counts consecutive failures (the backoff attempt
    number). ``author_allowlist``, when set, limits accepted records to those
    authors (sorted, unique). ``origin`` says who set the pair up: ``"owner"``
    (this node's owner, ``fedpeer pair`` or the admin API) or ``"redeem"`` (the
    pull back from someone who redeemed one of this node's invites with a
    reciprocal credential): what a ``redeem`` pair may store is bounded
    (``SyncOptions.redeem_quota_*``).
    """

    id: str
    local_did: str
    peer_did: str
    peer_url: str
    filter: PairFilter
    credential: str | None = attrs.field(repr=False)
    state: PairState
    cursor: str | None
    retries: int
    last_error: LastError | None
    created_ms: int
    updated_ms: int
    stats: PairStats = attrs.field(factory=PairStats)
    author_allowlist: tuple[str, ...] | None = None
    origin: str = attrs.field(default="owner", validator=attrs.validators.in_(PAIR_ORIGINS))

    # --- transitions ---

    def apply(
        self,
        action: PairAction,
        *,
        now_ms: int | None = None,
        error: LastError | None = None,
    ) -> Pair:
        """This pair after ``action`` (see :data:`PAIR_TRANSITIONS`).

        Effects beside the state: ``resume``/``kick`` set ``retries`` to 0 and
        clear the backoff; ``progress``/``catch_up`` also clear ``last_error``;
        ``fail`` counts a retry and needs ``error``; ``stop`` needs ``error``;
        ``reset`` drops the cursor. Raises ``PairStateInvalid`` for a transition
        the table refuses, ``ValueError`` when ``error`` is missing for
        fail/stop. Pure.
        """
        now = _now_ms(now_ms)
        new_state = transition(self.state, action, pair_id=self.id)
        changes: dict[str, object] = {"state": new_state, "updated_ms": now}
        if action in (_A.RESUME, _A.KICK):
            changes["retries"] = 0
            changes["stats"] = self.stats.with_backoff(None)
        elif action in (_A.PROGRESS, _A.CATCH_UP):
            changes["retries"] = 0
            changes["last_error"] = None
        elif action in (_A.FAIL, _A.STOP):
            if error is None:
                raise ValueError(f"{action.value} needs the error to record")
            changes["last_error"] = error
            changes["stats"] = self.stats.with_error(now_ms=error.at_ms)
            changes["retries"] = self.retries + 1 if action is _A.FAIL else 0
        elif action is _A.RESET:
            changes["cursor"] = None
        return attrs.evolve(self, **changes)  # type: ignore[arg-type]

    def with_credential(self, credential: str | None, *, now_ms: int | None = None) -> Pair:
        """The same pair with a new credential (any state but deleted).

        Does not change the state: a stopped pair stays stopped until resumed.
        Raises ``InvalidRequest`` for a bad token shape, ``PairStateInvalid``
        when deleted.
        """
        if self.state is _S.DELETED:
            raise PairStateInvalid(f"pair {self.id} was deleted")
        return attrs.evolve(
            self, credential=_check_credential(credential), updated_ms=_now_ms(now_ms)
        )

    @property
    def active(self) -> bool:
        """True when the pair should be pulling (running, caught_up or failing)."""
        return self.state in (_S.RUNNING, _S.CAUGHT_UP, _S.FAILING)

    # --- persistence ---

    def to_dict(self) -> dict[str, object]:
        """The row for the store's ``pairs`` table (JSON-able, credential included)."""
        return {
            "v": PAIR_SCHEMA_VERSION,
            "id": self.id,
            "local_did": self.local_did,
            "peer_did": self.peer_did,
            "peer_url": self.peer_url,
            "filter": self.filter.to_dict(),
            "credential": self.credential,
            "author_allowlist": (
                None if self.author_allowlist is None else list(self.author_allowlist)
            ),
            "state": self.state.value,
            "cursor": self.cursor,
            "retries": self.retries,
            "last_error": None if self.last_error is None else self.last_error.to_dict(),
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
            "stats": self.stats.to_dict(),
            "origin": self.origin,
        }

    def to_public_dict(self, *, now_ms: int | None = None) -> dict[str, object]:
        """What the API and CLI show: :meth:`to_dict` without ``credential`` (and
        with ``has_credential``), stats as :meth:`PairStats.snapshot`."""
        out = self.to_dict()
        del out["credential"]
        del out["v"]
        out["has_credential"] = self.credential is not None
        out["stats"] = self.stats.snapshot(_now_ms(now_ms))
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, object]) -> Pair:
        """Read a ``pairs`` row written by :meth:`to_dict`.

        Raises ``StoreCorrupt`` (STORE_CORRUPT) when the row is not a valid pair:
        wrong types, unknown state, an id that does not match its DIDs and
        filter, or a cursor that does not decode. The message never includes
        the credential.
        """
        try:
            if obj.get("v") != PAIR_SCHEMA_VERSION:
                raise ValueError(f"unknown pair row version {obj.get('v')!r}")
            local = _check_did(_str(obj, "local_did"), "local_did")
            peer = _check_did(_str(obj, "peer_did"), "peer_did")
            flt = PairFilter.from_dict(obj.get("filter"))
            pid = _str(obj, "id")
            if pid != pair_id(local, peer, flt):
                raise ValueError("id does not match its DIDs and filter")
            cursor = obj.get("cursor")
            if cursor is not None:
                if not isinstance(cursor, str):
                    raise ValueError("cursor must be a string or null")
                Cursor.decode(cursor)
            cred = obj.get("credential")
            if cred is not None and not isinstance(cred, str):
                raise ValueError("credential must be a string or null")
            le = obj.get("last_error")
            last_error = None
            if le is not None:
                if not isinstance(le, Mapping):
                    raise ValueError("last_error must be an object or null")
                last_error = LastError(
                    code=_str(le, "code"), message=_str(le, "message"), at_ms=_int(le, "at_ms")
                )
            stats = obj.get("stats") or {}
            if not isinstance(stats, Mapping):
                raise ValueError("stats must be an object")
            allow = obj.get("author_allowlist")
            if allow is not None and not isinstance(allow, list):
                raise ValueError("author_allowlist must be a list or null")
            return cls(
                id=pid,
                local_did=local,
                peer_did=peer,
                peer_url=_check_url(_str(obj, "peer_url")),
                filter=flt,
                credential=_check_credential(cred),
                state=PairState(obj.get("state")),
                cursor=cursor,
                retries=_int(obj, "retries"),
                last_error=last_error,
                created_ms=_int(obj, "created_ms"),
                updated_ms=_int(obj, "updated_ms"),
                stats=PairStats.from_dict(stats),
                author_allowlist=_check_allowlist(allow),
                # rows written before pairs had an origin: the owner's
                origin=obj.get("origin", "owner"),  # type: ignore[arg-type]  # validated
            )
        except (FedpeerError, ValueError, TypeError, KeyError) as exc:
            # FedpeerError messages here never echo the credential (see _check_credential)
            msg = exc.message if isinstance(exc, FedpeerError) else str(exc)
            raise StoreCorrupt(
                f"pairs row {obj.get('id')!r:.40} is not a valid pair: {msg}"
            ) from None


def _str(obj: Mapping[str, object], key: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str):
        raise ValueError(f"{key} must be a string")
    return v


def _int(obj: Mapping[str, object], key: str) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{key} must be a non-negative int")
    return v


def make_pair(
    *,
    local_did: str,
    peer_did: str,
    peer_url: str,
    credential: str | None,
    filter: PairFilter | None = None,
    author_allowlist: Iterable[str] | None = None,
    now_ms: int | None = None,
    origin: str = "owner",
) -> Pair:
    """A new pair in state ``running`` with no cursor (pull from the beginning).
    ``origin``: see :class:`Pair` (``ValueError`` for another value).

    The id comes from :func:`pair_id`; the caller looks it up first and returns
    the existing pair on a repeat create. Raises ``PairSelf`` (PAIR_SELF) when
    ``peer_did == local_did`` — a node pulling from itself would loop; the
    caller also refuses a ``peer_url`` that reaches this node, which only it can
    tell. ``DidInvalid`` for a DID that is not ``did:<method>:<id>``;
    ``InvalidRequest`` for a non-http(s) URL, a URL with user info, a badly
    shaped credential or filter, an empty allow-list. Pure.
    """
    _check_did(local_did, "local_did")
    _check_did(peer_did, "peer_did")
    if peer_did == local_did:
        raise PairSelf(
            f"this node is {local_did}: a node cannot pull from itself. "
            "Use the other node's URL (check the invite or the address you typed)."
        )
    flt = filter if filter is not None else PairFilter()
    now = _now_ms(now_ms)
    return Pair(
        id=pair_id(local_did, peer_did, flt),
        local_did=local_did,
        peer_did=peer_did,
        peer_url=_check_url(peer_url),
        filter=flt,
        credential=_check_credential(credential),
        state=_S.RUNNING,
        cursor=None,
        retries=0,
        last_error=None,
        created_ms=now,
        updated_ms=now,
        stats=PairStats(),
        author_allowlist=_check_allowlist(author_allowlist),
        origin=origin,
    )
