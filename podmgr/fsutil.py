"""Small filesystem helpers: atomic writes and fsync."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def rmtree(path: str | os.PathLike[str], *, ignore_errors: bool = False) -> None:
    """shutil.rmtree, imported when needed: most commands never remove a tree."""
    import shutil

    shutil.rmtree(path, ignore_errors=ignore_errors)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new file (0600) next to ``path``, as tempfile.mkstemp would make it: not
    tempfile itself, which imports shutil and random (8-15 ms on every command)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Write to a temp file in the same directory, fsync it, then rename over ``path``.

    Readers see either the old content or the new, never a partial file.
    """
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644) -> None:
    """Atomically replace ``path`` with ``data``."""
    if isinstance(data, str):
        data = data.encode()
    with atomic_writer(path, mode) as f:
        f.write(data)


def create_new(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644) -> bool:
    """Atomically create ``path`` with ``data`` unless it exists; whether it was created.

    Of two writers, the first wins and readers never see a partial file (a temp file,
    fsynced, then linked into place)."""
    if isinstance(data, str):
        data = data.encode()
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)
