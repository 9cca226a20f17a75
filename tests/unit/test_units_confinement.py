"""Confinement as unit properties: the system call ABIs an app may use, the kernel log
and modules, the host's /sys."""

from __future__ import annotations

from typing import Any

import pytest

from podmgr import isolators as iso
from podmgr import units

pytestmark = pytest.mark.unit

UUID = "00000000-0000-0000-0000-000000000001"


def props(
    *,
    native_abi: bool = True,
    isolators: tuple[Any, ...] = (),
    netns: str | None = None,
    sysfs: str | None = None,
    binds: tuple[units.Bind, ...] = (),
    read_only_rootfs: bool = False,
) -> dict[str, Any]:
    app = units.AppPlan(
        name="web",
        exec=("/bin/httpd",),
        uid=0,
        gid=0,
        rootfs="/r",
        native_abi=native_abi,
        isolators=isolators,
        binds=binds,
        read_only_rootfs=read_only_rootfs,
    )
    pod = units.PodPlan(uuid=UUID, apps=(app,), netns_path=netns, sysfs_path=sysfs)
    return units.app_properties(app, pod)


def caps(names: list[str]) -> Any:
    return iso.CapabilitiesRetainSetIsolator.model_validate(
        {"name": "os/linux/capabilities-retain-set", "value": {"set": names}}
    )


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


SYSLOG = 1 << units.CAP_NUMBERS["SYSLOG"]
SYS_MODULE = 1 << units.CAP_NUMBERS["SYS_MODULE"]


def test_the_kernel_log_is_kept_from_apps_by_their_one_filter() -> None:
    # The default: no CAP_SYSLOG (/proc/kmsg refused by the kernel), syslog(2) denied.
    p = props()
    assert not p["CapabilityBoundingSet"] & SYSLOG
    assert p["SystemCallFilter"][0] is False and "syslog" in p["SystemCallFilter"][1]
    assert "ProtectKernelLogs" not in p and "ProtectKernelModules" not in p
    # A deny list of the manifest's gets syslog too, an allow list loses it.
    deny = props(isolators=(seccomp({"set": ["ptrace"]}, retain=False),))
    assert deny["SystemCallFilter"] == (False, ["ptrace", "syslog"])
    allow = props(isolators=(seccomp({"set": ["read", "syslog"]}, retain=True),))
    assert allow["SystemCallFilter"][0] is True
    assert "syslog" not in allow["SystemCallFilter"][1] and "read" in allow["SystemCallFilter"][1]
    # No filter at all: systemd's ProtectKernelLogs= does it.
    off = props(isolators=(seccomp({"set": ["@appc.io/all"]}, retain=True),))
    assert off["ProtectKernelLogs"] is True and "SystemCallFilter" not in off


def test_a_manifest_that_retains_cap_syslog_or_sys_module_gets_them() -> None:
    p = props(isolators=(caps(["CAP_SYSLOG", "CAP_SYS_MODULE"]),))
    assert p["CapabilityBoundingSet"] == SYSLOG | SYS_MODULE
    assert "syslog" not in p["SystemCallFilter"][1]
    assert "ProtectKernelLogs" not in p and "ProtectKernelModules" not in p
    # Without CAP_SYS_MODULE (the default) the kernel refuses modules, and the default
    # deny list blocks their calls.
    d = props()
    assert not d["CapabilityBoundingSet"] & SYS_MODULE
    assert {"init_module", "finit_module", "delete_module"} <= set(d["SystemCallFilter"][1])


def test_the_host_network_gets_the_hosts_sysfs_alone_read_only() -> None:
    p = props()
    assert ("/sys", "/sys", False, 0) in p["BindReadOnlyPaths"]  # no MS_REC
    # ProtectKernelTunables='s /proc part, in the app's root, where the kernel has it.
    assert "ProtectKernelTunables" not in p and "ProtectControlGroups" not in p
    ro = p["ReadOnlyPaths"]
    assert {"-+/proc/sys", "-+/proc/sysrq-trigger", "-+/proc/irq", "-+/proc/bus"} <= set(ro)
    assert all(x.startswith("-+/proc/") for x in ro)
    # Without CAP_SYSLOG or CAP_SYS_RAWIO nothing is kept from kallsyms and kcore.
    assert "InaccessiblePaths" not in p
    loose = props(isolators=(caps(["CAP_SYSLOG", "CAP_SYS_RAWIO"]),))
    assert loose["InaccessiblePaths"] == ["-+/proc/kallsyms", "-+/proc/kcore"]
    # A read-only root keeps them.
    p = props(read_only_rootfs=True)
    assert p["ReadOnlyPaths"][0] == "/" and "-+/proc/sys" in p["ReadOnlyPaths"]
    # A pod network: the sysfs of that namespace alone, read-only, likewise.
    own = props(netns="/run/netns/podmgr-x", sysfs="/run/podmgr/sysfs/podmgr-x")
    assert own["BindReadOnlyPaths"] == [("/run/podmgr/sysfs/podmgr-x", "/sys", False, 0)]
    assert own["ReadOnlyPaths"] == list(units.KERNEL_TUNABLES)
    assert "ProtectKernelTunables" not in own
    # Without one (a plan that names none): systemd's sysfs of the namespace, with all
    # that is beneath it read-only.
    own = props(netns="/run/netns/podmgr-x")
    assert "BindReadOnlyPaths" not in own and "ReadOnlyPaths" not in own
    assert own["ProtectKernelTunables"] is True and own["ProtectControlGroups"] is True
    # A volume of the manifest's at /sys wins.
    vol = props(binds=(units.Bind(source="/srv/sys", target="/sys", read_only=True),))
    assert vol["BindReadOnlyPaths"] == [("/srv/sys", "/sys", False, units.MS_REC)]
    assert vol["ProtectKernelTunables"] is True
