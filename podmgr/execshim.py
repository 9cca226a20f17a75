"""podmgr-exec: the static program that starts every app (``shim/podmgr-exec.c``).

systemd 252 gives a service no PID namespace of its own, and no version yet sets a host
name in the UTS namespace it makes; the image's root, where a service's command runs,
holds no Python. So every app's command line is podmgr-exec's, bind-mounted read-only
into the app's private ``/dev``: it makes the app's PID and UTS namespaces, mounts its
``/proc``, drops to the app's user, groups and capabilities, and executes the app as PID 1
of its namespace, then leaves (systemd supervises the app itself; see docs/pods.md).

It is statically linked: a dynamically linked program would load the image's own
``libc`` while it still holds ``CAP_SYS_ADMIN``.

Standard library only: this is on the start path.
"""

from __future__ import annotations

import os

from podmgr.errors import NotFoundError

#: Where the program appears inside an app: systemd creates the mount point in the app's
#: private /dev, so nothing is added to the image's root.
TARGET = "/dev/.podmgr-exec"
NAME = "podmgr-exec"
#: Built into the package by ``make shim`` (a source checkout), or installed by a
#: distribution package.
_CANDIDATES = (
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "libexec", NAME),
    f"/usr/lib/podmgr/{NAME}",
)


def path() -> str:
    """The host path of podmgr-exec."""
    for p in _CANDIDATES:
        if os.access(p, os.X_OK):
            return p
    raise NotFoundError(
        f"{NAME} is missing (looked in {', '.join(_CANDIDATES)})",
        hint="build it with `make shim` in podmgr's source, or reinstall the package",
    )
