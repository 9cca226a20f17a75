"""Small filesystem helpers: atomic writes and fsync."""

from __future__ import annotations

import contextlib
import errno
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


def _mount_roots(dir_fd: int, name: str) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of every mount point at or below ``name`` in ``dir_fd``.

    A bind mount from the same filesystem has the same st_dev as its parent, so the
    mount table is what tells; its root's (st_dev, st_ino) is what opening it gives.
    """
    import re  # not at the top: most commands remove no tree

    try:
        top = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    roots = set()
    for line in lines:
        fields = line.split(b" ")
        if len(fields) < 5:
            continue
        # The kernel writes space, tab, newline and backslash as octal escapes (\040).
        point = os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[4]))
        if point == top or point.startswith(top + "/"):
            try:
                st = os.stat(point, follow_symlinks=False)
            except OSError:
                continue
            roots.add((st.st_dev, st.st_ino))
    return roots


class _Remover:
    """One rmtree_at: errors raised, or (``ignore_errors``) skipped entry by entry."""

    def __init__(self, dev: int, ignore_errors: bool, mounts: set[tuple[int, int]]) -> None:
        self.dev = dev
        self.ignore_errors = ignore_errors
        self.mounts = mounts

    def failed(self, e: OSError) -> None:
        if not self.ignore_errors:
            raise e

    def empty_files(self, fd: int) -> list[str]:
        """Unlink every non-directory in ``fd``; returns its subdirectories' names."""
        subdirs = []
        with os.scandir(fd) as it:
            entries = list(it)
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    subdirs.append(e.name)
                    continue
                try:
                    os.unlink(e.name, dir_fd=fd)
                except PermissionError:
                    os.fchmod(fd, 0o700)  # a read-only directory of ours
                    os.unlink(e.name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError as err:
                self.failed(err)
        return subdirs

    def enter(self, parent: int, name: str) -> _Frame | None:
        """The frame of directory ``name``, its files gone; None if it was skipped."""
        try:
            fd = _open_dir(parent, name)
        except FileNotFoundError:
            return None
        except OSError as e:
            self.failed(e)
            return None
        try:
            st = os.fstat(fd)
            if st.st_dev != self.dev or (st.st_dev, st.st_ino) in self.mounts:
                # A mount point (a bind mount left behind): never removed through,
                # like rm --one-file-system; it would delete another tree's files.
                raise OSError(errno.EXDEV, f"{name} is a mount point; not removed through it")
            return _Frame(name, fd, st, self.empty_files(fd))
        except OSError as e:
            os.close(fd)
            self.failed(e)
            return None

    def rmdir(self, parent: int, name: str) -> None:
        try:
            try:
                os.rmdir(name, dir_fd=parent)
            except PermissionError:
                os.fchmod(parent, 0o700)
                os.rmdir(name, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as e:
            self.failed(e)


def rmtree_at(dir_fd: int, name: str, *, ignore_errors: bool = False) -> None:
    """Remove ``name`` (a file or a whole tree) in the directory ``dir_fd``; see rmtree.

    Mount points below ``name`` are not removed through (EXDEV). With
    ``ignore_errors``, what cannot be removed is skipped and the rest still removed.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            return
    except FileNotFoundError:
        return
    except OSError:
        if ignore_errors:
            return
        raise
    r = _Remover(st.st_dev, ignore_errors, _mount_roots(dir_fd, name))
    top = r.enter(dir_fd, name)
    if top is None:
        return
    if (top.dev, top.ino) != (st.st_dev, st.st_ino):
        assert top.fd is not None
        os.close(top.fd)
        r.failed(OSError(errno.EBUSY, f"{name} changed while it was being removed"))
        return
    stack = [top]
    try:
        while stack:
            frame = stack[-1]
            assert frame.fd is not None
            if frame.subdirs:
                child = r.enter(frame.fd, frame.subdirs.pop())
                if child is not None:
                    stack.append(child)
                    if len(stack) > _RMTREE_FDS:
                        far = stack[-_RMTREE_FDS - 1]
                        if far.fd is not None:
                            os.close(far.fd)
                            far.fd = None
                continue
            if len(stack) > 1:
                parent = stack[-2]
                if parent.fd is None:
                    # Reopened through "..", checked to be the directory we came from.
                    pfd = os.open("..", _DIR_FLAGS, dir_fd=frame.fd)
                    pst = os.fstat(pfd)
                    if (pst.st_dev, pst.st_ino) != (parent.dev, parent.ino):
                        os.close(pfd)
                        raise OSError(
                            errno.EBUSY, f"{parent.name} moved while it was being removed"
                        )
                    parent.fd = pfd
                parent_fd = parent.fd
            else:
                parent_fd = dir_fd
            os.close(frame.fd)
            frame.fd = None
            stack.pop()
            r.rmdir(parent_fd, frame.name)
    except OSError:
        # Only a tree moved under our feet ends the walk: nothing else is safe then.
        if not ignore_errors:
            raise
    finally:
        for f in stack:
            if f.fd is not None:
                os.close(f.fd)


#: Opening a file someone else controls: no blocking open of a FIFO, no terminal taken.
READ_UNTRUSTED = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def read_regular(fd: int, limit: int) -> bytes | str:
    """All of the regular file ``fd`` if it holds at most ``limit`` bytes; else why not,
    as words for the caller's error ("is not a regular file", "is larger than N bytes"):
    a FIFO or /dev/zero must neither hang nor exhaust memory."""
    import stat

    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return "is not a regular file"
    data = os.read(fd, limit + 1)
    while len(data) <= limit and (more := os.read(fd, 1 << 16)):
        data += more
    if len(data) > limit:
        return f"is larger than {limit} bytes"
    return data


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
