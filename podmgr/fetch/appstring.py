"""App strings (discovery.md): ``name[:version][,label=value…]`` and the host's os/arch.

Split from :mod:`podmgr.fetch.discovery` (which re-exports all of it) so that naming a
stored image, on the start-up path of ``podmgr run``, imports no HTML parser or HTTP.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from podmgr.errors import UsageError

#: AC Identifier (types.md), used for image names and label names.
AC_IDENTIFIER = re.compile(r"^[a-z0-9]+([-._~/][a-z0-9]+)*\Z")
DEFAULT_VERSION = "latest"

#: ``uname -m`` → appc arch label, after appc's ``ToAppcOSArch`` table.
_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "i386": "i386",
    "i486": "i386",
    "i586": "i386",
    "i686": "i386",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "aarch64_be": "aarch64_be",
    "armv6l": "armv6l",
    "armv7l": "armv7l",
    "armv7b": "armv7b",
    "ppc64": "ppc64",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}


def host_os_arch() -> tuple[str, str]:
    """The host's (os, arch) labels in appc spelling."""
    u = os.uname()  # what platform.system()/machine() return, without importing it
    system = u.sysname.lower()
    machine = u.machine.lower()
    if system == "freebsd" and machine.startswith("arm"):
        return system, "arm"
    arch = _ARCH.get(machine, machine)
    # aci.md's table spells darwin's 64-bit arch x86_64, not amd64.
    return system, "x86_64" if system == "darwin" and arch == "amd64" else arch


@dataclass(frozen=True)
class AppString:
    name: str
    #: All labels used for discovery, defaults included.
    labels: Mapping[str, str]
    #: Names of the labels the user wrote (a store lookup may match only those).
    explicit: frozenset[str] = field(default_factory=frozenset)

    def __str__(self) -> str:
        import urllib.parse

        extra = "".join(
            f",{k}={urllib.parse.quote(v, safe='')}"
            for k, v in sorted(self.labels.items())
            if k != "version"
        )
        return f"{self.name}:{self.labels.get('version', DEFAULT_VERSION)}{extra}"


def _unquote(text: str) -> str:
    if "%" not in text:
        return text  # and urllib.parse (which imports ipaddress) stays out of `run`
    import urllib.parse

    return urllib.parse.unquote(text)


def parse_app_string(s: str) -> AppString:
    """Parse ``name[:version][,label=value…]``, filling version/os/arch defaults."""

    def bad(why: str) -> UsageError:
        return UsageError(
            f"invalid app string {s!r}: {why}",
            hint="write it as name[:version][,label=value…], e.g. example.com/app:1.0,os=linux",
        )

    head, *rest = s.split(",")
    if head.count(":") > 1:
        raise bad("more than one ':'")
    name, colon, version = head.partition(":")
    if not AC_IDENTIFIER.match(name):
        raise bad(f"name {name!r} is not an AC identifier (lowercase a-z, 0-9 and -._~/)")
    labels: dict[str, str] = {}
    if colon:
        if not version:
            raise bad("empty version after ':'")
        labels["version"] = _unquote(version)
    for item in rest:
        key, eq, value = item.partition("=")
        if not eq:
            raise bad(f"label {item!r} has no '='" if item else "empty label")
        if ":" in item:
            raise bad("':' is only allowed between the name and the version")
        if not AC_IDENTIFIER.match(key) or key == "name":
            raise bad(f"label name {key!r} is not an AC identifier other than 'name'")
        if key in labels:
            raise bad(f"label {key!r} given twice")
        labels[key] = _unquote(value)
    explicit = frozenset(labels)
    os_, arch = host_os_arch()
    labels.setdefault("version", DEFAULT_VERSION)
    labels.setdefault("os", os_)
    labels.setdefault("arch", arch)
    return AppString(name, labels, explicit)
