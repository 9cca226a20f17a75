"""Pure parts of pod networking: option parsing, files written into apps, unit properties."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from podmgr import network, units
from podmgr.errors import InvalidError, UsageError
from podmgr.network import Names, NetRequest


def test_parse_nets() -> None:
    assert network.parse_nets([]) == ("cni", ("default",))
    assert network.parse_nets(["host"]) == ("host", ())
    assert network.parse_nets(["none"]) == ("none", ())
    assert network.parse_nets(["default,lan:IP=10.0.0.5"]) == (
        "cni",
        ("default", "lan:IP=10.0.0.5"),
    )
    assert network.parse_nets(["default", "lan"]) == ("cni", ("default", "lan"))
    for bad in (["host", "default"], ["none,lan"], ["lan", "lan"], ["la/n"], ["lan:novalue"]):
        with pytest.raises(UsageError):
            network.parse_nets(bad)


def test_cni_args() -> None:
    assert NetRequest.parse("lan").cni_args() == ""
    assert NetRequest.parse("lan:IP=10.0.0.5;X=y").cni_args() == "IgnoreUnknown=1;IP=10.0.0.5;X=y"


def test_parse_port() -> None:
    assert network.parse_port("http:8080") == {"name": "http", "hostPort": 8080}
    assert network.parse_port("http:127.0.0.1:8080") == {
        "name": "http",
        "hostPort": 8080,
        "hostIP": "127.0.0.1",
    }
    for bad in ("http", "http:x", "http:0", "http:1.2.3:80", ":80", "a:b:c:d"):
        with pytest.raises(UsageError):
            network.parse_port(bad)


def test_resolv_conf() -> None:
    assert network.resolv_conf(Names(), "none") is None
    assert network.resolv_conf(Names(dns=("none",)), "cni") is None
    text = network.resolv_conf(
        Names(dns=("10.0.0.1", "fd00::1"), dns_search=("a.example",), dns_opt=("ndots:2",)),
        "cni",
    )
    assert text == "nameserver 10.0.0.1\nnameserver fd00::1\nsearch a.example\noptions ndots:2\n"


def test_hosts_file() -> None:
    names = Names(hosts_entries=("10.0.0.9=db",), hostname="web")
    text = network.hosts_file(names, "127.0.0.1\tlocalhost\n", "web")
    assert text == "127.0.0.1\tlocalhost\n127.0.1.1\tweb\n10.0.0.9\tdb\n"


def test_check_names() -> None:
    network.check_names(Names(dns=("host",), hosts_entries=("host", "::1=x"), hostname="a-b.c"))
    for bad in (
        Names(dns=("host", "1.1.1.1")),
        Names(dns=("dns.example",)),
        Names(hosts_entries=("x=y",)),
        Names(hosts_entries=("1.2.3.4=",)),
        Names(hostname="a_b"),
        Names(hostname="-" * 64),
    ):
        with pytest.raises(UsageError):
            network.check_names(bad)


def test_check_sysctls() -> None:
    assert network.check_sysctls({"net.ipv4.ip_forward": "1"}, "cni") == {
        "net.ipv4.ip_forward": "1"
    }
    with pytest.raises(InvalidError, match=r"kernel\.shmmax not allowed"):
        network.check_sysctls({"kernel.shmmax": "1"}, "cni")
    with pytest.raises(InvalidError, match="own network namespace"):
        network.check_sysctls({"net.ipv4.ip_forward": "1"}, "host")


def test_write_etc_goes_to_the_upper_layer(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc/hosts").write_text("127.0.0.1\tlocalhost\n")
    upper.mkdir()
    network.write_etc(lower, upper, Names(dns=("10.0.0.1",)), "pod", net="cni")
    assert (upper / "etc/resolv.conf").read_text() == "nameserver 10.0.0.1\n"
    assert not (upper / "etc/hosts").exists()  # the image has one and nothing was asked
    assert not (lower / "etc/resolv.conf").exists()


def test_summary_of_a_result() -> None:
    entry = {
        "ifname": "eth0",
        "config": {"name": "default"},
        "ports": [
            {
                "name": "http",
                "protocol": "tcp",
                "container_port": 80,
                "host_port": 8080,
                "host_ip": "",
            }
        ],
        "result": {
            "interfaces": [
                {"name": "podmgr0"},
                {"name": "veth1"},
                {"name": "eth0", "sandbox": "x"},
            ],
            "ips": [{"interface": 2, "address": "172.31.0.2/16", "gateway": "172.31.0.1"}],
        },
    }
    assert network._summary(entry) == {
        "name": "default",
        "interface": "eth0",
        "ips": [{"interface": "eth0", "address": "172.31.0.2/16"}],
        "gateway": "172.31.0.1",
        "ports": ["http 8080->80/tcp"],
    }


def test_apps_join_the_pods_netns() -> None:
    app = units.AppPlan(
        name="a", exec=("/bin/true",), uid=0, gid=0, rootfs="/r"
    )
    pod = units.PodPlan(
        uuid="00000000-0000-0000-0000-000000000001",
        apps=(app,),
        net=units.NetMode.CNI,
        netns_path="/run/netns/podmgr-x",
        net_hook=("/usr/bin/python3", "-S", "-m", "podmgr.network", "down", "/s", "u"),
    )
    props = units.app_properties(app, pod, others=["b.service"])
    assert props["NetworkNamespacePath"] == "/run/netns/podmgr-x"
    assert "PrivateNetwork" not in props
    assert props["JoinsNamespaceOf"] == ["b.service"]
    net = units.net_unit(pod.uuid)
    assert net in props["BindsTo"] and net in props["After"]
    nprops = units.net_unit_properties(pod)
    assert nprops["Type"] == "oneshot" and nprops["RemainAfterExit"] is True
    assert nprops["BindsTo"] == [units.pod_slice(pod.uuid)]
    ((path, argv, _),) = nprops["ExecStop"]
    assert path == "/bin/sh" and argv[4:] == ["/run/netns/podmgr-x", *pod.net_hook]
    host = units.app_properties(app, units.PodPlan(uuid=pod.uuid, apps=(app,)))
    assert "NetworkNamespacePath" not in host and "PrivateNetwork" not in host


def test_the_net_units_stop_guard_runs_the_teardown_only_while_the_netns_exists(
    tmp_path: Path,
) -> None:
    ns = tmp_path / "netns"
    argv = ["sh", "-c", units.NET_STOP_GUARD, "sh", str(ns), "touch", str(tmp_path / "ran")]
    subprocess.run(argv, check=True)
    assert not (tmp_path / "ran").exists()
    ns.touch()
    subprocess.run(argv, check=True)
    assert (tmp_path / "ran").exists()


def test_the_default_network_masquerades_for_the_bridge_not_per_pod() -> None:
    plain = network.default_conflist(ports=False)
    assert [p["type"] for p in plain["plugins"]] == ["bridge"]
    assert plain["plugins"][0]["ipMasq"] is False
    mapped = network.default_conflist(ports=True)
    assert [p["type"] for p in mapped["plugins"]] == ["bridge", "portmap"]
    # The host's rules stand for the bridge: masquerade out of it, forward both ways.
    rules = {(t, c, " ".join(r)) for t, c, r in network.HOST_RULES}
    assert (
        "nat",
        "POSTROUTING",
        "-s 172.31.0.0/16 ! -o podmgr0 -j MASQUERADE -m comment --comment podmgr default network",
    ) in rules
    assert {c for _, c, _ in rules} == {"POSTROUTING", "FORWARD"}
