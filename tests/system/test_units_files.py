"""The unit files in units/: systemd accepts them, and the timer and socket work.

They are installed as an administrator would (copies in /etc/systemd/system, which is
private to the box), with ExecStart= pointed at the podmgr under test: the files say
/usr/bin/podmgr, where packages put it, and the checkout is not installed there.
Under `make deb-test` (podfix.INSTALLED) they are the package's own files in
/usr/lib/systemd/system, and ExecStart= stays the package's /usr/bin/podmgr.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from podfix import INSTALLED, REPO, UNITS

ETC = Path("/etc/systemd/system")
UNIT_FILES = sorted(
    p
    for p in UNITS.iterdir()
    if p.name.startswith("podmgr") and p.suffix in (".service", ".socket", ".timer", ".slice")
)
# The command that runs the podmgr under test.
PODMGR = "/usr/bin/podmgr" if INSTALLED else f"{sys.executable} -m podmgr"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True)


def installed_copy(src: Path, dest_dir: Path) -> Path:
    text = src.read_text().replace("/usr/bin/podmgr", PODMGR)
    dest = dest_dir / src.name
    dest.write_text(text)
    return dest


@pytest.fixture
def installed_units() -> Iterator[list[Path]]:
    paths = [installed_copy(p, ETC) for p in UNIT_FILES]
    run("systemctl", "daemon-reload")
    yield paths
    names = [p.name for p in paths]
    run("systemctl", "disable", "--now", *names)
    for p in paths:
        p.unlink(missing_ok=True)
    run("systemctl", "daemon-reload")
    run("systemctl", "reset-failed", *names)


def test_the_units_dir_has_every_unit_the_packages_install() -> None:
    assert {p.name for p in UNIT_FILES} == {
        "podmgr.slice",
        "podmgr-gc.service",
        "podmgr-gc.timer",
        "podmgr-metadata.service",
        "podmgr-metadata.socket",
    }


def test_systemd_analyze_verify_accepts_every_unit(tmp_path: Path) -> None:
    paths = [installed_copy(p, tmp_path) for p in UNIT_FILES]
    # --man=no: the pages are generated at build time and tested on their own; the box
    # has no podmgr pages installed.
    p = run("systemd-analyze", "verify", "--man=no", *map(str, paths))
    assert p.returncode == 0, p.stderr
    # verify reports some problems (unknown settings, bad values) without failing.
    assert "Unknown" not in p.stderr and "Failed" not in p.stderr, p.stderr


def test_timer_and_socket_are_active_after_enable_now(installed_units: list[Path]) -> None:
    p = run("systemctl", "enable", "--now", "podmgr-gc.timer", "podmgr-metadata.socket")
    assert p.returncode == 0, p.stderr
    for unit in ("podmgr-gc.timer", "podmgr-metadata.socket"):
        assert run("systemctl", "is-enabled", unit).stdout.strip() == "enabled"
        assert run("systemctl", "is-active", unit).stdout.strip() == "active", run(
            "systemctl", "status", unit
        ).stdout
    listen = run("systemctl", "show", "-P", "Listen", "podmgr-metadata.socket").stdout
    assert "127.0.0.1:18112" in listen
    # The timer has a next elapse, i.e. it will really start podmgr-gc.service.
    nxt = run("systemctl", "show", "-P", "NextElapseUSecMonotonic", "podmgr-gc.timer").stdout
    assert nxt.strip() not in ("", "0", "infinity")


def start_with_exec(
    service: str, override: str = "", command: str = f"{PODMGR} version", expect: str = "systemd"
) -> None:
    """Start ``service`` with its own sandbox but ``command`` (`podmgr version`) as the
    command, and find ``expect`` in what it logs.

    The pod commands (gc, metadata-service) come later; `podmgr version` asks systemd
    over D-Bus, which gc needs from its sandbox besides what it mounts.
    """
    drop_in = ETC / f"{service}.d"
    drop_in.mkdir(exist_ok=True)
    try:
        (drop_in / "test.conf").write_text(
            f"[Unit]\nConditionPathIsDirectory=\n[Service]\n{override}ExecStart=\n"
            f"ExecStart={command}\n"
        )
        run("systemctl", "daemon-reload")
        p = run("systemctl", "start", service)
        log = run("journalctl", "-u", service, "-o", "cat").stdout
        assert p.returncode == 0, p.stderr + log
        assert run("systemctl", "show", "-P", "Result", service).stdout.strip() == "success", log
        assert expect in log, log
    finally:
        shutil.rmtree(drop_in)
        run("systemctl", "daemon-reload")


def test_the_gc_service_runs_in_its_sandbox(installed_units: list[Path]) -> None:
    start_with_exec("podmgr-gc.service")


def test_the_metadata_service_runs_in_its_sandbox(installed_units: list[Path]) -> None:
    override = "Type=oneshot\nRestart=no\n"
    if INSTALLED:
        start_with_exec("podmgr-metadata.service", override)
        return
    # Its user may not reach the checkout's Python under /root (pyenv): the system's
    # Python, with the checkout on its path, imports what the service runs (the
    # standard library and podmgr, nothing else), as that user.
    command = (
        "/usr/bin/python3 -c 'import os, podmgr.__main__, podmgr.metadata; "
        'print("uid", os.getuid())\''
    )
    start_with_exec(
        "podmgr-metadata.service",
        f"{override}Environment=PYTHONPATH={REPO}\n",
        command,
        expect="uid ",
    )
    log = run("journalctl", "-u", "podmgr-metadata.service", "-o", "cat").stdout
    assert "uid 0" not in log, log


def test_the_gc_service_collects_a_pod_in_its_sandbox(
    installed_units: list[Path], tmp_path: Path
) -> None:
    """The hardened podmgr-gc.service really collects: an exited pod of the default
    network goes, its root unmounted, nothing of it left."""
    from podfix import Podmgr, build_image, host_state

    pm = Podmgr(tmp_path / "state")
    aci = build_image(tmp_path / "gc.aci", "example.com/gcsvc", ["/bin/true"])
    pm("run", "--insecure-options=image", "--uuid-file-save", str(tmp_path / "uuid"), str(aci))
    uuid = (tmp_path / "uuid").read_text().strip()
    assert (pm.state / "pods" / uuid).is_dir()
    service = "podmgr-gc.service"
    drop_in = ETC / f"{service}.d"
    drop_in.mkdir(exist_ok=True)
    env = "" if INSTALLED else f"Environment=PYTHONPATH={REPO}\n"
    try:
        (drop_in / "test.conf").write_text(
            f"[Unit]\nConditionPathIsDirectory=\n[Service]\n{env}ExecStart=\n"
            f"ExecStart={PODMGR} --dir {pm.state} gc --grace-period 0\n"
        )
        run("systemctl", "daemon-reload")
        p = run("systemctl", "start", service)
        log = run("journalctl", "-u", service, "-o", "cat").stdout
        assert p.returncode == 0, p.stderr + log
    finally:
        shutil.rmtree(drop_in)
        run("systemctl", "daemon-reload")
    assert uuid in log, log
    assert not (pm.state / "pods" / uuid).exists()
    assert host_state() == {"units": [], "mounts": []}
