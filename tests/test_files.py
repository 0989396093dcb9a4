"""Private files: moving a finished file into place, with or without replacing."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from fedpeer import _files
from fedpeer._files import place, write_private


def _tmp(directory: Path, data: bytes) -> Path:
    tmp = directory / ".x.tmp"
    tmp.write_bytes(data)
    return tmp


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_place_without_replace_keeps_an_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: bool
) -> None:
    if not links:  # a file system that refuses link(): the check-and-rename fallback

        def no_link(*_args: object, **_kw: object) -> None:
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    target = tmp_path / "out"
    target.write_bytes(b"theirs")
    tmp = _tmp(tmp_path, b"ours")
    with pytest.raises(FileExistsError) as info:
        place(tmp, target, replace=False)
    assert info.value.filename == str(target)
    assert target.read_bytes() == b"theirs"
    assert tmp.read_bytes() == b"ours"  # left for the caller to remove
    tmp.unlink()
    # absent: the file moves into place and no temp file stays
    tmp = _tmp(tmp_path, b"ours")
    place(tmp, tmp_path / "new", replace=False)
    assert (tmp_path / "new").read_bytes() == b"ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]


def test_place_passes_on_other_link_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_args: object, **_kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", full)
    tmp = _tmp(tmp_path, b"ours")
    with pytest.raises(OSError, match="No space left") as info:
        place(tmp, tmp_path / "new", replace=False)
    assert info.value.errno == errno.ENOSPC
    assert not (tmp_path / "new").exists()  # not renamed anyway


def test_place_replaces_by_default_and_syncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(_files, "fsync_dir", synced.append)
    target = tmp_path / "out"
    target.write_bytes(b"old")
    place(_tmp(tmp_path, b"new"), target)
    assert target.read_bytes() == b"new"
    assert synced == [tmp_path]
    place(_tmp(tmp_path, b"newer"), tmp_path / "other", replace=False)
    assert synced == [tmp_path, tmp_path]


def test_write_private_without_replace(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "secret"
    write_private(path, b"first", replace=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_private(path, b"second", replace=False)
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret"]
