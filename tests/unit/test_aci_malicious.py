"""Malicious and malformed archives: each is refused with a one-line error, and the
import leaves nothing behind (neither in the target nor anywhere a link points)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from aci_util import MANIFEST, entry, remove_deep, tar_of, valid_entries

from podmgr import aci
from podmgr.errors import InvalidError

SYM, LNK, DIR = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE


def refuse(tmp_path: Path, data: bytes, match: str, **kw: str) -> InvalidError:
    dest = tmp_path / "dest"
    with pytest.raises(InvalidError, match=match) as info:
        aci.import_stream(io.BytesIO(data), dest, **kw)
    assert not dest.exists(), "a refused import left its target behind"
    assert "\n" not in info.value.message
    with pytest.raises(InvalidError, match=match):
        aci.validate(io.BytesIO(data), **kw)
    return info.value


def test_dotdot(tmp_path: Path) -> None:
    refuse(tmp_path, tar_of(*valid_entries(), entry("rootfs/../../evil", data=b"x")), r"'\.\.'")
    assert not (tmp_path.parent / "evil").exists()


def test_absolute(tmp_path: Path) -> None:
    target = tmp_path / "abs-evil"
    refuse(tmp_path, tar_of(*valid_entries(), entry(str(target), data=b"x")), "absolute")
    assert not target.exists()


@pytest.mark.parametrize("link", ["OUTSIDE", "../../OUTSIDE", "/"])
def test_write_through_symlink(tmp_path: Path, link: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = str(outside) if link == "OUTSIDE" else link
    data = tar_of(
        *valid_entries(),
        entry("rootfs/link", SYM, linkname=target),
        entry("rootfs/link/pwned", data=b"x"),
    )
    refuse(tmp_path, data, "not a directory")
    assert not any(outside.iterdir())


def test_symlinked_rootfs(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    data = tar_of(
        entry("manifest", data=MANIFEST),
        entry("rootfs", SYM, linkname=str(outside)),
        entry("rootfs/pwned", data=b"x"),
    )
    refuse(tmp_path, data, "rootfs in image archive is a symlink")
    # the same with rootfs/ entries first and the symlink later
    data = tar_of(
        entry("manifest", data=MANIFEST),
        entry("rootfs/a", data=b"x"),
        entry("rootfs", SYM, linkname=str(outside)),
    )
    refuse(tmp_path, data, "rootfs in image archive is a symlink")
    assert not any(outside.iterdir())


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("../../etc/passwd", r"'\.\.'"),
        ("/etc/passwd", "absolute"),
        ("manifest", "outside rootfs"),
    ],
)
def test_hard_link_outside(tmp_path: Path, target: str, match: str) -> None:
    refuse(tmp_path, tar_of(*valid_entries(), entry("rootfs/h", LNK, linkname=target)), match)


def test_hard_link_forward(tmp_path: Path) -> None:
    data = tar_of(
        *valid_entries(),
        entry("rootfs/h", LNK, linkname="rootfs/later"),
        entry("rootfs/later", data=b"x"),
    )
    refuse(tmp_path, data, "not an earlier")


def test_hard_link_to_itself_or_a_directory(tmp_path: Path) -> None:
    refuse(
        tmp_path,
        tar_of(*valid_entries(), entry("rootfs/h", LNK, linkname="rootfs/h")),
        "not an earlier",
    )
    refuse(
        tmp_path,
        tar_of(*valid_entries(), entry("rootfs/h", LNK, linkname="rootfs")),
        "outside rootfs",
    )


def test_hard_link_with_data_is_ambiguous(tmp_path: Path) -> None:
    ti, _ = entry("rootfs/h", LNK, linkname="rootfs/a")
    raw = bytearray(tar_of(*valid_entries(), (ti, None)))
    # Patch the size field of the last header to claim data, fixing the checksum.
    off = raw.find(b"rootfs/h\0")
    raw[off + 124 : off + 136] = b"00000001000\0"
    raw[off + 148 : off + 156] = b" " * 8
    raw[off + 148 : off + 156] = b"%06o\0 " % sum(raw[off : off + 512])
    refuse(tmp_path, bytes(raw), "claims 512 data bytes")


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_truncated(tmp_path: Path, cut: float) -> None:
    data = tar_of(*valid_entries(), entry("rootfs/big", data=b"z" * 100_000))
    compressed = gzip.compress(data)
    refuse(tmp_path, compressed[: int(len(compressed) * cut)], "truncated")
    end_of_big = data.index(b"z" * 100_000) + 100_000
    refuse(tmp_path, data[: int(end_of_big * cut)], "truncated")


def test_no_end_of_archive_marker(tmp_path: Path) -> None:
    data = tar_of(*valid_entries())
    end = data.index(b"hello") + 512  # just after the last member's data block
    refuse(tmp_path, data[:end], "no end-of-archive marker")


def test_corrupt_gzip(tmp_path: Path) -> None:
    compressed = bytearray(gzip.compress(tar_of(*valid_entries())))
    compressed[len(compressed) // 2] ^= 0xFF
    refuse(tmp_path, bytes(compressed), "corrupt|checksum")


def test_wrong_expected_id(tmp_path: Path) -> None:
    data = tar_of(*valid_entries())
    right = "sha512-" + hashlib.sha512(data).hexdigest()
    wrong = "sha512-" + hashlib.sha512(b"other").hexdigest()
    refuse(tmp_path, data, "image ID mismatch", expected_id=wrong)
    refuse(tmp_path, data, "not a full image ID", expected_id="sha512-abc")
    assert aci.validate(io.BytesIO(data), expected_id=right.upper()).id == right


def test_huge_manifest_is_refused_early(tmp_path: Path) -> None:
    class Huge(io.RawIOBase):
        """A tar whose manifest claims 50 MB, followed by an endless stream of zeros."""

        def __init__(self) -> None:
            ti = tarfile.TarInfo("manifest")
            ti.size = 50_000_000
            self.head = ti.tobuf(tarfile.PAX_FORMAT)
            self.given = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            chunk = self.head[self.given : self.given + len(b)] or bytes(len(b))
            b[: len(chunk)] = chunk
            self.given += len(chunk)
            return len(chunk)

    src = Huge()
    with pytest.raises(InvalidError, match="manifest is too large"):
        aci.import_stream(src, tmp_path / "dest")  # type: ignore[arg-type]
    assert src.given < 4 << 20
    assert not (tmp_path / "dest").exists()


def test_duplicates(tmp_path: Path) -> None:
    refuse(tmp_path, tar_of(*valid_entries(), entry("rootfs/a", data=b"2")), "duplicate")
    refuse(tmp_path, tar_of(*valid_entries(), entry("manifest", data=MANIFEST)), "duplicate")
    refuse(tmp_path, tar_of(*valid_entries(), entry("rootfs/./a", data=b"2")), "duplicate")
    refuse(tmp_path, tar_of(*valid_entries(), entry("rootfs", DIR)), "duplicate")


def test_file_then_directory_of_the_same_name(tmp_path: Path) -> None:
    refuse(tmp_path, tar_of(*valid_entries(), entry("rootfs/a/b", data=b"x")), "not a directory")


def test_extra_top_level_entries(tmp_path: Path) -> None:
    refuse(tmp_path, tar_of(*valid_entries(), entry("etc/passwd", data=b"x")), "unexpected")
    refuse(tmp_path, tar_of(*valid_entries(), entry("rootfs2", DIR)), "unexpected")
    refuse(tmp_path, tar_of(*valid_entries(), entry("manifest2", data=b"{}")), "unexpected")


def test_missing_rootfs_entry(tmp_path: Path) -> None:
    data = tar_of(entry("manifest", data=MANIFEST), entry("rootfs/a", data=b"x"))
    refuse(tmp_path, data, "no rootfs directory entry")


def test_missing_manifest(tmp_path: Path) -> None:
    refuse(tmp_path, tar_of(*valid_entries()[1:]), "no manifest")


def test_manifest_not_a_file(tmp_path: Path) -> None:
    data = tar_of(entry("manifest", DIR), *valid_entries()[1:])
    refuse(tmp_path, data, "manifest in image archive is not a regular file")


def test_invalid_manifest(tmp_path: Path) -> None:
    data = tar_of(entry("manifest", data=b'{"acKind": "ImageManifest"}'), *valid_entries()[1:])
    refuse(tmp_path, data, "acVersion")


def test_sparse_files_are_refused(tmp_path: Path) -> None:
    ti, body = entry("rootfs/s", data=b"x")
    ti.pax_headers = {"GNU.sparse.map": "0,1"}
    refuse(tmp_path, tar_of(*valid_entries(), (ti, body)), "sparse")


@pytest.fixture
def deep_tmp(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    remove_deep(tmp_path)


@pytest.mark.parametrize("depth", [1500, 100_000])
def test_deep_nesting_is_refused_before_it_is_created(deep_tmp: Path, depth: int) -> None:
    tmp_path = deep_tmp
    # 1,500 explicit directories, or one file 100,000 levels down (implied parents):
    # neither recurses per level, and nothing deeper than the limit is ever created.
    if depth == 1500:
        entries = [entry("rootfs/" + "d/" * i, DIR) for i in range(1, depth + 1)]
    else:
        entries = [entry("rootfs/" + "d/" * depth + "f", data=b"x")]
    e = refuse(tmp_path, tar_of(*valid_entries(), *entries), "nests|bytes long")
    assert "limit" in e.message and len(e.message) < 200


def test_depth_limit_is_exact(deep_tmp: Path) -> None:
    tmp_path = deep_tmp
    from podmgr.extract import MAX_PATH_DEPTH

    ok = "rootfs/" + "/".join(["d"] * (MAX_PATH_DEPTH - 1)) + "/f"
    aci.import_stream(io.BytesIO(tar_of(*valid_entries(), entry(ok, data=b"x"))), tmp_path / "ok")
    assert (tmp_path / "ok" / ok).read_bytes() == b"x"
    deep = "rootfs/" + "/".join(["d"] * MAX_PATH_DEPTH) + "/f"
    refuse(tmp_path, tar_of(*valid_entries(), entry(deep, data=b"x")), "nests 257 directories")


@pytest.mark.parametrize(
    ("name", "linkname", "match"),
    [
        ("rootfs/" + "n" * 256, "", "longer than 255 bytes"),
        ("rootfs/" + "/".join(["x" * 200] * 21), "", "bytes long"),
        ("rootfs/l", "t" * 4096, "link target .* longer than 4095"),
    ],
    ids=["name", "path", "link"],
)
def test_overlong_names_are_refused(tmp_path: Path, name: str, linkname: str, match: str) -> None:
    kind = SYM if linkname else tarfile.REGTYPE
    refuse(tmp_path, tar_of(*valid_entries(), entry(name, kind, linkname=linkname)), match)


@pytest.mark.parametrize("kind", ["x", "g", "L"])
def test_extended_headers_are_bounded_in_total(tmp_path: Path, kind: str) -> None:
    # Each header is under the per-header cap; a chain of them before one entry (or of
    # global ones) is not, and would otherwise be held in memory without bound.
    from podmgr.extract import MAX_META_SIZE

    chunk = MAX_META_SIZE // 3
    headers = b""
    for i in range(4):
        if kind == "L":
            body = b"n" * chunk
        else:
            rec = f"SCHILY.xattr.user.k{i}=".encode() + b"v" * chunk + b"\n"
            n = len(rec) + 8
            n = len(str(n).encode()) + 1 + len(rec)
            body = str(n).encode() + b" " + rec
        ti = tarfile.TarInfo("././@LongLink" if kind == "L" else "pax")
        ti.type = kind.encode()
        ti.size = len(body)
        headers += ti.tobuf(format=tarfile.GNU_FORMAT) + body + bytes(-len(body) % 512)
    tail = tar_of(entry("rootfs/a", data=b"x"))
    data = tar_of(*valid_entries())[:-1024]
    data = data.rstrip(b"\0")
    data += bytes(-len(data) % 512) + headers + tail
    refuse(tmp_path, data, "extended headers at offset .* add up to more than")
