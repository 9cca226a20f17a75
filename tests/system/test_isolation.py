"""Pods isolated from each other and from the host (issue 17), tried as an attacker would:
a root app with the default capabilities aims at another pod's app and at host processes
through /proc, by their PIDs in the host's namespace, which the test gives it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from podfix import INSECURE, Podmgr, image_file, sh, unit_of

from podmgr.hook import app_process

pytestmark = pytest.mark.system



def app_pid(uuid: str, app: str) -> int:
    """The app's process, by its PID in the host's namespace."""
    main = int(sh("systemctl", "show", "-P", "MainPID", unit_of(uuid, app)).stdout.strip())
    pid = app_process(main)
    assert pid, f"no process for app {app} of {uuid} (main {main})"
    return pid


def run_in(pm: Podmgr, aci: str, script: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return pm("run", INSECURE, *extra, aci, "--exec", "/bin/sh", "--", "-c", script, check=False)


@pytest.fixture(scope="module")
def victim(pm: Podmgr, images: Path) -> Iterator[str]:
    """Pod B: a root app with a secret in its environment, left running."""
    aci = image_file(images, "victim", ["/bin/sleep", "600"])
    uuid = pm("start", INSECURE, "--set-env", "SECRET=b-secret-token", aci).stdout.strip()
    yield uuid
    pm("stop", uuid)
    pm("rm", uuid)


@pytest.fixture(scope="module")
def attacker(images: Path) -> str:
    return image_file(images, "attacker", ["/bin/true"])


def test_another_pods_root_is_not_writable_through_proc(
    pm: Podmgr, victim: str, attacker: str
) -> None:
    pid = app_pid(victim, "victim")
    # What the attack reached before: the victim's root through its /proc entry.
    assert Path(f"/proc/{pid}/root/tmp").is_dir()
    p = run_in(pm, attacker, f"echo owned > /proc/{pid}/root/tmp/f; ls /proc/{pid}")
    assert p.returncode != 0
    assert not Path(f"/proc/{pid}/root/tmp/f").exists()
    # Nor by any PID it can see: its own app's processes are all it has.
    p = run_in(pm, attacker, "for d in /proc/[0-9]*; do echo owned > $d/root/tmp/g; done; true")
    assert not Path(f"/proc/{pid}/root/tmp/g").exists()


def test_another_pods_environment_is_not_readable(pm: Podmgr, victim: str, attacker: str) -> None:
    pid = app_pid(victim, "victim")
    assert b"b-secret-token" in Path(f"/proc/{pid}/environ").read_bytes()
    p = run_in(pm, attacker, f"cat /proc/{pid}/environ; grep -rs b-secret-token /proc/*/environ")
    assert "b-secret-token" not in p.stdout, p.stdout


def test_host_services_are_not_reachable_through_proc(pm: Podmgr, attacker: str) -> None:
    journald = int(sh("systemctl", "show", "-P", "MainPID", "systemd-journald").stdout.strip())
    assert journald > 0
    p = run_in(pm, attacker, f"cat /proc/{journald}/root/etc/shadow; ls /proc/1/root/etc/shadow")
    assert p.returncode != 0
    assert "root:" not in p.stdout


def test_a_non_root_app_does_not_reach_a_host_users_files(
    pm: Podmgr, images: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "secret").write_text("host user's secret\n")
    os.chmod(home / "secret", 0o600)
    shutil.chown(home, 1000, 1000)
    shutil.chown(home / "secret", 1000, 1000)
    host = subprocess.Popen(
        ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "sleep", "120"], cwd=home
    )
    try:
        aci = image_file(images, "alice", ["/bin/true"], user="1000", group="1000")
        p = run_in(pm, aci, f"id -u; cat /proc/{host.pid}/cwd/secret")
        assert p.stdout.startswith("1000\n"), p.stdout + p.stderr
        assert "host user's secret" not in p.stdout
        assert p.returncode != 0
    finally:
        host.kill()
        host.wait()


def test_an_app_sees_only_its_own_processes(pm: Podmgr, attacker: str) -> None:
    p = run_in(pm, attacker, "sleep 30 & ps -o pid,args; ls -d /proc/[0-9]* | wc -l; kill %1")
    lines = p.stdout.splitlines()
    rows = [line.split(None, 1) for line in lines[1:-1]]
    # The shell as PID 1, its sleep and ps (busybox shows a forked applet as {ps} ARGS).
    assert rows[0][0] == "1" and rows[0][1].startswith("/bin/sh"), p.stdout
    # /proc: the shell, sleep, and the pipeline's ls and wc.
    assert len(rows) == 3 and int(lines[-1]) <= 4, p.stdout
    assert not any("systemd" in line or "journal" in line for line in lines), p.stdout


def test_the_pods_hostname_and_the_hosts_unchanged(pm: Podmgr, attacker: str) -> None:
    before = Path("/proc/sys/kernel/hostname").read_text()
    p = run_in(pm, attacker, "hostname; hostname changed-by-pod; hostname", "--hostname", "web")
    assert p.stdout.splitlines()[0] == "web", p.stdout + p.stderr
    assert "changed-by-pod" not in p.stdout
    assert Path("/proc/sys/kernel/hostname").read_text() == before
    # By default: the pod's machine name, as machinectl and /etc/hosts have it.
    uuid_file = Path(pm.state) / "uuid"
    p = pm(
        "run", INSECURE, "--uuid-file-save", str(uuid_file), attacker,
        "--exec", "/bin/sh", "--", "-c", "hostname; grep -c \"$(hostname)\" /etc/hosts",
    )  # fmt: skip
    uuid = uuid_file.read_text().strip()
    assert p.stdout.split() == [f"podmgr-{uuid.replace('-', '')}", "1"], p.stdout


def test_enter_sees_the_apps_processes_and_no_other(pm: Podmgr, victim: str) -> None:
    p = pm("enter", victim, "ps", "-o", "pid,args")
    rows = [line.split(None, 1) for line in p.stdout.splitlines()[1:]]
    assert rows[0] == ["1", "/bin/sleep 600"], p.stdout
    assert not any("systemd" in args or "journal" in args for _pid, args in rows), p.stdout
    assert pm("enter", victim, "hostname").stdout.strip() == f"podmgr-{victim.replace('-', '')}"
