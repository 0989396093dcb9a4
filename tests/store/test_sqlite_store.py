"""SQLiteStore specifics: persistence, file mode, schema versions, damaged files."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

import fedpeer.store
from fedpeer.errors import SchemaTooNew, StoreCorrupt, StoreError
from fedpeer.store import (
    SCHEMA_VERSION,
    MemoryStore,
    SQLiteStore,
    StateTx,
    Store,
    StoredRecord,
    open_store,
)

from .store_backends import rec


async def test_reopen_keeps_epoch_records_state_and_audit(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = await SQLiteStore.open(path)
    epoch, key = store.epoch, store.cursor_key
    await store.put([rec(i) for i in range(10)])

    def write(tx: StateTx) -> None:
        tx.put("pairs", "p", {"cursor": "c1"})
        tx.audit({"a": 1})

    await store.transact(write)
    await store.aclose()

    again = await SQLiteStore.open(path)
    try:
        assert again.epoch == epoch
        assert again.cursor_key == key  # cursors issued before the restart still resolve
        assert await again.head_seq() == 10
        assert await again.count() == 10
        assert await again.get_state("pairs", "p") == {"cursor": "c1"}
        assert [e.event for e in await again.audit_log()] == [{"a": 1}]
        res = await again.put([rec(9), rec(10)])
        assert res.new == ((rec(10).cid, 11),)
    finally:
        await again.aclose()

    other = await SQLiteStore.open(tmp_path / "other.db")
    try:
        assert other.epoch != epoch
        assert other.cursor_key != key
    finally:
        await other.aclose()


async def test_a_store_from_before_the_cursor_key_gets_one(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = await SQLiteStore.open(path)
    await store.put([rec(1)])
    await store.aclose()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM meta WHERE key = 'cursor_key'")  # as an older fedpeer wrote it
    conn.close()
    again = await SQLiteStore.open(path)
    try:
        assert len(again.cursor_key) == 16
        assert await again.count() == 1
    finally:
        await again.aclose()
    third = await SQLiteStore.open(path)
    try:
        assert third.cursor_key == again.cursor_key  # made once, then kept
    finally:
        await third.aclose()


async def test_file_mode_is_0600_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = await SQLiteStore.open(path)
    try:
        await store.put([rec(1)])
        for name in ("node.db", "node.db-wal", "node.db-shm"):
            mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
            assert mode == 0o600, (name, oct(mode))
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        finally:
            conn.close()
        assert await store.integrity_check() == "ok"
    finally:
        await store.aclose()


@pytest.mark.parametrize(("given", "level"), [(None, 2), ("FULL", 2), ("NORMAL", 1)])
async def test_durability_defaults_to_synchronous_full(
    tmp_path: Path, given: str | None, level: int
) -> None:
    # FULL (2) fsyncs the WAL on every commit: a power cut cannot roll the log back
    kw = {} if given is None else {"synchronous": given}
    store = await SQLiteStore.open(tmp_path / "node.db", **kw)
    try:
        assert store._writer.execute("PRAGMA synchronous").fetchone()[0] == level
    finally:
        await store.aclose()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = await SQLiteStore.open(path)
    await store.aclose()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaTooNew) as info:
        await SQLiteStore.open(path)
    assert info.value.code == "SCHEMA_TOO_NEW"


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all, just some text " * 50, os.urandom(4096)],
    ids=["text", "random"],
)
async def test_not_a_database_is_corrupt(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "node.db"
    path.write_bytes(content)
    with pytest.raises(StoreCorrupt) as info:
        await SQLiteStore.open(path)
    assert info.value.code == "STORE_CORRUPT"


async def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE records (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreCorrupt):
        await SQLiteStore.open(path)
    conn = sqlite3.connect(path)  # left untouched
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
        assert names == ["records"]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()


async def test_damaged_pages_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = await SQLiteStore.open(path)
    await store.put([rec(i, data=os.urandom(300)) for i in range(400)])
    await store.aclose()  # checkpoints the WAL into the main file
    size = path.stat().st_size
    with path.open("r+b") as f:  # smash every page but the first (the header)
        for offset in range(4096, size, 4096):
            f.seek(offset)
            f.write(b"\xff" * 64)

    async def open_and_read_everything() -> None:
        s = await SQLiteStore.open(path)  # may already fail here
        try:
            await s.changes(0, 1000)
            await s.threads()
        finally:
            await s.aclose()

    with pytest.raises(StoreCorrupt):
        await open_and_read_everything()


async def test_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        await SQLiteStore.open(tmp_path / "no" / "such" / "dir" / "node.db")
    assert type(info.value) is StoreError


async def test_open_migrates_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    path.touch()
    store = await SQLiteStore.open(path)
    try:
        assert len(store.epoch) == 32
        assert await store.head_seq() == 0
    finally:
        await store.aclose()


async def test_audit_and_records_are_protected_by_triggers(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = await SQLiteStore.open(path)
    await store.put([rec(1)])
    await store.transact(lambda tx: tx.audit({"x": 1}))
    await store.aclose()
    conn = sqlite3.connect(path)
    try:
        for sql in (
            "UPDATE audit SET event = '{}'",
            "DELETE FROM audit",
            "UPDATE records SET data = x'00'",
        ):
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(sql)
    finally:
        conn.close()


async def test_transact_runs_off_the_event_loop_thread(tmp_path: Path) -> None:
    import threading

    store = await SQLiteStore.open(tmp_path / "node.db")
    try:
        ident = await store.transact(lambda tx: threading.get_ident())
        assert ident != threading.get_ident()
    finally:
        await store.aclose()


async def test_readers_see_commits_while_a_write_waits(tmp_path: Path) -> None:
    """A read is not queued behind the writer lock."""
    store = await SQLiteStore.open(tmp_path / "node.db")
    try:
        await store.put([rec(1)])
        entered = anyio.Event()
        release = anyio.Event()
        token = anyio.lowlevel.current_token()

        def slow(tx: object) -> None:
            anyio.from_thread.run_sync(entered.set, token=token)
            anyio.from_thread.run(release.wait, token=token)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as nursery:
                nursery.start_soon(store.transact, slow)
                await entered.wait()
                page = await store.changes(0, 10)  # the writer holds its lock right now
                assert [r.seq for r in page.records] == [1]
                assert await store.count() == 1
                release.set()
    finally:
        await store.aclose()


async def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    mem = await open_store(None)
    assert isinstance(mem, MemoryStore)
    await mem.aclose()
    disk = await open_store(tmp_path / "x.db")
    assert isinstance(disk, SQLiteStore)
    await disk.aclose()


def test_exports() -> None:
    for name in fedpeer.store.__all__:
        assert getattr(fedpeer.store, name) is not None
    assert {"Store", "MemoryStore", "SQLiteStore", "open_store", "NewRecord"} <= set(
        fedpeer.store.__all__
    )


def test_implementations_satisfy_the_protocol() -> None:
    # structural check at type-check time (mypy) and a cheap runtime one here
    def accepts(store: Store) -> Store:
        return store

    accepts(MemoryStore())

    def accepts_sqlite(store: SQLiteStore) -> Store:  # mypy: SQLiteStore is a Store
        return store

    assert accepts_sqlite is not None
    for name in dir(Store):
        if not name.startswith("_"):
            assert hasattr(MemoryStore, name) or name == "epoch", name
            assert hasattr(SQLiteStore, name) or name == "epoch", name


async def test_large_batch_and_blob_round_trip(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "node.db")
    try:
        big = rec("big", data=os.urandom(1_048_576))
        batch = [rec(i) for i in range(3000)]
        res = await store.put([*batch, big])
        assert len(res.new) == 3001
        got = await store.get(big.cid)
        assert isinstance(got, StoredRecord)
        assert got.data == big.data
    finally:
        await store.aclose()


async def test_path_with_uri_special_characters(tmp_path: Path) -> None:
    odd = tmp_path / "a dir %41?x=1#frag"
    odd.mkdir()
    store = await SQLiteStore.open(odd / "node ?.db")
    try:
        await store.put([rec(1), rec(2)])
        assert [r.seq for r in (await store.changes(0, 10)).records] == [1, 2]
        assert await store.count() == 2
    finally:
        await store.aclose()
    assert sorted(p.name for p in odd.iterdir()) == ["node ?.db"]


async def test_backup_of_a_store_whose_path_has_uri_special_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backup opens the source by an escaped ``file:`` URI: a ``#``, ``?`` or
    ``%`` in the data dir must neither cut the path short nor create stray files."""
    odd = tmp_path / "a dir %41?x=1#frag"
    odd.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a cut-short relative URI would land here
    store = await SQLiteStore.open(odd / "store.sqlite3")
    try:
        await store.put([rec(1), rec(2), rec(3)])
        dest = tmp_path / "copy.sqlite3"
        assert await store.backup(dest) == 3
    finally:
        await store.aclose()
    assert list(elsewhere.iterdir()) == []
    copy = await SQLiteStore.open(dest)
    try:
        assert await copy.count() == 3
        assert copy.epoch == store.epoch
    finally:
        await copy.aclose()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600


async def test_a_failed_backup_leaves_no_file_behind(tmp_path: Path) -> None:
    """A source that is not a fedpeer store: a typed error, no destination, no temp file."""
    other = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StoreError, match="back up"):
        await anyio.to_thread.run_sync(fedpeer.store.backup_sqlite, other, out / "copy.sqlite3")
    assert list(out.iterdir()) == []
    # an existing destination is left as it was without overwrite
    (out / "keep.sqlite3").write_bytes(b"mine")
    with pytest.raises(StoreError, match="exists"):
        fedpeer.store.backup_sqlite(other, out / "keep.sqlite3")
    assert (out / "keep.sqlite3").read_bytes() == b"mine"
    assert sorted(p.name for p in out.iterdir()) == ["keep.sqlite3"]


async def test_backup_never_replaces_a_file_made_while_it_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The "dest exists" check at the start is not enough: a file that appears
    while the copy runs is kept too (without overwrite), and no temp file stays."""
    import fedpeer.store.sqlite as sqlite_module

    store = await SQLiteStore.open(tmp_path / "store.sqlite3")
    try:
        await store.put([rec(1), rec(2)])
    finally:
        await store.aclose()
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "copy.sqlite3"
    real_place = sqlite_module.place

    def place_after_someone_wrote_dest(tmp: Path, path: Path, *, replace: bool = True) -> None:
        dest.write_bytes(b"written meanwhile")
        real_place(tmp, path, replace=replace)

    monkeypatch.setattr(sqlite_module, "place", place_after_someone_wrote_dest)
    with pytest.raises(StoreError, match="exists"):
        fedpeer.store.backup_sqlite(tmp_path / "store.sqlite3", dest)
    assert dest.read_bytes() == b"written meanwhile"
    assert sorted(p.name for p in out.iterdir()) == ["copy.sqlite3"]
    # with overwrite, the same race ends with the copy in place
    assert fedpeer.store.backup_sqlite(tmp_path / "store.sqlite3", dest, overwrite=True) == 2
    assert sorted(p.name for p in out.iterdir()) == ["copy.sqlite3"]
    assert dest.read_bytes().startswith(b"SQLite format 3\x00")


async def test_a_clash_on_the_backups_own_temp_file_is_not_reported_as_dest_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a FileExistsError naming dest means "dest exists"; one on the backup's
    own temporary name must not send the user to rename a file that is not there."""
    import fedpeer.store.sqlite as sqlite_module

    store = await SQLiteStore.open(tmp_path / "store.sqlite3")
    try:
        await store.put([rec(1)])
    finally:
        await store.aclose()
    dest = tmp_path / "copy.sqlite3"

    def clash(tmp: Path, path: Path, *, replace: bool = True) -> None:
        raise FileExistsError(17, "File exists", str(tmp))

    monkeypatch.setattr(sqlite_module, "place", clash)
    with pytest.raises(StoreError) as info:
        fedpeer.store.backup_sqlite(tmp_path / "store.sqlite3", dest)
    assert "pick another file name" not in info.value.message
    assert "try again" in info.value.message
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
