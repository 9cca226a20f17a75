"""Atomic writes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

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


def test_rmtree_never_removes_through_a_mount_point(tmp_path: Path) -> None:
    # A bind mount a crash left below a pod's directory must not lose the mounted tree's
    # files. In a mount namespace of its own (unshare -m), so the host sees nothing.
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "precious").write_text("x")
    (tmp_path / "tree" / "a" / "mnt").mkdir(parents=True)
    (tmp_path / "tree" / "a" / "file").write_text("x")
    script = f"""
import os, subprocess, sys
from podmgr.fsutil import rmtree
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
subprocess.run(["mount", "--bind", "{tmp_path}/elsewhere", "{tmp_path}/tree/a/mnt"], check=True)
try:
    rmtree("{tmp_path}/tree")
except OSError as e:
    print("refused", e.errno)
rmtree("{tmp_path}/tree", ignore_errors=True)
print(sorted(os.listdir("{tmp_path}/tree/a")), os.path.exists("{tmp_path}/elsewhere/precious"))
"""
    p = subprocess.run(
        ["unshare", "-m", sys.executable, "-c", script],
        capture_output=True, text=True, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    if p.returncode != 0 and "unshare" in p.stderr:
        pytest.skip(f"no mount namespace here: {p.stderr.strip()}")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [f"refused {errno.EXDEV}", "['mnt'] True"], p.stdout
    assert (tmp_path / "elsewhere" / "precious").read_text() == "x"


def test_rmtree_ignore_errors_removes_what_it_can(tmp_path: Path) -> None:
    import shutil
    import subprocess

    chattr = shutil.which("chattr")
    (tmp_path / "t" / "a").mkdir(parents=True)
    (tmp_path / "t" / "b").mkdir()
    stuck = tmp_path / "t" / "a" / "stuck"
    stuck.write_text("x")
    for i in range(20):
        (tmp_path / "t" / "b" / f"f{i}").write_text("x")
    if chattr is None or subprocess.run([chattr, "+i", str(stuck)]).returncode != 0:
        pytest.skip("needs chattr +i (root, a filesystem with the immutable attribute)")
    try:
        with pytest.raises(OSError):
            rmtree(tmp_path / "t")
        rmtree(tmp_path / "t", ignore_errors=True)
        assert sorted(p.name for p in (tmp_path / "t").rglob("*")) == ["a", "stuck"]
    finally:
        subprocess.run([chattr, "-i", str(stuck)], check=True)
    rmtree(tmp_path / "t")
    assert not (tmp_path / "t").exists()
