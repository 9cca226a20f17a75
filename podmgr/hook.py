"""The exit hook: ``python3 -S -m podmgr.hook STATE_DIR UUID APP``.

Runs as an app's OnSuccess=/OnFailure= unit once systemd will not restart the app, unless
``podmgr run`` is attached to the pod and does the same itself (see
:func:`podmgr.units.exit_hook_properties`). It records the app's exit from
``$MONITOR_SERVICE_RESULT``, ``$MONITOR_EXIT_CODE`` and ``$MONITOR_EXIT_STATUS`` in
``apps/<app>/exit.json`` (and whether its memory limit killed it: :func:`out_of_memory`)
and applies the pod's exit policy by stopping the pod's slice.

It imports only the standard library and jeepney (through :mod:`podmgr.systemd`), and
runs with ``-S`` and an explicit PYTHONPATH: it is on the path of every pod's exit, and
click, pydantic and site's .pth files would triple its cost.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from podmgr import names
from podmgr.errors import SystemdError
from podmgr.fsutil import create_new

#: ActiveStates in which a unit counts as running.
RUNNING_STATES = frozenset({"active", "activating", "deactivating", "reloading"})


def alive(props: Mapping[str, Any]) -> bool:
    """Running, or about to: a queued start job leaves ActiveState inactive."""
    job = props.get("Job")
    return props.get("ActiveState") in RUNNING_STATES or bool(job and job[0])


def parse_exit(env: Mapping[str, str]) -> tuple[str, str | None, int | None, str | None]:
    """(result, code, status, signal name) from systemd's $MONITOR_* variables."""
    result = env.get("MONITOR_SERVICE_RESULT", "success")
    code = env.get("MONITOR_EXIT_CODE") or None
    raw = env.get("MONITOR_EXIT_STATUS", "")
    status: int | None = None
    sig: str | None = None
    if code == "exited" and raw.lstrip("-").isdigit():
        status = int(raw)
    elif code in ("killed", "dumped") and raw:
        sig = raw if not raw.isdigit() else signal.Signals(int(raw)).name.removeprefix("SIG")
        with contextlib.suppress(KeyError):
            status = 128 + int(signal.Signals[f"SIG{sig.removeprefix('SIG')}"])
    return result, code, status, sig


_CLD = {1: "exited", 2: "killed", 3: "dumped"}


def exit_from_unit(props: Mapping[str, Any]) -> tuple[str, str | None, int | None, str | None]:
    """The same as :func:`parse_exit`, from a service's D-Bus properties."""
    code = _CLD.get(int(props.get("ExecMainCode") or 0))
    raw = props.get("ExecMainStatus")
    env = {"MONITOR_SERVICE_RESULT": str(props.get("Result") or "success")}
    if code is not None:
        env["MONITOR_EXIT_CODE"] = code
        env["MONITOR_EXIT_STATUS"] = str(raw if raw is not None else "")
    return parse_exit(env)


def socket_apps(pdir: Path) -> set[str]:
    """The apps that have a socket unit: a port ``socketActivated`` in the reified pod
    manifest (read as plain JSON: the hook does without pydantic)."""
    try:
        manifest = json.loads((pdir / "manifest").read_bytes())
    except (OSError, ValueError):
        return set()
    return {
        str(ra.get("name"))
        for ra in manifest.get("apps") or ()
        if any(p.get("socketActivated") is True for p in (ra.get("app") or {}).get("ports") or ())
    }


def network_ends_with_pod(record: Mapping[str, Any], sockets: Collection[str]) -> bool:
    """Whether whoever ends the pod (pod.json's ``record``; ``sockets``: its
    :func:`socket_apps`) takes its network down: it has one of its own, and no socket
    units, which hold the netns until the slice has stopped them; the net unit's
    ``ExecStop=`` does it then."""
    return record.get("net", "host") != "host" and not sockets


def leader(apps: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The app registered with machined as the pod's leader process (pod.json's apps).

    machined stops a machine's unit when its leader process dies, so an app that systemd
    restarts cannot lead: the first app without --restart does; a pod whose apps all
    restart is not registered.
    """
    return next((a for a in apps if a.get("restart", "no") == "no"), None)


def _status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return {}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _is_ns_init(status: Mapping[str, str]) -> bool:
    nspid = status.get("NSpid", "").split()
    return len(nspid) > 1 and nspid[-1] == "1"


def app_process(main_pid: int) -> int:
    """The app's own process, given its unit's main process: podmgr-exec, the app's
    parent (docs/pods.md), or the app itself (a unit started otherwise). 0 if it is gone."""
    if not main_pid or _is_ns_init(_status(main_pid)):
        return main_pid
    try:
        with open(f"/proc/{main_pid}/task/{main_pid}/children", "rb") as f:
            children = [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        return 0
    inits = [c for c in children if _is_ns_init(_status(c))]
    return inits[0] if len(inits) == 1 else 0


def ignores_sigterm(main_pid: int) -> bool:
    """Whether SIGTERM cannot end the app of the unit whose main process is
    ``main_pid``: the app is PID 1 of its PID namespace (podmgr-exec), with no handler
    for it. The kernel delivers such a process no signal it does not handle but SIGKILL,
    so it would end only once systemd's stop timeout ran out and sent SIGKILL."""
    pid = app_process(main_pid)
    status = _status(pid) if pid else {}
    if not _is_ns_init(status):
        return False
    caught = int(status.get("SigCgt", "0").strip() or "0", 16)
    return not caught & (1 << (signal.SIGTERM - 1))


def kill_deaf_apps(
    sd: Any, pdir: Path, apps: Sequence[Mapping[str, Any]], states: Mapping[str, Mapping[str, Any]]
) -> None:
    """Before the pod's stop: SIGKILL to the running apps that SIGTERM cannot end
    (:func:`ignores_sigterm`; ``states``: their units' MainPID), which would otherwise
    hold the stop for systemd's stop timeout, as ``docker stop`` waits. What systemd
    sends after that timeout, at once; their end is recorded as the stop's, not as a
    failure (:func:`record_exit`)."""
    for a in apps:
        pid = int((states.get(a["unit"]) or {}).get("MainPID") or 0)
        if pid and ignores_sigterm(pid):
            with contextlib.suppress(OSError):
                names.stop_kill_marker(pdir, a["name"]).touch()
            with contextlib.suppress(SystemdError):
                sd.kill_unit(a["unit"], int(signal.SIGKILL))


#: Where the kernel's cgroup hierarchies are mounted.
CGROUP_ROOT = Path("/sys/fs/cgroup")


def oom_kill_count(text: str) -> int | None:
    """The ``oom_kill`` counter of a cgroup's ``memory.oom_control`` (v1) or
    ``memory.events`` (v2): lines of ``key value``. None if it has none."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def memory_oom_kills(uuid: str, unit: str, root: Path = CGROUP_ROOT) -> int | None:
    """How many processes the kernel's OOM killer has ended in the app unit's memory
    cgroup for exceeding its limit; None if the cgroup is gone or has no such counter.

    systemd nests ``podmgr-<hex>.slice`` in ``podmgr.slice``. On cgroup v1 (legacy or
    hybrid hosts) the counter is the memory controller's ``memory.oom_control`` and the
    only word of an OOM kill: systemd reports it as a SIGKILL like any other. On cgroup
    v2 it is ``memory.events``, which systemd itself watches (its ``oom-kill`` result).
    The kernel counts v1 kills in the cgroup they happened in only, not its parents, so
    the slice cannot stand in for a unit's cgroup that systemd has removed already."""
    path = f"podmgr.slice/{names.pod_slice(uuid)}/{unit}"
    for rel in (f"memory/{path}/memory.oom_control", f"{path}/memory.events"):
        try:
            with open(root / rel, "rb") as f:
                text = f.read(4096).decode(errors="replace")
        except OSError:
            continue
        count = oom_kill_count(text)
        if count is not None:
            return count
    return None


def memory_limit(pdir: Path, unit: str) -> int | None:
    """The app unit's MemoryMax= (bytes) from the pod's plan.json, whatever its version:
    its units are ``[name, properties, aux]``. None if it has no limit, or no plan."""
    try:
        plan = json.loads((pdir / "plan.json").read_bytes())
        props = next(u[1] for u in plan["units"] if u[0] == unit)
        limit = props.get("MemoryMax")
    except (OSError, ValueError, LookupError, TypeError, AttributeError, StopIteration):
        return None
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


#: The most of the kernel's log read (its ring buffer: 128 KiB to a few MiB).
MAX_KERNEL_LOG = 16 << 20


def kernel_log() -> str:
    """The kernel's log buffer, by syslog(2) (``dmesg``'s call; /dev/kmsg may be absent
    in a container). Empty if it cannot be read (no CAP_SYSLOG)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    size = min(int(libc.klogctl(10, None, 0)), MAX_KERNEL_LOG)  # SYSLOG_ACTION_SIZE_BUFFER
    if size <= 0:
        return ""
    buf = ctypes.create_string_buffer(size)
    n = int(libc.klogctl(3, buf, size))  # SYSLOG_ACTION_READ_ALL: the buffer, left as is
    return buf.raw[: max(n, 0)].decode(errors="replace")


def kernel_logged_oom(log: str, unit: str) -> bool:
    """Whether the kernel's log (:func:`kernel_log`) tells of an OOM kill of a process
    of ``unit`` for exceeding a memory cgroup's limit: its ``oom-kill:`` line with
    ``constraint=CONSTRAINT_MEMCG`` and the unit's cgroup as ``task_memcg`` (a path from
    the hierarchy's root, whatever cgroup namespace systemd runs in)."""
    for line in log.splitlines():
        _, found, fields = line.partition("oom-kill:")
        if not found:
            continue
        kv = dict(f.partition("=")[::2] for f in fields.split(","))
        if kv.get("constraint") == "CONSTRAINT_MEMCG" and kv.get("task_memcg", "").endswith(
            f"/{unit}"
        ):
            return True
    return False


def out_of_memory(
    uuid: str, unit: str, exit: tuple[str, str | None, int | None, str | None]
) -> bool:
    """Whether an app's end (``exit``, as from :func:`parse_exit`) was the OOM killer's.

    On cgroup v2 systemd says so: its ``oom-kill`` result (from the cgroup's
    ``memory.events``). On cgroup v1 systemd reports a SIGKILL like any other; the memory
    cgroup's counter would tell (:func:`memory_oom_kills`), but systemd removes the cgroup
    as the unit stops, before ``run`` or the exit hook hear of it. What is left is the
    kernel's log, which names the cgroup (:func:`kernel_logged_oom`); only read for an
    app that SIGKILL ended. An app's unit name holds its pod's UUID, so a kill logged for
    it was of this pod; with ``--restart``, possibly of an earlier run of the app."""
    result, _code, _status, sig = exit
    if result == "oom-kill":
        return True
    if result == "success" or sig != "KILL":
        return False
    kills = memory_oom_kills(uuid, unit)
    if kills is not None:
        return kills > 0
    try:
        return kernel_logged_oom(kernel_log(), unit)
    except OSError:
        return False


def format_limit(n: int) -> str:
    """A memory limit as ``--memory`` takes it: ``32Mi``, or bytes when not a whole unit."""
    for suffix, size in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return f"{n} bytes"


def oom_words(exit: Mapping[str, Any]) -> str | None:
    """How an app's ``exit.json`` says that its memory limit killed it, or None."""
    if exit.get("oom") is not True:
        return None
    limit = exit.get("memory_limit")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return f"out of memory (limit {format_limit(limit)})"
    return "out of memory"


def record_exit(
    pdir: Path,
    app: str,
    exit: tuple[str, str | None, int | None, str | None],
    restarts: int | None,
    oom: bool = False,
) -> bool:
    """Write the app's ``exit.json`` unless it has one (``podmgr run`` may have been
    first, from the same unit properties); whether this call wrote it. ``oom``: the
    memory limit killed it (:func:`out_of_memory`); with it, ``memory_limit``."""
    result, code, status, sig = exit
    if result != "success" and sig == "KILL" and names.stop_kill_marker(pdir, app).exists():
        # The pod's own stop ended it so (kill_deaf_apps), in place of a SIGTERM that it
        # could not receive: stopped, as SIGTERM would have been, not failed.
        result = "success"
        oom = False
    exit_record: dict[str, Any] = {
        "name": app, "result": result, "code": code, "status": status, "signal": sig,
        "restarts": restarts, "time": datetime.now(UTC).isoformat(),
    }  # fmt: skip
    if oom:
        exit_record["oom"] = True
        unit = names.app_service(pdir.name, app)
        exit_record["memory_limit"] = memory_limit(pdir, unit)
    return create_new(names.exit_record(pdir, app), json.dumps(exit_record))


def app_exited(state: Path, uuid: str, app: str, env: Mapping[str, str], bus: str | None) -> None:
    from podmgr import systemd

    pdir = state / "pods" / uuid
    record = json.loads((pdir / "pod.json").read_bytes())
    apps = record["apps"]
    me = next((a for a in apps if a["name"] == app), None)
    if me is None:
        return
    result, code, status, sig = parse_exit(env)
    with systemd.connect(bus) as sd:
        props: Mapping[str, Any] = {}
        with contextlib.suppress(SystemdError):
            props = sd.read_properties([me["unit"]], ("NRestarts", "ActiveState", "Job"))[
                me["unit"]
            ]
        restarts = props.get("NRestarts")
        if alive(props):
            # systemd 252 also fires OnSuccess= when it restarts a unit, so the app is not
            # done. But should it end for good while this hook still runs, that final
            # trigger merges into this very run and would be lost; so wait while the app
            # flaps, and record its end if it comes. Once it has run for a while without
            # ending, it is up: leave (a later end starts a new run of the hook).
            try:
                final = sd.wait_for_state(me["unit"], ("inactive", "failed"), timeout=3.0)
            except SystemdError:
                return
            result, code, status, sig = exit_from_unit(final)
            restarts = final.get("NRestarts", restarts)
        oom = out_of_memory(uuid, me["unit"], (result, code, status, sig))
        record_exit(pdir, app, (result, code, status, sig), restarts, oom)
        app_ended(sd, pdir, record, app, (result, code, status, sig))


def app_ended(
    sd: Any,
    pdir: Path,
    record: Mapping[str, Any],
    app: str,
    exit: tuple[str, str | None, int | None, str | None],
) -> None:
    """An app of the pod (``record``: pod.json) has ended for good, its exit recorded:
    unless the pod is stopping as a whole, close the app's socket-activated ports, so
    that traffic cannot start it again behind the exit policy's back, and stop the pod
    if :func:`stops_pod`. The exit hook's work, and ``podmgr run``'s when attached."""
    apps = record["apps"]
    slice_unit = names.pod_slice(record["uuid"])
    unit = next(a["unit"] for a in apps if a["name"] == app)
    sockets = socket_apps(pdir)
    others = [a["unit"] for a in apps if a["name"] != app]
    states = sd.read_properties([slice_unit, *others], ("ActiveState", "Job", "MainPID"))
    pod = states.pop(slice_unit)
    if pod["ActiveState"] in ("deactivating", "inactive") or pod["Job"][0]:
        # A slice's only job once its apps run is its stop: the pod is ending.
        _unmount_roots(apps)
        _teardown_network(pdir, record, sockets)
        return
    if app in sockets:
        with contextlib.suppress(SystemdError):
            sd.stop_unit(unit.removesuffix(".service") + ".socket", wait=False)
    policy = record.get("exit_policy", "on-any-failure")
    if stops_pod(apps, app, exit, any(map(alive, states.values())), policy):
        kill_deaf_apps(sd, pdir, [a for a in apps if a["name"] != app], states)
        # Once the stop job is queued no app starts again, so the roots can go.
        sd.stop_unit(slice_unit, wait=False)
        _unmount_roots(apps)
        _teardown_network(pdir, record, sockets)


def _unmount_roots(apps: Sequence[Mapping[str, Any]]) -> None:
    from podmgr.rootfs import unmount_roots

    unmount_roots([a["rootfs"] for a in apps])


def _teardown_network(pdir: Path, record: Mapping[str, Any], sockets: Collection[str]) -> None:
    """The pod's network, as the pod ends: a pod that ``podmgr run`` started has no net
    unit to do it (launch._without_net_unit), and ``run`` may be gone; for another the
    net unit's ``ExecStop=`` then finds nothing left."""
    if not network_ends_with_pod(record, sockets):
        return
    from podmgr import network
    from podmgr.errors import PodmgrError

    try:
        network.teardown(pdir, record["uuid"])
    except PodmgrError as e:
        print(f"podmgr exit hook: pod {record['uuid']}: {e.message}", file=sys.stderr)


def stops_pod(
    apps: Sequence[Mapping[str, Any]],
    app: str,
    exit: tuple[str, str | None, int | None, str | None],
    others_running: bool,
    policy: str,
) -> bool:
    """Whether an app's end for good ends its pod (pod.json's apps; ``exit`` as from
    :func:`parse_exit`): by the exit policy, or because it was the leader, which
    ``machinectl terminate`` stops, and that means the whole pod. (PropagatesStopTo=
    would also fire when the leader merely exits.)"""
    result, code, status, _sig = exit
    lead = leader(apps)
    # Ended by SIGTERM: killed by it, or, as PID 1 of its namespace (which cannot die of
    # a signal it handles), exiting with 128 + SIGTERM as shells and most runtimes do.
    terminated = (code in ("killed", "dumped") and result == "success") or (
        code == "exited" and status == 128 + signal.SIGTERM
    )
    if terminated and lead and lead["name"] == app:
        return True
    failed = result != "success"
    return not others_running or policy == "on-any" or (policy == "on-any-failure" and failed)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python3 -m podmgr.hook STATE_DIR UUID APP", file=sys.stderr)
        return 2
    state, uuid, app = argv
    try:
        app_exited(Path(state), uuid, app, os.environ, os.environ.get(names.BUS_ENV))
    except Exception as e:
        print(f"podmgr exit hook: pod {uuid} app {app}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
