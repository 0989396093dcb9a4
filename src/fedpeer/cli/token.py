"""``fedpeer token create|list|revoke|rotate|rotate-admin``: service accounts."""

from __future__ import annotations

from pathlib import Path

import click

from ..consent import scopes_to_list
from ..peer.node import rotate_admin_token
from .main import Ctx
from .output import console, human_bytes, json_out, run_async, short_did, table, when
from .params import JSON_OPT, Duration, Scopes

__all__ = ["token"]


@click.group()
def token() -> None:
    """Service accounts and their bearer tokens (admin API)."""


@token.command(name="list")
@JSON_OPT
@click.pass_obj
def token_list(obj: Ctx, as_json: bool) -> None:
    """List service accounts (tokens are never shown again)."""
    accounts = obj.call(lambda admin: admin.tokens.list())
    if as_json:
        json_out({"service_accounts": [sa.to_dict() for sa in accounts]})
        return
    rows = table(
        "id", "name", "holder", "scopes", "origin", "created", "state", "tokens", "written"
    )
    for sa in accounts:
        rows.add_row(
            sa.id,
            sa.name,
            short_did(sa.holder_did),
            ",".join(scopes_to_list(sa.scopes)),
            sa.origin,
            when(sa.created_ms),
            "revoked" if sa.revoked_ms else "active",
            str(len(sa.token_ids)),
            f"{sa.written_records} records, {human_bytes(sa.written_bytes)}",
        )
    console().print(rows)


@token.command(name="create")
@click.option("--name", default="service account", show_default=True, help="What it is for.")
@click.option(
    "--scopes",
    type=Scopes(),
    default="reader",
    show_default=True,
    help="Comma-separated scopes or presets (reader, contributor, admin).",
)
@click.option("--holder", default=None, help="DID of the holder [this node].")
@click.option("--ttl", type=Duration(), default=None, help="Token lifetime [no expiry].")
@JSON_OPT
@click.pass_obj
def token_create(
    obj: Ctx, name: str, scopes: list[str], holder: str | None, ttl: int | None, as_json: bool
) -> None:
    """Create a service account and print its token (shown once)."""
    issued = obj.call(
        lambda admin: admin.tokens.create(name, scopes=scopes, holder_did=holder, ttl_s=ttl)
    )
    if as_json:
        json_out(issued.to_dict())
        return
    sa = issued.service_account.to_dict()
    click.echo(
        f"service account {sa.get('id')} ({sa.get('name')}): {','.join(sa.get('scopes', []))}",  # type: ignore[arg-type]
        err=True,
    )
    click.echo("token (shown once; store it like a password):", err=True)
    click.echo(issued.token)


@token.command(name="revoke")
@click.argument("sa_id")
@click.pass_obj
def token_revoke(obj: Ctx, sa_id: str) -> None:
    """Revoke a service account and all its tokens."""
    obj.call(lambda admin: admin.tokens.revoke(sa_id))
    click.echo(f"service account {sa_id} revoked")


@token.command(name="rotate")
@click.argument("sa_id")
@click.pass_obj
def token_rotate(obj: Ctx, sa_id: str) -> None:
    """Mint a new token for a service account and revoke its old ones."""
    rotated = obj.call(lambda admin: admin.tokens.rotate(sa_id))
    click.echo("new token (shown once; the old ones no longer work):", err=True)
    click.echo(rotated.token)


@token.command(name="rotate-admin")
@click.pass_obj
def token_rotate_admin(obj: Ctx) -> None:
    """Mint a new admin token into admin.token (works on the store directly, also
    when the token file is lost; the old admin token stops working)."""

    async def main() -> Path:
        return await rotate_admin_token(obj.data_dir)

    path = run_async(main)
    click.echo(f"new admin token written to {path} (mode 0600); the old one no longer works")
