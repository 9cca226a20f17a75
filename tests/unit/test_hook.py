"""The exit hook's decisions, which ``podmgr run`` shares when attached."""

from __future__ import annotations

import os
from pathlib import Path
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
        # ... or, as PID 1 of its namespace, exiting 128 + SIGTERM on it, as a shell does.
        ("a", ("exit-code", "exited", 143, None), True, "on-all", True, False),
        ("b", ("exit-code", "exited", 143, None), True, "on-all", False, False),
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


def test_the_exit_hook_stands_by_while_run_is_attached() -> None:
    """Attached, ``run`` starts the exit hooks with a condition systemd checks itself:
    the pod's lock through run's descriptor of the pod's directory."""
    from podmgr import launch, names, systemd, units

    uuid = "00000000-0000-0000-0000-000000000001"
    plan = units.PodPlan(
        uuid=uuid, apps=(), exit_hook=("/usr/bin/python3", "-S", "-m", "podmgr.hook", "/s", uuid)
    )
    hook = units.exit_hook_properties(plan, "web")
    assert hook["ExecStart"] == [(plan.exit_hook[0], [*plan.exit_hook, "web"], False)]
    # Detached (podmgr start), nothing holds the hooks back.
    assert "Conditions" not in hook and "ExecCondition" not in hook
    path = names.attached_condition(uuid, 4242, 7)
    assert path == "/proc/4242/fd/7/attached-00000000000000000000000000000001.lock"
    app = names.app_service(uuid, "web")
    hooks = [names.exit_hook_unit(uuid, "web"), names.exit_hook_unit(uuid, "web", failed=True)]
    other = ("podmgr-net-x.service", {"Type": "oneshot"})
    batch: launch.Batch = [(app, {"Type": "exec"}, [(h, hook) for h in hooks] + [other])]
    pdir = Path("/s/pods") / uuid
    ((name, props, aux),) = launch._attached_hooks(batch, pdir, [{"name": "web"}], path)
    assert (name, props) == (app, {"Type": "exec"})
    assert [h for h, _ in aux[:2]] == hooks
    # And once run has recorded the app's end: a hook whose job runs after run has
    # returned is skipped too, so run does not wait for the hooks.
    conds = [
        ("ConditionPathExists", False, True, path),
        ("ConditionPathExists", False, True, f"/s/pods/{uuid}/apps/web/exit.json"),
    ]
    for _h, p in aux[:2]:
        assert p["Conditions"] == conds
        assert dict(systemd.encode_properties(p))["Conditions"] == ("a(sbbs)", conds)
    assert aux[2] == other
    # The plan keeps the hook as it was (a template is cloned for other runs).
    assert "Conditions" not in hook


def test_attached_path_exists_exactly_while_attached(tmp_path: Path) -> None:
    """The path the hooks' condition tests exists while ``attach`` holds the pod, is gone
    after, and a second attach of the same pod is refused meanwhile."""
    from podmgr import launch
    from podmgr.errors import ConflictError

    uuid = "00000000-0000-0000-0000-000000000002"
    pdir = tmp_path / uuid
    pdir.mkdir()
    other = tmp_path / "00000000-0000-0000-0000-000000000003"
    other.mkdir()
    with launch.attach(pdir) as path:
        assert os.path.exists(path)
        assert path.startswith(f"/proc/{os.getpid()}/fd/")
        with pytest.raises(ConflictError), launch.attach(pdir):
            pass
        # Another pod's attach does not satisfy this pod's condition, nor the reverse.
        with launch.attach(other) as path2:
            assert os.path.exists(path2)
            assert not os.path.exists(path2.replace("0003.lock", "0002.lock"))
    assert not os.path.exists(path)


@pytest.mark.parametrize(
    ("exit", "ran"),
    [
        (None, False),  # nothing told: the start failed
        ({}, False),
        ({"ExecMainCode": 1, "ExecMainStatus": 3}, True),  # the app's own exit 3
        ({"ExecMainCode": 1, "ExecMainStatus": 0}, True),
        ({"ExecMainCode": 2, "ExecMainStatus": 9}, True),  # killed by SIGKILL
        ({"ExecMainCode": 1, "ExecMainStatus": 203}, False),  # systemd's EXIT_EXEC
        ({"ExecMainCode": 1, "ExecMainStatus": 226}, False),  # EXIT_NAMESPACE
        ({"ExecMainCode": 0, "ExecMainStatus": 0}, False),  # never started
    ],
)
def test_a_failed_start_job_whose_app_ran_is_a_start(exit: Any, ran: bool) -> None:
    from podmgr import launch

    assert launch.app_ran(exit) is ran
