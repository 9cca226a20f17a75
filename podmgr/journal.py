"""Reading pods' logs from the journal with ``journalctl -o json``.

Every app's stdout and stderr carry ``PODMGR_POD=<uuid>`` and ``PODMGR_APP=<name>``
(``LogExtraFields``), so logs outlive the units: they work for exited and collected pods.

One read goes without journalctl: the last lines of a pod that ``run`` follows
(:func:`read_tail`) come through libsystemd's sd-journal in-process, since that read is
the end of every ``run`` and journalctl's process alone took 6 ms of it (against 0.1-0.8 ms
in-process, bench/pod_start); journalctl where libsystemd cannot be loaded.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import NamedTuple

from podmgr import logger

log = logger.get(__name__)


class Entry(NamedTuple):
    """A journal entry of a pod's app (a NamedTuple: dataclasses costs `run` 5-7 ms)."""

    app: str
    message: str
    cursor: str
    time_usec: int


def timestamp(usec: int) -> str:
    """An entry's ``__REALTIME_TIMESTAMP`` as ``journalctl -o short-iso-precise`` shows it:
    ISO 8601 in local time with microseconds and the UTC offset, which RFC 3339 parsers
    (and ``datetime.fromisoformat``) read."""
    from datetime import UTC, datetime

    seconds, micro = divmod(usec, 1_000_000)
    # Integer parts, not usec / 1e6: a float loses the last microsecond digits.
    # From UTC, then local: a naive local time is ambiguous in the hour a clock goes back.
    t = datetime.fromtimestamp(seconds, UTC).astimezone().replace(microsecond=micro)
    return t.isoformat(timespec="microseconds")


def _argv(
    uuid: str,
    *,
    app: str | None = None,
    follow: bool = False,
    since: str | None = None,
    lines: int | None = None,
    after_cursor: str | None = None,
    all_lines: bool = False,
) -> list[str]:
    # --all: fields over 4096 bytes (a long line) are null in -o json otherwise.
    # _TRANSPORT=stdout: the apps' output, not systemd's messages about their units,
    # which carry the same fields on systemd 257 and would fill --lines=N (an app has no
    # other way to the journal: its /dev and /run hold no journal socket).
    argv = ["journalctl", "-o", "json", "--all", "--no-pager", "-q", f"PODMGR_POD={uuid}"]
    argv.append("_TRANSPORT=stdout")
    if app:
        argv.append(f"PODMGR_APP={app}")
    if follow:
        argv.append("-f")
    if since:
        argv.append(f"--since={since}")
    if lines is not None:
        argv.append(f"--lines={lines}")
    elif all_lines:
        argv.append("--lines=all")
    if after_cursor:
        argv.append(f"--after-cursor={after_cursor}")
    return argv


def _entry(line: str) -> Entry | None:
    try:
        e = json.loads(line)
    except ValueError:
        return None
    if _by_systemd(e.get("_PID")):
        return None
    msg = e.get("MESSAGE", "")
    if isinstance(msg, list):  # binary-safe form: a list of byte values
        msg = bytes(msg).decode(errors="replace")
    return Entry(
        app=str(e.get("PODMGR_APP", "")),
        message=str(msg),
        cursor=str(e.get("__CURSOR", "")),
        time_usec=int(e.get("__REALTIME_TIMESTAMP", 0)),
    )


def _by_systemd(pid: object) -> bool:
    # systemd's own messages about a unit ("Started …", "Deactivated successfully")
    # carry the unit's LogExtraFields on newer systemd (257 does, 252 did not); they are
    # not the app's output.
    return pid == "1"


def read(
    uuid: str,
    *,
    app: str | None = None,
    since: str | None = None,
    lines: int | None = None,
    after_cursor: str | None = None,
) -> list[Entry]:
    """The pod's journal entries so far."""
    from podmgr.process import run

    out = run(_argv(uuid, app=app, since=since, lines=lines, after_cursor=after_cursor)).stdout
    return [e for line in out.splitlines() if (e := _entry(line)) is not None]


def read_tail(
    uuid: str, *, since: str | None = None, after_cursor: str | None = None
) -> list[Entry]:
    """What :func:`read` gives for the whole pod (``since`` as ``@<seconds>``), read
    in-process where libsystemd can be loaded (see the module doc)."""
    from podmgr import sdjournal

    entries = sdjournal.read(
        f"PODMGR_POD={uuid}",
        since_usec=int(since.removeprefix("@")) * 1_000_000 if since else None,
        after_cursor=after_cursor,
    )
    if entries is None:
        return read(uuid, since=since, after_cursor=after_cursor)
    return [
        Entry(app, message, cursor, usec)
        for app, message, pid, cursor, usec in entries
        if not _by_systemd(pid)
    ]


class Follower:
    """``journalctl -f`` for one pod, as an iterator of entries; close() to stop."""

    def __init__(
        self,
        uuid: str,
        *,
        app: str | None = None,
        since: str | None = None,
        lines: int | None = None,
        all_lines: bool = False,
    ) -> None:
        argv = _argv(uuid, app=app, follow=True, since=since, lines=lines, all_lines=all_lines)
        log.debug("+ %s", " ".join(argv))
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
        )
        self.cursor: str | None = None

    def __iter__(self) -> Iterator[Entry]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            e = _entry(line)
            if e is not None:
                self.cursor = e.cursor
                yield e

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait()


#: journald's Varlink socket (systemd 248 and later); root only.
VARLINK = "/run/systemd/journal/io.systemd.journal"


def sync() -> None:
    """Ask journald to write out what it has received, so that a read after this sees
    every entry logged before it.

    Over journald's Varlink socket, which ``journalctl --sync`` uses too (saving that
    process); ``journalctl --sync`` where the socket is missing or refuses.
    """
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(10)
            s.connect(VARLINK)
            s.sendall(b'{"method":"io.systemd.Journal.Synchronize","parameters":{}}\0')
            reply = b""
            while not reply.endswith(b"\0"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        if reply.endswith(b"\0") and "error" not in json.loads(reply[:-1]):
            return
        log.debug("journal: Synchronize over %s: %r", VARLINK, reply[:200])
    except (OSError, ValueError) as e:
        log.debug("journal: Synchronize over %s: %s", VARLINK, e)
    subprocess.run(["journalctl", "--sync"], capture_output=True, check=False)
