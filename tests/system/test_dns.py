"""A pod's /etc/resolv.conf, in the box: a default-network pod resolves names through the
host's resolvers, systemd-resolved's loopback stub replaced by its upstream servers; a
pod cloned from a template follows the host's files as a full prepare would; values that
would add lines are refused before anything is done."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from podfix import Podmgr, build_image, sh

INSECURE = "--insecure-options=image"
#: Addresses of the box's own that a pod reaches through its default route, the bridge
#: (not 127.0.0.0/8, which the pod's network namespace has its own of); on the box's lo, as
#: the box's kernel has no dummy links.
SERVER = "10.98.0.53"
OTHER = "10.98.0.54"
NAME = "pod-dns-test.example"
ANSWER = "10.1.2.3"
#: The box's /etc/resolv.conf as systemd-resolved makes it, and resolved's upstream list.
STUB = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch box.test\n"
UPSTREAM = Path("/run/systemd/resolve/resolv.conf")
PROBE = "cat /etc/resolv.conf; echo ---; nslookup " + NAME


class DNSServer:
    """A UDP DNS responder: A for NAME, NXDOMAIN for anything else; it notes who asked."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 53))
        # close() does not wake a thread blocked in recvfrom: it polls a flag instead.
        self.sock.settimeout(0.1)
        self.stopping = threading.Event()
        self.clients: list[tuple[str, str]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            try:
                reply = self._answer(data, peer[0])
            except (IndexError, struct.error, UnicodeDecodeError):
                continue
            self.sock.sendto(reply, peer)

    def _answer(self, q: bytes, client: str) -> bytes:
        qid = struct.unpack(">H", q[:2])[0]
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1 : i + 1 + q[i]].decode())
            i += 1 + q[i]
        qtype = struct.unpack(">H", q[i + 1 : i + 3])[0]
        name = ".".join(labels).lower()
        self.clients.append((client, name))
        found = name == NAME
        answer = b""
        if found and qtype == 1:  # A; AAAA gets an empty answer
            answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(ANSWER)
        flags = 0x8180 | (0 if found else 3)
        header = struct.pack(">HHHHHH", qid, flags, 1, 1 if answer else 0, 0, 0)
        return header + q[12 : i + 5] + answer

    def close(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def pm(tmp_path: Path) -> Podmgr:
    return Podmgr(tmp_path / "state")


@pytest.fixture
def resolved_host() -> Iterator[None]:
    """The box as a host with systemd-resolved: its stub in /etc/resolv.conf, the real
    servers (SERVER) in resolved's upstream list."""
    etc = Path("/etc/resolv.conf")
    saved = etc.read_text() if etc.exists() else None
    for a in (SERVER, OTHER):
        assert sh("ip", "addr", "add", f"{a}/32", "dev", "lo").returncode == 0
    etc.unlink(missing_ok=True)
    etc.write_text(STUB)
    UPSTREAM.parent.mkdir(parents=True, exist_ok=True)
    UPSTREAM.write_text(f"nameserver {SERVER}\nsearch box.test\n")
    try:
        yield
    finally:
        for a in (SERVER, OTHER):
            sh("ip", "addr", "del", f"{a}/32", "dev", "lo")
        UPSTREAM.unlink(missing_ok=True)
        etc.unlink(missing_ok=True)
        if saved is not None:
            etc.write_text(saved)


def probe_image(pm: Podmgr, tmp_path: Path) -> str:
    aci = build_image(
        tmp_path / "dnsprobe.aci",
        "example.com/dnsprobe",
        ["/bin/sh", "-c", PROBE],
        files={"etc/resolv.conf": "nameserver 192.0.2.99\n"},  # the image's own
    )
    pm("fetch", INSECURE, str(aci))
    # By name, from the store: the pod is kept as a template and the next one cloned.
    return "example.com/dnsprobe"


def test_a_default_network_pod_resolves_through_resolveds_upstream(
    pm: Podmgr, tmp_path: Path, resolved_host: None
) -> None:
    image = probe_image(pm, tmp_path)
    servers = {a: DNSServer(a) for a in (SERVER, OTHER)}
    try:
        first = pm("run", image)
        again = pm("run", image)  # podmgr.fastpath: the command line's record, the template
        debug = pm("--debug", "run", image)  # click's path, which says where the pod came from
        asked_first = list(servers[SERVER].clients)
        # resolved now forwards elsewhere: the same command line's next pod follows.
        UPSTREAM.write_text(f"nameserver {OTHER}\n")
        moved = pm("run", image)
    finally:
        for server in servers.values():
            server.close()
    resolv, answer = first.stdout.split("---\n")
    assert resolv.splitlines() == [
        f"nameserver {SERVER}",  # 127.0.0.53 replaced; the host's search and options kept
        "search box.test",
        "options edns0 trust-ad",
    ]
    assert f"Name:\t{NAME}" in answer and f"Address: {ANSWER}" in answer
    # Asked from the pods' own addresses on the bridge, not from the box.
    assert asked_first and all(c.startswith("172.31.") for c, _ in asked_first)
    assert again.stdout == first.stdout == debug.stdout
    assert "prepared from template" in debug.stderr
    assert moved.stdout == first.stdout.replace(SERVER, OTHER)
    assert servers[OTHER].clients
    # Nothing reachable left (the stub only, resolved's list gone): podman's fallback.
    UPSTREAM.unlink()
    p = pm("run", image, "--exec", "/bin/cat", "--", "/etc/resolv.conf")
    assert p.stdout.splitlines()[:2] == ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]


def test_the_images_own_without_a_network_or_with_dns_none(
    pm: Podmgr, tmp_path: Path, resolved_host: None
) -> None:
    image = probe_image(pm, tmp_path)
    cat = ["--exec", "/bin/cat", "--", "/etc/resolv.conf"]
    for opts in (["--net=host"], ["--net=none"], ["--dns=none"]):
        p = pm("run", *opts, image, *cat)
        assert p.stdout == "nameserver 192.0.2.99\n", opts
    # On the host's network, --dns=host copies the host's file: the stub is reachable there.
    p = pm("run", "--net=host", "--dns=host", image, *cat)
    assert p.stdout.splitlines()[0] == "nameserver 127.0.0.53"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--dns-search", "x\nnameserver 6.6.6.6"),
        ("--dns", "fe80::1%x\nnameserver 6.6.6.6"),
        ("--dns-opt", "ndots:1\nnameserver 6.6.6.6"),
        ("--hosts-entry", "10.0.0.1=db\n6.6.6.6 evil"),
        ("--hostname", "web\n127.0.0.1 evil"),
    ],
)
def test_an_injected_line_is_refused_before_anything_is_done(
    pm: Podmgr, tmp_path: Path, option: str, value: str
) -> None:
    aci = build_image(tmp_path / "inj.aci", "example.com/inj", ["/bin/cat", "/etc/resolv.conf"])
    p = pm("run", INSECURE, option, value, str(aci), check=False)
    assert p.returncode == 2, p.stderr
    error, hint = p.stderr.splitlines()
    assert error.startswith(f"podmgr: error: {option} ") and repr(value)[:20] in error
    assert hint.startswith("podmgr: hint: give ")
    # Refused at parse, before the image is fetched: no pod.
    assert pm.json("list") == []
