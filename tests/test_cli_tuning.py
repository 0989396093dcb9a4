"""The tuning settings of ``fedpeer run``: ``sync_longpoll_s``, ``sync_backoff_cap_s``,
``rate_per_s``, ``rate_burst`` (fedpeer.toml and FEDPEER_* variables), and that a
running node applies them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from fedpeer.cli.config import load_settings
from fedpeer.cli.node import rate_settings as _rate_settings
from fedpeer.cli.node import sync_options as _sync_options
from fedpeer.errors import ConfigInvalid
from fedpeer.peer import NodeConfig, local_client_context
from fedpeer.sync.backoff import DEFAULT_BACKOFF
from fedpeer.sync.options import SyncOptions


def test_defaults_leave_the_library_defaults(tmp_path: Path) -> None:
    s = load_settings(tmp_path, {})
    assert (s.sync_longpoll_s, s.sync_backoff_cap_s, s.rate_per_s, s.rate_burst) == (None,) * 4
    assert _sync_options(s) == SyncOptions()
    assert _rate_settings(s) == {}


def test_file_then_env_and_what_they_turn_into(tmp_path: Path) -> None:
    (tmp_path / "fedpeer.toml").write_text(
        "sync_longpoll_s = 1\nsync_backoff_cap_s = 0.5\nrate_per_s = 1000\nrate_burst = 5000\n"
    )
    s = load_settings(tmp_path, {"FEDPEER_RATE_BURST": "300", "FEDPEER_SYNC_LONGPOLL_S": "2.5"})
    assert (s.sync_longpoll_s, s.sync_backoff_cap_s, s.rate_per_s, s.rate_burst) == (
        2.5,
        0.5,
        1000.0,
        300,
    )
    assert s.sources["rate_burst"] == "FEDPEER_RATE_BURST"
    assert s.sources["sync_backoff_cap_s"] == "fedpeer.toml"
    opts = _sync_options(s)
    assert opts.longpoll_s == 2.5
    # a cap below the default 1 s base lowers the base too (Backoff requires base <= cap)
    assert (opts.backoff.base_s, opts.backoff.cap_s) == (0.5, 0.5)
    assert opts.backoff.max_retry_after_s == DEFAULT_BACKOFF.max_retry_after_s
    assert opts.page_limit == SyncOptions().page_limit
    cfg = NodeConfig(**_rate_settings(s))
    assert (cfg.rate_per_s, cfg.rate_burst) == (1000.0, 300)
    big = _sync_options(load_settings(tmp_path, {"FEDPEER_SYNC_BACKOFF_CAP_S": "60"}))
    assert (big.backoff.base_s, big.backoff.cap_s) == (DEFAULT_BACKOFF.base_s, 60.0)


def test_write_quota_settings(tmp_path: Path) -> None:
    """``write_quota_records`` / ``write_quota_bytes``: a whole number, 0 for no bound."""
    (tmp_path / "fedpeer.toml").write_text("write_quota_records = 0\nwrite_quota_bytes = 5000\n")
    s = load_settings(tmp_path, {"FEDPEER_WRITE_QUOTA_BYTES": "7000"})
    cfg = NodeConfig(**_rate_settings(s))
    assert (cfg.write_quota_records, cfg.write_quota_bytes) == (None, 7000)
    assert s.sources["write_quota_records"] == "fedpeer.toml"
    defaults = NodeConfig(**_rate_settings(load_settings(tmp_path / "none", {})))
    assert (defaults.write_quota_records, defaults.write_quota_bytes) == (1_000_000, 1 << 30)
    # the redeem pairs' quotas go to the pullers' options, 0 for no bound as well
    opts = _sync_options(
        load_settings(
            tmp_path, {"FEDPEER_REDEEM_QUOTA_RECORDS": "0", "FEDPEER_REDEEM_QUOTA_BYTES": "9"}
        )
    )
    assert (opts.redeem_quota_records, opts.redeem_quota_bytes) == (None, 9)
    assert _sync_options(load_settings(tmp_path / "none", {})) == SyncOptions()
    floor = NodeConfig(
        **_rate_settings(load_settings(tmp_path, {"FEDPEER_MIN_FREE_DISK_PERCENT": "5"}))
    )
    assert floor.min_free_disk_percent == 5.0


def test_backoff_base_setting(tmp_path: Path) -> None:
    # the first retry's ceiling (issue 14's e2e runs use 600 s); alone it raises the cap
    # to at least itself, with a cap it is capped by it
    alone = _sync_options(load_settings(tmp_path, {"FEDPEER_SYNC_BACKOFF_BASE_S": "600"}))
    assert (alone.backoff.base_s, alone.backoff.cap_s) == (600.0, 600.0)
    small = _sync_options(load_settings(tmp_path, {"FEDPEER_SYNC_BACKOFF_BASE_S": "5"}))
    assert (small.backoff.base_s, small.backoff.cap_s) == (5.0, DEFAULT_BACKOFF.cap_s)
    both = _sync_options(
        load_settings(
            tmp_path, {"FEDPEER_SYNC_BACKOFF_BASE_S": "50", "FEDPEER_SYNC_BACKOFF_CAP_S": "10"}
        )
    )
    assert (both.backoff.base_s, both.backoff.cap_s) == (10.0, 10.0)


@pytest.mark.parametrize(
    ("toml", "env", "needle"),
    [
        ("sync_longpoll_s = 0\n", {}, "sync_longpoll_s must be a number of seconds > 0"),
        ("sync_longpoll_s = 301\n", {}, "<= 300"),
        ('sync_longpoll_s = "soon"\n', {}, "sync_longpoll_s"),
        ("sync_backoff_cap_s = true\n", {}, "sync_backoff_cap_s"),
        ("", {"FEDPEER_SYNC_BACKOFF_CAP_S": "nan"}, "FEDPEER_SYNC_BACKOFF_CAP_S"),
        ("", {"FEDPEER_RATE_PER_S": "-1"}, "FEDPEER_RATE_PER_S must be a number"),
        ("", {"FEDPEER_RATE_PER_S": "inf"}, "FEDPEER_RATE_PER_S"),
        ("rate_burst = 1.5\n", {}, "rate_burst must be a whole number"),
        ("rate_burst = 0\n", {}, "rate_burst"),
        ("rate_limit = 5\n", {}, "unknown setting(s) rate_limit"),
        ("write_quota_records = -1\n", {}, "write_quota_records must be a whole number >= 0"),
        ("", {"FEDPEER_WRITE_QUOTA_BYTES": "1.5"}, "FEDPEER_WRITE_QUOTA_BYTES"),
        ("min_free_disk_percent = 60\n", {}, "min_free_disk_percent must be a number from 0"),
    ],
)
def test_bad_tuning_values_name_the_culprit(
    tmp_path: Path, toml: str, env: dict[str, str], needle: str
) -> None:
    (tmp_path / "fedpeer.toml").write_text(toml)
    with pytest.raises(ConfigInvalid, match=re.escape(needle)):
        load_settings(tmp_path, env)


def test_run_applies_the_rate_settings(tmp_path: Path) -> None:
    (tmp_path / "fedpeer.toml").write_text("port = 0\nrate_burst = 3\nrate_per_s = 0.01\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedpeer", "--data-dir", str(tmp_path), "run", "--no-discovery"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    watchdog = threading.Timer(30, proc.kill)  # bounds the blocking reads below
    watchdog.start()
    try:
        assert proc.stdout is not None
        url = ""
        for _ in range(20):
            line = proc.stdout.readline()
            if not line or line.startswith("mdns"):
                break
            if line.startswith("url:"):
                url = line.split(":", 1)[1].strip()
        assert url, "the node did not start"
        with httpx.Client(
            base_url=url, timeout=10, verify=local_client_context(tmp_path) or True
        ) as http:
            codes = [http.get("/health").status_code for _ in range(4)]
            first = http.get("/v1/capabilities")
        assert codes == [200, 200, 200, 429]
        assert first.headers["X-RateLimit-Limit"] == "3"
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
