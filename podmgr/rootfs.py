"""Resolving an app inside its rendered root filesystem, by ace.md and aci.md.

Paths inside a root are resolved as the app will see them: symlinks are followed
*within* the root, never into the host's tree. Changes the executor makes (mount targets,
``/etc/hosts``) go into the app's overlay upper layer, never into the image's tree, with
parent directories mirroring the lower layer's modes and owners (an upper directory's
attributes win in the merged view).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from podmgr import logger
from podmgr.errors import InvalidError, NotFoundError, PodmgrError, UsageError

log = logger.get(__name__)

_MAX_LINKS = 40
#: PATH_MAX without its NUL.
_MAX_PATH = 4095
#: The largest file podmgr reads out of an image (its /etc/passwd and /etc/group).
MAX_IMAGE_FILE = 4 << 20


def resolve(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """The host path of ``path`` inside ``root``, following symlinks as a chroot would.

    The result may not exist. Raises InvalidError on a symlink loop, and on a path (as
    given, or as its links make it) that Linux could not resolve: longer than PATH_MAX
    or with a name longer than NAME_MAX (paths come from hostile manifests and images).
    """
    if len(os.fsencode(path)) > _MAX_PATH:
        raise InvalidError(f"path {path[:60]!r}… is longer than {_MAX_PATH} bytes")
    parts = [p for p in PurePosixPath("/", path).parts[1:] if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            is_link = candidate.is_symlink()
        except OSError as e:  # ENAMETOOLONG: the kernel would refuse it too
            raise InvalidError(f"cannot resolve {path[:80]!r} in the image: {e.strerror}") from None
        if is_link and (parts or follow_last):
            links += 1
            if links > _MAX_LINKS:
                raise InvalidError(f"too many levels of symbolic links in {path[:200]}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def read_image_file(root: Path, path: str, max_size: int = MAX_IMAGE_FILE) -> bytes | None:
    """The content of ``path`` inside the image's ``root``, None if it does not exist.

    Only a regular file is read: symlinks are followed within the root (by
    :func:`resolve`, the last one opened with ``O_NOFOLLOW``), the open never blocks
    (``O_NONBLOCK``: a FIFO would hang it), and a device, FIFO, socket or directory, or a
    file over ``max_size`` bytes, is refused with InvalidError (issue 18: a /dev/zero
    there was read until MemoryError). At most ``max_size`` + 1 bytes are read, so a
    file that grows meanwhile is refused too.
    """
    host = resolve(root, path)

    def not_regular() -> InvalidError:
        return InvalidError(
            f"{path} in the image is not a regular file",
            hint="the image is broken or hostile; fix or replace its " + path,
        )

    try:
        # Judged before opening too: opening a device node is refused on a nodev mount
        # (EACCES), and on others it may have effects of its own.
        if not stat.S_ISREG(os.lstat(host).st_mode):
            raise not_regular()
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        fd = os.open(host, flags)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise InvalidError(f"cannot read {path} in the image: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced meanwhile
            raise not_regular()
        chunks, size = [], 0
        while size <= max_size and (chunk := os.read(fd, max_size + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        if size > max_size:
            raise InvalidError(
                f"{path} in the image is larger than {max_size} bytes",
                hint="the image is broken or hostile; fix or replace its " + path,
            )
        return b"".join(chunks)
    finally:
        os.close(fd)


def _passwd_lookup(root: Path, file: str, name: str, id_field: int) -> int | None:
    data = read_image_file(root, file)
    if data is None:
        return None
    text = data.decode(errors="replace")
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) > id_field and fields[0] == name and fields[id_field].isdigit():
            return int(fields[id_field])
    return None


def _lookup(root: Path, value: str, file: str, what: str, owner_attr: str) -> int:
    # aci.md: the image's own passwd/group first, then a number, then "/path" ownership.
    found = _passwd_lookup(root, file, value, 2)
    if found is not None:
        return found
    if value.isdigit():
        return int(value)
    if value.startswith("/"):
        try:
            st = resolve(root, value).stat()
        except OSError:
            raise InvalidError(
                f"{what} {value!r}: no such path in the image's root filesystem"
            ) from None
        return int(getattr(st, owner_attr))
    raise NotFoundError(
        f"{what} {value!r} is not in the image's {file}",
        hint=f"use a numeric {what} ID, or a name that {file} in the image defines",
    )


def lookup_user(root: Path, user: str) -> int:
    return _lookup(root, user, "/etc/passwd", "user", "st_uid")


def lookup_group(root: Path, group: str) -> int:
    return _lookup(root, group, "/etc/group", "group", "st_gid")


def find_exec(root: Path, argv0: str, path_env: str) -> str:
    """The absolute path of ``argv0`` inside the root, searching ``path_env`` if relative."""
    candidates = (
        [argv0] if "/" in argv0 else [f"{d.rstrip('/')}/{argv0}" for d in path_env.split(":") if d]
    )
    for c in candidates:
        if not c.startswith("/"):
            continue
        host = resolve(root, c)
        try:
            st = host.stat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return c
    where = "" if "/" in argv0 else f" (searched {path_env})"
    raise NotFoundError(
        f"exec {argv0!r} is not an executable in the image's root filesystem{where}",
        hint="check the image's app.exec, or give --exec",
    )


def check_working_dir(root: Path, wd: str) -> None:
    if not resolve(root, wd).is_dir():
        raise NotFoundError(
            f"working directory {wd!r} does not exist in the image's root filesystem",
            hint="fix workingDirectory, or give --working-dir",
        )


def _mirror_parents(lower: Path, upper: Path, rel: Sequence[str]) -> Path:
    """Create ``rel`` as directories in ``upper``, copying attributes from ``lower``."""
    cur_low, cur_up = lower, upper
    for part in rel:
        cur_low, cur_up = cur_low / part, cur_up / part
        if cur_up.is_dir() and not cur_up.is_symlink():
            continue
        try:
            st = cur_low.lstat()
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise InvalidError(
                f"cannot create /{'/'.join(rel)}: /{cur_low.relative_to(lower)} "
                "is not a directory in the image"
            )
        cur_up.mkdir(mode=0o755)
        if st is not None:
            os.chmod(cur_up, stat.S_IMODE(st.st_mode))
            os.chown(cur_up, st.st_uid, st.st_gid)
        else:
            os.chmod(cur_up, 0o755)
            os.chown(cur_up, 0, 0)
    return cur_up


def _real_rel(lower: Path, path: str) -> list[str]:
    host = resolve(lower, path)
    return list(host.relative_to(lower).parts)


def ensure_mount_target(lower: Path, upper: Path, target: str) -> str:
    """Make ``target`` a directory in the merged root; return its resolved path inside.

    ace.md: a missing target is created (0755, owned by 0:0) with its parents.
    """
    rel = _real_rel(lower, target)
    low = lower.joinpath(*rel)
    if low.exists() and not low.is_dir():
        # A file target: a file volume is bind-mounted over the file as is.
        return "/" + "/".join(rel)
    _mirror_parents(lower, upper, rel)
    return "/" + "/".join(rel)


def ensure_etc_hosts(lower: Path, upper: Path, hostname: str) -> bool:
    """Give the app an /etc/hosts with localhost when the image has none."""
    if resolve(lower, "/etc/hosts").exists():
        return False
    rel = _real_rel(lower, "/etc")
    d = _mirror_parents(lower, upper, rel)
    (d / "hosts").write_text(
        f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    return True


def check_host_source(source: str) -> Path:
    """ace.md: a host volume's source must exist and no component may be a symlink."""
    p = Path(source)
    if not p.is_absolute():
        raise InvalidError(f"volume source {source!r} is not an absolute path")
    cur = Path("/")
    for part in p.parts[1:]:
        cur = cur / part
        if cur.is_symlink():
            raise InvalidError(
                f"volume source {source!r}: {cur} is a symbolic link",
                hint="give the real path of the directory",
            )
        if not cur.exists():
            raise NotFoundError(
                f"volume source {source!r} does not exist",
                hint="create it first; podmgr never creates paths on the host",
            )
    return p


# ---- the apps' overlays ---------------------------------------------------------------------


def overlay_options(lower: Sequence[str], upper: str, work: str) -> str:
    # overlayfs lists lower layers top-first.
    return f"lowerdir={':'.join(reversed(lower))},upperdir={upper},workdir={work}"


def mount_root(rootfs: str, lower: Sequence[str]) -> None:
    """Mount an app's root: its image's rendered tree (``lower``, base first) under the
    pod-private upper layer beside ``rootfs`` (``apps/<app>/upper`` and ``work``).

    podmgr mounts it itself rather than through a transient mount unit: that unit's start
    job (systemd forking mount(8) and waiting for it) and its stop cost 40-50 ms of every
    pod's start and end (bench/pod_start). It calls mount(2) itself, as it does umount2(2)
    (:func:`unmount_roots`): mount(8) and umount(8) cost 3-9 ms a run, ctypes 2 ms once.
    systemd still shows the mount as the unit that pod.json's ``rootfs_unit`` names, and
    it is unmounted when the pod ends: by ``podmgr run``, ``podmgr stop``, the exit hook
    that ends the pod or sees it stopping, a failed start, or ``rm``/``gc``.
    """
    if not _in_systemds_mount_namespace():
        raise UsageError(
            "podmgr runs in a mount namespace of its own: systemd would not see the pod's mounts",
            hint="run it in the host's mount namespace (on a unit: no PrivateTmp=, "
            "ProtectSystem= or other option that gives it a namespace)",
        )
    app_dir = Path(rootfs).parent
    opts = overlay_options(lower, str(app_dir / "upper"), str(app_dir / "work"))
    libc = load_libc()
    if libc.mount(b"overlay", os.fsencode(rootfs), b"overlay", 0, opts.encode()) != 0:
        err = last_errno()
        raise PodmgrError(
            f"cannot mount the root of app {app_dir.name} ({rootfs}): {os.strerror(err)}",
            hint="overlayfs needs the overlay module, and upper layers on a filesystem "
            "that can hold them (not an overlay itself)",
        )


def load_libc() -> Any:
    """The C library, for the mount(2) family, with errno kept (:func:`last_errno`)."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def last_errno() -> int:
    import ctypes

    return ctypes.get_errno()


def _in_systemds_mount_namespace() -> bool:
    try:
        return os.readlink("/proc/self/ns/mnt") == os.readlink("/proc/1/ns/mnt")
    except OSError:
        return True  # cannot tell: let the start say what is wrong


#: umount2(2)'s flag for a lazy unmount.
MNT_DETACH = 2


def unmount_roots(roots: Sequence[str]) -> None:
    """Unmount the apps' roots that are mounted. Lazily: an app's processes that are
    still being stopped keep their own copy of the mount, in their own namespace."""
    libc = None
    for rootfs in roots:
        if os.path.ismount(rootfs):
            libc = libc or load_libc()
            if libc.umount2(os.fsencode(rootfs), MNT_DETACH) != 0:
                err = last_errno()
                if err not in (errno.EINVAL, errno.ENOENT):  # not mounted (any more)
                    log.warning("cannot unmount %s: %s", rootfs, os.strerror(err))
