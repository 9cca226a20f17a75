#!/usr/bin/env python3
"""A throwaway systemd box: systemd as PID 1 in fresh namespaces, on an overlay root.

Tests, benchmarks and the demo run inside it, so that pods never touch the host's
systemd (there may be none, as on CI, or a real one, as on a laptop).

    python3 tests/box.py start ID [--root DIR]   boot a box and wait until it is running
    python3 tests/box.py exec ID -- CMD…         run CMD inside; exit with its exit code
    python3 tests/box.py stop ID                 power it off and remove every trace
    python3 tests/box.py run [--root DIR] ID -- CMD…
                                                 start, exec, stop, check for leftovers
    python3 tests/box.py list                    boxes that are up

How (the recipe verified on hybrid-cgroup hosts):
- a sub-cgroup beneath the caller's own cgroup in every hierarchy, never at a root,
  so the box stays inside the caller's limits;
- new mount, pid, uts, ipc, net and cgroup namespaces (the cgroup namespace is made
  after moving into the sub-cgroups, so the box's cgroupfs is rooted there);
- an overlay of ``/`` (or DIR) with a tmpfs upper layer, so systemd-tmpfiles and
  friends never write to the host's files, then pivot_root;
- fresh proc, sysfs (read-only), cgroupfs, /dev, /run and /tmp, none shared with the host;
- the repository bind-mounted at its own path, read-write;
- units that a test box must not run are masked in the overlay.

Not systemd-nspawn: on a hybrid host it mounts the v1 controllers read-only inside, so
no resource limit would be enforced.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

STATE = Path("/run/podmgr-box")
REPO = Path(__file__).resolve().parent.parent
CGROUP_NAME = "podmgr-box-{id}"

MASK = [
    "getty@.service",
    "getty@tty1.service",
    "serial-getty@.service",
    "console-getty.service",
    "container-getty@.service",
    "getty.target",
    "postgresql.service",
    "postgresql@.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-modules-load.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "dpkg-db-backup.timer",
    "fstrim.timer",
    "systemd-timesyncd.service",
    "systemd-pstore.service",
    "docker.service",
    "docker.socket",
    "containerd.service",
    "ssh.service",
    "cron.service",
    "systemd-networkd-wait-online.service",
    "systemd-firstboot.service",
    "remote-fs.target",
]
DEV_NODES = ["null", "zero", "full", "random", "urandom", "tty"]


def log(msg: str) -> None:
    print(f"box: {msg}", file=sys.stderr, flush=True)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(argv, text=True, capture_output=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


# ---- cgroups ------------------------------------------------------------------------


def hierarchies() -> list[tuple[str, Path, str]]:
    """(key, mount point, own path) for each mounted cgroup hierarchy.

    ``key`` is the controller list as /proc/self/cgroup spells it ("" for cgroup2).
    """
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        own[ctrls] = path
    out = []
    seen = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        fstype, _src, sopts = right.split(" ", 2)
        mnt = left.split(" ")[4]
        if fstype == "cgroup2":
            key = ""
        elif fstype == "cgroup":
            opts = set(sopts.split(","))
            key = next((k for k in own if k and set(k.split(",")) <= opts), None)
            if key is None:
                continue
        else:
            continue
        if key in own and key not in seen:
            seen.add(key)
            out.append((key, Path(mnt), own[key]))
    return out


def cgroup_dirs(box_id: str) -> list[tuple[str, Path]]:
    name = CGROUP_NAME.format(id=box_id)
    return [(key, mnt / own.lstrip("/") / name) for key, mnt, own in hierarchies()]


def make_cgroups(box_id: str) -> list[Path]:
    made = []
    for key, d in cgroup_dirs(box_id):
        d.mkdir(exist_ok=True)
        made.append(d)
        if "cpuset" in key.split(","):
            for f in ("cpuset.cpus", "cpuset.mems"):
                (d / f).write_text((d.parent / f).read_text())
    return made


def remove_cgroups(box_id: str) -> None:
    for _key, d in cgroup_dirs(box_id):
        if not d.exists():
            continue
        # Depth-first: a cgroup directory can only be removed once it has no children.
        for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            _rmdir_cgroup(sub)
        _rmdir_cgroup(d)


def _rmdir_cgroup(d: Path) -> None:
    for _ in range(50):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            procs = d / "cgroup.procs"
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.1)
    raise RuntimeError(f"cannot remove cgroup {d}")


# ---- the inside: runs as PID 1 of the new namespaces, then execs systemd -------------


def inner(box_id: str, lower: str, repo: str, staging: str) -> None:
    st = Path(staging)
    root = st / "root"
    layers = st / "layers"
    for d in (root, layers):
        d.mkdir(parents=True, exist_ok=True)
    sh("mount", "--make-rprivate", "/")
    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "box-layers", str(layers))
    (layers / "upper").mkdir()
    (layers / "work").mkdir()
    sh(
        "mount",
        "-t",
        "overlay",
        "box-root",
        "-o",
        f"lowerdir={lower},upperdir={layers}/upper,workdir={layers}/work",
        str(root),
    )

    def mnt(*args: str, target: str) -> None:
        t = root / target.lstrip("/")
        t.mkdir(parents=True, exist_ok=True)
        sh("mount", *args, str(t))

    mnt("-t", "proc", "proc", target="/proc")
    sh("mount", "--bind", str(root / "proc/sys"), str(root / "proc/sys"))
    sh("mount", "-o", "remount,bind,ro", str(root / "proc/sys"))
    # net.* is per network namespace, and the box has its own: pod networking (CNI's
    # ip_forward and route_localnet, the sysctl isolator) writes there, never to the host.
    sh("mount", "--bind", str(root / "proc/sys/net"), str(root / "proc/sys/net"))
    sh("mount", "-o", "remount,bind,rw", str(root / "proc/sys/net"))
    mnt("-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", target="/sys")
    mnt(
        "-t", "tmpfs", "-o", "mode=0755,nosuid,nodev,noexec", "cgroup-root", target="/sys/fs/cgroup"
    )
    for key, mountpoint, _own in hierarchies():
        name = mountpoint.name
        if key == "":
            mnt(
                "-t",
                "cgroup2",
                "-o",
                "nosuid,nodev,noexec",
                "cgroup2",
                target=f"/sys/fs/cgroup/{name}",
            )
        else:
            mnt(
                "-t",
                "cgroup",
                "-o",
                f"nosuid,nodev,noexec,{key}",
                "cgroup",
                target=f"/sys/fs/cgroup/{name}",
            )
    # /dev: private, with just the nodes a container gets.
    dev = root / "dev"
    mnt("-t", "tmpfs", "-o", "mode=0755,nosuid,strictatime", "box-dev", target="/dev")
    for node in DEV_NODES:
        (dev / node).touch()
        sh("mount", "--bind", f"/dev/{node}", str(dev / node))
    mnt(
        "-t",
        "devpts",
        "-o",
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
        "devpts",
        target="/dev/pts",
    )
    os.symlink("pts/ptmx", dev / "ptmx")
    mnt("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "shm", target="/dev/shm")
    mnt("-t", "mqueue", "mqueue", target="/dev/mqueue")
    os.symlink("/proc/self/fd", dev / "fd")
    for i, n in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", dev / n)
    mnt("-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "box-run", target="/run")
    mnt("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "box-tmp", target="/tmp")
    mnt("--bind", repo, target=repo)
    # Masks go into the overlay's upper layer, never into the lower tree.
    etc_units = root / "etc/systemd/system"
    etc_units.mkdir(parents=True, exist_ok=True)
    for unit in MASK:
        link = etc_units / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    # A box has its own identity: journald keys its files by machine id.
    (root / "etc/machine-id").unlink(missing_ok=True)
    (root / "etc/machine-id").write_text(os.urandom(16).hex() + "\n")
    (root / "etc/hostname").unlink(missing_ok=True)
    (root / "etc/hostname").write_text(f"box-{box_id}\n")
    sh("hostname", f"box-{box_id}")
    os.chdir(root)
    old = root / ".oldroot"
    old.mkdir(exist_ok=True)
    sh("pivot_root", ".", ".oldroot")
    os.chdir("/")
    sh("umount", "-l", "/.oldroot")
    os.rmdir("/.oldroot")
    systemd = "/lib/systemd/systemd"
    args = [systemd, "--system"]
    version = _systemd_version(systemd)
    if version >= 256:
        # systemd >= 256 refuses the hybrid layout unless forced.
        args.append("SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1")
    env = {"container": f"podmgr-box-{box_id}", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    os.execve(systemd, args, env)


def _systemd_version(path: str) -> int:
    out = sh(path, "--version").stdout.split()
    return int(out[1]) if len(out) > 1 and out[1].isdigit() else 0


# ---- the outside ----------------------------------------------------------------------


def state_dir(box_id: str) -> Path:
    return STATE / box_id


def pid1(box_id: str) -> int:
    """The host pid of the box's systemd (the child of the unshare process)."""
    d = state_dir(box_id)
    try:
        outer = int((d / "pid").read_text())
    except FileNotFoundError:
        raise SystemExit(f"box {box_id} is not running") from None
    children = Path(f"/proc/{outer}/task/{outer}/children")
    for _ in range(100):
        with contextlib.suppress(FileNotFoundError):
            kids = children.read_text().split()
            if kids:
                return int(kids[0])
        time.sleep(0.05)
    raise SystemExit(f"box {box_id}: no PID 1 (see {d / 'console.log'})")


def start(box_id: str, root: str | None = None, timeout: float = 120) -> int:
    d = state_dir(box_id)
    if (d / "pid").exists():
        raise SystemExit(f"box {box_id} exists already; stop it first")
    d.mkdir(parents=True, exist_ok=True)
    cgroups = make_cgroups(box_id)
    lower = str(Path(root).resolve()) if root else "/"

    def enter_cgroups() -> None:
        for cg in cgroups:
            (cg / "cgroup.procs").write_text(str(os.getpid()))

    console = open(d / "console.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--pid",
            "--fork",
            "--uts",
            "--ipc",
            "--net",
            "--cgroup",
            "--propagation",
            "private",
            "--kill-child",
            sys.executable,
            "-S",
            str(Path(__file__).resolve()),
            "_inner",
            box_id,
            lower,
            str(REPO),
            str(d),
        ],
        stdin=subprocess.DEVNULL,
        stdout=console,
        stderr=subprocess.STDOUT,
        preexec_fn=enter_cgroups,
        start_new_session=True,
        close_fds=True,
    )
    console.close()
    (d / "pid").write_text(str(proc.pid))
    (d / "meta.json").write_text(json.dumps({"root": lower, "repo": str(REPO)}))
    try:
        pid = pid1(box_id)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"systemd exited with {proc.returncode}")
            p = subprocess.run(
                ["nsenter", "-t", str(pid), "-a", "systemctl", "is-system-running", "--wait"],
                text=True,
                capture_output=True,
                timeout=max(1.0, deadline - time.monotonic()),
            )
            state = p.stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"not ready in {timeout:.0f} s (state {state!r})")
        if state == "degraded":
            failed = subprocess.run(
                ["nsenter", "-t", str(pid), "-a", "systemctl", "--failed", "--no-legend"],
                text=True,
                capture_output=True,
            ).stdout
            log(f"{box_id}: degraded; failed units:\n{failed}")
        sh("nsenter", "-t", str(pid), "-n", "ip", "link", "set", "lo", "up")
    except BaseException as e:
        log(f"{box_id}: boot failed: {e}; console:\n" + _tail(d / "console.log"))
        stop(box_id)
        raise SystemExit(1) from None
    return pid


def _tail(path: Path, n: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return ""


def exec_in(box_id: str, argv: Sequence[str], *, cwd: str | None = None) -> int:
    pid = pid1(box_id)
    env = dict(os.environ)
    env["PODMGR_BOX"] = box_id
    # nsenter's --wd opens the directory before entering the mount namespace, which
    # leaves a cwd outside the box's root; change directory once inside instead.
    cmd = ["nsenter", "-t", str(pid), "-a", "env", f"--chdir={cwd or os.getcwd()}", *argv]
    return subprocess.call(cmd, env=env)


def stop(box_id: str, timeout: float = 30) -> None:
    d = state_dir(box_id)
    outer = None
    with contextlib.suppress(FileNotFoundError, ValueError):
        outer = int((d / "pid").read_text())
    if outer is not None and _alive(outer):
        kids = Path(f"/proc/{outer}/task/{outer}/children")
        pid = None
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(kids.read_text().split()[0])
        if pid is not None:
            subprocess.run(
                ["nsenter", "-t", str(pid), "-a", "systemctl", "poweroff", "--no-block"],
                capture_output=True,
                timeout=10,
            )
        deadline = time.monotonic() + timeout
        while _alive(outer) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(outer):
            log(f"{box_id}: no clean poweroff in {timeout:.0f} s; killing")
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(outer, signal.SIGKILL)
            while _alive(outer):
                time.sleep(0.05)
    remove_cgroups(box_id)
    shutil.rmtree(d, ignore_errors=True)
    with contextlib.suppress(OSError):
        STATE.rmdir()


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our child; otherwise just probe.
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return False
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def snapshot() -> dict[str, list[str]]:
    """What a box could leave behind on the host: mounts, cgroups, processes, files."""
    mounts = sorted(
        " ".join(line.split(" ")[4:5] + line.split(" - ")[1].split(" ")[:1])
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )
    cgroups = sorted(
        str(p)
        for _k, mnt, own in hierarchies()
        for p in (mnt / own.lstrip("/")).glob("podmgr-box-*")
    )
    procs = sorted(
        f"{p.name}"
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _cmd(p).startswith("/lib/systemd/systemd --system")
    )
    files = sorted(str(p) for p in STATE.glob("*")) if STATE.exists() else []
    return {"mounts": mounts, "cgroups": cgroups, "systemd": procs, "files": files}


def _cmd(p: Path) -> str:
    with contextlib.suppress(OSError):
        return p.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def leftovers(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[str]:
    return [f"{k}: {v}" for k in after for v in after[k] if v not in before.get(k, [])]


def leftovers_of(
    box_ids: list[str], before: dict[str, list[str]], after: dict[str, list[str]]
) -> list[str]:
    """Leftovers that belong to these boxes (or are host mounts, which no box may add)."""
    return [
        e
        for e in leftovers(before, after)
        if e.startswith("mounts:")
        or any(CGROUP_NAME.format(id=i) in e or f"/{i}" in e for i in box_ids)
    ]


@contextlib.contextmanager
def booted(box_id: str, root: str | None = None) -> Iterator[int]:
    """Boot a box for the duration of a with-block; check that it left nothing behind."""
    before = snapshot()
    pid = None
    try:
        pid = start(box_id, root)
        yield pid
    finally:
        stop(box_id)
        # Only this box's traces count: other boxes (other test runs) may come and go.
        extra = [
            e
            for e in leftovers(before, snapshot())
            if e.startswith("mounts:") or CGROUP_NAME.format(id=box_id) in e or f"/{box_id}" in e
        ]
        if pid is not None and _alive(pid):
            extra.append(f"systemd: {pid} still running")
        if extra:
            raise RuntimeError("box left things behind on the host:\n  " + "\n  ".join(extra))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="box", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("id")
    s.add_argument("--root")
    e = sub.add_parser("exec")
    e.add_argument("id")
    e.add_argument("argv", nargs=argparse.REMAINDER)
    t = sub.add_parser("stop")
    t.add_argument("id")
    r = sub.add_parser("run")
    r.add_argument("id")
    r.add_argument("--root")
    r.add_argument("argv", nargs=argparse.REMAINDER)
    sub.add_parser("list")
    i = sub.add_parser("_inner")
    i.add_argument("id")
    i.add_argument("lower")
    i.add_argument("repo")
    i.add_argument("staging")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("the box needs root")
    cmd_argv = list(getattr(a, "argv", None) or [])
    if cmd_argv[:1] == ["--"]:
        cmd_argv = cmd_argv[1:]
    if a.cmd == "_inner":
        inner(a.id, a.lower, a.repo, a.staging)
        return 1
    if a.cmd == "start":
        pid = start(a.id, a.root)
        print(pid)
        return 0
    if a.cmd == "exec":
        return exec_in(a.id, cmd_argv or ["bash"])
    if a.cmd == "stop":
        stop(a.id)
        return 0
    if a.cmd == "list":
        for d in sorted(STATE.glob("*")) if STATE.exists() else []:
            print(d.name)
        return 0
    if a.cmd == "run":
        t0 = time.monotonic()
        with booted(a.id, a.root):
            log(f"{a.id}: up in {time.monotonic() - t0:.2f} s")
            rc = exec_in(a.id, cmd_argv or ["bash"])
        log(f"{a.id}: down, nothing left behind")
        return rc
    return 2


if __name__ == "__main__":
    sys.exit(main())
