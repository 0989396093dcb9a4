"""Option and argument types of the CLI, validated like the node validates them."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, ClassVar

import click

from ..consent import parse_invite_url, parse_scopes
from ..errors import ConfigInvalid, FedpeerError
from ..sync import DEFAULT_LIMITS, NAME_RE
from .config import check_handle

__all__ = [
    "JSON_OPT",
    "Duration",
    "Scopes",
    "handle_cb",
    "human_seconds",
    "invite_url_cb",
    "name_cb",
    "url_cb",
]


def human_seconds(seconds: int) -> str:
    """``60 s`` / ``90 days`` / ``2 h``: the largest unit that divides it."""
    for unit, size in (("days", 86400), ("h", 3600)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


class Duration(click.ParamType):  # type: ignore[type-arg]
    """``90``, ``90s``, ``10m``, ``2h``, ``7d`` or ``1w``: whole seconds, within
    ``min_s`` .. ``max_s`` when given (else exit 2 naming the allowed range)."""

    name = "duration"
    _UNITS: ClassVar[dict[str, int]] = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

    def __init__(self, min_s: int = 1, max_s: int | None = None) -> None:
        self.min_s = min_s
        self.max_s = max_s

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            seconds = value
        else:
            m = re.fullmatch(r"\s*(\d{1,9})\s*([smhdw]?)\s*", str(value).lower())
            if not m or int(m.group(1)) <= 0:
                self.fail(f"{value!r} is not a duration like 90s, 10m, 2h or 7d", param, ctx)
            seconds = int(m.group(1)) * self._UNITS[m.group(2)]
        if seconds < self.min_s or (self.max_s is not None and seconds > self.max_s):
            allowed = f"at least {human_seconds(self.min_s)}"
            if self.max_s is not None:
                allowed = f"from {human_seconds(self.min_s)} to {human_seconds(self.max_s)}"
            self.fail(f"{value!r} is out of range: it must be {allowed}", param, ctx)
        return seconds


class Scopes(click.ParamType):  # type: ignore[type-arg]
    """Comma-separated scope or preset names, validated like the node does."""

    name = "scopes"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> list[str]:
        if isinstance(value, list):
            return value
        names = [v.strip() for v in str(value).split(",") if v.strip()]
        try:
            parse_scopes(names)
        except FedpeerError as err:
            self.fail(f"{err.message} (got {value!r})", param, ctx)
        return names


def name_cb(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A record name (namespace, thread, kind): the node's one name rule."""
    if value is not None and (
        len(value) > DEFAULT_LIMITS.max_name_len or not NAME_RE.fullmatch(value)
    ):
        raise click.BadParameter(
            "names are 1..256 characters of A-Z a-z 0-9 . _ : @ / + - (not starting with /)"
        )
    return value


def handle_cb(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A display name for the LAN."""
    if value is None:
        return None
    try:
        return check_handle(value)
    except ConfigInvalid as err:
        raise click.BadParameter(err.message) from None


def url_cb(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An http(s) URL, without a trailing slash."""
    if value is None:
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{value!r} is not an http(s) URL like http://10.0.0.5:8765")
    return value.rstrip("/")


def invite_url_cb(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An invite URL as ``fedpeer invite create`` prints it."""
    try:
        parse_invite_url(value)
    except FedpeerError as err:
        raise click.BadParameter(
            f"{err.message}. Copy the whole URL that `fedpeer invite create` printed, in quotes"
        ) from None
    return value.strip()


JSON_OPT = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
