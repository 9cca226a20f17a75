"""Helpers for the ACI tests: layouts and hand-made (possibly malicious) tar streams."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

MANIFEST = json.dumps(
    {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/test"}
).encode()


def make_layout(root: Path) -> Path:
    """A small valid image layout with a few kinds of files."""
    (root / "rootfs/bin").mkdir(parents=True)
    (root / "rootfs/etc").mkdir()
    (root / "manifest").write_bytes(MANIFEST)
    (root / "rootfs/bin/tool").write_bytes(b"#!/bin/sh\necho hi\n" * 100)
    (root / "rootfs/bin/tool").chmod(0o755)
    (root / "rootfs/etc/hostname").write_text("box\n")
    (root / "rootfs/etc/link").symlink_to("hostname")
    (root / "rootfs/empty").mkdir()
    return root


def entry(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs: object
) -> tuple[tarfile.TarInfo, bytes | None]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(ti, key, value)
    if kind in (tarfile.REGTYPE, tarfile.AREGTYPE):
        ti.size = len(data)
        return ti, data
    return ti, None


def tar_of(*entries: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    """A PAX tar of exactly these entries, in this order, without any sanitizing."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def valid_entries() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [
        entry("manifest", data=MANIFEST),
        entry("rootfs", tarfile.DIRTYPE),
        entry("rootfs/a", data=b"hello"),
    ]


def remove_deep(path: Path) -> None:
    """Remove a tree of any depth with GNU rm, not with the code under test (nor
    pytest's shutil.rmtree): a failing deep-tree test must not leave a tree behind that
    breaks every later pytest run's clean-up of old temporary directories."""
    import subprocess

    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)
