"""An app killed by its memory limit is reported as out of memory (issue 21): by ``run``
on stderr, by ``status`` and ``list``, text and JSON; whether ``run`` or the exit hook
(a started pod) records its end. On cgroup v1 (the box's hybrid hierarchy) that comes
from the memory cgroup's OOM counter, on v2 from systemd's ``oom-kill`` result."""

from __future__ import annotations

from pathlib import Path

from podfix import Podmgr, build_image

INSECURE = "--insecure-options=image"
#: The shell itself holds the 200 MB (command substitution reads into its memory).
HOG = "v=$(head -c 200000000 /dev/zero | tr '\\0' x); echo ${#v}"


def img(pm: Podmgr, images: Path, name: str, script: str) -> str:
    """The image's name, fetched: ``run`` then warns of no unverified image."""
    aci = build_image(images / f"{name}.aci", f"example.com/{name}", ["/bin/sh", "-c", script])
    pm("fetch", INSECURE, str(aci))
    return f"example.com/{name}"


def listed(pm: Podmgr, uuid: str) -> tuple[dict[str, object], str]:
    entry = next(p for p in pm.json("list") if p["uuid"] == uuid)
    row = next(r for r in pm("list", "--full").stdout.splitlines() if r.startswith(uuid))
    return entry, row


def test_run_says_out_of_memory(pm: Podmgr, images: Path) -> None:
    saved = images / "run.uuid"
    p = pm(
        "run", "--uuid-file-save", str(saved), img(pm, images, "hog", HOG),
        "--memory=32Mi", check=False,
    )  # fmt: skip
    assert p.returncode == 137, p.stderr
    assert "app hog was killed: out of memory (limit 32Mi)" in p.stderr, p.stderr
    assert len(p.stderr.splitlines()) == 1, p.stderr
    uuid = saved.read_text().strip()
    ex = pm.json("status", uuid)["apps"][0]["exit"]
    assert (ex["oom"], ex["memory_limit"], ex["status"]) == (True, 32 << 20, 137), ex
    assert "  killed:   out of memory (limit 32Mi)" in pm("status", uuid).stdout.splitlines()
    entry, row = listed(pm, uuid)
    assert entry["oom"] == ["hog"], entry
    assert "exited (oom)" in row, row


def test_started_pod_is_reported_by_its_exit_hook(pm: Podmgr, images: Path) -> None:
    uuid = pm("start", img(pm, images, "hog2", HOG), "--memory=32Mi").stdout.strip()
    pm("status", "--wait=60s", uuid)
    st = pm.json("status", uuid)
    assert st["exit_code"] == 137, st
    assert st["apps"][0]["exit"]["oom"] is True, st
    assert listed(pm, uuid)[0]["oom"] == ["hog2"]


def test_other_failures_are_not_out_of_memory(pm: Podmgr, images: Path) -> None:
    saved = images / "fail.uuid"
    aci = img(pm, images, "fail", "exit 137")
    p = pm("run", "--uuid-file-save", str(saved), aci, "--memory=32Mi", check=False)
    assert (p.returncode, p.stderr) == (137, "")
    uuid = saved.read_text().strip()
    assert pm.json("status", uuid)["apps"][0]["exit"]["oom"] is False
    entry, row = listed(pm, uuid)
    assert entry["oom"] == [] and "(oom)" not in row
