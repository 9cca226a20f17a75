"""The one helper through which podmgr runs external commands.

It never uses a shell, logs ``+ cmd`` at debug level, and turns a failure into a
single CommandError (the caller decides whether and how to report it).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from typing import IO, Any

from podmgr import logger
from podmgr.errors import CommandError, NotFoundError

log = logger.get(__name__)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | str | None = None,
    stdin: int | IO[Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` and return the completed process (stdout/stderr as text).

    Raises CommandError when it exits non-zero and ``check`` is true, and
    NotFoundError when the program does not exist.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("+ %s", shlex.join(args))
    if isinstance(input, bytes):
        input = input.decode()
    try:
        proc = subprocess.run(
            args,
            check=False,
            text=True,
            input=input,
            stdin=stdin if input is None else None,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
        )
    except FileNotFoundError as e:
        raise _not_found(args[0]) from e
    except subprocess.TimeoutExpired as e:
        raise CommandError(
            f"{args[0]} did not finish within {timeout} s", argv=args, returncode=-1
        ) from e
    if check and proc.returncode != 0:
        stderr = (proc.stderr or "").strip()
        last = stderr.splitlines()[-1] if stderr else f"exit status {proc.returncode}"
        raise CommandError(
            f"{os.path.basename(args[0])} failed: {last}",
            argv=args,
            returncode=proc.returncode,
            stderr=stderr,
        )
    return proc


def run_many(
    argvs: Sequence[Sequence[str | os.PathLike[str]]],
    *,
    env: Mapping[str, str] | None = None,
) -> list[subprocess.CompletedProcess[str]]:
    """Run the commands at once (independent ones, each one quick), unchecked: their
    completed processes in order, for the caller to judge. NotFoundError when a program
    does not exist (the others are waited for)."""
    procs: list[subprocess.Popen[str]] = []
    missing: FileNotFoundError | None = None
    for argv in argvs:
        args = [os.fspath(a) for a in argv]
        log.debug("+ %s", shlex.join(args))
        try:
            procs.append(
                subprocess.Popen(
                    args,
                    text=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=dict(env) if env is not None else None,
                )
            )
        except FileNotFoundError as e:
            missing = e
            break
    done = []
    for p in procs:
        out, err = p.communicate()
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    if missing is not None:
        raise _not_found(missing.filename) from missing
    return done


def _not_found(program: str) -> NotFoundError:
    return NotFoundError(
        f"command not found: {program}", hint="install the package that provides it"
    )
