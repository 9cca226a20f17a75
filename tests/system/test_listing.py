"""``podmgr list`` and ``podmgr logs`` as podman users expect: pods oldest first with
their exit codes and ports; log lines with their journal times."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest
from podfix import Podmgr, build_image

INSECURE = "--insecure-options=image"
HTTP_PORT = [{"name": "http", "protocol": "tcp", "port": 80}]


@pytest.fixture(scope="module")
def pm(tmp_path_factory: pytest.TempPathFactory) -> Podmgr:
    return Podmgr(tmp_path_factory.mktemp("podmgr-state"))


def run(pm: Podmgr, tmp_path: Path, *args: str) -> tuple[str, int]:
    """Run a pod to its end: its UUID and run's exit code."""
    saved = tmp_path / "uuid"
    p = pm("run", INSECURE, "--uuid-file-save", str(saved), *args, check=False)
    return saved.read_text().strip(), p.returncode


def test_pods_are_listed_oldest_first_with_exit_codes(pm: Podmgr, tmp_path: Path) -> None:
    fails = build_image(tmp_path / "fails.aci", "example.com/fails", ["/bin/sh", "-c", "exit 3"])
    ok = build_image(tmp_path / "ok.aci", "example.com/ok", ["/bin/true"])
    first, code = run(pm, tmp_path, str(fails))
    assert code == 3
    # Pods after it until one's UUID sorts before the first's, so that a list in UUID
    # order is not the order of creation (each try: one chance in two).
    order = [first]
    for _ in range(12):
        uuid, code = run(pm, tmp_path, str(ok))
        assert code == 0
        order.append(uuid)
        if uuid < first:
            break
    assert sorted(order) != order
    listed = [p for p in pm.json("list") if p["uuid"] in order]
    assert [p["uuid"] for p in listed] == order
    assert [p["exit_code"] for p in listed] == [3] + [0] * (len(order) - 1)
    assert all(p["state"] == "exited" and p["ports"] == [] for p in listed)
    rows = [r.split() for r in pm("list", "--full").stdout.splitlines()]
    assert rows[0][:5] == ["UUID", "APPS", "IMAGES", "STATE", "EXIT"]
    mine = [r for r in rows[1:] if r[0] in order]
    assert [(r[0], r[3], r[4]) for r in mine] == [
        (u, "exited", "3" if u == first else "0") for u in order
    ]


def test_a_pod_with_a_port_lists_it(pm: Podmgr, tmp_path: Path) -> None:
    web = build_image(
        tmp_path / "web.aci", "example.com/web", ["/bin/true"], extra_app={"ports": HTTP_PORT}
    )
    uuid, code = run(pm, tmp_path, "--port", "http:127.0.0.1:18093", str(web))
    assert code == 0
    (pod,) = [p for p in pm.json("list") if p["uuid"] == uuid]
    assert pod["ports"] == [
        {
            "name": "http",
            "host_ip": "127.0.0.1",
            "host_port": 18093,
            "container_port": 80,
            "protocol": "tcp",
        }
    ]
    (row,) = [r for r in pm("list", "--full").stdout.splitlines() if r.startswith(uuid)]
    assert row.split()[-1] == "http=127.0.0.1:18093->80/tcp"


def stamped(lines: list[str]) -> list[tuple[datetime, str]]:
    """Each line's timestamp, parsed, and the rest of it."""
    out = []
    for line in lines:
        stamp, _, rest = line.partition(" ")
        t = datetime.fromisoformat(stamp)
        assert t.utcoffset() is not None and len(stamp.split(".")[1]) == len(".123456+00:00") - 1
        out.append((t, rest))
    return out


def test_logs_timestamps(pm: Podmgr, tmp_path: Path) -> None:
    chatty = build_image(
        tmp_path / "chatty.aci",
        "example.com/chatty",
        ["/bin/sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done"],
    )
    before = datetime.now().astimezone()
    uuid, code = run(pm, tmp_path, str(chatty))
    assert code == 0
    want = [f"line {i}" for i in range(1, 6)]
    got = stamped(pm("logs", "--timestamps", uuid).stdout.splitlines())
    assert [m for _, m in got] == want
    times = [t for t, _ in got]
    assert times == sorted(times) and times[0] >= before
    assert stamped(pm("logs", "-t", "-n", "2", uuid).stdout.splitlines()) == got[-2:]
    assert pm("logs", uuid).stdout.splitlines() == want  # no timestamps unless asked
    # -f: the same lines, stamped, as they come (it never ends by itself).
    f = subprocess.Popen(
        [sys.executable, "-m", "podmgr", "--dir", str(pm.state), "logs", "-f", "-t", uuid],
        stdout=subprocess.PIPE,
        text=True,
    )
    # Should the lines not come, the watchdog ends it, and the readline below sees EOF.
    watchdog = threading.Timer(60, f.terminate)
    watchdog.start()
    try:
        assert f.stdout is not None
        lines = [f.stdout.readline().rstrip("\n") for _ in want]
        assert stamped(lines) == got
    finally:
        watchdog.cancel()
        f.terminate()
        f.wait()
