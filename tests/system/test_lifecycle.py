"""Lifecycle commands as podman users expect: stop --all, rm --force, kill."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from podfix import INSECURE, Podmgr, host_state, image_file, sh, unit_of, until

from podmgr.errors import ExitCode
from podmgr.hook import app_process

pytestmark = pytest.mark.system



def active(unit: str) -> bool:
    return sh("systemctl", "is-active", unit).stdout.strip() == "active"


# Ends on SIGTERM as a shell does, and says so on SIGHUP, in the journal and in its root.
TRAPPER = [
    "/bin/sh",
    "-c",
    "trap 'echo got-hup; touch /tmp/hup' HUP; trap 'exit 143' TERM;"
    " while :; do sleep 1 & wait; done",
]


def test_stop_all_stops_every_running_pod(pm: Podmgr, images: Path) -> None:
    aci = image_file(images, "trapper", TRAPPER)
    pods = [pm("start", INSECURE, aci).stdout.strip() for _ in range(2)]
    assert all(active(unit_of(u, "trapper")) for u in pods)
    both = pm("stop", "--all", pods[0], check=False)
    assert both.returncode == ExitCode.USAGE, both.stderr
    assert len(both.stderr.strip().splitlines()) == 1, both.stderr
    assert all(active(unit_of(u, "trapper")) for u in pods)

    out = pm("stop", "--all").stdout.split()
    assert set(pods) <= set(out)
    for u in pods:
        assert pm.json("status", u)["state"] == "exited"
        assert not active(unit_of(u, "trapper"))
    # Nothing left to stop: not an error.
    assert pm("stop", "--all").stdout.strip() == ""
    pm("rm", *pods)


def test_stop_all_force_kills(pm: Podmgr, images: Path) -> None:
    stubborn = "trap '' TERM; while :; do sleep 1; done"
    aci = image_file(images, "stubborn", ["/bin/sh", "-c", stubborn])
    uuid = pm("start", INSECURE, aci).stdout.strip()
    pm("stop", "--all", "--force")
    st = pm.json("status", uuid)
    assert st["state"] == "exited"
    assert st["apps"][0]["exit"]["signal"] == "KILL"
    pm("rm", uuid)


def test_rm_force_removes_a_running_pod_without_a_trace(pm: Podmgr, images: Path) -> None:
    before = host_state()
    aci = image_file(images, "trapper", TRAPPER)
    uuid = pm("start", INSECURE, "--net=default", aci).stdout.strip()
    hexid = uuid.replace("-", "")
    assert active(unit_of(uuid, "trapper"))
    assert list(Path("/run/netns").glob(f"*{hexid}*"))
    refused = pm("rm", uuid, check=False)
    assert refused.returncode == ExitCode.CONFLICT, refused.stderr
    assert active(unit_of(uuid, "trapper"))

    assert pm("rm", "--force", uuid).stdout.strip() == uuid
    assert uuid not in {p["uuid"] for p in pm.json("list")}
    assert host_state() == before
    assert not list(Path("/run/netns").glob(f"*{hexid}*"))


def test_kill_signal_reaches_only_the_named_app(pm: Podmgr, images: Path) -> None:
    aci = image_file(images, "trapper", TRAPPER)
    uuid = pm("start", INSECURE, aci, "--name", "a", "---", aci, "--name", "b").stdout.strip()
    # As PID 1 of its namespace, the shell drops a SIGHUP sent before its trap is set.
    until(lambda: traps_hup(uuid, "a") and traps_hup(uuid, "b"), "traps set")

    assert pm("kill", "--signal", "SIGHUP", "--app", "a", uuid).stdout.split() == [uuid, "a"]
    until(lambda: "got-hup" in journal(uuid, "a"), "app a got SIGHUP")
    assert "got-hup" not in journal(uuid, "b")
    assert active(unit_of(uuid, "a")) and active(unit_of(uuid, "b"))

    bad = pm("kill", "--signal", "BOGUS", uuid, check=False)
    assert bad.returncode == ExitCode.USAGE
    assert "TERM" in bad.stderr and len(bad.stderr.strip().splitlines()) <= 2, bad.stderr
    nobody = pm("kill", "--app", "c", uuid, check=False)
    assert nobody.returncode == ExitCode.NOT_FOUND, nobody.stderr
    assert "a, b" in nobody.stderr

    # Podman's default: SIGKILL, to every app.
    pm("kill", uuid)
    until(lambda: pm.json("status", uuid)["state"] == "exited", "pod exited")
    for app in pm.json("status", uuid)["apps"]:
        assert app["exit"]["signal"] == "KILL", app
    gone = pm("kill", uuid, check=False)
    assert gone.returncode == ExitCode.CONFLICT, gone.stderr
    pm("rm", uuid)


def traps_hup(uuid: str, app: str) -> bool:
    main = sh("systemctl", "show", "-p", "MainPID", "--value", unit_of(uuid, app)).stdout
    pid = app_process(int(main.strip() or 0))
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt:"))
    return bool(int(caught, 16) & (1 << (signal.SIGHUP - 1)))


def journal(uuid: str, app: str) -> str:
    return sh("journalctl", "--no-pager", "-o", "cat", "-u", unit_of(uuid, app)).stdout
