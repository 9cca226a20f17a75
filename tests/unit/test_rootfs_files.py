"""Files podmgr reads out of an image's root (issue 18): only regular files, bounded,
never blocking, never followed out of the root."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from podmgr import rootfs
from podmgr.errors import InvalidError, NotFoundError

pytestmark = pytest.mark.unit


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root/etc").mkdir(parents=True)
    return tmp_path / "root"


def test_users_come_from_a_regular_passwd(root: Path) -> None:
    (root / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n")
    (root / "etc/group").symlink_to("/etc/passwd")  # absolute: within the root
    assert rootfs.lookup_user(root, "app") == 1000
    assert rootfs.lookup_group(root, "app") == 1000
    assert rootfs.lookup_user(root, "42") == 42


def test_a_fifo_as_passwd_is_refused_without_blocking(root: Path) -> None:
    os.mkfifo(root / "etc/passwd")  # no writer: a blocking open would hang forever
    with pytest.raises(InvalidError, match="/etc/passwd in the image is not a regular file"):
        rootfs.lookup_user(root, "app")


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device needs root")
@pytest.mark.parametrize("dev", [(1, 5), (1, 3)], ids=["zero", "null"])
def test_a_device_as_passwd_is_refused(root: Path, dev: tuple[int, int]) -> None:
    os.mknod(root / "etc/passwd", stat.S_IFCHR | 0o644, os.makedev(*dev))
    with pytest.raises(InvalidError, match="not a regular file"):
        rootfs.lookup_user(root, "app")
    with pytest.raises(InvalidError, match="not a regular file"):
        rootfs.lookup_user(root, "0")


def test_a_huge_passwd_is_refused(root: Path) -> None:
    with open(root / "etc/passwd", "wb") as f:
        f.truncate(rootfs.MAX_IMAGE_FILE + 1)  # sparse: no disk used
    with pytest.raises(InvalidError, match="larger than"):
        rootfs.lookup_user(root, "app")
    os.truncate(root / "etc/passwd", rootfs.MAX_IMAGE_FILE)
    with pytest.raises(NotFoundError):
        rootfs.lookup_user(root, "app")


def test_a_directory_or_a_link_loop_as_group_is_refused(root: Path) -> None:
    (root / "etc/group").mkdir()
    with pytest.raises(InvalidError, match="not a regular file"):
        rootfs.lookup_group(root, "app")
    (root / "etc/group").rmdir()
    (root / "etc/group").symlink_to("group")
    with pytest.raises(InvalidError, match="symbolic links"):
        rootfs.lookup_group(root, "app")


def test_a_symlink_out_of_the_root_is_not_followed(tmp_path: Path, root: Path) -> None:
    (tmp_path / "host-passwd").write_text("app:x:7:7::/:/bin/sh\n")
    (root / "etc/passwd").symlink_to("../../host-passwd")
    with pytest.raises(NotFoundError):  # resolved inside the root: there is no such file
        rootfs.lookup_user(root, "app")


def test_a_missing_passwd_is_no_error_for_numeric_ids(root: Path) -> None:
    assert rootfs.lookup_user(root, "1234") == 1234
    with pytest.raises(NotFoundError):
        rootfs.lookup_user(root, "app")


@pytest.mark.parametrize(
    "call",
    [
        lambda r: rootfs.find_exec(r, "/" + "a/" * 3000 + "x", ""),
        lambda r: rootfs.find_exec(r, "x", "/" + "c" * 300),
        lambda r: rootfs.check_working_dir(r, "/" + "b" * 300),
        lambda r: rootfs.lookup_user(r, "/" + "a" * 5000),
        lambda r: rootfs.ensure_mount_target(r, r.parent / "upper", "/" + "b" * 300 + "/c"),
    ],
    ids=["exec-long", "path-name", "workdir-name", "user-path", "mount-target"],
)
def test_paths_linux_cannot_resolve_are_invalid(root: Path, call: Any) -> None:
    # From a hostile manifest: ENAMETOOLONG was an OSError, an internal error.
    with pytest.raises(InvalidError, match=r"longer than|cannot resolve"):
        call(root)


def test_a_link_chain_growing_past_path_max_is_invalid(root: Path) -> None:
    (root / "l").symlink_to("/" + "/".join(["l"] * 2000))  # each step re-expands
    with pytest.raises(InvalidError):
        rootfs.check_working_dir(root, "/l/x")
