"""All of podmgr's D-Bus code: talking to systemd's manager over jeepney.

Why jeepney: pure Python, blocking, file-descriptor passing, maintained, and cheap to
import (see DEVELOPERS.md). Every call goes through :meth:`Systemd.call`, which keeps the
bus error's name in the raised :class:`BusError`.

Transient units are described as a plain mapping from property name to value. Values
are encoded with systemd's exact D-Bus signatures from :data:`PROPERTY_SIGNATURES`; a
property that is not in the table can be given as a :class:`Variant` to spell its
signature explicitly.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from jeepney import DBusAddress, HeaderFields, MatchRule, MessageType, message_bus, new_method_call
from jeepney.io.blocking import DBusConnection, open_dbus_connection

from podmgr import logger
from podmgr.errors import SystemdError

log = logger.get(__name__)

SYSTEMD_BUS_NAME = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
PROPS_IFACE = "org.freedesktop.DBus.Properties"

#: Seconds to wait for a reply to one method call.
CALL_TIMEOUT = 30.0


# NamedTuples as mypy sees them, collections.namedtuple at run time: typing.NamedTuple's
# class set-up costs three times as much, on the start-up path of every command.
if TYPE_CHECKING:

    class Variant(NamedTuple):
        """A value with an explicit D-Bus signature."""

        signature: str
        value: Any

else:
    Variant = collections.namedtuple("Variant", "signature value")


#: One ExecStart-style command: (path, argv, ignore_failure).
ExecCommand = tuple[str, list[str], bool]

# Signatures as systemd declares them (see org.freedesktop.systemd1(5)).
_S, _B, _T, _I, _U, _AS = "s", "b", "t", "i", "u", "as"
_EXEC = "a(sasb)"
_EXEC_EX = "a(sasas)"
# fmt: off
PROPERTY_SIGNATURES: dict[str, str] = {
    # [Unit]
    "Description": _S, "Documentation": _AS, "SourcePath": _S,
    "Requires": _AS, "Requisite": _AS, "Wants": _AS, "BindsTo": _AS, "PartOf": _AS,
    "Upholds": _AS, "Conflicts": _AS, "Before": _AS, "After": _AS, "OnFailure": _AS,
    "OnSuccess": _AS, "PropagatesStopTo": _AS, "StopPropagatedFrom": _AS,
    "RequiresMountsFor": _AS, "DefaultDependencies": _B, "StopWhenUnneeded": _B,
    "RefuseManualStart": _B, "RefuseManualStop": _B, "CollectMode": _S, "AddRef": _B,
    "JobTimeoutUSec": _T, "SuccessAction": _S, "FailureAction": _S,
    "SuccessActionExitStatus": _I, "FailureActionExitStatus": _I,
    "StartLimitIntervalUSec": _T, "StartLimitBurst": _U, "Markers": _AS,
    # (type, trigger, negate, parameter): ConditionPathExists=!/x is
    # ("ConditionPathExists", False, True, "/x").
    "Conditions": "a(sbbs)",
    # [Service]
    "Type": _S, "ExitType": _S, "RemainAfterExit": _B, "GuessMainPID": _B, "PIDFile": _S,
    "BusName": _S, "ExecCondition": _EXEC, "ExecStartPre": _EXEC, "ExecStart": _EXEC,
    "ExecStartPost": _EXEC, "ExecReload": _EXEC, "ExecStop": _EXEC, "ExecStopPost": _EXEC,
    # The Ex variants carry flags ("privileged" is the "+" prefix, "ignore-failure" "-").
    "ExecConditionEx": _EXEC_EX, "ExecStartPreEx": _EXEC_EX, "ExecStartEx": _EXEC_EX,
    "ExecStartPostEx": _EXEC_EX, "ExecStopEx": _EXEC_EX, "ExecStopPostEx": _EXEC_EX,
    "Restart": _S, "RestartUSec": _T, "RestartPreventExitStatus": "(aiai)",
    "RestartForceExitStatus": "(aiai)", "SuccessExitStatus": "(aiai)",
    "TimeoutStartUSec": _T, "TimeoutStopUSec": _T, "TimeoutAbortUSec": _T,
    "RuntimeMaxUSec": _T, "WatchdogUSec": _T, "NotifyAccess": _S, "FileDescriptorStoreMax": _U,
    "OOMPolicy": _S, "Sockets": _AS,
    # [Scope]
    "PIDs": "au",
    # [Mount]
    "What": _S, "Where": _S, "Options": _S, "SloppyOptions": _B, "LazyUnmount": _B,
    "ForceUnmount": _B, "ReadWriteOnly": _B, "DirectoryMode": _U, "TimeoutUSec": _T,
    # [Socket]
    "Listen": "a(ss)", "Accept": _B, "Service": _S, "FileDescriptorName": _S,
    "SocketMode": _U, "ReusePort": _B, "FreeBind": _B, "Transparent": _B,
    # Kill
    "KillMode": _S, "KillSignal": _I, "RestartKillSignal": _I, "FinalKillSignal": _I,
    "SendSIGKILL": _B, "SendSIGHUP": _B, "WatchdogSignal": _I,
    # Exec
    "WorkingDirectory": _S, "RootDirectory": _S, "RootImage": _S, "RootDirectoryStartOnly": _B,
    "User": _S, "Group": _S, "DynamicUser": _B, "SupplementaryGroups": _AS, "PAMName": _S,
    "Environment": _AS, "EnvironmentFiles": "a(sb)", "PassEnvironment": _AS,
    "UnsetEnvironment": _AS, "UMask": _U, "Nice": _I, "OOMScoreAdjust": _I,
    "IOSchedulingClass": _I, "IOSchedulingPriority": _I, "CPUSchedulingPolicy": _I,
    "CPUSchedulingPriority": _I, "TimerSlackNSec": _T, "Personality": _S,
    "LimitCPU": _T, "LimitFSIZE": _T, "LimitDATA": _T, "LimitSTACK": _T, "LimitCORE": _T,
    "LimitRSS": _T, "LimitNOFILE": _T, "LimitAS": _T, "LimitNPROC": _T, "LimitMEMLOCK": _T,
    "LimitLOCKS": _T, "LimitSIGPENDING": _T, "LimitMSGQUEUE": _T, "LimitNICE": _T,
    "LimitRTPRIO": _T, "LimitRTTIME": _T,
    "StandardInput": _S, "StandardOutput": _S, "StandardError": _S,
    "StandardInputFileDescriptor": "h", "StandardOutputFileDescriptor": "h",
    "StandardErrorFileDescriptor": "h", "StandardInputText": _S, "StandardInputData": "ay",
    "TTYPath": _S, "TTYReset": _B, "TTYVHangup": _B, "TTYVTDisallocate": _B,
    "SyslogIdentifier": _S, "SyslogLevel": _I, "SyslogFacility": _I, "SyslogLevelPrefix": _B,
    "LogLevelMax": _I, "LogExtraFields": "aay", "LogNamespace": _S,
    "CapabilityBoundingSet": _T, "AmbientCapabilities": _T, "SecureBits": _I,
    "NoNewPrivileges": _B, "SystemCallFilter": "(bas)", "SystemCallErrorNumber": _I,
    "SystemCallArchitectures": _AS, "SystemCallLog": "(bas)", "RestrictAddressFamilies": "(bas)",
    "RestrictNamespaces": _T, "LockPersonality": _B, "MemoryDenyWriteExecute": _B,
    "RestrictRealtime": _B, "RestrictSUIDSGID": _B, "KeyringMode": _S,
    "ProtectSystem": _S, "ProtectHome": _S, "PrivateTmp": _B, "PrivateDevices": _B,
    "PrivateNetwork": _B, "PrivateIPC": _B, "PrivateUsers": _B, "PrivateMounts": _B,
    "PrivatePIDs": _B,
    "ProtectKernelTunables": _B, "ProtectKernelModules": _B, "ProtectKernelLogs": _B,
    "ProtectControlGroups": _B, "ProtectClock": _B, "ProtectHostname": _B,
    "ProtectProc": _S, "ProcSubset": _S, "MountAPIVFS": _B, "MountFlags": _T,
    "NetworkNamespacePath": _S, "IPCNamespacePath": _S, "JoinsNamespaceOf": _AS,
    "ReadWritePaths": _AS, "ReadOnlyPaths": _AS, "InaccessiblePaths": _AS,
    "ExecPaths": _AS, "NoExecPaths": _AS,
    "BindPaths": "a(ssbt)", "BindReadOnlyPaths": "a(ssbt)", "TemporaryFileSystem": "a(ss)",
    "MountImages": "a(ssba(ss))", "RuntimeDirectory": _AS, "StateDirectory": _AS,
    "RuntimeDirectoryMode": _U, "RuntimeDirectoryPreserve": _S,
    "SetCredential": "a(say)", "LoadCredential": "a(ss)", "UtmpIdentifier": _S,
    "IgnoreSIGPIPE": _B,
    # Cgroup
    "Slice": _S, "Delegate": _B, "DelegateControllers": _AS,
    "CPUAccounting": _B, "CPUWeight": _T, "StartupCPUWeight": _T, "CPUShares": _T,
    "StartupCPUShares": _T, "CPUQuotaPerSecUSec": _T, "CPUQuotaPeriodUSec": _T,
    "AllowedCPUs": "ay", "AllowedMemoryNodes": "ay",
    "MemoryAccounting": _B, "MemoryMin": _T, "MemoryLow": _T, "MemoryHigh": _T,
    "MemoryMax": _T, "MemorySwapMax": _T, "MemoryLimit": _T,
    "TasksAccounting": _B, "TasksMax": _T, "IOAccounting": _B, "IOWeight": _T,
    "BlockIOAccounting": _B, "BlockIOWeight": _T,
    "DevicePolicy": _S, "DeviceAllow": "a(ss)", "IPAccounting": _B,
    "ManagedOOMSwap": _S, "ManagedOOMMemoryPressure": _S,
}
# fmt: on


def encode_property(name: str, value: Any) -> tuple[str, tuple[str, Any]]:
    """One ``(sv)`` entry for StartTransientUnit."""
    if isinstance(value, Variant):
        return (name, (value.signature, value.value))
    try:
        sig = PROPERTY_SIGNATURES[name]
    except KeyError:
        raise SystemdError(
            f"unknown unit property {name!r}", hint="pass it as a Variant with its signature"
        ) from None
    if sig == "aay":
        value = [v.encode() if isinstance(v, str) else bytes(v) for v in value]
    return (name, (sig, value))


def encode_properties(props: Mapping[str, Any]) -> list[tuple[str, tuple[str, Any]]]:
    return [encode_property(k, v) for k, v in props.items()]


def _split_signature(sig: str) -> list[str]:
    """The complete types in a D-Bus signature: ``"sasb"`` -> ``["s", "as", "b"]``."""
    out, i = [], 0
    while i < len(sig):
        j = i
        while sig[j] == "a":
            j += 1
        if sig[j] in "({":
            depth, k = 0, j
            while True:
                depth += {"(": 1, "{": 1, ")": -1, "}": -1}.get(sig[k], 0)
                k += 1
                if depth == 0:
                    break
            j = k
        else:
            j += 1
        out.append(sig[i:j])
        i = j
    return out


def _from_plain(sig: str, value: Any) -> Any:
    if sig.startswith("a{"):
        key, val = _split_signature(sig[2:-1])
        return {_from_plain(key, k): _from_plain(val, v) for k, v in value.items()}
    if sig == "ay":
        return value.encode() if isinstance(value, str) else bytes(value)
    if sig.startswith("a"):
        return [_from_plain(sig[1:], v) for v in value]
    if sig.startswith("("):
        fields = _split_signature(sig[1:-1])
        return tuple(_from_plain(f, v) for f, v in zip(fields, value, strict=True))
    return value


def to_plain(value: Any) -> Any:
    """``json.dumps(…, default=to_plain)`` for property values: bytes as lists of ints."""
    if isinstance(value, bytes | bytearray):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not a unit property value")


def from_plain(props: Mapping[str, Any]) -> dict[str, Any]:
    """Unit properties read back from JSON, with tuples where their signature has structs.

    The inverse of ``json.dumps`` on a property mapping built for StartTransientUnit (JSON
    has no tuples; jeepney wants one for each struct)."""
    return {k: _from_plain(PROPERTY_SIGNATURES[k], v) for k, v in props.items()}


def unit_path(unit: str) -> str:
    """The object path of a unit, escaped as systemd does (bus_label_escape)."""
    out = []
    for ch in unit.encode():
        c = chr(ch)
        out.append(c if c.isascii() and c.isalnum() else f"_{ch:02x}")
    return f"{MANAGER_PATH}/unit/{''.join(out) or '_'}"


# ---- errors ---------------------------------------------------------------------------


class BusError(SystemdError):
    """An error reply from the bus; ``name`` is the D-Bus error name."""


class NoSuchUnitError(BusError):
    pass


class UnitExistsError(BusError):
    pass


class InvalidArgsError(BusError):
    pass


class AccessDeniedError(BusError):
    pass


class JobFailedError(SystemdError):
    """A job finished with a result other than ``done``."""

    def __init__(self, message: str, *, unit: str, result: str) -> None:
        super().__init__(message, name=None)
        self.unit = unit
        self.result = result


_ERRORS: dict[str, type[BusError]] = {
    "org.freedesktop.systemd1.NoSuchUnit": NoSuchUnitError,
    "org.freedesktop.systemd1.UnitExists": UnitExistsError,
    "org.freedesktop.DBus.Error.InvalidArgs": InvalidArgsError,
    "org.freedesktop.DBus.Error.AccessDenied": AccessDeniedError,
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired": AccessDeniedError,
}


def _bus_error(name: str, text: str, what: str) -> BusError:
    cls = _ERRORS.get(name, BusError)
    hint = None
    if cls is AccessDeniedError:
        hint = "podmgr needs root (or a polkit rule) to manage systemd units"
    return cls(f"{what}: {text} ({name})", name=name, hint=hint)


# ---- results --------------------------------------------------------------------------


if TYPE_CHECKING:

    class UnitInfo(NamedTuple):
        """One row of ListUnits."""

        name: str
        description: str
        load_state: str
        active_state: str
        sub_state: str
        #: The unit's queued job, 0 for none.
        job_id: int = 0

    class JobResult(NamedTuple):
        unit: str
        job: str
        result: str
        #: A tolerated unit's failed start (:meth:`Systemd.start_transient_units`):
        #: its service's Result, ExecMainCode and ExecMainStatus as systemd told them,
        #: if it did.
        exit: Mapping[str, Any] | None = None

else:
    UnitInfo = collections.namedtuple(
        "UnitInfo", "name description load_state active_state sub_state job_id", defaults=(0,)
    )
    JobResult = collections.namedtuple("JobResult", "unit job result exit", defaults=(None,))


#: Properties read for a unit's status (Unit and Service interfaces).
# fmt: off
STATUS_PROPERTIES = (
    "Id", "LoadState", "ActiveState", "SubState", "Job", "Result", "MainPID", "ExecMainCode",
    "ExecMainStatus", "ExecMainPID", "NRestarts", "ActiveEnterTimestamp",
    "ActiveExitTimestamp", "InactiveEnterTimestamp", "ExecMainStartTimestamp",
    "ExecMainExitTimestamp", "MemoryCurrent", "CPUUsageNSec", "TasksCurrent", "ControlGroup",
)
# fmt: on

#: Properties :meth:`Systemd.watch` reads: a unit's state and a service's exit.
_UNIT_PROPERTIES = ("LoadState", "ActiveState", "SubState", "Job")
_SERVICE_PROPERTIES = frozenset(
    {"Result", "ExecMainCode", "ExecMainStatus", "NRestarts", "MainPID"}
)
WATCH_PROPERTIES = (*_UNIT_PROPERTIES, *sorted(_SERVICE_PROPERTIES))
#: A service's exit, which a read after it may no longer show (see :meth:`Systemd.watch`).
_EXIT_PROPERTIES = frozenset({"Result", "ExecMainCode", "ExecMainStatus"})
_WATCHED = frozenset(WATCH_PROPERTIES)


class Systemd:
    """A connection to systemd's manager on a bus.

    Use :func:`connect`; close it (or use it as a context manager) when done.
    """

    def __init__(self, conn: DBusConnection, address: str) -> None:
        self.conn = conn
        self.address = address
        self._subscribed = False
        self._manager_version: int | None = None
        #: Match rules this connection has added already (a rule stays until it closes).
        self._matches: set[str] = set()
        #: Calls sent ahead of the next call_many's own (see subscribe's ``defer``).
        self._deferred: list[tuple[DBusAddress, str, str | None, tuple[Any, ...]]] = []
        self._manager = DBusAddress(
            MANAGER_PATH, bus_name=SYSTEMD_BUS_NAME, interface=MANAGER_IFACE
        )

    def __enter__(self) -> Systemd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    # -- the one call helper ------------------------------------------------------------

    def call(
        self,
        address: DBusAddress,
        method: str,
        signature: str | None = None,
        body: tuple[Any, ...] = (),
        *,
        timeout: float = CALL_TIMEOUT,
    ) -> tuple[Any, ...]:
        """Call a method and return the reply's body; raise BusError on an error reply."""
        (reply,) = self.call_many([(address, method, signature, body)], timeout=timeout)
        if isinstance(reply, BusError):
            raise reply
        return reply

    def call_many(
        self,
        calls: Sequence[tuple[DBusAddress, str, str | None, tuple[Any, ...]]],
        *,
        timeout: float = CALL_TIMEOUT,
    ) -> list[tuple[Any, ...] | BusError]:
        """Send several calls at once, then collect their replies (bodies, or the
        BusError of an error reply), in order. Every call goes through here.

        systemd handles a connection's messages in order; sent together, they are all
        queued before it starts running the first one's jobs, and no round trip waits
        behind those jobs.
        """
        deferred, self._deferred = self._deferred, []
        calls = [*deferred, *calls]
        replies: collections.deque[Any] = collections.deque()
        serials: dict[int, int] = {}
        with (
            self.conn.filter(MatchRule(type="method_return"), queue=replies),
            self.conn.filter(MatchRule(type="error"), queue=replies),
        ):
            for i, (address, method, signature, body) in enumerate(calls):
                log.debug("bus: %s.%s%s", address.interface, method, _short(body))
                serial = next(self.conn.outgoing_serial)
                self.conn.send(new_method_call(address, method, signature, body), serial=serial)
                serials[serial] = i
            out: list[tuple[Any, ...] | BusError | None] = [None] * len(calls)
            deadline = time.monotonic() + timeout
            left = len(calls)
            while left:
                try:
                    msg = self.conn.recv_until_filtered(
                        replies, timeout=max(0.0, deadline - time.monotonic())
                    )
                except TimeoutError as e:
                    method = calls[out.index(None)][1]
                    raise SystemdError(
                        f"{method}: no reply from systemd within {timeout:.0f} s",
                        hint="is systemd running and responsive?",
                    ) from e
                i = serials.get(msg.header.fields.get(HeaderFields.reply_serial, -1), -1)
                if i < 0 or out[i] is not None:
                    continue  # another call's reply
                if msg.header.message_type == MessageType.error:
                    name = msg.header.fields.get(HeaderFields.error_name, "unknown")
                    text = msg.body[0] if msg.body else ""
                    out[i] = _bus_error(name, text, calls[i][1])
                else:
                    out[i] = tuple(msg.body)
                left -= 1
        for reply in out[: len(deferred)]:
            if isinstance(reply, BusError):
                raise reply
        return [r for r in out[len(deferred) :] if r is not None]

    def manager_call(self, method: str, signature: str | None = None, *body: Any) -> Any:
        out = self.call(self._manager, method, signature, tuple(body))
        return out[0] if len(out) == 1 else out

    # -- properties ---------------------------------------------------------------------

    def get_property(self, path: str, interface: str, name: str) -> Any:
        addr = DBusAddress(path, bus_name=SYSTEMD_BUS_NAME, interface=PROPS_IFACE)
        ((_sig, value),) = self.call(addr, "Get", "ss", (interface, name))
        return value

    def get_all(self, path: str, interface: str = "") -> dict[str, Any]:
        addr = DBusAddress(path, bus_name=SYSTEMD_BUS_NAME, interface=PROPS_IFACE)
        (props,) = self.call(addr, "GetAll", "s", (interface,))
        return {k: v for k, (_sig, v) in props.items()}

    def version(self) -> str:
        return str(self.get_property(MANAGER_PATH, MANAGER_IFACE, "Version"))

    def manager_version(self) -> int:
        """systemd's version number ("257.13-1~deb13u1": 257), read once per connection."""
        if self._manager_version is None:
            digits = self.version().split(".", 1)[0].split("-", 1)[0]
            self._manager_version = int(digits) if digits.isdigit() else 0
        return self._manager_version

    def unit_properties(self, unit: str, names: Iterable[str] | None = None) -> dict[str, Any]:
        """Properties of a unit, from the Unit interface and (for services) Service.

        A unit systemd does not know reads as ``LoadState=not-found``.
        """
        path = unit_path(unit)
        props = self.get_all(path, UNIT_IFACE)
        if unit.endswith(".service"):
            props.update(self.get_all(path, SERVICE_IFACE))
        elif unit.endswith((".slice", ".scope", ".mount", ".socket")):
            iface = "org.freedesktop.systemd1." + unit.rsplit(".", 1)[1].capitalize()
            props.update(self.get_all(path, iface))
        if names is not None:
            wanted = set(names)
            props = {k: v for k, v in props.items() if k in wanted}
        return props

    def unit_status(self, unit: str) -> dict[str, Any]:
        return self.unit_properties(unit, STATUS_PROPERTIES)

    # -- jobs ---------------------------------------------------------------------------

    def subscribe(self, *rules: MatchRule, defer: bool = False) -> None:
        """Ask systemd to send its signals (JobRemoved, PropertiesChanged) to us, and the
        bus to pass on those that match ``rules``: in one round trip, and only what this
        connection has not asked for yet.

        ``defer``: in the round trip of this connection's next call instead, ahead of it.
        The bus and systemd handle a connection's messages in order, so the rules hold
        before that call does anything (say, starts the units they watch); and ``run``
        waits for one round trip less."""
        calls: list[tuple[DBusAddress, str, str | None, tuple[Any, ...]]] = []
        if not self._subscribed:
            calls.append((self._manager, "Subscribe", None, ()))
        new = [
            r for r in dict.fromkeys(rule.serialise() for rule in rules) if r not in self._matches
        ]
        calls += [(message_bus, "AddMatch", "s", (r,)) for r in new]
        if not calls:
            return
        if defer:
            self._deferred += calls
        else:
            for reply in self.call_many(calls):
                if isinstance(reply, BusError):
                    raise reply
        self._subscribed = True
        self._matches.update(new)

    def _job_removed_rule(self) -> MatchRule:
        return MatchRule(
            type="signal", interface=MANAGER_IFACE, member="JobRemoved", path=MANAGER_PATH
        )

    def run_job(
        self,
        method: str,
        signature: str,
        *body: Any,
        wait: bool = True,
        timeout: float | None = None,
        meanwhile: Callable[[], object] | None = None,
    ) -> JobResult:
        """Call a job-returning manager method and wait for the job's JobRemoved.

        The signal is matched *before* the call, so a job that finishes before the
        reply arrives is not missed. Raises JobFailedError unless the result is ``done``.
        ``meanwhile`` is called once the job is queued, before the wait for it.
        """
        unit = str(body[0])
        if not wait:
            job = self.manager_call(method, signature, *body)
            return JobResult(unit=unit, job=str(job), result="queued")
        rule = self._job_removed_rule()
        self.subscribe(rule)
        queue: collections.deque[Any] = collections.deque()
        with self.conn.filter(rule, queue=queue):
            job = str(self.manager_call(method, signature, *body))
            if meanwhile is not None:
                meanwhile()
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    # recv_until_filtered pops what it returns; it returns at once
                    # when a signal is already queued.
                    msg = self.conn.recv_until_filtered(queue, timeout=left)
                except TimeoutError as e:
                    raise SystemdError(f"{method} {unit}: job {job} did not finish") from e
                _id, path, junit, result = msg.body
                if path == job:
                    break
        log.debug("bus: job %s for %s: %s", job, junit, result)
        if result != "done":
            raise JobFailedError(
                f"{method} {junit}: job {result}", unit=str(junit), result=str(result)
            )
        return JobResult(unit=str(junit), job=job, result=str(result))

    # -- units --------------------------------------------------------------------------

    def start_transient_unit(
        self,
        name: str,
        properties: Mapping[str, Any],
        aux: Sequence[tuple[str, Mapping[str, Any]]] = (),
        *,
        mode: str = "fail",
        wait: bool = True,
        timeout: float | None = None,
    ) -> JobResult:
        """Create and start a transient unit (plus auxiliary units) in one call."""
        aux_encoded = [(aname, encode_properties(aprops)) for aname, aprops in aux]
        return self.run_job(
            "StartTransientUnit",
            "ssa(sv)a(sa(sv))",
            name,
            mode,
            encode_properties(properties),
            aux_encoded,
            wait=wait,
            timeout=timeout,
        )

    def start_transient_units(
        self,
        units: Sequence[tuple[str, Mapping[str, Any], Sequence[tuple[str, Mapping[str, Any]]]]],
        *,
        mode: str = "fail",
        timeout: float | None = None,
        queued: Callable[[], object] | None = None,
        tolerate: Collection[str] = (),
    ) -> list[JobResult]:
        """Submit several StartTransientUnit calls, then wait for all their jobs.

        Units are submitted in order (a slice before the services that name it). If a
        call fails, the units already submitted exist and are the caller's to clean up.
        ``queued`` is called once every job is queued, before the wait for them. A job
        of a unit in ``tolerate`` may fail without raising: its result says so, with the
        service's exit as its signals told it during the start (``exit``).
        """
        rule = self._job_removed_rule()
        paths = {unit_path(u): u for u in tolerate}
        self.subscribe(rule, *[_changed_rule(p) for p in paths])
        queue: collections.deque[Any] = collections.deque()
        changes: collections.deque[Any] = collections.deque()
        results: dict[str, JobResult] = {}
        with (
            self.conn.filter(rule, queue=queue),
            self.conn.filter(_changed_rule(), queue=changes),
        ):
            calls = [
                (
                    self._manager,
                    "StartTransientUnit",
                    "ssa(sv)a(sa(sv))",
                    (
                        name,
                        mode,
                        encode_properties(props),
                        [(n, encode_properties(p)) for n, p in aux],
                    ),
                )
                for name, props, aux in units
            ]
            jobs: dict[str, str] = {}
            for (name, _, _), reply in zip(units, self.call_many(calls), strict=True):
                if isinstance(reply, BusError):
                    raise reply
                jobs[str(reply[0])] = name
            if queued is not None:
                queued()
            deadline = None if timeout is None else time.monotonic() + timeout
            while len(results) < len(jobs):
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    msg = self.conn.recv_until_filtered(queue, timeout=left)
                except TimeoutError as e:
                    raise SystemdError("start jobs did not finish in time") from e
                _id, path, junit, result = msg.body
                if path in jobs:
                    results[path] = JobResult(unit=str(junit), job=str(path), result=str(result))
            watched = set(paths.values())
            failed = [r.unit for r in results.values() if r.result != "done" and r.unit in watched]
            exits = self._failed_exits(failed, changes, paths) if failed else {}
        ordered = [
            r._replace(exit=exits.get(r.unit)) if r.result != "done" and r.unit in watched else r
            for r in (results[j] for j in jobs)
        ]
        for r in ordered:
            if r.result != "done" and r.unit not in tolerate:
                raise JobFailedError(
                    f"starting {r.unit}: job {r.result}", unit=r.unit, result=r.result
                )
        return ordered

    def _failed_exits(
        self, failed: Sequence[str], changes: Iterable[Any], paths: Mapping[str, str]
    ) -> dict[str, dict[str, Any]]:
        """The exit of each failed service: as its PropertiesChanged (``changes``) told
        it, else as a read shows it. The exit (a nonzero ExecMainCode) may be told after
        the job's end: the read, answered after every signal sent before it, brings those
        signals in too. Call this with the filter that fills ``changes`` in place."""
        exits = _told_exits(changes, paths)
        if all(exits.get(u, {}).get("ExecMainCode") for u in failed):
            return exits
        try:
            read = self.read_properties(failed, ("LoadState", *sorted(_EXIT_PROPERTIES)))
        except BusError:  # collected already: a fresh unit has no Service interface
            read = {}
        exits = _told_exits(changes, paths)
        for u in failed:
            now = read.get(u, {})
            if not exits.get(u, {}).get("ExecMainCode") and now.pop("LoadState", "") == "loaded":
                exits[u] = now
        return exits

    def register_machine(
        self,
        name: str,
        uuid_hex: str,
        leader: int,
        root_directory: str,
        *,
        service: str,
        wait: bool = True,
    ) -> None:
        """Register a running process tree with systemd-machined (``machinectl list``).

        Without ``wait``, the call is sent and its reply left unread: machined registers
        the machine all the same, and the caller goes on meanwhile."""
        addr = DBusAddress(
            "/org/freedesktop/machine1",
            bus_name="org.freedesktop.machine1",
            interface="org.freedesktop.machine1.Manager",
        )
        body = (name, bytes.fromhex(uuid_hex), service, "container", leader, root_directory)
        if not wait:
            log.debug("bus: RegisterMachine%s, reply not awaited", _short(body))
            self.conn.send(new_method_call(addr, "RegisterMachine", "sayssus", body))
            return
        self.call(addr, "RegisterMachine", "sayssus", body)

    def start_unit(self, name: str, *, mode: str = "replace", wait: bool = True) -> JobResult:
        return self.run_job("StartUnit", "ss", name, mode, wait=wait)

    def stop_unit(
        self,
        name: str,
        *,
        mode: str = "replace",
        wait: bool = True,
        meanwhile: Callable[[], object] | None = None,
    ) -> JobResult:
        return self.run_job("StopUnit", "ss", name, mode, wait=wait, meanwhile=meanwhile)

    def kill_unit(self, name: str, signal: int, *, who: str = "all") -> None:
        self.manager_call("KillUnit", "ssi", name, who, signal)

    def reset_failed_unit(self, name: str) -> None:
        self.manager_call("ResetFailedUnit", "s", name)

    def reload(self) -> None:
        """daemon-reload; waits until the manager has reloaded."""
        self.manager_call("Reload")

    def list_units(
        self, patterns: Sequence[str] = (), states: Sequence[str] = ()
    ) -> list[UnitInfo]:
        """Loaded units whose names match any of the shell-style patterns."""
        rows = self.manager_call("ListUnitsByPatterns", "asas", list(states), list(patterns))
        return [UnitInfo(r[0], r[1], r[2], r[3], r[4], int(r[7])) for r in rows]

    def read_properties(
        self, units: Sequence[str], names: Sequence[str] = WATCH_PROPERTIES
    ) -> dict[str, dict[str, Any]]:
        """Some properties of several units, read with one pipelined ``Get`` per unit and
        property: a few small messages where ``GetAll`` (see :meth:`unit_properties`)
        would decode a few hundred properties per unit and interface."""
        keys, calls = _get_calls(units, names)
        out: dict[str, dict[str, Any]] = {u: {} for u in units}
        for (unit, name), reply in zip(keys, self.call_many(calls), strict=True):
            if isinstance(reply, BusError):
                raise reply
            ((_sig, value),) = reply
            out[unit][name] = value
        return out

    def _send_gets(self, units: Sequence[str], names: Sequence[str]) -> dict[int, tuple[str, str]]:
        """Send a ``Get`` per unit and property, not waiting; {serial: (unit, name)}."""
        sent = {}
        for key, (addr, method, signature, body) in zip(*_get_calls(units, names), strict=True):
            serial = next(self.conn.outgoing_serial)
            self.conn.send(new_method_call(addr, method, signature, body), serial=serial)
            sent[serial] = key
        log.debug("bus: Get %s of %s", ", ".join(names), ", ".join(units))
        return sent

    def watch(
        self,
        units: Sequence[str],
        done: Iterable[str] = ("inactive", "failed"),
        *,
        timeout: float | None = None,
        idle: bool = False,
        jobs: bool = False,
        running: Callable[[str, int], object] | None = None,
        running_after: float = 0.0,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(unit, properties)`` as each of the units reaches an ActiveState in
        ``done`` (with ``idle``, also with no job queued: a unit about to start reads as
        inactive), in the order they get there, with their :data:`WATCH_PROPERTIES`.
        ``running(unit, pid)`` is called, while iterating, once per unit that has had a
        MainPID (told by a signal or read) for ``running_after`` seconds and has not
        ended meanwhile, with its MainPID then.

        PropertiesChanged is matched on every unit here, at once; the properties are
        read when iteration begins (not those of units started over this connection with
        ``jobs``, whose signals tell all from before they existed). So a caller may watch
        units, then start them, and miss nothing: not even the exit of a unit that ends
        and is collected
        (CollectMode=inactive-or-failed) before iteration begins, as its signals said
        it (systemd sends a service's interface, its exit, before the Unit's, its
        state, each with every property that changed). The units may be started over
        this connection too: its signals are kept for the watch from the moment this
        returns.
        """
        paths = {unit_path(u): u for u in units}
        # With ``jobs``, the caller is about to start the units over this connection
        # (start_transient_units): their JobRemoved is asked for too, and all of it in
        # that start's round trip (or once iteration begins, if that comes first; then
        # the units are read, as they are without ``jobs``).
        jobs_rule = [self._job_removed_rule()] if jobs else []
        self.subscribe(*[_changed_rule(p) for p in paths], *jobs_rule, defer=jobs)
        deadline = None if timeout is None else time.monotonic() + timeout
        # The filters take this connection's messages from here on, not once iteration
        # begins: the caller may start the units over this very connection meanwhile.
        stream: collections.deque[Any] = collections.deque()
        handles = [
            self.conn.filter(_changed_rule(), queue=stream),
            self.conn.filter(MatchRule(type="method_return"), queue=stream),
            self.conn.filter(MatchRule(type="error"), queue=stream),
        ]
        return self._watch(
            paths, set(done), deadline, idle, stream, handles, running, running_after, jobs
        )

    def _watch(
        self,
        paths: Mapping[str, str],
        wanted: set[str],
        deadline: float | None,
        idle: bool,
        stream: collections.deque[Any],
        handles: Sequence[Any],
        running: Callable[[str, int], object] | None = None,
        running_after: float = 0.0,
        fresh: bool = False,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        def ended(p: Mapping[str, Any]) -> bool:
            job = p.get("Job")
            return p.get("ActiveState") in wanted and not (idle and job and job[0])

        units = list(paths.values())
        props: dict[str, dict[str, Any]] = {u: {} for u in units}
        # Units systemd has collected: a read sees a fresh, not-found unit, so their
        # exit is what their signals said.
        gone: set[str] = set()
        # Exit properties a signal has told, per unit. A read never takes them back:
        # once machined has registered a service's process, a read soon after the
        # service failed may show it loaded anew, Result=success, ExecMainStatus=0
        # (systemd 252; 2 runs in 60 of a pod that exits at once, before this rule).
        told: dict[str, set[str]] = {u: set() for u in units}
        left = list(units)
        # When ``running`` is due per unit with a MainPID; None once it has been called
        # (or the unit ended first).
        due_at: dict[str, float | None] = {}

        def tell_pid(unit: str) -> None:
            if running is not None and props[unit].get("MainPID") and unit not in due_at:
                due_at[unit] = time.monotonic() + running_after
                due()

        def due() -> float | None:
            """Call ``running`` for the units due; when the next one is."""
            assert running is not None
            now, soonest = time.monotonic(), None
            for unit, when in due_at.items():
                if when is None:
                    continue
                pid = props[unit].get("MainPID")
                if unit not in left or ended(props[unit]):
                    due_at[unit] = None
                elif when > now:
                    soonest = when if soonest is None else min(soonest, when)
                elif pid:
                    due_at[unit] = None
                    running(unit, int(pid))
            return soonest

        try:
            if self._deferred:
                self.call_many([])  # the subscription no call has taken along yet
                fresh = False
            # Units this connection started after subscribing (``jobs``, the subscription
            # taken along by the start) are told by their signals from before they
            # existed, each with every property that changed: a read would only cost
            # systemd nine Gets per unit just as it starts them.
            pending = {} if fresh else self._send_gets(units, WATCH_PROPERTIES)
            while left:
                if not pending:
                    for unit in [u for u in left if ended(props[u])]:
                        left.remove(unit)
                        yield unit, dict(props[unit])
                    if not left:
                        return
                until, for_running = deadline, False
                soonest = due() if due_at else None
                if soonest is not None and (until is None or soonest < until):
                    until, for_running = soonest, True
                try:
                    wait = None if until is None else max(0.0, until - time.monotonic())
                    msg = self.conn.recv_until_filtered(stream, timeout=wait)
                except TimeoutError as e:
                    if for_running:
                        continue  # ``running`` is due
                    raise SystemdError(
                        f"{', '.join(left)} did not reach {sorted(wanted)} in time"
                    ) from e
                fields = msg.header.fields
                if msg.header.message_type == MessageType.signal:
                    unit = paths.get(fields.get(HeaderFields.path, ""), "")
                    if unit not in props or len(msg.body) != 3:
                        continue
                    _iface, changed, invalidated = msg.body
                    props[unit].update((k, v) for k, (_sig, v) in changed.items() if k in _WATCHED)
                    told[unit].update(k for k in changed if k in _EXIT_PROPERTIES)
                    tell_pid(unit)
                    stale = [k for k in invalidated if k in _WATCHED]
                    reading = (unit, "ActiveState") in pending.values()
                    if ended(props[unit]) and unit in left and not reading:
                        # A signal may tell of a state the unit has left already: a
                        # service that systemd restarts is "failed", then at once
                        # "activating" (auto-restart). A read, answered after every
                        # signal sent before it, tells where it is now.
                        stale = [*_UNIT_PROPERTIES, *stale]
                    if stale:
                        pending.update(self._send_gets([unit], list(dict.fromkeys(stale))))
                    continue
                key = pending.pop(fields.get(HeaderFields.reply_serial, -1), None)
                if key is None:
                    continue  # a reply to another call
                if msg.header.message_type == MessageType.error:
                    text = msg.body[0] if msg.body else ""
                    raise _bus_error(fields.get(HeaderFields.error_name, "unknown"), text, "Get")
                unit, name = key
                ((_sig, value),) = msg.body
                if name == "LoadState" and value == "not-found":
                    gone.add(unit)
                if unit in gone and name in _SERVICE_PROPERTIES and name in props[unit]:
                    continue
                if name in told[unit]:
                    continue
                props[unit][name] = value
                if name == "MainPID":
                    tell_pid(unit)
        finally:
            for h in handles:
                h.close()

    def wait_for_state(
        self,
        unit: str,
        done: Iterable[str] = ("inactive", "failed"),
        *,
        timeout: float | None = None,
        idle: bool = False,
    ) -> dict[str, Any]:
        """Block until the unit's ActiveState is one of ``done`` (see :meth:`watch`);
        return its :data:`WATCH_PROPERTIES`."""
        for _unit, props in self.watch([unit], done, timeout=timeout, idle=idle):
            return props
        raise AssertionError("unreachable")


def _told_exits(changes: Iterable[Any], paths: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The exit properties the services' PropertiesChanged told, per unit."""
    exits: dict[str, dict[str, Any]] = {}
    for msg in changes:
        unit = paths.get(msg.header.fields.get(HeaderFields.path, ""))
        if unit is not None and len(msg.body) == 3 and msg.body[0] == SERVICE_IFACE:
            told = {k: v for k, (_sig, v) in msg.body[1].items() if k in _EXIT_PROPERTIES}
            exits.setdefault(unit, {}).update(told)
    return exits


def _get_calls(
    units: Sequence[str], names: Sequence[str]
) -> tuple[list[tuple[str, str]], list[tuple[DBusAddress, str, str, tuple[str, str]]]]:
    """A ``Get`` per unit and property (a service's only on services), and its
    ``(unit, name)``."""
    keys, calls = [], []
    for unit in units:
        addr = DBusAddress(unit_path(unit), bus_name=SYSTEMD_BUS_NAME, interface=PROPS_IFACE)
        for name in names:
            service = name in _SERVICE_PROPERTIES
            if service and not unit.endswith(".service"):
                continue
            keys.append((unit, name))
            calls.append((addr, "Get", "ss", (SERVICE_IFACE if service else UNIT_IFACE, name)))
    return keys, calls


def _changed_rule(path: str | None = None) -> MatchRule:
    return MatchRule(type="signal", interface=PROPS_IFACE, member="PropertiesChanged", path=path)


def connect(address: str | None = None) -> Systemd:
    """Connect to systemd on the system bus, or on an explicit bus address."""
    bus = address or "SYSTEM"
    try:
        conn = open_dbus_connection(bus=bus, enable_fds=True)
    except (OSError, ValueError, KeyError) as e:
        raise SystemdError(
            f"cannot connect to the bus at {address or 'the system bus'}: {e}",
            hint="is systemd (and dbus) running on this host?",
        ) from e
    return Systemd(conn, address or "system")


def _short(body: tuple[Any, ...]) -> str:
    text = repr(body)
    return text if len(text) < 200 else text[:197] + "..."


def iter_exec(
    commands: Iterable[Sequence[str]], *, ignore_failure: bool = False
) -> Iterator[ExecCommand]:
    """ExecStart-style entries from argv lists (the path is argv[0])."""
    for argv in commands:
        yield (argv[0], list(argv), ignore_failure)
