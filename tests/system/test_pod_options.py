"""Hostile pod options, files and conditions (issue 18): each is refused before systemd
sees it, with podmgr's own one-line error and exit code, and leaves no pod behind; a
start that fails leaves none (start) or one that says it failed and why (run)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from podfix import Podmgr, build_image, host_state

from podmgr.errors import ExitCode

INSECURE = "--insecure-options=image"


@pytest.fixture(scope="module")
def pm(tmp_path_factory: pytest.TempPathFactory) -> Podmgr:
    pm = Podmgr(tmp_path_factory.mktemp("podmgr-state"))
    images = tmp_path_factory.mktemp("images")
    aci = build_image(images / "opts.aci", "example.com/opts", ["/bin/sh", "-c", "echo hi"])
    pm("fetch", INSECURE, str(aci))
    return pm


def pods(pm: Podmgr) -> list[str]:
    d = pm.state / "pods"
    return sorted(os.listdir(d)) if d.exists() else []


def refused(pm: Podmgr, *args: str) -> subprocess.CompletedProcess[str]:
    """``prepare`` (the path run and start take too) refuses, and leaves nothing."""
    before = pods(pm)
    p = pm("prepare", "--net=host", *args, check=False)
    assert p.returncode != 0, p.stdout
    assert "internal error" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert pods(pm) == before
    return p


APP = "example.com/opts"
# (arguments, exit code, what the message says)
CASES = [
    ([APP, "--memory=0"], ExitCode.INVALID, "resource/memory limit '0' is zero"),
    ([APP, "--memory=999999999999999999999Gi"], ExitCode.INVALID, "is too large"),
    ([APP, "--memory=1Gi\n"], ExitCode.INVALID, "is not valid"),
    ([APP, "--memory=" + "9" * 100], ExitCode.INVALID, "is too long"),
    ([APP, "--cpu=0"], ExitCode.INVALID, "resource/cpu limit '0' is zero"),
    ([APP, "--cpu=99999999999999999999"], ExitCode.INVALID, "is too large"),
    ([APP, "--user", "4294967295"], ExitCode.INVALID, "user 4294967295 is not a valid ID"),
    ([APP, "--user", "99999999999"], ExitCode.INVALID, "user 99999999999 is not a valid ID"),
    ([APP, "--user", "65535"], ExitCode.INVALID, "user 65535 is not a valid ID"),
    ([APP, "--group", "4294967295"], ExitCode.INVALID, "group 4294967295 is not a valid ID"),
    ([APP, "--supplementary-gids", "1,99999999999"], ExitCode.INVALID, "not a valid ID"),
    ([APP, "--working-dir", "/../../../etc"], ExitCode.INVALID, "not a normalized absolute"),
    ([APP, "--working-dir", "/tmp/./x"], ExitCode.INVALID, "not a normalized absolute"),
    ([APP, "--working-dir", "/t\nmp"], ExitCode.INVALID, "not a normalized absolute"),
    ([APP, "--caps-retain", "CAP_BOGUS"], ExitCode.INVALID, "unknown capability 'CAP_BOGUS'"),
    ([APP, "--caps-remove", "net_admin,bogus"], ExitCode.INVALID, "unknown capability"),
    ([APP, "--seccomp", "mode=retain,bogus_call"], ExitCode.INVALID, "unknown system call"),
    ([APP, "--seccomp", "mode=remove,@rkt/x"], ExitCode.INVALID, "unknown special value"),
    ([APP, "--seccomp", "mode=remove,errno=EBOGUS,read"], ExitCode.INVALID, "unknown errno"),
    ([APP, "--environment", "A=b\x01c"], ExitCode.INVALID, "has a control character"),
    ([APP, "--environment", "A=b\x1b[31m"], ExitCode.INVALID, "has a control character"),
    ([APP, "--name", "a b"], ExitCode.INVALID, "is not a valid AC Name"),
    ([APP, "--name", "a\x01"], ExitCode.INVALID, "is not a valid AC Name"),
    (["--user-label", "K K=v", APP], ExitCode.INVALID, "user label 'K K' is not a valid name"),
    (["--user-label", "k=v\x07", APP], ExitCode.INVALID, "the value has a control character"),
    (["--user-label", "=v", APP], ExitCode.INVALID, "is not a valid name"),
    (["--user-annotation", "a\tb=c", APP], ExitCode.INVALID, "is not a valid name"),
    (["--volume", "v,kind=empty,uid=99999999999", APP], ExitCode.INVALID, "not a valid ID"),
    (["--volume", "v,kind=empty,uid=x", APP], ExitCode.USAGE, "uid is not valid"),
]


@pytest.mark.parametrize(("args", "code", "message"), CASES)
def test_hostile_options_are_refused_before_systemd(
    pm: Podmgr, args: list[str], code: int, message: str
) -> None:
    p = refused(pm, *args)
    assert p.returncode == code, p.stderr
    assert message in p.stderr, p.stderr


@pytest.mark.parametrize(
    "net", ["my net", "n\x01", "d\u00e9fault", "default:K=\x01", "default:K K=v"]
)
def test_network_names_with_whitespace_or_control_characters(pm: Podmgr, net: str) -> None:
    before = pods(pm)
    p = pm("prepare", "--net", net, APP, check=False)
    assert p.returncode == ExitCode.USAGE, p.stderr
    assert "is not a network name" in p.stderr or "control character" in p.stderr
    assert pods(pm) == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"A=1\nB=x\x00y\n", ":2: a NUL character"),
        (b"A=\xff\xfe\n", ":1: not UTF-8 text"),
        (b"SECRET\n", ":1: expected K=VALUE"),
    ],
)
def test_env_files_with_nul_or_invalid_utf8(
    pm: Podmgr, tmp_path: Path, content: bytes, message: str
) -> None:
    f = tmp_path / "env"
    f.write_bytes(content)
    p = refused(pm, "--set-env-file", str(f), APP)
    assert p.returncode == ExitCode.USAGE
    assert f"--set-env-file {f}{message}" in p.stderr
    assert "SECRET" not in p.stderr


def test_an_env_file_that_never_ends_is_refused(pm: Podmgr) -> None:
    p = refused(pm, "--set-env-file", "/dev/zero", APP)
    assert p.returncode == ExitCode.USAGE
    assert "larger than 1048576 bytes" in p.stderr


def test_uuid_file_save_into_a_missing_directory_leaves_nothing(pm: Podmgr, tmp_path: Path) -> None:
    for cmd in ("prepare", "start", "run"):
        before = pods(pm)
        p = pm(cmd, "--net=host", "--uuid-file-save", str(tmp_path / "no/uuid"), APP, check=False)
        assert p.returncode == ExitCode.USAGE, p.stderr
        assert f"no directory {tmp_path}/no" in p.stderr
        assert pods(pm) == before


def test_uuid_file_save_that_cannot_be_written_removes_the_pod(pm: Podmgr, tmp_path: Path) -> None:
    """The directory exists, the write fails (a directory in the file's place): the
    pod that nothing names any more goes."""
    (tmp_path / "uuid").mkdir()
    before = pods(pm)
    p = pm("prepare", "--net=host", "--uuid-file-save", str(tmp_path / "uuid"), APP, check=False)
    assert p.returncode == ExitCode.USAGE, p.stderr
    assert "internal error" not in p.stderr
    assert pods(pm) == before


@pytest.fixture
def overlay_state() -> Iterator[Podmgr]:
    """A state directory on the box's root, an overlayfs: overlay refuses it as an upper
    layer, so every start fails at the first mount."""
    state = Path("/var/lib/podmgr-test-failed-start")
    pm = Podmgr(state)
    images = state.parent / "podmgr-test-failed-start-images"
    images.mkdir(exist_ok=True)
    aci = build_image(images / "f.aci", "example.com/f", ["/bin/sh", "-c", "echo hi"])
    pm("fetch", INSECURE, str(aci))
    yield pm
    for u in pods(pm):
        if not u.startswith("."):
            pm("rm", u, check=False)
    subprocess.run(["rm", "-rf", str(state), str(images)], check=False)


def test_a_failed_start_leaves_nothing_or_a_failed_pod(overlay_state: Podmgr) -> None:
    pm = overlay_state
    # start: nothing.
    p = pm("start", "--net=host", "example.com/f", check=False)
    assert p.returncode != 0 and "cannot mount the root of app f" in p.stderr, p.stderr
    assert [u for u in pods(pm) if not u.startswith(".")] == []
    assert host_state()["mounts"] == []
    # run, and run-prepared: a pod that says it failed, and why.
    p = pm("run", "--net=host", "example.com/f", check=False)
    assert p.returncode != 0 and "cannot mount the root of app f" in p.stderr, p.stderr
    uuid = pm("prepare", "--net=host", "example.com/f").stdout.strip()
    p = pm("run-prepared", uuid, check=False)
    assert p.returncode != 0 and "cannot mount the root of app f" in p.stderr, p.stderr
    listed = pm.json("list")
    assert len(listed) == 2
    assert {x["state"] for x in listed} == {"failed"}
    st = pm.json("status", uuid)
    assert st["state"] == "failed" and st["exit_code"] is None
    assert st["error"].startswith("cannot mount the root of app f")
    assert "error:     cannot mount the root of app f" in pm("status", uuid).stdout
    assert host_state() == {"units": [], "mounts": []}
    # A failed pod is as removable as an exited one, by rm and by gc.
    pm("rm", uuid)
    pm("gc", "--grace-period=0s")
    assert [u for u in pods(pm) if not u.startswith(".")] == []


def test_a_full_disk_during_start_is_one_clear_error(pm: Podmgr, tmp_path: Path) -> None:
    """The state directory on a small tmpfs, filled once the image is in: start fails
    with podmgr's message (it was "internal error: OperationalError: disk I/O error"),
    and leaves no pod."""
    state = tmp_path / "small"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(state)], check=True)
    try:
        small = Podmgr(state)
        aci = build_image(tmp_path / "d.aci", "example.com/d", ["/bin/sh", "-c", "echo hi"])
        small("fetch", INSECURE, str(aci))
        outcomes = set()
        # Filled to different depths, the start fails at different places (the store's
        # database, the pod's files, the template cache).
        for fill_kib in (None, 0, 64, 256):
            fill = state / "fill"
            fill.unlink(missing_ok=True)
            # Fails once the disk is full, as it should.
            with open(fill, "wb") as f, contextlib.suppress(OSError):
                f.write(b"\0" * (64 << 20))
            if fill_kib:
                os.truncate(fill, max(0, fill.stat().st_size - fill_kib * 1024))
            p = small("start", "--net=host", "example.com/d", check=False)
            if p.returncode == 0:
                small("stop", p.stdout.strip())
                small("rm", p.stdout.strip())
                continue
            assert "internal error" not in p.stderr and "Traceback" not in p.stderr, p.stderr
            assert p.stderr.startswith("podmgr: error: "), p.stderr
            assert "free space on the filesystem" in p.stderr, p.stderr
            outcomes.add(p.stderr.splitlines()[0])
            assert [u for u in pods(small) if not u.startswith(".")] == []
        assert outcomes
    finally:
        subprocess.run(["umount", "--lazy", str(state)], check=False)


def _as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-m", "podmgr", *args],
        capture_output=True, text=True, timeout=60, cwd="/",
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )  # fmt: skip


def test_list_and_image_list_as_a_user_are_one_clear_error(pm: Podmgr) -> None:
    # The interpreter may live under /root (pyenv), which only root may enter; the box's
    # root is a throwaway overlay.
    mode = os.stat("/root").st_mode
    os.chmod("/root", mode | 0o011)
    try:
        pm("prepare", "--net=host", APP)
        for cmd in (["list"], ["image", "list"], ["status", pods(pm)[0]]):
            p = _as_nobody("--dir", str(pm.state), *cmd)
            assert p.returncode == ExitCode.PERMISSION, p.stderr
            lines = p.stderr.splitlines()
            assert len(lines) == 2 and "permission denied" in lines[0].lower(), p.stderr
            assert lines[1].startswith("podmgr: hint: run ") and "root" in lines[1]
            assert p.stdout == ""
    finally:
        os.chmod("/root", mode)


def test_other_options_of_the_same_kind(pm: Podmgr, tmp_path: Path) -> None:
    """Found while there: files read without a bound, paths not normalized, durations
    that overflowed, an app name nobody checked."""
    (tmp_path / "latin1").write_bytes(b"\xff\xfe")
    uuid = pm("prepare", "--net=host", APP).stdout.strip()
    vol = ["--volume", "v,kind=host,source=/tmp"]
    cases = [
        (["status", "--uuid-file", str(tmp_path / "latin1")], ExitCode.USAGE, "not a pod UUID"),
        (["status", "--uuid-file", "/dev/zero"], ExitCode.NOT_FOUND, "no pod matches"),
        (["prepare", "--pod-manifest", "/dev/zero"], ExitCode.INVALID, "larger than 1048576"),
        (
            ["prepare", "--net=host", *vol, APP, "--mount", "volume=v,target=/../../etc"],
            ExitCode.INVALID,
            "mount target '/../../etc' is not a normalized absolute path",
        ),
        (
            ["prepare", "--net=host", *vol, APP, "--mount", "volume=v,target=/a\nb"],
            ExitCode.INVALID,
            "is not a normalized absolute path",
        ),
        (["gc", "--grace-period", "99999999999999999999d"], ExitCode.USAGE, "invalid duration"),
        (["gc", "--expire-prepared", "1e400s"], ExitCode.USAGE, "invalid duration"),
        (["gc", "--grace-period", "-1s"], ExitCode.USAGE, "invalid duration"),
        (["status", "--wait=99999999999999999999s", uuid], ExitCode.USAGE, "invalid duration"),
        (["logs", "--app", "../x", uuid], ExitCode.NOT_FOUND, "has no app '../x'"),
        (["logs", "-n", "-5", uuid], ExitCode.USAGE, "--lines takes a number"),
    ]
    for args, code, message in cases:
        before = pods(pm)
        p = pm(*args, check=False, timeout=30)
        assert (p.returncode, message in p.stderr) == (code, True), (args, p.stderr)
        assert "internal error" not in p.stderr
        assert pods(pm) == before
    pm("rm", uuid)
