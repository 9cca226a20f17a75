"""The exit hook's decisions, which ``podmgr run`` shares when attached."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.parametrize(
    ("app", "exit", "others_running", "policy", "stops", "restarting_a"),
    [
        # The last app to end ends the pod, whatever the policy.
        ("a", ("success", "exited", 0, None), False, "on-any-failure", True, False),
        ("a", ("success", "exited", 0, None), True, "on-any-failure", False, False),
        ("a", ("exit-code", "exited", 3, None), True, "on-any-failure", True, False),
        ("a", ("exit-code", "exited", 3, None), True, "on-all", False, False),
        ("a", ("success", "exited", 0, None), True, "on-any", True, False),
        # machinectl terminate: the leader (the first app) stopped by a signal, cleanly.
        ("a", ("success", "killed", 15, "TERM"), True, "on-all", True, False),
        ("b", ("success", "killed", 15, "TERM"), True, "on-all", False, False),
        # An app that systemd restarts cannot lead (see hook.leader).
        ("b", ("success", "killed", 15, "TERM"), True, "on-all", True, True),
    ],
)
def test_exit_policy_decides_whether_an_app_ends_its_pod(
    app: str,
    exit: tuple[str, str, int, str | None],
    others_running: bool,
    policy: str,
    stops: bool,
    restarting_a: bool,
) -> None:
    from podmgr import hook

    apps: list[dict[str, Any]] = [{"name": n, "unit": f"{n}.service"} for n in "ab"]
    if restarting_a:
        apps[0]["restart"] = "on-failure"  # so b leads
    assert hook.stops_pod(apps, app, exit, others_running, policy) is stops


def test_the_exit_hook_stands_by_while_run_holds_the_attach_lock() -> None:
    from podmgr import systemd, units

    plan = units.PodPlan(
        uuid="00000000-0000-0000-0000-000000000001",
        apps=(),
        exit_hook=("/usr/bin/python3", "-S", "-m", "podmgr.hook", "/s", "u"),
        attach_lock="/s/pods/u/attached.lock",
    )
    props = units.exit_hook_properties(plan, "web")
    ((path, argv, ignore),) = props["ExecCondition"]
    # Exit status 1 (the lock is held) skips the hook, without failing it.
    assert argv == [path, "--nonblock", "--conflict-exit-code", "1", plan.attach_lock, "/bin/true"]
    assert path == "/usr/bin/flock" and ignore is False
    assert props["ExecStart"] == [(plan.exit_hook[0], [*plan.exit_hook, "web"], False)]
    assert dict(systemd.encode_properties(props))["ExecCondition"][0] == "a(sasb)"
    # Without a lock (a pod planned by an older podmgr), no condition.
    old = units.PodPlan(uuid=plan.uuid, apps=(), exit_hook=plan.exit_hook)
    assert "ExecCondition" not in units.exit_hook_properties(old, "web")
