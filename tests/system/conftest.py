"""Fixtures for tests that run inside the box, against its real systemd."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from podmgr import systemd


@pytest.fixture
def sd() -> Iterator[systemd.Systemd]:
    with systemd.connect() as conn:
        yield conn


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal root filesystem: a static busybox and its applet links."""
    root = tmp_path_factory.mktemp("busybox-rootfs")
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "data"):
        (root / d).mkdir()
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    applets = subprocess.run(
        [str(root / "bin/busybox"), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", root / "bin" / a)
    return root


@pytest.fixture
def unit_name() -> Iterator[str]:
    """A unique transient unit name; the unit is stopped and reset afterwards."""
    name = f"podmgr-test-{uuid.uuid4().hex[:12]}.service"
    yield name
    subprocess.run(["systemctl", "stop", name], capture_output=True)
    subprocess.run(["systemctl", "reset-failed", name], capture_output=True)
