"""Confinement as unit properties: the system call ABIs an app may use."""

from __future__ import annotations

from typing import Any

import pytest

from podmgr import isolators as iso
from podmgr import units

pytestmark = pytest.mark.unit

UUID = "00000000-0000-0000-0000-000000000001"


def props(*, native_abi: bool, isolators: tuple[Any, ...] = ()) -> dict[str, Any]:
    app = units.AppPlan(
        name="web",
        exec=("/bin/httpd",),
        uid=0,
        gid=0,
        rootfs="/r",
        native_abi=native_abi,
        isolators=isolators,
    )
    return units.app_properties(app, units.PodPlan(uuid=UUID, apps=(app,)))


def seccomp(value: dict[str, Any], *, retain: bool) -> Any:
    if retain:
        return iso.SeccompRetainSetIsolator.model_validate(
            {"name": "os/linux/seccomp-retain-set", "value": value}
        )
    return iso.SeccompRemoveSetIsolator.model_validate(
        {"name": "os/linux/seccomp-remove-set", "value": value}
    )


def test_an_image_for_the_host_uses_only_the_native_system_call_abi() -> None:
    p = props(native_abi=True)
    assert p["SystemCallArchitectures"] == ["native"]
    assert p["SystemCallFilter"][0] is False  # the default deny list
    # With an allow list too.
    p = props(native_abi=True, isolators=(seccomp({"set": ["read", "write"]}, retain=True),))
    assert p["SystemCallArchitectures"] == ["native"]


def test_an_image_for_another_arch_and_no_filter_keep_every_abi() -> None:
    # An i386 image on an amd64 host makes i386 system calls.
    assert "SystemCallArchitectures" not in props(native_abi=False)
    # @appc.io/all: no filtering at all, the ABIs included.
    everything = seccomp({"set": ["@appc.io/all"]}, retain=True)
    p = props(native_abi=True, isolators=(everything,))
    assert "SystemCallFilter" not in p and "SystemCallArchitectures" not in p
