"""A pseudo-terminal between the caller's terminal and an app, for ``run --interactive``
and ``enter`` on a terminal.

Passing the caller's terminal to a unit as file descriptors gives the app a terminal
but not a controlling one: systemd makes every service process a session leader
(``setsid()``), so a shell finds no terminal to do job control on ("can't access tty;
job control turned off"), and Ctrl-C reaches podmgr, not the app. Instead podmgr opens
a pty pair, and systemd gives the unit its slave by path (``StandardInput=tty-force``,
``TTYPath=``): the service's process opens it, after ``setsid()``, as its controlling
terminal, before it drops privileges and enters the app's root (the app's private
``/dev`` has the host's ``/dev/pts``, so ``tty`` prints the same path). podmgr puts the
caller's terminal in raw mode and relays bytes both ways; the pty's own line discipline
(the caller's settings, copied) turns Ctrl-C, Ctrl-Z and Ctrl-\\ into signals to the
app's foreground process group. The window size follows the caller's (SIGWINCH).

The app's start and the wait for its end run in a thread of their own
(:func:`session`), so that the relay here never waits for the bus, and the wait reads
the bus while the app runs (it registers the pod with machined then). podmgr keeps the
slave open until the app has ended, so reading the master never fails with EIO while
the app has not opened it yet or has closed it: the end is the wait's, and what the app
wrote by then is read to the end.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import termios
import threading
import tty
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any, NamedTuple, TypeVar

from podmgr import logger

log = logger.get(__name__)

T = TypeVar("T")

#: Bytes read (and buffered towards the app) at a time.
CHUNK = 16384

_STDIO_KEYS = (
    "StandardInput",
    "StandardInputFileDescriptor",
    "StandardOutput",
    "StandardOutputFileDescriptor",
    "StandardError",
    "StandardErrorFileDescriptor",
)


def wanted(fds: Sequence[int]) -> bool:
    """Whether to give the app a pty: the caller's stdin and stdout are terminals. Not
    with stdout redirected (``enter UUID cat f > out``): a pty would turn the output's
    newlines into CR LF and mix stderr into it."""
    return os.isatty(fds[0]) and os.isatty(fds[1])


class Pty(NamedTuple):
    master: int
    slave: int
    #: The slave's path, /dev/pts/N.
    path: str


@contextlib.contextmanager
def open_pty(caller: int) -> Iterator[Pty]:
    """A pty pair whose slave has the caller's terminal settings and window size."""
    master, slave = os.openpty()  # not inherited by children (PEP 446)
    try:
        # The caller's settings (erase character, IUTF8, …) as the app's, the way ssh
        # and script(1) do: systemd's TTYReset= would give it its defaults instead.
        with contextlib.suppress(termios.error):
            termios.tcsetattr(slave, termios.TCSANOW, termios.tcgetattr(caller))
        copy_size(caller, master)
        os.set_blocking(master, False)
        yield Pty(master, slave, os.ttyname(slave))
    finally:
        os.close(master)
        os.close(slave)


def copy_size(src: int, dst: int) -> None:
    """Give ``dst`` the window size of ``src``; the kernel then sends SIGWINCH to the
    foreground process group of ``dst``'s terminal."""
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)


def properties(path: str, fds: Sequence[int], term: str | None) -> dict[str, Any]:
    """The unit's stdio: the pty at ``path`` as its stdin, stdout and controlling
    terminal; stderr too if the caller's is a terminal, else the caller's stderr."""
    props: dict[str, Any] = {
        # tty-force: systemd's process takes the terminal as its controlling one even
        # if some session had it (none has a pty podmgr just opened; "tty" would wait).
        "StandardInput": "tty-force",
        "StandardOutput": "tty",
        "TTYPath": path,
    }
    if os.isatty(fds[2]):
        props["StandardError"] = "tty"
    else:
        props["StandardErrorFileDescriptor"] = fds[2]
    if term:
        props["Environment"] = [f"TERM={term}"]
    return props


def with_terminal(props: Mapping[str, Any], path: str, fds: Sequence[int]) -> dict[str, Any]:
    """``props`` with the pty at ``path`` as the unit's terminal (:func:`properties`),
    and the caller's $TERM (systemd would set vt220)."""
    out = {k: v for k, v in props.items() if k not in _STDIO_KEYS}
    tty_props = properties(path, fds, os.environ.get("TERM"))
    env = [e for e in out.get("Environment", ()) if not str(e).startswith("TERM=")]
    out.update(tty_props)
    if "Environment" in tty_props or env:
        out["Environment"] = [*env, *tty_props.get("Environment", ())]
    return out


# ---- the session ---------------------------------------------------------------------


@contextlib.contextmanager
def raw(fd: int) -> Iterator[None]:
    """The caller's terminal in raw mode: keys go to the app as bytes (Ctrl-C too),
    unechoed, unbuffered. Restored on every way out, and while podmgr is stopped."""
    saved = termios.tcgetattr(fd)

    def restore() -> None:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    def suspend(_signum: int, _frame: FrameType | None) -> None:
        # SIGTSTP sent to podmgr itself (its terminal sends none in raw mode): stop
        # with the caller's terminal as it was, raw again once continued.
        restore()
        os.kill(os.getpid(), signal.SIGSTOP)
        with contextlib.suppress(termios.error):
            tty.setraw(fd, termios.TCSADRAIN)

    previous = signal.signal(signal.SIGTSTP, suspend)
    try:
        tty.setraw(fd, termios.TCSADRAIN)
        yield
    finally:
        signal.signal(signal.SIGTSTP, previous)
        restore()


@contextlib.contextmanager
def following_size(caller: int, master: int) -> Iterator[None]:
    """The pty's window size follows the caller's terminal's (SIGWINCH)."""

    def resized(_signum: int, _frame: FrameType | None) -> None:
        copy_size(caller, master)

    previous = signal.signal(signal.SIGWINCH, resized)
    try:
        copy_size(caller, master)  # changed between open_pty and here
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


def session(pty: Pty, fds: Sequence[int], work: Callable[[], T]) -> T:
    """Run ``work`` (start the app on ``pty`` and wait for its end) in a thread while
    this thread relays between the caller's ``fds`` and the pty; return what ``work``
    returns, or raise what it raised, once the app's output is relayed and the caller's
    terminal is restored. Must run in the main thread (signal handlers)."""
    result: list[T] = []
    failure: list[BaseException] = []
    done_r, done_w = os.pipe()

    def waiter() -> None:
        try:
            result.append(work())
        except BaseException as e:  # re-raised in the caller's thread
            failure.append(e)
        finally:
            os.write(done_w, b"x")

    thread = threading.Thread(target=waiter, name="podmgr-pty-wait")
    try:
        with raw(fds[0]), following_size(fds[0], pty.master):
            thread.start()
            try:
                relay(fds[0], fds[1], pty.master, pty.slave, done_r)
            finally:
                # The relay only ends early on an error of its own; the app keeps
                # running until it ends (Ctrl-C, with the terminal restored, is
                # forwarded to it by the caller's handlers).
                thread.join()
    finally:
        os.close(done_r)
        os.close(done_w)
    if failure:
        raise failure[0]
    return result[0]


def relay(stdin: int, stdout: int, master: int, slave: int, done: int) -> None:
    """Copy ``stdin`` to ``master`` and ``master`` to ``stdout`` until ``done`` is
    readable, then the rest of ``master``'s output.

    ``master`` is non-blocking; ``stdin`` is not made so (its open file is shared with
    the caller's shell), it is read only when poll says it has something. At the
    caller's EOF (a hung-up terminal) the app gets the pty's end-of-file character. A
    caller's stdout that fails (EIO, EPIPE) is not written again, but the app's output
    is still read, so that the app never blocks on a full pty."""
    to_app = b""
    caller_in, caller_out, app_out = True, True, True
    while True:
        poller = select.poll()
        poller.register(done, select.POLLIN)
        if caller_in and len(to_app) < CHUNK:
            poller.register(stdin, select.POLLIN)
        events = (select.POLLIN if app_out else 0) | (select.POLLOUT if to_app else 0)
        if events:
            poller.register(master, events)
        ready = dict(poller.poll())
        if ready.get(done):
            break
        if ready.get(stdin):
            try:
                data = os.read(stdin, CHUNK)
            except OSError:
                data = b""
            if data:
                to_app += data
            else:
                caller_in = False
                to_app += _eof_char(slave)
        flags = ready.get(master, 0)
        if flags & select.POLLOUT and to_app:
            with contextlib.suppress(BlockingIOError):
                to_app = to_app[os.write(master, to_app) :]
        if flags & (select.POLLIN | select.POLLHUP | select.POLLERR):
            chunk = _read(master)
            if chunk is None:
                app_out = False  # cannot happen while the slave is open here
            elif caller_out:
                caller_out = _write_all(stdout, chunk)
    # The app has ended: what it wrote is in the pty, read to its end.
    while app_out and (chunk := _read(master)):
        if caller_out:
            caller_out = _write_all(stdout, chunk)


def _read(master: int) -> bytes | None:
    """What the master has (b"" when nothing now), None once it has failed."""
    try:
        return os.read(master, CHUNK) or None
    except BlockingIOError:
        return b""
    except OSError as e:
        if e.errno != errno.EIO:
            log.info("reading the pty: %s", e)
        return None


def _write_all(fd: int, data: bytes) -> bool:
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError as e:
        log.info("writing to the caller's terminal: %s", e)
        return False
    return True


def _eof_char(slave: int) -> bytes:
    """The app's end-of-file key, if its terminal is in canonical mode (a shell reading
    a line): what Ctrl-D would send."""
    try:
        attrs = termios.tcgetattr(slave)
    except termios.error:
        return b""
    if not attrs[3] & termios.ICANON:
        return b""
    c = attrs[6][termios.VEOF]
    return c if isinstance(c, bytes) else bytes([c])
