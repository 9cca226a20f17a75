"""The on-disk record of a pod: ``--dir/pods/<uuid>/``.

Layout (versioned by ``pod.json``'s ``version``; migrate explicitly in :func:`load`):

- ``pod.json`` — :class:`PodRecord`, written atomically;
- ``manifest`` — the fully reified pod manifest (appc JSON);
- ``apps/<app>/image-manifest`` — the app's original image manifest;
- ``apps/<app>/upper``, ``work`` — the overlay's pod-private layers; ``rootfs`` — its mount point;
- ``apps/<app>/exit.json`` — :class:`AppExit`, written by the app's ExecStopPost hook;
- ``volumes/<name>/`` — ``kind=empty`` volumes; ``shm/`` — the pod's /dev/shm;
- ``net/<network>.json`` — the CNI result cache for DEL, ``net/status.json`` — interfaces,
  addresses, ports and sysctls as set up (:mod:`podmgr.network`).

A pod being prepared lives in ``pods/.prep-<uuid>`` and appears under its UUID only once
complete (a rename), so a crash leaves no half-made pod, only a temp dir ``gc`` removes.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from podmgr import names
from podmgr.errors import InvalidError, NotFoundError
from podmgr.fsutil import atomic_write

# The record's format version is shared with its readers that do without the models.
from podmgr.launch import POD_RECORD_VERSION
from podmgr.options import Bind, ExitPolicy, NetMode, RestartPolicy

# Re-exported: finding pods needs no models (podmgr.podlist).
from podmgr.podlist import all_uuids as all_uuids
from podmgr.podlist import find as find


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)


class AppRecord(_Record):
    """One app, resolved at prepare time so that starting needs no image access."""

    name: str
    image_id: str
    image_name: str
    unit: str
    exec: tuple[str, ...]
    uid: int
    gid: int
    supplementary_gids: tuple[int, ...] = ()
    working_dir: str = "/"
    environment: dict[str, str] = {}
    pre_start: tuple[str, ...] | None = None
    post_stop: tuple[str, ...] | None = None
    read_only_rootfs: bool = False
    binds: tuple[tuple[str, str, bool, bool], ...] = ()
    restart: RestartPolicy = RestartPolicy.NO
    #: The image is annotated appc.io/executor/supports-systemd-notify=true.
    notify: bool = False
    lower: tuple[str, ...]
    rootfs: str
    #: The mount unit systemd shows for ``rootfs`` while podmgr has it mounted.
    rootfs_unit: str

    def bind_list(self) -> tuple[Bind, ...]:
        return tuple(Bind(s, t, ro, rec) for s, t, ro, rec in self.binds)


class PodRecord(_Record):
    version: int = POD_RECORD_VERSION
    uuid: str
    created: datetime
    started: datetime | None = None
    boot_id: str | None = None
    stopping: bool = False
    #: Why the pod's start failed (podmgr.launch): the pod is "failed", not "exited".
    start_error: str | None = None
    garbage: datetime | None = None
    exit_policy: ExitPolicy = ExitPolicy.ON_ANY_FAILURE
    net: NetMode = NetMode.HOST
    #: With ``net`` = cni: the --net values (``NAME[:K=V;…]``), in order (eth0, eth1, …).
    networks: tuple[str, ...] = ()
    #: --port mappings: (port name, protocol, container port, host port, host IP or "").
    ports: tuple[tuple[str, str, int, int, str], ...] = ()
    apps: tuple[AppRecord, ...]
    metadata_token: str
    user_annotations: dict[str, str] = {}
    user_labels: dict[str, str] = {}
    #: --hostname, the apps' host name; None: the pod's machine name (podmgr-<uuid hex>).
    hostname: str | None = None


class AppExit(_Record):
    name: str
    #: systemd's $SERVICE_RESULT: success, exit-code, signal, core-dump, oom-kill, …
    result: str
    #: $EXIT_CODE: exited, killed or dumped.
    code: str | None = None
    #: The exit status, or 128 + the signal number when killed.
    status: int | None = None
    signal: str | None = None
    #: How often systemd restarted the app (--restart), when it could still be read.
    restarts: int | None = None
    time: datetime
    #: Its memory limit killed it (podmgr.hook.out_of_memory); absent in older records.
    oom: bool = False
    #: That limit (MemoryMax=, bytes), when ``oom``.
    memory_limit: int | None = None


def pods_dir(state: Path) -> Path:
    return state / "pods"


def pod_dir(state: Path, uuid: str) -> Path:
    return pods_dir(state) / uuid


def now() -> datetime:
    return datetime.now(UTC)


def save(directory: Path, record: PodRecord) -> None:
    atomic_write(directory / "pod.json", record.model_dump_json(indent=1))


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    version = data.get("version", 0)
    if version > POD_RECORD_VERSION:
        raise InvalidError(
            f"pod record version {version} is newer than this podmgr understands",
            hint="upgrade podmgr",
        )
    # Version 1 is the first; later versions add their steps here.
    data["version"] = POD_RECORD_VERSION
    return data


def load(directory: Path) -> PodRecord:
    try:
        data = json.loads((directory / "pod.json").read_bytes())
    except FileNotFoundError:
        raise NotFoundError(f"pod {directory.name} not found") from None
    except ValueError as e:
        raise InvalidError(f"pod {directory.name}: pod.json is corrupt: {e}") from None
    try:
        return PodRecord.model_validate(_migrate(data))
    except ValidationError as e:
        raise InvalidError(f"pod {directory.name}: pod.json does not validate: {e}") from None


def app_exit(directory: Path, app: str) -> AppExit | None:
    with contextlib.suppress(FileNotFoundError, ValueError, ValidationError):
        return AppExit.model_validate_json(names.exit_record(directory, app).read_bytes())
    return None


def write_app_exit(directory: Path, ex: AppExit) -> None:
    atomic_write(names.exit_record(directory, ex.name), ex.model_dump_json())
