"""Backup, export and import (issue 14; protocol.md §9.5).

* ``fedpeer backup`` copies a store that a running node keeps writing to: the copy
  opens, checks out and holds what was committed (WAL content included);
* ``fedpeer export`` / ``import``: a CARv1 of the signed records round-trips into
  another node; every record is verified on import, one bad record and nothing is
  stored; the file is read by an independent CAR reader (@ipld/car under node),
  skipped with the reason when node or its packages are missing.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from fedpeer.cli import archive, cli
from fedpeer.errors import BadSignature, CarInvalid, StoreError
from fedpeer.identity.keys import SigningKey
from fedpeer.peer import Node, NodeConfig, open_node
from fedpeer.store import SQLiteStore, backup_sqlite
from fedpeer.sync import car as car_module
from fedpeer.sync.car import (
    encode_export,
    encode_head,
    encode_record,
    read_export,
    read_export_items,
)
from fedpeer.sync.records import DEFAULT_LIMITS, Limits, SignedRecord, build_record
from tests.httpserve import QuietHandler, serve_http

ROOT = Path(__file__).resolve().parents[1]
JS_DIR = ROOT / "interop" / "js"
KEY = SigningKey.from_seed(b"\x07" * 32)


def records(n: int, start: int = 0) -> list[SignedRecord]:
    return [
        build_record(KEY, namespace="notes", thread="t", kind="k", body={"i": i})
        for i in range(start, start + n)
    ]


def export_bytes(recs: list[SignedRecord]) -> bytes:
    return b"".join(encode_export(recs, exported_by=KEY.did, exported_at_ms=1, count=len(recs)))


# --- the CAR codec (sans-I/O) -----------------------------------------------------------


def test_export_round_trips_every_record_with_its_signature() -> None:
    """protocol.md §9.5: record blocks keyed by the record id, then signature blocks."""
    recs = records(50)
    header, back = read_export(io.BytesIO(export_bytes(recs)))
    assert header.count == 50
    assert header.exported_by == KEY.did
    got = list(back)
    assert [(r.cid, r.data, r.sig) for r in got] == [(r.cid, r.data, r.sig) for r in recs]


def test_the_unverified_reader_gives_the_same_items_and_checks_no_signature() -> None:
    recs = records(5)
    header, items = read_export_items(io.BytesIO(export_bytes(recs)))
    assert header.count == 5
    assert list(items) == [(r.data, r.sig) for r in recs]
    # a forged signature passes through it (the node it feeds verifies), unlike read_export
    forged = SignedRecord(recs[1].cid, recs[1].data, bytes(64), recs[1].record)
    _header, items = read_export_items(io.BytesIO(export_bytes([recs[0], forged])))
    assert list(items) == [(recs[0].data, recs[0].sig), (recs[1].data, bytes(64))]


def test_a_read_error_in_the_sending_pass_is_car_invalid(tmp_path: Path) -> None:
    """The import's second pass maps a failing disk to CAR_INVALID, not a traceback."""

    class FailingDisk(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            if self.tell() > 200:
                raise OSError(errno.EIO, "Input/output error")
            return super().read(size)

    fh = FailingDisk(export_bytes(records(5)))
    with pytest.raises(CarInvalid, match=r"cannot read .*Input/output error"):
        list(archive._items(fh, tmp_path / "x.car"))


def test_a_bad_signature_in_the_file_is_a_typed_error_naming_the_record() -> None:
    recs = records(3)
    forged = SignedRecord(recs[1].cid, recs[1].data, bytes(64), recs[1].record)
    blob = export_bytes([recs[0], forged, recs[2]])
    _header, back = read_export(io.BytesIO(blob))
    first = next(back)
    assert first.cid == recs[0].cid
    with pytest.raises(BadSignature, match=f"record 2 \\({recs[1].cid}\\)"):
        next(back)


@pytest.mark.parametrize(
    ("mangle", "match"),
    [
        (lambda b: b[:-5], "truncated"),
        (lambda b: b[:60] + bytes([b[60] ^ 1]) + b[61:], "CID|bytes|CARv1|root|decode"),
        (lambda b: b"\x05hello" + b, "CARv1"),
        (lambda b: b"", "truncated"),
    ],
)
def test_a_damaged_file_is_car_invalid(mangle: object, match: str) -> None:
    blob = mangle(export_bytes(records(3)))  # type: ignore[operator]
    for reader in READERS:
        with pytest.raises(CarInvalid, match=match):
            _read_all(io.BytesIO(blob), reader)


def test_a_count_that_does_not_match_the_root_is_car_invalid() -> None:
    recs = records(2)
    blob = encode_head(exported_by=KEY.did, exported_at_ms=1, count=3) + b"".join(
        encode_record(r) for r in recs
    )
    for reader in READERS:
        with pytest.raises(CarInvalid, match="says 3 records but holds 2"):
            _read_all(io.BytesIO(blob), reader)


# --- forged files: memory and time stay bounded ----------------------------------------


class Endless(io.RawIOBase):
    """A file that starts with ``head`` and then repeats ``chunk`` forever; counts reads."""

    def __init__(self, head: bytes, chunk: bytes) -> None:
        self.head, self.chunk, self.pos = head, chunk, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf)
        n = len(view)
        out = bytearray()
        while len(out) < n:
            if self.pos < len(self.head):
                piece = self.head[self.pos : self.pos + n - len(out)]
            else:
                off = (self.pos - len(self.head)) % len(self.chunk)
                piece = self.chunk[off : off + n - len(out)]
            out += piece
            self.pos += len(piece)
        view[:n] = out
        return n


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            return bytes(out)


READERS = (read_export, read_export_items)
"""Both readers check the file the same way (only read_export verifies records)."""


def _read_all(stream: Any, reader: Any = read_export) -> None:
    _header, back = reader(stream)
    for _rec in back:
        pass


def test_a_block_length_of_2_to_the_60_is_refused_without_reading_it() -> None:
    head = encode_head(exported_by=KEY.did, exported_at_ms=1, count=1)
    for reader in READERS:
        stream = Endless(head + _varint(2**60), b"\x00")
        with pytest.raises(CarInvalid, match="bad length"):
            _read_all(stream, reader)
        assert stream.pos <= len(head) + 9  # only the varint itself was read
    # a varint that never ends is refused after its ninth byte
    stream = Endless(head, b"\xff")
    with pytest.raises(CarInvalid, match="not a valid varint"):
        _read_all(stream)
    assert stream.pos <= len(head) + 9


def test_endless_record_blocks_without_signatures_are_refused_within_a_bound() -> None:
    big = build_record(KEY, namespace="notes", thread="t", kind="k", body={"x": "y" * 200_000})
    # the record block alone (its signature block left out), repeated forever
    n = len(_varint(len(big.cid.raw) + len(big.data))) + len(big.cid.raw) + len(big.data)
    record_block = encode_record(big)[:n]
    head = encode_head(exported_by=KEY.did, exported_at_ms=1, count=10**9)
    for reader in READERS:
        stream = Endless(head, record_block)
        with pytest.raises(CarInvalid, match="without their signature block"):
            _read_all(stream, reader)
        assert stream.pos < 20 * 1024 * 1024  # 16 MiB of pending records, then refused


def test_records_past_the_promised_count_stop_the_reader() -> None:
    """An endless file of valid records is refused at the first record past the root's
    count: the reader never runs on for as long as the file does."""
    rec = records(1)[0]
    head = encode_head(exported_by=KEY.did, exported_at_ms=1, count=3)
    stream = Endless(head, encode_record(rec))
    _header, back = read_export(stream)
    got = [next(back) for _ in range(3)]
    assert [r.cid for r in got] == [rec.cid] * 3
    with pytest.raises(CarInvalid, match="says 3 records but holds more"):
        next(back)
    assert stream.pos <= len(head) + 4 * len(encode_record(rec))
    stream = Endless(head, encode_record(rec))
    _header, items = read_export_items(stream)
    assert [next(items) for _ in range(3)] == [(rec.data, rec.sig)] * 3
    with pytest.raises(CarInvalid, match="says 3 records but holds more"):
        next(items)
    assert stream.pos <= len(head) + 4 * len(encode_record(rec))


# --- the commands against a running node -------------------------------------------------


class Running:
    """A node on loopback in a thread, for CLI commands run in this process."""

    def __init__(self, data_dir: Path, limits: Limits = DEFAULT_LIMITS) -> None:
        self.data_dir = data_dir
        self.limits = limits
        self.ready = threading.Event()
        self.stop: trio.Event | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.node: Node | None = None
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self.stop = trio.Event()
        self.token = trio.lowlevel.current_trio_token()
        async with open_node(
            self.data_dir,
            config=NodeConfig(rate_per_s=10_000, rate_burst=10_000),
            limits=self.limits,
        ) as node:
            self.node = node
            self.ready.set()
            await self.stop.wait()

    def __enter__(self) -> Running:
        self.thread.start()
        assert self.ready.wait(30), "the node did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.token is not None
        assert self.stop is not None
        trio.from_thread.run_sync(self.stop.set, trio_token=self.token)
        self.thread.join(30)

    def call(self, fn: object, *args: object) -> object:
        assert self.token is not None
        return trio.from_thread.run(fn, *args, trio_token=self.token)  # type: ignore[arg-type]

    def fp(self, *args: str) -> object:
        assert self.node is not None
        argv = ["--data-dir", str(self.data_dir), "--url", self.node.url, *args]
        return CliRunner().invoke(cli, argv, catch_exceptions=False)


@pytest.fixture
def two_running(tmp_path: Path) -> Iterator[tuple[Running, Running]]:
    with Running(tmp_path / "a") as a, Running(tmp_path / "b") as b:
        yield a, b


def _append(a: Running, n: int, start: int = 0) -> None:
    assert a.node is not None
    node = a.node

    async def add() -> None:
        for i in range(start, start + n):
            await node.records.append(namespace="notes", thread="t", kind="k", body={"i": i})

    a.call(add)


def test_export_then_import_into_another_node(
    two_running: tuple[Running, Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two_running
    _append(a, 30)
    car = a.data_dir.parent / "a.car"
    r = a.fp("export", str(car), "--json")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    assert json.loads(r.stdout)["records"] == 30  # type: ignore[attr-defined]
    assert car.stat().st_mode & 0o777 == 0o600
    checked: list[bytes] = []  # the command verifies each record once (the node again)
    real_verify = car_module.verify_record

    def counting_verify(data: bytes, sig: bytes, **kw: Any) -> SignedRecord:
        checked.append(data)
        return real_verify(data, sig, **kw)

    monkeypatch.setattr(car_module, "verify_record", counting_verify)
    r = b.fp("import", str(car), "--json")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    assert json.loads(r.stdout) == {  # type: ignore[attr-defined]
        "file": str(car), "records": 30, "stored": 30, "existing": 0,
    }  # fmt: skip
    assert len(checked) == len(set(checked)) == 30
    assert a.node is not None
    assert b.node is not None
    assert b.call(b.node.store.count) == 30
    # importing again stores nothing new; the ids and signatures are the author's
    r = b.fp("import", str(car), "--json")
    assert json.loads(r.stdout)["existing"] == 30  # type: ignore[attr-defined]
    page_a = a.call(a.node.store.changes, 0, 100)
    page_b = b.call(b.node.store.changes, 0, 100)
    assert [(x.cid, x.sig) for x in page_a.records] == [  # type: ignore[attr-defined]
        (x.cid, x.sig)
        for x in page_b.records  # type: ignore[attr-defined]
    ]


def test_import_stores_nothing_when_one_record_is_bad(
    two_running: tuple[Running, Running],
) -> None:
    _a, b = two_running
    recs = records(5)
    bad = SignedRecord(recs[3].cid, recs[3].data, bytes(64), recs[3].record)
    car = b.data_dir.parent / "bad.car"
    car.write_bytes(export_bytes([*recs[:3], bad, recs[4]]))
    r = b.fp("import", str(car))
    assert r.exit_code == 1  # type: ignore[attr-defined]
    assert "BAD_SIGNATURE: record 4" in r.stderr  # type: ignore[attr-defined]
    assert b.node is not None
    assert b.call(b.node.store.count) == 0
    (b.data_dir.parent / "junk.car").write_bytes(b"not a car at all")
    r = b.fp("import", str(b.data_dir.parent / "junk.car"))
    assert r.exit_code == 1  # type: ignore[attr-defined]
    assert "CAR_INVALID" in r.stderr  # type: ignore[attr-defined]


def test_an_import_the_node_refuses_midway_says_how_much_it_took(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file verifies here, but the node refuses a later batch (its own, smaller
    record limit): the batches before it are stored, and the error says so and
    that running the import again is safe."""
    monkeypatch.setattr(archive, "BATCH_RECORDS", 3)
    small = records(3)
    big = build_record(KEY, namespace="notes", thread="t", kind="k", body="x" * 3000)
    car = tmp_path / "mixed.car"
    car.write_bytes(export_bytes([*small, big]))
    with Running(tmp_path / "b", limits=Limits(max_record_bytes=2048)) as b:
        r = b.fp("import", str(car))
        assert r.exit_code == 1  # type: ignore[attr-defined]
        err = r.stderr  # type: ignore[attr-defined]
        assert "RECORD_TOO_LARGE" in err
        assert "3 of the 4 records were already taken" in err
        assert "run the import again" in err
        assert b.node is not None
        assert b.call(b.node.store.count) == 3  # the first batch, whole


def test_backup_while_the_node_writes_is_consistent(
    two_running: tuple[Running, Running],
) -> None:
    a, _b = two_running
    _append(a, 20)
    assert a.node is not None
    node = a.node
    copies: list[tuple[Path, int]] = []

    async def write_and_backup() -> None:
        async with trio.open_nursery() as nursery:

            async def writer() -> None:
                for i in range(200):
                    await node.records.append(
                        namespace="notes", thread="w", kind="k", body={"w": i}
                    )

            nursery.start_soon(writer)
            for n in range(3):
                dest = a.data_dir.parent / f"backup{n}.sqlite3"
                count = await trio.to_thread.run_sync(
                    backup_sqlite, a.data_dir / "store.sqlite3", dest
                )
                copies.append((dest, count))

    a.call(write_and_backup)
    for dest, count in copies:
        assert count >= 20
        assert dest.stat().st_mode & 0o777 == 0o600
        assert not Path(f"{dest}-wal").exists()

        async def check(path: Path = dest, expected: int = count) -> None:
            store = await SQLiteStore.open(path)
            try:
                assert await store.integrity_check() == "ok"
                assert await store.count() == expected
                assert await store.head_seq() == expected  # a prefix: no gaps
            finally:
                await store.aclose()

        trio.run(check)
    # the command itself; a second time it refuses to overwrite without --force
    out = a.data_dir.parent / "cli.sqlite3"
    r = a.fp("backup", str(out))
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    r = a.fp("backup", str(out))
    assert r.exit_code == 1  # type: ignore[attr-defined]
    assert "--force" in r.stderr  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="start the node once"):
        backup_sqlite(a.data_dir.parent / "nowhere" / "store.sqlite3", out, overwrite=True)


# --- an independent reader ---------------------------------------------------------------


def test_an_independent_car_reader_reads_the_export(tmp_path: Path) -> None:
    """protocol.md §9.5, read by @ipld/car (JavaScript), blocks checked against their
    CIDs and every signature verified with @noble/curves."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the independent CAR reader (@ipld/car) did not run")
    if not (JS_DIR / "node_modules" / "@ipld" / "car").is_dir():
        pytest.skip(
            "interop/js/node_modules/@ipld/car is missing: run `make js-deps` (npm ci in "
            "interop/js) to install the independent CAR reader"
        )
    recs = records(4)
    car = tmp_path / "x.car"
    car.write_bytes(export_bytes(recs))
    out = subprocess.run(
        [node, str(JS_DIR / "read_car.mjs"), str(car)],
        capture_output=True, text=True, timeout=60, cwd=JS_DIR,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["root"]["type"] == "fedpeer.export"
    assert seen["root"]["count"] == 4
    assert seen["blocks"] == 1 + 2 * 4
    assert [r["cid"] for r in seen["records"]] == [str(r.cid) for r in recs]
    assert [r["body"] for r in seen["records"]] == [{"i": i} for i in range(4)]
    assert all(r["signature_ok"] for r in seen["records"])
    # and it notices a forged signature
    forged = SignedRecord(recs[0].cid, recs[0].data, bytes(64), recs[0].record)
    car.write_bytes(export_bytes([forged]))
    out = subprocess.run(
        [node, str(JS_DIR / "read_car.mjs"), str(car)],
        capture_output=True, text=True, timeout=60, cwd=JS_DIR,
    )  # fmt: skip
    assert out.returncode == 1


# --- export: never a half-written or clobbered FILE ---------------------------------------


@contextlib.contextmanager
def broken_node(mode: str) -> Iterator[str]:
    """A fake node on loopback that answers ``/v1/identity`` and then fails the changes
    feed: with a fedpeer error (``"error"``), or by cutting the connection in the middle
    of the page it promised (``"cut"``)."""

    class Handler(QuietHandler):
        def _send(self, status: int, body: bytes, length: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.startswith("/v1/identity"):
                self._send(200, json.dumps({"did": KEY.did, "urls": []}).encode())
            elif mode == "error":
                err = {"error": {"code": "STORE_ERROR", "message": "the disk failed"}}
                self._send(500, json.dumps(err).encode())
            else:
                self._send(200, b'{"records": [', length=1 << 20)
                self.close_connection = True

    with serve_http(Handler) as url:
        yield url


@pytest.mark.parametrize("mode", ["error", "cut"])
def test_a_failed_export_leaves_no_file_and_no_temp_file(tmp_path: Path, mode: str) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    old = out_dir / "old.car"
    old.write_bytes(b"the previous export")
    env = {"FEDPEER_TOKEN": "x" * 43}
    with broken_node(mode) as url:
        for target, extra in ((out_dir / "new.car", []), (old, ["--force"])):
            argv = ["--data-dir", str(tmp_path / "d"), "--url", url, "export", str(target)]
            r = CliRunner().invoke(cli, [*argv, *extra], env=env, catch_exceptions=False)
            assert r.exit_code in (1, 4), r.output
            assert re.match(r"[A-Z_]+: ", r.stderr), r.stderr  # CODE: message, no traceback
            if mode == "error":
                assert r.stderr.startswith("STORE_ERROR: the disk failed")
            else:  # it answered, then broke off: not "nothing answers"
                assert r.stderr.startswith("NODE_NOT_RUNNING: the node at ")
                assert "broke off its answer" in r.stderr
    # nothing half-written: no new file, the old one untouched, no temp files left
    assert sorted(p.name for p in out_dir.iterdir()) == ["old.car"]
    assert old.read_bytes() == b"the previous export"


def test_export_refuses_to_overwrite_without_force(two_running: tuple[Running, Running]) -> None:
    a, _b = two_running
    _append(a, 3)
    car = a.data_dir.parent / "a.car"
    car.write_bytes(b"keep me")
    r = a.fp("export", str(car))
    assert r.exit_code == 1  # type: ignore[attr-defined]
    assert "--force" in r.stderr  # type: ignore[attr-defined]
    assert car.read_bytes() == b"keep me"
    r = a.fp("export", str(car), "--force", "--json")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    assert json.loads(r.stdout)["records"] == 3  # type: ignore[attr-defined]
    with car.open("rb") as fh:
        _header, back = read_export(fh)
        assert len(list(back)) == 3
    assert sorted(p.name for p in car.parent.iterdir() if p.name.startswith(".")) == []
    # a FILE that appears while the export runs (another program, another
    # export) is not replaced either: the check before the export is not enough
    late = car.parent / "late.car"
    real_head = archive.encode_head

    def head_while_someone_writes_file(**kw: Any) -> bytes:
        late.write_bytes(b"written meanwhile")
        return real_head(**kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(archive, "encode_head", head_while_someone_writes_file)
        r = a.fp("export", str(late))
    assert r.exit_code == 1, r.output  # type: ignore[attr-defined]
    assert r.stderr.startswith(f"STORE_ERROR: {late} exists")  # type: ignore[attr-defined]
    assert "--force" in r.stderr  # type: ignore[attr-defined]
    assert late.read_bytes() == b"written meanwhile"
    assert sorted(p.name for p in car.parent.iterdir() if p.name.startswith(".")) == []
    # a FILE that cannot be written says why and what to do
    r = a.fp("export", str(car.parent / "no-such-dir" / "a.car"))
    assert r.exit_code == 1  # type: ignore[attr-defined]
    assert r.stderr.startswith("STORE_ERROR: cannot write ")  # type: ignore[attr-defined]
    assert "create its directory first" in r.stderr  # type: ignore[attr-defined]
