"""podmgr enter: the entered command has the app's confinement and nothing more (rkt's
CVE-2019-10144/10145/10147), its stdio is the caller's, its exit code is returned; and
podmgr run --interactive, driven through a pseudo-terminal. On a terminal both give the
app a pty of its own as its controlling terminal (podmgr.terminal): a shell there has job
control, the window size and Ctrl-C reach it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from podfix import Podmgr, build_image, sh, until

from podmgr.hook import app_process

INSECURE = "--insecure-options=image"

PROBE = r"""
grep -E '^(Uid|Gid|Groups|CapBnd|CapEff|CapAmb|Seccomp|NoNewPrivs):' /proc/self/status
echo "cgroup=$(cat /proc/self/cgroup)"
echo "ipc=$(readlink /proc/self/ns/ipc) net=$(readlink /proc/self/ns/net) mnt-root=$(ls /)"
echo "env APP=$AC_APP_NAME container=$container FOO=$FOO"
mkdir /tmp/blocked 2>&1 || echo "mkdir failed"
test -t 0 && echo "stdin is a tty" || echo "stdin is no tty"
"""


@pytest.fixture(scope="module")
def pm(tmp_path_factory: pytest.TempPathFactory) -> Podmgr:
    return Podmgr(tmp_path_factory.mktemp("podmgr-state"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="module")
def confined(pm: Podmgr, images: Path) -> Iterator[str]:
    """A running pod whose app is a non-root user with one capability and a seccomp
    remove-set."""
    aci = str(build_image(images / "target.aci", "example.com/target", ["/bin/sleep", "600"]))
    uuid = pm(
        "start",
        INSECURE,
        "--set-env",
        "FOO=pod-env",
        aci,
        "--user",
        "alice",
        "--group",
        "staff",
        "--caps-retain",
        "CAP_NET_BIND_SERVICE",
        "--seccomp",
        "mode=remove,errno=EPERM,mkdir,mkdirat",
    ).stdout.strip()
    yield uuid
    pm("stop", uuid, check=False)
    pm("rm", uuid, check=False)


def status_of(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(re.findall(r"^(\w+):[ \t]*(.*)$", text, re.M))


def main_pid(uuid: str, app: str) -> int:
    """The app's own process (its unit's main process is podmgr-exec, its parent)."""
    unit = f"podmgr-{uuid.replace('-', '')}-{app}.service"
    return app_process(int(sh("systemctl", "show", "-P", "MainPID", unit).stdout.strip()))


def enter_units() -> list[str]:
    out = sh("systemctl", "list-units", "--all", "--no-legend", "--plain", "podmgr-enter-*")
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def test_entered_command_has_the_apps_confinement(pm: Podmgr, confined: str) -> None:
    p = pm("enter", confined, "--", "sh", "-c", PROBE)
    out = p.stdout
    got = dict(re.findall(r"^(\w+):[ \t]*(.*)$", out, re.M))
    pid = main_pid(confined, "target")
    app = status_of(pid)
    # The same capability sets as the app: CAP_NET_BIND_SERVICE only.
    assert int(got["CapBnd"], 16) == int(app["CapBnd"], 16) == 1 << 10
    assert int(got["CapAmb"], 16) == int(app["CapAmb"], 16)
    assert int(got["CapEff"], 16) == int(app["CapEff"], 16)
    # The seccomp filter, and it blocks what the app's blocks.
    assert got["Seccomp"] == "2" and app["Seccomp"] == "2"
    assert got["NoNewPrivs"] == "1"
    assert "Operation not permitted" in out and "mkdir failed" in out
    # The app's user and groups.
    assert got["Uid"].split() == app["Uid"].split()
    assert got["Uid"].split()[0] == "1000"
    assert got["Gid"].split() == app["Gid"].split()
    assert got["Groups"].split() == app["Groups"].split()
    # In the pod's slice.
    slice_ = f"podmgr-{confined.replace('-', '')}.slice/"
    cgroup = re.search(r"^cgroup=(.*)$", out, re.M)
    assert cgroup and slice_ in cgroup.group(1) and "podmgr-enter-" in cgroup.group(1)
    # The app's IPC and network namespaces, and its root.
    ns = re.search(r"^ipc=(\S+) net=(\S+)", out, re.M)
    assert ns is not None
    assert ns.group(1) == os.readlink(f"/proc/{pid}/ns/ipc")
    assert ns.group(2) == os.readlink(f"/proc/{pid}/ns/net")
    assert os.readlink(f"/proc/{pid}/ns/ipc") != os.readlink("/proc/self/ns/ipc")
    # The app's environment.
    assert "env APP=target container=podmgr FOO=pod-env" in out
    assert "stdin is no tty" in out
    # Nothing is left behind.
    assert enter_units() == []


def test_exit_code_is_the_commands(pm: Podmgr, confined: str) -> None:
    p = pm("enter", confined, "--", "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
    assert p.returncode == 7, p.stderr
    assert p.stdout == "out\n" and p.stderr == "err\n"
    p = pm("enter", confined, "sh", "-c", "kill -TERM $$", check=False)
    assert p.returncode == 128 + 15
    assert enter_units() == []


def test_default_command_is_the_apps_shell_reading_stdin(pm: Podmgr, confined: str) -> None:
    p = pm(
        "enter", confined, input="echo hello from $AC_APP_NAME as $(id -u)\nexit 3\n", check=False
    )
    assert p.returncode == 3, p.stderr
    assert p.stdout == "hello from target as 1000\n"


def test_a_missing_command_or_app_is_one_error(pm: Podmgr, confined: str) -> None:
    p = pm("enter", confined, "/bin/no-such-command", check=False)
    assert p.returncode == 3
    assert "cannot run /bin/no-such-command" in p.stderr and "Traceback" not in p.stderr
    p = pm("enter", "--app", "nope", confined, "true", check=False)
    assert p.returncode == 3 and "no app 'nope'" in p.stderr
    assert enter_units() == []


def test_entering_an_exited_pod_is_refused(pm: Podmgr, images: Path, tmp_path: Path) -> None:
    aci = str(build_image(images / "done.aci", "example.com/done", ["/bin/true"]))
    pm("run", INSECURE, "--uuid-file-save", str(tmp_path / "uuid"), aci)
    uuid = (tmp_path / "uuid").read_text().strip()
    p = pm("enter", uuid, "true", check=False)
    assert p.returncode == 8 and "is not running" in p.stderr


def test_stopping_the_pod_ends_the_entered_command(pm: Podmgr, images: Path) -> None:
    aci = str(build_image(images / "stopme.aci", "example.com/stopme", ["/bin/sleep", "600"]))
    uuid = pm("start", INSECURE, aci).stdout.strip()
    proc = subprocess.Popen(
        [sys.executable, "-m", "podmgr", "--dir", str(pm.state), "enter", uuid, "sleep", "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while not enter_units() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert enter_units()
    pm("stop", uuid)
    assert proc.wait(timeout=30) != 0
    assert enter_units() == []
    pm("rm", uuid)


def _drive(argv: list[str], send: bytes, until: bytes, timeout: float = 60) -> tuple[int, bytes]:
    """Run argv on a new pty; once ``until`` shows up, type ``send``; return the exit
    code and everything the terminal showed."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(argv[0], argv)
    out = b""
    sent = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not sent and until in out:
            os.write(fd, send)
            sent = True
    _, st = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(st), out


def test_run_interactive_gives_the_app_the_terminal(pm: Podmgr, images: Path) -> None:
    script = (
        "test -t 0 && test -t 1 && test -t 2 && echo APP-HAS-A-TTY; "
        "echo ready; read line; echo got:$line; exit 5"
    )
    aci = str(build_image(images / "tty.aci", "example.com/tty", ["/bin/sh", "-c", script]))
    argv = [sys.executable, "-m", "podmgr", "--dir", str(pm.state), "run", INSECURE]
    code, out = _drive([*argv, "--interactive", aci], b"typed text\n", b"ready")
    assert b"APP-HAS-A-TTY" in out, out
    assert b"got:typed text" in out, out
    assert code == 5, out


def test_run_interactive_without_a_terminal_passes_the_callers_fds(
    pm: Podmgr, images: Path
) -> None:
    script = "read l; echo got:$l; test -t 0 || echo no-tty; echo err >&2; exit 6"
    aci = str(build_image(images / "pipes.aci", "example.com/pipes", ["/bin/sh", "-c", script]))
    p = pm("run", INSECURE, "--interactive", aci, input="hello\n", check=False)
    assert p.returncode == 6, p.stderr
    assert p.stdout == "got:hello\nno-tty\n"
    assert p.stderr.endswith("err\n")


def test_run_interactive_refuses_two_apps(pm: Podmgr, images: Path) -> None:
    aci = str(build_image(images / "two.aci", "example.com/two", ["/bin/true"]))
    before = sorted(os.listdir(pm.state / "pods"))
    p = pm("run", INSECURE, "--interactive", aci, "---", aci, "--name", "b", check=False)
    assert p.returncode == 2 and "one app" in p.stderr
    assert sorted(os.listdir(pm.state / "pods")) == before


def test_enter_passes_the_terminal(pm: Podmgr, confined: str) -> None:
    argv = [sys.executable, "-m", "podmgr", "--dir", str(pm.state), "enter", confined]
    code, out = _drive(
        [*argv, "sh", "-c", "test -t 0 && echo IN-A-TTY; echo ready; read l; exit ${#l}"],
        b"four\n",
        b"ready",
    )
    assert b"IN-A-TTY" in out, out
    assert code == 4, out


class Term:
    """A command on a pty made by the test, as at a terminal of ``rows`` x ``cols``."""

    def __init__(self, argv: list[str], rows: int = 31, cols: int = 97) -> None:
        pid, fd = pty.fork()
        if pid == 0:
            try:
                # Before the exec: podmgr reads the size as it starts.
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.out = b""
        self.seen = 0  # expect() looks at what came after its last match
        self.code: int | None = None

    def _read(self, timeout: float) -> bool:
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return True
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # EIO: the command and all it started have closed the pty
            chunk = b""
        self.out += chunk
        return bool(chunk)

    def expect(self, pattern: bytes, limit: float = 60) -> re.Match[bytes]:
        end = time.monotonic() + limit
        while True:
            m = re.compile(pattern).search(self.out, self.seen)
            if m:
                self.seen = m.end()
                return m
            if time.monotonic() > end or not self._read(0.5):
                raise AssertionError(
                    f"never saw {pattern!r} in:\n{self.out.decode(errors='replace')}"
                )

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def resize(self, rows: int, cols: int) -> None:
        # The kernel sends SIGWINCH to podmgr, the terminal's foreground process.
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def wait(self, limit: float = 60) -> int:
        end = time.monotonic() + limit
        while self._read(0.5) and time.monotonic() < end:
            pass
        _, st = os.waitpid(self.pid, 0)
        self.code = os.waitstatus_to_exitcode(st)
        return self.code

    def close(self) -> None:
        if self.code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def _shell_session(t: Term) -> None:
    """An interactive busybox sh on ``t``: it has the terminal as its controlling one
    (job control, Ctrl-C, Ctrl-Z), with ``t``'s window size, and follows a resize. Ends
    with ``exit 7``."""
    t.send(b"tty\n")
    t.expect(rb"\n/dev/pts/\d+\r\n")
    t.send(b"stty size\n")
    t.expect(rb"\n31 97\r\n")
    t.resize(40, 120)
    # SIGWINCH reaches podmgr asynchronously: ask until the new size shows.
    for _ in range(100):
        t.send(b"stty size\n")
        if t.expect(rb"\n(\d+ \d+)\r\n").group(1) == b"40 120":
            break
    else:
        raise AssertionError("the app's terminal never got the new size")
    # Ctrl-C interrupts the foreground job (which says it is one once it is), not the
    # shell.
    t.send(b"sh -c 'echo int-$((3*3)); exec sleep 100'\n")
    t.expect(rb"\nint-9\r\n")
    t.send(b"\x03")
    t.send(b"echo rc-$?\n")
    t.expect(rb"\nrc-130\r\n")
    # Ctrl-Z stops a job, jobs lists it, fg gives it the terminal back: it reads a line.
    t.send(b"sh -c 'echo fg-$((2*3)); read x; echo got-$x'\n")
    t.expect(rb"\nfg-6\r\n")
    t.send(b"\x1a")
    t.expect(rb"Stopped")
    t.send(b"jobs\n")
    t.expect(rb"\[1\]\+ +Stopped +sh -c")
    t.send(b"fg\n")
    t.expect(rb"\nsh -c \"echo fg")  # fg names the job as it continues it
    t.send(b"hello\n")
    t.expect(rb"\ngot-hello\r\n")
    t.send(b"sleep 100 &\n")
    t.send(b"jobs\n")
    t.expect(rb"Running +sleep 100")
    t.send(b"exit 7\n")


def _no_job_control_warning(t: Term) -> None:
    assert b"can't access tty" not in t.out, t.out
    assert b"job control turned off" not in t.out, t.out


def test_run_interactive_gives_a_shell_job_control(pm: Podmgr, images: Path) -> None:
    aci = str(build_image(images / "ish.aci", "example.com/ish", ["/bin/sh", "-i"]))
    t = Term(
        [
            sys.executable,
            "-m",
            "podmgr",
            "--dir",
            str(pm.state),
            "run",
            INSECURE,
            "--interactive",
            aci,
        ]
    )
    try:
        _shell_session(t)
        assert t.wait() == 7, t.out
    finally:
        t.close()
    _no_job_control_warning(t)


def test_enter_gives_a_shell_job_control(pm: Podmgr, confined: str) -> None:
    t = Term(
        [sys.executable, "-m", "podmgr", "--dir", str(pm.state), "enter", confined, "sh", "-i"]
    )
    try:
        _shell_session(t)
        assert t.wait() == 7, t.out
    finally:
        t.close()
    _no_job_control_warning(t)
    assert enter_units() == []


def test_enter_passes_fds_when_stdout_is_no_terminal(pm: Podmgr, confined: str) -> None:
    """stdin a terminal, stdout a pipe: the caller's own descriptors, as before the pty
    (no CR LF in the output, stdout no terminal)."""
    master, slave = os.openpty()
    try:
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "podmgr",
                "--dir",
                str(pm.state),
                "enter",
                confined,
                "sh",
                "-c",
                "test -t 0 && echo in-tty; test -t 1 || echo out-pipe; tty",
            ],
            stdin=slave,
            capture_output=True,
            timeout=120,
        )
        assert p.returncode == 0, p.stderr
        assert p.stdout == f"in-tty\nout-pipe\n{os.ttyname(slave)}\n".encode(), p.stdout
    finally:
        os.close(master)
        os.close(slave)


def _cooked(fd: int) -> bool:
    """Whether the terminal whose master is ``fd`` echoes and edits lines (the slave's
    settings: a master's TCGETS reads its slave's)."""
    lflag = termios.tcgetattr(fd)[3]
    return bool(lflag & termios.ICANON and lflag & termios.ECHO)


def test_the_callers_terminal_is_raw_while_the_app_runs_and_restored(
    pm: Podmgr, confined: str
) -> None:
    argv = [sys.executable, "-m", "podmgr", "--dir", str(pm.state), "enter", confined]
    t = Term([*argv, "sh", "-c", "echo ready; read x; exit 3"])
    try:
        t.expect(rb"ready\r\n")
        assert not _cooked(t.fd)
        t.send(b"x\n")
        assert t.wait() == 3, t.out
        assert _cooked(t.fd)
    finally:
        t.close()
    # A command that cannot start: one error, and the terminal as it was.
    t = Term([*argv, "/bin/no-such-command"])
    try:
        assert t.wait() == 3, t.out
        assert b"cannot run /bin/no-such-command" in t.out and b"Traceback" not in t.out
        assert _cooked(t.fd)
    finally:
        t.close()
    # SIGTERM to podmgr goes to the command; podmgr returns its status.
    t = Term([*argv, "sh", "-c", "echo ready; exec sleep 100"])
    try:
        t.expect(rb"ready\r\n")
        os.kill(t.pid, signal.SIGTERM)
        assert t.wait() == 128 + signal.SIGTERM, t.out
        assert _cooked(t.fd)
    finally:
        t.close()
    assert enter_units() == []


def test_the_apps_output_is_relayed_in_full(pm: Podmgr, confined: str) -> None:
    """What the app writes just before it ends is read from the pty to its end."""
    argv = [sys.executable, "-m", "podmgr", "--dir", str(pm.state), "enter", confined]
    t = Term([*argv, "sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done"])
    try:
        assert t.wait() == 0, t.out[-500:]
    finally:
        t.close()
    lines = re.findall(rb"line-(\d+)\r\n", t.out)
    assert [int(n) for n in lines] == list(range(3000))


@pytest.mark.parametrize(
    "command",
    [
        # The unit's first process is not the shell: the shell inherits the terminal.
        "sh -i; exit $?",
        # The first process hands the terminal on to a new session, as an exec shim
        # that forks the app does: setsid(), then TIOCSCTTY with force, which takes the
        # terminal from the first process's session (it needs CAP_SYS_ADMIN then).
        "setsid -c sh -i; exit $?",
    ],
)
def test_the_terminal_follows_the_app_past_its_first_process(
    pm: Podmgr, images: Path, command: str
) -> None:
    aci = str(build_image(images / "wrapped.aci", "example.com/wrapped", ["/bin/sleep", "600"]))
    uuid = pm("start", INSECURE, aci, "--caps-retain", "CAP_SYS_ADMIN").stdout.strip()
    argv = [sys.executable, "-m", "podmgr", "--dir", str(pm.state), "enter", uuid]
    t = Term([*argv, "sh", "-c", command])
    try:
        t.send(b"sh -c 'echo int-$((3*3)); exec sleep 100'\n")
        t.expect(rb"\nint-9\r\n")
        t.send(b"\x03")
        t.send(b"tty; echo rc-$?\n")
        t.expect(rb"\n/dev/pts/\d+\r\nrc-0\r\n")
        t.send(b"exit 4\n")
        assert t.wait() == 4, t.out
    finally:
        t.close()
        pm("stop", uuid, check=False)
        pm("rm", uuid, check=False)
    _no_job_control_warning(t)


def test_a_stopped_podmgr_gives_the_terminal_back_until_continued(
    pm: Podmgr, confined: str
) -> None:
    """SIGTSTP sent to podmgr (its terminal sends none in raw mode) stops it with the
    caller's terminal restored; SIGCONT makes it raw again, and the session goes on."""
    argv = [sys.executable, "-m", "podmgr", "--dir", str(pm.state), "enter", confined]
    t = Term([*argv, "sh", "-c", "echo ready; read x; echo got-$x; exit 2"])

    def state() -> str:
        return Path(f"/proc/{t.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    try:
        t.expect(rb"ready\r\n")
        assert not _cooked(t.fd)
        os.kill(t.pid, signal.SIGTSTP)
        until(lambda: state() == "T", "podmgr stopped")
        assert _cooked(t.fd)
        os.kill(t.pid, signal.SIGCONT)
        until(lambda: not _cooked(t.fd), "the terminal raw again")
        t.send(b"on\n")
        t.expect(rb"got-on\r\n")
        assert t.wait() == 2, t.out
        assert _cooked(t.fd)
    finally:
        t.close()
