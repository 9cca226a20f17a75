"""Atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

from podmgr.fsutil import atomic_write, create_new, rmtree, rmtree_at


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


def _nest(top: Path, depth: int) -> None:
    """``top/d/d/…`` ``depth`` levels deep, made through fds (the path is too long for
    one syscall), with a file and a symlink to the outside every 500 levels."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            os.mkdir("d", dir_fd=fd)
            if i % 500 == 0:
                os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
                os.symlink(str(top.parent / "outside"), "l", dir_fd=fd)
            new = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = new
        os.fchmod(fd, 0o500)  # a read-only directory, as an unprivileged extraction leaves
    finally:
        os.close(fd)


def test_rmtree_removes_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    import sys

    from aci_util import remove_deep

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    depth = sys.getrecursionlimit() * 3  # shutil.rmtree (3.11) recursed per level
    _nest(tmp_path / "deep", depth)
    fds = len(os.listdir("/proc/self/fd"))
    try:
        rmtree(tmp_path / "deep")
    finally:
        remove_deep(tmp_path / "deep")  # what a failure left, by other means
    assert not (tmp_path / "deep").exists()
    assert (outside / "keep").read_text() == "x", "a symlink in the tree was followed"
    assert len(os.listdir("/proc/self/fd")) == fds, "rmtree leaked fds"


def test_rmtree_at_and_missing_paths(tmp_path: Path) -> None:
    rmtree(tmp_path / "missing")  # not an error
    (tmp_path / "f").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    rmtree(tmp_path / "link")
    assert (tmp_path / "f").exists() and not (tmp_path / "link").exists()
    _nest(tmp_path / "t", 40)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        rmtree_at(fd, "t")
        rmtree_at(fd, "f")
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == []
