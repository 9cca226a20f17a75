"""What a pod is asked to be: the command line's (or a pod manifest's) options.

Plain dataclasses, so that the CLI can build them, and :mod:`podmgr.podtemplate` key a
template on them, without importing the manifest models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podmgr.options import ExitPolicy, NetMode, RestartPolicy


@dataclass
class AppSpec:
    """One app as given on the command line (``IMAGE [APP OPTIONS]``)."""

    image: str
    name: str | None = None
    exec: str | None = None
    args: list[str] = field(default_factory=list)
    user: str | None = None
    group: str | None = None
    supplementary_gids: list[int] | None = None
    working_dir: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    mounts: list[tuple[str, str]] = field(default_factory=list)
    readonly_rootfs: bool = False
    isolators: list[dict[str, Any]] = field(default_factory=list)
    restart: RestartPolicy = RestartPolicy.NO


@dataclass
class PodSpec:
    apps: list[AppSpec]
    volumes: list[dict[str, Any]] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    inherit_env: bool = False
    exit_policy: ExitPolicy = ExitPolicy.ON_ANY_FAILURE
    #: --net: the default network, as in rkt (podmgr.network).
    net: NetMode = NetMode.CNI
    networks: tuple[str, ...] = ("default",)
    #: --port, as the pod manifest's exposed ports: {"name", "hostPort"[, "hostIP"]}.
    ports: list[dict[str, Any]] = field(default_factory=list)
    names: Any = None  # podmgr.netspec.Names: --dns, --hosts-entry, --hostname, …
    user_annotations: dict[str, str] = field(default_factory=dict)
    user_labels: dict[str, str] = field(default_factory=dict)
    pod_manifest: Path | None = None
    fetch_options: Any = None
