"""Operating on pods after prepare: waiting until ready, status, rm, gc.

Starting, running attached, waiting for the end and stopping are :mod:`podmgr.launch`'s
(no models on that path); listing is :mod:`podmgr.podlist`'s.

A pod's state is derived, never stored: from its directory (prepared? started? marked as
garbage? which boot?) and from systemd (are any of its app units still running?).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from podmgr import launch, logger, names, podlist, podstate
from podmgr.errors import ConflictError, NotFoundError, SystemdError, UsageError, require_root
from podmgr.fsutil import rmtree
from podmgr.hook import oom_words
from podmgr.podlist import PodState
from podmgr.podstate import PodRecord

log = logger.get(__name__)


def derive_state(record: PodRecord, active: Mapping[str, str]) -> PodState:
    return podlist.derive_state(
        garbage=record.garbage,
        started=record.started,
        boot=record.boot_id,
        units=[a.unit for a in record.apps],
        active=active,
        start_error=record.start_error,
    )


def pod_exit_code(pdir: Path, record: PodRecord) -> int | None:
    """The first failing app's exit status, 0 if none failed, None if none exited."""
    return launch.pod_exit_code(pdir, [a.name for a in record.apps])


def _unit_states(sd: Any) -> dict[str, str]:
    return {u.name: u.active_state for u in sd.list_units([f"{names.UNIT_PREFIX}*.service"])}


def wait_ready(
    state: Path, uuid: str, *, bus: str | None = None, timeout: float | None = None
) -> None:
    """Block until every app of the pod is active (or has ended)."""
    from podmgr import systemd

    record = podstate.load(podstate.pod_dir(state, uuid))
    with systemd.connect(bus) as sd:
        for a in record.apps:
            sd.wait_for_state(a.unit, ("active", "inactive", "failed"), timeout=timeout)


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
    #: Why the start failed (state failed).
    error: str | None = None

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
        if self.error is not None:
            lines.append(f"error:     {self.error}")
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
                if words := oom_words(a.exit):
                    lines.append(f"  killed:   {words}")
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
        error=record.start_error,
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


# ---- stop --all and kill ---------------------------------------------------------------

# What an app can be sent (``podmgr kill``): on systemd 252 the unit's main process is
# podmgr-exec, which passes on these and no other (shim/podmgr-exec.c forward_signals);
# SIGKILL ends podmgr-exec and so the app (PR_SET_PDEATHSIG). Any other signal would end
# podmgr-exec with the app killed, not signalled; so it is refused rather than sent.
KILL_SIGNALS: tuple[str, ...] = ("HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "WINCH")


def parse_signal(value: str) -> int:
    """A signal given as ``TERM``, ``SIGTERM``, ``term`` or ``15``; one of KILL_SIGNALS."""
    import signal

    v = value.strip().upper()
    choices = ", ".join(KILL_SIGNALS)
    if v.isdecimal() and len(v) <= 3:
        try:
            name = signal.Signals(int(v)).name.removeprefix("SIG")
        except ValueError:
            name = ""
    else:
        name = v.removeprefix("SIG")
    if name not in KILL_SIGNALS:
        raise UsageError(
            f"signal {value[:40]!r} cannot be sent to an app", hint=f"one of {choices}"
        )
    return int(signal.Signals[f"SIG{name}"])


def stop_all(state: Path, *, force: bool = False, bus: str | None = None) -> list[str]:
    """Stop every running pod (as ``stop UUID`` each); the UUIDs stopped."""
    require_root("stopping pods")
    running = [r.uuid for r, s in list_pods(state, bus=bus) if s is PodState.RUNNING]
    for u in running:
        launch.stop(state, u, force=force, bus=bus)
    return running


def kill(
    state: Path, uuid: str, sig: int, *, app: str | None = None, bus: str | None = None
) -> list[str]:
    """Send ``sig`` to the pod's running apps (or to ``app``) through systemd: to each
    unit's main process, podmgr-exec on systemd 252, which passes it on to the app. The
    names of the apps signalled."""
    from podmgr import systemd

    require_root("signalling a pod's apps")
    record = podstate.load(podstate.pod_dir(state, uuid))
    names_ = [a.name for a in record.apps]
    if app is not None and app not in names_:
        raise NotFoundError(f"pod {uuid} has no app {app!r}", hint=f"one of {', '.join(names_)}")
    apps = [a for a in record.apps if app is None or a.name == app]
    sent = []
    with systemd.connect(bus) as sd:
        active = _unit_states(sd)
        for a in apps:
            if active.get(a.unit) not in ("active", "activating", "reloading"):
                continue
            with contextlib.suppress(systemd.NoSuchUnitError):
                # "main", not "all": podmgr-exec forwards it once; "all" would also hit
                # the app's own children, which a shell's signal does not either.
                sd.kill_unit(a.unit, sig, who="main")
                sent.append(a.name)
    if not sent:
        what = f"app {app} of pod {uuid}" if app else f"pod {uuid}"
        raise ConflictError(f"{what} is not running", hint=f"podmgr status {uuid}")
    return sent


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
    from podmgr.pod import Images

    pdir = podstate.pod_dir(state, uuid)
    record = podstate.load(pdir)
    if record.started is not None:
        with contextlib.suppress(SystemdError), systemd.connect(bus) as sd:
            if derive_state(record, _unit_states(sd)) is PodState.RUNNING:
                raise ConflictError(f"pod {uuid} is running", hint=f"podmgr stop {uuid} first")
            launch.teardown_units(
                sd, record.uuid, [a.rootfs for a in record.apps], [a.unit for a in record.apps]
            )
    from podmgr import network
    from podmgr.process import run

    # The net unit's ExecStop= has done this unless the pod never stopped cleanly.
    network.teardown(pdir, uuid)
    for mp in _mounts_under(pdir):
        run(["umount", "--lazy", mp], check=False)
    # Rename first, so that a crash mid-removal leaves no half-removed pod in the list.
    doomed = podstate.pods_dir(state) / f".rm-{uuid}"
    os.rename(pdir, doomed)
    from podmgr import tokens

    tokens.unregister(state, record.metadata_token)
    rmtree(doomed, ignore_errors=True)
    with contextlib.suppress(Exception):
        Images(state).unpin(uuid)


def rm(state: Path, uuids: list[str], *, force: bool = False, bus: str | None = None) -> list[str]:
    """Remove pods; with ``force``, stop a running one first (``podman rm --force``)."""
    require_root("removing pods")
    for u in uuids:
        if force:
            record = podstate.load(podstate.pod_dir(state, u))
            if record.started is not None and _running(record, bus):
                launch.stop(state, u, bus=bus)
        remove(state, u, bus=bus)
    return uuids


def _running(record: PodRecord, bus: str | None) -> bool:
    from podmgr import systemd

    with systemd.connect(bus) as sd:
        return derive_state(record, _unit_states(sd)) is PodState.RUNNING


@dataclass(frozen=True)
class GcResult:
    kind: ClassVar[str] = "GcResult"
    removed: list[str]
    marked: list[str]

    def text(self) -> str:
        lines = [*(f"removed {u}" for u in self.removed), *(f"marked {u}" for u in self.marked)]
        # Silence read as "did it run?"; say so when there was nothing to collect.
        return "\n".join(lines) if lines else "no pod to collect"


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
    from podmgr import metadata

    # gc runs as root beside pods (podmgr-gc.service): no pod's app may reach it through
    # /proc/<pid>, whatever capabilities the app was given.
    metadata.make_nondumpable()
    now = podstate.now()
    removed, marked = [], []
    for record, st in list_pods(state, bus=bus):
        pdir = podstate.pod_dir(state, record.uuid)
        if st is PodState.GARBAGE and not mark_only:
            remove(state, record.uuid, bus=bus)
            removed.append(record.uuid)
        elif st in (PodState.EXITED, PodState.FAILED) and now - _exit_time(pdir, record) >= grace:
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
                    rmtree(d, ignore_errors=True)
    from podmgr import podtemplate

    metadata.sweep(state)
    podtemplate.sweep(state)
    return GcResult(removed, marked)
