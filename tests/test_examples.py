"""The README's embedding example runs as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_embed_example_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embed.py"), str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "manifest verified" in out
    lines = [line for line in out.splitlines() if line.startswith("bafy")]
    assert [line.split()[-1] for line in lines] == ["milk", "eggs"]
    assert (tmp_path / "data" / "node.key").stat().st_mode & 0o777 == 0o600
