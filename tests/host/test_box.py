"""The throwaway box itself: boots, runs commands, and leaves nothing on the host."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import box

REPO = Path(__file__).resolve().parents[2]
TRIXIE = Path(os.environ.get("PODMGR_TRIXIE_ROOT", REPO / "build/trixie-root"))


def inside(box_id: str, *argv: str) -> subprocess.CompletedProcess[str]:
    pid = box.pid1(box_id)
    return subprocess.run(["nsenter", "-t", str(pid), "-a", *argv], capture_output=True, text=True)


def test_two_boxes_at_once_are_isolated_and_leave_nothing() -> None:
    before = box.snapshot()
    ids = [f"host-a-{os.getpid()}", f"host-b-{os.getpid()}"]
    errors: list[BaseException] = []

    def boot(i: str) -> None:
        try:
            box.start(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=boot, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        a, b = ids
        assert inside(a, "systemctl", "is-system-running").stdout.strip() == "running"
        assert inside(b, "hostname").stdout.strip() == f"box-{b}"
        # A unit started in one box does not exist in the other, nor on the host.
        run = inside(a, "systemd-run", "--unit=only-in-a", "/bin/sleep", "300")
        assert run.returncode == 0, run.stderr
        assert inside(a, "systemctl", "is-active", "only-in-a").stdout.strip() == "active"
        assert inside(b, "systemctl", "is-active", "only-in-a").stdout.strip() == "inactive"
        # The box's cgroups sit beneath the caller's own, in every hierarchy.
        for key, d in box.cgroup_dirs(a):
            assert d.is_dir(), (key, d)
        # /tmp inside is the box's own tmpfs, not the host's.
        marker = f"/tmp/podmgr-box-marker-{os.getpid()}"
        assert inside(a, "touch", marker).returncode == 0
        assert not Path(marker).exists()
        # The repository is shared read-write.
        assert inside(a, "test", "-w", str(REPO)).returncode == 0
    finally:
        for i in ids:
            box.stop(i)
    assert box.leftovers_of(ids, before, box.snapshot()) == []


def test_a_failing_boot_cleans_up(tmp_path: Path) -> None:
    before = box.snapshot()
    empty = tmp_path / "not-a-root"
    empty.mkdir()
    bad = f"host-bad-{os.getpid()}"
    with pytest.raises(SystemExit):
        box.start(bad, str(empty), timeout=20)
    assert box.leftovers_of([bad], before, box.snapshot()) == []


def test_run_returns_the_command_exit_code() -> None:
    p = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests/box.py"),
            "run",
            f"host-rc-{os.getpid()}",
            "--",
            "sh",
            "-c",
            'test "$PODMGR_BOX" && systemctl is-system-running && exit 7',
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 7, p.stderr
    assert p.stdout.strip() == "running"
    assert "nothing left behind" in p.stderr


@pytest.mark.skipif(
    not (TRIXIE / "usr/lib/systemd/systemd").exists(),
    reason=f"no Debian 13 tree at {TRIXIE}: make debian13-root makes one",
)
def test_boots_debian13_systemd_257() -> None:
    before = box.snapshot()
    i = f"host-trixie-{os.getpid()}"
    box.start(i, str(TRIXIE))
    try:
        version = inside(i, "systemctl", "--version").stdout.split()[1]
        assert int(version) >= 256
        assert inside(i, "systemctl", "is-system-running").stdout.strip() in ("running", "degraded")
        run = inside(i, "systemd-run", "--wait", "-q", "-p", "MemoryMax=20M", "/bin/true")
        assert run.returncode == 0, run.stderr
    finally:
        box.stop(i)
    assert box.leftovers_of([i], before, box.snapshot()) == []
