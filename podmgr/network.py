"""Pod networking: a network namespace per pod, CNI plugins, ports, names, sysctls.

Each pod that does not use ``--net=host`` gets a network namespace of its own,
``/run/netns/podmgr-<uuid hex>`` with ``lo`` up (made as ``ip netns add`` makes one:
:mod:`podmgr.netns`); its apps join it through systemd's ``NetworkNamespacePath=``.
``--net=none`` stops there. Other networks are attached with CNI plugins, invoked as the
CNI specification says (``ADD``, ``DEL`` and ``CHECK``; ``CNI_*`` variables and the
network configuration on stdin; a configuration list chains its plugins with
``prevResult``).

- ``default`` is built in (unless ``$PODMGR_NET_DIR``/``/etc/podmgr/net.d`` defines a
  network of that name): a bridge ``podmgr0`` with host-local IPAM in ``172.31.0.0/16``
  (gateway ``172.31.0.1``; leases in ``/run/podmgr/ipam/default``, so a reboot frees
  them), and ``portmap`` for ``--port`` (with SNAT, so a mapped port answers on the
  host's 127.0.0.1 too). Outbound masquerade, and forwarding past a FORWARD policy of
  DROP, are rules for the whole bridge (:data:`HOST_RULES`), not per pod.
- Any other name is an administrator's ``*.conflist`` (or single-plugin ``*.conf``) in
  that directory, matched by its ``name``; ``NAME:K=V;K2=V2`` passes ``CNI_ARGS``.
- Interfaces are ``eth0``, ``eth1``, … in the order the networks were given.

The result of every ``ADD`` is cached with the exact configuration used, in
``--dir/pods/<uuid>/net/<network>.json``: ``DEL`` (in reverse order) uses the cache,
never the current configuration files. Teardown is idempotent and serialised by a lock,
because it runs from more than one place: ``podmgr run`` once the apps are gone, the
exit hook that ends the pod (or sees it ending), the ``podmgr-net-<hex>.service`` of a
pod that ``podmgr start`` started (whose ``ExecStop=`` runs whenever the pod's slice
stops, for whatever reason; ``run``'s pods have none), a failed start, and ``rm``/``gc``.

What persists by design, as for any CNI runtime: the bridge ``podmgr0``, the default
network's :data:`HOST_RULES` and the plugins' shared top-level chains (``CNI-HOSTPORT-*``),
created by the first pod that needs them. Everything per pod goes: veth, IPAM lease,
per-pod chains and rules, the netns, port reservations.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from podmgr import logger, netns
from podmgr.errors import (
    ConflictError,
    InvalidError,
    NetworkError,
    NotFoundError,
    PodmgrError,
    UsageError,
)
from podmgr.fsutil import atomic_write

# Re-exported: what the CLI parses, kept light in podmgr.netspec, is part of this API.
from podmgr.netspec import DEFAULT as DEFAULT
from podmgr.netspec import Names as Names
from podmgr.netspec import NetRequest as NetRequest
from podmgr.netspec import check_names as check_names
from podmgr.netspec import parse_nets as parse_nets
from podmgr.netspec import parse_port as parse_port
from podmgr.netspec import resolv_conf as resolv_conf
from podmgr.process import run, run_many

log = logger.get(__name__)

RUN_DIR = Path("/run/podmgr")
IPAM_DIR = RUN_DIR / "ipam"
PORTS_DIR = RUN_DIR / "ports"
PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
CONFIG_DIR = "/etc/podmgr/net.d"
DEFAULT_BRIDGE = "podmgr0"
DEFAULT_SUBNET = "172.31.0.0/16"
DEFAULT_GATEWAY = "172.31.0.1"
CNI_VERSION = "1.0.0"
#: Plugins run with this PATH (they call iptables, ip, …); nothing else is inherited.
PLUGIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PLUGIN_TIMEOUT = 60.0


# ---- names ------------------------------------------------------------------------------


def netns_name(uuid: str) -> str:
    return "podmgr-" + uuid.replace("-", "").lower()


def netns_path(uuid: str) -> str:
    return netns.path_of(netns_name(uuid))


def sysfs_path(uuid: str) -> str:
    """The sysfs of the pod's netns, which its apps get as /sys (podmgr.netns)."""
    return netns.sysfs_of(netns_name(uuid))


def config_dir() -> Path:
    return Path(os.environ.get("PODMGR_NET_DIR") or CONFIG_DIR)


def plugin_dirs() -> list[str]:
    extra = os.environ.get("PODMGR_CNI_PATH", "")
    return [d for d in (*extra.split(":"), *PLUGIN_DIRS) if d]


# ---- configuration ---------------------------------------------------------------------


def default_conflist(*, ports: bool = True) -> dict[str, Any]:
    """The built-in ``default`` network; ``portmap`` only for a pod that maps ports (the
    plugin does nothing for the others, at a process start each for ADD and DEL)."""
    plugins: list[dict[str, Any]] = [
        {
            "type": "bridge",
            "bridge": DEFAULT_BRIDGE,
            "isGateway": True,
            # Masquerade and forwarding are the bridge's, not the pod's (HOST_RULES).
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": DEFAULT_SUBNET, "gateway": DEFAULT_GATEWAY}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(IPAM_DIR),
            },
        }
    ]
    if ports:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}, "snat": True})
    return {"cniVersion": CNI_VERSION, "name": DEFAULT, "plugins": plugins}


#: The default network's rules on the host, for the whole bridge rather than per pod, as
#: Docker and podman have them: outbound traffic masqueraded, and forwarding to and from
#: the bridge accepted ahead of a FORWARD policy of DROP (Docker's, for one). The bridge
#: plugin's ``ipMasq`` and the ``firewall`` plugin did it per pod, with 19 iptables
#: commands at each pod's start and 10 slower ones at its end (160 ms of the 255 that the
#: default network added to ``podmgr run``, timed in the box); checking these costs
#: three commands at once, at a pod's start. Like the bridge, they stay.
HOST_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = tuple(
    (table, chain, (*rule.split(), "-m", "comment", "--comment", "podmgr default network"))
    for table, chain, rule in (
        ("nat", "POSTROUTING", f"-s {DEFAULT_SUBNET} ! -o {DEFAULT_BRIDGE} -j MASQUERADE"),
        (
            "filter",
            "FORWARD",
            f"-o {DEFAULT_BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ),
        ("filter", "FORWARD", f"-i {DEFAULT_BRIDGE} -j ACCEPT"),
    )
)


def ensure_host_rules() -> None:
    """Add whichever of :data:`HOST_RULES` the host lacks (a firewall reload drops them):
    the checks run at once, the additions (the first pod's) one by one."""
    try:
        checks = run_many(
            [["iptables", "-w", "-t", t, "-C", chain, *rule] for t, chain, rule in HOST_RULES],
            env={"PATH": PLUGIN_PATH},
        )
    except NotFoundError as e:
        raise NotFoundError(
            "the default network needs iptables (its masquerade and forwarding rules)",
            hint="install iptables, or run the pod with --net=host or --net=none",
        ) from e
    for (table, chain, rule), p in zip(HOST_RULES, checks, strict=True):
        if p.returncode != 0:
            # FORWARD's go first, where a DROP rule of the host's cannot precede them.
            where = ["-I", chain, "1"] if chain == "FORWARD" else ["-A", chain]
            run(["iptables", "-w", "-t", table, *where, *rule], env={"PATH": PLUGIN_PATH})


def _read_conf(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        log.warning("ignoring network configuration %s: %s", path, e)
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        log.warning("ignoring network configuration %s: no name", path)
        return None
    if "plugins" not in doc:
        # A single plugin's configuration (*.conf) is a list of one.
        doc = {
            "cniVersion": doc.get("cniVersion", CNI_VERSION),
            "name": doc["name"],
            "plugins": [{k: v for k, v in doc.items() if k not in ("cniVersion", "name")}],
        }
    if not isinstance(doc["plugins"], list) or not all(
        isinstance(p, dict) and isinstance(p.get("type"), str) for p in doc["plugins"]
    ):
        raise InvalidError(f"network configuration {path}: every plugin needs a type")
    return doc


def load_conflist(name: str, *, ports: bool = True) -> tuple[dict[str, Any], bool]:
    """The network ``name``'s configuration list, and whether it is the built-in
    default (:func:`default_conflist`, given ``ports``) rather than a file's."""
    d = config_dir()
    with contextlib.suppress(OSError):
        for path in sorted(d.iterdir()):
            if path.suffix in (".conflist", ".conf", ".json"):
                doc = _read_conf(path)
                if doc is not None and doc["name"] == name:
                    return doc, False
    if name == DEFAULT:
        return default_conflist(ports=ports), True
    raise NotFoundError(
        f"network {name!r} is not defined",
        hint=f'put a {name}.conflist with "name": "{name}" in {d}',
    )


def find_plugin(ptype: str) -> str:
    if "/" in ptype or ptype.startswith("."):
        raise InvalidError(f"CNI plugin type {ptype!r} is not a plugin name")
    for d in plugin_dirs():
        p = os.path.join(d, ptype)
        if os.access(p, os.X_OK):
            return p
    raise NotFoundError(
        f"CNI plugin {ptype!r} not found in {':'.join(plugin_dirs())}",
        hint="install containernetworking-plugins",
    )


# ---- ports -----------------------------------------------------------------------------


class PortMapping(NamedTuple):
    name: str
    protocol: str
    container_port: int
    host_port: int
    host_ip: str = ""

    def cni(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol,
        }
        if self.host_ip:
            d["hostIP"] = self.host_ip
        return d

    def text(self) -> str:
        host = f"{self.host_ip}:" if self.host_ip else ""
        return f"{self.name} {host}{self.host_port}->{self.container_port}/{self.protocol}"


def resolve_ports(manifest: Any) -> list[PortMapping]:
    """The pod manifest's exposed ports, matched by name to the apps' declared ports."""
    out = []
    for ep in manifest.ports:
        declared = [
            (ra.name, p)
            for ra in manifest.apps
            if ra.app is not None
            for p in ra.app.ports
            if p.name == ep.name
        ]
        if ep.pod_port is not None:
            declared = [("pod", ep.pod_port)]
        if not declared:
            ports = [
                f"{p.name} ({p.protocol} {p.port})"
                for ra in manifest.apps
                if ra.app is not None
                for p in ra.app.ports
            ]
            have = f"the apps declare {', '.join(ports)}" if ports else "the apps declare none"
            example = ports[0].split()[0] if ports else "http"
            raise InvalidError(
                f"no app declares a port named {ep.name!r}; {have}",
                hint=f"--port NAME:[HOSTIP:]HOSTPORT maps a declared port by its name, e.g. "
                f"--port {example}:8080 (not docker's HOSTPORT:PORT)",
            )
        if len(declared) > 1:
            raise InvalidError(
                f"port {ep.name!r} is declared by apps {', '.join(a for a, _ in declared)}",
                hint="rename one of the ports",
            )
        p = declared[0][1]
        proto = p.protocol.lower()
        if proto not in ("tcp", "udp"):
            raise InvalidError(f"port {ep.name!r}: protocol {p.protocol!r} cannot be mapped")
        if ep.host_port + p.count - 1 > 65535:
            raise InvalidError(f"port {ep.name!r}: host ports go beyond 65535")
        for i in range(p.count):
            out.append(PortMapping(ep.name, proto, p.port + i, ep.host_port + i, ep.host_ip or ""))
    seen: set[tuple[str, int]] = set()
    for m in out:
        if (m.protocol, m.host_port) in seen:
            raise InvalidError(f"host port {m.host_port}/{m.protocol} is mapped twice")
        seen.add((m.protocol, m.host_port))
    return out


def _port_key(m: PortMapping) -> Path:
    return PORTS_DIR / f"{m.protocol}-{m.host_port}"


def _check_bindable(m: PortMapping) -> None:
    kind = socket.SOCK_STREAM if m.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((m.host_ip or "0.0.0.0", m.host_port))
        except OSError as e:
            where = f"{m.host_ip}:{m.host_port}" if m.host_ip else str(m.host_port)
            if e.errno == errno.EADDRINUSE:
                raise ConflictError(
                    f"port {where}/{m.protocol} is already in use on the host",
                    hint="choose another host port for --port",
                ) from None
            raise ConflictError(
                f"port {where}/{m.protocol} cannot be used on the host: {e.strerror}"
            ) from None


def reserve_ports(uuid: str, ports: Sequence[PortMapping]) -> None:
    """Refuse a host port that something on the host or another pod holds, then claim it.

    portmap's DNAT rules bind no socket, so pods' mappings are reserved as files in
    /run/podmgr/ports; a reservation whose pod's netns is gone is stale and taken over.
    """
    taken: list[PortMapping] = []
    try:
        for m in ports:
            _check_bindable(m)
            PORTS_DIR.mkdir(parents=True, exist_ok=True)
            key = _port_key(m)
            try:
                fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = key.read_text().strip()
                if owner != uuid and os.path.exists(netns_path(owner)):
                    raise ConflictError(
                        f"port {m.host_port}/{m.protocol} is mapped by pod {owner}",
                        hint="choose another host port for --port",
                    ) from None
                atomic_write(key, uuid + "\n")
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(uuid + "\n")
            taken.append(m)
    except BaseException:
        release_ports(uuid, taken)
        raise


def release_ports(uuid: str, ports: Sequence[PortMapping]) -> None:
    for m in ports:
        key = _port_key(m)
        with contextlib.suppress(OSError):
            if key.read_text().strip() == uuid:
                key.unlink()


# ---- CNI -------------------------------------------------------------------------------


class PluginError(NetworkError):
    pass


def _invoke(
    command: str,
    plugin: Mapping[str, Any],
    conflist: Mapping[str, Any],
    *,
    container_id: str,
    netns: str,
    ifname: str,
    cni_args: str,
    prev: Any = None,
    runtime_config: Mapping[str, Any] | None = None,
) -> Any:
    conf = dict(plugin)
    conf["cniVersion"] = conflist.get("cniVersion", CNI_VERSION)
    conf["name"] = conflist["name"]
    if prev is not None:
        conf["prevResult"] = prev
    caps = plugin.get("capabilities") or {}
    rc = {k: v for k, v in (runtime_config or {}).items() if caps.get(k)}
    if rc:
        conf["runtimeConfig"] = rc
    env = {
        "PATH": PLUGIN_PATH,
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": ":".join(plugin_dirs()),
    }
    if cni_args:
        env["CNI_ARGS"] = cni_args
    ptype = str(plugin["type"])
    p = run(
        [find_plugin(ptype)],
        input=json.dumps(conf),
        env=env,
        check=False,
        timeout=PLUGIN_TIMEOUT,
    )
    if p.returncode != 0:
        msg = (p.stderr or "").strip() or f"exit status {p.returncode}"
        with contextlib.suppress(ValueError, AttributeError):
            err = json.loads(p.stdout)
            msg = str(err.get("msg") or msg)
            if err.get("details"):
                msg += f" ({err['details']})"
        raise PluginError(f"network {conflist['name']}: {ptype} {command} failed: {msg}")
    if command != "ADD":
        return None
    try:
        return json.loads(p.stdout)
    except ValueError:
        raise PluginError(
            f"network {conflist['name']}: {ptype} ADD printed no JSON result"
        ) from None


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        return (0,)


def _add(entry: dict[str, Any]) -> Any:
    conflist = entry["config"]
    prev = None
    for plugin in conflist["plugins"]:
        prev = _invoke(
            "ADD",
            plugin,
            conflist,
            container_id=entry["containerID"],
            netns=entry["netns"],
            ifname=entry["ifname"],
            cni_args=entry["cniArgs"],
            prev=prev,
            runtime_config=entry.get("runtimeConfig"),
        )
    return prev


def _del(entry: dict[str, Any]) -> None:
    conflist = entry["config"]
    result = entry.get("result")
    with_prev = _version_tuple(str(conflist.get("cniVersion", "0.1.0"))) >= (0, 4, 0)
    errors = []
    for plugin in reversed(conflist["plugins"]):
        try:
            _invoke(
                "DEL",
                plugin,
                conflist,
                container_id=entry["containerID"],
                netns=entry["netns"],
                ifname=entry["ifname"],
                cni_args=entry["cniArgs"],
                prev=result if with_prev else None,
                runtime_config=entry.get("runtimeConfig"),
            )
        except PodmgrError as e:
            errors.append(e.message)
    if errors:
        raise PluginError("; ".join(errors))


def _check(entry: dict[str, Any]) -> None:
    conflist = entry["config"]
    if _version_tuple(str(conflist.get("cniVersion", "0.1.0"))) < (0, 4, 0):
        return  # CHECK came with CNI 0.4.0
    for plugin in conflist["plugins"]:
        _invoke(
            "CHECK",
            plugin,
            conflist,
            container_id=entry["containerID"],
            netns=entry["netns"],
            ifname=entry["ifname"],
            cni_args=entry["cniArgs"],
            prev=entry.get("result"),
            runtime_config=entry.get("runtimeConfig"),
        )


# ---- the pod's network -----------------------------------------------------------------


def net_dir(pdir: Path) -> Path:
    return pdir / "net"


@contextlib.contextmanager
def _locked(pdir: Path) -> Iterator[Path]:
    d = net_dir(pdir)
    d.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield d
    finally:
        os.close(fd)


def _entries(d: Path) -> list[dict[str, Any]]:
    out = []
    with contextlib.suppress(OSError):
        for p in d.glob("*.json"):
            if p.name == "status.json":
                continue
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(p.read_bytes())
                doc["_path"] = str(p)
                out.append(doc)
    return sorted(out, key=lambda e: int(e.get("index", 0)))


def _summary(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Interface, addresses and gateway of a network from its CNI result."""
    result = entry.get("result") or {}
    ifaces = result.get("interfaces") or []
    ips = []
    gateway = None
    for ip in result.get("ips") or []:
        idx = ip.get("interface")
        name = entry["ifname"]
        if isinstance(idx, int) and 0 <= idx < len(ifaces):
            name = ifaces[idx].get("name") or name
        ips.append({"interface": name, "address": ip.get("address")})
        gateway = gateway or ip.get("gateway")
    for key in ("ip4", "ip6"):  # CNI 0.1/0.2 results
        if isinstance(result.get(key), dict):
            ips.append({"interface": entry["ifname"], "address": result[key].get("ip")})
            gateway = gateway or result[key].get("gateway")
    return {
        "name": entry["config"]["name"],
        "interface": entry["ifname"],
        "ips": ips,
        "gateway": gateway,
        "ports": [PortMapping(**p).text() for p in entry.get("ports", [])],
    }


def status(pdir: Path) -> dict[str, Any] | None:
    """What ``setup`` recorded (``net/status.json``), kept after teardown."""
    with contextlib.suppress(OSError, ValueError):
        doc: dict[str, Any] = json.loads((net_dir(pdir) / "status.json").read_bytes())
        return doc
    return None


def _write_status(d: Path, doc: dict[str, Any]) -> None:
    atomic_write(d / "status.json", json.dumps(doc, indent=1))


def setup(
    pdir: Path,
    uuid: str,
    mode: str,
    networks: Sequence[str],
    *,
    ports: Sequence[PortMapping] = (),
    sysctls: Mapping[str, str] | None = None,
) -> None:
    """Create the pod's netns, attach its networks, apply its sysctls.

    On failure the caller runs :func:`teardown` (which undoes whatever got done)."""
    if mode == "host":
        return
    ns = netns_name(uuid)
    path = netns_path(uuid)
    with _locked(pdir) as d:
        status_doc: dict[str, Any] = {"netns": path, "networks": [], "sysctls": {}}
        _write_status(d, {**status_doc, "state": "setting up"})
        if not os.path.exists(path):
            netns.add(ns)
        if ports:
            reserve_ports(uuid, ports)
        mapped = False
        for i, text in enumerate(networks):
            req = NetRequest.parse(text)
            conflist, builtin = load_conflist(req.name, ports=bool(ports) and not mapped)
            if builtin:
                ensure_host_rules()
            wants_ports = any(
                (p.get("capabilities") or {}).get("portMappings") for p in conflist["plugins"]
            )
            rc: dict[str, Any] = {}
            these: list[PortMapping] = []
            if ports and wants_ports and not mapped:
                rc["portMappings"] = [m.cni() for m in ports]
                these = list(ports)
                mapped = True
            entry: dict[str, Any] = {
                "index": i,
                "config": conflist,
                "containerID": uuid,
                "netns": path,
                "ifname": f"eth{i}",
                "cniArgs": req.cni_args(),
                "runtimeConfig": rc,
                "ports": [m._asdict() for m in these],
                "result": None,
                # Its DEL needs nothing inside the netns (teardown).
                "netnsFirst": builtin,
            }
            cache = d / f"{req.name}.json"
            # Cached before ADD: a failed ADD is followed by a DEL, as the spec says.
            atomic_write(cache, json.dumps(entry))
            entry["result"] = _add(entry)
            atomic_write(cache, json.dumps(entry))
            status_doc["networks"].append(_summary(entry))
        if ports and not mapped:
            raise UsageError(
                "--port needs a network with the portmap plugin",
                hint="use --net=default, or add portmap to the network's conflist",
            )
        for key, value in (sysctls or {}).items():
            run(["nsenter", f"--net={path}", "sysctl", "-q", "-w", f"{key}={value}"])
            status_doc["sysctls"][key] = value
        _write_status(d, {**status_doc, "state": "up"})


def teardown(pdir: Path, uuid: str) -> None:
    """Detach every network (reverse order), release ports, remove the netns. Idempotent."""
    errors = []
    with _locked(pdir) as d:
        entries = _entries(d)
        if entries and all(e.get("netnsFirst") for e in entries):
            # The netns goes first: the bridge plugin's DEL then only releases the
            # address, instead of deleting the pod's veth and waiting for the kernel to
            # be done with it (40-45 ms); the kernel destroys it with the namespace, in
            # the background, once no process is left in it.
            netns.remove(netns_name(uuid))
        for entry in reversed(entries):
            try:
                _del(entry)
            except PodmgrError as e:
                if entry.get("result") is not None:
                    errors.append(e.message)
                    continue
                # ADD failed, and the plugin undid its own work; a DEL that cannot run
                # either (a missing plugin, say) has nothing to undo.
                log.warning("%s", e.message)
            ports = [PortMapping(**p) for p in entry.get("ports", [])]
            release_ports(uuid, ports)
            Path(entry["_path"]).unlink(missing_ok=True)
        if errors:
            raise NetworkError(
                f"pod {uuid}: network teardown incomplete: {'; '.join(errors)}",
                hint=f"podmgr rm {uuid} retries it",
            )
        netns.remove(netns_name(uuid))
        # Reservations of a pod whose ADD never ran (e.g. the netns failed).
        with contextlib.suppress(OSError):
            for key in PORTS_DIR.iterdir():
                with contextlib.suppress(OSError):
                    if key.read_text().strip() == uuid:
                        key.unlink()
        st = status(pdir)
        if st is not None and st.get("state") != "down":
            _write_status(d, {**st, "state": "down"})


def check(pdir: Path) -> list[str]:
    """CNI CHECK for each attached network; the problems found (empty: all well)."""
    problems = []
    with _locked(pdir) as d:
        for entry in _entries(d):
            try:
                _check(entry)
            except PodmgrError as e:
                problems.append(e.message)
    return problems


# ---- names: /etc/resolv.conf and /etc/hosts -------------------------------------------


def hosts_file(names: Names, image_hosts: str | None, hostname: str) -> str:
    if "host" in names.hosts_entries:
        try:
            base = Path("/etc/hosts").read_text()
        except OSError:
            base = ""
    elif image_hosts is not None:
        base = image_hosts
    else:
        base = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    lines = base.splitlines()
    # Debian's convention for a name without a fixed address; the pod's IP is only known
    # once it starts, after the upper layer is written.
    lines.append(f"127.0.1.1\t{hostname}")
    for h in names.hosts_entries:
        if h != "host":
            ip, _, name = h.partition("=")
            lines.append(f"{ip}\t{name}")
    return "\n".join(lines) + "\n"


def write_etc(lower: Path, upper: Path, names: Names, hostname: str, *, net: str) -> None:
    """Write /etc/resolv.conf and /etc/hosts into an app's upper layer (never the image's
    tree): /etc/hosts always when the image has none or names were given; resolv.conf
    as :func:`resolv_conf` has it (``net``: the pod's --net mode; by default for a pod with
    a network of its own, ``--dns=none``: the image's)."""
    from podmgr import rootfs

    hosts_path = rootfs.resolve(lower, "/etc/hosts")
    image_hosts = None
    with contextlib.suppress(OSError):
        image_hosts = hosts_path.read_text()
    rc = resolv_conf(names, net)
    want_hosts = image_hosts is None or bool(names.hosts_entries) or names.hostname is not None
    if not want_hosts and rc is None:
        return
    rel = rootfs._real_rel(lower, "/etc")
    d = rootfs._mirror_parents(lower, upper, rel)
    if want_hosts:
        _replace(d / "hosts", hosts_file(names, image_hosts, hostname))
    if rc is not None:
        _replace(d / "resolv.conf", rc)


def _replace(path: Path, text: str) -> None:
    # The image may have a symlink there (resolv.conf -> ../run/…); the upper layer's
    # regular file hides it.
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    path.write_text(text)
    os.chmod(path, 0o644)


def check_sysctls(values: Mapping[str, str], mode: str) -> dict[str, str]:
    """The ``os/unix/sysctl`` pod isolator: net.* keys only, in the pod's own netns."""
    bad = [k for k in values if not k.startswith("net.") or "/" in k or ".." in k]
    if bad:
        raise InvalidError(
            f"os/unix/sysctl: {', '.join(sorted(bad))} not allowed",
            hint="only net.* parameters, which are private to the pod's network namespace",
        )
    if values and mode == "host":
        raise InvalidError(
            "os/unix/sysctl needs the pod's own network namespace",
            hint="--net=host would change the host's settings; use another --net",
        )
    return dict(values)


def main(argv: Sequence[str]) -> int:
    """``python3 -S -m podmgr.network down STATE_DIR UUID``: the pod network unit's
    ExecStop=. Standard library only, like the exit hook."""
    if len(argv) != 3 or argv[0] != "down":
        print("usage: python3 -m podmgr.network down STATE_DIR UUID", file=sys.stderr)
        return 2
    state, uuid = Path(argv[1]), argv[2]
    try:
        teardown(state / "pods" / uuid, uuid)
    except PodmgrError as e:
        print(f"podmgr: {e.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
