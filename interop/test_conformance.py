"""fedpeer's conformance vectors (protocol.md Appendix A): up to date, and verified.

* the generator, run afresh, writes exactly the committed files (a change on the
  wire shows up as a diff of the vectors: regenerate with
  ``python interop/conformance/generate.py`` and review it);
* every case gets its expected verdict from the reference verifier
  (``interop/conformance/check.py``: the package's own entry points), and every
  valid case's derived values (DIDs, CIDs, signed bytes, codes) match;
* every case names a section that exists in ``docs/protocol.md``; every file has
  valid and invalid cases;
* the vectors' invite document has the members a real ``create_invite`` signs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from fedpeer.consent.invites import create_invite, parse_invite_params
from fedpeer.store.memory import MemoryStore
from interop.conformance import check, generate

ROOT = Path(__file__).resolve().parent.parent
VECTOR_DIR = Path(generate.__file__).resolve().parent
SPEC = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
SECTIONS = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", SPEC, flags=re.MULTILINE))

ALL_CASES: list[tuple[str, dict[str, Any]]] = [
    (file, case) for file in generate.FILES for case in check.load(file)["cases"]
]


@pytest.fixture(scope="module")
def regenerated() -> dict[str, str]:
    return generate.build_all()


@pytest.mark.parametrize("file", generate.FILES)
def test_committed_vectors_are_what_the_generator_writes(
    file: str, regenerated: dict[str, str]
) -> None:
    """Appendix A: the generator is deterministic and the committed files are current."""
    committed = (VECTOR_DIR / file).read_text(encoding="utf-8")
    assert committed == regenerated[file], (
        f"{file} is out of date: run `python interop/conformance/generate.py` and review the diff"
    )


def test_generation_is_deterministic(regenerated: dict[str, str]) -> None:
    assert generate.build_all() == regenerated


@pytest.mark.parametrize(
    ("file", "case"), ALL_CASES, ids=[f"{f}::{c['name']}" for f, c in ALL_CASES]
)
def test_case_gets_its_expected_verdict(file: str, case: dict[str, Any]) -> None:
    """Each case, by the reference verifier (the section it names is in the case)."""
    assert check.verdict(file, case) == case["expect"], f"protocol.md §{case['section']}"


@pytest.mark.parametrize("file", generate.FILES)
def test_files_are_well_formed(file: str) -> None:
    vectors = check.load(file)
    assert vectors["format"] == generate.FORMAT
    assert vectors["file"] + ".json" == file
    names = [c["name"] for c in vectors["cases"]]
    assert len(names) == len(set(names)), "case names are unique"
    expects = {c["expect"] for c in vectors["cases"]}
    assert "ok" in expects
    assert expects - {"ok"}, "every file has invalid variants"
    for case in vectors["cases"]:
        assert case["section"] in SECTIONS, (case["name"], case["section"])
        assert re.fullmatch(r"ok|[A-Z][A-Z_]+", case["expect"]), case["expect"]
    for section in vectors["sections"]:
        assert section in SECTIONS, section


def test_vector_codes_are_real_error_codes() -> None:
    from fedpeer.errors import all_codes

    codes = {c["expect"] for _, c in ALL_CASES} - {"ok"}
    assert codes <= set(all_codes()), codes - set(all_codes())


def test_float_vectors_hold_the_exact_bytes() -> None:
    """protocol.md §5.4: the refused floats are on the wire byte for byte."""
    cases = {c["name"]: c for c in check.load("records.json")["cases"]}
    one = cases["float-1.0"]
    zero = cases["float-negative-zero"]
    assert "fb3ff0000000000000" in one["data_hex"]
    assert "fb8000000000000000" in zero["data_hex"]
    assert one["expect"] == zero["expect"] == "RECORD_INVALID"


def test_a_wrong_vector_is_caught() -> None:
    """The reference check compares derived values, not just the verdict."""
    case = dict(next(c for f, c in ALL_CASES if f == "records.json" and c["expect"] == "ok"))
    case["author"] = "did:key:z6MkElsewhere"
    with pytest.raises(check.Mismatch):
        check.verdict("records.json", case)
    invite = next(
        c for f, c in ALL_CASES if f == "invites.json" and c.get("kind") == "confirmation-code"
    )
    wrong = {**invite, "confirmation_code": "000000"}
    with pytest.raises(check.Mismatch):
        check.verdict("invites.json", wrong)


async def test_invite_document_has_the_members_create_invite_signs() -> None:
    """protocol.md §10.2: the vectors' invite document mirrors a real one."""
    store = MemoryStore()
    issued = await store.transact(
        lambda tx: create_invite(
            tx,
            generate.NODE,
            parse_invite_params({"device_label": "alice-laptop"}),
            node_url=generate.ISSUER_URL,
        )
    )
    assert sorted(issued.invite.document) == generate.invite_document_fields()
    real = {k: v for k, v in issued.invite.document.items() if k != "signature"}
    ours = {k: v for k, v in generate._invite().document.items() if k != "signature"}
    assert {k: type(v) for k, v in real.items()} == {k: type(v) for k, v in ours.items()}
    assert real["type"] == ours["type"]
    assert real["scopes"] == ours["scopes"]
    assert real["scope_target"] == ours["scope_target"]


def test_generator_script_check_mode(tmp_path: Path) -> None:
    """``generate.py --check`` passes on the committed files and fails on a stale one."""
    assert generate.main(["--check"]) == 0
    for name, text in generate.build_all().items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    doc = json.loads((tmp_path / "cursors.json").read_text(encoding="utf-8"))
    doc["cases"].pop()
    (tmp_path / "cursors.json").write_text(generate.render(doc), encoding="utf-8")
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1
