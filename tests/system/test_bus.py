"""podmgr's D-Bus layer against the box's real systemd."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from podmgr import systemd
from podmgr.systemd import Systemd


def cgroup_file(sd: Systemd, unit: str, controller: str, name: str) -> str:
    cg = sd.unit_properties(unit, ["ControlGroup"])["ControlGroup"]
    return Path(f"/sys/fs/cgroup/{controller}{cg}/{name}").read_text().strip()


def journal_by_field(
    field: str, value: str, want: int, timeout: float = 20.0
) -> list[dict[str, str]]:
    """Entries with FIELD=VALUE; waits (bounded) for journald to have at least ``want``."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["journalctl", "-o", "json", "--no-pager", f"{field}={value}"],
            capture_output=True,
            text=True,
        ).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        # Not systemd's own messages about the unit: 257 tags them with LogExtraFields.
        entries = [e for e in entries if e.get("_PID") != "1"]
        if len(entries) >= want or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def test_transient_service_gets_limits_exit_status_and_journal(
    sd: Systemd, busybox_rootfs: Path, unit_name: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex
    data = tmp_path / "data"
    data.mkdir()
    (data / "greeting").write_text("hello from the host\n")
    script = (
        'echo "greeting: $(cat /data/greeting)"; echo "FOO=$FOO"; '
        "while [ ! -e /data/go ]; do sleep 0.05; done; "
        "touch /data/x 2>/dev/null && echo writable || echo read-only; exit 3"
    )
    sd.start_transient_unit(
        unit_name,
        {
            "Description": "podmgr bus test",
            "ExecStart": [("/bin/sh", ["/bin/sh", "-c", script], False)],
            "RootDirectory": str(busybox_rootfs),
            "BindReadOnlyPaths": [(str(data), "/data", False, 0)],
            "Environment": ["FOO=bar baz"],
            "MemoryMax": 20 * 1024 * 1024,
            "TasksMax": 7,
            "CPUQuotaPerSecUSec": 100_000,
            "LogExtraFields": [f"PODMGR_TEST={tag}"],
            "RemainAfterExit": False,
        },
    )
    # While it waits for /data/go, its cgroup carries the limits (v1 controllers here).
    assert int(cgroup_file(sd, unit_name, "memory", "memory.limit_in_bytes")) == 20 * 1024 * 1024
    assert cgroup_file(sd, unit_name, "pids", "pids.max") == "7"
    quota = int(cgroup_file(sd, unit_name, "cpu", "cpu.cfs_quota_us"))
    period = int(cgroup_file(sd, unit_name, "cpu", "cpu.cfs_period_us"))
    assert quota * 10 == period  # 10% of one CPU

    (data / "go").touch()
    status = sd.wait_for_state(unit_name, timeout=30)
    assert status["ActiveState"] == "failed"
    assert status["Result"] == "exit-code"
    assert status["ExecMainCode"] == 1  # CLD_EXITED
    assert status["ExecMainStatus"] == 3

    entries = journal_by_field("PODMGR_TEST", tag, want=3)
    messages = [e["MESSAGE"] for e in entries]
    assert "greeting: hello from the host" in messages
    assert "FOO=bar baz" in messages
    assert "read-only" in messages
    assert all(e["_SYSTEMD_UNIT"] == unit_name for e in entries)


def test_memory_limit_kills_and_is_reported(sd: Systemd, unit_name: str) -> None:
    hog = "b = b'x' * (200 * 1024 * 1024); print(len(b))"
    sd.start_transient_unit(
        unit_name,
        {
            "ExecStart": [("/usr/bin/python3", ["/usr/bin/python3", "-c", hog], False)],
            "MemoryMax": 20 * 1024 * 1024,
            "MemorySwapMax": 0,
        },
    )
    status = sd.wait_for_state(unit_name, timeout=60)
    assert status["ActiveState"] == "failed"
    # The v1 memory controller's OOM killer shows up as a signal; v2 as oom-kill.
    assert status["Result"] in ("signal", "oom-kill")
    if status["Result"] == "signal":
        assert status["ExecMainStatus"] == 9  # SIGKILL


def test_existing_unit_name_raises_typed_error(sd: Systemd, unit_name: str) -> None:
    props = {"ExecStart": [("/bin/sleep", ["/bin/sleep", "30"], False)]}
    sd.start_transient_unit(unit_name, props)
    with pytest.raises(systemd.UnitExistsError) as ei:
        sd.start_transient_unit(unit_name, props)
    assert ei.value.name == "org.freedesktop.systemd1.UnitExists"
    assert "org.freedesktop.systemd1.UnitExists" in str(ei.value)


@pytest.mark.parametrize(
    ("props", "error_name"),
    [
        # A relative ExecStart path: systemd's own validation.
        ({"ExecStart": [("bin/true", ["true"], False)]}, "org.freedesktop.DBus.Error.InvalidArgs"),
        # A value of the wrong D-Bus type: sd-bus fails to read it.
        (
            {
                "ExecStart": [("/bin/true", ["/bin/true"], False)],
                "MemoryMax": systemd.Variant("s", "lots"),
            },
            "System.Error.ENXIO",
        ),
        # A property transient units cannot have.
        (
            {"ExecStart": [("/bin/true", ["/bin/true"], False)], "Frob": systemd.Variant("u", 1)},
            "org.freedesktop.DBus.Error.PropertyReadOnly",
        ),
    ],
)
def test_bad_property_raises_typed_error(
    sd: Systemd, unit_name: str, props: dict[str, object], error_name: str
) -> None:
    with pytest.raises(systemd.BusError) as ei:
        sd.start_transient_unit(unit_name, props)
    assert ei.value.name == error_name
    assert error_name in str(ei.value)
    if error_name.endswith("InvalidArgs"):
        assert isinstance(ei.value, systemd.InvalidArgsError)
    # Nothing half-made stays behind.
    assert sd.unit_status(unit_name)["LoadState"] == "not-found"


def test_aux_units_list_stop_kill_reset(sd: Systemd, tmp_path: Path) -> None:
    base = f"podmgr-aux-{uuid.uuid4().hex[:8]}"
    main = f"{base}-a.service"
    aux = f"{base}-b.service"
    sleep = [("/bin/sleep", ["/bin/sleep", "300"], False)]
    sd.start_transient_unit(
        main, {"ExecStart": sleep, "Wants": [aux]}, aux=[(aux, {"ExecStart": sleep})]
    )
    # The aux unit is created by the same call; starting it is systemd's job.
    deadline = time.monotonic() + 10
    while sd.unit_status(aux)["ActiveState"] != "active" and time.monotonic() < deadline:
        time.sleep(0.05)
    names = {u.name: u for u in sd.list_units([f"{base}-*"])}
    assert set(names) == {main, aux}
    assert names[main].active_state == "active"
    st = sd.unit_status(main)
    # systemd 257 on the box's hybrid layout reports TasksCurrent=0 (its v1 support is
    # deprecated); the pids controller it set up still counts the task.
    tasks = st["TasksCurrent"] or int(cgroup_file(sd, main, "pids", "pids.current"))
    assert st["MainPID"] > 0 and tasks >= 1

    sd.kill_unit(aux, 9)
    status = sd.wait_for_state(aux, timeout=10)
    assert status["Result"] == "signal"
    sd.reset_failed_unit(aux)
    # Still loaded (the main unit Wants it), but no longer failed.
    assert sd.unit_status(aux)["ActiveState"] == "inactive"

    sd.stop_unit(main)
    assert sd.list_units([f"{base}-*"]) == []


def test_stop_of_unknown_unit_names_the_bus_error(sd: Systemd) -> None:
    with pytest.raises(systemd.NoSuchUnitError) as ei:
        sd.stop_unit("podmgr-no-such-unit.service")
    assert ei.value.name == "org.freedesktop.systemd1.NoSuchUnit"


def test_cli_version_reports_the_box_systemd() -> None:
    p = subprocess.run(["python3", "-m", "podmgr", "version"], capture_output=True, text=True)
    assert p.returncode == 0
    sd_version = subprocess.run(["systemctl", "--version"], capture_output=True, text=True)
    major = sd_version.stdout.split()[1]
    assert f"systemd {major}" in p.stdout


def test_pipelined_calls_reply_in_order_with_their_errors(sd: Systemd) -> None:
    manager = sd._manager
    missing = f"podmgr-test-{uuid.uuid4().hex[:12]}.service"
    replies = sd.call_many(
        [
            (manager, "GetUnit", "s", ("init.scope",)),
            (manager, "GetUnit", "s", (missing,)),
            (manager, "GetUnit", "s", ("-.slice",)),
        ]
    )
    assert replies[0] == (systemd.unit_path("init.scope"),)
    assert isinstance(replies[1], systemd.NoSuchUnitError) and missing in str(replies[1])
    assert replies[2] == (systemd.unit_path("-.slice"),)


def test_watch_sees_the_exit_of_a_unit_collected_before_iteration(
    sd: Systemd, unit_name: str
) -> None:
    """Watched before it starts, a unit that ends and is collected at once still reports
    its exit: from its signals, not from a read of the fresh unit systemd loads instead."""
    exits = sd.watch([unit_name], idle=True, timeout=30)
    with systemd.connect() as other:
        other.start_transient_unit(
            unit_name,
            {
                "ExecStart": [("/bin/sh", ["/bin/sh", "-c", "exit 7"], False)],
                "CollectMode": "inactive-or-failed",
            },
        )
        # Collected: a read from another connection finds nothing of its exit.
        deadline = time.monotonic() + 30
        while other.read_properties([unit_name], ("LoadState",))[unit_name]["LoadState"] != (
            "not-found"
        ):
            assert time.monotonic() < deadline, "the unit was never collected"
            time.sleep(0.05)
    ((unit, final),) = list(exits)
    assert unit == unit_name
    assert (final["Result"], final["ExecMainCode"], final["ExecMainStatus"]) == ("exit-code", 1, 7)


def test_watch_does_not_take_a_restart_for_an_end(sd: Systemd, unit_name: str) -> None:
    """A service systemd restarts is "failed" for an instant; the watch waits for its end
    for good, restarts counted."""
    script = (
        "test -e /run/$U.n2 && exit 4; test -e /run/$U.n1 && touch /run/$U.n2; "
        "touch /run/$U.n1; exit 1"
    )
    exits = sd.watch([unit_name], idle=True, timeout=30)
    sd.start_transient_unit(
        unit_name,
        {
            "ExecStart": [("/bin/sh", ["/bin/sh", "-c", script], False)],
            "Environment": [f"U={unit_name}"],
            "Restart": "always",
            "RestartUSec": 50_000,
            # Exit status 4 ends it: not restarted.
            "RestartPreventExitStatus": ([4], []),
        },
    )
    try:
        ((_unit, final),) = list(exits)
    finally:
        for n in (1, 2):
            Path(f"/run/{unit_name}.n{n}").unlink(missing_ok=True)
    assert (final["ActiveState"], final["ExecMainStatus"], final["NRestarts"]) == ("failed", 4, 2)


def test_a_watch_for_jobs_subscribes_with_the_next_call_or_at_iteration(
    sd: Systemd, unit_name: str
) -> None:
    """``watch(jobs=True)`` leaves its Subscribe and AddMatch to the next call over its
    connection (run's StartTransientUnit); should the units be started elsewhere, its
    iteration sends them itself, and the exit is still seen."""
    exits = sd.watch([unit_name], idle=True, timeout=30, jobs=True)
    assert sd._deferred  # nothing sent yet
    with systemd.connect() as other:
        other.start_transient_unit(
            unit_name, {"ExecStart": [("/bin/sh", ["/bin/sh", "-c", "sleep 0.3; exit 3"], False)]}
        )
    ((unit, final),) = list(exits)
    assert unit == unit_name and final["ExecMainStatus"] == 3
    assert not sd._deferred
    # Taken along by the next call instead: the replies are that call's own.
    sd.watch([f"x{unit_name}"], jobs=True).close()
    assert sd._deferred
    assert sd.call_many([]) == []
    assert not sd._deferred
