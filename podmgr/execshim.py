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
from collections.abc import Mapping
from typing import Any

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


#: The first systemd whose units can have a PID namespace of their own (PrivatePIDs=).
PRIVATE_PIDS_VERSION = 257


def with_private_pids(props: Mapping[str, Any]) -> dict[str, Any]:
    """A unit's properties for a systemd that makes its commands' PID namespaces itself
    (:data:`PRIVATE_PIDS_VERSION`): ``PrivatePIDs=`` and a /proc that hides what the app
    may not see of it (``ProtectProc=invisible``), with podmgr-exec executing the command
    in place (no ``-P``: no fork, so no process beside the app). Other units as given."""
    out = dict(props)
    changed = False
    for key in ("ExecStartEx", "ExecStartPreEx", "ExecStopPostEx"):
        lines = []
        for path, argv, flags in out.get(key, ()):
            if path == TARGET and "-P" in argv[: argv.index("--")]:
                argv = [a for i, a in enumerate(argv) if not (a == "-P" and i < argv.index("--"))]
                changed = True
            lines.append((path, argv, flags))
        if lines:
            out[key] = lines
    if changed:
        out["PrivatePIDs"] = True
        out["ProtectProc"] = "invisible"
    return out
