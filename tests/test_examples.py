"""The examples and the README's library section run as a user would run them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SECTION = "## Embedding (the library)"


def _run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=90, cwd=cwd
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_embed_example_runs(tmp_path: Path) -> None:
    out = _run([str(ROOT / "examples" / "embed.py"), str(tmp_path / "data")], tmp_path)
    assert "manifest verified" in out
    lines = [line for line in out.splitlines() if line.startswith("bafy")]
    assert [line.split()[-1] for line in lines] == ["milk", "eggs"]
    assert (tmp_path / "data" / "node.key").stat().st_mode & 0o777 == 0o600


def test_embed_asyncio_example_runs(tmp_path: Path) -> None:
    out = _run([str(ROOT / "examples" / "embed_asyncio.py"), str(tmp_path / "data")], tmp_path)
    assert "loop: asyncio" in out
    assert "notes: ['eggs', 'milk']" in out  # newest first, through the host app's route
    assert "over HTTP, newest: eggs bafy" in out
    assert "manifest verified, signed by did:key:z6Mk" in out
    assert (tmp_path / "data" / "store.sqlite3").exists()


def readme_snippets() -> list[str]:
    """The python code blocks of the README's library section, in order."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_the_readme_library_section_has_snippets() -> None:
    snippets = readme_snippets()
    assert len(snippets) >= 3
    assert any("asyncio.run(" in s for s in snippets)
    assert any("trio.run(" in s for s in snippets)


@pytest.mark.parametrize("index", range(len(readme_snippets())))
def test_readme_snippet_runs(index: int, tmp_path: Path) -> None:
    """Each snippet is a complete program; it runs in an empty directory."""
    script = tmp_path / f"snippet{index}.py"
    script.write_text(readme_snippets()[index])
    out = _run([str(script)], tmp_path)
    expected = {
        0: ["['eggs', 'milk']", "RECORD_NOT_FOUND"],
        1: ["{'hi': 1}"],
        2: ["compare codes: ", "['hi']", "['invite.issued', 'invite.redeemed']"],
    }.get(index, [])
    for fragment in expected:
        assert fragment in out, out
