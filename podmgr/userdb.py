"""Make an app's numeric users and groups known to the host's NSS, for systemd.

systemd resolves ``User=``, ``Group=`` and ``SupplementaryGroups=`` on the host, even with
``RootDirectory=``: a numeric ID that the host's user database does not know fails the
unit ("Failed at step USER"). Images bring their own /etc/passwd, whose IDs the host
rarely has. So podmgr registers the missing IDs as systemd userdb drop-in records in
``/run/userdb`` (read by nss-systemd, which Debian's nsswitch.conf enables), named
``podmgr-u<uid>`` and ``podmgr-g<gid>``, as ``systemd-nspawn --bind-user`` does. They are
locked records without a password or home and vanish at reboot with /run.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
from collections.abc import Iterable
from pathlib import Path

USERDB = Path("/run/userdb")


def _write(name: str, suffix: str, number: int, record: dict[str, object]) -> None:
    USERDB.mkdir(mode=0o755, exist_ok=True)
    target = USERDB / f"{name}.{suffix}"
    tmp = USERDB / f".{name}.{suffix}.tmp"
    tmp.write_text(json.dumps(record))
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    link = USERDB / f"{number}.{suffix}"
    if not link.is_symlink():
        tmp_link = USERDB / f".{number}.{suffix}.tmp"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(target.name)
        os.replace(tmp_link, link)


def ensure(uids: Iterable[int], gids: Iterable[int]) -> list[str]:
    """Register every ID the host cannot resolve; return the names written."""
    written = []
    # Root is every host's (and its NSS modules' first load costs a run 0.2 ms).
    uids, gids = set(uids) - {0}, set(gids) - {0}
    for uid in sorted(uids):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            name = f"podmgr-u{uid}"
            _write(
                name,
                "user",
                uid,
                {
                    "userName": name,
                    "uid": uid,
                    "gid": uid,
                    "disposition": "container",
                    "homeDirectory": "/",
                    "shell": "/bin/sh",
                    "locked": True,
                },
            )
            written.append(name)
    for gid in sorted(gids | uids):
        try:
            grp.getgrgid(gid)
        except KeyError:
            name = f"podmgr-g{gid}"
            _write(name, "group", gid, {"groupName": name, "gid": gid, "disposition": "container"})
            written.append(name)
    return written
