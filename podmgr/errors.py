"""The error model: one base exception carrying a named exit code and a hint.

Exit codes are part of the CLI's contract; docs/exit-codes.md lists them.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Named process exit codes. Never renumber: scripts depend on them."""

    OK = 0
    #: A generic failure, and a refused signature (fail closed).
    FAILURE = 1
    #: The command line is wrong (click's own usage errors use 2 as well).
    USAGE = 2
    #: An image, pod, app or key that was named does not exist.
    NOT_FOUND = 3
    #: A manifest, image archive or other input does not validate.
    INVALID = 4
    #: The operation needs privileges the caller lacks (usually root).
    PERMISSION = 5
    #: systemd or the bus refused or failed an operation.
    SYSTEMD = 6
    #: Fetching over the network failed (connection, TLS, HTTP status, timeout).
    NETWORK = 7
    #: The target already exists or is in use.
    CONFLICT = 8
    #: An external command that podmgr relies on failed.
    COMMAND = 9
    #: An image exceeds an import limit (its size, compressed or extracted) or would
    #: leave the store's filesystem less free space than the reserve.
    LIMIT = 10
    #: Interrupted by SIGINT or SIGTERM.
    INTERRUPTED = 130


class PodmgrError(Exception):
    """Base of every error podmgr reports to the user.

    ``message`` names the problem in one line; ``hint`` says what to do about it.
    """

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(
        self, message: str, *, hint: str | None = None, exit_code: ExitCode | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class UsageError(PodmgrError):
    exit_code = ExitCode.USAGE


class NotFoundError(PodmgrError):
    exit_code = ExitCode.NOT_FOUND


class InvalidError(PodmgrError):
    """Input that does not validate; ``message`` should name the field."""

    exit_code = ExitCode.INVALID


class PermissionDenied(PodmgrError):
    exit_code = ExitCode.PERMISSION


class SystemdError(PodmgrError):
    """A failure reported by systemd or the bus, keeping the D-Bus error name."""

    exit_code = ExitCode.SYSTEMD

    def __init__(self, message: str, *, name: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        #: The D-Bus error name, e.g. ``org.freedesktop.systemd1.NoSuchUnit``.
        self.name = name


class NetworkError(PodmgrError):
    exit_code = ExitCode.NETWORK


class ConflictError(PodmgrError):
    exit_code = ExitCode.CONFLICT


class CommandError(PodmgrError):
    """An external command exited non-zero."""

    exit_code = ExitCode.COMMAND

    def __init__(
        self,
        message: str,
        *,
        argv: list[str],
        returncode: int,
        stderr: str = "",
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class LimitError(PodmgrError):
    """An import refused by a size limit or the free-space reserve (docs/exit-codes.md)."""

    exit_code = ExitCode.LIMIT


class Interrupted(PodmgrError):
    exit_code = ExitCode.INTERRUPTED
    #: Set once a signal has been turned into this (podmgr.__main__): the exception may
    #: land in the middle of a read, and what that leaves behind fail otherwise.
    received = False


#: The hint of every error that root would not have had.
ROOT_HINT = "run it again with sudo, or as root"


def require_root(what: str) -> None:
    """Raise PermissionDenied unless running as root."""
    import os

    if os.geteuid() != 0:
        raise PermissionDenied(f"{what} needs root privileges", hint=ROOT_HINT)
