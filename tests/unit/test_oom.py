"""Out of memory: how an app's kill by its memory limit is told and recorded (the pure
parts; tests/system/test_oom.py runs it against the kernel and systemd)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from podmgr import hook, launch, names, podlist, podstate

pytestmark = pytest.mark.unit

UUID = "1ba25d27-26c4-4b8a-99ca-148753adf772"
UNIT = names.app_service(UUID, "hog")
# As the kernel logged it in the box (a cgroup namespace below the host's root).
CG = "/process_api/45d4/podmgr-box-oom/podmgr.slice/podmgr-1ba25d2726c44b8a99ca148753adf772.slice"
LOGGED = (
    "<6>[ 6819.070297] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=box,"
    f"mems_allowed=0,oom_memcg={CG}/{UNIT},task_memcg={CG}/{UNIT},task=sh,pid=32413,uid=0\n"
    "<3>[ 6819.070314] Memory cgroup out of memory: Killed process 32413 (sh) total-vm:39136kB\n"
)


def test_the_oom_kill_counter_is_read_from_either_cgroup_version() -> None:
    v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
    v2 = "low 0\nhigh 0\nmax 31\noom 1\noom_kill 1\noom_group_kill 0\n"
    assert (hook.oom_kill_count(v1), hook.oom_kill_count(v2)) == (2, 1)
    assert hook.oom_kill_count("oom_kill_disable 0\nunder_oom 0\n") is None
    assert hook.oom_kill_count("oom_kill x\n") is None


def test_the_counter_comes_from_the_app_units_cgroup(tmp_path: Path) -> None:
    assert hook.memory_oom_kills(UUID, UNIT, root=tmp_path) is None  # gone
    slice_ = names.pod_slice(UUID)
    v1 = tmp_path / "memory/podmgr.slice" / slice_ / UNIT
    v1.mkdir(parents=True)
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert hook.memory_oom_kills(UUID, UNIT, root=tmp_path) == 1
    (v1 / "memory.oom_control").unlink()
    v2 = tmp_path / "podmgr.slice" / slice_ / UNIT
    v2.mkdir(parents=True)
    (v2 / "memory.events").write_text("oom 0\noom_kill 0\n")
    assert hook.memory_oom_kills(UUID, UNIT, root=tmp_path) == 0


def test_the_kernel_log_names_the_killed_apps_cgroup() -> None:
    assert hook.kernel_logged_oom(LOGGED, UNIT)
    # Another app of the pod, or another pod's app of the same name: not this one.
    assert not hook.kernel_logged_oom(LOGGED, names.app_service(UUID, "og"))
    assert not hook.kernel_logged_oom(LOGGED, names.app_service(UUID[::-1], "hog"))
    # The host out of memory as a whole: not the app's limit.
    assert not hook.kernel_logged_oom(LOGGED.replace("CONSTRAINT_MEMCG", "CONSTRAINT_NONE"), UNIT)
    assert not hook.kernel_logged_oom("", UNIT)


def test_only_systemds_word_or_a_sigkill_is_looked_into(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_log() -> str:
        raise AssertionError("the kernel's log read for an end that is not a SIGKILL")

    monkeypatch.setattr(hook, "kernel_log", no_log)
    assert hook.out_of_memory(UUID, UNIT, ("oom-kill", "killed", 137, "KILL"))
    assert not hook.out_of_memory(UUID, UNIT, ("exit-code", "exited", 137, None))
    assert not hook.out_of_memory(UUID, UNIT, ("signal", "killed", 143, "TERM"))
    # The pod's own stop (success): not a failure, whatever killed it.
    assert not hook.out_of_memory(UUID, UNIT, ("success", "killed", 137, "KILL"))
    monkeypatch.setattr(hook, "CGROUP_ROOT", Path("/nonexistent"))
    monkeypatch.setattr(hook, "kernel_log", lambda: LOGGED)
    assert hook.out_of_memory(UUID, UNIT, ("signal", "killed", 137, "KILL"))
    monkeypatch.setattr(hook, "kernel_log", lambda: "")
    assert not hook.out_of_memory(UUID, UNIT, ("signal", "killed", 137, "KILL"))


@pytest.mark.parametrize(
    ("limit", "text"),
    [(32 << 20, "32Mi"), (1 << 30, "1Gi"), (1536 << 20, "1536Mi"), (1000, "1000 bytes")],
)
def test_limits_are_written_as_memory_takes_them(limit: int, text: str) -> None:
    assert hook.format_limit(limit) == text


def pod(tmp_path: Path, memory_max: object = 32 << 20) -> Path:
    pdir = tmp_path / UUID
    (pdir / "apps/hog").mkdir(parents=True)
    props = {"Type": "exec"} if memory_max is None else {"MemoryMax": memory_max}
    plan = {"version": 0, "units": [["other.service", {}, []], [UNIT, props, []]]}
    (pdir / "plan.json").write_text(json.dumps(plan))
    return pdir


def test_an_oom_kill_is_recorded_with_the_limit(tmp_path: Path) -> None:
    pdir = pod(tmp_path)
    assert hook.record_exit(pdir, "hog", ("signal", "killed", 137, "KILL"), 0, oom=True)
    ex = launch.app_exit(pdir, "hog")
    assert ex is not None and (ex["oom"], ex["memory_limit"]) == (True, 32 << 20)
    assert hook.oom_words(ex) == "out of memory (limit 32Mi)"
    model = podstate.app_exit(pdir, "hog")
    assert model is not None and (model.oom, model.memory_limit) == (True, 32 << 20)
    assert podlist.oom_apps(pdir, ["hog", "other"]) == ("hog",)


@pytest.mark.parametrize("plan", [None, "junk", True, -1])
def test_a_limit_that_cannot_be_read_is_left_out(tmp_path: Path, plan: object) -> None:
    pdir = pod(tmp_path, memory_max=None if plan is None else plan)
    if plan == "junk":
        (pdir / "plan.json").write_text("{")
    hook.record_exit(pdir, "hog", ("signal", "killed", 137, "KILL"), 0, oom=True)
    ex = launch.app_exit(pdir, "hog")
    assert ex is not None and hook.oom_words(ex) == "out of memory"


def test_the_pods_own_stop_is_no_oom_kill(tmp_path: Path) -> None:
    pdir = pod(tmp_path)
    names.stop_kill_marker(pdir, "hog").touch()
    hook.record_exit(pdir, "hog", ("signal", "killed", 137, "KILL"), 0, oom=True)
    ex = launch.app_exit(pdir, "hog")
    assert ex is not None and "oom" not in ex and hook.oom_words(ex) is None


def test_records_from_before_read_as_no_oom(tmp_path: Path) -> None:
    pdir = pod(tmp_path)
    old = {"name": "hog", "result": "signal", "code": "killed", "status": 137, "signal": "KILL"}
    old |= {"restarts": 0, "time": datetime.now(UTC).isoformat()}
    names.exit_record(pdir, "hog").write_text(json.dumps(old))
    ex = launch.app_exit(pdir, "hog")
    assert ex is not None and hook.oom_words(ex) is None
    model = podstate.app_exit(pdir, "hog")
    assert model is not None and (model.oom, model.memory_limit) == (False, None)
    assert podlist.oom_apps(pdir, ["hog"]) == ()


def test_list_shows_the_pods_oom_kills() -> None:
    t = datetime(2026, 1, 2, tzinfo=UTC)
    entry = podlist.PodListEntry(
        UUID, ["hog"], ["h"], podlist.PodState.EXITED, t, t, exit_code=137, oom=("hog",)
    )
    out = podlist.PodList([entry])
    assert re.split(r"\s{2,}", out.text().splitlines()[1])[3] == "exited (oom)"
    assert out.data()[0]["oom"] == ["hog"]
    calm = podlist.PodList([podlist.PodListEntry(UUID, ["a"], ["i"], entry.state, t, t)])
    assert "(oom)" not in calm.text() and calm.data()[0]["oom"] == []
