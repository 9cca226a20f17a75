"""What ``--net``, ``--port``, ``--dns``, ``--hosts-entry`` and ``--hostname`` ask for.

Parsed and checked here, apart from :mod:`podmgr.network` (which sets networks up), so
that ``podmgr run`` parses its options without importing what it may not need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


#: What each option takes, for the error that refuses a value: one thing per option.
_ONE = {
    "--dns": "one IP address (or host, or none) per --dns",
    "--dns-search": "one search domain per --dns-search (. for none)",
    "--dns-opt": "one resolv.conf option per --dns-opt, as ndots:2",
    "--hosts-entry": "one IP=NAME (or host) per --hosts-entry",
    "--hostname": "a host name: letters, digits and dashes, dot-separated",
}


def _show(value: str) -> str:
    """``value`` quoted on one line (repr escapes newlines and control characters)."""
    return repr(value if len(value) <= 64 else value[:64] + "…")


def _plain(option: str, value: str) -> None:
    """Refuse a value that could break out of its line in resolv.conf or hosts: these
    files are line-based, so a newline (or any other control or space character) would
    add lines of the caller's choosing, as ``--dns-search $'x\\nnameserver 6.6.6.6'`` did."""
    if not value:
        raise UsageError(f"{option}: empty value", hint=f"give {_ONE[option]}")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise UsageError(
            f"{option} {_show(value)}: spaces and control characters are not allowed",
            hint=f"give {_ONE[option]}",
        )


def is_ip(text: str) -> bool:
    """An IPv4 or IPv6 address (IPv6 with an optional ``%zone``), as resolv.conf and
    hosts take it. ``socket.inet_pton``, not ``ipaddress``, which the start path avoids
    (2-3 ms) and whose IPv6 zone may hold any character, newlines included."""
    import socket

    addr, pct, zone = text.partition("%")
    try:
        socket.inet_pton(socket.AF_INET, addr)
        return not pct
    except OSError:
        pass
    try:
        socket.inet_pton(socket.AF_INET6, addr)
    except OSError:
        return False
    return not pct or (0 < len(zone) <= 15 and all(c.isalnum() or c in "-_." for c in zone))


def is_loopback(addr: str) -> bool:
    """127.0.0.0/8, ::1 or an IPv4-mapped 127.x: unreachable from a pod's own netns."""
    import socket

    addr = addr.partition("%")[0]
    try:
        return socket.inet_pton(socket.AF_INET, addr)[0] == 127
    except OSError:
        pass
    try:
        raw = socket.inet_pton(socket.AF_INET6, addr)
    except OSError:
        return False
    return raw == bytes(15) + b"\x01" or (raw[:12] == bytes(10) + b"\xff\xff" and raw[12] == 127)


def check_names(names: Names) -> None:
    """Refuse what would not make valid resolv.conf and hosts lines (exit code 2)."""
    for option, values in (
        ("--dns", names.dns),
        ("--dns-search", names.dns_search),
        ("--dns-opt", names.dns_opt),
        ("--hosts-entry", names.hosts_entries),
        ("--hostname", () if names.hostname is None else (names.hostname,)),
    ):
        for v in values:
            _plain(option, v)
    if len([d for d in names.dns if d in ("host", "none")]) and len(names.dns) > 1:
        raise UsageError("--dns=host and --dns=none cannot be combined with other --dns")
    for d in names.dns:
        if d not in ("host", "none") and not is_ip(d):
            raise UsageError(
                f"--dns {_show(d)}: expected an IP address, host or none",
                hint=f"give {_ONE['--dns']}",
            )
    if "." in names.dns_search and len(names.dns_search) > 1:
        raise UsageError("--dns-search=. (no search domain) cannot be combined with domains")
    for s in names.dns_search:
        if len(s) > 253:
            raise UsageError(f"--dns-search {_show(s)}: longer than a domain name (253)")
    for h in names.hosts_entries:
        if h == "host":
            continue
        ip, eq, name = h.partition("=")
        if not eq or not name or not is_ip(ip):
            raise UsageError(
                f"--hosts-entry {_show(h)}: expected IP=NAME or host",
                hint=f"give {_ONE['--hosts-entry']}",
            )
    hn = names.hostname
    if hn is not None and (
        len(hn) > 253
        or not all(
            0 < len(label) <= 63 and label.isascii() and label.replace("-", "").isalnum()
            for label in hn.split(".")
        )
    ):
        raise UsageError(
            f"--hostname {_show(hn)} is not a valid host name", hint=f"give {_ONE['--hostname']}"
        )


# ---- /etc/resolv.conf ---------------------------------------------------------------------

#: The host's resolver configuration; systemd-resolved's list of the servers its stub
#: listeners (127.0.0.53, and 127.0.0.54, the proxy-only one) forward to; and
#: NetworkManager's, for its dnsmasq on 127.0.0.1 (module attributes: the tests point them
#: elsewhere).
HOST_RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_UPSTREAM = "/run/systemd/resolve/resolv.conf"
NM_UPSTREAM = "/run/NetworkManager/no-stub-resolv.conf"
#: What podman (containers/common's resolvconf) falls back to when no nameserver a pod
#: can reach remains: Google Public DNS.
FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")
#: A resolv.conf is a few hundred bytes; read no more than this of one.
READ_MAX = 64 * 1024


class _Resolv(NamedTuple):
    nameservers: list[str]
    search: list[str] | None  # None: no search or domain line
    options: list[str]


def _parse_resolv(text: str) -> _Resolv:
    """The lines of a resolv.conf that a pod's file takes: nameserver, search (domain,
    as glibc, is a one-domain search) and options; comments, sortlist and anything
    malformed are dropped, and every word kept is printable and space-free."""
    out = _Resolv([], None, [])
    for line in text[:READ_MAX].splitlines():
        words = [w for w in line.split() if w.isprintable()]
        if not words:
            continue
        key, args = words[0], words[1:]
        if key == "nameserver" and args and is_ip(args[0]):
            out.nameservers.append(args[0])
        elif key == "search":
            out = out._replace(search=args)
        elif key == "domain" and args:
            out = out._replace(search=args[:1])
        elif key == "options":
            out.options.extend(args)
    return out


def forwarders(host: str) -> dict[str, str]:
    """The loopback nameservers of a host's resolv.conf whose upstream list is known, and
    where: resolved's stub, and (as podman has it) 127.0.0.1 when it stands alone, which
    is NetworkManager's dnsmasq."""
    servers = _parse_resolv(host).nameservers
    out = {ns: RESOLVED_UPSTREAM for ns in servers if ns in ("127.0.0.53", "127.0.0.54")}
    if servers == ["127.0.0.1"]:
        out["127.0.0.1"] = NM_UPSTREAM
    return out


def compose_resolv_conf(
    names: Names, host: str | None, upstreams: Mapping[str, str], *, net: str
) -> str | None:
    """A pod's /etc/resolv.conf, or None to leave the image's.

    ``host`` is the host's /etc/resolv.conf (None: absent), ``upstreams`` the upstream lists
    of its local forwarders (:func:`forwarders`: resolved's upstream resolv.conf for
    127.0.0.53), by nameserver; ``net`` the pod's --net mode (host, none or cni). A pod
    with a network of its own (cni) gets one by default; ``--dns=host`` or
    ``--dns-search``/``--dns-opt`` alone give one on any network. From the host's file, in
    a pod's own network namespace, a loopback nameserver (which the pod cannot reach) is
    replaced by its forwarder's upstream servers, or dropped; with none left, podman's
    fallback. ``--dns IP`` gives the nameservers, ``--dns-search`` the search list (``.``:
    none), ``--dns-opt`` the options, each replacing the host's."""
    dns = names.dns
    if "none" in dns:
        return None
    explicit = [d for d in dns if d != "host"]
    if not dns and not names.dns_search and not names.dns_opt and net != "cni":
        return None
    if explicit:
        base = _Resolv(explicit, None, [])
    else:
        base = _parse_resolv(host or "")
        if net != "host":
            servers: list[str] = []
            for ns in base.nameservers:
                if ns in upstreams:
                    servers += [
                        u for u in _parse_resolv(upstreams[ns]).nameservers if not is_loopback(u)
                    ]
                elif not is_loopback(ns):
                    servers.append(ns)
            servers = list(dict.fromkeys(servers)) or list(FALLBACK_NAMESERVERS)
            base = base._replace(nameservers=servers)
    search = base.search
    if names.dns_search:
        search = [] if names.dns_search == (".",) else list(names.dns_search)
    options = list(names.dns_opt) if names.dns_opt else base.options
    lines = [f"nameserver {ns}" for ns in base.nameservers]
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return "".join(f"{ln}\n" for ln in lines)


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(READ_MAX).decode(errors="replace")
    except OSError:
        return None


def resolv_conf(names: Names, net: str) -> str | None:
    """:func:`compose_resolv_conf` with the host's files read, as far as it needs them."""
    host, upstreams = None, {}
    if "none" not in names.dns and not any(d not in ("host", "none") for d in names.dns):
        host = _read(HOST_RESOLV_CONF)
        if net != "host" and host is not None:
            for ns, path in forwarders(host).items():
                text = _read(path)
                if text is not None:
                    upstreams[ns] = text
    return compose_resolv_conf(names, host, upstreams, net=net)
