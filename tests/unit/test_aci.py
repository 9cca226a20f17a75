"""ACI reading, image IDs, import and reproducible build, checked against the binaries."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from aci_util import MANIFEST, entry, make_layout, tar_of, valid_entries

from podmgr import aci
from podmgr.aci import Compression
from podmgr.errors import ExitCode, InvalidError

DECOMPRESS = {
    Compression.NONE: ["cat"],
    Compression.GZIP: ["gzip", "-dc"],
    Compression.BZIP2: ["bzip2", "-dc"],
    Compression.XZ: ["xz", "-dc"],
    Compression.ZSTD: ["zstd", "-dcq"],
}


def sha512_of_decompressed(path: Path, comp: Compression) -> str:
    with open(path, "rb") as f:
        out = subprocess.run(DECOMPRESS[comp], stdin=f, capture_output=True, check=True).stdout
    return "sha512-" + hashlib.sha512(out).hexdigest()


def tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """Kind+mode and content (or link target) of every path below root."""
    out: dict[str, tuple[int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            if p.is_symlink():
                body = os.readlink(p).encode()
            elif p.is_file():
                body = p.read_bytes()
            else:
                body = b""
            out[str(p.relative_to(root))] = (st.st_mode, body)
    return out


@pytest.mark.parametrize("comp", list(Compression))
def test_round_trip(tmp_path: Path, comp: Compression) -> None:
    layout = make_layout(tmp_path / "layout")
    out = tmp_path / "img.aci"
    built = aci.build(layout, out, comp)
    assert aci.detect_compression(out.read_bytes()[:6]) is comp
    assert built.id == sha512_of_decompressed(out, comp)
    assert aci.image_id(out) == built.id
    assert aci.read_manifest(out) == MANIFEST
    with open(out, "rb") as f:  # a stream, not a path
        result = aci.import_stream(f, tmp_path / "x", expected_id=built.id)
    assert result.id == built.id
    assert result.compression is comp
    assert result.size == out.stat().st_size
    assert result.uncompressed_size == built.uncompressed_size
    assert result.manifest_bytes == MANIFEST
    assert tree(tmp_path / "x/rootfs") == tree(layout / "rootfs")
    assert (tmp_path / "x/manifest").read_bytes() == MANIFEST


def test_build_is_reproducible(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "layout")
    first = aci.build(layout, tmp_path / "1.aci", Compression.XZ)
    for p in [layout, *layout.rglob("*")]:
        os.utime(p, (1_234_567_890, 1_234_567_890), follow_symlinks=False)
    second = aci.build(layout, tmp_path / "2.aci", Compression.XZ)
    assert first.id == second.id
    assert (tmp_path / "1.aci").read_bytes() == (tmp_path / "2.aci").read_bytes()
    kept = aci.build(layout, tmp_path / "3.aci", Compression.NONE, keep_mtimes=True)
    assert kept.id != first.id
    with tarfile.open(tmp_path / "3.aci") as tf:
        assert tf.getmember("rootfs/etc/hostname").mtime == 1_234_567_890
        assert tf.getmember("rootfs/etc/hostname").uname == ""


def test_build_refuses_an_invalid_manifest(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "layout")
    (layout / "manifest").write_text('{"acKind": "ImageManifest"}')
    with pytest.raises(InvalidError):
        aci.build(layout, tmp_path / "x.aci")
    assert not (tmp_path / "x.aci").exists()


def test_build_refuses_a_symlinked_rootfs(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "layout")
    (layout / "rootfs").rename(tmp_path / "real")
    (layout / "rootfs").symlink_to(tmp_path / "real")
    with pytest.raises(InvalidError, match="not a directory"):
        aci.build(layout, tmp_path / "x.aci")


def test_not_an_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.aci"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(InvalidError, match="not an image archive"):
        aci.validate(junk)
    junk.write_bytes(b"")
    with pytest.raises(InvalidError, match="empty"):
        aci.validate(junk)


def test_dot_slash_names_are_accepted(tmp_path: Path) -> None:
    data = tar_of(
        entry("./", tarfile.DIRTYPE),
        entry("./manifest", data=MANIFEST),
        entry("./rootfs/", tarfile.DIRTYPE),
        entry("./rootfs/a", data=b"x"),
    )
    res = aci.import_stream(io.BytesIO(data), tmp_path / "x")
    assert res.id == "sha512-" + hashlib.sha512(data).hexdigest()
    assert (tmp_path / "x/rootfs/a").read_bytes() == b"x"


def test_implied_parent_directories(tmp_path: Path) -> None:
    data = tar_of(*valid_entries(), entry("rootfs/deep/er/file", data=b"x"))
    aci.import_stream(io.BytesIO(data), tmp_path / "x")
    assert (tmp_path / "x/rootfs/deep/er/file").read_bytes() == b"x"
    assert (tmp_path / "x/rootfs/deep").stat().st_mode & 0o777 == 0o755


def test_gnu_format_and_long_names(tmp_path: Path) -> None:
    long = "rootfs/" + "d" * 120 + "/" + "f" * 150
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for ti, body in [*valid_entries(), entry(long, data=b"long")]:
            tf.addfile(ti, io.BytesIO(body) if body is not None else None)
    aci.import_stream(io.BytesIO(buf.getvalue()), tmp_path / "x")
    assert (tmp_path / "x" / long).read_bytes() == b"long"


def test_import_into_existing_empty_dir_keeps_it_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "x"
    dest.mkdir()
    data = tar_of(*valid_entries(), entry("rootfs/a", data=b"again"))
    with pytest.raises(InvalidError, match="duplicate"):
        aci.import_stream(io.BytesIO(data), dest)
    assert dest.is_dir() and not any(dest.iterdir())


def test_read_manifest_stops_early() -> None:
    class Endless(io.RawIOBase):
        """A valid start followed by an archive that never ends."""

        def __init__(self) -> None:
            self.head = tar_of(*valid_entries())[:-1024]
            self.given = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            n = len(b)
            chunk = self.head[self.given : self.given + n] or b"\0" * 0
            if not chunk:
                chunk = tar_of(entry("rootfs/f", data=b"y" * 1000))[:n]
            b[: len(chunk)] = chunk
            self.given += len(chunk)
            return len(chunk)

    src = Endless()
    assert aci.read_manifest(io.BufferedReader(src)) == MANIFEST


def test_zstd_read_manifest_closes_the_pipe(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "layout")
    big = layout / "rootfs/big"
    big.write_bytes(os.urandom(8 << 20))
    out = tmp_path / "img.aci"
    aci.build(layout, out, Compression.ZSTD)
    for _ in range(3):
        assert aci.read_manifest(out) == MANIFEST


# -- differential with actool ---------------------------------------------------------

actool = pytest.mark.skipif(shutil.which("actool") is None, reason="actool is not installed")


@actool
@pytest.mark.parametrize("comp", [c for c in Compression if c is not Compression.ZSTD])
def test_actool_validates_our_builds(tmp_path: Path, comp: Compression) -> None:
    # actool 0.8.11 predates zstd ("unable to detect filetype"), so zstd is left out.
    layout = make_layout(tmp_path / "layout")
    (layout / "rootfs/hard").hardlink_to(layout / "rootfs/etc/hostname")
    os.setxattr(layout / "rootfs/etc/hostname", "user.note", b"v\x00\xff")
    out = tmp_path / "img.aci"
    proc = subprocess.run(
        [sys.executable, "-m", "podmgr", "image", "build", f"--compression={comp}", layout, out],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip() == aci.image_id(out)
    subprocess.run(["actool", "validate", out], check=True, capture_output=True)
    assert (
        subprocess.run(
            ["actool", "cat-manifest", out], capture_output=True, check=True
        ).stdout.strip()
        == MANIFEST
    )


@actool
@pytest.mark.parametrize("compressed", [True, False])
def test_we_import_actool_builds(tmp_path: Path, compressed: bool) -> None:
    layout = make_layout(tmp_path / "layout")
    out = tmp_path / "img.aci"
    flags = [] if compressed else ["-no-compression"]
    subprocess.run(["actool", "build", *flags, layout, out], check=True, capture_output=True)
    comp = Compression.GZIP if compressed else Compression.NONE
    res = aci.import_stream(out, tmp_path / "x")
    assert res.compression is comp
    assert res.id == sha512_of_decompressed(out, comp)
    assert tree(tmp_path / "x/rootfs") == tree(layout / "rootfs")


# -- CLI ------------------------------------------------------------------------------


def podmgr(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podmgr", *map(str, args)], capture_output=True, text=True
    )


def test_cli_build_json(tmp_path: Path) -> None:
    import json

    layout = make_layout(tmp_path / "layout")
    p = podmgr("--format=json", "image", "build", "--compression=bzip2", layout, tmp_path / "o")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["kind"] == "image-build"
    assert doc["data"]["id"] == aci.image_id(tmp_path / "o")
    assert doc["data"]["compression"] == "bzip2"


def test_cli_build_invalid_layout(tmp_path: Path) -> None:
    (tmp_path / "layout").mkdir()
    p = podmgr("image", "build", tmp_path / "layout", tmp_path / "o.aci")
    assert p.returncode == ExitCode.INVALID
    assert len(p.stderr.strip().splitlines()) <= 2  # the error line and a hint
    assert "Traceback" not in p.stderr


def test_cli_compressions_match_the_enum() -> None:
    from podmgr.cli.image import COMPRESSIONS

    assert list(COMPRESSIONS) == [c.value for c in Compression]
