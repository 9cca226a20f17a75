"""Unit and machine names of pods (stdlib only: the exit hook imports this)."""

from __future__ import annotations

SLICE = "podmgr.slice"
UNIT_PREFIX = "podmgr-"


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


def machine_name(uuid: str) -> str:
    return f"{UNIT_PREFIX}{pod_hex(uuid)}"
