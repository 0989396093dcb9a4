"""The ``fedpeer`` click group and its context object.

Operator commands talk to the running node through
:class:`~fedpeer.peer.AdminClient` (:meth:`Ctx.admin`), which this module wraps
with CLI-friendly errors: a node that does not answer is NODE_NOT_RUNNING
saying where its URL came from, a refused token says which token was used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click
import httpx

from ..errors import AuthRequired, ConfigInvalid, NodeNotRunning, PeerUnreachable, TokenInvalid
from ..peer import AdminClient, local_client_context, new_http_client
from .config import Settings, admin_token, load_settings, node_url
from .output import run_async
from .params import url_cb

__all__ = ["Ctx", "cli", "default_data_dir"]

T = TypeVar("T")

ADMIN_TIMEOUT_S = 30.0


def default_data_dir() -> Path:
    """``$FEDPEER_DATA_DIR``, else the platform's user data dir for fedpeer."""
    env = os.environ.get("FEDPEER_DATA_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("fedpeer"))


class Ctx:
    """The click context object: data dir, ``--url`` and the merged settings."""

    def __init__(
        self, data_dir: Path, url: str | None = None, *, data_dir_flag: str | None = None
    ) -> None:
        self.data_dir = data_dir
        self.url_flag = url
        self.data_dir_flag = data_dir_flag
        self._settings: Settings | None = None

    def command(self, *args: str) -> str:
        """How to run ``fedpeer ARGS`` against the same data dir, for hints: with
        ``--data-dir`` when this command was given one (as typed)."""
        parts = ["fedpeer"]
        if self.data_dir_flag is not None:
            parts += ["--data-dir", shlex.quote(self.data_dir_flag)]
        return " ".join([*parts, *args])

    @property
    def settings(self) -> Settings:
        """``fedpeer.toml`` + ``FEDPEER_*`` (raises ConfigInvalid)."""
        if self._settings is None:
            self._settings = load_settings(self.data_dir)
        return self._settings

    @contextlib.asynccontextmanager
    async def admin(self) -> AsyncIterator[AdminClient]:
        """An :class:`AdminClient` for the running node (its URL from ``--url``, the
        settings or ``node.url``; the admin token from ``$FEDPEER_TOKEN`` or
        ``admin.token``). Raises NodeNotRunning, AuthRequired, ConfigInvalid before
        any network use; maps a node that does not answer to NodeNotRunning."""
        url, source = node_url(self.settings, self.url_flag)
        token = admin_token(self.data_dir)
        ca = local_client_context(self.data_dir) if url.startswith("https://") else None
        http = new_http_client(timeout=ADMIN_TIMEOUT_S, ca_context=ca)
        async with http, AdminClient(url, token, client=http) as client:
            try:
                yield client
            except PeerUnreachable as err:
                cause = err.__cause__
                if not isinstance(cause, httpx.TransportError):
                    raise  # the node's own answer: a peer of it is unreachable
                raise self._not_running(client.url, source, cause) from None
            except (TokenInvalid, AuthRequired) as err:
                hint = (
                    f"; the admin token (from $FEDPEER_TOKEN or {self.data_dir}/admin.token) "
                    f"was refused by {client.url}: is that the node of this data dir? A lost "
                    "token is replaced with `fedpeer token rotate-admin`"
                )
                raise type(err)(err.message + hint) from None
            except httpx.InvalidURL as exc:
                raise ConfigInvalid(f"bad node URL {url!r} (from {source}): {exc}") from None

    def call(self, fn: Callable[[AdminClient], Awaitable[T]]) -> T:
        """``fn(admin)`` with :meth:`admin`, run to completion: what an operator
        command does. A FedpeerError ends the command with ``CODE: message`` and its
        exit code, Ctrl-C with 130 (:func:`~fedpeer.cli.output.run_async`)."""

        async def main() -> T:
            async with self.admin() as admin:
                return await fn(admin)

        return run_async(main)

    def _not_running(self, url: str, source: str, exc: httpx.TransportError) -> NodeNotRunning:
        start = f"start it with `fedpeer --data-dir {shlex.quote(str(self.data_dir))} run`"
        if isinstance(exc, httpx.TimeoutException):
            return NodeNotRunning(
                f"the node at {url} (from {source}) did not answer within "
                f"{ADMIN_TIMEOUT_S:g} s; is it overloaded or stuck? check its log"
            )
        if not isinstance(exc, httpx.ConnectError):  # it answered, then broke off
            return NodeNotRunning(
                f"the node at {url} (from {source}) broke off its answer "
                f"({type(exc).__name__}): it may have stopped or crashed; check its log, "
                f"{start} if it is down, then run this command again"
            )
        stale = ""
        if source.endswith("node.url"):
            stale = " (node.url is left over from a node that did not stop cleanly)"
        return NodeNotRunning(
            f"nothing answers at {url} (from {source}){stale}: {start}, or pass --url"
        )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the identity, store and admin token live [env FEDPEER_DATA_DIR].",
)
@click.option(
    "--url",
    default=None,
    callback=url_cb,
    help="The running node's URL, for operator commands [env FEDPEER_URL; "
    "default: the node.url file `run` writes].",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="fedpeer", prog_name="fedpeer")
@click.pass_context
def cli(ctx: click.Context, data_dir: Path | None, url: str | None, verbose: int) -> None:
    """fedpeer: run a federated peer node and operate it.

    \b
    Start a node:        fedpeer run --host 0.0.0.0
    Invite a device:     fedpeer invite create
    Pair with a node:    fedpeer pair 'http://...#secret=...'
    Check the set-up:    fedpeer doctor
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Ctx(
        data_dir or default_data_dir(),
        url,
        data_dir_flag=None if data_dir is None else str(data_dir),
    )
