"""Counting the values in a decoded value, with a cap: the one measure of how
much work a value of strangers' choosing is (a record body, a request body, a
DID document). Bytes undercount it: 8 KiB of empty lists is 8,000 values."""

from __future__ import annotations

__all__ = ["count_values"]


def count_values(value: object, cap: int) -> int:
    """How many values ``value`` holds (itself, map keys and values, list items,
    nested ones included), or ``cap + 1`` once there are more than ``cap``: it
    stops counting there, and never copies a container longer than ``cap``. Pure."""
    stack: list[object] = [value]
    seen = 0
    while stack:
        item = stack.pop()
        seen += 1
        if isinstance(item, dict | list):
            if seen + len(item) > cap:
                return cap + 1
            if isinstance(item, dict):
                seen += len(item)  # the keys
                stack.extend(item.values())
            else:
                stack.extend(item)
        if seen > cap:
            return cap + 1
    return seen
