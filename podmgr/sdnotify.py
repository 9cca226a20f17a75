"""``sd_notify(3)`` without libsystemd: one datagram to ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import os
import socket

from podmgr import logger

log = logger.get(__name__)


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to the service manager; False when podmgr
    does not run under one that listens (no ``$NOTIFY_SOCKET``) or the send failed."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    elif not addr.startswith("/"):
        return False  # unset, or AF_VSOCK (vsock:CID:PORT), which podmgr does not need
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("sd_notify %s: %s", state.split("\n", 1)[0], e)
        return False
    return True
