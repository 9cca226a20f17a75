"""Pods as systemd units: names, and unit properties as pure functions of a plan.

Nothing here talks to the bus or reads the disk. :mod:`podmgr.pod` resolves a pod (images,
users, paths) into an :class:`AppPlan` per app; this module turns that into the property
mappings given to ``StartTransientUnit``.

Unit names (stable, documented in docs/units.md):

- ``podmgr.slice`` — the parent of every pod;
- ``podmgr-<uuid hex>.slice`` — one pod (the UUID without dashes: a dash in a slice name
  means nesting); pod-level isolators bound it;
- ``podmgr-<uuid hex>-<app>.service`` — one app;
- the app's root filesystem is an overlay that podmgr mounts before the units start
  (:func:`podmgr.rootfs.mount_root`); the service's ``RootDirectory=``, which systemd
  then shows as a mount unit named after its mount point.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from podmgr import isolators as iso
from podmgr.execshim import TARGET as EXEC_SHIM_TARGET

# Re-exported: the names are part of this module's API.
from podmgr.names import SLICE as SLICE
from podmgr.names import UNIT_PREFIX as UNIT_PREFIX
from podmgr.names import app_service as app_service
from podmgr.names import exit_hook_unit as exit_hook_unit
from podmgr.names import machine_name as machine_name
from podmgr.names import net_unit as net_unit
from podmgr.names import pod_hex as pod_hex
from podmgr.names import pod_slice as pod_slice
from podmgr.options import Bind as Bind
from podmgr.options import ExitPolicy as ExitPolicy
from podmgr.options import NetMode as NetMode
from podmgr.options import RestartPolicy as RestartPolicy

#: ace.md "Execution Environment".
APPC_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The ``container`` variable apps see (ace.md: the executor's name).
CONTAINER = "podmgr"

#: OS-SPEC/ace.md: the default capability bounding set.
DEFAULT_CAPS = (
    "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER",
    "CAP_KILL", "CAP_MKNOD", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_SETUID",
    "CAP_SETGID", "CAP_SETPCAP", "CAP_SETFCAP", "CAP_SYS_CHROOT",
)  # fmt: skip

# linux/capability.h numbering.
CAP_NUMBERS = {
    name: i
    for i, name in enumerate(
        [
            "CHOWN",
            "DAC_OVERRIDE",
            "DAC_READ_SEARCH",
            "FOWNER",
            "FSETID",
            "KILL",
            "SETGID",
            "SETUID",
            "SETPCAP",
            "LINUX_IMMUTABLE",
            "NET_BIND_SERVICE",
            "NET_BROADCAST",
            "NET_ADMIN",
            "NET_RAW",
            "IPC_LOCK",
            "IPC_OWNER",
            "SYS_MODULE",
            "SYS_RAWIO",
            "SYS_CHROOT",
            "SYS_PTRACE",
            "SYS_PACCT",
            "SYS_ADMIN",
            "SYS_BOOT",
            "SYS_NICE",
            "SYS_RESOURCE",
            "SYS_TIME",
            "SYS_TTY_CONFIG",
            "MKNOD",
            "LEASE",
            "AUDIT_WRITE",
            "AUDIT_CONTROL",
            "SETFCAP",
            "MAC_OVERRIDE",
            "MAC_ADMIN",
            "SYSLOG",
            "WAKE_ALARM",
            "BLOCK_SUSPEND",
            "AUDIT_READ",
            "PERFMON",
            "BPF",
            "CHECKPOINT_RESTORE",
        ]
    )
}

#: ace.md lets an executor block syscalls that apps do not need when no seccomp isolator
#: is given; this is the set Docker and rkt blocked by default.
DEFAULT_SECCOMP_REMOVE = (
    "_sysctl", "acct", "add_key", "adjtimex", "bpf", "clock_adjtime", "clock_settime",
    "create_module", "delete_module", "finit_module", "get_kernel_syms", "get_mempolicy",
    "init_module", "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl",
    "lookup_dcookie", "mbind", "mount", "move_pages", "name_to_handle_at", "nfsservctl",
    "open_by_handle_at", "perf_event_open", "pivot_root", "process_vm_readv",
    "process_vm_writev", "ptrace", "query_module", "quotactl", "reboot", "request_key",
    "set_mempolicy", "setns", "settimeofday", "swapoff", "swapon", "sysfs", "umount2",
    "unshare", "uselib", "ustat", "vhangup",
)  # fmt: skip
#: ace.md: the minimum an app needs for its life cycle, always allowed in a retain set.
SECCOMP_ALWAYS_ALLOWED = ("execve", "exit", "exit_group", "rt_sigreturn", "sigreturn")

MS_REC = 16384

#: /sys for an app on the host's network is the host's sysfs alone (no MS_REC),
#: read-only, as podman and systemd-nspawn give it; not the host's debugfs, tracefs,
#: fusectl, bpffs and whole cgroup tree mounted beneath it, which systemd's own /sys
#: (MountAPIVFS=) brings along. And each of those submounts is one more read-only remount
#: for ProtectKernelTunables= at every app's start: 6 ms on a host with hybrid cgroups
#: (systemd 257). A pod with a network of its own gets a sysfs of its namespace alone in
#: the same way (PodPlan.sysfs_path, podmgr.netns): 15 ms of 70 for systemd's start of
#: an app, against systemd's sysfs of the namespace with the host's submounts.
#:
#: With such a /sys, what ProtectKernelTunables= does beyond it (app_properties): the
#: writable kernel interfaces of /proc made read-only (its table in systemd's
#: namespace.c; "-": where the kernel has it, "+": in the app's root, whose /proc
#: MountAPIVFS= mounted). Root writes most of them with no capability at all: a sysctl
#: (kernel.core_pattern runs a program as the host's root), the SysRq trigger, IRQ
#: affinities, PCI configuration space. Not ProtectKernelTunables= itself: it also
#: remounts /sys and the four filesystems beneath it on the host, which this /sys does
#: not bring (a no-op on /sys, read-only already), and /proc/timer_list (read-only
#: already), each a mount and remount at every start: 8 ms of 60 for systemd's start of
#: an app (systemd-run, Debian 13's systemd 257).
KERNEL_TUNABLES = tuple(
    f"-+/proc/{p}"
    for p in (
        *("acpi", "apm", "asound", "bus", "fs", "irq", "latency_stats", "mtrr", "scsi"),
        *("sys", "sysrq-trigger"),
    )
)
#: The rest of ProtectKernelTunables=: files it makes inaccessible, which without the
#: capability show nothing (kallsyms: zero addresses) or refuse to open (kcore).
KERNEL_SECRETS = {"SYSLOG": "-+/proc/kallsyms", "SYS_RAWIO": "-+/proc/kcore"}

#: What podmgr-exec needs beyond the app's own privileges, as root before it drops them:
#: CAP_SYS_ADMIN for its namespaces and /proc, CAP_KILL to pass signals on to an app of
#: another user, the others to drop to the app's.
SHIM_CAPS = ("SYS_ADMIN", "KILL", "SETPCAP", "SETUID", "SETGID")
#: For ``podmgr enter``: opening the namespaces of an app that runs as another user is
#: ptrace access; joining a mount namespace takes CAP_SYS_CHROOT too.
SHIM_JOIN_CAPS = (*SHIM_CAPS, "SYS_PTRACE", "SYS_CHROOT")
#: The system calls podmgr-exec makes that an app's filter may deny. systemd's filter
#: lets them through, and podmgr-exec denies them again (-D) before it executes the app,
#: with the app's errno or SIGSYS, so the app's filter is what it was.
SHIM_RELAXED = (
    "capset", "mount", "prctl", "setgroups", "sethostname", "setns", "setresgid",
    "setresuid", "umount2", "unshare",
)  # fmt: skip
#: The rest of what the static podmgr-exec calls (strace), added to an allow list
#: (seccomp-retain-set) so that it can run at all; harmless, they stay allowed.
SHIM_PLUMBING = (
    "access", "arch_prctl", "brk", "chdir", "clone", "close", "execve", "exit_group",
    "getpid", "getrandom", "getuid", "ioctl", "kill", "mmap", "mprotect", "munmap",
    "newfstatat", "openat", "pipe2", "poll", "pread64", "prlimit64", "read", "readlink",
    "rseq", "rt_sigaction", "rt_sigprocmask", "sendmsg", "sendto", "set_robust_list",
    "set_tid_address", "setsid", "socket", "wait4", "write",
)  # fmt: skip


class ShimMode(enum.Enum):
    """How podmgr-exec starts a command."""

    #: The app: new PID and UTS namespaces, with podmgr-exec as its parent.
    APP = "app"
    #: An event handler (pre-start, post-stop): the same, and no sd_notify messages.
    HANDLER = "handler"
    #: ``podmgr enter``: the running app's namespaces, joined (its PID then comes at
    #: enter's start, as ``-J PID``); podmgr-exec stays as the command's parent.
    JOIN = "join"


class IsolatorState(enum.StrEnum):
    APPLIED = "applied"
    BOUNDED = "bounded"
    IGNORED = "ignored"


def escape_path(path: str) -> str:
    """``systemd-escape --path``: the unit name stem for a path."""
    trimmed = "/".join(p for p in path.split("/") if p)
    if not trimmed:
        return "-"
    out = []
    for i, ch in enumerate(trimmed.encode()):
        c = chr(ch)
        if c == "/":
            out.append("-")
        elif c.isascii() and (c.isalnum() or c in ":_" or (c == "." and i > 0)):
            out.append(c)
        else:
            out.append(f"\\x{ch:02x}")
    return "".join(out)


def mount_unit(path: str) -> str:
    return escape_path(path) + ".mount"


@dataclass(frozen=True)
class IsolatorReport:
    scope: str  # "pod" or the app's name
    name: str
    state: IsolatorState
    detail: str = ""


@dataclass(frozen=True)
class SocketPort:
    """An app port declared ``socketActivated: true`` (aci.md), ``count`` ports from
    ``port``."""

    name: str
    protocol: str  # tcp or udp
    port: int
    count: int = 1


@dataclass(frozen=True)
class AppPlan:
    """Everything resolved about one app; the input to :func:`app_properties`."""

    name: str
    exec: tuple[str, ...]
    uid: int
    gid: int
    supplementary_gids: tuple[int, ...] = ()
    working_dir: str = "/"
    environment: Mapping[str, str] = field(default_factory=dict)
    pre_start: tuple[str, ...] | None = None
    post_stop: tuple[str, ...] | None = None
    isolators: tuple[Any, ...] = ()
    read_only_rootfs: bool = False
    binds: tuple[Bind, ...] = ()
    restart: RestartPolicy = RestartPolicy.NO
    #: The app tells systemd when it is ready (sd_notify): Type=notify.
    notify: bool = False
    #: Path of the overlay (RootDirectory) that podmgr mounts at the pod's start
    #: (:func:`podmgr.rootfs.mount_root`).
    rootfs: str = ""
    #: Ports declared ``socketActivated: true``: systemd listens, the app gets the fds.
    sockets: tuple[SocketPort, ...] = ()
    #: The image is built for the host's architecture (its arch label, or none): its
    #: system calls are the host's native ABI only (SystemCallArchitectures=native).
    native_abi: bool = False


@dataclass(frozen=True)
class PodPlan:
    uuid: str
    apps: tuple[AppPlan, ...]
    isolators: tuple[Any, ...] = ()
    net: NetMode = NetMode.HOST
    #: The command (run outside the pod) that records an app's exit and applies the exit
    #: policy; the app's name is appended.
    exit_hook: tuple[str, ...] = ()
    exit_hook_env: tuple[str, ...] = ()
    #: A pod-private directory shared by its apps as /dev/shm.
    shm_dir: str | None = None
    metadata_url: str | None = None
    #: The pod's network namespace (podmgr.network), joined by every app; None: the host's.
    netns_path: str | None = None
    #: A sysfs of that namespace, read-only (podmgr.netns), the apps' /sys; None:
    #: systemd's (with what the host has mounted beneath its /sys).
    sysfs_path: str | None = None
    #: The command whose ExecStop= tears the pod's network down (podmgr.network).
    net_hook: tuple[str, ...] = ()
    #: The host path of podmgr-exec (podmgr.execshim), which starts every app in PID and
    #: UTS namespaces of its own; None only in unit tests of the properties without it.
    shim: str | None = None
    #: The apps' host name, in their UTS namespace.
    hostname: str | None = None


# ---- isolators ---------------------------------------------------------------------


def _find(isolators: Sequence[Any], kind: type) -> Any:
    return next((i for i in isolators if isinstance(i, kind)), None)


def _bounded(app_value: int | None, pod_value: int | None) -> int | None:
    values = [v for v in (app_value, pod_value) if v is not None]
    return min(values) if values else None


def resource_properties(isolators: Sequence[Any]) -> dict[str, Any]:
    """Properties from resource isolators (used for both the pod slice and an app)."""
    props: dict[str, Any] = {}
    mem = _find(isolators, iso.MemoryIsolator)
    if mem is not None:
        props["MemoryMax"] = mem.value.limit_bytes
        if mem.value.request is not None and mem.value.request_bytes < mem.value.limit_bytes:
            props["MemoryLow"] = mem.value.request_bytes
    cpu = _find(isolators, iso.CPUIsolator)
    if cpu is not None:
        # 1000 millicores = one CPU = 1 s of CPU time per second.
        props["CPUQuotaPerSecUSec"] = max(cpu.value.limit_millicores * 1000, 1000)
    shares = _find(isolators, iso.CPUSharesIsolator)
    if shares is not None:
        props["CPUWeight"] = cpu_shares_to_weight(shares.value)
    return props


def cpu_shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares (2..262144, default 1024) to v2 CPUWeight (1..10000, 100)."""
    return max(1, min(10000, round(shares * 100 / 1024)))


def capability_sets(isolators: Sequence[Any], uid: int) -> tuple[int, int | None]:
    """(bounding mask, ambient mask or None) by ace.md's capability isolators.

    A retain set replaces the default set, a remove set subtracts from it. Root gets the
    bounding set as its effective set anyway; a non-root user gets no capability unless it
    was asked for explicitly in a retain set, which then becomes its ambient set too.
    """
    retain = _find(isolators, iso.CapabilitiesRetainSetIsolator)
    remove = _find(isolators, iso.CapabilitiesRemoveSetIsolator)
    if retain is not None:
        names = set(retain.value.set)
    else:
        names = set(DEFAULT_CAPS)
        if remove is not None:
            names -= set(remove.value.set)
    mask = caps_mask(names)
    ambient = mask if (retain is not None and uid != 0) else None
    return mask, ambient


def caps_mask(names: Sequence[str] | set[str]) -> int:
    mask = 0
    for n in names:
        num = CAP_NUMBERS.get(n.upper().removeprefix("CAP_"))
        if num is not None:
            mask |= 1 << num
    return mask


def seccomp_properties(isolators: Sequence[Any], bounding: int) -> dict[str, Any]:
    """The app's system call filter, by ace.md's seccomp isolators, for an app whose
    capability bounding set is ``bounding``.

    The kernel's log and modules are kept from the app through its capabilities and this
    one filter, not systemd's ProtectKernelLogs= and ProtectKernelModules= (each costs
    systemd 3 ms of every app's start, mounts in the app's namespace and a filter of its
    own, and each overrides a retain set that asks for CAP_SYSLOG or CAP_SYS_MODULE):

    - Modules: without CAP_SYS_MODULE the kernel refuses to load or remove one (and the
      default deny list blocks the calls); with it, the manifest asked for modules.
    - Kernel log: without CAP_SYSLOG the kernel refuses /proc/kmsg, and a private /dev
      has no /dev/kmsg, but syslog(2) still reads the log where kernel.dmesg_restrict=0.
      So syslog is denied (added to a deny list, dropped from an allow list); with no
      filter at all (``@appc.io/all``) systemd's ProtectKernelLogs= does it.
    """
    no_log = set() if bounding & (1 << CAP_NUMBERS["SYSLOG"]) else {"syslog"}
    retain = _find(isolators, iso.SeccompRetainSetIsolator)
    remove = _find(isolators, iso.SeccompRemoveSetIsolator)
    props: dict[str, Any] = {}
    chosen = retain or remove
    if chosen is not None and chosen.value.errno:
        props["SystemCallErrorNumber"] = errno_number(chosen.value.errno)
    if retain is not None:
        names = list(retain.value.set)
        if "@appc.io/all" in names:
            return {"ProtectKernelLogs": True} if no_log else {}
        allowed = sorted({*names, *SECCOMP_ALWAYS_ALLOWED} - no_log)
        props["SystemCallFilter"] = (True, allowed)
    elif remove is not None:
        names = list(remove.value.set)
        if "@appc.io/empty" in names:
            names = list(DEFAULT_SECCOMP_REMOVE)
        props["SystemCallFilter"] = (False, sorted({*names, *no_log}))
    else:
        props["SystemCallFilter"] = (False, sorted({*DEFAULT_SECCOMP_REMOVE, *no_log}))
    return props


def errno_number(name: str) -> int:
    number = getattr(errno, name, None)
    if not isinstance(number, int):
        raise ValueError(f"unknown errno {name!r}")
    return number


def isolator_report(scope: str, isolators: Sequence[Any], *, pod: bool) -> list[IsolatorReport]:
    """Which isolators are applied and which are ignored (ace.md: say so to the user)."""
    handled: tuple[type, ...] = (
        iso.MemoryIsolator,
        iso.CPUIsolator,
        iso.CPUSharesIsolator,
        iso.OOMScoreAdjIsolator,
    )
    if pod:
        # Applied in the pod's own network namespace (podmgr.network), net.* only.
        handled += (iso.SysctlIsolator,)
    if not pod:
        handled += (
            iso.CapabilitiesRetainSetIsolator,
            iso.CapabilitiesRemoveSetIsolator,
            iso.SeccompRetainSetIsolator,
            iso.SeccompRemoveSetIsolator,
            iso.NoNewPrivilegesIsolator,
        )
    out = []
    for i in isolators:
        name = str(i.name)
        if isinstance(i, handled):
            out.append(IsolatorReport(scope, name, IsolatorState.APPLIED))
        elif not i.known:
            out.append(IsolatorReport(scope, name, IsolatorState.IGNORED, "unknown isolator"))
        else:
            out.append(
                IsolatorReport(scope, name, IsolatorState.IGNORED, "not supported by podmgr")
            )
    return out


# ---- units ---------------------------------------------------------------------------


def slice_properties(pod: PodPlan) -> dict[str, Any]:
    props: dict[str, Any] = {
        "Description": f"podmgr pod {pod.uuid}",
        "MemoryAccounting": True,
        "CPUAccounting": True,
        "TasksAccounting": True,
    }
    props.update(resource_properties(pod.isolators))
    return props


def exit_hook_properties(pod: PodPlan, app: str) -> dict[str, Any]:
    """The oneshot unit that records an app's exit and applies the pod's exit policy.

    Unless ``podmgr run`` is attached to the pod and does that work itself: it then
    starts the hook with a condition that skips it meanwhile (``launch._attached_hooks``).
    """
    props: dict[str, Any] = {
        "Description": f"podmgr pod {pod.uuid} app {app} exit",
        "Type": "oneshot",
        "Slice": SLICE,
        "CollectMode": "inactive-or-failed",
        "ExecStart": [(pod.exit_hook[0], [*pod.exit_hook, app], False)],
        "Environment": list(pod.exit_hook_env),
    }
    return props


#: The net unit's ExecStop=: ``sh -c GUARD sh NETNS_PATH CMD…`` runs CMD only if the
#: pod's netns still exists (the teardown deletes it last, and only once complete).
NET_STOP_GUARD = 'test -e "$1" || exit 0; shift; exec "$@"'


def net_unit_properties(pod: PodPlan) -> dict[str, Any]:
    """The unit that holds the pod's network: started before the apps (which are ordered
    after it), it is bound to the pod's slice, so whatever stops the pod stops it after
    the apps, and its ExecStop= tears the network down."""
    return {
        "Description": f"podmgr pod {pod.uuid} network",
        "Type": "oneshot",
        "RemainAfterExit": True,
        "Slice": SLICE,
        "BindsTo": [pod_slice(pod.uuid)],
        "After": [pod_slice(pod.uuid)],
        "CollectMode": "inactive-or-failed",
        # Only while the netns exists: `podmgr run` tears the network down itself once
        # the apps are gone, sparing this a Python start on the way out.
        "ExecStop": [
            (
                "/bin/sh",
                ["/bin/sh", "-c", NET_STOP_GUARD, "sh", pod.netns_path or "", *pod.net_hook],
                False,
            )
        ],
        "Environment": list(pod.exit_hook_env),
    }


def socket_unit(uuid: str, app: str) -> str:
    """The app's socket unit: named after its service, which is how systemd 252 pairs
    them (a transient unit can set neither the socket's ``Service=`` nor the service's
    ``Sockets=``)."""
    return app_service(uuid, app).removesuffix(".service") + ".socket"


#: Listen= socket types by appc port protocol.
SOCKET_TYPES = {"tcp": "Stream", "udp": "Datagram"}


def socket_properties(app: AppPlan, pod: PodPlan) -> dict[str, Any]:
    """The transient socket unit that listens on the app's socket-activated ports and
    passes them to the app by the sd_listen_fds protocol (LISTEN_FDS, LISTEN_FDNAMES), in
    the order of the manifest's ports (a range port by port).

    One socket unit per app (see :func:`socket_unit`), so one ``FileDescriptorName=``:
    the port's name when the app has one socket-activated port (or range), otherwise
    systemd's default, the socket unit's name. A bare port number listens on IPv6 and
    IPv4 alike. In the pod's network namespace (``NetworkNamespacePath=``) unless the pod
    uses the host's. It lives in the pod's slice, so stopping the pod closes it.
    """
    listen = []
    for s in app.sockets:
        kind = SOCKET_TYPES.get(s.protocol.lower())
        if kind is None:
            raise ValueError(f"port {s.name!r}: protocol {s.protocol!r} cannot be socket-activated")
        listen += [(kind, str(s.port + i)) for i in range(s.count)]
    props: dict[str, Any] = {
        "Description": f"podmgr pod {pod.uuid} app {app.name} sockets",
        "Listen": listen,
        "Accept": False,
        "Slice": pod_slice(pod.uuid),
        "CollectMode": "inactive-or-failed",
    }
    if len({s.name for s in app.sockets}) == 1:
        props["FileDescriptorName"] = app.sockets[0].name
    if pod.netns_path:
        props["NetworkNamespacePath"] = pod.netns_path
        if pod.net_hook:
            # Closed before the net unit's ExecStop= deletes the namespace.
            props["BindsTo"] = [net_unit(pod.uuid)]
            props["After"] = [net_unit(pod.uuid)]
    return props


def _exec(argv: Sequence[str], flags: Sequence[str] = ()) -> tuple[str, list[str], list[str]]:
    return (argv[0], list(argv), list(flags))


def app_environment(app: AppPlan, pod: PodPlan) -> dict[str, str]:
    """The final environment: the app's, with the variables ace.md requires on top."""
    env = dict(app.environment)
    env.setdefault("PATH", APPC_PATH)
    env["AC_APP_NAME"] = app.name
    env["container"] = CONTAINER
    if pod.metadata_url:
        env["AC_METADATA_URL"] = pod.metadata_url
    return env


def app_properties(
    app: AppPlan,
    pod: PodPlan,
    *,
    others: Sequence[str] = (),
    shim_mode: ShimMode = ShimMode.APP,
    join_pid: int | None = None,
) -> dict[str, Any]:
    """The transient service for one app of a pod.

    ``others`` are the other apps' services, which share its IPC namespace; the network
    namespace is the pod's own (``netns_path``) unless the pod uses the host's. With
    ``shim_mode`` JOIN, a command that joins the running app process ``join_pid``'s
    namespaces instead (``podmgr enter``).
    """
    env = app_environment(app, pod)
    # Apps are confined by default, then isolators loosen or tighten that.
    mem_app = resource_properties(app.isolators)
    mem_pod = resource_properties(pod.isolators)
    props: dict[str, Any] = {
        "Description": f"podmgr pod {pod.uuid} app {app.name}",
        "Slice": pod_slice(pod.uuid),
        "CollectMode": "inactive-or-failed",
        "Type": "exec",
        # The overlay is podmgr's mount, made before the units start (rootfs.mount_root);
        # RootDirectory= adds RequiresMountsFor= on it once systemd has seen it.
        "RootDirectory": app.rootfs,
        "User": str(app.uid),
        "Group": str(app.gid),
        "SupplementaryGroups": [str(g) for g in app.supplementary_gids],
        "WorkingDirectory": app.working_dir,
        "Environment": [f"{k}={v}" for k, v in env.items()],
        "SyslogIdentifier": app.name,
        "LogExtraFields": [f"PODMGR_POD={pod.uuid}", f"PODMGR_APP={app.name}"],
        "StandardOutput": "journal",
        "StandardError": "journal",
        "MountAPIVFS": True,
        "PrivateDevices": True,
        "PrivateIPC": True,
        # Not ProtectKernelModules= nor ProtectKernelLogs=: see seccomp_properties().
        "KillMode": "mixed",
        "TimeoutStopUSec": 10_000_000,
        "Restart": app.restart.value,
        "RestartUSec": 100_000,
        "MemoryAccounting": True,
        "CPUAccounting": True,
        "TasksAccounting": True,
    }
    for key in ("MemoryMax", "MemoryLow", "CPUQuotaPerSecUSec", "CPUWeight"):
        # The pod's slice bounds its apps already; repeating the bound on the app keeps
        # the app's own accounting honest when only the pod sets a limit.
        bounded = _bounded(mem_app.get(key), mem_pod.get(key) if key != "CPUWeight" else None)
        if bounded is not None:
            props[key] = bounded
    oom = _find(app.isolators, iso.OOMScoreAdjIsolator) or _find(
        pod.isolators, iso.OOMScoreAdjIsolator
    )
    if oom is not None:
        props["OOMScoreAdjust"] = oom.value
    bounding, ambient = capability_sets(app.isolators, app.uid)
    props["CapabilityBoundingSet"] = bounding
    if ambient is not None:
        props["AmbientCapabilities"] = ambient
    nnp = _find(app.isolators, iso.NoNewPrivilegesIsolator)
    # Secure by default: no_new_privs unless the manifest explicitly turns it off.
    props["NoNewPrivileges"] = True if nnp is None else bool(nnp.value)
    props.update(seccomp_properties(app.isolators, bounding))
    if app.native_abi and "SystemCallFilter" in props:
        # An amd64 image has no use for the i386 or x32 system call ABIs, each a way
        # around a filter written for the native one; and systemd loads the filters for
        # one architecture, not three (2-3 ms of every app's start). Unless filtering is
        # off (@appc.io/all).
        props["SystemCallArchitectures"] = ["native"]
    # appc: "These values are not evaluated in any way": no $VAR expansion by systemd.
    props["ExecStartEx"] = [_exec(app.exec, ["no-env-expand"])]
    if app.pre_start:
        props["ExecStartPreEx"] = [_exec(app.pre_start, ["no-env-expand"])]
    if app.post_stop:
        props["ExecStopPostEx"] = [_exec(app.post_stop, ["ignore-failure", "no-env-expand"])]
    if pod.exit_hook:
        # The exit hook is a unit of its own: an ExecStopPost runs inside the app's root
        # even with "+", where podmgr does not exist. OnSuccess/OnFailure fire only once
        # systemd will not restart the app, and pass its result as $MONITOR_*.
        props["OnSuccess"] = [exit_hook_unit(pod.uuid, app.name)]
        props["OnFailure"] = [exit_hook_unit(pod.uuid, app.name, failed=True)]
    binds = [(b.source, b.target, False, MS_REC if b.recursive else 0) for b in app.binds]
    ro_binds = [b for b in binds if any(x.read_only and x.target == b[1] for x in app.binds)]
    rw_binds = [b for b in binds if b not in ro_binds]
    if pod.shm_dir:
        rw_binds.append((pod.shm_dir, "/dev/shm", False, 0))
    read_only = ["/"] if app.read_only_rootfs else []
    # The host's sysfs, or the pod's netns's own; alone (no MS_REC) either way.
    sysfs = "/sys" if pod.netns_path is None else pod.sysfs_path
    secrets = [p for cap, p in KERNEL_SECRETS.items() if bounding & (1 << CAP_NUMBERS[cap])]
    if sysfs is not None and not any(b[1] == "/sys" for b in binds):
        ro_binds.append((sysfs, "/sys", False, 0))
        if not pod.shim:
            # Else podmgr-exec does it on the /proc of the app's PID namespace, which
            # replaces the one these would apply to.
            read_only += KERNEL_TUNABLES
            if secrets:
                props["InaccessiblePaths"] = secrets
    else:
        # systemd's /sys (or a volume's), with whatever is mounted beneath it.
        props["ProtectKernelTunables"] = True
        props["ProtectControlGroups"] = True
    if rw_binds:
        props["BindPaths"] = rw_binds
    if ro_binds:
        props["BindReadOnlyPaths"] = ro_binds
    if read_only:
        props["ReadOnlyPaths"] = read_only
    if app.notify:
        # appc.io/executor/supports-systemd-notify: the app's start job is done (and
        # the pod ready) once it sends READY=1, not once it has been executed.
        props["Type"] = "notify"
        props["NotifyAccess"] = "main"
        # systemd took the app's PID while podmgr-exec was its parent: an "alien" main
        # process, which KillMode=mixed would SIGKILL right after its SIGTERM, not
        # waiting for it. control-group waits for the app's cgroup to empty, with
        # SIGTERM to each of its processes (the app's PID 1 ignores it without a
        # handler: podmgr's own stops see to that, hook.kill_deaf_apps).
        props["KillMode"] = "control-group"
    if pod.netns_path:
        props["NetworkNamespacePath"] = pod.netns_path
        if pod.net_hook:
            props["BindsTo"] = [net_unit(pod.uuid)]
            props["After"] = [net_unit(pod.uuid)]
    if app.sockets:
        # The socket listens before the app starts and passes its fds; the app still
        # starts with the pod, and keeps the same sockets across restarts. Once the app
        # has ended for good, the exit hook closes them (PropagatesStopTo= would also
        # reopen them at every restart).
        sock = socket_unit(pod.uuid, app.name)
        props["Requires"] = [sock]
        props["After"] = [*props.get("After", []), sock]
    if others:
        props["JoinsNamespaceOf"] = list(others)
    if pod.shim:
        confine_with_shim(
            props, app, pod, shim_mode, bounding=bounding, ambient=ambient, join_pid=join_pid
        )
    return props


def _hex(mask: int) -> str:
    return format(mask, "x")


def _relax_filter(props: dict[str, Any]) -> list[str]:
    """Let podmgr-exec's system calls through the app's filter; the ones it must deny
    again before the app runs."""
    chosen = props.get("SystemCallFilter")
    if chosen is None:
        return []  # no filtering (@appc.io/all)
    allow, names = chosen
    if allow:
        props["SystemCallFilter"] = (True, sorted({*names, *SHIM_RELAXED, *SHIM_PLUMBING}))
        return [n for n in SHIM_RELAXED if n not in names]
    props["SystemCallFilter"] = (False, sorted(set(names) - set(SHIM_RELAXED)))
    return [n for n in SHIM_RELAXED if n in names]


def shim_argv(
    app: AppPlan,
    pod: PodPlan,
    mode: ShimMode,
    *,
    bounding: int,
    ambient: int | None,
    deny: Sequence[str],
    errno_value: int | None,
    join_pid: int | None = None,
) -> list[str]:
    """podmgr-exec's options for a command of ``app`` (shim/podmgr-exec.c documents them),
    ending in ``--``."""
    args = [EXEC_SHIM_TARGET]
    if mode is ShimMode.JOIN:
        args += ["-J", str(join_pid or 0), "-w", app.working_dir]
    else:
        args += ["-P", "-H", pod.hostname or machine_name(pod.uuid)]
        if app.notify and mode is ShimMode.APP:
            args.append("-N")
        for p in KERNEL_TUNABLES:
            args += ["-R", p.removeprefix("-+")]
        for cap, p in KERNEL_SECRETS.items():
            if bounding & (1 << CAP_NUMBERS[cap]):
                args += ["-I", p.removeprefix("-+")]
    args += ["-u", str(app.uid), "-g", str(app.gid)]
    args += ["-G", ",".join(str(g) for g in app.supplementary_gids), "-c", _hex(bounding)]
    if ambient is not None:
        args += ["-a", _hex(ambient)]
    if deny:
        args += ["-D", ",".join(deny)]
        if errno_value:
            args += ["-E", str(errno_value)]
    return [*args, "--"]


def confine_with_shim(
    props: dict[str, Any],
    app: AppPlan,
    pod: PodPlan,
    mode: ShimMode,
    *,
    bounding: int,
    ambient: int | None,
    join_pid: int | None = None,
) -> None:
    """Every command of the unit started by podmgr-exec (see :mod:`podmgr.execshim`).

    systemd runs it as root (``no-setuid``, the ``!`` prefix) with the app's root, mounts,
    seccomp filter (less what it needs: :func:`_relax_filter`) and no_new_privs, and a
    bounding set with :data:`SHIM_CAPS` added; podmgr-exec drops to the app's user, groups
    and capability sets before it executes the app.
    """
    assert pod.shim
    deny = _relax_filter(props)
    errno_value = props.get("SystemCallErrorNumber")
    extra = caps_mask(SHIM_JOIN_CAPS if mode is ShimMode.JOIN else SHIM_CAPS)
    props["CapabilityBoundingSet"] = bounding | extra
    props.pop("AmbientCapabilities", None)
    props["BindReadOnlyPaths"] = [
        *props.get("BindReadOnlyPaths", ()),
        (pod.shim, EXEC_SHIM_TARGET, False, 0),
    ]

    def wrap(key: str, which: ShimMode) -> None:
        if key not in props:
            return
        argv = shim_argv(
            app, pod, which, bounding=bounding, ambient=ambient, deny=deny,
            errno_value=errno_value, join_pid=join_pid,
        )  # fmt: skip
        props[key] = [
            (EXEC_SHIM_TARGET, [*argv, *cmd], [*flags, "no-setuid"])
            for _path, cmd, flags in props[key]
        ]

    wrap("ExecStartEx", mode)
    wrap("ExecStartPreEx", ShimMode.HANDLER)
    wrap("ExecStopPostEx", ShimMode.HANDLER)
    if app.notify and mode is ShimMode.APP:
        # The app, podmgr-exec's child, sends its readiness itself.
        props["NotifyAccess"] = "all"


#: The fixed part of ExecStartEx-style properties: a(sasas).
EXEC_EX_SIGNATURE = "a(sasas)"
