"""``fedpeer invite create|list|revoke``: invites for other devices."""

from __future__ import annotations

import urllib.parse
from typing import Any

import click
import trio

from ..consent import confirmation_code
from ..consent.grants import Target
from ..consent.invites import MAX_TTL_S, MIN_TTL_S
from ..errors import FedpeerError, TimedOut
from ..peer import AdminClient, InviteCreated
from ..peer.addresses import is_loopback_host, is_wildcard, with_host
from .main import Ctx
from .node import lan_addresses
from .output import console, json_out, short_did, table, when
from .params import JSON_OPT, Duration, Scopes, name_cb, url_cb

__all__ = ["invite", "redemptions"]

Json = dict[str, Any]


@click.group()
def invite() -> None:
    """Issue, list and revoke invites (the other device runs `fedpeer pair URL`)."""


def _target(namespace: str | None, thread: str | None) -> Target | None:
    if thread is not None:
        return Target("thread", thread, namespace)
    if namespace is not None:
        return Target("namespace", namespace)
    return None


def describe_target(target: object) -> str:
    """``everything``, ``namespace notes/*`` or ``thread t1 in notes``."""
    if not isinstance(target, dict) or target.get("type") in (None, "instance"):
        return "everything"
    if target.get("type") == "namespace":
        return f"namespace {target.get('value')}*"
    ns = target.get("namespace")
    return f"thread {target.get('value')}" + (f" in {ns}" if ns else "")


async def _public_base_url(admin: AdminClient) -> tuple[str | None, str | None]:
    """The base URL other devices can reach this node at, and a warning.

    The node's bound URL unless it is a wildcard; then the addresses mDNS
    advertises, else (the CLI runs beside the node) a LAN address of this
    machine. None (the node decides) with a warning when it listens on loopback.
    """
    ident = await admin.identity()
    raw_urls = ident.get("urls")
    urls = [str(u) for u in raw_urls if isinstance(u, str)] if isinstance(raw_urls, list) else []
    if not urls:
        return None, None
    first = urls[0]
    host = urllib.parse.urlsplit(first).hostname or ""
    if is_loopback_host(host):
        return None, (
            f"the node listens on {host} only, so this invite works on this machine only; "
            "restart it with `fedpeer run --host 0.0.0.0` to pair with other devices"
        )
    if not is_wildcard(host):
        return None, None
    try:
        mdns = await admin.discovery()
        raw = mdns.get("addresses")
        advertised = [str(a) for a in raw if isinstance(a, str)] if isinstance(raw, list) else []
    except FedpeerError:
        advertised = []
    api_host = urllib.parse.urlsplit(admin.url).hostname or ""
    candidates = advertised
    if not candidates:
        candidates = lan_addresses() if is_loopback_host(api_host) else [api_host]
    candidates = [c for c in candidates if c and not is_loopback_host(c)]
    if not candidates:
        return None, "found no LAN address for this node; pass --base-url http://ADDRESS:PORT"
    return with_host(first, candidates[0]), None


def _render_qr(url: str) -> str:
    import io

    import segno

    out = io.StringIO()
    segno.make(url, error="l").terminal(out=out, compact=True)
    return out.getvalue()


@invite.command(name="create")
@click.option(
    "--ttl",
    type=Duration(MIN_TTL_S, MAX_TTL_S),
    default=None,
    help="Valid for (90s, 10m, 2h, 7d; 60 s to 90 days) [1d].",
)
@click.option(
    "--uses", type=click.IntRange(1, 1000), default=None, help="How many redemptions [1]."
)
@click.option(
    "--scopes",
    type=Scopes(),
    default=None,
    help="Comma-separated scopes or presets for the redeemer [reader].",
)
@click.option("--namespace", callback=name_cb, default=None, help="Limit to a namespace prefix.")
@click.option("--thread", callback=name_cb, default=None, help="Limit to one thread.")
@click.option("--label", default=None, help="Public label shown to the redeemer.")
@click.option("--note", default=None, help="Private note (admins only).")
@click.option(
    "--base-url",
    callback=url_cb,
    default=None,
    help="URL other devices reach this node at (default: found automatically).",
)
@click.option("--qr/--no-qr", default=True, show_default=True, help="Print a QR code of the URL.")
@click.option(
    "--wait", is_flag=True, help="Wait for the first redemption and show its confirmation code."
)
@click.option(
    "--timeout",
    type=Duration(),
    default="10m",
    show_default=True,
    help="With --wait: give up after this long.",
)
@JSON_OPT
@click.pass_obj
def invite_create(
    obj: Ctx,
    ttl: int | None,
    uses: int | None,
    scopes: list[str] | None,
    namespace: str | None,
    thread: str | None,
    label: str | None,
    note: str | None,
    base_url: str | None,
    qr: bool,
    wait: bool,
    timeout: int,
    as_json: bool,
) -> None:
    """Issue an invite; print its URL (and a QR code) for the other device."""

    async def create(admin: AdminClient) -> Json:
        warning = None
        base = base_url
        if base is None:
            base, warning = await _public_base_url(admin)
        created = await admin.invites.create(
            ttl_s=ttl,
            max_uses=uses,
            scopes=scopes,
            target=_target(namespace, thread),
            device_label=label,
            notes=note,
            base_url=base,
        )
        if warning and not as_json:
            click.echo(f"note: {warning}", err=True)
        if not as_json:
            _print_invite(created, qr, obj)
        answer = created.to_dict()
        if wait:
            answer["redemption"] = await _wait_redeemed(
                admin, created.invite_id, timeout, quiet=as_json
            )
        return answer

    answer = obj.call(create)
    if as_json:
        json_out(answer)


def repr_url(url: str) -> str:
    """The URL quoted for a POSIX shell (it holds ``#`` and ``&``)."""
    return "'" + url.replace("'", "'\\''") + "'"


def _print_invite(created: InviteCreated, qr: bool, obj: Ctx) -> None:
    inv = created.invite
    uses = inv.max_uses
    click.echo(
        f"invite {inv.invite_id}: {', '.join(inv.scopes)} on "
        f"{describe_target(inv.scope_target.to_dict())}, {uses} use{'s' if uses != 1 else ''}, "
        f"expires {created.expires_at}"
    )
    click.echo()
    click.echo(created.url)
    click.echo()
    if qr:
        click.echo(_render_qr(created.url), nl=False)
        click.echo()
    # The same data dir flag as this command (the walkthrough's two laptops use the
    # same layout); without one, the other device's default data dir.
    click.echo(f"On the other device:  {obj.command('pair', repr_url(created.url))}")
    click.echo("The URL holds a secret: share it only with the device you want to pair.")


async def redemptions(
    admin: AdminClient, invite_id: str | None = None, *, issuer: str | None = None
) -> list[Json]:
    """``invite.redeemed`` audit events (oldest first), each with its confirmation code
    (``issuer``: this node's DID when the caller has it, else asked of the node)."""
    events: list[Json] = []
    since = 0
    for _ in range(50):  # bounded: 50 pages of up to 1000 events
        page = await admin.invites.audit(since=since, limit=1000, invite_id=invite_id)
        for item in page.events:
            if item.event.get("type") == "invite.redeemed":
                events.append({**item.event, "ts_ms": item.ts_ms})
        if page.next_since <= since or not page.events:
            break
        since = page.next_since
    if not events:
        return events
    did = issuer if issuer is not None else str((await admin.identity()).get("did"))
    for event in events:
        holder = event.get("holder_did")
        if isinstance(holder, str):
            event["confirmation_code"] = confirmation_code(did, holder, str(event.get("invite_id")))
    return events


async def _wait_redeemed(admin: AdminClient, invite_id: str, timeout: int, *, quiet: bool) -> Json:
    if not quiet:
        click.echo(f"waiting up to {timeout} s for the invite to be redeemed (Ctrl-C to stop)…")
    issuer = str((await admin.identity()).get("did"))  # once, not on every poll
    with trio.move_on_after(timeout):
        for _ in range(int(timeout / 0.5) + 2):  # bounded poll
            found = await redemptions(admin, invite_id, issuer=issuer)
            if found:
                event = found[0]
                if not quiet:
                    click.echo(
                        f"redeemed by {event.get('holder_did')} ({event.get('holder_type')}); "
                        f"confirmation code {event.get('confirmation_code')}: it must match "
                        "the code shown on the other device"
                    )
                return event
            await trio.sleep(0.5)
    raise TimedOut(
        f"invite {invite_id} was not redeemed within {timeout} s; it stays valid until it "
        "expires (`fedpeer invite list`)"
    )


@invite.command(name="list")
@click.option(
    "--state",
    type=click.Choice(["active", "expired", "exhausted", "revoked"]),
    default=None,
    help="Only invites in this state.",
)
@JSON_OPT
@click.pass_obj
def invite_list(obj: Ctx, state: str | None, as_json: bool) -> None:
    """List invites: state, uses, expiry, scopes, and who redeemed them (with codes)."""

    async def fetch(admin: AdminClient) -> tuple[list[Json], list[Json]]:
        found = await admin.invites.list(state=state)
        return [i.to_dict() for i in found], await redemptions(admin)

    invites, redeemed = obj.call(fetch)
    by_invite: dict[str, list[Json]] = {}
    for event in redeemed:
        by_invite.setdefault(str(event.get("invite_id")), []).append(event)
    if as_json:
        for inv in invites:
            inv["redemptions"] = by_invite.get(str(inv.get("invite_id")), [])
        json_out({"invites": invites})
        return
    if not invites:
        click.echo("no invites" + (f" in state {state}" if state else ""))
        return
    rows = table("id", "state", "uses", "expires", "scopes", "target", "redeemed by (code)")
    for inv in invites:
        who = ", ".join(
            f"{short_did(e.get('holder_did'))} ({e.get('confirmation_code')})"
            for e in by_invite.get(str(inv.get("invite_id")), [])
        )
        rows.add_row(
            str(inv.get("invite_id")),
            str(inv.get("state")),
            f"{inv.get('uses')}/{inv.get('max_uses')}",
            when(inv.get("expires_ms")),
            ",".join(inv.get("scopes", [])),
            describe_target(inv.get("scope_target")),
            who or "-",
        )
    console().print(rows)


@invite.command(name="revoke")
@click.argument("invite_id")
@click.pass_obj
def invite_revoke(obj: Ctx, invite_id: str) -> None:
    """Revoke an invite and every token it produced."""
    _info, changed = obj.call(lambda admin: admin.invites.revoke(invite_id))
    click.echo(f"invite {invite_id} {'revoked' if changed else 'was already revoked'}")
