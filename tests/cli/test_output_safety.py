"""Other nodes' text reaches CLI tables (handles, error messages, record bodies):
it must not drive the terminal (audit: ESC sequences passed through rich)."""

from __future__ import annotations

import io

from rich.console import Console

from fedpeer.cli.output import table


def test_table_cells_show_control_and_format_characters_escaped() -> None:
    rows = table("peer", "last error")
    rows.add_row("mallory\x1b]0;PWNED\x07", "boom\n2030-01-01 ERROR forged\x1b[2J\u202e")
    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(rows)
    text = out.getvalue()
    assert "\x1b" not in text
    assert "\u202e" not in text
    assert "\\x1b]0;PWNED\\x07" in text
    assert "boom\\x0a2030-01-01 ERROR forged\\x1b[2J\\u202e" in text
