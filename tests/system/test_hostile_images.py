"""Hostile images against a real systemd (issue 18): each is refused with podmgr's own
error and exit code, never hangs or fails internally, and the store keeps working: its
index passes PRAGMA integrity_check and a later fetch and run succeed."""

from __future__ import annotations

import gzip
import io
import os
import sqlite3
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from podfix import Podmgr, build_image, host_state

pytestmark = pytest.mark.system

INSECURE = "--insecure-options=image"
MANIFEST = (
    b'{"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/hostile",'
    b' "app": {"exec": ["/x"], "user": "0", "group": "0"}}'
)


@pytest.fixture
def pm(tmp_path: Path) -> Podmgr:
    return Podmgr(tmp_path / "state")


def tar_gz(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buf.getvalue(), compresslevel=1)


def member(
    name: str, kind: bytes = tarfile.DIRTYPE, data: bytes | None = None
) -> tuple[tarfile.TarInfo, bytes | None]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode = kind, 0o755
    if data is not None:
        ti.size = len(data)
    return ti, data


def store_works(pm: Podmgr, tmp_path: Path) -> None:
    """The index is sound, tmp/ is empty, and a good image is fetched and runs."""
    cas = pm.state / "cas"
    db = sqlite3.connect(cas / "index.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    assert list((cas / "tmp").iterdir()) == []
    good = build_image(tmp_path / "good.aci", "example.com/good", ["/bin/echo", "still fine"])
    p = pm("run", INSECURE, "--net=host", str(good))
    assert p.stdout.splitlines() == ["still fine"], p.stderr
    assert "example.com/good" in pm("image", "list").stdout
    pm("image", "gc", "--grace-period=0s")


def refused(p: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert p.returncode == code, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("podmgr: error:")]
    assert len(errors) == 1 and text in errors[0], p.stderr
    assert "internal error" not in p.stderr


def test_a_deeply_nested_image(pm: Podmgr, tmp_path: Path) -> None:
    deep = tmp_path / "deep.aci"
    deep.write_bytes(
        tar_gz(
            member("manifest", tarfile.REGTYPE, MANIFEST),
            member("rootfs"),
            *(member("rootfs/" + "d/" * i) for i in range(1, 1501)),
        )
    )
    refused(pm("fetch", INSECURE, str(deep), check=False), 4, "nests 257 directories")
    refused(pm("run", INSECURE, str(deep), check=False), 4, "nests 257 directories")
    refused(pm("fetch", str(deep), check=False), 1, "no signature")
    store_works(pm, tmp_path)


def test_a_decompression_bomb(pm: Podmgr, tmp_path: Path) -> None:
    size = 64 << 20
    zeros = tarfile.TarInfo("rootfs/zeros")
    zeros.size = size
    body = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=body, mode="wb", compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf,
    ):
        tf.addfile(member("manifest", tarfile.REGTYPE, MANIFEST)[0], io.BytesIO(MANIFEST))
        tf.addfile(member("rootfs")[0])
        tf.addfile(zeros, io.BytesIO(bytes(size)))
    bomb = tmp_path / "bomb.aci"
    bomb.write_bytes(body.getvalue())
    assert bomb.stat().st_size < 1 << 20
    env = {**os.environ, "PODMGR_MAX_IMAGE_SIZE": "16M"}
    p = subprocess.run(
        [sys.executable, "-m", "podmgr", "--dir", str(pm.state), "fetch", INSECURE, str(bomb)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    refused(p, 10, "larger than 16M uncompressed")
    store_works(pm, tmp_path)


@pytest.mark.parametrize("kind", ["char-device", "fifo"])
def test_an_image_whose_passwd_is_not_a_file(pm: Podmgr, tmp_path: Path, kind: str) -> None:
    aci = build_image(tmp_path / "p.aci", "example.com/passwd", ["/bin/id", "-u"], user="alice")
    layout = tmp_path / "p.aci.layout"
    passwd = layout / "rootfs/etc/passwd"
    passwd.unlink()
    if kind == "fifo":
        os.mkfifo(passwd)  # no writer: a blocking read of it never returns
    else:
        os.mknod(passwd, stat.S_IFCHR | 0o644, os.makedev(1, 5))  # /dev/zero
    subprocess.run(
        [sys.executable, "-m", "podmgr", "image", "build", str(layout), str(aci)],
        check=True, capture_output=True,
    )  # fmt: skip
    before = host_state()
    # A hang would end in the timeout (an error), MemoryError in an internal error.
    p = pm("run", INSECURE, "--net=host", str(aci), check=False, timeout=120)
    refused(p, 4, "/etc/passwd in the image is not a regular file")
    assert host_state() == before
    store_works(pm, tmp_path)
