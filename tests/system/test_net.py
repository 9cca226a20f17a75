"""Pod networking with the real CNI plugins, inside the box (its own network namespace).

Two pods reach each other, a pod reaches the host side of the bridge, --net=none has only
lo, --port answers on 127.0.0.1 and from another network namespace, names and sysctls land
where they should, and stop, gc and a failed start leave links, netns files, IPAM leases
and iptables/nft rules as they were.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from podfix import Podmgr, build_image, sh

INSECURE = "--insecure-options=image"
IPAM = Path("/run/podmgr/ipam")
HTTP_PORT = [{"name": "http", "protocol": "tcp", "port": 80}]


@pytest.fixture(scope="module")
def pm(tmp_path_factory: pytest.TempPathFactory) -> Podmgr:
    return Podmgr(tmp_path_factory.mktemp("podmgr-state"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


def img(images: Path, name: str, exec_: list[str], **kw: object) -> str:
    return str(build_image(images / f"{name}.aci", f"example.com/{name}", exec_, **kw))  # type: ignore[arg-type]


def server_image(images: Path) -> str:
    return img(
        images,
        "web",
        ["/bin/httpd", "-f", "-p", "80", "-h", "/srv/www"],
        files={"srv/www/index.html": "hello from the pod\n"},
        extra_app={"ports": HTTP_PORT},
    )


# busybox wget (static glibc) crashes in a root without libc; nc does not.
NC_GET = (
    "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do "
    'printf \'GET /index.html HTTP/1.0\\r\\n\\r\\n\' | nc "$HOST" "$PORT" && exit; '
    "sleep 0.2; done; exit 1"
)


def pod_ip(pm: Podmgr, uuid: str) -> str:
    nets = pm.json("status", uuid)["networks"]
    return str(nets[0]["ips"][0]["address"]).split("/")[0]


def fetch(url: str, *, netns: str | None = None, tries: int = 50) -> str:
    """GET url (from the box, or from netns), retrying while the server starts up."""
    code = (
        "import sys, urllib.request as u; "
        "print(u.urlopen(sys.argv[1], timeout=2).read().decode(), end='')"
    )
    argv = [sys.executable, "-c", code, url]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    for _ in range(tries):
        p = sh(*argv)
        if p.returncode == 0:
            return p.stdout
        time.sleep(0.1)
    raise AssertionError(f"{url}: {p.stderr}")


_COUNTERS = re.compile(r"\[\d+:\d+\]|counter packets \d+ bytes \d+")


def net_state() -> dict[str, list[str]]:
    """What a pod's network could leave behind: links, netns files, IPAM leases, rules."""
    links = sh("ip", "-o", "link", "show").stdout
    mounts = [ln.split()[1] for ln in Path("/proc/self/mounts").read_text().splitlines()]
    leases = sorted(
        str(p.relative_to(IPAM))
        for p in IPAM.rglob("*")
        if p.is_file() and not p.name.startswith(("last_reserved_ip", "lock"))
    )
    # Sorted: a rule a test took out and the next pod put back comes last.
    rules = sorted(
        _COUNTERS.sub("", ln)
        for ln in sh("iptables-save").stdout.splitlines()
        if not ln.startswith("#")
    )
    nft = sorted(_COUNTERS.sub("", ln) for ln in sh("nft", "list", "ruleset").stdout.splitlines())
    return {
        "links": sorted(ln.split(":")[1].strip().split("@")[0] for ln in links.splitlines()),
        "netns": sorted(ln.split()[0] for ln in sh("ip", "netns", "list").stdout.splitlines()),
        "leases": leases,
        "iptables": rules,
        "nft": nft,
        "ports": sorted(p.name for p in Path("/run/podmgr/ports").glob("*")),
        # The netns's own sysfs (podmgr.netns): its mount, and its mount point.
        "sysfs": sorted(
            [m for m in mounts if m.startswith("/run/podmgr/sysfs/")]
            + [str(p) for p in Path("/run/podmgr/sysfs").glob("*")]
        ),
    }


def settled(
    baseline: dict[str, list[str]], ignore: dict[str, list[str]] | None = None
) -> dict[str, list[str]]:
    """net_state() once it matches ``baseline`` (after taking out ``ignore``), or after 5 s:
    a pod's veth goes with its netns, which the kernel destroys in the background."""
    deadline = time.monotonic() + 5
    while True:
        state = net_state()
        for key, extra in (ignore or {}).items():
            state[key] = [x for x in state[key] if x not in extra]
        if state == baseline or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


@pytest.fixture(scope="module")
def baseline(pm: Podmgr, images: Path) -> dict[str, list[str]]:
    """The state once the default network exists: the bridge and the plugins' shared
    chains are created by the first pod and stay, as in any CNI runtime."""
    web = server_image(images)
    pm("run", INSECURE, "--port", "http:18000", web, "--exec", "/bin/true")
    return net_state()


def wait_stopped(pm: Podmgr, uuid: str) -> None:
    pm("status", "--wait=30s", uuid)


def test_two_pods_reach_each_other(pm: Podmgr, images: Path, baseline: object) -> None:
    web = server_image(images)
    uuid = pm("start", INSECURE, web).stdout.strip()
    try:
        ip = pod_ip(pm, uuid)
        assert ip.startswith("172.31.")
        st = pm.json("status", uuid)
        assert st["net"] == "default"
        assert st["networks"][0]["interface"] == "eth0"
        assert f"default eth0 {ip}/16" in pm("status", uuid).stdout
        client = img(images, "client", ["/bin/sh", "-c", NC_GET])
        p = pm("run", INSECURE, "--set-env", f"HOST={ip}", "--set-env", "PORT=80", client)
        assert p.stdout.splitlines()[-1] == "hello from the pod"
        # CNI CHECK agrees with what is attached.
        code = (
            "import sys; from pathlib import Path; from podmgr import network; "
            f"print(network.check(Path({str(pm.state / 'pods' / uuid)!r})))"
        )
        assert (
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True
            ).stdout.strip()
            == "[]"
        )
    finally:
        pm("stop", uuid)


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the host side\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_pod_reaches_the_host_side_of_the_bridge(
    pm: Podmgr, images: Path, baseline: object
) -> None:
    server = ThreadingHTTPServer(("172.31.0.1", 0), _Hello)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        port = server.server_address[1]
        client = img(images, "hostclient", ["/bin/sh", "-c", NC_GET])
        env = ["--set-env", "HOST=172.31.0.1", "--set-env", f"PORT={port}"]
        p = pm("run", INSECURE, *env, client)
        assert p.stdout.splitlines()[-1] == "hello from the host side"
    finally:
        server.shutdown()
        server.server_close()


def test_net_none_has_only_lo(pm: Podmgr, images: Path) -> None:
    probe = img(images, "links", ["/bin/sh", "-c", "ip -o link | cut -d: -f2"])
    p = pm("run", INSECURE, "--net=none", probe)
    assert p.stdout.split() == ["lo"]
    uuid_line = next(u for u in pm.json("list") if u["apps"] == ["links"])["uuid"]
    st = pm.json("status", uuid_line)
    assert st["net"] == "none" and st["networks"] == []


def test_net_host_sees_the_hosts_links(pm: Podmgr, images: Path, baseline: object) -> None:
    probe = img(images, "hostlinks", ["/bin/sh", "-c", "ip -o link | cut -d: -f2"])
    p = pm("run", INSECURE, "--net=host", probe)
    assert "podmgr0" in p.stdout.split()


@pytest.fixture
def client_netns() -> Iterator[str]:
    """Another "host": a network namespace joined to the box by a veth pair."""
    ns = "podmgr-test-client"
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", "tclient0", "type", "veth", "peer", "name", "tclient1")
    sh("ip", "link", "set", "tclient1", "netns", ns)
    sh("ip", "addr", "add", "10.99.0.1/24", "dev", "tclient0")
    sh("ip", "link", "set", "tclient0", "up")
    sh("ip", "-n", ns, "addr", "add", "10.99.0.2/24", "dev", "tclient1")
    sh("ip", "-n", ns, "link", "set", "tclient1", "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    yield ns
    sh("ip", "link", "del", "tclient0")
    sh("ip", "netns", "del", ns)


def test_port_from_localhost_and_from_another_netns(
    pm: Podmgr, images: Path, baseline: dict[str, list[str]], client_netns: str
) -> None:
    web = server_image(images)
    uuid = pm("start", INSECURE, "--port", "http:18080", web).stdout.strip()
    try:
        assert fetch("http://127.0.0.1:18080/index.html") == "hello from the pod\n"
        assert fetch("http://10.99.0.1:18080/index.html", netns=client_netns) == (
            "hello from the pod\n"
        )
        st = pm.json("status", uuid)
        assert st["networks"][0]["ports"] == ["http 18080->80/tcp"]
        # A second pod on the same host port is refused before anything is set up.
        p = pm("start", INSECURE, "--port", "http:18080", web, check=False)
        assert p.returncode == 8, p.stderr
        assert "port 18080/tcp is mapped by pod" in p.stderr
    finally:
        pm("stop", uuid)
    assert settled(baseline, {"links": ["tclient0"], "netns": [client_netns]}) == baseline


PEER_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello {self.client_address[0]}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("10.99.0.2", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""

MASQUERADE = [
    "POSTROUTING", "-s", "172.31.0.0/16", "!", "-o", "podmgr0", "-j", "MASQUERADE",
    "-m", "comment", "--comment", "podmgr default network",
]  # fmt: skip


def test_pod_reaches_another_network_masqueraded_past_a_forward_policy_of_drop(
    pm: Podmgr, images: Path, baseline: dict[str, list[str]], client_netns: str
) -> None:
    """The default network's host rules: the pod's traffic to a network behind another
    interface of the host is forwarded although FORWARD drops by default (as with
    Docker), and leaves with the host's address; a rule a firewall reload dropped is
    back with the next pod."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", client_netns, sys.executable, "-c", PEER_SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    port = server.stdout.readline().strip()
    client = img(images, "peerclient", ["/bin/sh", "-c", NC_GET])
    env = ["--set-env", "HOST=10.99.0.2", "--set-env", f"PORT={port}"]
    assert sh("iptables", "-t", "nat", "-D", *MASQUERADE).returncode == 0
    assert sh("iptables", "-P", "FORWARD", "DROP").returncode == 0
    try:
        p = pm("run", INSECURE, *env, client)
        assert p.stdout.splitlines()[-1] == "hello 10.99.0.1"
        assert sh("iptables", "-t", "nat", "-C", *MASQUERADE).returncode == 0
    finally:
        assert sh("iptables", "-P", "FORWARD", "ACCEPT").returncode == 0
        server.kill()
        server.wait()
    assert settled(baseline, {"links": ["tclient0"], "netns": [client_netns]}) == baseline


def test_port_in_use_on_the_host_is_refused(
    pm: Podmgr, images: Path, baseline: dict[str, list[str]]
) -> None:
    web = server_image(images)
    with socket.socket() as s:
        s.bind(("0.0.0.0", 18081))
        s.listen()
        p = pm("start", INSECURE, "--port", "http:18081", web, check=False)
    assert p.returncode == 8
    assert "port 18081/tcp is already in use on the host" in p.stderr
    assert "Traceback" not in p.stderr
    p = pm("start", INSECURE, "--port", "nosuch:18082", web, check=False)
    assert p.returncode != 0 and "no app declares a port named 'nosuch'" in p.stderr
    # docker's HOSTPORT:PORT: the error names the image's ports and the syntax.
    p = pm("start", INSECURE, "--port", "8080:80", web, check=False)
    assert "no app declares a port named '8080'; the apps declare http (tcp " in p.stderr
    assert "--port http:8080" in p.stderr, p.stderr
    p = pm("start", INSECURE, "--net=host", "--port", "http:18082", web, check=False)
    assert p.returncode != 0 and "--port needs a pod network" in p.stderr
    assert net_state() == baseline


def test_stop_gc_and_exit_leave_nothing(
    pm: Podmgr, images: Path, baseline: dict[str, list[str]]
) -> None:
    web = server_image(images)
    # podmgr stop
    uuid = pm("start", INSECURE, "--port", "http:18083", web).stdout.strip()
    assert net_state() != baseline
    # A started pod's network is held by its net unit (run's pod has none: test_pods).
    net_unit = f"podmgr-net-{uuid.replace('-', '')}.service"
    assert sh("systemctl", "is-active", net_unit).stdout.strip() == "active"
    pm("stop", uuid)
    assert settled(baseline) == baseline
    # the pod ends by itself (the exit hook stops the slice), then gc
    quick = img(images, "quick", ["/bin/true"])
    uuid2 = pm("start", INSECURE, quick).stdout.strip()
    wait_stopped(pm, uuid2)
    assert settled(baseline) == baseline
    # gc of a running-then-stopped pod, and rm of a prepared one
    uuid3 = pm("start", INSECURE, web).stdout.strip()
    pm("stop", uuid3)
    gc = pm.json("gc", "--grace-period=0s")
    assert {uuid, uuid2, uuid3} <= set(gc["removed"])
    prepared = pm("prepare", INSECURE, web).stdout.strip()
    pm("rm", prepared)
    assert settled(baseline) == baseline


def test_failed_start_midway_leaves_nothing(
    pm: Podmgr,
    images: Path,
    baseline: dict[str, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    netd = tmp_path / "net.d"
    netd.mkdir()
    # The second network fails in its IPAM, after the default one is attached.
    (netd / "broken.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "broken",
                "plugins": [
                    {"type": "bridge", "bridge": "podmgrtest1", "ipam": {"type": "no-such-ipam"}}
                ],
            }
        )
    )
    monkeypatch.setenv("PODMGR_NET_DIR", str(netd))
    web = server_image(images)
    pods_before = sorted((pm.state / "pods").iterdir())
    p = pm("start", INSECURE, "--net=default,broken", "--port", "http:18084", web, check=False)
    assert p.returncode == 7, p.stderr
    assert "network broken: bridge ADD failed" in p.stderr
    assert sorted((pm.state / "pods").iterdir()) == pods_before
    # The broken network's bridge is its own shared infrastructure, like podmgr0.
    assert settled(baseline, {"links": ["podmgrtest1"]}) == baseline
    p = pm("start", INSECURE, "--net=nosuch", web, check=False)
    assert p.returncode == 3 and "network 'nosuch' is not defined" in p.stderr


def test_admin_network_with_cni_args(
    pm: Podmgr, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netd = tmp_path / "net.d"
    netd.mkdir()
    (netd / "10-lan.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "0.4.0",
                "name": "lan",
                "plugins": [
                    {
                        "type": "ptp",
                        "ipam": {
                            "type": "host-local",
                            "subnet": "10.77.0.0/24",
                            "dataDir": str(IPAM),
                        },
                    }
                ],
            }
        )
    )
    monkeypatch.setenv("PODMGR_NET_DIR", str(netd))
    probe = img(images, "twonets", ["/bin/sh", "-c", "ip -o -4 addr | cut -d' ' -f2,7"])
    p = pm("run", INSECURE, "--net=default", "--net=lan:IP=10.77.0.42", probe)
    lines = dict(ln.split() for ln in p.stdout.splitlines())
    assert lines["eth0"].startswith("172.31.")
    # host-local takes the address asked for in CNI_ARGS.
    assert lines["eth1"] == "10.77.0.42/24"


def test_dns_hosts_and_hostname(pm: Podmgr, images: Path, tmp_path: Path) -> None:
    probe = img(
        images,
        "names",
        ["/bin/sh", "-c", "cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo HN=$HOSTNAME"],
    )
    p = pm(
        "run",
        INSECURE,
        "--dns",
        "10.1.2.3",
        "--dns",
        "10.1.2.4",
        "--dns-search",
        "example.org",
        "--dns-opt",
        "ndots:2",
        "--hosts-entry",
        "10.9.9.9=db.local",
        "--hostname",
        "web1",
        probe,
    )
    resolv, hosts = p.stdout.split("---\n")
    assert resolv.splitlines() == [
        "nameserver 10.1.2.3",
        "nameserver 10.1.2.4",
        "search example.org",
        "options ndots:2",
    ]
    assert "10.9.9.9\tdb.local" in hosts and "127.0.1.1\tweb1" in hosts
    assert "127.0.0.1\tlocalhost" in hosts
    assert "HN=web1" in hosts
    # --dns=host copies the box's own resolver configuration (the box's /etc is its own).
    resolv = Path("/etc/resolv.conf")
    saved = resolv.read_text() if resolv.exists() else None
    resolv.unlink(missing_ok=True)
    resolv.write_text("nameserver 10.5.5.5\nsearch box.test\n")
    try:
        p = pm("run", INSECURE, "--dns=host", "--dns-opt", "rotate", probe)
    finally:
        resolv.unlink()
        if saved is not None:
            resolv.write_text(saved)
    assert p.stdout.split("---\n")[0].splitlines() == [
        "nameserver 10.5.5.5",
        "search box.test",
        "options rotate",
    ]
    # Never written into the image's tree.
    for tree in (pm.state / "cas/trees").glob("*/rootfs"):
        assert not (tree / "etc/resolv.conf").exists()
        assert not (tree / "etc/hosts").exists()
    p = pm("run", INSECURE, "--hosts-entry", "nonsense", probe, check=False)
    assert p.returncode == 2 and "--hosts-entry 'nonsense'" in p.stderr


def _manifest_pod(
    pm: Podmgr, images: Path, tmp_path: Path, sysctls: dict[str, str], name: str = "pod.json"
) -> Path:
    aci = img(
        images,
        "sysctl",
        [
            "/bin/sh",
            "-c",
            "cat /proc/sys/net/ipv4/ip_local_port_range /proc/sys/net/ipv4/ip_default_ttl",
        ],
    )
    image_id = pm("fetch", INSECURE, aci).stdout.strip().splitlines()[-1]
    manifest = tmp_path / name
    manifest.write_text(
        json.dumps(
            {
                "acKind": "PodManifest",
                "acVersion": "0.8.11",
                "apps": [{"name": "sysctl", "image": {"id": image_id}}],
                "isolators": [{"name": "os/unix/sysctl", "value": sysctls}],
            }
        )
    )
    return manifest


def test_sysctl_isolator_in_the_pods_netns(pm: Podmgr, images: Path, tmp_path: Path) -> None:
    manifest = _manifest_pod(
        pm,
        images,
        tmp_path,
        {"net.ipv4.ip_local_port_range": "40000 40100", "net.ipv4.ip_default_ttl": "33"},
    )
    ttl_before = Path("/proc/sys/net/ipv4/ip_default_ttl").read_text()
    p = pm("run", "--uuid-file-save", str(tmp_path / "uuid"), "--pod-manifest", str(manifest))
    assert p.stdout.split() == ["40000", "40100", "33"]
    assert Path("/proc/sys/net/ipv4/ip_default_ttl").read_text() == ttl_before
    st = pm.json("status", (tmp_path / "uuid").read_text().strip())
    assert {"name": "os/unix/sysctl", "state": "applied"} in st["isolators"]
    bad = _manifest_pod(pm, images, tmp_path, {"kernel.shmmax": "1"}, "bad.json")
    p = pm("run", "--pod-manifest", str(bad), check=False)
    assert p.returncode == 4 and "os/unix/sysctl: kernel.shmmax not allowed" in p.stderr
    p = pm("run", "--net=host", "--pod-manifest", str(manifest), check=False)
    assert p.returncode == 4 and "needs the pod's own network namespace" in p.stderr
