"""The apps' roots: overlays that podmgr mounts at the pod's start, which systemd shows as
mount units, and which go with the pod however it ends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from podfix import Podmgr, build_image, host_state, sh, until

pytestmark = pytest.mark.system


@pytest.fixture
def pm(tmp_path: Path) -> Podmgr:
    return Podmgr(tmp_path / "state")


@pytest.fixture
def sleeper(pm: Podmgr, tmp_path: Path) -> str:
    aci = build_image(tmp_path / "s.aci", "example.com/sleeper", ["/bin/sleep", "600"])
    pm("fetch", "--insecure-options=image", str(aci))
    return "example.com/sleeper"


def roots(pm: Podmgr, uuid: str) -> list[str]:
    """Overlay mounts under the pod's directory, from the mount table."""
    pdir = str(pm.state / "pods" / uuid) + "/"
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [f[4] for f in (line.split() for line in lines) if f[4].startswith(pdir)]


def started(pm: Podmgr, image: str, *more: str) -> tuple[str, list[dict[str, str]]]:
    uuid = pm("start", "--net=host", image, *more).stdout.strip()
    apps = json.loads((pm.state / "pods" / uuid / "pod.json").read_text())["apps"]
    return uuid, apps


def test_a_running_apps_root_is_an_overlay_systemd_shows(pm: Podmgr, sleeper: str) -> None:
    uuid, (app,) = started(pm, sleeper)
    assert roots(pm, uuid) == [app["rootfs"]]

    def props() -> dict[str, str]:
        show = sh("systemctl", "show", "-p", "ActiveState,Type,What,Where", app["rootfs_unit"])
        return dict(line.split("=", 1) for line in show.stdout.splitlines())

    # systemd reads the mount table at its own pace (rate-limited under mount storms).
    until(lambda: props()["ActiveState"] == "active", "systemd showing the mount")
    assert props() == {
        "ActiveState": "active",
        "Type": "overlay",
        "What": "overlay",
        "Where": app["rootfs"],
    }
    # Its processes see the image's tree, and write to the pod's upper layer.
    sh("systemd-run", "--wait", "-q", "-p", f"RootDirectory={app['rootfs']}", "/bin/touch", "/x")
    assert (Path(app["rootfs"]).parent / "upper" / "x").exists()
    pm("stop", uuid)
    # `podmgr stop` returns once they are gone.
    assert roots(pm, uuid) == []
    pm("rm", uuid)


def test_a_pod_stopped_through_systemd_loses_its_roots(pm: Podmgr, sleeper: str) -> None:
    uuid, _ = started(pm, sleeper, "---", sleeper, "--name", "second")
    assert len(roots(pm, uuid)) == 2
    sh("systemctl", "stop", f"podmgr-{uuid.replace('-', '')}.slice")
    # The exit hooks see the pod ending and unmount them.
    until(lambda: roots(pm, uuid) == [], "the roots unmounted after systemctl stop")
    assert pm.json("status", uuid)["state"] == "exited"
    pm("rm", uuid)


def test_the_exit_policy_ending_a_pod_unmounts_its_roots(pm: Podmgr, tmp_path: Path) -> None:
    aci = build_image(tmp_path / "q.aci", "example.com/quits", ["/bin/sh", "-c", "exit 4"])
    pm("fetch", "--insecure-options=image", str(aci))
    s = build_image(tmp_path / "s.aci", "example.com/sleeper", ["/bin/sleep", "600"])
    pm("fetch", "--insecure-options=image", str(s))
    # The failing app ends the pod (on-any-failure), the sleeper with it.
    uuid, _ = started(pm, "example.com/sleeper", "---", "example.com/quits")
    until(lambda: pm.json("status", uuid)["state"] == "exited", "the pod ending")
    until(lambda: roots(pm, uuid) == [], "the roots unmounted by the exit hook")
    assert pm.json("status", uuid)["exit_code"] == 4
    pm("rm", uuid)


def test_a_failed_start_leaves_no_root_mounted(pm: Podmgr, sleeper: str) -> None:
    uuid = pm("prepare", "--net=host", sleeper).stdout.strip()
    # A unit of that name exists already: the start fails after the roots are mounted.
    unit = f"podmgr-{uuid.replace('-', '')}-sleeper.service"
    sh("systemd-run", "-q", "--unit", unit, "/bin/sleep", "600")
    try:
        p = pm("run-prepared", "--detach", uuid, check=False)
        assert p.returncode != 0 and "Traceback" not in p.stderr
        assert roots(pm, uuid) == []
    finally:
        sh("systemctl", "stop", unit)


def test_podmgr_in_a_mount_namespace_of_its_own_refuses_to_start(
    pm: Podmgr, sleeper: str
) -> None:
    before = host_state()
    podmgr = [sys.executable, "-m", "podmgr", "--dir", str(pm.state)]
    p = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", *podmgr, "start", "--net=host", sleeper],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2, p.stderr
    assert "mount namespace of its own" in p.stderr and "Traceback" not in p.stderr
    assert [d for d in (pm.state / "pods").iterdir() if not d.name.startswith(".")] == []
    assert host_state() == before
