"""write_atomic: the old content or the new, never half, and no temporary file left either way."""

from __future__ import annotations

from pathlib import Path

import pytest

from tailorlm.files import write_atomic


def test_text_and_bytes_replace_the_file_and_leave_nothing_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "new" / "metrics.json"
    assert write_atomic(path, "é\r\n") == path  # parent folder created; text written as UTF-8, line ends untouched
    assert path.read_bytes() == "é\r\n".encode("utf-8")
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]


def test_a_failed_write_keeps_the_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "result.json"
    path.write_text("old", encoding="utf-8")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("tailorlm.files.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "new")
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
