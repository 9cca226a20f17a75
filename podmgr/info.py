"""Version information."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from podmgr import APPC_SPEC_VERSION, __version__
from podmgr.errors import PodmgrError


@dataclass(frozen=True)
class Versions:
    kind: ClassVar[str] = "Versions"
    podmgr: str
    appc_spec: str
    systemd: str | None
    systemd_error: str | None = None

    def text(self) -> str:
        sd = self.systemd or f"not reachable ({self.systemd_error})"
        return f"podmgr {self.podmgr}\nappc spec {self.appc_spec}\nsystemd {sd}"


def versions(bus: str | None = None) -> Versions:
    """podmgr's version, the appc spec version, and systemd's (None if unreachable)."""
    from podmgr import systemd

    try:
        with systemd.connect(bus) as sd:
            return Versions(__version__, APPC_SPEC_VERSION, sd.version())
    except PodmgrError as e:
        return Versions(__version__, APPC_SPEC_VERSION, None, e.message)
