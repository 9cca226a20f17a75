"""Starting a prepared pod and waiting for it: the start-up path, on plain JSON.

``prepare`` (:mod:`podmgr.pod`) resolves everything about a pod and writes, beside
``pod.json``, ``plan.json``: the ``StartTransientUnit`` calls that start it (unit names,
property mappings, auxiliary units) and the pod's sysctls. :func:`start` replays that plan;
:func:`wait` and :func:`run_attached` follow the pod to its end. None of this imports
pydantic or the manifest models: their import and set-up cost 250-350 ms, several times
what systemd needs to start a pod (``bench/pod_start``). ``pod.json`` and the apps'
``exit.json`` are read here as plain JSON, with the same version rule as
:func:`podmgr.podstate.load`.

A pod prepared by a podmgr whose plan format differs (or without ``plan.json``) is
planned again from its manifest by :func:`podmgr.pod.unit_batch`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podmgr import __version__, logger, names, sdnotify
from podmgr.errors import (
    ROOT_HINT,
    ConflictError,
    Interrupted,
    InvalidError,
    NotFoundError,
    PermissionDenied,
    PodmgrError,
    SystemdError,
    UsageError,
    require_root,
)
from podmgr.fsutil import atomic_write

if TYPE_CHECKING:
    from podmgr import journal

log = logger.get(__name__)

#: plan.json's format; a different one is planned again (see the module doc). 2: the
#: apps' roots are podmgr's mounts, not transient mount units (rootfs.mount_root). 3: no
#: flock(1) ExecCondition= in the exit hooks (names.attached_condition). 4: the slice is
#: made with the first unit, as an aux unit (pod.unit_batch).
PLAN_VERSION = 5
#: The newest pod.json version read here (``podstate.POD_RECORD_VERSION``).
POD_RECORD_VERSION = 1

#: (unit name, properties, [(auxiliary unit name, properties), …]) per StartTransientUnit.
Batch = list[tuple[str, dict[str, Any], list[tuple[str, dict[str, Any]]]]]


# ---- the plan ---------------------------------------------------------------------------


def write_plan(pdir: Path, batch: Batch, sysctls: Mapping[str, str]) -> None:
    """Write ``plan.json`` (at prepare time, with the pod's final paths in ``batch``)."""
    doc = {
        "version": PLAN_VERSION,
        "podmgr": __version__,
        "sysctls": dict(sysctls),
        "units": [[n, p, [[an, ap] for an, ap in aux]] for n, p, aux in batch],
    }
    from podmgr.systemd import to_plain

    atomic_write(pdir / "plan.json", json.dumps(doc, separators=(",", ":"), default=to_plain))


def _plan_doc(pdir: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads((pdir / "plan.json").read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as e:
        log.warning("pod %s: plan.json is corrupt (%s); planning again", pdir.name, e)
        return None
    if doc.get("version") != PLAN_VERSION or doc.get("podmgr") != __version__:
        return None
    return doc


def load_plan(pdir: Path) -> tuple[Batch, dict[str, str]] | None:
    """The pod's start plan, or None if it has none this podmgr can replay."""
    from podmgr.systemd import from_plain

    doc = _plan_doc(pdir)
    if doc is None:
        return None
    batch: Batch = [
        (n, from_plain(p), [(an, from_plain(ap)) for an, ap in aux]) for n, p, aux in doc["units"]
    ]
    return batch, dict(doc.get("sysctls", {}))


# ---- records ----------------------------------------------------------------------------


def load_record(pdir: Path) -> dict[str, Any]:
    """``pod.json`` as a dict (see :class:`podmgr.podstate.PodRecord` for its fields)."""
    try:
        data: dict[str, Any] = json.loads((pdir / "pod.json").read_bytes())
    except FileNotFoundError:
        raise NotFoundError(f"pod {pdir.name} not found") from None
    except PermissionError:
        raise PermissionDenied(
            f"cannot read pod {pdir.name}: permission denied", hint=ROOT_HINT
        ) from None
    except ValueError as e:
        raise InvalidError(f"pod {pdir.name}: pod.json is corrupt: {e}") from None
    if data.get("version", 0) > POD_RECORD_VERSION:
        raise InvalidError(
            f"pod record version {data['version']} is newer than this podmgr understands",
            hint="upgrade podmgr",
        )
    return data


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def timestamp() -> str:
    # The form pydantic writes for PodRecord's datetimes.
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def app_exit(pdir: Path, app: str) -> dict[str, Any] | None:
    """The app's ``exit.json`` (:class:`podmgr.podstate.AppExit`), or None."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        data = json.loads(names.exit_record(pdir, app).read_bytes())
        if isinstance(data, dict) and "result" in data and "time" in data:
            return data
    return None


def exit_status(result: str, status: int | None) -> int:
    """An app's exit code from its recorded result and status."""
    # "success" covers an app that the pod's own stop ended with SIGTERM: not a failure.
    if result == "success":
        return 0
    return status if status is not None and status != 0 else 1


def pod_exit_code(pdir: Path, apps: Sequence[str]) -> int | None:
    """The first failing app's exit status, 0 if none failed, None if none exited."""
    return exits_code([e for a in apps if (e := app_exit(pdir, a)) is not None])


def exits_code(exits: Sequence[dict[str, Any]]) -> int | None:
    """:func:`pod_exit_code` of the apps' exit records read already."""
    if not exits:
        return None
    failed = sorted(
        (e for e in exits if exit_status(e["result"], e.get("status")) != 0),
        key=lambda e: datetime.fromisoformat(e["time"]),
    )
    return exit_status(failed[0]["result"], failed[0].get("status")) if failed else 0


# ---- start ------------------------------------------------------------------------------


def start(
    state: Path,
    uuid: str,
    *,
    bus: str | None = None,
    stdio: Sequence[int] | None = None,
    tty: str | None = None,
    queued: Callable[[], object] | None = None,
    sd: Any = None,
    attached: str | None = None,
) -> None:
    """Start a prepared pod's units; returns once every app's start job is done.

    ``stdio``: three file descriptors to give the (only) app as stdin, stdout and stderr
    instead of the journal (``run --interactive``); with ``tty`` (a pty's slave), that
    terminal instead (:mod:`podmgr.terminal`). ``queued``: called once systemd has
    queued the start jobs, while this waits for them. ``sd``: the caller's connection to
    systemd (:func:`wait`'s), to use instead of one of its own; the caller then follows
    the pod, and its registration with machined is not waited for. ``attached``: the
    path that exists while the caller is attached (:func:`attach`)."""
    from podmgr import userdb

    require_root("starting a pod")
    pdir = state / "pods" / uuid
    record = load_record(pdir)
    if record.get("started") is not None:
        raise ConflictError(f"pod {uuid} has been started already", hint="prepare a new pod")
    apps = record["apps"]
    planned = load_plan(pdir)
    if planned is None:
        from podmgr import pod

        planned = pod.replan(state, uuid)
    batch, sysctls = planned
    if stdio is not None:
        from podmgr.enter import with_stdio

        if len(apps) != 1:
            raise UsageError("only a pod of one app can have the caller's terminal")
        batch = [
            (n, with_stdio(p, stdio, tty) if n == apps[0]["unit"] else p, x) for n, p, x in batch
        ]
    if attached is not None:
        batch = _attached_hooks(batch, pdir, apps, attached)
        batch = _without_net_unit(batch, uuid)
    from podmgr import metadata

    # Decided now, not at prepare: whether the metadata service is there; asking also
    # has it started, if it was not, before the apps' first requests.
    batch = metadata.unadvertised(batch)
    userdb.ensure(
        [a["uid"] for a in apps],
        [g for a in apps for g in (a["gid"], *a.get("supplementary_gids", ()))],
    )
    record["started"] = timestamp()
    record["boot_id"] = boot_id()
    atomic_write(pdir / "pod.json", json.dumps(record, indent=1))
    host = record.get("net", "host") == "host"
    if not host:
        from podmgr import network
    from podmgr.rootfs import mount_root, unmount_roots

    roots = [a["rootfs"] for a in apps]
    try:
        for a in apps:
            mount_root(a["rootfs"], a["lower"])
        if not host:
            network.setup(
                pdir,
                uuid,
                record["net"],
                record.get("networks", ()),
                ports=[network.PortMapping(*p) for p in record.get("ports", ())],
                sysctls=sysctls,
            )
        if sd is not None:
            _start_units(sd, uuid, apps, batch, queued, followed=True)
        else:
            from podmgr import systemd

            with systemd.connect(bus) as own:
                _start_units(own, uuid, apps, batch, queued, followed=False)
    except BaseException as e:
        # Whatever got attached goes, also when the net unit's ExecStop did it already.
        unmount_roots(roots)
        if not host:
            try:
                network.teardown(pdir, uuid)
            except PodmgrError as e2:
                log.warning("%s", e2.message)
        _record_start_error(pdir, record, e)
        raise


def _record_start_error(pdir: Path, record: dict[str, Any], e: BaseException) -> None:
    """Say in pod.json why the start failed: ``list`` and ``status`` show the pod as
    failed, with this, not as exited with no exit code. (``podmgr start`` then removes
    the pod; ``run`` and ``run-prepared`` leave it for the user to see, and gc.)"""
    if isinstance(e, PodmgrError):
        why = e.message
    elif isinstance(e, KeyboardInterrupt):
        why = "interrupted"
    else:
        why = f"{type(e).__name__}: {e}"
    record["start_error"] = why
    try:
        atomic_write(pdir / "pod.json", json.dumps(record, indent=1))
    except OSError as err:  # a full disk, often enough the very cause
        log.warning("pod %s: cannot record its failed start: %s", pdir.name, err.strerror)


def _attached_hooks(
    batch: Batch, pdir: Path, apps: Sequence[Mapping[str, Any]], path: str
) -> Batch:
    """``batch`` with the pod's exit hooks skipped while ``path`` exists, and once the
    app's end is recorded (its ``exit.json``): systemd tests both in PID 1 when the hook's
    job runs (names.attached_condition), which may be after run has returned. So run need
    not wait for the hooks it has done the work of; one whose run died before recording
    the app's end runs."""
    hooks = {
        names.exit_hook_unit(pdir.name, a["name"], failed=f): a["name"]
        for a in apps
        for f in (False, True)
    }

    def held(name: str, props: dict[str, Any]) -> dict[str, Any]:
        if name not in hooks:
            return props
        # (type, trigger, negate, parameter): ConditionPathExists=!path
        recorded = str(names.exit_record(pdir, hooks[name]))
        cond = [("ConditionPathExists", False, True, p) for p in (path, recorded)]
        return {**props, "Conditions": cond}

    return [(n, p, [(an, held(an, ap)) for an, ap in aux]) for n, p, aux in batch]


def _without_net_unit(batch: Batch, uuid: str) -> Batch:
    """``batch`` without the pod's net unit, for ``run``, which tears the network down
    itself once the apps have ended, as the exit hooks do should run die: the unit's
    ``ExecStop=`` would be one more process for systemd to start (20 ms) as the pod ends,
    and to find nothing to do. Not with socket units, which hold the netns until the
    slice stops them: the net unit's stop comes after theirs."""
    net = names.net_unit(uuid)
    if not any(n == net for n, _, _ in batch) or any(
        an.endswith(".socket") for _, _, aux in batch for an, _ in aux
    ):
        return batch

    def unbound(props: dict[str, Any]) -> dict[str, Any]:
        out = dict(props)
        for key in ("BindsTo", "After"):
            if key in out:
                left = [u for u in out[key] if u != net]
                if left:
                    out[key] = left
                else:
                    del out[key]
        return out

    return [(n, unbound(p), x) for n, p, x in batch if n != net]


def _start_units(
    sd: Any,
    uuid: str,
    apps: Sequence[Mapping[str, Any]],
    batch: Batch,
    queued: Callable[[], object] | None,
    *,
    followed: bool,
) -> None:
    """Start the batch over ``sd`` and register the pod with machined. ``followed``: the
    caller watches the apps (wait), so it neither waits for machined nor fails the start
    for an app whose start job failed: the watch tells that app's exit."""
    # A Type=exec service whose process exits at once with a failure may fail its start
    # job although it ran: systemd saw the exit before the exec (1 run in 60 of
    # `sh -c "exit 3"`). Unfollowed, the start fails only if the app did not run.
    from podmgr.execshim import PRIVATE_PIDS_VERSION, with_private_pids
    from podmgr.systemd import JobFailedError

    if sd.manager_version() >= PRIVATE_PIDS_VERSION:
        batch = [
            (n, with_private_pids(p), [(an, with_private_pids(ap)) for an, ap in x])
            for n, p, x in batch
        ]
    try:
        results = sd.start_transient_units(batch, queued=queued, tolerate=[a["unit"] for a in apps])
        for r in results:
            if r.result == "done":
                continue
            if not followed and not app_ran(r.exit):
                raise JobFailedError(
                    f"starting {r.unit}: job {r.result}", unit=r.unit, result=r.result
                )
            log.info("pod %s: the start job of %s: %s; it ran: %s", uuid, r.unit, r.result, r.exit)
    except PodmgrError:
        teardown_units(sd, uuid, ())  # the roots go with the caller's cleanup
        raise
    if not followed:
        _register_machine(sd, uuid, apps)


#: siginfo's si_code for a child's end (ExecMainCode): exited, killed, dumped core.
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
#: Exit statuses systemd's executor gives when it could not set an app up or exec it
#: (EXIT_CHDIR … EXIT_BPF, systemd.exec(5)); an app's own exit is rarely among them.
SETUP_FAILURES = range(200, 246)


def app_ran(exit: Mapping[str, Any] | None) -> bool:
    """Whether a service whose start job failed had run its app (its ExecMainCode and
    ExecMainStatus, as :class:`podmgr.systemd.JobResult` has them): it exited with a
    status of its own, or a signal ended it."""
    if not exit:
        return False
    code, status = exit.get("ExecMainCode"), exit.get("ExecMainStatus")
    if code in (CLD_KILLED, CLD_DUMPED):
        return True
    return code == CLD_EXITED and status not in SETUP_FAILURES


def _register_machine(sd: Any, uuid: str, apps: Sequence[Mapping[str, Any]]) -> None:
    from podmgr.hook import leader
    from podmgr.systemd import SERVICE_IFACE, BusError, unit_path

    lead = leader(apps)
    if lead is None:
        log.info("pod %s: every app restarts; not registered with machined", uuid)
        return
    try:
        pid = int(sd.get_property(unit_path(lead["unit"]), SERVICE_IFACE, "MainPID") or 0)
    except BusError as e:
        log.info("pod %s not registered with machined: %s", uuid, e)
        return
    _register_leader(sd, uuid, lead, pid, wait=True)


def _register_leader(sd: Any, uuid: str, lead: Mapping[str, Any], pid: int, *, wait: bool) -> None:
    from podmgr.hook import app_process
    from podmgr.systemd import BusError

    # The app's own process, in its namespaces (machinectl shell, login), not
    # podmgr-exec's, its parent; which forks it as systemd's start job ends.
    deadline = time.monotonic() + 0.5
    while pid and not (app := app_process(pid)) and time.monotonic() < deadline:
        time.sleep(0.002)
    pid = app if pid else 0
    if not pid:
        return  # ended already
    machine = names.machine_name(uuid)
    try:
        sd.register_machine(
            machine, names.pod_hex(uuid), pid, lead["rootfs"], service="podmgr", wait=wait
        )
    except BusError as e:
        # machined is optional (systemd-container); the pod runs without it.
        log.info("pod %s not registered with machined: %s", uuid, e)


def teardown_units(sd: Any, uuid: str, roots: Sequence[str], services: Sequence[str] = ()) -> None:
    """Stop a pod's slice (so its apps too), unmount its apps' roots, reset what failed."""
    from podmgr.rootfs import unmount_roots
    from podmgr.systemd import BusError

    slice_unit = names.pod_slice(uuid)
    with contextlib.suppress(BusError):
        sd.stop_unit(slice_unit)
    unmount_roots(roots)
    for name in [slice_unit, *services]:
        with contextlib.suppress(BusError):
            sd.reset_failed_unit(name)


#: How long ``run`` waits for a pod to end before it follows the pod's output.
FOLLOW_AFTER = 0.1


# ---- wait and run attached ----------------------------------------------------------------


def wait(
    state: Path,
    uuid: str,
    *,
    bus: str | None = None,
    timeout: float | None = None,
    attached: bool = False,
    starting: Callable[[Any], object] | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> int:
    """Block until every app of the pod has ended; return the pod's exit code.

    ``starting``: called with the connection to systemd once the apps are watched, to
    start them (over it, or another); then no app's exit can be missed, however soon it
    comes. ``attached``: the caller holds the pod's
    attach lock (:func:`attach`), so the exit hooks leave the pod to it: record each
    app's end and apply the exit policy here, as the hook would (:mod:`podmgr.hook`).
    ``meanwhile``: run in a thread once every app has ended, beside the pod's teardown
    (``run``'s last lines of output); it must handle its own errors."""
    from podmgr import systemd

    pdir = state / "pods" / uuid
    record = load_record(pdir)
    apps = record["apps"]
    slice_unit = names.pod_slice(uuid)
    with systemd.connect(bus) as sd:
        left = {a["unit"]: a for a in apps}
        running = None
        if starting is not None:
            # The pod is registered with machined once its leader's process has run
            # FOLLOW_AFTER, as the watch sees it (in the signals of the units it starts):
            # no round trip for its MainPID right behind the start, and none waits for
            # machined. A pod done sooner is not registered: no one could
            # have seen it in machinectl, and machined's calls to systemd as it
            # registered, then dropped the pod competed with the pod's start and end
            # (4 ms a run, A/B).
            def running(unit: str, pid: int) -> None:
                # Not before the start: podmgr.hook is imported meanwhile (prefetch).
                from podmgr.hook import leader

                lead = leader(apps)
                if lead is not None and unit == lead["unit"]:
                    _register_leader(sd, uuid, lead, pid, wait=False)

        # idle: an app whose start (or restart) job is queued has not ended.
        exits = sd.watch(
            list(left),
            timeout=timeout,
            idle=True,
            jobs=starting is not None,
            running=running,
            running_after=FOLLOW_AFTER,
        )
        if starting is not None:
            starting(sd)
        # Not before: run_attached's start imports it meanwhile (prefetch).
        from podmgr.hook import (
            app_ended,
            exit_from_unit,
            network_ends_with_pod,
            out_of_memory,
            record_exit,
            socket_apps,
        )

        unrecorded = len(apps)
        for unit, final in exits:
            a = left.pop(unit)
            ex = exit_from_unit(final)
            oom = out_of_memory(uuid, unit, ex)
            # What the app's exit hook records from the same properties; whichever of
            # the two comes first writes it.
            with contextlib.suppress(OSError):
                record_exit(pdir, a["name"], ex, final.get("NRestarts"), oom)
                unrecorded -= 1
            if attached and left:
                app_ended(sd, pdir, record, a["name"], ex)
        tail = None
        if meanwhile is not None:
            tail = threading.Thread(target=meanwhile, name="meanwhile")
            tail.start()
        # No app is left, so the pod is done, whatever its exit policy: stop its slice
        # (its mounts and network go with it), as the last exit hook would. Not the
        # network of a pod with socket units, which hold the netns until the slice stops
        # them: its net unit's ExecStop= does it.
        net = network_ends_with_pod(record, socket_apps(pdir))

        def teardown() -> None:
            from podmgr import network

            try:
                network.teardown(pdir, uuid)
            except PodmgrError as e:
                log.info("pod %s: %s; rm or gc retries", uuid, e.message)

        if net and not attached:
            # First: the net unit's ExecStop= then finds nothing to do and starts no
            # Python of its own (units.NET_STOP_GUARD).
            teardown()
        from podmgr.rootfs import unmount_roots

        roots = [a["rootfs"] for a in apps]

        def beside() -> None:
            # While systemd stops the slice: every app has ended, and attached, the pod
            # has no net unit (_without_net_unit).
            if net and attached:
                teardown()
            unmount_roots(roots)

        try:
            sd.stop_unit(slice_unit, meanwhile=beside)
        except systemd.NoSuchUnitError:
            beside()
        # Exit hooks started when their apps ended; once they are done nothing of the
        # pod's is left running. Attached, each is skipped (_attached_hooks), now or once
        # this has returned, if its app's end is recorded.
        if not attached or unrecorded:
            _await_hooks(sd, uuid)
        if tail is not None:
            tail.join()
    code = pod_exit_code(pdir, [a["name"] for a in apps])
    return 0 if code is None else code


def _await_hooks(sd: Any, uuid: str, timeout: float = 30.0) -> None:
    from podmgr.systemd import BusError

    pattern = f"{names.UNIT_PREFIX}exit*-{names.pod_hex(uuid)}-*.service"
    try:
        busy = [
            u.name for u in sd.list_units([pattern]) if u.active_state != "inactive" or u.job_id
        ]
        if busy:
            for _unit, _props in sd.watch(busy, timeout=timeout, idle=True):
                pass
    except BusError:
        return
    except SystemdError:
        log.warning("pod %s: exit hooks still running", uuid)


@contextlib.contextmanager
def attach(pdir: Path) -> Iterator[str]:
    """Hold the pod's attach lock (see :func:`wait`); the kernel drops it with us. Yields
    the path that exists meanwhile (:func:`podmgr.names.attached_condition`)."""
    import fcntl

    uuid = pdir.name
    # O_PATH: a descriptor of the directory itself, which the exit hooks' condition goes
    # through (/proc/PID/fd/N); it reads nothing.
    dir_fd = os.open(pdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(names.attach_lock(uuid), flags, 0o600, dir_fd=dir_fd)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConflictError(f"pod {uuid} is attached already") from None
            yield names.attached_condition(uuid, os.getpid(), dir_fd)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def prefetch(*modules: str, then: Callable[[], object] | None = None) -> None:
    """Import ``modules`` in a thread, then call ``then``: called while this one waits
    for systemd or the bus (the GIL is free then), it spares their time later. A module
    imported meanwhile by this thread waits for the other's import to finish (import
    locks)."""
    import importlib

    def imports() -> None:
        for m in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(m)
        if then is not None:
            with contextlib.suppress(Exception):
                then()

    threading.Thread(target=imports, name="prefetch", daemon=True).start()


def _preload_journal() -> None:
    from podmgr import sdjournal

    sdjournal.preload()


def stop(state: Path, uuid: str, *, force: bool = False, bus: str | None = None) -> None:
    """Stop a started pod: SIGTERM (SIGKILL with ``force``) through its slice."""
    import signal

    from podmgr import systemd
    from podmgr.rootfs import unmount_roots

    require_root("stopping a pod")
    record = load_record(state / "pods" / uuid)
    if record.get("started") is None:
        raise ConflictError(f"pod {uuid} has not been started", hint=f"podmgr rm {uuid}")
    with systemd.connect(bus) as sd:
        slice_unit = names.pod_slice(uuid)
        if force:
            with contextlib.suppress(systemd.BusError):
                sd.kill_unit(slice_unit, int(signal.SIGKILL))
        else:
            from podmgr.hook import kill_deaf_apps

            units = [a["unit"] for a in record["apps"]]
            kill_deaf_apps(
                sd, state / "pods" / uuid, record["apps"], sd.read_properties(units, ("MainPID",))
            )
        with contextlib.suppress(systemd.NoSuchUnitError):
            sd.stop_unit(slice_unit)
    # Once the apps are gone (the exit hooks do the same, perhaps after this returns).
    unmount_roots([a["rootfs"] for a in record["apps"]])
    pdir = state / "pods" / uuid
    from podmgr.hook import network_ends_with_pod, socket_apps

    if network_ends_with_pod(record, socket_apps(pdir)):
        # A pod that run started has no net unit to have done it as the slice stopped.
        from podmgr import network

        network.teardown(pdir, uuid)


def run_attached(
    state: Path,
    uuid: str,
    *,
    bus: str | None = None,
    emit: Callable[[Any], None],
    follow_logs: bool = True,
) -> int:
    """Start a prepared pod, stream its apps' output, and return its exit code.

    Attached (:func:`attach`): this applies the pod's exit policy, not the exit hooks.
    Ctrl-C or SIGTERM stops the pod (then returns 130)."""
    # The output is followed (journalctl -f) only once the pod has run FOLLOW_AFTER: a
    # pod that is done by then gets one read at the end, and no follower competes with
    # systemd for the CPU while the pod starts. The follower starts from a point in time
    # before the pod's start, not from the journal's tail, so nothing is lost.
    since = f"@{int(time.time()) - 1}"
    lock = threading.Lock()
    follower: journal.Follower | None = None
    pump: threading.Thread | None = None
    tailed = False

    def follow() -> None:
        nonlocal follower, pump
        from podmgr import journal

        with lock:
            if tailed:
                return
            f = follower = journal.Follower(uuid, since=since, all_lines=True)

            def forward() -> None:
                for e in f:
                    emit(e)

            pump = threading.Thread(target=forward, daemon=True)
            pump.start()

    timer = threading.Timer(FOLLOW_AFTER, follow) if follow_logs else None

    def tail() -> None:
        # Once: beside the pod's teardown, or after an interruption. journalctl -f shows
        # new entries up to 250 ms late (journald batches its change notifications), so
        # the last lines come from a read of their own, after journald has written out
        # what the apps logged.
        nonlocal tailed
        with lock:
            if tailed or timer is None:
                return
            tailed = True
            timer.cancel()
        if timer.is_alive():
            timer.join()  # a thread left running would cost the fast exit (__main__.entry)
        from podmgr import journal

        try:
            journal.sync()
        except PodmgrError as e:
            log.warning("%s", e.message)
        after = None
        if follower is not None:
            follower.close()
            if pump is not None:
                pump.join(timeout=5)
            after = follower.cursor
        with contextlib.suppress(Exception):
            for line in journal.read_tail(uuid, after_cursor=after, since=None if after else since):
                emit(line)

    def starting(sd: Any) -> None:
        # What the rest of the run imports, imported while systemd starts the pod.
        start(
            state,
            uuid,
            bus=bus,
            queued=lambda: prefetch("podmgr.hook", "podmgr.journal", then=_preload_journal),
            sd=sd,
            attached=attached,
        )
        # Under systemd (a podmgr-generator unit, Type=notify): every app's start job is
        # done.
        sdnotify.notify(f"READY=1\nSTATUS=pod {uuid} running")
        if timer is not None:
            timer.start()

    interrupted = False
    # Not ctypes (the roots' mount(2)) in a thread while this one connects and starts:
    # before the start this thread waits for little but the GIL, which a thread that
    # imports holds for up to the switch interval (5 ms) each time (2-3 ms a run, A/B).
    try:
        with attach(state / "pods" / uuid) as attached:
            code = wait(state, uuid, bus=bus, attached=True, starting=starting, meanwhile=tail)
        sdnotify.notify(f"STOPPING=1\nSTATUS=pod {uuid} exited with {code}")
        _tell_oom(state / "pods" / uuid)
    except (KeyboardInterrupt, Interrupted, Exception) as e:
        # SIGTERM's exception can land in the middle of a D-Bus read, and what the
        # connection reads next is garbage (seen once in 200 runs: jeepney's KeyError on
        # a type code): interrupted all the same, and the pod is stopped.
        if isinstance(e, Exception) and not isinstance(e, Interrupted) and not Interrupted.received:
            raise
        interrupted = True
        sdnotify.notify(f"STOPPING=1\nSTATUS=stopping pod {uuid}")
        with contextlib.suppress(Exception):
            stop(state, uuid, bus=bus)
        code = 130
    finally:
        tail()
    if interrupted:
        raise Interrupted("interrupted; the pod was stopped")
    return code


def _tell_oom(pdir: Path) -> None:
    """One line on stderr per app that its memory limit killed: the exit status alone
    (137, SIGKILL) does not say why."""
    from podmgr.hook import oom_words

    with contextlib.suppress(PodmgrError, OSError, KeyError, TypeError):
        for a in load_record(pdir)["apps"]:
            ex = app_exit(pdir, a["name"])
            words = oom_words(ex) if ex is not None else None
            if words is not None:
                log.warning("app %s was killed: %s", a["name"], words)
