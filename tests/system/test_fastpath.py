"""A run or start whose command line was seen before goes without click
(podmgr.fastpath), and does what click's command would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from podfix import Podmgr, build_image, host_state

pytestmark = pytest.mark.system


@pytest.fixture
def pm(tmp_path: Path) -> Podmgr:
    return Podmgr(tmp_path / "state")


def record(pm: Podmgr) -> Path:
    (path,) = (pm.state / "pods" / ".templates" / ".argv").iterdir()
    return path


#: What the path of a run seen before does without (of what the interpreter had not
#: imported before: site's .pth files may): click (35-45 ms), dataclasses with inspect
#: (5-7 ms), uuid (2-3 ms), pydantic (250-350 ms).
HEAVY = ("dataclasses", "inspect", "uuid", "pydantic")


def in_process(pm: Podmgr, *args: str) -> subprocess.CompletedProcess[str]:
    """``podmgr --dir STATE ARGS`` in a Python that says, last, whether click was
    imported; if it was not, it fails should any of HEAVY have been."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from podmgr.__main__ import main\n"
        "try:\n"
        f"    main(['--dir', {str(pm.state)!r}, *{list(args)!r}])\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "clicked = 'click' in sys.modules\n"
        "print(clicked, flush=True)\n"
        f"heavy = set({HEAVY!r}) & (set(sys.modules) - before)\n"
        "if not clicked and heavy:\n"
        "    sys.exit(f'imported: {sorted(heavy)}')\n"
        "sys.exit(code)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_a_run_seen_before_goes_without_click(pm: Podmgr, tmp_path: Path) -> None:
    aci = build_image(tmp_path / "a.aci", "example.com/fast", ["/bin/sh", "-c", "echo one; exit 3"])
    pm("fetch", "--insecure-options=image", str(aci))
    args = ["run", "--net=host", "--set-env", "A=1", "example.com/fast"]
    first = in_process(pm, *args)
    assert (first.returncode, first.stdout) == (3, "one\nTrue\n"), first.stderr
    path = record(pm)
    seen = os.stat(path)
    again = in_process(pm, *args)
    assert (again.returncode, again.stdout) == (3, "one\nFalse\n"), again.stderr
    # The record was used (its time touched), not written anew.
    now = os.stat(path)
    assert now.st_ino == seen.st_ino and now.st_mtime_ns > seen.st_mtime_ns
    # Both pods are the same pod, each recorded as exited with 3.
    pods = pm.json("list")
    assert len(pods) == 2 and {p["state"] for p in pods} == {"exited"}
    assert host_state()["mounts"] == []


def test_a_new_image_under_the_same_name_is_not_missed(pm: Podmgr, tmp_path: Path) -> None:
    one = build_image(tmp_path / "1.aci", "example.com/named", ["/bin/echo", "one"])
    pm("fetch", "--insecure-options=image", str(one))
    args = ["run", "--net=host", "example.com/named"]
    assert in_process(pm, *args).stdout == "one\nTrue\n"
    assert in_process(pm, *args).stdout == "one\nFalse\n"
    pm("rm", *(p["uuid"] for p in pm.json("list")))
    pm("image", "rm", "example.com/named")
    two = build_image(tmp_path / "2.aci", "example.com/named", ["/bin/echo", "two"])
    pm("fetch", "--insecure-options=image", str(two))
    # The record's reference now resolves to another image: click's path, which
    # records the new template.
    assert in_process(pm, *args).stdout == "two\nTrue\n"
    assert in_process(pm, *args).stdout == "two\nFalse\n"


def test_a_start_seen_before_starts_the_pod(pm: Podmgr, tmp_path: Path) -> None:
    aci = build_image(tmp_path / "s.aci", "example.com/sleeps", ["/bin/sleep", "600"])
    pm("fetch", "--insecure-options=image", str(aci))
    uuids = []
    for click_imported in ("True", "False"):
        p = in_process(pm, "start", "--net=host", "example.com/sleeps")
        assert p.returncode == 0, p.stderr
        uuid, imported = p.stdout.split()
        assert imported == click_imported
        uuids.append(uuid)
    assert {p["uuid"]: p["state"] for p in pm.json("list")} == dict.fromkeys(uuids, "running")
    pm("stop", *uuids)
    pm("rm", *uuids)
    assert host_state()["mounts"] == []


def test_options_read_from_files_are_never_cached(pm: Podmgr, tmp_path: Path) -> None:
    aci = build_image(tmp_path / "e.aci", "example.com/env", ["/bin/sh", "-c", "echo $A"])
    pm("fetch", "--insecure-options=image", str(aci))
    env = tmp_path / "env"
    args = ["run", "--net=host", "--set-env-file", str(env), "example.com/env"]
    for value in ("1", "2"):
        env.write_text(f"A={value}\n")
        assert in_process(pm, *args).stdout == f"{value}\nTrue\n"
    assert not (pm.state / "pods" / ".templates" / ".argv").exists()
