"""What ``--net``, ``--port``, ``--dns``, ``--hosts-entry`` and ``--hostname`` ask for.

Parsed and checked here, apart from :mod:`podmgr.network` (which sets networks up), so
that ``podmgr run`` parses its options without importing what it may not need.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from podmgr.errors import UsageError
from podmgr.names import bad_char

#: The network ``--net`` means when it names none.
DEFAULT = "default"


class NetRequest(NamedTuple):
    """``NAME[:K=V;…]`` from ``--net``."""

    name: str
    args: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> NetRequest:
        name, _, rest = text.partition(":")
        # ASCII only: the name is a file name in /etc/podmgr/net.d and goes to CNI.
        if not name or not all((c.isascii() and c.isalnum()) or c in "-_." for c in name):
            raise UsageError(
                f"--net {text!r}: {name!r} is not a network name",
                hint="network names are letters, digits, '-', '_' and '.'",
            )
        args = []
        for part in rest.split(";"):
            if not part:
                continue
            k, eq, v = part.partition("=")
            if not eq or not k:
                raise UsageError(f"--net {text!r}: expected NAME:K=V;K2=V2")
            if bad_char(k, space=True) or bad_char(v):
                raise UsageError(
                    f"--net {text!r}: argument {k!r} has whitespace or a control character"
                )
            args.append((k, v))
        return cls(name, tuple(args))

    def cni_args(self) -> str:
        if not self.args:
            return ""
        return ";".join(["IgnoreUnknown=1", *(f"{k}={v}" for k, v in self.args)])


def parse_nets(values: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """``--net`` values to (mode, networks): ``host``, ``none`` or ``cni`` with names."""
    items = [v.strip() for value in values for v in value.split(",") if v.strip()]
    if not items:
        items = [DEFAULT]
    if any(i in ("host", "none") for i in items):
        if len(items) > 1:
            raise UsageError("--net=host and --net=none cannot be combined with other networks")
        return items[0], ()
    reqs = [NetRequest.parse(i) for i in items]
    names = [r.name for r in reqs]
    if len(set(names)) != len(names):
        raise UsageError("a network is given twice in --net")
    return "cni", tuple(items)


def parse_port(text: str) -> dict[str, Any]:
    """``NAME:[HOSTIP:]HOSTPORT`` to a pod manifest's exposed port."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise UsageError(f"--port {text!r}: expected NAME:[HOSTIP:]HOSTPORT")
    try:
        host_port = int(parts[-1])
    except ValueError:
        raise UsageError(f"--port {text!r}: {parts[-1]!r} is not a port number") from None
    if not 1 <= host_port <= 65535:
        raise UsageError(f"--port {text!r}: {host_port} is not a port number")
    out: dict[str, Any] = {"name": parts[0], "hostPort": host_port}
    if len(parts) == 3:
        import ipaddress

        try:
            ipaddress.IPv4Address(parts[1])
        except ValueError:
            raise UsageError(f"--port {text!r}: {parts[1]!r} is not an IPv4 address") from None
        out["hostIP"] = parts[1]
    return out


class Names(NamedTuple):
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_opt: tuple[str, ...] = ()
    hosts_entries: tuple[str, ...] = ()
    hostname: str | None = None


def check_names(names: Names) -> None:
    import ipaddress

    if len([d for d in names.dns if d in ("host", "none")]) and len(names.dns) > 1:
        raise UsageError("--dns=host and --dns=none cannot be combined with other --dns")
    for d in names.dns:
        if d not in ("host", "none"):
            try:
                ipaddress.ip_address(d)
            except ValueError:
                raise UsageError(f"--dns {d!r}: expected an IP address, host or none") from None
    for h in names.hosts_entries:
        if h == "host":
            continue
        ip, eq, name = h.partition("=")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise UsageError(f"--hosts-entry {h!r}: expected IP=NAME or host") from None
        if not eq or not name or any(c.isspace() for c in name):
            raise UsageError(f"--hosts-entry {h!r}: expected IP=NAME or host")
    hn = names.hostname
    if hn is not None and (
        not hn
        or len(hn) > 253
        or not all(
            0 < len(label) <= 63 and label.replace("-", "").isalnum() for label in hn.split(".")
        )
    ):
        raise UsageError(f"--hostname {hn!r} is not a valid host name")
