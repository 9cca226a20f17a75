"""Pods as transient units, observed through podmgr and through systemd's own tools."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from podfix import Podmgr, build_image, host_state, sh, until

from podmgr import systemd
from podmgr.errors import ExitCode
from podmgr.execshim import PRIVATE_PIDS_VERSION
from podmgr.execshim import TARGET as SHIM
from podmgr.hook import app_process

INSECURE = "--insecure-options=image"


@pytest.fixture(scope="module")
def pm(tmp_path_factory: pytest.TempPathFactory) -> Podmgr:
    # /tmp in the box is a tmpfs: overlay upper layers cannot live on the box's overlay root.
    return Podmgr(tmp_path_factory.mktemp("podmgr-state"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


def img(images: Path, name: str, exec_: list[str] | None, **kw: object) -> str:
    return str(build_image(images / f"{name}.aci", f"example.com/{name}", exec_, **kw))  # type: ignore[arg-type]


def manager_version() -> int:
    with systemd.connect() as sd:
        return int(sd.manager_version())


def unit_of(uuid: str, app: str) -> str:
    return f"podmgr-{uuid.replace('-', '')}-{app}.service"


def test_run_streams_output_and_returns_the_exit_code(pm: Podmgr, images: Path) -> None:
    aci = img(images, "hello", ["/bin/sh", "-c", "echo hello from $AC_APP_NAME; exit 3"])
    p = pm("run", INSECURE, "--uuid-file-save", str(images / "hello.uuid"), aci, check=False)
    assert p.returncode == 3, p.stderr
    assert p.stdout.splitlines() == ["hello from hello"]
    uuid = (images / "hello.uuid").read_text().strip()
    # The same output is in the journal under the app's unit and the pod's fields.
    j = sh("journalctl", "-o", "cat", "-u", unit_of(uuid, "hello"))
    assert "hello from hello" in j.stdout
    j = sh("journalctl", "-o", "json", f"PODMGR_POD={uuid}")
    entries = [json.loads(line) for line in j.stdout.splitlines()]
    assert any(
        e["MESSAGE"] == "hello from hello" and e["SYSLOG_IDENTIFIER"] == "hello" for e in entries
    )
    st = pm.json("status", uuid)
    assert st["state"] == "exited" and st["exit_code"] == 3
    assert st["apps"][0]["exit"]["status"] == 3
    assert pm("logs", uuid).stdout.splitlines() == ["hello from hello"]


def test_a_pod_that_fails_at_once_gives_its_exit_code_every_time(pm: Podmgr, images: Path) -> None:
    """An app that exits with a failure right after its exec races systemd: its start
    job may fail although it ran, and a read of the service soon after may no longer
    show its exit (both seen in a run or two in 60). ``run`` reports the exit either way."""
    aci = img(images, "quick", ["/bin/sh", "-c", "echo quick; exit 3"])
    pm("fetch", INSECURE, aci)
    codes = [pm("run", "example.com/quick", check=False) for _ in range(40)]
    assert [(p.returncode, p.stdout, p.stderr) for p in codes] == [(3, "quick\n", "")] * 40


def test_a_started_pod_that_fails_at_once_is_started(pm: Podmgr, images: Path) -> None:
    """``start`` of such an app returns its pod (the app ran), even when systemd failed
    the start job; the exit hook records the exit."""
    aci = img(images, "quick2", ["/bin/sh", "-c", "exit 3"])
    pm("fetch", INSECURE, aci)
    started = [pm("start", "example.com/quick2", check=False) for _ in range(30)]
    assert [(p.returncode, p.stderr) for p in started] == [(0, "")] * 30
    for p in started:
        uuid = p.stdout.strip()
        pm("status", "--wait=30s", uuid)
        st = pm.json("status", uuid)
        assert (st["state"], st["exit_code"]) == ("exited", 3), st


def test_start_leaves_no_podmgr_process_and_stop_works(pm: Podmgr, images: Path) -> None:
    aci = img(images, "sleeper", ["/bin/sleep", "600"])
    uuid = pm("start", INSECURE, aci).stdout.strip()
    unit = unit_of(uuid, "sleeper")
    assert sh("systemctl", "is-active", unit).stdout.strip() == "active"
    ps = [
        line
        for line in sh("ps", "-eo", "args").stdout.splitlines()
        if "ps -eo" not in line and "podmgr metadata-service" not in line
    ]
    # No podmgr process but podmgr-exec, the parent of each app in its PID namespace
    # where systemd cannot make that namespace itself (PrivatePIDs=, systemd 257).
    assert not [line for line in ps if "podmgr" in line and not line.startswith(SHIM)]
    hex_ = uuid.replace("-", "")
    besides = 0 if manager_version() >= PRIVATE_PIDS_VERSION else 1
    assert len([line for line in ps if line.startswith(SHIM) and hex_ in line]) == besides
    assert pm.json("status", uuid)["state"] == "running"
    listed = {p["uuid"]: p for p in pm.json("list")}
    assert listed[uuid]["state"] == "running"
    # An image for the host's arch makes the native ABI's system calls only.
    abi = sh("systemctl", "show", "-p", "SystemCallArchitectures", "--value", unit).stdout
    assert abi.split() == ["native"], abi
    # machined knows the pod.
    machines = sh("machinectl", "list", "--no-legend").stdout
    assert f"podmgr-{uuid.replace('-', '')}" in machines
    # The pod's slice, made with its first unit, was started by it (Slice= requires it).
    pod_slice = f"podmgr-{uuid.replace('-', '')}.slice"
    shown = sh("systemctl", "show", "-p", "ActiveState,Transient,RequiredBy", pod_slice).stdout
    assert {"ActiveState=active", "Transient=yes", f"RequiredBy={unit}"} <= set(shown.split())
    pm("stop", uuid[:8])
    assert sh("systemctl", "is-active", unit).stdout.strip() != "active"
    assert sh("systemctl", "is-active", pod_slice).stdout.strip() != "active"
    assert pm.json("status", uuid)["state"] == "exited"
    pm("rm", uuid)
    assert uuid not in {p["uuid"] for p in pm.json("list")}


def test_machinectl_terminate_stops_the_whole_pod(pm: Podmgr, images: Path) -> None:
    # Apps that end on SIGTERM as a shell does, with 128 + 15: as PID 1 of their
    # namespaces, a bare sleep would ignore machined's and wait out the stop timeout.
    aci = img(images, "sleeper2", ["/bin/sh", "-c", "trap 'exit 143' TERM; sleep 600 & wait"])
    uuid = pm("start", INSECURE, aci, "--name", "a", "---", aci, "--name", "b").stdout.strip()
    assert sh("systemctl", "is-active", unit_of(uuid, "a"), unit_of(uuid, "b")).returncode == 0
    t = sh("machinectl", "terminate", f"podmgr-{uuid.replace('-', '')}")
    assert t.returncode == 0, t.stderr
    w = pm("status", "--wait=30s", uuid, check=False)
    journal = sh("journalctl", "--no-pager", "-o", "short-monotonic", "-n", "60").stdout
    assert w.returncode == 0, w.stderr + journal
    assert pm.json("status", uuid)["state"] == "exited"
    for app in ("a", "b"):
        assert sh("systemctl", "is-active", unit_of(uuid, app)).stdout.strip() != "active"


def test_stop_force_kills(pm: Podmgr, images: Path) -> None:
    aci = img(images, "stubborn", ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done"])
    uuid = pm("start", INSECURE, aci).stdout.strip()
    pm("stop", "--force", uuid)
    st = pm.json("status", uuid)
    assert st["state"] == "exited"
    assert st["apps"][0]["exit"]["signal"] == "KILL"


def test_prepare_then_run_prepared(pm: Podmgr, images: Path) -> None:
    aci = img(images, "prep", ["/bin/echo", "prepared and run"])
    uuid = pm("prepare", INSECURE, aci).stdout.strip()
    assert pm.json("status", uuid)["state"] == "prepared"
    assert sh("systemctl", "is-active", unit_of(uuid, "prep")).stdout.strip() != "active"
    p = pm("run-prepared", uuid)
    assert p.stdout.strip() == "prepared and run"
    assert pm.json("status", uuid)["state"] == "exited"


def test_gc_mark_only_keeps_logs_then_removes(pm: Podmgr, images: Path) -> None:
    aci = img(images, "gcme", ["/bin/echo", "collect me"])
    uuid = pm("run", INSECURE, "--uuid-file-save", str(images / "gc.uuid"), aci).stdout
    uuid = (images / "gc.uuid").read_text().strip()
    marked = pm.json("gc", "--grace-period=0s", "--mark-only")
    assert uuid in marked["marked"]
    assert pm.json("status", uuid)["state"] == "garbage"
    assert pm("logs", uuid).stdout.strip() == "collect me"
    before = host_state()
    removed = pm.json("gc", "--grace-period=0s")
    assert uuid in removed["removed"]
    assert not (pm.state / "pods" / uuid).exists()
    # Logs outlive the pod in the journal.
    j = sh("journalctl", "-o", "cat", f"PODMGR_POD={uuid}")
    assert "collect me" in j.stdout
    after = host_state()
    assert [m for m in after["mounts"] if uuid in m] == []
    assert set(after["units"]) <= set(before["units"])


PROBE = r"""
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
echo "cwd=$(pwd)"
echo "PATH=$PATH"
echo "APP=$AC_APP_NAME container=$container FOO=$FOO BAR=$BAR"
for d in null zero full random urandom tty ptmx pts shm; do test -e /dev/$d && echo "dev $d"; done
grep -E '^(CapBnd|CapEff|CapAmb|Seccomp|NoNewPrivs):' /proc/self/status
mkdir /tmp/blocked 2>&1 || true
echo "hosts: $(grep -c localhost /etc/hosts)"
"""


def test_executor_duties_seen_from_inside(pm: Podmgr, images: Path, tmp_path: Path) -> None:
    aci = img(
        images,
        "probe",
        ["/bin/sh", "-c", PROBE],
        extra_app={
            "environment": [{"name": "FOO", "value": "image"}, {"name": "BAR", "value": "image"}],
            "workingDirectory": "/srv",
        },
    )
    p = pm(
        "run",
        INSECURE,
        "--set-env",
        "FOO=pod",
        aci,
        "--user",
        "alice",
        "--group",
        "staff",
        "--supplementary-gids",
        "1000,4242",
        "--environment",
        "BAR=app",
        "--seccomp",
        "mode=remove,errno=EPERM,mkdir,mkdirat",
        "--caps-retain",
        "CAP_NET_BIND_SERVICE",
    )
    out = p.stdout
    assert "uid=1000 gid=50 groups=50 1000 4242" in out
    assert "cwd=/srv" in out
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in out
    assert "APP=probe container=podmgr FOO=pod BAR=app" in out
    for d in ("null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm"):
        assert f"dev {d}" in out
    caps = dict(re.findall(r"^(\w+):\s+(\S+)$", out, re.M))
    assert int(caps["CapBnd"], 16) == 1 << 10  # CAP_NET_BIND_SERVICE only
    assert int(caps["CapAmb"], 16) == 1 << 10  # retained for the non-root user
    assert caps["Seccomp"] == "2" and caps["NoNewPrivs"] == "1"
    assert "Operation not permitted" in out  # the blocked mkdir
    assert "hosts: 1" in out or "hosts: 2" in out


def test_default_capabilities_for_root(pm: Podmgr, images: Path) -> None:
    aci = img(images, "caps", ["/bin/sh", "-c", "grep -E '^CapBnd' /proc/self/status"])
    out = pm("run", INSECURE, aci).stdout
    bnd = int(out.split()[1], 16)
    from podmgr.units import DEFAULT_CAPS, caps_mask

    # PrivateDevices= drops CAP_MKNOD: a private /dev has nothing to make nodes for.
    assert bnd == caps_mask(set(DEFAULT_CAPS) - {"CAP_MKNOD"})


KERNEL = r"""
v=$(cat /proc/sys/kernel/printk_ratelimit) && echo "read sysctl"
echo "$v" > /proc/sys/kernel/printk_ratelimit && echo "wrote sysctl"
mnt() {  # the options of the mount that $1 is on
    awk -v p="$1" '{ m = $5; pre = (m == "/" ? "/" : m "/")
        if ((p == m || index(p, pre) == 1) && length(m) > best) { best = length(m); o = $6 } }
        END { print o }' /proc/self/mountinfo
}
for m in /sys /sys/fs/cgroup /sys/kernel/debug /proc/sys /proc/sysrq-trigger /proc/irq \
        /proc/bus /proc/acpi /proc/fs /proc/mtrr /proc/scsi; do
    test -e $m || continue
    case ",$(mnt $m)," in *,ro,*) echo "ro $m" ;; *) echo "rw $m" ;; esac
done
grep -E "^([^ ]+ ){4}/sys/" /proc/self/mountinfo | grep -v " - sysfs " | sed "s/^/sub /"
ls /sys/class/net | sed "s/^/link /"
dd if=/proc/kmsg of=/dev/null bs=1 count=0 2>/dev/null && echo "opened /proc/kmsg"
/bin/busybox dmesg >/dev/null 2>&1; echo "dmesg $?"
"""


@pytest.mark.parametrize("net", ["default", "host"])
def test_kernel_tunables_and_log_out_of_roots_reach(pm: Podmgr, images: Path, net: str) -> None:
    """Root in an app reads sysctls but writes none, nor anything under /sys, nor the
    kernel's other interfaces in /proc (ProtectKernelTunables=, or its /proc part on the
    host's network). Not /proc/sys/net: the box's own mount (tests/box.py), which
    systemd 252 leaves alone.
    /sys is a sysfs alone, without the filesystems mounted beneath it on the host: the
    host's on the host's network, the pod's netns's own on the pod's. The kernel log is
    out of reach without CAP_SYSLOG: /proc/kmsg refused by the kernel, syslog(2) by the
    seccomp filter (SIGSYS: 128 + 31)."""
    aci = img(images, "kernel", ["/bin/sh", "-c", KERNEL])
    out = pm("run", INSECURE, f"--net={net}", aci).stdout
    lines = out.splitlines()
    assert "read sysctl" in lines and "wrote sysctl" not in lines, out
    assert {"ro /sys", "ro /sys/fs/cgroup", "ro /proc/sys"} <= set(lines), out
    assert [line for line in lines if line.startswith("rw ")] == [], out
    # A sysfs alone, none of the host's filesystems beneath it; the pod's network's own.
    assert [line for line in lines if line.startswith("sub ")] == [], out
    links = {line.removeprefix("link ") for line in lines if line.startswith("link ")}
    if net == "host":
        assert "podmgr0" in links, out
    else:
        assert links == {"lo", "eth0"}, out
    assert "opened /proc/kmsg" not in lines and "dmesg 159" in lines, out


def test_memory_limit_kills_and_status_reports_it(pm: Podmgr, images: Path) -> None:
    # The shell itself holds the 200 MB (command substitution reads into its memory).
    hog = "v=$(head -c 200000000 /dev/zero | tr '\\0' x); echo ${#v}"
    aci = img(images, "hog", ["/bin/sh", "-c", hog])
    p = pm(
        "run",
        INSECURE,
        "--uuid-file-save",
        str(images / "hog.uuid"),
        aci,
        "--memory",
        "20Mi",
        check=False,
    )
    uuid = (images / "hog.uuid").read_text().strip()
    st = pm.json("status", uuid)
    ex = st["apps"][0]["exit"]
    assert p.returncode != 0
    assert ex["result"] in ("signal", "oom-kill", "exit-code")
    assert ex["signal"] == "KILL" or ex["result"] == "oom-kill"
    assert {"name": "resource/memory", "state": "applied"} in st["apps"][0]["isolators"]


@pytest.mark.parametrize(
    ("policy", "expected_code", "b_ran_to_end"),
    [("on-any-failure", 4, False), ("on-any", 4, False), ("until-all", 4, True)],
)
def test_exit_policies(
    pm: Podmgr, images: Path, policy: str, expected_code: int, b_ran_to_end: bool
) -> None:
    fail = img(images, "fail", ["/bin/sh", "-c", "sleep 0.5; exit 4"])
    slow = img(images, "slow", ["/bin/sh", "-c", "sleep 3; echo slow done"])
    p = pm("run", INSECURE, f"--exit-policy={policy}", fail, "---", slow, check=False)
    assert p.returncode == expected_code, p.stderr
    assert ("slow | slow done" in p.stdout) is b_ran_to_end


def test_on_any_failure_ignores_success(pm: Podmgr, images: Path) -> None:
    ok = img(images, "quick", ["/bin/true"])
    slow = img(images, "slow2", ["/bin/sh", "-c", "sleep 2; echo still here"])
    p = pm("run", INSECURE, ok, "---", slow, check=False)
    assert p.returncode == 0
    assert "slow2 | still here" in p.stdout


def test_attached_run_keeps_the_exit_hooks_idle(pm: Podmgr, images: Path) -> None:
    """``run`` applies the exit policy itself; the hook's conditions (run's descriptor of
    the pod's directory, names.attached_condition, or the app's exit.json that run wrote,
    whichever systemd finds first when it gets to the hook's job) skip it, in systemd:
    no process of the hook's runs."""
    fail = img(images, "fail", ["/bin/sh", "-c", "sleep 0.5; exit 4"])
    slow = img(images, "slow", ["/bin/sh", "-c", "sleep 3; echo slow done"])
    saved = images / "attached.uuid"
    p = pm("run", INSECURE, "--uuid-file-save", str(saved), fail, "---", slow, check=False)
    assert p.returncode == 4, p.stderr
    uuid = saved.read_text().strip()
    hook = f"podmgr-exitfail-{uuid.replace('-', '')}-fail.service"
    until(
        lambda: "ConditionPathExists=!/" in sh("journalctl", "-o", "cat", "-u", hook).stdout,
        f"{hook} skipped by its condition",
    )
    log = sh("journalctl", "-o", "cat", "-u", hook).stdout
    assert "podmgr exit hook" not in log and "Finished" not in log, log
    st = pm.json("status", uuid)
    assert (st["state"], st["exit_code"]) == ("exited", 4)
    assert st["apps"][0]["exit"]["status"] == 4


def test_run_returns_without_waiting_for_hooks_that_never_run(
    pm: Podmgr, images: Path, tmp_path: Path
) -> None:
    """``run`` records each app's end before it returns, and the hooks' second condition
    (the app's exit.json) skips a hook whose job systemd runs after run has gone: run does
    not wait for them, and none ever runs."""
    ok = img(images, "quick", ["/bin/true"])
    uuids = []
    for i in range(10):
        saved = tmp_path / f"u{i}"
        pm("run", INSECURE, "--net=host", "--uuid-file-save", str(saved), ok)
        uuids.append(saved.read_text().strip())
    for uuid in uuids:
        hook = f"podmgr-exit-{uuid.replace('-', '')}-quick.service"

        def said(hook: str = hook) -> str:
            return sh("journalctl", "-o", "cat", "-u", hook).stdout

        until(lambda: "skipped" in said(), f"{hook} skipped")
        text = said()
        assert "ConditionPathExists=!" in text, text
        assert "Finished" not in text and "Failed" not in text, text
        st = pm.json("status", uuid)
        assert (st["state"], st["exit_code"]) == ("exited", 0)
    assert "podmgr.hook" not in sh("ps", "-eo", "args").stdout


def test_a_killed_run_leaves_the_pod_to_the_exit_hooks(
    pm: Podmgr, images: Path, tmp_path: Path
) -> None:
    """Should ``run`` die, even by SIGKILL, its lock goes with it, and the exit hooks
    record the exits and apply the exit policy as for a started pod."""
    go = tmp_path / "go"
    go.mkdir()
    script = "while [ ! -e /go/now ]; do sleep 0.1; done; exit 5"
    waiter = img(images, "waiter", ["/bin/sh", "-c", script])
    sleeper = img(images, "sleeper3", ["/bin/sleep", "600"])
    saved = tmp_path / "uuid"
    argv = [sys.executable, "-m", "podmgr", "--dir", str(pm.state), "run", INSECURE]
    argv += ["--uuid-file-save", str(saved), "--volume", f"go,kind=host,source={go}"]
    argv += [waiter, "--mount", "volume=go,target=/go", "---", sleeper]
    run = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        until(lambda: saved.exists() and saved.read_text().strip() != "", "the pod's UUID")
        uuid = saved.read_text().strip()
        units = [unit_of(uuid, "waiter"), unit_of(uuid, "sleeper3")]
        until(lambda: sh("systemctl", "is-active", *units).returncode == 0, "both apps up")
        # run registered the pod with machined once it saw the leader's process.
        name = f"podmgr-{uuid.replace('-', '')}"
        until(lambda: name in sh("machinectl", "list", "--no-legend").stdout, "machine")
        leader = sh("machinectl", "show", "-p", "Leader", "--value", name).stdout.strip()
        main = sh("systemctl", "show", "-p", "MainPID", "--value", units[0]).stdout.strip()
        # The app's own process, podmgr-exec's child, in the app's namespaces.
        assert int(leader) == app_process(int(main)), (leader, main)
    finally:
        run.kill()
        run.wait()
    (go / "now").touch()
    pm("status", "--wait=30s", uuid)
    st = pm.json("status", uuid)
    assert (st["state"], st["exit_code"]) == ("exited", 5)
    apps = {a["name"]: a for a in st["apps"]}
    assert apps["waiter"]["exit"]["status"] == 5
    # on-any-failure: the waiter's failure ended its sibling.
    assert sh("systemctl", "is-active", units[1]).stdout.strip() != "active"
    # run's journalctl -f went too, once the pipe it wrote to was gone.
    until(
        lambda: uuid not in sh("ps", "-eo", "args").stdout,
        "no process of the pod's left",
    )
    # And the hook that ended the pod unmounted both apps' roots, and took its network
    # down: run's pods have no net unit (run does it), so that is the hook's work too.
    until(
        lambda: [m for m in host_state()["mounts"] if uuid in m] == [],
        "the pod's roots unmounted by the exit hooks",
    )
    until(lambda: not network_left(uuid), "the pod's network down by the exit hooks")


def network_left(uuid: str) -> list[str]:
    """What is left of a pod's network: its netns, its net unit, its address lease."""
    hexid = uuid.replace("-", "")
    left = [f"netns {p}" for p in Path("/run/netns").glob(f"*{hexid}*")]
    units = sh("systemctl", "list-units", "--all", "--no-legend", "--plain", f"podmgr-net-{hexid}*")
    left += [f"unit {line}" for line in units.stdout.splitlines() if line.strip()]
    leases = Path("/run/podmgr/ipam")
    left += [f"lease {p}" for p in leases.rglob("*") if p.is_file() and uuid in p.read_text()]
    return left


def background_run(
    pm: Podmgr, tmp_path: Path, image: str, app: str
) -> tuple[subprocess.Popen[str], str]:
    """`podmgr run IMAGE` in the background, once its app is up; and the pod's UUID."""
    saved = tmp_path / "uuid"
    argv = [sys.executable, "-m", "podmgr", "--dir", str(pm.state), "run", INSECURE]
    run = subprocess.Popen(
        [*argv, "--uuid-file-save", str(saved), image],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        until(lambda: saved.exists() and saved.read_text().strip() != "", "the pod's UUID")
        uuid = saved.read_text().strip()
        unit = unit_of(uuid, app)
        until(lambda: sh("systemctl", "is-active", unit).returncode == 0, "the app up")
    except BaseException:
        run.kill()
        run.wait()
        raise
    return run, uuid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_stops_the_pod(
    pm: Podmgr, images: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGTERM, or Ctrl-C, to an attached run stops its pod: once run has returned (with
    the interrupted code) no app runs, and nothing of the pod's network or roots is left."""
    sleeper = img(images, "sleeper5", ["/bin/sleep", "600"])
    run, uuid = background_run(pm, tmp_path, sleeper, "sleeper5")
    try:
        run.send_signal(sig)
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
        run.wait()
    assert run.returncode == ExitCode.INTERRUPTED, err
    assert "interrupted; the pod was stopped" in err, err
    assert sh("systemctl", "is-active", unit_of(uuid, "sleeper5")).stdout.strip() != "active"
    assert network_left(uuid) == []
    assert [m for m in host_state()["mounts"] if uuid in m] == []
    assert pm.json("status", uuid)["state"] == "exited"


def test_a_pod_stopped_after_its_run_was_killed_loses_its_network(
    pm: Podmgr, images: Path, tmp_path: Path
) -> None:
    """run's pod has no net unit: should run die, stopping the pod (the slice, as an
    operator would) has the exit hooks take its network down."""
    sleeper = img(images, "sleeper4", ["/bin/sleep", "600"])
    run, uuid = background_run(pm, tmp_path, sleeper, "sleeper4")
    try:
        left = network_left(uuid)
        assert any(x.startswith("netns ") for x in left), left
        assert not any(x.startswith("unit ") for x in left), left
    finally:
        run.kill()
        run.wait()
    slice_unit = f"podmgr-{uuid.replace('-', '')}.slice"
    assert sh("systemctl", "stop", slice_unit).returncode == 0
    until(lambda: not network_left(uuid), "the pod's network down by the exit hook")
    until(
        lambda: [m for m in host_state()["mounts"] if uuid in m] == [],
        "the pod's root unmounted by the exit hook",
    )


def test_restart_on_failure_counts(pm: Podmgr, images: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    counter.mkdir()
    script = "echo x >> /c/n; test $(wc -l < /c/n) -ge 3 && exit 0; exit 1"
    aci = img(images, "flaky", ["/bin/sh", "-c", script])
    p = pm(
        "run",
        INSECURE,
        "--uuid-file-save",
        str(images / "flaky.uuid"),
        "--volume",
        f"c,kind=host,source={counter}",
        aci,
        "--mount",
        "volume=c,target=/c",
        "--restart=on-failure",
        check=False,
    )
    uuid = (images / "flaky.uuid").read_text().strip()
    assert p.returncode == 0, p.stderr
    assert (counter / "n").read_text().count("x") == 3
    st = pm.json("status", uuid)
    assert st["apps"][0]["exit"]["result"] == "success"
    assert st["apps"][0]["exit"]["restarts"] == 2


def test_restart_count_of_a_running_app(pm: Podmgr, images: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    counter.mkdir()
    script = "echo x >> /c/n; test $(wc -l < /c/n) -ge 3 && exec sleep 600; exit 1"
    aci = img(images, "flaky2", ["/bin/sh", "-c", script])
    uuid = pm(
        "start",
        INSECURE,
        "--volume",
        f"c,kind=host,source={counter}",
        aci,
        "--mount",
        "volume=c,target=/c",
        "--restart=on-failure",
    ).stdout.strip()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        app = pm.json("status", uuid)["apps"][0]
        if app["restarts"] == 2 and app["state"] == "active":
            break
        time.sleep(0.1)
    assert (app["restarts"], app["state"]) == (2, "active")
    shown = sh("systemctl", "show", "-p", "NRestarts", "--value", unit_of(uuid, "flaky2"))
    assert shown.stdout.strip() == "2"
    assert "restarts: 2" in pm("status", uuid).stdout
    pm("stop", uuid)


def test_volumes(pm: Podmgr, images: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    rw = tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "data").write_text("read me\n")
    writer = img(
        images,
        "writer",
        [
            "/bin/sh",
            "-c",
            "cat /ro/data; touch /ro/x 2>/dev/null || echo ro-refused; "
            "echo written > /rw/out; echo shared > /scratch/s",
        ],
    )
    reader = img(
        images, "reader", ["/bin/sh", "-c", "sleep 1; cat /scratch/s; stat -c '%a %u' /scratch"]
    )
    p = pm(
        "run",
        INSECURE,
        "--exit-policy=until-all",
        "--volume",
        f"ro,kind=host,source={ro},readOnly=true",
        "--volume",
        f"rw,kind=host,source={rw}",
        "--volume",
        "scratch,kind=empty,mode=0770,uid=1000",
        writer,
        "--mount",
        "volume=ro,target=/ro",
        "--mount",
        "volume=rw,target=/rw",
        "--mount",
        "volume=scratch,target=/scratch",
        "---",
        reader,
        "--mount",
        "volume=scratch,target=/scratch",
    )
    assert "writer | read me" in p.stdout
    assert "writer | ro-refused" in p.stdout
    assert (rw / "out").read_text() == "written\n"
    assert "reader | shared" in p.stdout
    assert "reader | 770 1000" in p.stdout


BAD_INPUTS = [
    ("unknown image", ["example.com/no-such-image"]),
    (
        "missing volume source",
        ["--volume", "v,kind=host,source=/nonexistent/dir", "@ok", "--mount", "volume=v,target=/v"],
    ),
    (
        "overlapping targets",
        [
            "--volume",
            "a,kind=empty",
            "--volume",
            "b,kind=empty",
            "@ok",
            "--mount",
            "volume=a,target=/x",
            "--mount",
            "volume=b,target=/x/y",
        ],
    ),
    ("duplicate app names", ["@ok", "---", "@ok"]),
    ("user not in image", ["@ok", "--user", "nobody-here"]),
    ("exec not in rootfs", ["@ok", "--exec", "/bin/nonexistent"]),
    ("missing working dir", ["@ok", "--working-dir", "/does/not/exist"]),
]


@pytest.mark.parametrize(("what", "args"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_leaves_nothing_behind(
    pm: Podmgr, images: Path, what: str, args: list[str]
) -> None:
    ok = img(images, "ok", ["/bin/true"])
    pods_before = sorted(os.listdir(pm.state / "pods")) if (pm.state / "pods").exists() else []
    before = host_state()
    argv = [ok if a == "@ok" else a for a in args]
    p = pm("start", INSECURE, *argv, check=False)
    assert p.returncode != 0
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("podmgr: error: ")]
    assert len(errors) == 1, p.stderr
    assert "Traceback" not in p.stderr
    pods_after = sorted(os.listdir(pm.state / "pods")) if (pm.state / "pods").exists() else []
    assert pods_after == pods_before
    assert host_state() == before


def test_symlinked_volume_source_is_refused(pm: Podmgr, images: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    ok = img(images, "ok2", ["/bin/true"])
    p = pm(
        "run",
        INSECURE,
        "--volume",
        f"v,kind=host,source={link}",
        ok,
        "--mount",
        "volume=v,target=/v",
        check=False,
    )
    assert p.returncode != 0
    assert "is a symbolic link" in p.stderr


def test_not_root_is_one_line(images: Path, tmp_path: Path) -> None:
    ok = img(images, "ok3", ["/bin/true"])
    # The test's Python lives under /root, which nobody cannot read: import what the
    # command needs first, then drop to nobody and run the CLI as a user would.
    code = (
        "import os, sys, podmgr.__main__ as m, podmgr.cli.pod, podmgr.pod, podmgr.imagefetch\n"
        "import podmgr.network\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        f"m.main(['--dir', {str(tmp_path)!r}, 'run', {INSECURE!r}, {ok!r}])\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 5, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("podmgr: error: ")]
    assert len(errors) == 1, p.stderr
    assert "root" in errors[0] and "Traceback" not in p.stderr


def test_list_full_no_legend(pm: Podmgr) -> None:
    p = pm("list", "--full", "--no-legend")
    lines = p.stdout.splitlines()
    assert lines
    assert all(re.match(r"^[0-9a-f-]{36}\s", line) for line in lines)


def test_run_of_an_unsigned_image_is_refused(pm: Podmgr, images: Path) -> None:
    # The trust issue: run/prepare fetch implicitly, through the same verification.
    aci = img(images, "unsigned", ["/bin/true"])
    pods_before = sorted(os.listdir(pm.state / "pods")) if (pm.state / "pods").exists() else []
    p = pm("run", aci, check=False)
    assert p.returncode == 1, p.stderr
    assert "signature" in p.stderr and "Traceback" not in p.stderr
    pods_after = sorted(os.listdir(pm.state / "pods")) if (pm.state / "pods").exists() else []
    assert pods_after == pods_before
    listed = pm.json("image", "list")
    assert not any(i.get("name") == "example.com/unsigned" for i in listed)


def test_exec_arguments_are_not_expanded(pm: Podmgr, images: Path) -> None:
    # appc: environment values and exec arguments "are not evaluated in any way".
    aci = img(images, "literal", ["/bin/echo", "$AC_APP_NAME", "${PATH}", "$$"])
    assert pm("run", INSECURE, aci).stdout.strip() == "$AC_APP_NAME ${PATH} $$"
