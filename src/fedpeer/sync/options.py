"""How a node syncs: :class:`SyncOptions` (the pullers' tunables), :class:`SyncEvent`
(what happened to a pair, for listeners) and :class:`PageSource` (where pages
come from; the peer layer implements it over HTTP). Values only, no I/O.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from ._machine import PageRequest
from .backoff import DEFAULT_BACKOFF, Backoff
from .pairs import Pair

__all__ = ["Listener", "PageSource", "SyncEvent", "SyncOptions"]


class PageSource(Protocol):
    """Where pages come from: the peer layer implements it over HTTP.

    ``fetch`` performs ``request`` against ``pair.peer_url`` with
    ``pair.credential`` and returns the decoded page body (DAG-CBOR or DAG-JSON
    value; NOT verified: the machine checks it). It raises the source's
    :class:`~fedpeer.errors.FedpeerError` for an HTTP error (``RateLimited``
    carrying ``retry_after``, ``AuthRequired``/``ScopeForbidden`` for 401/403,
    ``CursorReset``...), ``PeerUnreachable`` for transport failures, and
    ``Malformed``/``NonCanonical`` for an undecodable body. For a longpoll
    request it holds at most its configured longpoll time (plus a margin). It
    must be cancellable at any point.
    """

    async def fetch(self, pair: Pair, request: PageRequest) -> object: ...


def _default_verify_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _check_page_limit(_inst: object, _attr: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or not 1 <= value <= 10_000:
        raise ValueError(f"page_limit must be in 1..10000, got {value!r}")


def _check_positive_int(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{attr.name} must be a positive int, got {value!r}")


def _check_positive_or_none(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) is not int or value < 1):
        raise ValueError(f"{attr.name} must be a positive int or None, got {value!r}")


def _check_wait(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if type(value) not in (int, float) or not 0 <= value <= 10:
        raise ValueError(f"{attr.name} must be 0 to 10 seconds, got {value!r}")


@attrs.frozen
class SyncOptions:
    """How a node's pullers behave.

    ``backoff``: the retry policy (1 s base, 5 min cap by default; tests inject a
    tiny base). ``page_limit``: records asked per page (1..10000; never more
    than the source advertises as its ``page_limit_max``, and see
    ``max_records_in_flight``). The default, 5000,
    is for catching up: every page costs a request, a query on the source and a
    round of signature-worker requests, and 5000-record pages synced about a
    fifth faster than 1000-record ones (``bench/sync.py``). A catch-up starts
    at 500 records and doubles each page up to ``page_limit`` (slow start: the
    first records land, and the signature checks start, after a small page).
    ``longpoll_s``: how long a caught-up pair asks the source to hold a
    longpoll (the source caps it). ``verify_threads``: signature checks running
    at once (in threads or worker processes), shared by all pairs of the node
    (default: CPUs, at most 4). ``seed``: when set, each pair's jitter comes from
    ``random.Random(f"{seed}:{pair_id}")`` (deterministic tests).
    ``autostart``: start the stored pairs when the node starts.
    ``pipeline_depth``: pages in flight per pair (fetched, being verified,
    being committed); 1 turns speculation off. A pair holds about
    ``page_limit * pipeline_depth`` records (10 000 by default; 4 x 1000 before
    pages of 5000) and at most that many pages' bytes. ``verify_processes``:
    check the signatures of large pages in worker processes (one pool per node, shared
    by every pair: at most ``verify_threads`` processes and never more than
    the CPUs; started on demand, stopped once no pair is catching up) instead
    of threads; see ``fedpeer.sync._puller._SignatureWorkers``. Off, or when a
    worker cannot be started, worker threads do it. ``commit_max_records``:
    while a pair catches up, the pages already fetched and verified behind the
    one being committed go into the same store transaction (records and cursor
    together, as for one page), up to this many records per transaction (a
    single page is always committed whole). ``commit_wait_s``: how long an
    accepted page may wait for the pages behind it while the pair is behind
    (0: fold only what is ready; a caught-up page and the first page of a
    catch-up never wait: their records show as soon as they are verified).
    ``max_records_in_flight``: records fetched but not yet stored, across all
    the node's pairs while they catch up: when several catch up at once each
    asks pages of ``min(page_limit, max_records_in_flight // (pairs catching up
    * (pipeline_depth + 1)))`` records (at least 100: the page being committed
    and the pages ahead) and folds no more into one commit than its share leaves,
    so the puller's memory does not grow with the number of pairs, up to
    ``max_records_in_flight // (100 * (pipeline_depth + 1))`` pairs catching up
    at once (66 by default); past that the 100-record floor wins and it grows
    by 300 records a pair.
    ``redeem_quota_records`` and ``redeem_quota_bytes`` bound what a pair set
    up by a redeem (``Pair.origin == "redeem"``: the pull back from someone
    who redeemed one of this node's invites) may store over its life: the
    records it brought that this node did not have, and their ``data`` plus
    ``sig`` bytes (state rows ``pair_quota/<pair id>``; a cursor reset that
    pulls everything again counts nothing twice). The commit that would pass
    either stores nothing and stops the pair with QUOTA_EXCEEDED (a resume
    tries again). None: no bound. Pairs the owner set up are not bounded.
    """

    backoff: Backoff = DEFAULT_BACKOFF
    page_limit: int = attrs.field(default=5000, validator=_check_page_limit)
    longpoll_s: float = 30.0
    verify_threads: int = attrs.field(
        factory=_default_verify_threads, validator=_check_positive_int
    )
    seed: int | None = None
    autostart: bool = True
    pipeline_depth: int = attrs.field(default=2, validator=_check_positive_int)
    verify_processes: bool = True
    commit_max_records: int = attrs.field(default=5000, validator=_check_positive_int)
    commit_wait_s: float = attrs.field(default=0.25, validator=_check_wait)
    max_records_in_flight: int = attrs.field(default=20_000, validator=_check_positive_int)
    redeem_quota_records: int | None = attrs.field(
        default=1_000_000, validator=_check_positive_or_none
    )
    redeem_quota_bytes: int | None = attrs.field(default=1 << 30, validator=_check_positive_or_none)


@attrs.frozen
class SyncEvent:
    """What happened to a pair, after it was persisted (for listeners and logs).

    ``kind`` is one of ``page`` (a page committed: ``records`` new records
    verified, ``pair.cursor`` advanced), ``rejected`` (a bad page: ``code``),
    ``retry`` (request or commit failed: ``code``, ``delay_s``), ``stopped``
    (401/403: ``code``), ``reset`` (the source reset its feed: full pull),
    ``changed`` (a user action: ``actions``), ``deleted``.
    """

    kind: str
    pair: Pair
    records: int = 0
    code: str | None = None
    delay_s: float | None = None
    actions: tuple[str, ...] = ()


Listener = Callable[[SyncEvent], None]
