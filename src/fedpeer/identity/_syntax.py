"""The one syntax check for DIDs and the one for record names. Pure.

A DID (W3C DID Core) is ``did:<method>:<method-specific-id>``: ``method`` is
lower-case letters and digits; the method-specific id is
``*( *idchar ":" ) 1*idchar`` with idchar = ALPHA / DIGIT / "." / "-" / "_" /
pct-encoded, so it never ends with ``:``. No path, query or fragment.

A record name (``namespace``, ``thread``, ``kind``; also grant and pair targets
and the namespaces a node announces) is 1..256 characters of
``[A-Za-z0-9._:@/+-]``, not starting with ``/`` (records may lower the length
limit through ``Limits.max_name_len``).
"""

from __future__ import annotations

import re
from typing import TypeGuard

__all__ = [
    "DID_PATTERN",
    "DID_RE",
    "MAX_DID_LEN",
    "MAX_NAME_LEN",
    "METHOD_RE",
    "NAME_PATTERN",
    "NAME_RE",
    "is_did",
    "is_name",
]

_IDCHAR = r"(?:[A-Za-z0-9._-]|%[0-9A-Fa-f]{2})"
DID_PATTERN = rf"did:[a-z0-9]+:(?:{_IDCHAR}*:)*{_IDCHAR}+"
"""A DID, for embedding in larger patterns (a key id is ``DID#fragment``)."""
DID_RE = re.compile(DID_PATTERN)
METHOD_RE = re.compile(r"[a-z0-9]+")
MAX_DID_LEN = 2048

NAME_PATTERN = r"[A-Za-z0-9._:@+\-][A-Za-z0-9._:@/+\-]*"
"""What ``namespace``, ``thread`` and ``kind`` match: the character set
``[A-Za-z0-9._:@/+-]``, not starting with ``/`` (the length is checked apart)."""
NAME_RE = re.compile(NAME_PATTERN)
MAX_NAME_LEN = 256


def is_did(value: object) -> TypeGuard[str]:
    """True for a string of at most 2048 characters that is a DID."""
    return (
        isinstance(value, str) and len(value) <= MAX_DID_LEN and DID_RE.fullmatch(value) is not None
    )


def is_name(value: object, max_len: int = MAX_NAME_LEN) -> TypeGuard[str]:
    """True for a record name of at most ``max_len`` characters."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= max_len
        and NAME_RE.fullmatch(value) is not None
    )
