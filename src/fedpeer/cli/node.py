"""``fedpeer init``, ``id`` and ``run``: the identity and the node runner."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

import attrs
import click
import trio

from ..errors import DataDirLocked, FedpeerError
from ..identity import SigningKey
from ..peer import KEY_FILE, NodeConfig, open_node, raise_open_files_limit
from ..peer.addresses import is_loopback_host, is_wildcard, with_host
from ..peer.node import load_or_create_key
from ..sync import DEFAULT_BACKOFF, Backoff, SyncOptions
from .config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Settings,
    default_handle,
    loopback_url,
    remove_node_url,
    save_handle,
    write_node_url,
)
from .main import Ctx
from .output import EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_START, fail, leaf
from .params import handle_cb

__all__ = ["init", "lan_addresses", "rate_settings", "run", "show_id", "sync_options"]


@click.command()
@click.option(
    "--handle",
    default=None,
    callback=handle_cb,
    help="Display name announced on the LAN (saved in fedpeer.toml; "
    "default: fedpeer- and the DID's last 6 characters).",
)
@click.pass_obj
def init(obj: Ctx, handle: str | None) -> None:
    """Create the identity in the data dir (or show the existing one); print the DID."""
    try:
        key = load_or_create_key(obj.data_dir)
        if handle is not None:
            path = save_handle(obj.data_dir, handle)
            click.echo(f"handle {handle!r} saved in {path}", err=True)
    except FedpeerError as err:
        fail(err, EXIT_START)
    click.echo(key.did)


@click.command(name="id")
@click.pass_obj
def show_id(obj: Ctx) -> None:
    """Print this node's DID."""
    try:
        key = SigningKey.load(obj.data_dir / KEY_FILE)
    except FedpeerError as err:
        fail(err)
    click.echo(key.did)


def lan_addresses(interfaces: Sequence[str] = ()) -> list[str]:
    """Non-loopback, non-link-local IPv4 addresses of this machine (of
    ``interfaces`` when given), in interface order."""
    import ifaddr

    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        if interfaces and adapter.name not in interfaces:
            continue
        for ip in adapter.ips:
            if (
                isinstance(ip.ip, str)
                and not ip.ip.startswith("127.")
                and not ip.ip.startswith("169.254.")
            ):
                out.append(ip.ip)
    return out


def rate_settings(settings: Settings) -> dict[str, Any]:
    """NodeConfig keyword arguments for the rate limit, write quota and free disk
    settings that are set."""
    out: dict[str, Any] = {}
    if settings.rate_per_s is not None:
        out["rate_per_s"] = settings.rate_per_s
    if settings.rate_burst is not None:
        out["rate_burst"] = settings.rate_burst
    # the write quotas: 0 in the settings is no bound (None in NodeConfig)
    if settings.write_quota_records is not None:
        out["write_quota_records"] = settings.write_quota_records or None
    if settings.write_quota_bytes is not None:
        out["write_quota_bytes"] = settings.write_quota_bytes or None
    if settings.min_free_disk_percent is not None:
        out["min_free_disk_percent"] = settings.min_free_disk_percent
    return out


def sync_options(settings: Settings) -> SyncOptions:
    """The pullers' options: the library defaults with the sync_* and redeem_quota_*
    settings applied."""
    opts = SyncOptions()
    if settings.sync_longpoll_s is not None:
        opts = attrs.evolve(opts, longpoll_s=settings.sync_longpoll_s)
    cap = settings.sync_backoff_cap_s
    base = settings.sync_backoff_base_s
    if cap is not None or base is not None:
        cap_s = cap if cap is not None else max(DEFAULT_BACKOFF.cap_s, base or 0.0)
        backoff = Backoff(
            base_s=min(base if base is not None else DEFAULT_BACKOFF.base_s, cap_s),
            cap_s=cap_s,
            max_retry_after_s=DEFAULT_BACKOFF.max_retry_after_s,
        )
        opts = attrs.evolve(opts, backoff=backoff)
    # the redeem pairs' quotas: 0 in the settings is no bound (None in SyncOptions)
    if settings.redeem_quota_records is not None:
        opts = attrs.evolve(opts, redeem_quota_records=settings.redeem_quota_records or None)
    if settings.redeem_quota_bytes is not None:
        opts = attrs.evolve(opts, redeem_quota_bytes=settings.redeem_quota_bytes or None)
    return opts


@click.command()
@click.option(
    "--host",
    default=None,
    help=f"Address to listen on; 0.0.0.0 for the LAN [env FEDPEER_HOST; default {DEFAULT_HOST}].",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help=f"Port; 0 = any free [env FEDPEER_PORT; default {DEFAULT_PORT}].",
)
@click.option(
    "--interface",
    "interfaces",
    multiple=True,
    metavar="NAME",
    help="Network interface for mDNS (repeatable; default: all) [env FEDPEER_INTERFACES].",
)
@click.option(
    "--handle",
    default=None,
    callback=handle_cb,
    help="Display name announced on the LAN [env FEDPEER_HANDLE; "
    "default: fedpeer- and the DID's last 6 characters].",
)
@click.option(
    "--discovery/--no-discovery",
    default=None,
    help="Advertise and browse over mDNS [env FEDPEER_DISCOVERY; default: on].",
)
@click.option(
    "--insecure-http",
    is_flag=True,
    default=False,
    help="Serve plain HTTP instead of HTTPS (tokens and records then travel readable; "
    "logged as a warning and shown by `doctor` and /health).",
)
@click.pass_obj
def run(
    obj: Ctx,
    host: str | None,
    port: int | None,
    interfaces: tuple[str, ...],
    handle: str | None,
    discovery: bool | None,
    insecure_http: bool,
) -> None:
    """Run a node in the foreground until SIGINT or SIGTERM.

    The first run creates the identity (node.key), an admin token
    (admin.token) and the TLS key and certificate (tls.key, tls.crt), all mode
    0600. It serves HTTPS with that certificate, pinned by the node's DID in its
    signed manifest (--insecure-http: plain HTTP). While it serves, the node's
    URL is in node.url in the data dir, which the other commands read.
    """
    try:
        settings = obj.settings
        cfg = NodeConfig(
            handle=handle or settings.handle or "fedpeer",
            discovery=settings.discovery if discovery is None else discovery,
            interfaces=tuple(interfaces) or settings.interfaces,
            tls=not insecure_http,
            insecure_http=insecure_http,
            watch_network=True,
            **rate_settings(settings),
        )
        sync_opts = sync_options(settings)
    except FedpeerError as err:
        fail(err, EXIT_START)
    bind_host = host or settings.host
    bind_port = settings.port if port is None else port
    data_dir = obj.data_dir

    root = logging.getLogger()
    if root.level > logging.INFO:
        logging.getLogger("fedpeer").setLevel(logging.INFO)
    # A node process of its own: as many descriptors as the system allows (a soft
    # limit of 1024 or 256 would cap its connections at 768 or 192, and a flood
    # from the LAN would reach that sooner).
    limits = raise_open_files_limit()
    if limits is not None and limits[1] > limits[0]:
        logging.getLogger("fedpeer").info(
            "raised the open files limit from %d to %d", limits[0], limits[1]
        )
    if limits is not None and limits[1] < 4096:
        logging.getLogger("fedpeer").warning(
            "only %d open files allowed (`ulimit -n`): the node takes at most %d "
            "connections at once",
            limits[1],
            limits[1] * 3 // 4,
        )

    named = handle or settings.handle

    async def main() -> None:
        config = cfg
        if named is None:  # the default handle comes from the DID (see default_handle)
            key = await trio.to_thread.run_sync(load_or_create_key, data_dir)
            config = attrs.evolve(cfg, handle=default_handle(key.did))
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with open_node(
                data_dir, host=bind_host, port=bind_port, config=config, sync=sync_opts
            ) as node:
                url = loopback_url(node.url)
                await trio.to_thread.run_sync(write_node_url, data_dir, url)
                try:
                    click.echo(f"did:   {node.did}")
                    click.echo(f"url:   {url}")
                    click.echo(f"token: {node.admin_token_path} (admin bearer token, mode 0600)")
                    if is_wildcard(bind_host):
                        for addr in lan_addresses(cfg.interfaces)[:4]:
                            click.echo(f"lan:   {with_host(url, addr)}")
                    click.echo(f"handle: {config.handle}")
                    if node.tls is not None:
                        click.echo(f"tls:   {node.tls.current.pin} (SPKI SHA-256 pin)")
                    else:
                        click.echo("tls:   OFF (--insecure-http): plain HTTP", err=True)
                    if not cfg.discovery:
                        click.echo("mdns:  off")
                    elif is_loopback_host(bind_host):
                        click.echo(
                            f"mdns:  browse only (the node listens on {bind_host}; "
                            "use --host 0.0.0.0 to be found on the LAN)"
                        )
                    else:
                        names = ", ".join(cfg.interfaces) or "all interfaces"
                        click.echo(f"mdns:  on ({names})")
                    click.echo("ready; Ctrl-C to stop", err=True)
                    async for signum in signals:
                        click.echo(f"got {signal.Signals(signum).name}, shutting down", err=True)
                        break
                finally:
                    remove_node_url(data_dir, url)

    try:
        trio.run(main)
    except BaseException as exc:
        found = leaf(exc)
        if isinstance(found, FedpeerError):  # START_FAILED (port), KEY_FILE_*, STORE_*, ...
            fail(found, EXIT_LOCKED if isinstance(found, DataDirLocked) else EXIT_START)
        if isinstance(found, OSError):  # not the port (that is START_FAILED above): say what
            where = f" ({found.filename})" if found.filename else ""
            click.echo(
                f"START_FAILED: {found.strerror or found}{where}; "
                f"`{obj.command('doctor')}` checks the data dir, the port and the network",
                err=True,
            )
            sys.exit(EXIT_START)
        if isinstance(found, KeyboardInterrupt):
            sys.exit(EXIT_INTERRUPTED)
        raise
