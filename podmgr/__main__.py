"""Entry point: set up logging and signals, dispatch (to podmgr.fastpath for a run or start
seen before, else into click), map errors to exit codes."""

from __future__ import annotations

import errno
import gc
import os
import signal
import sys
import threading
from types import FrameType
from typing import NoReturn

from podmgr import logger
from podmgr.errors import ExitCode, Interrupted, PodmgrError

log = logger.get("podmgr")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwind like Ctrl-C so that context managers clean up what they created.
    Interrupted.received = True
    raise Interrupted(f"terminated by signal {signal.Signals(signum).name}")


def _fail(message: str, hint: str | None, code: int) -> NoReturn:
    print(f"podmgr: error: {message}", file=sys.stderr)
    if hint:
        print(f"podmgr: hint: {hint}", file=sys.stderr)
    sys.exit(code)


_SPACE_HINT = (
    "free space on the filesystem of podmgr's state directory (--dir; /var/lib/podmgr "
    "by default), then try again"
)


def _environmental(e: BaseException) -> PodmgrError | None:
    """An error of the machine, not of podmgr, as one line: a full or read-only disk, a
    file the user may not read, the image store's database failing on either. Caught
    here, once, wherever in podmgr it came from."""
    from podmgr.errors import ROOT_HINT, PermissionDenied

    root = os.geteuid() == 0
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None and isinstance(e, sqlite3.Error):
        if not root:
            return PermissionDenied(f"the image store's database: {e}", hint=ROOT_HINT)
        return PodmgrError(f"the image store's database failed: {e}", hint=_SPACE_HINT)
    if not isinstance(e, OSError):
        return None
    where = f": {e.filename}" if e.filename else ""
    if isinstance(e, PermissionError):
        return PermissionDenied(
            f"permission denied{where}",
            hint=ROOT_HINT if not root else "check that file's permissions and attributes",
        )
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return PodmgrError(f"no space left on the device{where}", hint=_SPACE_HINT)
    if e.errno == errno.EROFS:
        return PodmgrError(
            f"read-only file system{where}", hint="podmgr's state directory must be writable"
        )
    return None


def _failed(e: BaseException, debug: bool) -> NoReturn:
    """Exit for an exception that is not click's own."""
    if isinstance(e, KeyboardInterrupt):
        _fail("interrupted", None, ExitCode.INTERRUPTED)
    if not isinstance(e, PodmgrError) and (known := _environmental(e)) is not None:
        if debug:
            log.exception("traceback")
        _fail(known.message, known.hint, int(known.exit_code))
    if isinstance(e, PodmgrError):
        if debug:
            log.exception("traceback")
        _fail(e.message, e.hint, int(e.exit_code))
    if isinstance(e, BrokenPipeError):
        sys.exit(ExitCode.FAILURE)
    if not isinstance(e, Exception):
        raise e
    if debug:
        log.exception("traceback")
    _fail(
        f"internal error: {type(e).__name__}: {e}",
        "run again with --debug for a traceback, and report it",
        ExitCode.FAILURE,
    )


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the podmgr CLI and exit with its documented exit code."""
    # Logging is set up on its first record (podmgr.logger): most runs have none.
    signal.signal(signal.SIGTERM, _on_sigterm)
    # A command lives for a fraction of a second and makes few reference cycles, yet the
    # cyclic collector's passes over the modules it imports cost `podmgr run` 5-8 ms
    # (bench/pod_start). Rarer passes, not none: `run` may follow a pod for days.
    gc.set_threshold(100_000, 50, 100)
    args = sys.argv[1:] if argv is None else list(argv)

    # The metadata service goes without click too: it is socket-activated, and its
    # start-up is what an app's first request waits for.
    if "metadata-service" in args:
        from podmgr import metadata

        try:
            code = metadata.main(args)
        except BaseException as e:
            _failed(e, "--debug" in args)
        if code is not None:
            sys.exit(code)

    # A run or start seen before goes without click (podmgr.fastpath).
    from podmgr import fastpath

    fastpath.ARGV = args
    try:
        code = fastpath.main(args)
    except BaseException as e:
        _failed(e, False)
    if code is not None:
        sys.exit(code)

    import click

    from podmgr.cli import cli, debug_enabled

    try:
        rv = cli.main(args=args, prog_name="podmgr", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        _fail("interrupted", None, ExitCode.INTERRUPTED)
    except (Exception, KeyboardInterrupt) as e:
        _failed(e, debug_enabled())
    sys.exit(rv if isinstance(rv, int) else ExitCode.OK)


def entry() -> NoReturn:
    """The ``podmgr`` command: :func:`main`, then an exit that skips the interpreter's
    finalization, which only frees memory by then and costs 15-40 ms (more after a
    pod's run: bench/pod_start). Everything podmgr opens is closed by its context
    manager before :func:`main` returns; with a thread still running (none is, after
    any command of ours), the exit is the usual one."""
    try:
        main()
    except SystemExit as e:
        code = e.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = ExitCode.FAILURE
    status = int(code or 0)
    if threading.active_count() > 1:
        sys.exit(status)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        status = status or ExitCode.FAILURE
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    os._exit(status)


if __name__ == "__main__":
    entry()
