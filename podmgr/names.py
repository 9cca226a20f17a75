"""Unit and machine names of pods, and the files and paths that name them.

Standard library only: the exit hook and ``podmgr list`` import this without the
manifest schema. The closed sets of pod options are in :mod:`podmgr.options`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

SLICE = "podmgr.slice"
UNIT_PREFIX = "podmgr-"
#: The state directory when neither --dir nor $PODMGR_DIR names one.
STATE_DIR = "/var/lib/podmgr"
#: The environment variables the CLI reads: the state directory, and systemd's bus.
DIR_ENV = "PODMGR_DIR"
BUS_ENV = "PODMGR_BUS_ADDRESS"


def new_uuid() -> str:
    """A random (version 4) UUID, as :func:`uuid.uuid4` gives it, without importing
    :mod:`uuid` (2-3 ms of every ``podmgr run``)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def pod_hex(uuid: str) -> str:
    return uuid.replace("-", "").lower()


def pod_slice(uuid: str) -> str:
    return f"{UNIT_PREFIX}{pod_hex(uuid)}.slice"


def app_service(uuid: str, app: str) -> str:
    return f"{UNIT_PREFIX}{pod_hex(uuid)}-{app}.service"


def exit_hook_unit(uuid: str, app: str, *, failed: bool = False) -> str:
    # "exit" cannot start a pod's hex UUID, so this never collides with an app's unit.
    # Two units, because systemd passes no $MONITOR_* to a unit that is both the
    # OnSuccess= and the OnFailure= of one unit ("multiple trigger source candidates").
    kind = "exitfail" if failed else "exit"
    return f"{UNIT_PREFIX}{kind}-{pod_hex(uuid)}-{app}.service"


def net_unit(uuid: str) -> str:
    # "net" cannot start a pod's hex UUID either.
    return f"{UNIT_PREFIX}net-{pod_hex(uuid)}.service"


def attach_lock(uuid: str) -> str:
    """The file in a pod's directory that ``podmgr run`` holds flock(2)ed while attached,
    and the name the exit hooks' condition looks for through run's descriptor of that
    directory (see :func:`attached_condition`); named after the pod, so that no other
    pod's directory has it."""
    return f"attached-{pod_hex(uuid)}.lock"


def attached_condition(uuid: str, pid: int, dir_fd: int) -> str:
    """The path that exists exactly while process ``pid`` holds ``dir_fd`` open on the
    pod's directory: ``podmgr run`` attached. The exit hooks' ConditionPathExists=
    negates it, so systemd skips them in PID 1, without starting a process (flock(1) in
    an ExecCondition= cost the end of every run 7-12 ms, bench/pod_start). Should run die,
    even by SIGKILL, its /proc entry goes with it and the hooks take over; a later
    process with the same PID has no descriptor on this pod's directory."""
    return f"/proc/{pid}/fd/{dir_fd}/{attach_lock(uuid)}"


def machine_name(uuid: str) -> str:
    return f"{UNIT_PREFIX}{pod_hex(uuid)}"


def stop_kill_marker(pdir: Path, app: str) -> Path:
    """Present once the pod's own stop has sent the app SIGKILL in place of a SIGTERM it
    could not receive (podmgr.hook.kill_deaf_apps)."""
    return pdir / "apps" / app / "killed-by-stop"


def exit_record(pdir: Path, app: str) -> Path:
    """An app's ``exit.json`` in its pod's directory ``pdir``: the record of its end, by
    ``podmgr run`` or its exit hook (podmgr.hook.record_exit), whichever comes first."""
    return pdir / "apps" / app / "exit.json"


def bad_char(text: str, *, space: bool = False) -> str | None:
    """The first character of ``text`` that has no place in a name or value podmgr hands
    on (to systemd, a unit file, a pod's files), as ``U+XXXX``: a C0 or C1 control or DEL
    (tab and newline too, for they end a line where one is read), and with ``space``
    any whitespace. None if there is none."""
    for c in text:
        o = ord(c)
        if o < 0x20 or 0x7F <= o < 0xA0 or o in (0x2028, 0x2029) or (space and c.isspace()):
            return f"U+{o:04X}"
    return None
