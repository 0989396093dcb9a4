"""The conformance vectors, verified independently in JavaScript (protocol.md Appendix A).

``interop/js/check.mjs`` re-implements the verification rules from the protocol
text with other libraries (@noble/curves, canonicalize, @ipld/dag-cbor,
multiformats) and must reach every case's expected verdict and derived values.
It runs only where ``node`` (>= 20.19) is installed and ``make test`` has
installed its packages (``npm ci`` in ``interop/js``); otherwise the test is
skipped with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from interop.conformance import check, generate

JS_DIR = Path(__file__).resolve().parent / "js"
VECTOR_DIR = Path(generate.__file__).resolve().parent
MIN_NODE = (20, 19)


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the JavaScript conformance checker did not run")
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    version = tuple(int(p) for p in out.stdout.strip().lstrip("v").split(".")[:2])
    if version < MIN_NODE:
        pytest.skip(f"node {out.stdout.strip()} is older than 20.19: the JS checker did not run")
    if not (JS_DIR / "node_modules" / "@ipld" / "dag-cbor").is_dir():
        pytest.skip(
            "interop/js/node_modules is missing: run `make test` (or `npm ci` in interop/js) "
            "to install the JavaScript checker's packages"
        )
    return node


def _run(node: str, directory: Path) -> tuple[int, dict[str, Any], str]:
    out = subprocess.run(
        [node, str(JS_DIR / "check.mjs"), str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=JS_DIR,
    )
    lines = out.stdout.strip().splitlines()
    summary: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    return out.returncode, summary, out.stdout + out.stderr


def test_javascript_checker_agrees_with_every_vector() -> None:
    """Appendix A, and through the cases §2-§12: an independent implementation agrees."""
    node = _node()
    code, summary, output = _run(node, VECTOR_DIR)
    assert code == 0, output
    total = sum(len(check.load(f)["cases"]) for f in generate.FILES)
    assert summary["cases"] == summary["passed"] == total, output
    assert set(summary["files"]) == set(generate.FILES)


def test_javascript_checker_catches_wrong_vectors(tmp_path: Path) -> None:
    """The JS checker is not vacuous: a wrong derived value or a wrong verdict fails."""
    node = _node()
    for name in generate.FILES:
        shutil.copy(VECTOR_DIR / name, tmp_path / name)
    broken: list[str] = []

    def edit(file: str, pick: str, change: dict[str, Any]) -> None:
        doc = json.loads((tmp_path / file).read_text(encoding="utf-8"))
        for case in doc["cases"]:
            if case["name"] == pick:
                case.update(change)
                broken.append(f"{file} {pick}")
        (tmp_path / file).write_text(json.dumps(doc), encoding="utf-8")

    edit("records.json", "note", {"author": "did:key:z6MkSomeoneElse"})
    edit("records.json", "float-1.0", {"expect": "ok"})
    edit("signed-json.json", "manifest/valid", {"signed_bytes": "{}"})
    edit("signed-json.json", "numbers/1e16-relayed-as-integer", {"expect": "BAD_SIGNATURE"})
    edit("invites.json", "redeem/federated", {"confirmation_code": "123456"})
    edit("mdns-txt.json", "txt/expired", {"expect": "ok"})
    edit("identities.json", "key-node", {"x25519_multibase": "z6LSwrong"})
    edit("cursors.json", "cursor/seq-7", {"seq": "8"})
    edit("feed-pages.json", "page/three-records", {"has_more": False})
    code, summary, output = _run(node, tmp_path)
    assert code == 1, output
    assert sorted(summary["failed"]) == sorted(broken), output
