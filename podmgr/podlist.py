"""Pod states and ``podmgr list``, from pod records read as plain JSON.

``list`` reads every pod's ``pod.json`` and asks systemd once which app units are
running. It does not import pydantic (:mod:`podmgr.podstate`): the records are ours,
written atomically and validated when written, and pydantic's import and model set-up
cost more than reading a thousand records (``bench/pod_start``). A record that is not
JSON, or is of a version newer than this podmgr knows, is skipped with a warning, as
``podstate.load`` would refuse it.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from podmgr import logger, names
from podmgr.errors import (
    ROOT_HINT,
    NotFoundError,
    PermissionDenied,
    PodmgrError,
    SystemdError,
    UsageError,
)
from podmgr.hook import RUNNING_STATES

# One reader of pod.json without the models, one boot ID: podmgr.launch's.
from podmgr.launch import POD_RECORD_VERSION as POD_RECORD_VERSION
from podmgr.launch import boot_id, exits_code, load_record

log = logger.get(__name__)


class PodState(enum.StrEnum):
    PREPARED = "prepared"
    RUNNING = "running"
    EXITED = "exited"
    #: Its start failed (pod.json's ``start_error`` says why); nothing of it runs.
    FAILED = "failed"
    GARBAGE = "garbage"


def derive_state(
    *,
    garbage: object,
    started: object,
    boot: str | None,
    units: Iterable[str],
    active: Mapping[str, str],
    current_boot: str | None = None,
    start_error: object = None,
) -> PodState:
    """A pod's state from its record's fields and the ActiveState of podmgr's units."""
    if garbage is not None:
        return PodState.GARBAGE
    if started is None:
        return PodState.PREPARED
    if start_error is not None:
        return PodState.FAILED
    # Pods that ran before a reboot are exited, whatever systemd says now.
    if boot and boot != (boot_id() if current_boot is None else current_boot):
        return PodState.EXITED
    if any(active.get(u) in RUNNING_STATES for u in units):
        return PodState.RUNNING
    return PodState.EXITED


class Port(NamedTuple):
    """A --port mapping as pod.json records it (podstate.PodRecord.ports' order)."""

    name: str
    protocol: str
    container_port: int
    host_port: int
    host_ip: str = ""

    def text(self) -> str:
        """``NAME=[HOST IP:]HOST PORT->PORT/PROTOCOL``, as podman's ``0.0.0.0:80->80/tcp``;
        no host IP: every address of the host."""
        ip = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        host = f"{ip}:{self.host_port}" if ip else str(self.host_port)
        return f"{self.name}={host}->{self.container_port}/{self.protocol}"

    def data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host_ip": self.host_ip,
            "host_port": self.host_port,
            "container_port": self.container_port,
            "protocol": self.protocol,
        }


@dataclass(frozen=True)
class PodListEntry:
    uuid: str
    apps: list[str]
    images: list[str]
    state: PodState
    created: datetime
    started: datetime | None
    #: The first failing app's exit status, 0 if none failed; None unless exited.
    exit_code: int | None = None
    #: --port mappings, as pod.json keeps them (:class:`podmgr.network.PortMapping`).
    ports: tuple[Port, ...] = ()
    #: The apps that their memory limit killed (exit.json's ``oom``).
    oom: tuple[str, ...] = ()


def by_creation(pods: Iterable[PodListEntry]) -> list[PodListEntry]:
    """Oldest first, as ``podman ps``; the UUID orders pods created in the same µs."""
    return sorted(pods, key=lambda p: (p.created, p.uuid))


@dataclass(frozen=True)
class PodList:
    kind: ClassVar[str] = "PodList"
    pods: list[PodListEntry]
    full: bool = False
    legend: bool = True

    def text(self) -> str:
        rows = []
        if self.legend:
            rows.append(("UUID", "APPS", "IMAGES", "STATE", "EXIT", "CREATED", "STARTED", "PORTS"))
        for p in self.pods:
            rows.append(
                (
                    p.uuid if self.full else p.uuid[:8],
                    ",".join(p.apps),
                    ",".join(p.images),
                    f"{p.state.value} (oom)" if p.oom else p.state.value,
                    "-" if p.exit_code is None else str(p.exit_code),
                    f"{p.created:%Y-%m-%d %H:%M:%S}",
                    f"{p.started:%Y-%m-%d %H:%M:%S}" if p.started else "-",
                    ",".join(port.text() for port in p.ports) or "-",
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
                "exit_code": p.exit_code,
                "ports": [port.data() for port in p.ports],
                "oom": list(p.oom),
            }
            for p in self.pods
        ]


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True)
class _Summary:
    uuid: str
    apps: list[str]
    images: list[str]
    units: list[str]
    created: datetime
    started: datetime | None
    garbage: datetime | None
    boot: str | None
    start_error: str | None
    ports: tuple[Port, ...]


def _summary(pods: Path, name: str) -> _Summary | None:
    try:
        data = load_record(pods / name)
        apps = data["apps"]
        return _Summary(
            uuid=data["uuid"],
            apps=[a["name"] for a in apps],
            images=[a["image_name"] for a in apps],
            units=[a["unit"] for a in apps],
            created=datetime.fromisoformat(data["created"]),
            started=_time(data.get("started")),
            garbage=_time(data.get("garbage")),
            boot=data.get("boot_id"),
            start_error=data.get("start_error"),
            ports=tuple(Port(*p) for p in data.get("ports", ())),
        )
    except NotFoundError:
        return None  # removed while we listed
    except PermissionDenied:
        raise  # one error, not a warning per pod
    except PodmgrError as e:
        log.warning("pod %s: skipped: %s", name, e.message)
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("pod %s: skipped, its pod.json cannot be read: %s", name, e)
        return None


#: An exit.json is some 200 bytes (podstate.AppExit); more is not one podmgr wrote.
EXIT_RECORD_MAX = 64 * 1024


def _oom(exits: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    return tuple(str(e["name"]) for e in exits if e.get("oom") is True)


def oom_apps(pdir: Path, apps: Iterable[str]) -> tuple[str, ...]:
    """The apps of the pod in ``pdir`` whose exit.json says their memory limit killed
    them (podmgr.hook.out_of_memory)."""
    return _oom(_exits(str(pdir), list(apps)))


def _exits(pdir: str, apps: list[str]) -> list[dict[str, Any]]:
    """The apps' exit records (launch.app_exit's), read with str paths: pathlib's joins
    were most of the time a list of 1000 exited pods took for their exit codes. The path
    is names.exit_record's."""
    exits = []
    for app in apps:
        try:
            # os.open and os.read, not open(): io's layers were half of this read's time.
            fd = os.open(f"{pdir}/apps/{app}/exit.json", os.O_RDONLY | os.O_CLOEXEC)
            try:
                raw = os.read(fd, EXIT_RECORD_MAX)
            finally:
                os.close(fd)
            data = json.loads(raw)
        except (OSError, ValueError):
            continue  # not exited, or being written (launch.app_exit skips it too)
        if isinstance(data, dict) and "result" in data and "time" in data:
            exits.append({**data, "name": app})
    return exits


def _active_units(bus: str | None) -> dict[str, str]:
    from podmgr import systemd

    try:
        with systemd.connect(bus) as sd:
            units = sd.list_units([f"{names.UNIT_PREFIX}*.service"])
    except SystemdError as e:
        log.warning("systemd is not reachable: %s", e)
        return {}
    return {u.name: u.active_state for u in units}


def list_result(
    state: Path, *, bus: str | None = None, full: bool = False, legend: bool = True
) -> PodList:
    """Every pod with its derived state, with one bus call in all."""
    pods = state / "pods"
    dirnames = all_uuids(state)
    summaries = [s for n in dirnames if (s := _summary(pods, n)) is not None]
    active = _active_units(bus) if any(s.started for s in summaries) else {}
    current = boot_id()
    entries = []
    for s in summaries:
        st = derive_state(
            garbage=s.garbage,
            started=s.started,
            boot=s.boot,
            units=s.units,
            active=active,
            current_boot=current,
            start_error=s.start_error,
        )
        # Only an app that has run has an exit.json, a read per app: only then.
        exits = _exits(os.path.join(pods, s.uuid), s.apps) if s.started is not None else []
        code = exits_code(exits) if st in (PodState.EXITED, PodState.GARBAGE) else None
        oom = _oom(exits)
        entries.append(
            PodListEntry(s.uuid, s.apps, s.images, st, s.created, s.started, code, s.ports, oom)
        )
    return PodList(by_creation(entries), full=full, legend=legend)


def all_uuids(state: Path) -> list[str]:
    d = state / "pods"
    try:
        return sorted(n for n in os.listdir(d) if not n.startswith("."))
    except FileNotFoundError:
        return []
    except PermissionError:
        raise PermissionDenied(
            f"cannot read the pods in {d}: permission denied", hint=ROOT_HINT
        ) from None


def find(state: Path, ref: str) -> str:
    """A pod UUID from a full UUID or a unique prefix."""
    ref = ref.strip().lower()
    if not ref:
        raise UsageError("empty pod UUID")
    uuids = all_uuids(state)
    if ref in uuids:
        return ref
    matches = [u for u in uuids if u.startswith(ref) or u.replace("-", "").startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotFoundError(f"no pod matches {ref!r}", hint="podmgr list shows the pods")
    raise UsageError(
        f"{ref!r} matches {len(matches)} pods", hint="give more characters of the UUID"
    )
