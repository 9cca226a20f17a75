"""Socket activation as unit properties: the app's .socket unit and its service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podmgr import systemd, units

UUID = "00000000-0000-0000-0000-000000000001"
HEX = UUID.replace("-", "")


def app(*sockets: units.SocketPort) -> units.AppPlan:
    return units.AppPlan(
        name="web",
        exec=("/bin/httpd",),
        uid=1000,
        gid=1000,
        rootfs="/r",
        sockets=sockets,
    )


def pod(a: units.AppPlan, *, netns: bool) -> units.PodPlan:
    if not netns:
        return units.PodPlan(uuid=UUID, apps=(a,))
    return units.PodPlan(
        uuid=UUID,
        apps=(a,),
        net=units.NetMode.CNI,
        netns_path="/run/netns/podmgr-x",
        net_hook=("/usr/bin/python3", "-S", "-m", "podmgr.network", "down", "/s", UUID),
    )


def test_socket_unit_is_named_after_the_service() -> None:
    # systemd 252 refuses Service= on a transient socket and Sockets= on a transient
    # service: the pair is made by name.
    assert units.socket_unit(UUID, "web") == f"podmgr-{HEX}-web.socket"
    assert units.app_service(UUID, "web") == f"podmgr-{HEX}-web.service"


def test_one_port_host_network() -> None:
    a = app(units.SocketPort("http", "tcp", 80))
    props = units.socket_properties(a, pod(a, netns=False))
    assert props["Listen"] == [("Stream", "80")]
    assert props["FileDescriptorName"] == "http"
    assert props["Accept"] is False
    assert props["Slice"] == units.pod_slice(UUID)
    assert props["CollectMode"] == "inactive-or-failed"
    assert "NetworkNamespacePath" not in props and "BindsTo" not in props
    # Every property has systemd's signature.
    encoded = dict(systemd.encode_properties(props))
    assert encoded["Listen"] == ("a(ss)", [("Stream", "80")])


def test_pod_network_namespace() -> None:
    a = app(units.SocketPort("http", "tcp", 80))
    p = pod(a, netns=True)
    props = units.socket_properties(a, p)
    assert props["NetworkNamespacePath"] == "/run/netns/podmgr-x"
    net = units.net_unit(UUID)
    assert props["BindsTo"] == [net] and props["After"] == [net]
    systemd.encode_properties(props)


def test_several_ports_ranges_and_udp_share_the_default_name() -> None:
    a = app(units.SocketPort("http", "tcp", 8080, count=2), units.SocketPort("dns", "udp", 53))
    props = units.socket_properties(a, pod(a, netns=False))
    assert props["Listen"] == [("Stream", "8080"), ("Stream", "8081"), ("Datagram", "53")]
    assert "FileDescriptorName" not in props  # systemd's default: the socket unit's name
    ranged = app(units.SocketPort("http", "tcp", 8080, count=3))
    assert units.socket_properties(ranged, pod(ranged, netns=False))["FileDescriptorName"] == (
        "http"
    )


def test_unknown_protocol_is_refused() -> None:
    a = app(units.SocketPort("x", "sctp", 1))
    with pytest.raises(ValueError):
        units.socket_properties(a, pod(a, netns=False))


def test_the_service_requires_its_socket() -> None:
    a = app(units.SocketPort("http", "tcp", 80))
    props = units.app_properties(a, pod(a, netns=True))
    sock = units.socket_unit(UUID, "web")
    assert props["Requires"] == [sock]
    assert sock in props["After"]
    # Not PropagatesStopTo=: that would reopen the sockets at every restart.
    assert "PropagatesStopTo" not in props
    plain = units.app_properties(app(), pod(app(), netns=True))
    assert "Requires" not in plain
    assert not any(u.endswith(".socket") for u in plain["After"])


def test_exit_hook_knows_socket_activated_apps(tmp_path: Path) -> None:
    from podmgr import hook

    ports = [
        {"name": "web", "protocol": "tcp", "port": 80, "socketActivated": True},
        {"name": "x", "protocol": "tcp", "port": 81},
    ]
    manifest = {
        "apps": [
            {"name": "web", "app": {"ports": ports}},
            {"name": "plain", "app": {"ports": ports[1:]}},
            {"name": "bare"},
        ]
    }
    (tmp_path / "manifest").write_text(json.dumps(manifest))
    assert "web" in hook.socket_apps(tmp_path)
    assert "plain" not in hook.socket_apps(tmp_path)
    assert "bare" not in hook.socket_apps(tmp_path)
    assert "web" not in hook.socket_apps(tmp_path / "gone")

