"""The fedpeer command: init, id, run (a real process, stopped by SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from click.testing import CliRunner

from fedpeer.cli import EXIT_ERROR, EXIT_START, cli


def test_init_creates_identity_and_id_prints_it(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(cli, ["--data-dir", str(tmp_path), "init"])
    assert first.exit_code == 0, first.output
    did = first.output.strip()
    assert did.startswith("did:key:z6Mk")
    assert (tmp_path / "node.key").stat().st_mode & 0o777 == 0o600
    again = runner.invoke(cli, ["--data-dir", str(tmp_path), "init"])
    assert again.output.strip() == did
    shown = runner.invoke(cli, ["--data-dir", str(tmp_path), "id"])
    assert shown.output.strip() == did


def test_id_without_identity_says_what_to_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "none"), "id"])
    assert result.exit_code == EXIT_ERROR
    assert "KEY_FILE_MISSING" in result.output


def test_insecure_key_is_refused_with_fix(tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(cli, ["--data-dir", str(tmp_path), "init"])
    os.chmod(tmp_path / "node.key", 0o644)
    result = runner.invoke(cli, ["--data-dir", str(tmp_path), "init"])
    assert result.exit_code == EXIT_START
    assert "KEY_FILE_INSECURE" in result.output
    assert "chmod 600" in result.output


def test_env_var_sets_data_dir(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["init"], env={"FEDPEER_DATA_DIR": str(tmp_path / "env")})
    assert result.exit_code == 0
    assert (tmp_path / "env" / "node.key").exists()


def test_unknown_command_is_usage_error() -> None:
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 2


def test_run_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedpeer", "--data-dir", str(tmp_path), "run", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Bound the blocking reads below: a hung node is killed, and the test fails.
    watchdog = threading.Timer(30, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        lines: dict[str, str] = {}
        for _ in range(3):
            key, _, value = proc.stdout.readline().partition(":")
            lines[key.strip()] = value.strip()
        assert lines["did"].startswith("did:key:")
        url = lines["url"]
        r = httpx.get(url + "/health", timeout=10)
        assert r.json()["did"] == lines["did"]
        token = (tmp_path / "admin.token").read_text().strip()
        r = httpx.get(
            url + "/v1/service-accounts", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
