"""Entry point: set up logging and signals, dispatch into click, map errors to exit codes."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType
from typing import NoReturn

from podmgr.errors import ExitCode, Interrupted, PodmgrError

log = logging.getLogger("podmgr")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwind like Ctrl-C so that context managers clean up what they created.
    raise Interrupted(f"terminated by signal {signal.Signals(signum).name}")


def _fail(message: str, hint: str | None, code: int) -> NoReturn:
    print(f"podmgr: error: {message}", file=sys.stderr)
    if hint:
        print(f"podmgr: hint: {hint}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the podmgr CLI and exit with its documented exit code."""
    logging.basicConfig(format="podmgr: %(levelname)s: %(message)s", level=logging.WARNING)
    signal.signal(signal.SIGTERM, _on_sigterm)

    import click

    from podmgr.cli import cli, debug_enabled

    try:
        rv = cli.main(args=argv, prog_name="podmgr", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _fail("interrupted", None, ExitCode.INTERRUPTED)
    except PodmgrError as e:
        if debug_enabled():
            log.exception("traceback")
        _fail(e.message, e.hint, int(e.exit_code))
    except BrokenPipeError:
        sys.exit(ExitCode.FAILURE)
    except Exception as e:
        if debug_enabled():
            log.exception("traceback")
        _fail(
            f"internal error: {type(e).__name__}: {e}",
            "run again with --debug for a traceback, and report it",
            ExitCode.FAILURE,
        )
    sys.exit(rv if isinstance(rv, int) else ExitCode.OK)


if __name__ == "__main__":
    main()
