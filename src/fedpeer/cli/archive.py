"""``fedpeer backup FILE``, ``export FILE.car`` and ``import FILE.car``.

``backup`` copies the SQLite store with SQLite's online backup API, straight
from the data dir (the node may be running: the copy is one consistent snapshot,
WAL included). ``export`` asks the running node for every record (its changes
feed, with the admin token) and writes a CARv1 of the signed records
(:mod:`fedpeer.sync.car`, protocol.md §9.5); ``import`` reads one, verifies every
record first (nothing is stored when one fails), then hands them to the running
node in batches (``POST /v1/records/import``), which verifies them again.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import click
import trio

from .._files import TargetExists, place
from ..errors import CarInvalid, FedpeerError, StoreError
from ..peer import STORE_FILE, PeerClient
from ..store import backup_sqlite
from ..sync.car import encode_head, encode_record, read_export, read_export_items
from .main import Ctx
from .output import fail, json_out, run_async
from .params import JSON_OPT

__all__ = ["backup", "export", "import_"]

Json = dict[str, Any]
BATCH_RECORDS = 500
BATCH_BYTES = 2 * 1024 * 1024  # well under the node's 4 MiB body limit


def _tmp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _exists(file: Path) -> StoreError:
    return StoreError(f"{file} exists; pick another file name or pass --force")


def _write_hint(exc: OSError) -> str:
    """What to do when FILE cannot be written."""
    if exc.errno == errno.ENOENT:
        return "create its directory first, or pick another path"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "pick a directory you can write to"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some disk space, or write it to another disk"
    return "pick another path"


def _create_private(path: Path) -> BinaryIO:
    """A new file only this user can read (the export's records are private)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@JSON_OPT
@click.pass_obj
def backup(obj: Ctx, file: Path, force: bool, as_json: bool) -> None:
    """Copy the store to FILE, consistent, also while the node runs.

    Restore: stop the node, put FILE in place of store.sqlite3 in the data dir
    (remove store.sqlite3-wal and -shm), start the node.
    """
    source = obj.data_dir / STORE_FILE
    try:
        count = backup_sqlite(source, file, overwrite=force)
    except FedpeerError as err:
        fail(err)
    answer = {"file": str(file), "records": count, "source": str(source)}
    if as_json:
        json_out(answer)
    else:
        click.echo(f"backed up {count} records from {source} to {file}")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@JSON_OPT
@click.pass_obj
def export(obj: Ctx, file: Path, force: bool, as_json: bool) -> None:
    """Write every record of the running node, with its signature, to FILE (CARv1)."""
    if file.exists() and not force:
        fail(_exists(file))

    async def main() -> Json:
        body = _tmp_beside(file)
        final = _tmp_beside(file)
        try:
            async with obj.admin() as admin:
                ident = await admin.identity()
                did = str(ident.get("did"))
                count = 0
                async with PeerClient(admin.url, token=admin.token, client=admin.client) as peer:
                    with _create_private(body) as out:
                        async for _cursor, rec in peer.iter_changes(follow=False):
                            out.write(encode_record(rec))
                            count += 1
            head = encode_head(exported_by=did, exported_at_ms=int(time.time() * 1000), count=count)

            def assemble() -> None:
                with _create_private(final) as out, body.open("rb") as src:
                    out.write(head)
                    shutil.copyfileobj(src, out, 1 << 20)
                    out.flush()
                    os.fsync(out.fileno())
                # without --force, a FILE made while we exported is not replaced either
                place(final, file, replace=force)

            await trio.to_thread.run_sync(assemble)
            return {"file": str(file), "records": count, "exported_by": did}
        except TargetExists:  # made while we exported
            raise _exists(file) from None
        except FileExistsError as exc:  # a clash of our own temp names
            raise StoreError(f"cannot write {file}: {exc}; try again") from exc
        except OSError as exc:
            raise StoreError(
                f"cannot write {file}: {exc.strerror or exc}; {_write_hint(exc)}"
            ) from exc
        finally:
            for tmp in (body, final):
                tmp.unlink(missing_ok=True)

    answer = run_async(main)
    if as_json:
        json_out(answer)
    else:
        click.echo(f"exported {answer['records']} records to {file}")


def _unreadable(file: Path, exc: OSError) -> CarInvalid:
    return CarInvalid(f"cannot read {file}: {exc.strerror or exc}")


def _check_file(fh: BinaryIO, file: Path) -> int:
    """Read the whole export once, verifying every record; its record count. Leaves
    ``fh`` at the start again, for the pass that sends the records."""
    try:
        fh.seek(0)
        _header, records = read_export(fh)
        count = sum(1 for _ in records)
        fh.seek(0)
    except OSError as exc:
        raise _unreadable(file, exc) from None
    return count


def _items(fh: BinaryIO, file: Path) -> Iterator[tuple[bytes, bytes]]:
    """The second pass: ``(data, sig)`` per record, read errors as CAR_INVALID."""
    try:
        _header, items = read_export_items(fh)
        yield from items
    except OSError as exc:
        raise _unreadable(file, exc) from None


@click.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@JSON_OPT
@click.pass_obj
def import_(obj: Ctx, file: Path, as_json: bool) -> None:
    """Store the records of an export (CARv1) in the running node.

    Every record is verified (signature, id, canonical bytes, limits) before any
    is stored: one bad record in the file and nothing is imported (and the node
    verifies each record again as it takes it). Records go to
    the node in batches, each stored whole; if the node refuses one midway (its
    disk, its clock, a grant) the error says how many were taken: run the import
    again, records already there are skipped.
    """

    async def main() -> Json:
        stored = existing = 0
        # One open file for both passes: a file renamed over FILE meanwhile does not
        # reach the second (one rewritten in place could: the node's own check of
        # every record it takes still holds). The second pass does not check the
        # signatures again.
        try:
            opened = file.open("rb")
        except OSError as exc:
            raise _unreadable(file, exc) from None
        with opened as fh:
            count = await trio.to_thread.run_sync(_check_file, fh, file)
            async with obj.admin() as admin:
                batch: list[tuple[bytes, bytes]] = []
                size = 0
                try:
                    for data, sig in _items(fh, file):
                        batch.append((data, sig))
                        size += len(data) + 200
                        if len(batch) >= BATCH_RECORDS or size >= BATCH_BYTES:
                            new, old = await admin.records.ingest_many(batch)
                            stored, existing = stored + new, existing + old
                            batch, size = [], 0
                    if batch:
                        new, old = await admin.records.ingest_many(batch)
                        stored, existing = stored + new, existing + old
                except FedpeerError as err:
                    if stored + existing:  # batches the node took are stored: say so
                        err.message += (
                            f" ({stored + existing} of the {count} records were already "
                            "taken, each batch in its own transaction; run the import again "
                            "once this is fixed: stored records are skipped)"
                        )
                        err.args = (err.message,)
                    raise
        return {"file": str(file), "records": count, "stored": stored, "existing": existing}

    answer = run_async(main)
    if as_json:
        json_out(answer)
    else:
        click.echo(
            f"imported {answer['records']} records from {file}: {answer['stored']} new, "
            f"{answer['existing']} already here"
        )
