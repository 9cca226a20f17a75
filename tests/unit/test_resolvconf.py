"""A pod's /etc/resolv.conf (netspec.compose_resolv_conf, a pure function of the host's
files and the options), and the refusal of values that would add lines to it or to hosts:
on the command line, in `podmgr generate unit` and in .pod files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podmgr import generator, netspec
from podmgr.errors import ExitCode, UsageError
from podmgr.netspec import Names, check_names, compose_resolv_conf

pytestmark = pytest.mark.unit

#: systemd-resolved's /etc/resolv.conf (stub-resolv.conf) and its upstream list.
STUB = (
    "# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\n"
    "nameserver 127.0.0.53\n"
    "options edns0 trust-ad\n"
    "search lan example.org\n"
)
UPSTREAM = (
    "# This is /run/systemd/resolve/resolv.conf managed by man:systemd-resolved(8).\n"
    "nameserver 192.0.2.1\n"
    "nameserver fd00::53\n"
    "nameserver 127.0.0.1\n"
    "search lan\n"
)


def upstreams(host: str | None, upstream: str | None) -> dict[str, str]:
    """``upstream`` as the list of every local forwarder ``host`` names (resolv_conf's)."""
    if upstream is None:
        return {}
    return {ns: upstream for ns in netspec.forwarders(host or "")}


def compose(
    host: str | None, upstream: str | None = None, net: str = "cni", **kw: tuple[str, ...]
) -> str | None:
    return compose_resolv_conf(Names(**kw), host, upstreams(host, upstream), net=net)


def test_the_resolved_stub_is_replaced_by_its_upstream_servers() -> None:
    assert compose(STUB, UPSTREAM) == (
        "nameserver 192.0.2.1\n"
        "nameserver fd00::53\n"  # resolved's loopback upstream (127.0.0.1) is no use either
        "search lan example.org\n"  # the host's own search and options lines
        "options edns0 trust-ad\n"
    )


def test_in_place_and_in_order_without_duplicates() -> None:
    host = "nameserver 10.0.0.1\nnameserver 127.0.0.53\nnameserver 192.0.2.1\n"
    assert compose(host, UPSTREAM) == (
        "nameserver 10.0.0.1\nnameserver 192.0.2.1\nnameserver fd00::53\n"
    )


def test_networkmanagers_dnsmasq_is_replaced_by_its_upstream_servers_as_podman_does() -> None:
    """127.0.0.1 alone is NetworkManager's dnsmasq, whose list is no-stub-resolv.conf."""
    assert netspec.forwarders("nameserver 127.0.0.1\n") == {"127.0.0.1": netspec.NM_UPSTREAM}
    assert compose("nameserver 127.0.0.1\nsearch lan\n", "nameserver 192.0.2.9\n") == (
        "nameserver 192.0.2.9\nsearch lan\n"
    )
    # Beside another server it is something else: dropped.
    assert netspec.forwarders("nameserver 127.0.0.1\nnameserver 10.0.0.1\n") == {}


def test_other_loopback_resolvers_are_dropped() -> None:
    host = (
        "nameserver 127.0.0.1\nnameserver ::1\nnameserver ::ffff:127.0.0.1\n"
        "nameserver 127.9.9.9\nnameserver 10.1.1.1\n"
    )
    # resolved's upstream list is for its stub only.
    assert compose(host, UPSTREAM) == "nameserver 10.1.1.1\n"


@pytest.mark.parametrize(
    ("host", "upstream"),
    [
        (STUB, None),  # resolved's upstream file is absent
        (STUB, "nameserver 127.0.0.1\n"),  # or names loopback servers only
        ("nameserver 127.0.0.1\nsearch lan\n", None),  # dnsmasq on the host
        (None, None),  # no /etc/resolv.conf at all
        ("", None),
    ],
)
def test_without_a_reachable_server_podmans_fallback(
    host: str | None, upstream: str | None
) -> None:
    text = compose(host, upstream)
    assert text is not None
    assert text.splitlines()[:2] == ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]


def test_only_a_pod_with_a_network_of_its_own_gets_one_by_default() -> None:
    assert compose(STUB, UPSTREAM, "cni") is not None
    assert compose(STUB, UPSTREAM, "host") is None  # the image's own
    assert compose(STUB, UPSTREAM, "none") is None
    # --dns=host on the host's network: the host's file, stub and all (reachable there).
    assert compose(STUB, UPSTREAM, "host", dns=("host",)) == (
        "nameserver 127.0.0.53\nsearch lan example.org\noptions edns0 trust-ad\n"
    )
    assert compose(STUB, UPSTREAM, "none", dns=("host",)) is not None


def test_options_override_the_host() -> None:
    assert compose(STUB, UPSTREAM, dns=("none",)) is None
    assert compose(STUB, UPSTREAM, "host", dns=("none",)) is None
    assert compose(STUB, UPSTREAM, dns=("10.0.0.1", "fe80::1%eth0")) == (
        "nameserver 10.0.0.1\nnameserver fe80::1%eth0\n"
    )
    assert compose(STUB, UPSTREAM, dns_search=("a.example", "b"), dns_opt=("ndots:2",)) == (
        "nameserver 192.0.2.1\nnameserver fd00::53\nsearch a.example b\noptions ndots:2\n"
    )
    assert compose(STUB, UPSTREAM, dns_search=(".",)) == (
        "nameserver 192.0.2.1\nnameserver fd00::53\noptions edns0 trust-ad\n"
    )
    # --dns-search alone on the host's network (as before): the host's file, amended.
    assert compose("nameserver 10.0.0.1\n", None, "host", dns_search=("x",)) == (
        "nameserver 10.0.0.1\nsearch x\n"
    )


def test_the_hosts_file_is_read_as_glibc_would() -> None:
    host = (
        "; comment\n"
        "nameserver   10.0.0.1   # trailing\n"
        "nameserver not-an-ip\n"
        "nameserver\n"
        "sortlist 10.0.0.0/255.0.0.0\n"
        "search a b\n"
        "domain only.example\n"  # the last of search and domain wins
        "options ndots:1\n"
        "options\trotate\n"
        "nameserver 10.0.0.2\x07\n"  # a control character: not an address
        "frobnicate\n"
    )
    assert compose(host) == "nameserver 10.0.0.1\nsearch only.example\noptions ndots:1 rotate\n"


def test_resolv_conf_reads_the_upstream_list_only_for_the_stub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, upstream = tmp_path / "resolv.conf", tmp_path / "upstream.conf"
    nm = tmp_path / "no-stub-resolv.conf"
    monkeypatch.setattr(netspec, "HOST_RESOLV_CONF", str(host))
    monkeypatch.setattr(netspec, "RESOLVED_UPSTREAM", str(upstream))
    monkeypatch.setattr(netspec, "NM_UPSTREAM", str(nm))
    upstream.write_text(UPSTREAM)
    nm.write_text("nameserver 192.0.2.9\n")
    host.write_text(STUB)
    assert netspec.resolv_conf(Names(), "cni") == compose(STUB, UPSTREAM)
    host.write_text("nameserver 127.0.0.1\n")
    assert netspec.resolv_conf(Names(), "cni") == "nameserver 192.0.2.9\n"
    nm.unlink()
    assert netspec.resolv_conf(Names(), "cni") == "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    host.write_text("nameserver 10.0.0.1\n")
    assert netspec.resolv_conf(Names(), "cni") == "nameserver 10.0.0.1\n"
    host.unlink()
    assert netspec.resolv_conf(Names(), "cni") == "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    # A hostile or broken host file is read only so far.
    host.write_text(
        "nameserver 10.0.0.1\n" + "#" * (2 * netspec.READ_MAX) + "\nnameserver 10.9.9.9\n"
    )
    assert netspec.resolv_conf(Names(), "cni") == "nameserver 10.0.0.1\n"


# ---- refused values -----------------------------------------------------------------------

INJECTIONS = [
    "x\nnameserver 6.6.6.6",
    "x\rnameserver",
    "a\x00b",
    "a\tb",
    "a b",
    "a\u2028b",
    "a\x85b",
    "a\x1eb",
    "a\x7fb",
    "",
]


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize(
    ("option", "field"),
    [
        ("--dns", "dns"),
        ("--dns-search", "dns_search"),
        ("--dns-opt", "dns_opt"),
        ("--hosts-entry", "hosts_entries"),
        ("--hostname", "hostname"),
    ],
)
def test_values_that_would_add_lines_are_refused(option: str, field: str, value: str) -> None:
    # As the whole value, and where it would hide: a name after IP=, an IPv6 zone.
    variants = {"--hosts-entry": [f"10.0.0.1={value}"], "--dns": [f"fe80::1%{value}"]}
    for v in [value, *variants.get(option, [])]:
        names = Names(**{field: v if field == "hostname" else (v,)})  # type: ignore[arg-type]
        with pytest.raises(UsageError) as e:
            check_names(names)
        assert e.value.message.startswith(option)
        assert "\n" not in e.value.message and e.value.hint and "\n" not in e.value.hint


def test_the_ipv6_zone_cannot_smuggle_a_line() -> None:
    # ipaddress accepts any zone ("fe80::1%a\nnameserver 6.6.6.6" parses); resolv.conf not.
    for bad in ("fe80::1%a/b", "fe80::1%", "10.0.0.1%eth0", "fe80::1%" + "a" * 16):
        with pytest.raises(UsageError):
            check_names(Names(dns=(bad,)))
    check_names(Names(dns=("fe80::1%eth0",), hosts_entries=("fe80::1%br-0=gw",)))


def test_the_command_line_refuses_them_in_one_line() -> None:
    """`podmgr generate unit` parses the options as `run` does (and needs no root or box);
    the box's test_net checks `run` itself."""
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "podmgr",
            "generate",
            "unit",
            "--dns-search",
            "x\nnameserver 6.6.6.6",
            "example.com/app",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == ExitCode.USAGE
    assert p.stderr.splitlines() == [
        "podmgr: error: --dns-search 'x\\nnameserver 6.6.6.6': spaces and control characters "
        "are not allowed",
        "podmgr: hint: give one search domain per --dns-search (. for none)",
    ]
    assert p.stdout == ""


POD = "[Pod]\n{key}={value}\n\n[App web]\nImage=example.com/web\n"


@pytest.mark.parametrize("key", ["DNS", "DNSSearch", "DNSOption", "HostsEntry", "Hostname"])
def test_a_pod_file_cannot_inject_lines_either(key: str) -> None:
    for value in ("a\x00b", "a\tb", "a b", "a\x1bb", "a\u200bb", ""):
        # Refused as the option's own value, or as a control character in any value.
        with pytest.raises(generator.PodFileError, match=rf"\b{key}="):
            generator.parse(POD.format(key=key, value=value))
    # A line break of Python's (\v, \x1c-\x1e, \x85, \u2028) is a control character
    # the whole file is refused for, before it is split into lines at all.
    with pytest.raises(generator.PodFileError, match=r"control character U\+000B"):
        generator.parse(POD.format(key=key, value="x\x0bnameserver"))
    # Unit text takes no control character from them (the error's description neither).
    msg = generator.error_message("/etc/podmgr/pods/p.pod", generator.PodFileError(2, "x"))
    assert msg == "/etc/podmgr/pods/p.pod:2: x"


# ---- properties ---------------------------------------------------------------------------

ADDRESSES = st.sampled_from(
    [
        "10.0.0.1",
        "192.0.2.7",
        "127.0.0.53",
        "127.0.0.1",
        "::1",
        "fd00::1",
        "fe80::1%eth0",
        "8.8.8.8",
    ]
)
#: Values near valid ones: domains, options and addresses, with any character mixed in.
WORDS = st.one_of(
    st.text(max_size=12),
    st.from_regex(r"[a-z0-9.:-]{1,12}", fullmatch=True),
    ADDRESSES,
    st.sampled_from(["host", "none", ".", "ndots:2", "x\nnameserver 6.6.6.6"]),
)
#: Mostly acceptable option values (the checks refuse the rest, which the property skips).
DOMAINS = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9.:_-]{0,15}", fullmatch=True),
    st.text(st.characters(blacklist_categories=("C", "Z")), min_size=1),
)
NAMES = st.builds(
    Names,
    dns=st.one_of(
        st.lists(ADDRESSES, max_size=3),
        st.sampled_from([("host",), ("none",)]),
        st.lists(WORDS, max_size=2),
    ).map(tuple),
    dns_search=st.one_of(st.lists(DOMAINS, max_size=3), st.just((".",))).map(tuple),
    dns_opt=st.lists(DOMAINS, max_size=3).map(tuple),
    hosts_entries=st.just(()),
    hostname=st.none(),
)
LINES = st.lists(
    st.tuples(
        st.sampled_from(["nameserver", "search", "domain", "options", "sortlist", "#", ""]),
        st.lists(st.one_of(WORDS, ADDRESSES), max_size=3),
        st.sampled_from([" ", "\t", "  "]),
    ).map(lambda t: t[2].join([t[0], *t[1]])),
    max_size=8,
)
HOST_TEXT = st.one_of(
    st.none(),
    st.text(max_size=200),
    LINES.map("\n".join),
    LINES.map(lambda ls: "\n".join(["nameserver 127.0.0.53", *ls])),  # resolved's stub
    st.just("nameserver 127.0.0.1\n"),  # NetworkManager's dnsmasq
)
LINE = re.compile(r"(nameserver|search|options)( \S+)+")
PROPERTY = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much]
)


def _accepted(names: Names) -> bool:
    try:
        check_names(names)
    except UsageError:
        return False
    return True


@PROPERTY
@given(
    names=NAMES, host=HOST_TEXT, upstream=HOST_TEXT, net=st.sampled_from(["cni", "none", "host"])
)
def test_no_accepted_input_puts_a_foreign_line_in_the_file(
    names: Names, host: str | None, upstream: str | None, net: str
) -> None:
    if not _accepted(names):
        return
    text = compose_resolv_conf(names, host, upstreams(host, upstream), net=net)
    if text is None:
        return
    assert text.endswith("\n") or text == ""
    lines = text.splitlines()  # every line break Python knows, not only "\n"
    assert text.count("\n") == len(lines)
    for line in lines:
        assert LINE.fullmatch(line), line
        assert line.isprintable()
    servers = [ln.split()[1] for ln in lines if ln.startswith("nameserver ")]
    assert all(netspec.is_ip(s) for s in servers)
    explicit = [d for d in names.dns if d not in ("host", "none")]
    if explicit:
        assert servers == explicit
    else:
        # The host's or resolved's servers, or podman's fallback: never one made up.
        known = f"{host} {upstream} {' '.join(netspec.FALLBACK_NAMESERVERS)}"
        assert all(s in known for s in servers)
        if net != "host":
            assert servers and not any(netspec.is_loopback(s) for s in servers)
    searches = [ln for ln in lines if ln.startswith("search ")]
    assert len(searches) <= 1
    if names.dns_search and names.dns_search != (".",):
        assert searches == ["search " + " ".join(names.dns_search)]
    if names.dns_opt:
        assert [ln for ln in lines if ln.startswith("options ")] == [
            "options " + " ".join(names.dns_opt)
        ]


@PROPERTY
@given(
    value=st.text(max_size=40),
    field=st.sampled_from(["dns", "dns_search", "dns_opt", "hosts_entries", "hostname"]),
)
def test_check_names_accepts_no_space_or_control_character(value: str, field: str) -> None:
    names = Names(**{field: value if field == "hostname" else (value,)})  # type: ignore[arg-type]
    if _accepted(names):
        assert value and all(c.isprintable() and not c.isspace() for c in value)


@PROPERTY
@given(
    key=st.sampled_from(["DNS", "DNSSearch", "DNSOption", "HostsEntry", "Hostname"]),
    value=st.text(max_size=30).filter(lambda v: v.splitlines() == [v] or v == ""),
)
def test_a_pod_file_value_is_refused_or_plain(key: str, value: str) -> None:
    try:
        pf = generator.parse(POD.format(key=key, value=value))
    except generator.PodFileError:
        return
    option = generator.POD_KEYS[key][0]
    (arg,) = [a for a in generator.run_argv(pf) if a.startswith(f"{option}=")]
    given_value = arg.partition("=")[2]
    assert given_value and all(c.isprintable() and not c.isspace() for c in given_value)
