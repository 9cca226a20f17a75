"""Atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

from podmgr.fsutil import atomic_write, create_new


def test_create_new_lets_the_first_writer_win(tmp_path: Path) -> None:
    p = tmp_path / "exit.json"
    assert create_new(p, "first")
    assert not create_new(p, "second")
    assert p.read_text() == "first"
    assert os.listdir(tmp_path) == ["exit.json"]  # no temp file left


def test_atomic_write_replaces(tmp_path: Path) -> None:
    p = tmp_path / "pod.json"
    atomic_write(p, "a")
    atomic_write(p, b"b", mode=0o600)
    assert p.read_text() == "b" and (p.stat().st_mode & 0o777) == 0o600
    assert os.listdir(tmp_path) == ["pod.json"]
