"""``fedpeer records add|list|get``: records on the running node."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..peer import RecordEntry
from ..sync import record_to_json_view
from .main import Ctx
from .output import console, json_out, short_did, table, when
from .params import JSON_OPT, name_cb

__all__ = ["record_view", "records"]

Json = dict[str, Any]


@click.group()
def records() -> None:
    """Add, list and read records on the running node."""


def record_view(entry: RecordEntry) -> Json:
    """What the CLI shows of a record (plain JSON: CIDs as text, body as DAG-JSON)."""
    view = record_to_json_view(entry.signed)
    return {
        "cid": view["cid"],
        "seq": entry.seq,
        "author": view["author"],
        "namespace": view["namespace"],
        "thread": view["thread"],
        "kind": view["kind"],
        "ts": view["ts"],
        "clock": view["clock"],
        "parents": view["parents"],
        "body": view["body"],
    }


@records.command(name="add")
@click.option("--namespace", required=True, callback=name_cb, help="Namespace of the record.")
@click.option("--thread", required=True, callback=name_cb, help="Thread of the record.")
@click.option("--kind", required=True, callback=name_cb, help="Kind of the record.")
@click.option("--parent", "parents", multiple=True, help="CID of a parent record (repeatable).")
@click.argument("body")
@click.pass_obj
def records_add(
    obj: Ctx, namespace: str, thread: str, kind: str, parents: tuple[str, ...], body: str
) -> None:
    """Append a record signed by the node; BODY is JSON, or - to read it from stdin."""
    text = sys.stdin.read() if body == "-" else body
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(
            f'not valid JSON ({exc}); quote it for the shell, e.g. \'{{"text": "hi"}}\'',
            param_hint="BODY",
        ) from None
    entry = obj.call(
        lambda admin: admin.records.append(
            namespace=namespace, thread=thread, kind=kind, body=value, parents=parents
        )
    )
    click.echo(str(entry.cid))


@records.command(name="list")
@click.option("--namespace", callback=name_cb, default=None, help="Only this namespace prefix.")
@click.option("--thread", callback=name_cb, default=None, help="Only this thread.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.option("--since", default=None, help="Cursor from a previous listing.")
@JSON_OPT
@click.pass_obj
def records_list(
    obj: Ctx,
    namespace: str | None,
    thread: str | None,
    limit: int,
    since: str | None,
    as_json: bool,
) -> None:
    """List records in the order the node stored them."""
    page = obj.call(
        lambda admin: admin.records.list(
            namespace=namespace, thread=thread, limit=limit, since=since
        )
    )
    views = [record_view(r) for r in page.records]
    if as_json:
        json_out({"records": views, "next_cursor": page.next_cursor, "has_more": page.has_more})
        return
    if not views:
        click.echo("no records")
    else:
        rows = table("seq", "cid", "namespace", "thread", "kind", "author", "time", "body")
        for v in views:
            body_text = json.dumps(v["body"], ensure_ascii=False)
            rows.add_row(
                str(v["seq"]),
                v["cid"],
                str(v["namespace"]),
                str(v["thread"]),
                str(v["kind"]),
                short_did(v["author"]),
                when(v["ts"]),
                body_text if len(body_text) <= 60 else body_text[:59] + "…",
            )
        console().print(rows)
    if page.has_more:
        click.echo(f"more: --since {page.next_cursor}")


@records.command(name="get")
@click.argument("cid")
@click.pass_obj
def records_get(obj: Ctx, cid: str) -> None:
    """Print one record (JSON) by CID."""
    json_out(record_view(obj.call(lambda admin: admin.records.get(cid))))
