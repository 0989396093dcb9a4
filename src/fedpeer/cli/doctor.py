"""``fedpeer doctor``: check the data dir, the store, the port, multicast and the clock.

The checks themselves are in :mod:`fedpeer.cli.checks`.
"""

from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path

import click
import trio

from ..errors import FedpeerError
from ..peer import STORE_FILE
from ..store import SQLiteStore
from . import checks as d
from .config import DEFAULT_HOST, DEFAULT_PORT, Settings, node_url
from .main import Ctx
from .output import EXIT_DOCTOR, json_out, leaf
from .params import JSON_OPT, url_cb

__all__ = ["doctor"]


@click.command()
@click.option(
    "--peer",
    "peer_url",
    callback=url_cb,
    default=None,
    help="Compare clocks with this node (its URL).",
)
@click.option(
    "--interface",
    "interfaces",
    multiple=True,
    metavar="NAME",
    help="Run the multicast self-test on these interfaces (default: the configured "
    "ones, else every interface with an IPv4 address).",
)
@click.option("--host", default=None, help="Address `run` would listen on [config].")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port `run` would use.")
@JSON_OPT
@click.pass_obj
def doctor(
    obj: Ctx,
    peer_url: str | None,
    interfaces: tuple[str, ...],
    host: str | None,
    port: int | None,
    as_json: bool,
) -> None:
    """Check the data dir, the store, the port, multicast and the clock.

    Each check prints ok, FAIL (with how to fix it) or skip. Exits with 5 when
    a check fails.
    """
    results: list[d.Check] = []

    def report(check: d.Check) -> None:
        results.append(check)
        if as_json:
            return
        mark = {"ok": "ok  ", "FAIL": "FAIL", "skip": "skip"}[check.status]
        click.echo(f"{mark} {check.name}: {check.detail}")
        if check.fix:
            click.echo(f"     fix: {check.fix}")

    data_dir = obj.data_dir
    report(d.data_dir_check(data_dir))
    settings: Settings | None
    try:
        settings = obj.settings
        src = ", ".join(f"{k} from {v}" for k, v in sorted(settings.sources.items()))
        report(d.Check("config", "ok", src or "defaults (no fedpeer.toml, no FEDPEER_* set)"))
    except FedpeerError as err:
        settings = None
        report(
            d.Check("config", "FAIL", err.message, f"fix {data_dir}/fedpeer.toml or the variable")
        )
    key_check, did = d.check_key(data_dir)
    report(key_check)
    report(d.check_admin_token(data_dir))
    url: str | None = None
    if settings is not None:
        try:
            url = node_url(settings, obj.url_flag)[0]
        except FedpeerError:
            url = None
    node_check, running = d.check_node(url, did, data_dir=data_dir)
    report(node_check)
    lock_check, locked = d.check_lock(data_dir, node_running=running)
    report(lock_check)
    store_path = data_dir / STORE_FILE
    if running or locked or not store_path.exists():
        report(d.check_store_readonly(store_path))
    else:
        report(_store_check_stopped(store_path))
    bind_host = host or (settings.host if settings else DEFAULT_HOST)
    bind_port = port if port is not None else (settings.port if settings else DEFAULT_PORT)
    if running and url:
        # The data dir's node runs (and holds the data dir): binding another port
        # would test nothing `run` can use until that node stops.
        node_port = urllib.parse.urlsplit(url).port
        note = "" if node_port == bind_port else f" (the next `run` would use port {bind_port})"
        report(d.Check("port", "ok", f"this data dir's node serves at {url}{note}"))
    else:
        report(d.check_port(bind_host, bind_port, node_running=False))
    names = interfaces or (settings.interfaces if settings else ())
    pairs_found = d.interfaces_ipv4(names)
    if not pairs_found:
        report(
            d.Check(
                "multicast",
                "FAIL",
                "no network interface with an IPv4 address: mDNS cannot find peers",
                "connect to a network (Wi-Fi or cable), or name one with --interface",
            )
        )
    for name, address in pairs_found:
        report(d.check_multicast(name, address))
    report(d.check_clock(peer_url))
    failed = [c for c in results if c.failed]
    if as_json:
        json_out({"ok": not failed, "checks": [c.to_dict() for c in results]})
    else:
        click.echo(f"{len(failed)} problem(s) found" if failed else "all checks passed")
    if failed:
        sys.exit(EXIT_DOCTOR)


def _store_check_stopped(path: Path) -> d.Check:
    """Open the store (the node is stopped) and run its integrity check."""

    async def main() -> str:
        store = await SQLiteStore.open(path)
        try:
            return await store.integrity_check()
        finally:
            await store.aclose()

    try:
        outcome = trio.run(main)
    except BaseException as exc:
        found = leaf(exc)
        if not isinstance(found, FedpeerError):
            raise
        return d.store_result(path, f"{found.code}: {found.message}")
    return d.store_result(path, outcome)
