"""A pod's network namespace, named as ``ip netns`` names them (``/run/netns/NAME``).

Created and removed in-process, as ``ip netns add`` and ``ip netns delete`` do it
(iproute2's ``netns_add``/``netns_delete``): ``/run/netns`` a shared mount, so that a
namespace's bind mount, and its removal, reach every mount namespace made meanwhile; the
file bound to a fresh namespace; ``lo`` brought up in it. Two ``ip`` commands cost 9-10 ms
of every pod start with a network of its own and one more 5 ms at its end (measured in
the box); a thread of ours that leaves the host's namespace for the new one, binds it and
ends costs well under one.

That thread also mounts a sysfs from inside the namespace, read-only, for the pod's apps'
/sys (:func:`sysfs_of`): systemd's own for an app in a namespace of its own brings the
host's debugfs, tracefs, bpffs and cgroup trees beneath it, each of which
``ProtectKernelTunables=`` then remounts read-only at every app's start (15 ms of 70 for
systemd's start of an app; podmgr.units).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
import threading
from typing import Any

from podmgr.errors import NetworkError
from podmgr.rootfs import MNT_DETACH

NETNS_DIR = "/run/netns"
SYSFS_DIR = "/run/podmgr/sysfs"

# <sched.h>, <sys/mount.h>, <linux/sockios.h>, <net/if.h>
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
# MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
SYSFS_FLAGS = 0x1 | 0x2 | 0x4 | 0x8
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def path_of(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def _fail(what: str, err: int) -> NetworkError:
    return NetworkError(
        f"cannot {what}: {os.strerror(err)}",
        hint="podmgr needs root, in the host's mount namespace",
    )


def _share_dir(libc: Any) -> None:
    from podmgr.rootfs import last_errno

    os.makedirs(NETNS_DIR, mode=0o755, exist_ok=True)
    d = NETNS_DIR.encode()
    for _ in range(2):
        if libc.mount(b"none", d, None, MS_SHARED | MS_REC, None) == 0:
            return
        err = last_errno()
        if err != errno.EINVAL:
            raise _fail(f"make {NETNS_DIR} a shared mount", err)
        # Not a mount point yet: make it one, then shared.
        if libc.mount(d, d, b"none", MS_BIND | MS_REC, None) != 0:
            raise _fail(f"bind {NETNS_DIR} onto itself", last_errno())
    raise _fail(f"make {NETNS_DIR} a shared mount", errno.EINVAL)


def _lo_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        (flags,) = struct.unpack_from("H", fcntl.ioctl(s, SIOCGIFFLAGS, req), 16)
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def sysfs_of(name: str) -> str:
    """Where :func:`add` mounts the namespace's own sysfs."""
    return os.path.join(SYSFS_DIR, name)


def add(name: str) -> str:
    """Create the namespace ``name``, with ``lo`` up, and a sysfs of its own, read-only,
    at :func:`sysfs_of` (a sysfs shows the network devices of the namespace that mounted
    it: the pod's apps get it as their /sys, podmgr.units); the namespace's path. An
    existing one is an error (EEXIST), as for ``ip netns add``."""
    from podmgr.rootfs import last_errno, load_libc

    libc = load_libc()
    _share_dir(libc)
    path = path_of(name)
    sysfs = sysfs_of(name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    failure: list[BaseException] = []

    def bind() -> None:
        # This thread alone enters the new namespace, and ends there: the process's
        # other threads (and the CNI plugins it runs) stay in the host's.
        try:
            if libc.unshare(CLONE_NEWNET) != 0:
                raise _fail("create a network namespace", last_errno())
            src = b"/proc/thread-self/ns/net"
            if libc.mount(src, path.encode(), b"none", MS_BIND, None) != 0:
                raise _fail(f"bind the network namespace to {path}", last_errno())
            try:
                _lo_up()
            except OSError as e:
                raise _fail(f"bring lo up in {path}", e.errno or errno.EIO) from e
            try:
                os.makedirs(sysfs, mode=0o755, exist_ok=True)
            except OSError as e:
                raise _fail(f"make {sysfs}", e.errno or errno.EIO) from e
            if libc.mount(b"sysfs", sysfs.encode(), b"sysfs", SYSFS_FLAGS, None) != 0:
                raise _fail(f"mount the network namespace's sysfs on {sysfs}", last_errno())
        except BaseException as e:
            failure.append(e)

    t = threading.Thread(target=bind, name="netns")
    t.start()
    t.join()
    if failure:
        remove(name)
        raise failure[0]
    return path


def remove(name: str) -> None:
    """Remove the namespace ``name`` and its sysfs, those that exist; the kernel frees
    the namespace (and destroys its interfaces) once no process is in it, in the
    background."""
    from podmgr.rootfs import last_errno, load_libc

    path, sysfs = path_of(name), sysfs_of(name)
    libc = None
    for mount_point in (sysfs, path):
        if not os.path.lexists(mount_point):
            continue
        libc = libc or load_libc()
        if libc.umount2(mount_point.encode(), MNT_DETACH) != 0:
            err = last_errno()
            if err not in (errno.EINVAL, errno.ENOENT):  # not mounted: a failed add
                raise _fail(f"unmount {mount_point}", err)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(sysfs)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
