"""Fixtures for tests that run inside the box, against its real systemd."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from podfix import Podmgr

import podmgr
from podmgr import systemd

# `make deb-test` runs these tests in a booted Debian 13 tree against the installed
# package; it sets PODMGR_EXPECT_INSTALLED=1, and a podmgr from the checkout (on sys.path
# through the working directory, PYTHONPATH or pytest's rootdir) would make the run
# meaningless. The tests start the CLI as `sys.executable -m podmgr`, so the interpreter
# and what it imports in a fresh process are checked too.
if os.environ.get("PODMGR_EXPECT_INSTALLED") == "1":
    PACKAGED = "/usr/lib/python3/dist-packages/podmgr/__init__.py"
    if podmgr.__file__ != PACKAGED or sys.executable != "/usr/bin/python3":
        raise RuntimeError(
            f"PODMGR_EXPECT_INSTALLED: podmgr from {podmgr.__file__} with {sys.executable}, "
            f"not {PACKAGED} with /usr/bin/python3"
        )
    _child = subprocess.run(
        [sys.executable, "-c", "import podmgr; print(podmgr.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if _child != PACKAGED:
        raise RuntimeError(f"PODMGR_EXPECT_INSTALLED: `python3 -m podmgr` would use {_child}")


@pytest.fixture(scope="module")
def pm(tmp_path_factory: pytest.TempPathFactory) -> Podmgr:
    """A state directory of the module's own; /tmp in the box is a tmpfs, where overlay
    upper layers can live (not on the box's overlay root)."""
    return Podmgr(tmp_path_factory.mktemp("podmgr-state"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


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
