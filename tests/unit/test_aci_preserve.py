"""What an import preserves: modes (setuid too), numeric owners, mtimes, xattrs
(user.* and security.capability), hard links, symlinks, fifos and device nodes.

Owners, capabilities and device nodes need root; as another user these tests skip.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest
from aci_util import make_layout

from podmgr import aci
from podmgr.aci import Compression

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="setting owners, capabilities and device nodes needs root"
)

# VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, permitted = CAP_NET_RAW (13)
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
MTIME = 1_500_000_000_123_456_789


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    root = make_layout(tmp_path / "layout")
    fs = root / "rootfs"
    (fs / "suid").write_bytes(b"\x7fELF")
    os.chown(fs / "suid", 0, 0)
    os.chmod(fs / "suid", 0o4755)
    (fs / "sgid-dir").mkdir()
    os.chmod(fs / "sgid-dir", 0o2775)
    (fs / "owned").write_text("x")
    os.chown(fs / "owned", 1234, 5678)
    os.chmod(fs / "owned", 0o640)
    os.chown(fs / "etc/link", 4321, 8765, follow_symlinks=False)
    (fs / "cap").write_bytes(b"ping")
    os.chmod(fs / "cap", 0o755)
    os.setxattr(fs / "cap", "security.capability", CAPABILITY)
    os.setxattr(fs / "cap", "user.note", b"binary\x00\xff")
    os.setxattr(fs / "sgid-dir", "user.dir", b"d")
    (fs / "hard").hardlink_to(fs / "etc/hostname")
    os.mkfifo(fs / "fifo", 0o620)
    os.mknod(fs / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(fs / "blk", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    for p in [fs, *fs.rglob("*")]:
        os.utime(p, ns=(MTIME, MTIME), follow_symlinks=False)
    return root


@pytest.fixture
def extracted(tmp_path: Path, layout: Path) -> Path:
    out = tmp_path / "img.aci"
    built = aci.build(layout, out, Compression.GZIP, keep_mtimes=True)
    aci.import_stream(out, tmp_path / "x", expected_id=built.id)
    return tmp_path / "x/rootfs"


def test_modes_and_owners(layout: Path, extracted: Path) -> None:
    for name in ["suid", "sgid-dir", "owned", "etc/link", "fifo", "null", "blk", "bin/tool"]:
        want, got = (layout / "rootfs" / name).lstat(), (extracted / name).lstat()
        assert got.st_mode == want.st_mode, name
        assert (got.st_uid, got.st_gid) == (want.st_uid, want.st_gid), name
    assert (extracted / "suid").stat().st_mode & 0o7777 == 0o4755
    assert (extracted / "owned").stat().st_uid == 1234


def test_mtimes(extracted: Path) -> None:
    for p in [extracted, *extracted.rglob("*")]:
        assert p.lstat().st_mtime_ns == MTIME, p


def test_xattrs(extracted: Path) -> None:
    assert os.getxattr(extracted / "cap", "security.capability") == CAPABILITY
    assert os.getxattr(extracted / "cap", "user.note") == b"binary\x00\xff"
    assert os.getxattr(extracted / "sgid-dir", "user.dir") == b"d"


def test_links_and_nodes(extracted: Path) -> None:
    assert (extracted / "hard").stat().st_ino == (extracted / "etc/hostname").stat().st_ino
    assert os.readlink(extracted / "etc/link") == "hostname"
    assert stat.S_ISFIFO((extracted / "fifo").lstat().st_mode)
    null = (extracted / "null").lstat()
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK((extracted / "blk").lstat().st_mode)


def test_rebuild_of_the_extraction_gives_the_same_id(tmp_path: Path, layout: Path) -> None:
    first = aci.build(layout, tmp_path / "1.aci", keep_mtimes=True)
    aci.import_stream(tmp_path / "1.aci", tmp_path / "x")
    second = aci.build(tmp_path / "x", tmp_path / "2.aci", keep_mtimes=True)
    assert first.id == second.id
