"""Operating on pods after prepare: run attached, stop, status, list, rm, gc, exit hook.

A pod's state is derived, never stored: from its directory (prepared? started? marked as
garbage? which boot?) and from systemd (are any of its app units still running?).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import shutil
import signal as signals
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from podmgr import journal, names, podstate, sdnotify
from podmgr.errors import ConflictError, Interrupted, SystemdError, UsageError, require_root
from podmgr.hook import RUNNING_STATES
from podmgr.podstate import AppExit, PodRecord

log = logging.getLogger(__name__)



class PodState(enum.StrEnum):
    PREPARED = "prepared"
    RUNNING = "running"
    EXITED = "exited"
    GARBAGE = "garbage"


def derive_state(record: PodRecord, active: Mapping[str, str]) -> PodState:
    if record.garbage is not None:
        return PodState.GARBAGE
    if record.started is None:
        return PodState.PREPARED
    # Pods that ran before a reboot are exited, whatever systemd says now.
    if record.boot_id and record.boot_id != podstate.boot_id():
        return PodState.EXITED
    if any(active.get(a.unit) in RUNNING_STATES for a in record.apps):
        return PodState.RUNNING
    return PodState.EXITED


def exit_status(ex: AppExit) -> int:
    # "success" covers an app that the pod's own stop ended with SIGTERM: not a failure.
    if ex.result == "success":
        return 0
    return ex.status if ex.status is not None and ex.status != 0 else 1





def pod_exit_code(pdir: Path, record: PodRecord) -> int | None:
    """The first failing app's exit status, 0 if none failed, None if none exited."""
    exits = [e for a in record.apps if (e := podstate.app_exit(pdir, a.name)) is not None]
    if not exits:
        return None
    failed = sorted((e for e in exits if exit_status(e) != 0), key=lambda e: e.time)
    return exit_status(failed[0]) if failed else 0


def _unit_states(sd: Any) -> dict[str, str]:
    return {u.name: u.active_state for u in sd.list_units([f"{names.UNIT_PREFIX}*.service"])}


# ---- run attached ------------------------------------------------------------------------


def wait(state: Path, uuid: str, *, bus: str | None = None, timeout: float | None = None) -> int:
    """Block until every app of the pod has ended; return the pod's exit code."""
    from podmgr import systemd

    pdir = podstate.pod_dir(state, uuid)
    record = podstate.load(pdir)
    with systemd.connect(bus) as sd:
        for a in record.apps:
            sd.wait_for_state(a.unit, timeout=timeout)
        _await_exit_records(pdir, record, timeout=30.0)
        # The slice outlives its apps only until the last exit hook stops it; should a
        # hook have failed, the apps are gone anyway, so finish the pod here.
        slice_unit = names.pod_slice(uuid)
        with contextlib.suppress(systemd.BusError):
            try:
                sd.wait_for_state(slice_unit, timeout=30.0 if timeout is None else timeout)
            except SystemdError:
                log.warning("pod %s: the exit hook did not stop the pod; stopping it", uuid)
                sd.stop_unit(slice_unit)
    code = pod_exit_code(pdir, record)
    return 0 if code is None else code


def _await_exit_records(pdir: Path, record: PodRecord, timeout: float) -> None:
    """The exit hooks run right after their apps end; give them a moment to record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(podstate.app_exit(pdir, a.name) is not None for a in record.apps):
            return
        time.sleep(0.01)
    log.warning("pod %s: no exit status recorded for some apps", record.uuid)


def wait_ready(
    state: Path, uuid: str, *, bus: str | None = None, timeout: float | None = None
) -> None:
    """Block until every app of the pod is active (or has ended)."""
    from podmgr import systemd

    record = podstate.load(podstate.pod_dir(state, uuid))
    with systemd.connect(bus) as sd:
        for a in record.apps:
            sd.wait_for_state(a.unit, ("active", "inactive", "failed"), timeout=timeout)


def stop(state: Path, uuid: str, *, force: bool = False, bus: str | None = None) -> PodRecord:
    from podmgr import systemd

    require_root("stopping a pod")
    pdir = podstate.pod_dir(state, uuid)
    record = podstate.load(pdir)
    if record.started is None:
        raise ConflictError(f"pod {uuid} has not been started", hint=f"podmgr rm {uuid}")
    with systemd.connect(bus) as sd:
        slice_unit = names.pod_slice(uuid)
        if force:
            with contextlib.suppress(systemd.BusError):
                sd.kill_unit(slice_unit, int(signals.SIGKILL))
        with contextlib.suppress(systemd.NoSuchUnitError):
            sd.stop_unit(slice_unit)
    return record


def run_attached(
    state: Path,
    uuid: str,
    *,
    bus: str | None = None,
    emit: Callable[[journal.Entry], None],
    follow_logs: bool = True,
) -> int:
    """Start a prepared pod, stream its apps' output, and return its exit code.

    Ctrl-C or SIGTERM stops the pod (then returns 130)."""
    from podmgr import pod

    # Follow from a point in time, not from the journal's tail: journalctl -f that starts
    # at the tail misses entries written while it sets up.
    since = f"@{int(time.time()) - 1}"
    follower = journal.Follower(uuid, since=since, all_lines=True) if follow_logs else None
    thread = None
    if follower is not None:
        f = follower

        def pump() -> None:
            for e in f:
                emit(e)

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
    interrupted = False
    try:
        pod.start(state, uuid, bus=bus)
        # Under systemd (a podmgr-generator unit, Type=notify): every app's start job
        # is done.
        sdnotify.notify(f"READY=1\nSTATUS=pod {uuid} running")
        code = wait(state, uuid, bus=bus)
        sdnotify.notify(f"STOPPING=1\nSTATUS=pod {uuid} exited with {code}")
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
        sdnotify.notify(f"STOPPING=1\nSTATUS=stopping pod {uuid}")
        with contextlib.suppress(Exception):
            stop(state, uuid, bus=bus)
        code = 130
    finally:
        if follower is not None:
            journal.sync()
            follower.close()
            if thread is not None:
                thread.join(timeout=5)
            with contextlib.suppress(Exception):
                for e in (
                    journal.read(uuid, after_cursor=follower.cursor)
                    if follower.cursor
                    else (journal.read(uuid))
                ):
                    emit(e)
    if interrupted:
        raise Interrupted("interrupted; the pod was stopped")
    return code


# ---- status and list -------------------------------------------------------------------


@dataclass(frozen=True)
class AppStatus:
    name: str
    image: str
    image_id: str
    unit: str
    state: str
    sub_state: str
    pid: int | None
    restarts: int | None
    memory_bytes: int | None
    cpu_nsec: int | None
    exit: dict[str, Any] | None
    isolators: list[dict[str, str]]


@dataclass(frozen=True)
class PodStatus:
    kind: ClassVar[str] = "PodStatus"
    uuid: str
    state: PodState
    created: datetime
    started: datetime | None
    exit_code: int | None
    net: str
    apps: list[AppStatus]
    isolators: list[dict[str, str]] = field(default_factory=list)
    #: Per network: name, interface, ips, gateway, ports (podmgr.network.status).
    networks: list[dict[str, Any]] = field(default_factory=list)

    def text(self) -> str:
        lines = [
            f"uuid:      {self.uuid}",
            f"state:     {self.state}",
            f"created:   {self.created:%Y-%m-%d %H:%M:%S %Z}",
            f"started:   {self.started:%Y-%m-%d %H:%M:%S %Z}" if self.started else "started:   -",
            f"net:       {self.net}",
        ]
        if self.exit_code is not None:
            lines.append(f"exit code: {self.exit_code}")
        for n in self.networks:
            addrs = ", ".join(str(ip["address"]) for ip in n.get("ips", [])) or "-"
            lines.append(f"network:   {n['name']} {n['interface']} {addrs}".rstrip())
            for port in n.get("ports", []):
                lines.append(f"  port:    {port}")
        for i in self.isolators:
            lines.append(f"isolator:  pod {i['name']}: {i['state']} {i.get('detail', '')}".rstrip())
        for a in self.apps:
            lines.append(f"app {a.name} ({a.image}) unit {a.unit}")
            lines.append(f"  state:    {a.state} ({a.sub_state})")
            if a.pid:
                lines.append(f"  pid:      {a.pid}")
            if a.restarts is not None:
                lines.append(f"  restarts: {a.restarts}")
            if a.memory_bytes is not None:
                lines.append(f"  memory:   {a.memory_bytes} bytes")
            if a.cpu_nsec is not None:
                lines.append(f"  cpu:      {a.cpu_nsec / 1e9:.3f} s")
            if a.exit:
                what = (
                    f"signal {a.exit['signal']}"
                    if a.exit.get("signal")
                    else f"exit status {a.exit.get('status')}"
                )
                lines.append(f"  exited:   {what} ({a.exit['result']})")
            for i in a.isolators:
                lines.append(
                    f"  isolator: {i['name']}: {i['state']} {i.get('detail', '')}".rstrip()
                )
        return "\n".join(lines)


_UNSET = 2**64 - 1  # systemd's "no value" for accounting properties


def _num(v: Any) -> int | None:
    return None if v is None or v == _UNSET or v == 2**63 - 1 else int(v)


def status(state: Path, uuid: str, *, bus: str | None = None) -> PodStatus:
    from podmgr import pod, systemd, units

    pdir = podstate.pod_dir(state, uuid)
    record = podstate.load(pdir)
    manifest = pod.reified_manifest(state, uuid)
    statuses: dict[str, dict[str, Any]] = {}
    if record.started is not None:
        try:
            with systemd.connect(bus) as sd:
                for a in record.apps:
                    statuses[a.unit] = sd.unit_status(a.unit)
        except SystemdError as e:
            log.warning("systemd is not reachable: %s", e)
    active = {u: str(s.get("ActiveState", "")) for u, s in statuses.items()}
    st = derive_state(record, active)
    apps = []
    for a in record.apps:
        s = statuses.get(a.unit, {})
        ex = podstate.app_exit(pdir, a.name)
        ra = manifest.app(a.name)
        isos = units.isolator_report(a.name, ra.app.isolators if ra and ra.app else (), pod=False)
        loaded = s.get("LoadState") == "loaded"
        apps.append(
            AppStatus(
                name=a.name,
                image=a.image_name,
                image_id=a.image_id,
                unit=a.unit,
                state=str(
                    s.get("ActiveState") or ("prepared" if record.started is None else "inactive")
                ),
                sub_state=str(s.get("SubState") or "dead"),
                pid=int(s["MainPID"]) if loaded and s.get("MainPID") else None,
                restarts=int(s["NRestarts"]) if loaded and "NRestarts" in s else None,
                memory_bytes=_num(s.get("MemoryCurrent")) if loaded else None,
                cpu_nsec=_num(s.get("CPUUsageNSec")) if loaded else None,
                exit=ex.model_dump(mode="json") if ex else None,
                isolators=[_iso_dict(i) for i in isos],
            )
        )
    pod_isos = units.isolator_report("pod", manifest.isolators, pod=True)
    return PodStatus(
        uuid=uuid,
        state=st,
        created=record.created,
        started=record.started,
        exit_code=pod_exit_code(pdir, record)
        if st in (PodState.EXITED, PodState.GARBAGE)
        else None,
        net=",".join(record.networks) if record.networks else record.net.value,
        apps=apps,
        isolators=[_iso_dict(i) for i in pod_isos],
        networks=_networks(pdir),
    )


def _networks(pdir: Path) -> list[dict[str, Any]]:
    from podmgr import network

    st = network.status(pdir)
    return list(st.get("networks", [])) if st else []


def _iso_dict(r: Any) -> dict[str, str]:
    d = {"name": r.name, "state": r.state.value}
    if r.detail:
        d["detail"] = r.detail
    return d


@dataclass(frozen=True)
class PodListEntry:
    uuid: str
    apps: list[str]
    images: list[str]
    state: PodState
    created: datetime
    started: datetime | None


@dataclass(frozen=True)
class PodList:
    kind: ClassVar[str] = "PodList"
    pods: list[PodListEntry]
    full: bool = False
    legend: bool = True

    def text(self) -> str:
        rows = []
        if self.legend:
            rows.append(("UUID", "APPS", "IMAGES", "STATE", "CREATED", "STARTED"))
        for p in self.pods:
            rows.append(
                (
                    p.uuid if self.full else p.uuid[:8],
                    ",".join(p.apps),
                    ",".join(p.images),
                    p.state.value,
                    f"{p.created:%Y-%m-%d %H:%M:%S}",
                    f"{p.started:%Y-%m-%d %H:%M:%S}" if p.started else "-",
                )
            )
        if not rows:
            return ""
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        )

    def data(self) -> Any:
        return [
            {
                "uuid": p.uuid,
                "apps": p.apps,
                "images": p.images,
                "state": p.state.value,
                "created": p.created.isoformat(),
                "started": p.started.isoformat() if p.started else None,
            }
            for p in self.pods
        ]


def list_pods(state: Path, *, bus: str | None = None) -> list[tuple[PodRecord, PodState]]:
    """Every pod with its derived state, with one bus call in all."""
    from podmgr import systemd

    records = []
    for u in podstate.all_uuids(state):
        with contextlib.suppress(Exception):
            records.append(podstate.load(podstate.pod_dir(state, u)))
    active: dict[str, str] = {}
    if any(r.started for r in records):
        try:
            with systemd.connect(bus) as sd:
                active = _unit_states(sd)
        except SystemdError as e:
            log.warning("systemd is not reachable: %s", e)
    return [(r, derive_state(r, active)) for r in records]


def list_result(
    state: Path, *, bus: str | None = None, full: bool = False, legend: bool = True
) -> PodList:
    entries = [
        PodListEntry(
            r.uuid,
            [a.name for a in r.apps],
            [a.image_name for a in r.apps],
            st,
            r.created,
            r.started,
        )
        for r, st in list_pods(state, bus=bus)
    ]
    return PodList(entries, full=full, legend=legend)


# ---- rm and gc ---------------------------------------------------------------------------


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mp = line.split(" ")[4].encode().decode("unicode_escape")
            if mp.startswith(prefix):
                out.append(mp)
    return sorted(out, key=len, reverse=True)


def remove(state: Path, uuid: str, *, bus: str | None = None) -> None:
    """Remove an exited or prepared pod: units reset, mounts gone, directory removed."""
    from podmgr import systemd
    from podmgr.pod import Images, teardown_units

    pdir = podstate.pod_dir(state, uuid)
    record = podstate.load(pdir)
    if record.started is not None:
        with contextlib.suppress(SystemdError), systemd.connect(bus) as sd:
            if derive_state(record, _unit_states(sd)) is PodState.RUNNING:
                raise ConflictError(f"pod {uuid} is running", hint=f"podmgr stop {uuid} first")
            teardown_units(sd, record)
    from podmgr import network
    from podmgr.process import run

    # The net unit's ExecStop= has done this unless the pod never stopped cleanly.
    network.teardown(pdir, uuid)
    for mp in _mounts_under(pdir):
        run(["umount", "--lazy", mp], check=False)
    # Rename first, so that a crash mid-removal leaves no half-removed pod in the list.
    doomed = podstate.pods_dir(state) / f".rm-{uuid}"
    os.rename(pdir, doomed)
    from podmgr import metadata

    metadata.unregister(state, record.metadata_token)
    shutil.rmtree(doomed, ignore_errors=True)
    with contextlib.suppress(Exception):
        Images(state).unpin(uuid)


def rm(state: Path, uuids: list[str], *, bus: str | None = None) -> list[str]:
    require_root("removing pods")
    for u in uuids:
        remove(state, u, bus=bus)
    return uuids


@dataclass(frozen=True)
class GcResult:
    kind: ClassVar[str] = "GcResult"
    removed: list[str]
    marked: list[str]

    def text(self) -> str:
        return "\n".join(
            [*(f"removed {u}" for u in self.removed), *(f"marked {u}" for u in self.marked)]
        )


def _exit_time(pdir: Path, record: PodRecord) -> datetime:
    times = [e.time for a in record.apps if (e := podstate.app_exit(pdir, a.name))]
    return max(times) if times else (record.started or record.created)


def gc(
    state: Path,
    *,
    grace: timedelta,
    expire_prepared: timedelta,
    mark_only: bool = False,
    bus: str | None = None,
) -> GcResult:
    require_root("garbage-collecting pods")
    now = podstate.now()
    removed, marked = [], []
    for record, st in list_pods(state, bus=bus):
        pdir = podstate.pod_dir(state, record.uuid)
        if st is PodState.GARBAGE and not mark_only:
            remove(state, record.uuid, bus=bus)
            removed.append(record.uuid)
        elif st is PodState.EXITED and now - _exit_time(pdir, record) >= grace:
            if mark_only:
                podstate.save(pdir, record.model_copy(update={"garbage": now}))
                marked.append(record.uuid)
            else:
                remove(state, record.uuid, bus=bus)
                removed.append(record.uuid)
        elif st is PodState.PREPARED and now - record.created >= expire_prepared:
            remove(state, record.uuid, bus=bus)
            removed.append(record.uuid)
    # Leftovers of crashed prepares and removals.
    pods = podstate.pods_dir(state)
    if pods.is_dir():
        for d in pods.iterdir():
            if d.name.startswith((".prep-", ".rm-")):
                age = now.timestamp() - d.stat().st_mtime
                if d.name.startswith(".rm-") or age > 3600:
                    shutil.rmtree(d, ignore_errors=True)
    from podmgr import metadata

    metadata.sweep(state)
    return GcResult(removed, marked)


def parse_duration(text: str) -> timedelta:
    """``30m``, ``24h``, ``90s``, ``2d``, or a bare number of seconds."""
    t = text.strip()
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if t and t[-1] in scale:
            return timedelta(seconds=float(t[:-1]) * scale[t[-1]])
        return timedelta(seconds=float(t))
    except ValueError:
        raise UsageError(f"invalid duration {text!r}", hint="use e.g. 90s, 30m, 24h, 2d") from None
