"""Small filesystem helpers: atomic writes and fsync."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def rmtree(path: str | os.PathLike[str], *, ignore_errors: bool = False) -> None:
    """Remove ``path`` and everything below it, never following a symlink.

    Unlike shutil.rmtree (recursive on Python 3.11, one frame and one fd per level) the
    walk is iterative and holds at most :data:`_RMTREE_FDS` directory fds, so a tree
    nested 100,000 deep (an image's, or one an app made in its root) is removed like
    any other. Read-only directories left by an unprivileged extraction are made
    writable first. A missing ``path`` is not an error.
    """
    head, tail = os.path.split(os.path.abspath(path))
    try:
        dfd = os.open(head, _DIR_FLAGS)
    except FileNotFoundError:
        return
    except OSError:
        if ignore_errors:
            return
        raise
    try:
        rmtree_at(dfd, tail, ignore_errors=ignore_errors)
    finally:
        os.close(dfd)


#: Directory fds rmtree keeps open; deeper ancestors are reopened through "..".
_RMTREE_FDS = 32
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Frame:
    __slots__ = ("dev", "fd", "ino", "name", "subdirs")

    def __init__(self, name: str, fd: int, st: os.stat_result, subdirs: list[str]) -> None:
        self.name = name
        self.fd: int | None = fd
        self.dev, self.ino = st.st_dev, st.st_ino
        self.subdirs = subdirs


def _open_dir(parent: int, name: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except PermissionError:
        # A directory without r or x (an unprivileged extraction of mode 0); it is a
        # directory we are about to remove, so its mode no longer matters.
        os.chmod(name, 0o700, dir_fd=parent)
        return os.open(name, _DIR_FLAGS, dir_fd=parent)


def _empty_files(fd: int) -> list[str]:
    """Unlink every non-directory in ``fd``; returns its subdirectories' names."""
    subdirs = []
    with os.scandir(fd) as it:
        entries = list(it)
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            subdirs.append(e.name)
            continue
        try:
            os.unlink(e.name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except PermissionError:
            os.fchmod(fd, 0o700)  # a read-only directory of ours
            os.unlink(e.name, dir_fd=fd)
    return subdirs


def _rmdir(parent: int, name: str) -> None:
    try:
        os.rmdir(name, dir_fd=parent)
    except PermissionError:
        os.fchmod(parent, 0o700)
        os.rmdir(name, dir_fd=parent)


def rmtree_at(dir_fd: int, name: str, *, ignore_errors: bool = False) -> None:
    """Remove ``name`` (a file or a whole tree) in the directory ``dir_fd``; see rmtree."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except OSError:
            if not ignore_errors:
                raise
        return
    stack: list[_Frame] = []
    try:
        fd = _open_dir(dir_fd, name)
        top = os.fstat(fd)
        if (top.st_dev, top.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise OSError(f"{name} changed while it was being removed")
        stack.append(_Frame(name, fd, top, []))
        stack[-1].subdirs = _empty_files(fd)
        while stack:
            frame = stack[-1]
            assert frame.fd is not None
            if frame.subdirs:
                child = frame.subdirs.pop()
                cfd = _open_dir(frame.fd, child)
                cst = os.fstat(cfd)
                stack.append(_Frame(child, cfd, cst, []))
                if len(stack) > _RMTREE_FDS:
                    far = stack[-_RMTREE_FDS - 1]
                    if far.fd is not None:
                        os.close(far.fd)
                        far.fd = None
                stack[-1].subdirs = _empty_files(cfd)
                continue
            if len(stack) > 1:
                parent = stack[-2]
                if parent.fd is None:
                    # Reopened through "..", checked to be the directory we came from.
                    pfd = os.open("..", _DIR_FLAGS, dir_fd=frame.fd)
                    pst = os.fstat(pfd)
                    if (pst.st_dev, pst.st_ino) != (parent.dev, parent.ino):
                        os.close(pfd)
                        raise OSError(f"{parent.name} moved while it was being removed")
                    parent.fd = pfd
                parent_fd = parent.fd
            else:
                parent_fd = dir_fd
            os.close(frame.fd)
            frame.fd = None
            stack.pop()
            _rmdir(parent_fd, frame.name)
    except OSError:
        if not ignore_errors:
            raise
    finally:
        for f in stack:
            if f.fd is not None:
                os.close(f.fd)


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
