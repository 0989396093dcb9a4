"""docs/protocol.md is tested: every section is named by a test, the error table is true.

protocol.md §0: a mechanical check over ``tests/`` and ``interop/``. A test names a
section with the text ``protocol.md §N.M`` (several may follow one mention:
``protocol.md §7.1, §7.2 and §7.3``) in a comment or docstring. Every numbered
section that holds text of its own (a parent whose text is only its subsections is
covered by them) must be named at least once, and every named section must exist.
"""

from __future__ import annotations

import re
from pathlib import Path

from fedpeer.errors import all_codes

ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = ROOT / "docs" / "protocol.md"
SPEC = SPEC_PATH.read_text(encoding="utf-8")
HEADING = re.compile(r"^(#{2,3}) (\d+(?:\.\d+)?)\.? (.+)$")
MENTION = re.compile(r"protocol\.md((?:(?:,\s*|\s+and\s+|\s+)§\d+(?:\.\d+)?)+)")
NUMBER = re.compile(r"§(\d+(?:\.\d+)?)")


def _sections() -> dict[str, str]:
    """Section number -> its own text (up to the next heading of any level)."""
    own: dict[str, list[str]] = {}
    current: str | None = None
    for line in SPEC.splitlines():
        m = HEADING.match(line)
        if m:
            current = m.group(2)
            own[current] = []
        elif line.startswith("#"):
            current = None  # an unnumbered heading (the appendix)
        elif current is not None:
            own[current].append(line)
    return {k: "\n".join(v).strip() for k, v in own.items()}


def _mentions() -> dict[str, set[str]]:
    """Section number -> files that name it."""
    found: dict[str, set[str]] = {}
    files = [
        *ROOT.joinpath("tests").rglob("*.py"),
        *ROOT.joinpath("interop").rglob("*.py"),
        ROOT / "interop" / "js" / "check.mjs",
    ]
    for path in files:
        text = path.read_text(encoding="utf-8")
        for m in MENTION.finditer(text):
            for number in NUMBER.findall(m.group(1)):
                found.setdefault(number, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_section_is_named_by_a_test() -> None:
    """protocol.md §0: every section with rules of its own has a test that names it."""
    sections = _sections()
    assert len(sections) > 50, "the heading pattern no longer matches the document"
    mentioned = _mentions()
    needs = [n for n, text in sections.items() if text]
    missing = [n for n in needs if n not in mentioned]
    assert missing == [], f"sections no test names (write `protocol.md §N` in one): {missing}"
    # a parent whose text is only its subsections is covered through them
    for number, text in sections.items():
        if not text:
            children = [c for c in sections if c.startswith(number + ".")]
            assert children, f"§{number} has neither text nor subsections"


def test_every_named_section_exists() -> None:
    """protocol.md §0: no test names a section the document does not have."""
    sections = _sections()
    dangling = {n: sorted(files) for n, files in _mentions().items() if n not in sections}
    assert dangling == {}


def test_requirements_language() -> None:
    """protocol.md §1.1: the BCP 14 keywords are declared and used."""
    assert "BCP 14" in SPEC
    assert "RFC 2119" in SPEC
    assert "RFC 8174" in SPEC
    assert len(re.findall(r"\bMUST\b", SPEC)) > 40
    assert "fedpeer protocol 1" in SPEC.splitlines()[0]


def _error_table() -> dict[str, int]:
    start = SPEC.index("### 13.2 Codes")
    rows = re.findall(r"^\| `([A-Z_]+)` \| (\d{3}) \|", SPEC[start:], flags=re.MULTILINE)
    table = {code: int(status) for code, status in rows}
    assert len(table) == len(rows), "a code is listed twice"
    return table


def test_error_table_lists_every_code_with_its_status() -> None:
    """protocol.md §13.2: the table is exactly the codes fedpeer defines, statuses included."""
    defined = {code: cls.http_status for code, cls in all_codes().items()}
    table = _error_table()
    assert sorted(set(defined) - set(table)) == [], "codes missing from protocol.md §13.2"
    assert sorted(set(table) - set(defined)) == [], "codes in §13.2 that fedpeer does not define"
    assert {c: s for c, s in table.items() if defined[c] != s} == {}


def test_error_codes_named_in_the_text_exist() -> None:
    """protocol.md §13: every backticked UPPER_SNAKE code the text uses is a real code
    (or one of the two roster verdicts of §12.5)."""
    used = set(re.findall(r"`([A-Z][A-Z_]{3,})`", SPEC))
    roster_verdicts = {"STALE_ANNOUNCEMENT", "PORT_MISMATCH"}
    assert used - set(all_codes()) - roster_verdicts == set()
