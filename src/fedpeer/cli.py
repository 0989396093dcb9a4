"""The ``fedpeer`` command: node runner and operator commands.

Exit codes (stable):

- 0  success
- 1  a fedpeer error (the line printed says ``CODE: what to do``)
- 2  bad usage (click's own)
- 3  the node could not start (port in use, bad key file, bad store)
- 130 interrupted
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click
import trio

from .errors import FedpeerError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_START = 3
EXIT_INTERRUPTED = 130

DEFAULT_PORT = 8765


def default_data_dir() -> Path:
    """``$FEDPEER_DATA_DIR``, else the platform's user data dir for fedpeer."""
    env = os.environ.get("FEDPEER_DATA_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("fedpeer"))


class Ctx:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir


def fail(err: FedpeerError, code: int = EXIT_ERROR) -> None:
    click.echo(f"{err.code}: {err.message}", err=True)
    sys.exit(code)


@click.group()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the identity, store and admin token live [env FEDPEER_DATA_DIR].",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, data_dir: Path | None, verbose: int) -> None:
    """fedpeer: run a federated peer node and operate it."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Ctx(data_dir or default_data_dir())


@cli.command()
@click.pass_obj
def init(obj: Ctx) -> None:
    """Create the identity in the data dir (or show the existing one)."""
    from .peer.node import load_or_create_key

    try:
        key = load_or_create_key(obj.data_dir)
    except FedpeerError as err:
        fail(err, EXIT_START)
    click.echo(key.did)


@cli.command(name="id")
@click.pass_obj
def show_id(obj: Ctx) -> None:
    """Print this node's DID."""
    from .identity.keys import SigningKey
    from .peer.node import KEY_FILE

    try:
        key = SigningKey.load(obj.data_dir / KEY_FILE)
    except FedpeerError as err:
        fail(err)
    click.echo(key.did)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int, help="0 = any free.")
@click.pass_obj
def run(obj: Ctx, host: str, port: int) -> None:
    """Run a node in the foreground until SIGINT or SIGTERM."""
    from .peer import NodeConfig, open_node

    logging.getLogger("fedpeer").setLevel(min(logging.INFO, logging.getLogger().level))

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with open_node(obj.data_dir, host=host, port=port, config=NodeConfig()) as node:
                click.echo(f"did:   {node.did}")
                click.echo(f"url:   {node.url}")
                click.echo(f"token: {node.admin_token_path} (admin bearer token, mode 0600)")
                click.echo("ready; Ctrl-C to stop", err=True)
                async for signum in signals:
                    click.echo(f"got {signal.Signals(signum).name}, shutting down", err=True)
                    break

    try:
        trio.run(main)
    except FedpeerError as err:
        fail(err, EXIT_START)
    except OSError as err:
        click.echo(f"START_FAILED: {err}; is another node using port {port}?", err=True)
        sys.exit(EXIT_START)


def main() -> None:
    """Entry point of the ``fedpeer`` console script."""
    cli()


if __name__ == "__main__":
    main()
