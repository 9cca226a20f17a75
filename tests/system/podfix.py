"""Helpers for pod tests: busybox images built with podmgr, and the CLI driven as a user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# `make deb-test`: the tests run against the installed Debian package (the conftest
# checks that podmgr is imported from it), so they use its unit files and generator.
INSTALLED = os.environ.get("PODMGR_EXPECT_INSTALLED") == "1"
REPO = Path(__file__).resolve().parents[2]
UNITS = Path("/usr/lib/systemd/system") if INSTALLED else REPO / "units"

APPLETS = [
    *(
        [
            "sh",
            "echo",
            "cat",
            "id",
            "ls",
            "sleep",
            "env",
            "grep",
            "mkdir",
            "touch",
            "true",
            "false",
            "head",
            "wc",
            "pwd",
            "stat",
            "test",
        ]
    ),
    *(["[", "kill", "readlink", "ps", "hostname", "dd", "tr", "nc", "wget", "ip", "httpd"]),
    # Terminal tests (test_enter.py).
    *(["tty", "stty", "setsid"]),
    *(["nslookup"]),  # test_dns
]


def build_image(
    out: Path,
    name: str,
    exec_: list[str] | None,
    *,
    user: str = "0",
    group: str = "0",
    extra_app: dict[str, Any] | None = None,
    files: dict[str, str] | None = None,
    passwd: str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
    group_file: str = "root:x:0:\nalice:x:1000:\nstaff:x:50:alice\n",
    dirs: tuple[str, ...] = ("tmp", "home/alice", "srv"),
) -> Path:
    """A busybox image, built with ``podmgr image build``; returns the .aci path."""
    layout = out.parent / f"{out.name}.layout"
    if layout.exists():
        shutil.rmtree(layout)
    root = layout / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for a in APPLETS:
        os.symlink("busybox", root / "bin" / a)
    (root / "etc/passwd").write_text(passwd)
    (root / "etc/group").write_text(group_file)
    for path, text in (files or {}).items():
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    manifest: dict[str, Any] = {
        "acKind": "ImageManifest",
        "acVersion": "0.8.11",
        "name": name,
        "labels": [
            {"name": "version", "value": "1.0"},
            {"name": "os", "value": "linux"},
            {"name": "arch", "value": "amd64"},
        ],
    }
    if exec_ is not None:
        manifest["app"] = {"exec": exec_, "user": user, "group": group, **(extra_app or {})}
    (layout / "manifest").write_text(json.dumps(manifest))
    subprocess.run(
        [sys.executable, "-m", "podmgr", "image", "build", str(layout), str(out)],
        check=True,
        capture_output=True,
    )
    return out


class Podmgr:
    """Drives ``python3 -m podmgr --dir DIR …`` the way a user would."""

    def __init__(self, state: Path) -> None:
        self.state = state

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [sys.executable, "-m", "podmgr", "--dir", str(self.state), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"podmgr {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
            )
        return p

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--format=json").stdout)["data"]


def until(check: Callable[[], bool], what: str, limit: float = 30) -> None:
    """Poll for a state systemd reaches asynchronously (not a timed assertion)."""
    end = time.monotonic() + limit
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.1)


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True)


# The package's own units, which `make deb-test` finds enabled and active: not a pod's.
PACKAGE_UNITS = ("podmgr-gc.", "podmgr-metadata.", "podmgr.slice")


def host_state() -> dict[str, list[str]]:
    """Units, mounts and pod directories that a pod could leave behind."""
    units = sh("systemctl", "list-units", "--all", "--no-legend", "--plain", "podmgr*").stdout
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return {
        "units": sorted(
            u
            for line in units.splitlines()
            if line.strip() and not (u := line.split()[0]).startswith(PACKAGE_UNITS)
        ),
        "mounts": sorted(m for m in mounts if "/pods/" in m),
    }


#: Tests build their images unsigned.
INSECURE = "--insecure-options=image"


def image_file(images: Path, name: str, exec_: list[str], **kw: Any) -> str:
    """``build_image`` into ``images`` as example.com/NAME; the .aci's path."""
    return str(build_image(images / f"{name}.aci", f"example.com/{name}", exec_, **kw))


def unit_of(uuid: str, app: str) -> str:
    return f"podmgr-{uuid.replace('-', '')}-{app}.service"
