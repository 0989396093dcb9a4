"""Scopes: what a bearer token may do.

Four scopes exist: ``records:read``, ``records:write``, ``sync:read`` and
``admin``. Three presets name common sets: ``reader`` (records:read +
sync:read), ``contributor`` (reader + records:write) and ``admin`` (all four).

Rules (pinned by tests):

- Names are matched exactly (case and whitespace count). A preset is named by
  its bare name (``"reader"``), wherever a scope may be named; there is no
  ``preset:`` prefix. ``"admin"`` is both a scope and a preset and means the
  same either way, because
- ``admin`` implies every other scope: a route that needs scope X lets the
  caller in if X is among its scopes or ``admin`` is (:func:`has_scope`).

Pure logic: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from types import MappingProxyType

from ..errors import InvalidRequest, ScopeForbidden

__all__ = [
    "ADMIN",
    "ALL_SCOPES",
    "PRESETS",
    "RECORDS_READ",
    "RECORDS_WRITE",
    "SYNC_READ",
    "has_scope",
    "parse_scopes",
    "require_scope",
    "scopes_to_list",
]

RECORDS_READ = "records:read"
RECORDS_WRITE = "records:write"
SYNC_READ = "sync:read"
ADMIN = "admin"

ALL_SCOPES: frozenset[str] = frozenset({RECORDS_READ, RECORDS_WRITE, SYNC_READ, ADMIN})

_READER = frozenset({RECORDS_READ, SYNC_READ})
_CONTRIBUTOR = _READER | {RECORDS_WRITE}

PRESETS: Mapping[str, frozenset[str]] = MappingProxyType(
    {"reader": _READER, "contributor": _CONTRIBUTOR, "admin": ALL_SCOPES}
)

# Longest sensible input; anything longer is refused before it is echoed back.
_MAX_ITEMS = 32
_MAX_NAME_LEN = 64


def _valid_names_text() -> str:
    scopes = ", ".join(sorted(ALL_SCOPES))
    presets = ", ".join(sorted(PRESETS))
    return f"valid scopes: {scopes}; presets: {presets}"


def parse_scopes(values: Iterable[str]) -> frozenset[str]:
    """Turn a list of scope and preset names into a set of scopes.

    ``values`` is a list (or other iterable, but not a single string) of names,
    each a scope (``records:read``, ``records:write``, ``sync:read``,
    ``admin``) or a bare preset name (``reader``, ``contributor``, ``admin``);
    presets are expanded. Duplicates are fine. The result is a non-empty
    frozenset drawn from :data:`ALL_SCOPES`.

    Raises :class:`~fedpeer.errors.InvalidRequest` (``INVALID_REQUEST``) if
    ``values`` is a string or not iterable, is empty, has more than 32 items,
    or holds anything that is not exactly a known name; the message lists the
    valid names. Pure, never blocks.
    """
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise InvalidRequest(f"scopes must be a list of names; {_valid_names_text()}")
    items = list(values)
    if not items:
        raise InvalidRequest(f"give at least one scope; {_valid_names_text()}")
    if len(items) > _MAX_ITEMS:
        raise InvalidRequest(f"too many scopes (at most {_MAX_ITEMS}); {_valid_names_text()}")
    out: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise InvalidRequest(f"scope names must be strings; {_valid_names_text()}")
        preset = PRESETS.get(item)
        if preset is not None:
            out |= preset
        elif item in ALL_SCOPES:
            out.add(item)
        else:
            shown = item if len(item) <= _MAX_NAME_LEN else item[:_MAX_NAME_LEN] + "..."
            raise InvalidRequest(f"unknown scope {shown!r}; {_valid_names_text()}")
    return frozenset(out)


def has_scope(scopes: Set[str], required: str) -> bool:
    """True if ``scopes`` allow ``required``: it is among them, or ``admin`` is.

    ``required`` must be one of :data:`ALL_SCOPES` (a programming error
    otherwise: ``ValueError``). Pure.
    """
    if required not in ALL_SCOPES:
        raise ValueError(f"unknown scope {required!r}")
    return required in scopes or ADMIN in scopes


def require_scope(scopes: Set[str], required: str) -> None:
    """Raise :class:`~fedpeer.errors.ScopeForbidden` (403) unless ``has_scope``.

    The message names the scope the route needs. Pure.
    """
    if not has_scope(scopes, required):
        raise ScopeForbidden(
            f"this route needs the {required!r} scope (or 'admin'); "
            "ask the node's owner for a token that has it"
        )


def scopes_to_list(scopes: Set[str]) -> list[str]:
    """The sorted list form used in JSON and in stored rows."""
    return sorted(scopes)
