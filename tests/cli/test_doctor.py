"""``fedpeer doctor`` with no node running: store integrity through SQLiteStore, a
damaged store, a busy port, a bad config file, and the clock check against a peer
whose clock is off (a tiny stdlib HTTP server on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import email.utils
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from fedpeer.cli import cli
from fedpeer.cli.checks import SKEW_LIMIT_S, check_clock, check_node, clock_skew_s
from fedpeer.store import SQLiteStore
from tests.httpserve import QuietHandler, serve_http


def doctor(data_dir: Path, *args: str) -> tuple[int, str, dict[str, dict[str, Any]]]:
    """Run doctor twice (text and --json) on lo; (exit code, text, checks by name)."""
    # --port 0 unless a test asks for a port: the suite must pass while a node
    # runs on the default 127.0.0.1:8765
    port = [] if "--port" in args else ["--port", "0"]
    base = ["--data-dir", str(data_dir), "doctor", "--interface", "lo", *port, *args]
    text = CliRunner().invoke(cli, base)
    as_json = CliRunner().invoke(cli, [*base, "--json"])
    assert text.exit_code == as_json.exit_code
    checks = {c["name"]: c for c in json.loads(as_json.stdout)["checks"]}
    return text.exit_code, text.stdout, checks


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An initialised data dir with a store (as after a first run), node stopped."""
    d = tmp_path / "d"
    assert CliRunner().invoke(cli, ["--data-dir", str(d), "init"]).exit_code == 0

    async def make_store() -> None:
        store = await SQLiteStore.open(d / "store.sqlite3")
        await store.aclose()

    trio.run(make_store)
    (d / "admin.token").write_text("fp_x\n")
    (d / "admin.token").chmod(0o600)
    # The port `run` would use: any free one, so the checks never depend on 8765 being
    # free (a user's node may hold it; tests/conftest.py holds it during the suite).
    (d / "fedpeer.toml").write_text("port = 0\n")
    return d


def test_doctor_on_a_stopped_node_checks_the_store(data_dir: Path) -> None:
    code, text, checks = doctor(data_dir)
    assert code == 0, text
    assert checks["node"]["status"] == "skip"
    assert checks["store"]["status"] == "ok"
    assert checks["port"]["status"] == "ok"
    assert "all checks passed" in text


def test_doctor_reports_a_damaged_store(data_dir: Path) -> None:
    store = data_dir / "store.sqlite3"
    for suffix in ("-wal", "-shm"):
        (data_dir / f"store.sqlite3{suffix}").unlink(missing_ok=True)
    store.write_bytes(b"this is not a database" * 100)
    code, text, checks = doctor(data_dir)
    assert code == 5
    assert checks["store"]["status"] == "FAIL"
    assert "STORE_CORRUPT" in checks["store"]["detail"]
    assert "restore a backup" in checks["store"]["fix"]
    assert re.search(r"^FAIL store: ", text, re.MULTILINE)


def test_doctor_fails_the_port_check_when_the_default_port_is_busy(
    data_dir: Path, hold_user_port: socket.socket | None
) -> None:
    # 8765 is held, by the suite's fixture or by a node the user runs: the default
    # configuration's port check fails and says what to do; the other checks pass.
    (data_dir / "fedpeer.toml").unlink()
    with contextlib.ExitStack() as stack:
        if hold_user_port is None:
            # Whoever held it when the session began may have let go since (another
            # test session on this machine): hold it here then, if it is free.
            sock = stack.enter_context(socket.socket())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):
                sock.bind(("127.0.0.1", 8765))
                sock.listen(1)
        code, text, checks = doctor(data_dir, "--port", "8765")  # the default, said explicitly
    assert code == 5, text
    assert checks["port"]["status"] == "FAIL"
    assert "127.0.0.1:8765" in checks["port"]["detail"]
    assert "--port" in checks["port"]["fix"]
    assert [n for n, c in checks.items() if c["status"] == "FAIL"] == ["port"]


def test_doctor_reports_a_busy_port(data_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        code, _text, checks = doctor(data_dir, "--port", str(port))
    assert code == 5
    assert checks["port"]["status"] == "FAIL"
    assert f"cannot bind 127.0.0.1:{port}" in checks["port"]["detail"]
    assert "--port" in checks["port"]["fix"]


def test_doctor_reports_a_bad_config_and_a_missing_identity(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    (d / "fedpeer.toml").write_text("colour = 'blue'\n")
    code, _text, checks = doctor(d)
    assert code == 5
    assert checks["config"]["status"] == "FAIL"
    assert "colour" in checks["config"]["detail"]
    assert checks["key"]["status"] == "FAIL"
    assert checks["key"]["fix"] == f"fedpeer --data-dir {d} init"
    assert checks["admin token"]["status"] == "skip"  # not created before the first run
    assert checks["store"]["status"] == "skip"
    assert not (d / "store.sqlite3").exists()  # doctor never creates the store


def test_doctor_reports_a_missing_admin_token(data_dir: Path) -> None:
    (data_dir / "admin.token").unlink()
    code, _text, checks = doctor(data_dir)
    assert code == 5
    assert checks["admin token"]["status"] == "FAIL"
    assert "token rotate-admin" in checks["admin token"]["fix"]


def test_clock_skew_from_a_date_header() -> None:
    header = email.utils.formatdate(1_000_000.0, usegmt=True)
    assert clock_skew_s(1_000_010.0, 1_000_012.0, header) == pytest.approx(11.0)
    assert clock_skew_s(999_990.0, 999_990.0, header) == pytest.approx(-10.0)
    with pytest.raises((TypeError, ValueError)):
        clock_skew_s(0.0, 0.0, "yesterday")


@contextlib.contextmanager
def skewed_server(offset_s: float) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 whose Date header is ``offset_s`` off."""
    import time

    class Handler(QuietHandler):
        def date_time_string(self, timestamp: float | None = None) -> str:
            return email.utils.formatdate(time.time() + offset_s, usegmt=True)

        def do_GET(self) -> None:
            body = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serve_http(Handler) as url:
        yield url


def test_clock_check_fails_on_a_skewed_peer_and_passes_on_a_close_one() -> None:
    with skewed_server(-(SKEW_LIMIT_S + 60)) as url:
        behind = check_clock(url)
    assert behind.status == "FAIL"
    assert behind.detail.startswith(f"ahead of {url} by ")
    assert behind.fix is not None
    assert "NTP" in behind.fix
    with skewed_server(0) as url:
        close = check_clock(url)
    assert close.status == "ok"
    assert "manifest rejected" in close.detail  # {} is no fedpeer manifest


@contextlib.contextmanager
def endless_server(
    *, chunk: bytes, pause_s: float, chunks: int, head: bytes = b"", tail: bytes = b""
) -> Iterator[str]:
    """A hostile 'peer' on 127.0.0.1: a valid Date header, then a body that does not
    end (``head``, ``chunks`` chunks ``pause_s`` apart, ``tail``: bounded, so the test
    cannot hang)."""
    stop = threading.Event()  # ends the trickle at teardown

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()  # no length: the body runs until the connection closes
            try:
                self.wfile.write(head)
                for _ in range(chunks):
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    if pause_s and stop.wait(pause_s):
                        return
                self.wfile.write(tail)
            except OSError:
                return  # the client hung up: what it should do

    with serve_http(Handler) as url:
        try:
            yield url
        finally:
            stop.set()  # before the server stops: its handlers stop dripping


def test_clock_check_stops_reading_a_huge_manifest() -> None:
    # 64 MiB offered; the check stops past 256 KiB and says why
    with endless_server(chunk=b" " * 65536, pause_s=0, chunks=1024) as url:
        result = check_clock(url, timeout=10)
    assert result.status == "FAIL"
    assert "over 262144 bytes" in result.detail
    assert result.fix is not None


def test_clock_check_stops_waiting_for_a_trickling_manifest() -> None:
    # one byte every 0.05 s for up to 60 s; the check gives up after its 1 s budget
    # (without the bound it would read all 1200 bytes, find no JSON and pass)
    with endless_server(chunk=b" ", pause_s=0.05, chunks=1200) as url:
        result = check_clock(url, timeout=1)
    assert result.status == "FAIL"
    assert "still sending after 1 s" in result.detail


def test_node_check_stops_reading_an_endless_health_answer() -> None:
    # a stale node.url whose port another program now serves: a /health answer
    # that keeps coming (it would parse as a node's after 5 s, past the 1 s budget)
    with endless_server(
        head=b'{"did": "did:key:z6MkImpostor"', chunk=b" ", pause_s=0.05, chunks=100, tail=b"}"
    ) as url:
        result, running = check_node(url, None, timeout=1)
    assert result.status == "FAIL"
    assert "answers, but not as a fedpeer node" in result.detail
    assert running is False
    with endless_server(chunk=b" " * 65536, pause_s=0, chunks=1024) as url:  # 64 MiB
        result, running = check_node(url, None, timeout=10)
    assert result.status == "FAIL"
    assert running is False


def test_clock_check_on_a_bad_date_header_says_what_to_do() -> None:
    class Handler(QuietHandler):
        def date_time_string(self, timestamp: float | None = None) -> str:
            return "yesterday"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    with serve_http(Handler) as url:
        result = check_clock(url)
    assert result.status == "FAIL"
    assert "bad Date header 'yesterday'" in result.detail
    assert result.fix is not None
    assert "fedpeer node" in result.fix
