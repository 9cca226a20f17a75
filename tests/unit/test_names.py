"""Names podmgr derives: UUIDs, and the apps' overlay options."""

from __future__ import annotations

import uuid as uuidlib
from pathlib import Path

import pytest

from podmgr import names, rootfs

pytestmark = pytest.mark.unit


def test_new_uuids_are_random_version_4_uuids() -> None:
    made = {names.new_uuid() for _ in range(1000)}
    assert len(made) == 1000
    for u in made:
        parsed = uuidlib.UUID(u)
        assert str(parsed) == u
        assert parsed.version == 4 and parsed.variant == uuidlib.RFC_4122


def test_overlay_options_list_lower_layers_top_first() -> None:
    opts = rootfs.overlay_options(["/base", "/top"], "/a/upper", "/a/work")
    assert opts == "lowerdir=/top:/base,upperdir=/a/upper,workdir=/a/work"


def test_unmounting_what_is_not_mounted_does_nothing(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    rootfs.unmount_roots([str(tmp_path / "rootfs"), str(tmp_path / "gone")])
    assert (tmp_path / "rootfs").is_dir()
