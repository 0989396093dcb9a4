"""``fedpeer pair URL``, ``unpair``, ``peers`` and ``pairs [pause|resume|kick|delete]``."""

from __future__ import annotations

import contextlib
from typing import Any

import click
import trio

from ..consent import parse_invite_url
from ..errors import FedpeerError, PairSelf, TimedOut, error_from_code
from ..peer import AdminClient, PairStatus, PeerClient
from .main import Ctx
from .output import ago, console, json_out, short_did, table
from .params import JSON_OPT, Duration, invite_url_cb

__all__ = ["pair", "pairs", "peers", "unpair", "wait_caught_up"]

Json = dict[str, Any]
PEER_HEAD_TIMEOUT_S = 5.0


@click.command()
@click.argument("invite_url", metavar="URL", callback=invite_url_cb)
@click.option("--one-way", is_flag=True, help="Only pull from the issuer (default: both ways).")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Show progress until caught up with the issuer.",
)
@click.option(
    "--timeout",
    type=Duration(),
    default="5m",
    show_default=True,
    help="Give up waiting after this long (the pair keeps syncing).",
)
@click.option("--label", default=None, help="How the issuer lists this device [handle].")
@JSON_OPT
@click.pass_obj
def pair(
    obj: Ctx,
    invite_url: str,
    one_way: bool,
    wait: bool,
    timeout: int,
    label: str | None,
    as_json: bool,
) -> None:
    """Pair the running node with the node that issued an invite URL.

    Verifies that the issuer's manifest is signed by the DID in the URL,
    redeems the invite with this node's identity, creates the pair (this node
    pulls from the issuer) and, unless --one-way, hands the issuer a read
    credential for this node so it can pull back. Prints the confirmation code:
    compare it with the one the issuer shows (`fedpeer invite list`).
    """

    async def pair_from_invite(admin: AdminClient) -> Json:
        invite = parse_invite_url(invite_url)
        ident = await admin.identity()
        if invite.issuer_did == ident.get("did"):
            raise PairSelf(
                "this invite was issued by this node: run `fedpeer pair` on the other device"
            )
        handle = str(ident.get("handle") or "")
        result = await admin.pairs.from_invite(
            invite_url, bidirectional=not one_way, label=(label or handle) or None
        )
        if not as_json:
            _print_paired(result.to_dict())
        answer = result.to_dict()
        if wait:
            status = await wait_caught_up(admin, result.pair, timeout, quiet=as_json)
            answer["pair"] = status.to_dict()
        return answer

    result = obj.call(pair_from_invite)
    if as_json:
        json_out(result)


def _print_paired(result: Json) -> None:
    p = result["pair"]
    click.echo(f"paired with {result['issuer_did']} at {result['issuer_url']}")
    click.echo(
        f"confirmation code: {result['confirmation_code']}  (it must match the code "
        "the issuer sees in `fedpeer invite list`)"
    )
    click.echo(f"pair {p.get('id')}: pulling {', '.join(result['scopes'])}")
    if result["two_way"]:
        click.echo(
            f"two-way: the issuer got a read credential to pull from {result['reciprocal_url']}"
        )


async def _peer_head(peer: PeerClient) -> int | None:
    """The peer's head seq from its ``/health`` (None when it does not say: a node
    shows it only to callers who may read every record, so the progress shows the
    records pulled without a total)."""
    try:
        with trio.move_on_after(PEER_HEAD_TIMEOUT_S):
            body = await peer.get_value("/health")
            head = body.get("head_seq") if isinstance(body, dict) else None
            return head if isinstance(head, int) and not isinstance(head, bool) else None
    except FedpeerError:
        return None
    return None


async def wait_caught_up(
    admin: AdminClient, status: PairStatus, timeout: int, *, quiet: bool
) -> PairStatus:
    """Poll the pair until it is caught up, showing a progress bar (bounded by ``timeout``).

    Raises the pair's last error when it stops (a refused credential), TimedOut.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    pid = status.id
    peer_url = status.peer_url
    interval = 0.25
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TimeElapsedColumn(),
        console=console(),
        disable=quiet,
        transient=False,
    )
    async with PeerClient(peer_url, timeout=PEER_HEAD_TIMEOUT_S) as peer:
        # pin the peer's certificate first (its DID signs it), so /health is read
        # over https from the node the pair talks to; failing that, no totals
        with contextlib.suppress(FedpeerError), trio.move_on_after(PEER_HEAD_TIMEOUT_S):
            await peer.verify_identity(status.peer_did)
        with progress, trio.move_on_after(timeout):
            task = progress.add_task("pulling", total=None, count="")
            for _ in range(int(timeout / interval) + 2):  # bounded poll
                status = await admin.pairs.status(pid)
                head = await _peer_head(peer)
                raw_seq = status.lag.get("cursor_seq")  # the node's answer: no assert on it
                seq = raw_seq if isinstance(raw_seq, int) and not isinstance(raw_seq, bool) else 0
                records = status.stats.get("records", 0)
                state = status.state.value
                desc = f"{state}: {records} records"
                err = status.last_error
                if state == "failing" and err is not None:
                    desc += f" (retrying after {err.code})"
                if state == "caught_up" and head is not None:
                    seq = max(seq, head)
                done = min(seq, head) if head is not None else seq
                progress.update(
                    task,
                    description=desc,
                    total=head,
                    completed=done,
                    count=progress_count(done, head),
                )
                if state == "caught_up":
                    if not quiet:
                        progress.stop()
                        click.echo(f"caught up: {records} records pulled from {peer_url}")
                    return status
                if state == "stopped":
                    code = err.code if err is not None else "PEER_ERROR"
                    message = err.message if err is not None else "see `fedpeer pairs`"
                    raise error_from_code(code, f"the pair stopped: {message}")
                await trio.sleep(interval)
    raise TimedOut(
        f"pair {pid} is not caught up after {timeout} s (state {status.state.value}); it keeps "
        "syncing in the node: watch it with `fedpeer pairs`"
    )


_MARKS = {"verified": "✓", "unverified": "?", "invalid": "✗"}


@click.command()
@JSON_OPT
@click.pass_obj
def peers(obj: Ctx, as_json: bool) -> None:
    """Nodes found on the LAN over mDNS (✓ verified, ? unverified, ✗ invalid)."""
    roster: Json = obj.call(lambda admin: admin.discovery())
    if as_json:
        json_out(roster)
        return
    if not roster.get("enabled"):
        click.echo("mDNS discovery is off on this node (start it without --no-discovery)")
        return
    status = roster.get("status")
    line = f"mDNS {status}"
    if roster.get("instance"):
        line += f" as {roster.get('instance')!r}"
    addrs = roster.get("addresses") or []
    line += f" on {', '.join(addrs)}" if addrs else " (not advertised)"
    if roster.get("last_error"):
        line += f": {roster.get('last_error')}"
    click.echo(line)
    entries = list(roster.get("peers", []))
    if not entries:
        click.echo("no peers seen yet")
        return
    rows = table("", "handle", "did", "url", "status", "last seen", "note")
    for e in entries:
        st = str(e.get("status"))
        note = str(e.get("reason") or "")
        if st == "invalid":
            note = (note + "; never offered for pairing").lstrip("; ")
        rows.add_row(
            _MARKS.get(st, " "),
            str(e.get("handle")),
            short_did(e.get("did")),
            str(e.get("url") or "-"),
            st,
            ago(e.get("last_seen_ms")),
            note,
        )
    console().print(rows)


def progress_count(done: int, total: int | None) -> str:
    """``"12/40"`` once the total is known, ``"12"`` before (never ``0/None``)."""
    return f"{done}" if total is None else f"{done}/{total}"


def next_try_text(status: PairStatus) -> str:
    """``"in 12s"`` / ``"in 4m"`` / ``"in 1h"`` while the pair backs off, else ``"-"``."""
    if status.next_try_s is None:
        return "-"
    seconds = round(status.next_try_s)
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"in {seconds // size}{unit}"
    return f"in {seconds}s"


def _lag_text(status: PairStatus) -> str:
    if status.lag.get("caught_up"):
        return "caught up"
    behind = status.lag.get("behind_s")
    if isinstance(behind, int | float):
        return f"behind {behind:.0f}s"
    return "?"


@click.group(invoke_without_command=True)
@JSON_OPT
@click.pass_context
def pairs(ctx: click.Context, as_json: bool) -> None:
    """List sync pairs (state, lag, rate, last error); or act on one."""
    if ctx.invoked_subcommand is not None:
        return
    obj: Ctx = ctx.obj
    rows = obj.call(lambda admin: admin.pairs.statuses())
    if as_json:
        json_out({"pairs": [r.to_dict() for r in rows]})
        return
    if not rows:
        click.echo("no pairs: pair with another node with `fedpeer pair URL`")
        return
    out = table(
        "id", "peer", "set up by", "state", "next try", "lag", "records", "rate/s", "last error"
    )
    for row in rows:
        err = row.last_error
        err_text = f"{err.code}: {err.message}" if err is not None else "-"
        rate = row.stats.get("rate_per_s") or 0
        out.add_row(
            row.id,
            f"{short_did(row.peer_did)} {row.peer_url}",
            "you" if row.origin == "owner" else "their redeem",
            row.state.value,
            next_try_text(row),
            _lag_text(row),
            str(row.stats.get("records", 0)),
            f"{float(rate) if isinstance(rate, int | float) else 0.0:.1f}",
            err_text,
        )
    console().print(out)


def _pair_action(action: str, helptext: str) -> None:
    @pairs.command(name=action, help=helptext)
    @click.argument("pair_id")
    @click.pass_obj
    def command(obj: Ctx, pair_id: str) -> None:
        async def act(admin: AdminClient) -> str:
            if action == "delete":
                await admin.pairs.delete(pair_id)
                return "deleted"
            acts = {
                "pause": admin.pairs.pause,
                "resume": admin.pairs.resume,
                "kick": admin.pairs.kick,
            }
            return (await acts[action](pair_id)).state.value

        click.echo(f"pair {pair_id}: {obj.call(act)}")


_pair_action("pause", "Pause a pair.")
_pair_action("resume", "Resume a paused or stopped pair.")
_pair_action("kick", "Poll now (ends a backoff).")
_pair_action("delete", "Delete a pair (the records it pulled stay).")


@click.command()
@click.argument("pair_or_did", metavar="PAIR_ID|DID")
@click.option(
    "--local-only",
    is_flag=True,
    help="Do not ask the peer to unpair (it is gone for good); only this side forgets it.",
)
@JSON_OPT
@click.pass_obj
def unpair(obj: Ctx, pair_or_did: str, local_only: bool, as_json: bool) -> None:
    """Unpair from a peer, on both sides.

    Stops and deletes this node's pairs pulling from the peer (the records stay),
    revokes every credential the peer holds for this node, and sends the peer a
    signed request to do the same (drop its pair pulling from here). If the peer
    cannot be reached, this side is unpaired anyway; run unpair there too.
    """
    unpaired = obj.call(lambda admin: admin.pairs.unpair(pair_or_did, notify=not local_only))
    result: Json = unpaired.to_dict()
    if as_json:
        json_out(result)
        return
    deleted = ", ".join(result["pairs_deleted"]) or "none"
    click.echo(f"unpaired from {result['peer_did']}")
    click.echo(f"pairs deleted here: {deleted}")
    click.echo(f"credentials it held here, revoked: {len(result['credentials_revoked'])}")
    peer = result["peer"]
    err = peer.get("error") if isinstance(peer, dict) else None
    if isinstance(err, dict):
        click.echo(f"the peer was not unpaired: {err.get('code')}: {err.get('message')}", err=True)
    elif not local_only:
        gone = len(peer.get("pairs_deleted", [])) if isinstance(peer, dict) else 0
        click.echo(f"the peer dropped {gone} pair(s) pulling from this node")
