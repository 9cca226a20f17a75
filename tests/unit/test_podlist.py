"""podmgr list reads pod records as plain JSON: it must agree with podstate's records."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from podmgr import podlist, podstate
from podmgr.podlist import PodState
from podmgr.podstate import AppRecord, PodRecord

T0 = datetime(2026, 11, 28, 4, 0, 0, 123456, tzinfo=UTC)


def record(uuid: str, **kw: object) -> PodRecord:
    app = AppRecord(
        name="web",
        image_id="sha512-" + "a" * 128,
        image_name="example.com/web",
        unit=f"podmgr-{uuid.replace('-', '')}-web.service",
        exec=("/bin/true",),
        uid=0,
        gid=0,
        lower=("/l",),
        rootfs="/r",
        rootfs_unit="r.mount",
    )
    kw.setdefault("created", T0)
    return PodRecord(uuid=uuid, apps=(app,), metadata_token="t", **kw)  # type: ignore[arg-type]


def save(state: Path, rec: PodRecord) -> None:
    d = podstate.pod_dir(state, rec.uuid)
    d.mkdir(parents=True)
    podstate.save(d, rec)


U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
U3 = "33333333-3333-4333-8333-333333333333"


def test_records_written_by_podstate_list_with_their_fields(tmp_path: Path) -> None:
    save(tmp_path, record(U1))
    save(tmp_path, record(U2, started=T0, boot_id="other-boot"))
    save(tmp_path, record(U3, started=T0, garbage=T0))
    (tmp_path / "pods" / ".prep-x").mkdir()  # a pod being prepared is not listed
    result = podlist.list_result(tmp_path)
    assert [(p.uuid, p.state) for p in result.pods] == [
        (U1, PodState.PREPARED),
        (U2, PodState.EXITED),  # started in another boot
        (U3, PodState.GARBAGE),
    ]
    first = result.pods[0]
    assert (first.apps, first.images, first.created, first.started) == (
        ["web"],
        ["example.com/web"],
        T0,
        None,
    )
    assert result.data()[1]["started"] == T0.isoformat()


def test_running_needs_an_active_app_unit_in_this_boot() -> None:
    unit = "podmgr-x-web.service"
    kw = {"garbage": None, "started": T0, "boot": "b", "units": [unit], "current_boot": "b"}
    assert podlist.derive_state(active={unit: "active"}, **kw) is PodState.RUNNING  # type: ignore[arg-type]
    assert podlist.derive_state(active={unit: "failed"}, **kw) is PodState.EXITED  # type: ignore[arg-type]
    assert podlist.derive_state(active={}, **kw) is PodState.EXITED  # type: ignore[arg-type]
    kw["current_boot"] = "a"
    assert podlist.derive_state(active={unit: "active"}, **kw) is PodState.EXITED  # type: ignore[arg-type]


def test_unreadable_or_newer_records_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save(tmp_path, record(U1))
    bad = tmp_path / "pods" / U2
    bad.mkdir()
    (bad / "pod.json").write_text("{not json")
    newer = tmp_path / "pods" / U3
    newer.mkdir()
    data = json.loads(record(U3).model_dump_json())
    data["version"] = podlist.POD_RECORD_VERSION + 1
    (newer / "pod.json").write_text(json.dumps(data))
    assert [p.uuid for p in podlist.list_result(tmp_path).pods] == [U1]
    assert U2 in caplog.text and U3 in caplog.text and "newer" in caplog.text


def test_list_versions_agree() -> None:
    assert podlist.POD_RECORD_VERSION == podstate.POD_RECORD_VERSION


def test_list_does_not_import_pydantic(tmp_path: Path) -> None:
    # Start-up cost: pydantic and the models cost more than reading 1000 records.
    code = (
        "import sys\n"
        "from podmgr.__main__ import main\n"
        "try:\n"
        f"    main(['--dir', {str(tmp_path)!r}, 'list'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'pydantic' not in sys.modules, 'pydantic imported'\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_pods_are_listed_oldest_first_with_exit_codes_and_ports(tmp_path: Path) -> None:
    # UUID order is the reverse of creation order, so a sort by UUID fails this.
    save(tmp_path, record(U3))
    late = T0 + timedelta(seconds=1)
    save(tmp_path, record(U1, created=late, started=late, boot_id="other-boot"))
    save(
        tmp_path,
        record(
            U2,
            created=T0 + timedelta(microseconds=1),
            started=T0,
            boot_id="other-boot",
            ports=(("http", "tcp", 80, 8080, "127.0.0.1"),),
        ),
    )
    failed = podstate.AppExit(name="web", result="exit-code", code="exited", status=3, time=late)
    pdir = podstate.pod_dir(tmp_path, U2)
    (pdir / "apps" / "web").mkdir(parents=True)
    podstate.write_app_exit(pdir, failed)
    result = podlist.list_result(tmp_path)
    assert [(p.uuid, p.state, p.exit_code) for p in result.pods] == [
        (U3, PodState.PREPARED, None),  # not exited: no exit code
        (U2, PodState.EXITED, 3),
        (U1, PodState.EXITED, None),  # exited without a record of its apps' ends
    ]
    data = result.data()
    assert data[1]["exit_code"] == 3
    assert data[1]["ports"] == [
        {
            "name": "http",
            "host_ip": "127.0.0.1",
            "host_port": 8080,
            "container_port": 80,
            "protocol": "tcp",
        }
    ]
    assert data[0]["ports"] == [] and data[0]["exit_code"] is None
    lines = result.text().splitlines()
    assert lines[0].split() == [
        "UUID",
        "APPS",
        "IMAGES",
        "STATE",
        "EXIT",
        "CREATED",
        "STARTED",
        "PORTS",
    ]
    assert lines[2].split()[3:5] == ["exited", "3"]
    assert lines[2].split()[-1] == "http=127.0.0.1:8080->80/tcp"
    assert lines[1].split()[4] == "-"


def test_port_text_brackets_ipv6_and_omits_an_unset_host_ip() -> None:
    assert podlist.Port("dns", "udp", 53, 5353, "::1").text() == "dns=[::1]:5353->53/udp"
    assert podlist.Port("http", "tcp", 80, 8080).text() == "http=8080->80/tcp"


def test_pods_created_together_are_ordered_by_uuid() -> None:
    def entry(uuid: str) -> podlist.PodListEntry:
        return podlist.PodListEntry(uuid, [], [], PodState.PREPARED, T0, None)

    assert [p.uuid for p in podlist.by_creation([entry(U2), entry(U1)])] == [U1, U2]
