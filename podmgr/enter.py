"""``podmgr enter``: run a command inside a running app, confined exactly like the app.

rkt's ``enter`` gave the entered process every capability, no seccomp filter and no
cgroup (CVE-2019-10144, -10145, -10147). Here the command is a transient service built by
the same :func:`podmgr.units.app_properties` as the app itself: the same root directory,
user and groups, capability bounding and ambient sets, seccomp filter, no_new_privs,
environment, network and IPC namespaces (``JoinsNamespaceOf=`` the app's unit), in the
pod's slice. Only the life cycle differs: no restart, no event handlers, no exit hooks,
and the caller's stdin, stdout and stderr passed over D-Bus instead of the journal; on a
terminal, a pty of its own as its controlling terminal instead (:mod:`podmgr.terminal`).

Before starting it, the result is checked against the running app unit as systemd
reports it: the user and group must be the same, the seccomp filter identical, and the
capability sets and no_new_privs are intersected with the app's, so that the entered
command never holds anything the app does not.

``podmgr run --interactive`` gives a one-app pod's app its stdio the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from podmgr import logger, names, podstate, units
from podmgr.errors import (
    ConflictError,
    ExitCode,
    NotFoundError,
    PodmgrError,
    UsageError,
    require_root,
)
from podmgr.podstate import AppRecord, PodRecord

log = logger.get(__name__)

#: Shells tried, in order, when no command is given.
SHELLS = ("/bin/bash", "/bin/sh")
#: Signals that podmgr passes on to the command it waits for.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

# siginfo si_code values systemd reports as ExecMainCode.
_CLD_EXITED = 1


def enter_unit(uuid: str, app: str) -> str:
    # "enter" cannot start a pod's hex UUID, so this never collides with an app's unit.
    return f"{names.UNIT_PREFIX}enter-{names.pod_hex(uuid)}-{app}-{secrets.token_hex(4)}.service"


def stdio_properties(fds: Sequence[int]) -> dict[str, Any]:
    """Properties that give a unit these three file descriptors as stdin, stdout, stderr
    (systemd duplicates them when it receives the message)."""
    stdin, stdout, stderr = fds
    return {
        "StandardInputFileDescriptor": stdin,
        "StandardOutputFileDescriptor": stdout,
        "StandardErrorFileDescriptor": stderr,
    }


def with_stdio(
    props: Mapping[str, Any], fds: Sequence[int], tty: str | None = None
) -> dict[str, Any]:
    """``props`` with ``fds`` as the unit's stdio; with ``tty`` (a pty's slave, see
    :mod:`podmgr.terminal`), that terminal instead, as its controlling one too."""
    if tty is not None:
        from podmgr import terminal

        return terminal.with_terminal(props, tty, fds)
    out = {k: v for k, v in props.items() if k not in ("StandardOutput", "StandardError")}
    out.update(stdio_properties(fds))
    return out


def enter_properties(
    app: units.AppPlan,
    pod: units.PodPlan,
    *,
    app_unit: str,
    argv: Sequence[str],
    stdio: Sequence[int],
    join_pid: int | None = None,
    tty: str | None = None,
) -> dict[str, Any]:
    """The entered command's unit: the app's own properties, minus its life cycle, in
    the namespaces of the app's process ``join_pid`` (its PID namespace: the app's
    processes, and no other)."""
    entered = dataclasses.replace(
        app,
        exec=tuple(argv),
        pre_start=None,
        post_stop=None,
        restart=units.RestartPolicy.NO,
    )
    props = units.app_properties(
        entered,
        dataclasses.replace(pod, exit_hook=()),
        others=[app_unit],
        shim_mode=units.ShimMode.JOIN,
        join_pid=join_pid,
    )
    for key in ("OnSuccess", "OnFailure", "ExecStartPreEx", "ExecStopPostEx"):
        props.pop(key, None)
    # The command runs as given: systemd must not expand $VARS in it ("$$" in sh -c).
    props["ExecStartEx"] = [(p, a, [*f, "no-env-expand"]) for p, a, f in props["ExecStartEx"]]
    props["Description"] = f"podmgr pod {pod.uuid} app {app.name}: {' '.join(argv)}"[:200]
    props["SyslogIdentifier"] = f"{app.name}-enter"
    props["LogExtraFields"] = [*props.get("LogExtraFields", ()), "PODMGR_ENTER=1"]
    props["BindsTo"] = [*props.get("BindsTo", ()), app_unit]
    props["Restart"] = "no"
    props["Type"] = "exec"
    props["CollectMode"] = "inactive-or-failed"
    # Keeps the unit loaded, after it ends, until this client has read its exit status.
    props["AddRef"] = True
    return with_stdio(props, stdio, tty)


def _filter_names(value: Any) -> tuple[bool, set[str]]:
    allow, calls = value
    return bool(allow), {str(c).split(":", 1)[0] for c in calls}


def confine_to_running(props: dict[str, Any], running: Mapping[str, Any]) -> dict[str, Any]:
    """Never more than the running app: check identities, intersect privileges.

    ``running`` is the app unit's properties as systemd reports them.
    """
    out = dict(props)
    for key in ("User", "Group", "RootDirectory"):
        if key in running and str(running[key]) != str(props.get(key, "")):
            raise ConflictError(
                f"the app's unit runs with {key}={running[key]!r}, not {props.get(key)!r}",
                hint="the pod was started by another podmgr version; restart the pod",
            )
    if (
        "SystemCallFilter" in running
        and "SystemCallFilter" in props
        and _filter_names(running["SystemCallFilter"]) != _filter_names(props["SystemCallFilter"])
    ):
        raise ConflictError(
            "the app's unit has another seccomp filter than podmgr would give it",
            hint="the pod was started by another podmgr version; restart the pod",
        )
    if "CapabilityBoundingSet" in running:
        # What podmgr-exec needs to enter is its own, dropped before the command runs.
        out["CapabilityBoundingSet"] = int(props["CapabilityBoundingSet"]) & (
            int(running["CapabilityBoundingSet"]) | units.caps_mask(units.SHIM_JOIN_CAPS)
        )
    if "AmbientCapabilities" in out:
        out["AmbientCapabilities"] = int(out["AmbientCapabilities"]) & int(
            running.get("AmbientCapabilities", 0)
        )
    if running.get("NoNewPrivileges"):
        out["NoNewPrivileges"] = True
    return out


def default_command(rootfs: str) -> list[str]:
    for shell in SHELLS:
        path = _resolve(rootfs, shell)
        if path.is_file() and os.access(path, os.X_OK):
            return [shell]
    raise NotFoundError(f"the app has none of {', '.join(SHELLS)}", hint="give the command to run")


def resolve_command(app: AppRecord, argv: list[str]) -> list[str]:
    """argv with argv[0] made absolute by the app's $PATH inside its root."""
    from podmgr import rootfs as rootfs_mod

    if argv[0].startswith("/"):
        # Checked here: podmgr-exec could only say so from inside the app, as an exit.
        found = _resolve(app.rootfs, argv[0])
        if not (found.is_file() and os.access(found, os.X_OK)):
            raise NotFoundError(
                f"cannot run {argv[0]} in app {app.name}: no such executable file",
                hint="give the path of an executable inside the app",
            )
        return argv
    path_env = app.environment.get("PATH", units.APPC_PATH)
    try:
        return [rootfs_mod.find_exec(Path(app.rootfs), argv[0], path_env), *argv[1:]]
    except NotFoundError:
        raise NotFoundError(
            f"cannot run {argv[0]} in app {app.name}: not found in {path_env}",
            hint="give the command's absolute path inside the app",
        ) from None


def _resolve(rootfs: str, path: str) -> Path:
    from podmgr import rootfs as rootfs_mod

    return rootfs_mod.resolve(Path(rootfs), path)


def pick_app(record: PodRecord, name: str | None) -> AppRecord:
    if name is None:
        if len(record.apps) == 1:
            return record.apps[0]
        raise UsageError(
            f"pod {record.uuid} has {len(record.apps)} apps",
            hint="give --app " + "|".join(a.name for a in record.apps),
        )
    app = next((a for a in record.apps if a.name == name), None)
    if app is None:
        raise NotFoundError(
            f"pod {record.uuid} has no app {name!r}",
            hint="its apps: " + ", ".join(a.name for a in record.apps),
        )
    return app


def _std_fds() -> list[int]:
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
    return fds


def exit_code(status: Mapping[str, Any]) -> int:
    """A shell's idea of the exit code: the status, or 128 + the signal."""
    code = int(status.get("ExecMainCode") or 0)
    value = int(status.get("ExecMainStatus") or 0)
    if code == _CLD_EXITED or code == 0:
        return value
    return 128 + value


@contextlib.contextmanager
def forward_signals(bus: str | None, unit: str, who: str = "main") -> Iterator[None]:
    """While waiting, pass SIGINT, SIGTERM, SIGHUP and SIGQUIT on to the unit's process:
    the caller's terminal sends them to podmgr, not to the process in the pod."""
    from podmgr import systemd

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(Exception), systemd.connect(bus) as sd:
            sd.kill_unit(unit, signum, who=who)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def enter(
    state: Path,
    uuid: str,
    argv: Sequence[str] = (),
    *,
    app: str | None = None,
    bus: str | None = None,
    stdio: Sequence[int] | None = None,
) -> int:
    """Run ``argv`` in the app, wait for it, and return its exit code."""
    from podmgr import pod, systemd, terminal

    require_root("entering a pod")
    record = podstate.load(podstate.pod_dir(state, uuid))
    target = pick_app(record, app)
    if record.started is None:
        raise ConflictError(f"pod {uuid} has not been started", hint=f"podmgr run-prepared {uuid}")
    plan = pod.plan(state, record, pod.isolators_of(state, uuid, None))
    app_plan = next(a for a in plan.apps if a.name == target.name)
    fds = list(stdio) if stdio is not None else _std_fds()
    with systemd.connect(bus) as sd, contextlib.ExitStack() as stack:
        running = sd.unit_properties(target.unit)
        if running.get("ActiveState") != "active":
            raise ConflictError(
                f"app {target.name} of pod {uuid} is not running",
                hint=f"podmgr status {uuid}",
            )
        command = resolve_command(target, list(argv) or default_command(target.rootfs))
        from podmgr.hook import app_process

        join_pid = app_process(int(running.get("MainPID") or 0))
        if not join_pid:
            raise ConflictError(
                f"app {target.name} of pod {uuid} has no process to enter",
                hint=f"podmgr status {uuid}",
            )
        pty = None
        if stdio is None and terminal.wanted(fds):
            pty = stack.enter_context(terminal.open_pty(fds[0]))
        props = enter_properties(
            app_plan,
            plan,
            app_unit=target.unit,
            argv=command,
            stdio=fds,
            join_pid=join_pid,
            tty=pty.path if pty else None,
        )
        # The app's environment as systemd has it (AC_METADATA_URL was fixed at start).
        if running.get("Environment"):
            props["Environment"] = list(running["Environment"])
        if os.isatty(fds[0]) and os.environ.get("TERM"):
            props["Environment"] = [
                *(e for e in props["Environment"] if not e.startswith("TERM=")),
                f"TERM={os.environ['TERM']}",
            ]
        props = confine_to_running(props, running)
        unit = enter_unit(uuid, target.name)

        def run() -> dict[str, Any]:
            try:
                sd.start_transient_unit(unit, props)
            except systemd.JobFailedError:
                failed = sd.unit_status(unit)
                with contextlib.suppress(systemd.BusError):
                    sd.reset_failed_unit(unit)
                raise PodmgrError(
                    f"cannot run {command[0]} in app {target.name}"
                    f" (exit status {failed.get('ExecMainStatus')})",
                    hint="the command must exist in the app's root and be executable by its user",
                    exit_code=ExitCode.NOT_FOUND,
                ) from None
            return sd.wait_for_state(unit)

        with forward_signals(bus, unit):
            status = run() if pty is None else terminal.session(pty, fds, run)
        with contextlib.suppress(systemd.BusError):
            sd.reset_failed_unit(unit)
    return exit_code(status)


def run_interactive(state: Path, uuid: str, *, bus: str | None = None) -> int:
    """Start a prepared one-app pod with the caller's stdio as the app's (on a terminal,
    a pty of its own: :mod:`podmgr.terminal`); wait; return the pod's exit code. Signals
    from the terminal go to the app."""
    from podmgr import launch, terminal

    record = podstate.load(podstate.pod_dir(state, uuid))
    if len(record.apps) != 1:
        raise UsageError(
            f"--interactive needs a pod of one app; this one has {len(record.apps)}",
        )
    fds = _std_fds()
    with forward_signals(bus, record.apps[0].unit), contextlib.ExitStack() as stack:
        pty = None
        if terminal.wanted(fds):
            pty = stack.enter_context(terminal.open_pty(fds[0]))
        tty = pty.path if pty else None

        def run() -> int:
            return launch.wait(
                state,
                uuid,
                bus=bus,
                starting=lambda sd: launch.start(state, uuid, bus=bus, stdio=fds, tty=tty, sd=sd),
            )

        return run() if pty is None else terminal.session(pty, fds, run)
