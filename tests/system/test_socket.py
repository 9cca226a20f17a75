"""Socket activation: ports declared ``socketActivated: true`` get a transient .socket unit
(named after the app's service, so systemd pairs them) that listens before the app starts
and passes the fds by the sd_listen_fds protocol; in the pod's network namespace unless
``--net=host``; closed with the pod and when the app ends; no unit left behind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from podfix import Podmgr, build_image, host_state, sh, until

INSECURE = "--insecure-options=image"

#: Prints what the app got by the sd_listen_fds protocol, and fd 3's line in /proc/net.
INSIDE = r"""
echo "fds=$LISTEN_FDS names=$LISTEN_FDNAMES pid=$([ "$LISTEN_PID" = $$ ] && echo mine)"
l=$(readlink /proc/self/fd/3); echo "fd3=$l"
ino=${l#socket:[}; ino=${ino%]}
set -- $(grep -h " $ino " /proc/net/tcp /proc/net/tcp6); echo "local=$2 state=$4"
"""


@pytest.fixture(scope="module")
def pm(tmp_path_factory: pytest.TempPathFactory) -> Podmgr:
    return Podmgr(tmp_path_factory.mktemp("podmgr-state"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


def img(
    images: Path, name: str, script: str, ports: list[dict[str, object]], user: str = "0"
) -> str:
    out = build_image(
        images / f"{name}.aci",
        f"example.com/{name}",
        ["/bin/sh", "-c", script],
        extra_app={"ports": ports},
        user=user,
        group=user,
    )
    return str(out)


def hexid(uuid: str) -> str:
    return uuid.replace("-", "")


def socket_unit(uuid: str, app: str) -> str:
    return f"podmgr-{hexid(uuid)}-{app}.socket"


def in_pod_net(net: str, uuid: str, *argv: str) -> list[str]:
    if net == "host":
        return list(argv)
    return ["ip", "netns", "exec", f"podmgr-{hexid(uuid)}", *argv]


def listeners(net: str, uuid: str, port: int, flags: str = "-ltnpH") -> str:
    return sh(*in_pod_net(net, uuid, "ss", flags, f"sport = :{port}")).stdout


def socket_units() -> list[str]:
    return [u for u in host_state()["units"] if u.endswith(".socket")]


@pytest.mark.parametrize("net", ["host", "none", "default"])
def test_the_app_gets_its_listening_socket(pm: Podmgr, images: Path, net: str) -> None:
    # In its own netns, the app (not root, no capability) gets port 80: systemd opens it.
    port = {"host": 18301, "none": 80, "default": 18303}[net]
    aci = img(
        images,
        f"sa-{net}",
        INSIDE,
        [{"name": "web", "protocol": "tcp", "port": port, "socketActivated": True}],
        user="alice" if net == "none" else "0",
    )
    p = pm("run", INSECURE, f"--net={net}", aci)
    out = p.stdout
    assert "fds=1 names=web pid=mine" in out, out
    assert "fd3=socket:[" in out, out
    # The inode of fd 3 is a socket on the port in LISTEN (0A), in the app's own netns.
    assert "local=" in out and f":{port:04X} state=0A" in out, out
    assert socket_units() == []


@pytest.mark.parametrize("net", ["host", "default"])
def test_socket_listens_outside_and_goes_with_the_pod(pm: Podmgr, images: Path, net: str) -> None:
    port = {"host": 18311, "default": 18312}[net]
    aci = img(
        images,
        f"sa-long-{net}",
        "exec sleep 600",
        [{"name": "web", "protocol": "tcp", "port": port, "socketActivated": True}],
    )
    before = host_state()
    mapped = ["--port", f"web:{port + 10}"] if net == "default" else []
    uuid = pm("start", INSECURE, f"--net={net}", *mapped, aci).stdout.strip()
    unit = socket_unit(uuid, f"sa-long-{net}")
    assert sh("systemctl", "is-active", unit).stdout.strip() == "active"
    shown = sh("systemctl", "show", "-P", "Listen", unit).stdout
    assert f"{port} (Stream)" in shown, shown
    # systemd holds the listening socket, and so does the app it passed it to.
    ss = listeners(net, uuid, port)
    assert "LISTEN" in ss and '"systemd"' in ss and '"sleep"' in ss, ss
    if net == "host":
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
    else:
        # In the pod's network namespace, not the host's; --port maps it as any port.
        assert listeners("host", uuid, port) == ""
        with socket.create_connection(("127.0.0.1", port + 10), timeout=10):
            pass
    pm("stop", uuid)
    assert sh("systemctl", "is-active", unit).stdout.strip() != "active"
    assert listeners("host", uuid, port) == ""
    pm("rm", uuid)
    after = host_state()
    assert [u for u in after["units"] if hexid(uuid) in u] == []
    assert set(after["units"]) <= set(before["units"])


def test_several_ports_one_socket_unit(pm: Podmgr, images: Path) -> None:
    aci = img(
        images,
        "sa-multi",
        'echo "fds=$LISTEN_FDS names=$LISTEN_FDNAMES"; exec sleep 600',
        [
            {"name": "web", "protocol": "tcp", "port": 18321, "socketActivated": True},
            {"name": "dns", "protocol": "udp", "port": 18322, "socketActivated": True},
            {"name": "admin", "protocol": "tcp", "port": 18323},
        ],
    )
    uuid = pm("start", INSECURE, "--net=host", aci).stdout.strip()
    unit = socket_unit(uuid, "sa-multi")
    until(lambda: "fds=" in pm("logs", uuid).stdout, "the app's output")
    # One socket unit per app (systemd 252 pairs a transient socket with its service by
    # name only), so the fds share the default name, the socket unit's.
    assert f"fds=2 names={unit}:{unit}" in pm("logs", uuid).stdout
    assert "LISTEN" in listeners("host", uuid, 18321)
    assert "UNCONN" in listeners("host", uuid, 18322, "-lunpH")
    assert listeners("host", uuid, 18323) == ""  # not socket-activated: nobody listens
    pm("stop", uuid)
    pm("rm", uuid)
    assert listeners("host", uuid, 18321) == ""


def test_the_port_closes_when_its_app_ends(pm: Podmgr, images: Path) -> None:
    """Traffic must not start an app again after it ended (and the exit policy ran)."""
    short = img(
        images,
        "sa-short",
        "echo served",
        [{"name": "web", "protocol": "tcp", "port": 18331, "socketActivated": True}],
    )
    long = str(build_image(images / "sleeper.aci", "example.com/sleeper", ["/bin/sleep", "600"]))
    uuid = pm("start", INSECURE, "--net=host", short, "---", long).stdout.strip()
    unit = socket_unit(uuid, "sa-short")
    service = f"podmgr-{hexid(uuid)}-sa-short.service"
    until(lambda: sh("systemctl", "is-active", service).stdout.strip() != "active", "app end")
    until(lambda: sh("systemctl", "is-active", unit).stdout.strip() != "active", "socket closed")
    assert listeners("host", uuid, 18331) == ""
    assert pm.json("status", uuid)["state"] == "running"  # the other app still runs
    pm("stop", uuid)
    pm("rm", uuid)
    assert [u for u in host_state()["units"] if hexid(uuid) in u] == []


def test_restarts_keep_the_same_listening_socket(pm: Podmgr, images: Path) -> None:
    """systemd holds the socket while the app restarts: connections queue, none refused.
    (The app runs a while: systemd's start limit, 5 starts in 10 s, would end the pod.)"""
    aci = img(
        images,
        "sa-restart",
        'echo "fd3=$(readlink /proc/self/fd/3)"; sleep 2; exit 1',
        [{"name": "web", "protocol": "tcp", "port": 18341, "socketActivated": True}],
    )
    uuid = pm("start", INSECURE, "--net=host", aci, "--restart=on-failure").stdout.strip()

    def seen() -> list[str]:
        return [ln for ln in pm("logs", uuid).stdout.splitlines() if ln.startswith("fd3=")]

    until(lambda: len(seen()) >= 3, "three runs of the app")
    assert len(set(seen())) == 1, seen()
    assert sh("systemctl", "is-active", socket_unit(uuid, "sa-restart")).stdout.strip() == "active"
    pm("stop", uuid)
    pm("rm", uuid)
    assert listeners("host", uuid, 18341) == ""
