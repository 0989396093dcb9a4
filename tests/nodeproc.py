"""``fedpeer`` processes inside network namespaces, for the CLI and e2e tests.

Shared by ``tests/cli/test_cli_netns.py`` and ``tests/e2e/``: one CLI command
run inside a namespace (:func:`fedpeer`), a ``fedpeer run`` node process
(:class:`RunningNode`: start, wait until it serves, SIGTERM, SIGKILL, restart),
and a bounded poll of a node's state through the CLI (:func:`poll_until`,
:func:`wait_for_verified`).

Why polling: the state of another process (its mDNS roster, a pair's state)
has no event the test process could subscribe to, so these helpers ask again
with a bounded number of attempts under a deadline. Each attempt is a whole CLI
process (about half a second), which paces the loop; an attempt quicker than
``timeout / attempts`` is padded to that, so the count of attempts never ends
the wait before the deadline does.

The test process lives in the root namespace and cannot reach the namespace
addresses: every client command runs through ``ip netns exec``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

from tests.netns import Host

__all__ = [
    "PORT",
    "WAIT_S",
    "RunningNode",
    "clean_env",
    "fedpeer",
    "poll_until",
    "wait_for_verified",
]

T = TypeVar("T")
PORT = 8765
WAIT_S = 40.0
CLI_TIMEOUT_S = 60.0


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``FEDPEER_*`` variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDPEER_")}
    env.update(extra or {})
    return env


def fedpeer(
    host: Host,
    data_dir: Path,
    *args: str,
    timeout: float = CLI_TIMEOUT_S,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``fedpeer --data-dir DATA_DIR ARGS`` inside ``host``'s namespace (bounded by ``timeout``)."""
    return subprocess.run(
        host.exec_args(sys.executable, "-m", "fedpeer", "--data-dir", str(data_dir), *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        input=input,
    )


class RunningNode:
    """``fedpeer run --host 0.0.0.0 --interface eth0`` inside a namespace.

    The constructor starts the process and returns at once; :meth:`wait_ready`
    waits (bounded) until the node printed its start-up lines (the last one is
    ``mdns: ...``). ``lines`` maps each start-up line's key (``did``, ``url``,
    ``lan``, ``mdns``...) to its value. stderr (the node's log) goes to
    ``log_path`` (appended across restarts), so a chatty node never blocks on a
    full pipe; :meth:`log_tail` shows it in failure messages.
    """

    def __init__(
        self,
        host: Host,
        data_dir: Path,
        handle: str,
        *,
        port: int = PORT,
        log_path: Path | None = None,
    ) -> None:
        self.host = host
        self.data_dir = data_dir
        self.handle = handle
        self.port = port
        self.log_path = log_path or data_dir.with_name(data_dir.name + ".log")
        self.proc: subprocess.Popen[str]
        self.lines: dict[str, str] = {}
        self._log: IO[bytes] | None = None
        self._ready = threading.Event()
        self._spawn()

    def _spawn(self) -> None:
        argv = self.host.exec_args(
            sys.executable, "-m", "fedpeer", "--data-dir", str(self.data_dir), "run",
            "--host", "0.0.0.0", "--port", str(self.port), "--handle", self.handle,
            "--interface", self.host.ifname,
        )  # fmt: skip
        self.lines = {}
        self._ready = threading.Event()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self._log, text=True, env=clean_env()
        )
        threading.Thread(
            target=self._read_stdout, args=(self.proc, self.lines, self._ready), daemon=True
        ).start()

    @staticmethod
    def _read_stdout(
        proc: subprocess.Popen[str], lines: dict[str, str], ready: threading.Event
    ) -> None:
        # Drains stdout until the process exits (so it can never block on it);
        # ``ready`` is set at the ``mdns`` line or at EOF (the node died).
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                key, _, value = line.partition(":")
                lines.setdefault(key.strip(), value.strip())
                if key.strip() == "mdns":
                    ready.set()
        finally:
            ready.set()

    @property
    def did(self) -> str:
        """The node's DID (from its start-up lines)."""
        return self.lines["did"]

    @property
    def lan_url(self) -> str:
        """``https://<namespace address>:<port>`` (``fedpeer run`` serves HTTPS)."""
        return f"https://{self.host.address}:{self.port}"

    def wait_ready(self, timeout: float = WAIT_S) -> RunningNode:
        """Wait until the node printed its start-up lines; return self.

        Raises AssertionError (with the log tail) when it exited or did not
        get there within ``timeout`` seconds.
        """
        self._ready.wait(timeout)
        if "mdns" not in self.lines:
            raise AssertionError(
                f"node {self.handle} did not start (exit {self.proc.poll()}): {self.lines}\n"
                f"{self.log_tail()}"
            )
        return self

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """A ``fedpeer`` command against this node (its data dir), in its namespace."""
        return fedpeer(self.host, self.data_dir, *args, timeout=timeout)

    def cli_json(self, *args: str) -> Any:
        """``cli(*args, "--json")`` that must succeed; its decoded stdout."""
        r = self.cli(*args, "--json")
        assert r.returncode == 0, f"fedpeer {' '.join(args)}: exit {r.returncode}\n{r.stderr}"
        return json.loads(r.stdout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout`` s); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self._reap()

    def kill(self) -> int:
        """SIGKILL (no clean shutdown: no goodbye, node.url left behind); the exit code."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self._reap()

    def restart(self, timeout: float = WAIT_S) -> RunningNode:
        """Start a new process on the same data dir and port (the old one must be gone)."""
        assert self.proc.poll() is not None, "stop or kill the node first"
        self._spawn()
        return self.wait_ready(timeout)

    def _reap(self) -> int:
        code = self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the node's log, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return f"--- {self.handle} log ({self.log_path}) ---\n{text[-chars:]}"


def poll_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    attempts: int = 200,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call ``probe`` until it returns something other than None; return that.

    Bounded twice: at most ``attempts`` calls and ``timeout`` seconds. ``probe``
    should be a call into another process (a CLI command), which paces the loop;
    a call quicker than ``timeout / attempts`` is padded to that, so a fast probe
    cannot use up the attempts long before the deadline. Raises AssertionError
    naming ``what`` (plus ``describe()``) when time runs out.
    """
    deadline = time.monotonic() + timeout
    pace = timeout / attempts
    for _ in range(attempts):
        started = time.monotonic()
        found = probe()
        if found is not None:
            return found
        now = time.monotonic()
        if now > deadline:
            break
        time.sleep(min(deadline - now, max(0.0, pace - (now - started))))  # pacing only
    extra = f"\n{describe()}" if describe is not None else ""
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{extra}")


def wait_for_verified(node: RunningNode, did: str, timeout: float = WAIT_S) -> dict[str, Any]:
    """Poll ``fedpeer peers --json`` on ``node`` until ``did`` is listed ``verified``;
    that roster entry."""
    last: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        nonlocal last
        last = node.cli_json("peers")
        for entry in last["peers"]:
            if entry["did"] == did and entry["status"] == "verified":
                return dict(entry)
        return None

    return poll_until(
        probe,
        timeout=timeout,
        what=f"{node.handle} to see {did} verified",
        describe=lambda: str(last),
    )
