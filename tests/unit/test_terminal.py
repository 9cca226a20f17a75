"""podmgr.terminal: the unit's stdio on a pty, and the relay between the caller and the
pty (on real pipes and a real pty: no systemd needed)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from podmgr import enter, terminal

pytestmark = pytest.mark.unit

APP = {
    "StandardOutput": "journal",
    "StandardError": "journal",
    "Environment": ["PATH=/bin", "TERM=dumb"],
    "User": "0",
}


@pytest.fixture
def pipes() -> Iterator[list[int]]:
    """stdin, stdout, stderr that are no terminal."""
    fds: list[int] = []
    for _ in range(3):
        r, w = os.pipe()
        fds += [r, w]
    yield [fds[0], fds[3], fds[5]]
    for fd in fds:
        os.close(fd)


def test_the_pty_replaces_the_apps_stdio(pipes: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    props = enter.with_stdio(APP, pipes, "/dev/pts/7")
    assert props["StandardInput"] == "tty-force"
    assert props["StandardOutput"] == "tty"
    assert props["TTYPath"] == "/dev/pts/7"
    # The caller's stderr is no terminal: passed as it is, not mixed into the pty.
    assert props["StandardErrorFileDescriptor"] == pipes[2] and "StandardError" not in props
    assert props["Environment"] == ["PATH=/bin", "TERM=xterm-256color"]
    assert props["User"] == "0"
    assert "StandardOutputFileDescriptor" not in props


def test_without_a_pty_the_fds_are_passed(pipes: list[int]) -> None:
    props = enter.with_stdio(APP, pipes)
    assert props["StandardInputFileDescriptor"] == pipes[0]
    assert props["StandardOutputFileDescriptor"] == pipes[1]
    assert props["StandardErrorFileDescriptor"] == pipes[2]
    assert "StandardOutput" not in props and "TTYPath" not in props


def test_stderr_on_a_terminal_goes_to_the_pty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TERM", raising=False)
    master, slave = os.openpty()
    try:
        props = terminal.properties("/dev/pts/3", [slave, slave, slave], None)
        assert props["StandardError"] == "tty" and "Environment" not in props
        assert terminal.wanted([slave, slave, slave])
        r, w = os.pipe()
        assert not terminal.wanted([slave, w, slave])  # stdout redirected
        assert not terminal.wanted([r, slave, slave])
        os.close(r)
        os.close(w)
    finally:
        os.close(master)
        os.close(slave)


class Relayed:
    """relay() in a thread between pipes (the caller) and a real pty (the app)."""

    def __init__(self, tmp_path: Path) -> None:
        self.in_r, self.in_w = os.pipe()
        self.out_r, self.out_w = os.pipe()
        self.done_r, self.done_w = os.pipe()
        self.cm = terminal.open_pty(self.in_r)  # a pipe: the pty keeps its defaults
        self.pty = self.cm.__enter__()
        self.thread = threading.Thread(
            target=terminal.relay,
            args=(self.in_r, self.out_w, self.pty.master, self.pty.slave, self.done_r),
        )
        self.thread.start()

    def finish(self) -> bytes:
        os.write(self.done_w, b"x")
        self.thread.join()
        os.close(self.out_w)
        out = b""
        while chunk := os.read(self.out_r, 65536):
            out += chunk
        return out

    def close(self) -> None:
        self.cm.__exit__(None, None, None)
        for fd in (self.in_r, self.in_w, self.out_r, self.done_r, self.done_w):
            os.close(fd)


@pytest.fixture
def relayed(tmp_path: Path) -> Iterator[Relayed]:
    r = Relayed(tmp_path)
    yield r
    r.close()


def _read_line(fd: int) -> bytes:
    got = b""
    while not got.endswith(b"\n"):
        got += os.read(fd, 1)
    return got


def test_keys_reach_the_app_and_the_callers_eof_is_the_apps(relayed: Relayed) -> None:
    os.write(relayed.in_w, b"hello\n")
    assert _read_line(relayed.pty.slave) == b"hello\n"
    # The caller's end of input: the app's read returns end-of-file (^D, in canonical
    # mode), not a line.
    os.close(relayed.in_w)
    relayed.in_w = os.open(os.devnull, os.O_WRONLY)  # for close()
    assert os.read(relayed.pty.slave, 100) == b""
    out = relayed.finish()
    assert out.startswith(b"hello\r\n")  # the pty's echo


def test_what_the_app_wrote_before_the_end_is_relayed_in_full(relayed: Relayed) -> None:
    # More than the pty holds (4 KiB on Linux), written before the end is told.
    data = b"".join(b"line %d\n" % i for i in range(20000))
    writer = threading.Thread(target=lambda: os.write(relayed.pty.slave, data))
    writer.start()
    reader_out: list[bytes] = []

    def read_all() -> None:
        buf = b""
        while chunk := os.read(relayed.out_r, 65536):
            buf += chunk
        reader_out.append(buf)

    reader = threading.Thread(target=read_all)
    reader.start()
    writer.join()
    os.write(relayed.done_w, b"x")
    relayed.thread.join()
    os.close(relayed.out_w)
    reader.join()
    assert reader_out[0] == data.replace(b"\n", b"\r\n")
