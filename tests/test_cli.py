"""The fedpeer command: init, id, run (a real process, stopped by SIGTERM), settings
precedence, and argument and "node not running" errors (click's runner).

Commands against running nodes are in ``tests/cli/``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import httpx
import pytest
from click.testing import CliRunner

from fedpeer.cli import EXIT_ERROR, EXIT_NOT_RUNNING, EXIT_START, EXIT_USAGE, cli
from fedpeer.cli.config import load_settings, save_handle
from fedpeer.errors import ConfigInvalid
from fedpeer.peer import local_client_context


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


def test_init_handle_is_saved_in_the_config_file(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(cli, ["--data-dir", str(tmp_path), "init", "--handle", "alice laptop"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().startswith("did:key:")
    assert load_settings(tmp_path, {}).handle == "alice laptop"
    runner.invoke(cli, ["--data-dir", str(tmp_path), "init", "--handle", 'bob "b"'])
    assert load_settings(tmp_path, {}).handle == 'bob "b"'
    text = (tmp_path / "fedpeer.toml").read_text()
    assert text.count("handle") == 1
    bad = runner.invoke(cli, ["--data-dir", str(tmp_path), "init", "--handle", "a\tb"])
    assert bad.exit_code == EXIT_USAGE
    assert "control characters" in bad.stderr


def test_settings_precedence_file_then_env(tmp_path: Path) -> None:
    (tmp_path / "fedpeer.toml").write_text(
        'port = 9001\nhost = "0.0.0.0"\nhandle = "from-file"\ninterfaces = ["eth0"]\n'
        "discovery = false\n"
    )
    s = load_settings(tmp_path, {})
    assert (s.port, s.host, s.handle, s.interfaces, s.discovery) == (
        9001,
        "0.0.0.0",
        "from-file",
        ("eth0",),
        False,
    )
    env = {"FEDPEER_PORT": "9002", "FEDPEER_INTERFACES": "wlan0, eth1", "FEDPEER_DISCOVERY": "on"}
    s = load_settings(tmp_path, env)
    assert (s.port, s.host, s.interfaces, s.discovery) == (9002, "0.0.0.0", ("wlan0", "eth1"), True)
    assert s.sources["port"] == "FEDPEER_PORT"
    assert s.sources["host"] == "fedpeer.toml"
    defaults = load_settings(tmp_path / "none", {})
    assert (defaults.port, defaults.host, defaults.handle) == (8765, "127.0.0.1", None)


@pytest.mark.parametrize(
    ("toml", "env", "needle"),
    [
        ("port = 70000\n", {}, "port"),
        ("prot = 1\n", {}, "unknown setting(s) prot"),
        ("port = \n", {}, "not valid TOML"),
        ("", {"FEDPEER_PORT": "http"}, "FEDPEER_PORT"),
        ("", {"FEDPEER_DISCOVERY": "maybe"}, "FEDPEER_DISCOVERY"),
        ('url = "ftp://x"\n', {}, "url"),
    ],
)
def test_bad_settings_name_the_culprit(
    tmp_path: Path, toml: str, env: dict[str, str], needle: str
) -> None:
    (tmp_path / "fedpeer.toml").write_text(toml)
    with pytest.raises(ConfigInvalid, match=re.escape(needle)):
        load_settings(tmp_path, env)


def test_bad_config_file_stops_commands_with_config_invalid(tmp_path: Path) -> None:
    (tmp_path / "fedpeer.toml").write_text("port = [1]\n")
    r = CliRunner().invoke(cli, ["--data-dir", str(tmp_path), "pairs"])
    assert r.exit_code == EXIT_ERROR
    assert r.stderr.startswith("CONFIG_INVALID: ")
    assert "fedpeer.toml" in r.stderr
    r = CliRunner().invoke(cli, ["--data-dir", str(tmp_path), "run"])
    assert r.exit_code == EXIT_START
    assert r.stderr.startswith("CONFIG_INVALID: ")


def test_save_handle_keeps_other_settings(tmp_path: Path) -> None:
    (tmp_path / "fedpeer.toml").write_text("# mine\nport = 9100\n")
    save_handle(tmp_path, "héllo")
    s = load_settings(tmp_path, {})
    assert (s.handle, s.port) == ("héllo", 9100)
    assert "# mine" in (tmp_path / "fedpeer.toml").read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_node_not_running_is_a_clear_error(tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(cli, ["--data-dir", str(tmp_path), "init"])
    r = runner.invoke(cli, ["--data-dir", str(tmp_path), "pairs"])
    assert r.exit_code == EXIT_NOT_RUNNING
    assert r.stderr.startswith("NODE_NOT_RUNNING: ")
    assert f"fedpeer --data-dir {tmp_path} run" in r.stderr
    assert "Traceback" not in r.output
    # a node.url left behind by a killed node
    (tmp_path / "admin.token").write_text("fp_x\n")
    port = _free_port()
    (tmp_path / "node.url").write_text(f"http://127.0.0.1:{port}\n")
    r = runner.invoke(cli, ["--data-dir", str(tmp_path), "records", "list"])
    assert r.exit_code == EXIT_NOT_RUNNING
    assert f"nothing answers at http://127.0.0.1:{port}" in r.stderr
    assert "did not stop cleanly" in r.stderr


def test_url_precedence_flag_env_file(tmp_path: Path) -> None:
    """--url beats FEDPEER_URL beats url in fedpeer.toml beats node.url: the error
    names the URL that was tried and where it came from."""
    ports = [_free_port() for _ in range(4)]
    (tmp_path / "admin.token").write_text("fp_x\n")
    (tmp_path / "node.url").write_text(f"http://127.0.0.1:{ports[0]}\n")

    def tried(*args: str, env: dict[str, str] | None = None) -> str:
        r = CliRunner().invoke(cli, ["--data-dir", str(tmp_path), *args, "pairs"], env=env)
        assert r.exit_code == EXIT_NOT_RUNNING, r.output
        m = re.search(r"nothing answers at (\S+) \(from ([^)]+)\)", r.stderr)
        assert m, r.stderr
        return f"{m.group(1).rsplit(':', 1)[1]} {m.group(2)}"

    assert tried() == f"{ports[0]} {tmp_path / 'node.url'}"
    (tmp_path / "fedpeer.toml").write_text(f'url = "http://127.0.0.1:{ports[1]}"\n')
    assert tried() == f"{ports[1]} fedpeer.toml"
    env = {"FEDPEER_URL": f"http://127.0.0.1:{ports[2]}"}
    assert tried(env=env) == f"{ports[2]} FEDPEER_URL"
    assert tried("--url", f"http://127.0.0.1:{ports[3]}", env=env) == f"{ports[3]} --url"


def test_missing_admin_token_says_how_to_get_one(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        cli, ["--data-dir", str(tmp_path), "--url", "http://127.0.0.1:9", "token", "list"]
    )
    assert r.exit_code == EXIT_ERROR
    assert r.stderr.startswith("AUTH_REQUIRED: ")
    assert "run" in r.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path)]
    cases = [
        ["--url", "not a url", "pairs"],
        ["pair", "https://example.org/not-an-invite"],
        ["pair"],
        ["records", "add", "--namespace", "n", "--thread", "t", "--kind", "k", "{oops"],
        ["invite", "create", "--scopes", "everything"],
        ["invite", "create", "--ttl", "0"],
        ["token", "create", "--scopes", ""],
        ["run", "--port", "70000"],
        ["doctor", "--peer", "ftp://x"],
    ]
    for args in cases:
        r = runner.invoke(cli, [*base, *args])
        assert r.exit_code == EXIT_USAGE, (args, r.output)
        assert "Error" in r.stderr
        assert "Traceback" not in r.output


def _read_lines_until(stream: IO[str], prefix: str, limit: int = 20) -> dict[str, str]:
    lines: dict[str, str] = {}
    for _ in range(limit):
        line = stream.readline()
        if not line:
            break
        key, _, value = line.partition(":")
        lines[key.strip()] = value.strip()
        if line.startswith(prefix):
            break
    return lines


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_writes_node_url_and_stops_on_a_signal(tmp_path: Path, signum: int) -> None:
    (tmp_path / "fedpeer.toml").write_text('handle = "from-file"\nport = 0\n')
    env = dict(os.environ, FEDPEER_HANDLE="from-env")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedpeer", "--data-dir", str(tmp_path), "run", "--no-discovery"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    # Bound the blocking reads below: a hung node is killed, and the test fails.
    watchdog = threading.Timer(30, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        lines = _read_lines_until(proc.stdout, "mdns")
        assert lines["did"].startswith("did:key:")
        assert lines["handle"] == "from-env"  # env beats the file
        assert lines["mdns"] == "off"
        url = lines["url"]
        assert (tmp_path / "node.url").read_text().strip() == url
        r = httpx.get(url + "/health", timeout=10, verify=local_client_context(tmp_path) or True)
        assert r.json()["did"] == lines["did"]
        token = (tmp_path / "admin.token").read_text().strip()
        assert (tmp_path / "admin.token").stat().st_mode & 0o777 == 0o600
        r = httpx.get(
            url + "/v1/service-accounts",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
            verify=local_client_context(tmp_path) or True,
        )
        assert r.status_code == 200
        # without --url, the CLI finds the node through node.url
        listed = CliRunner().invoke(cli, ["--data-dir", str(tmp_path), "pairs", "--json"])
        assert listed.exit_code == 0, listed.output
        assert listed.stdout.strip().startswith("{")
        proc.send_signal(signum)
        assert proc.wait(timeout=20) == 0
        assert not (tmp_path / "node.url").exists()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_on_a_busy_port_exits_3(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "fedpeer", "--data-dir", str(tmp_path), "run",
             "--no-discovery", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )  # fmt: skip
    assert r.returncode == EXIT_START
    assert "START_FAILED" in r.stderr
    assert str(port) in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "node.url").exists()
