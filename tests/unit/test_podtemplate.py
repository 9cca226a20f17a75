"""Pod templates: identity rewriting and keys (the clone itself is tested in the box)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from podmgr import names, podtemplate
from podmgr.podspec import AppSpec, PodSpec

OLD = "0f1e2d3c-4b5a-4697-8877-665544332211"
NEW = "a1b2c3d4-e5f6-4789-8abc-def012345678"
T_OLD = "oldtoken_oldtoken_oldtoken_0123"
T_NEW = "newtoken-newtoken-newtoken-4567"


def test_every_spelling_of_the_identity_is_rewritten() -> None:
    escaped = OLD.replace("-", "\\x2d")
    text = json.dumps(
        {
            "uuid": OLD,
            "unit": names.app_service(OLD, "web"),
            "mount": f"tmp-pods-{escaped}-apps-web-rootfs.mount",
            "env": [f"AC_METADATA_URL=http://127.0.0.1:18112/{T_OLD}", f"PODMGR_POD={OLD}"],
            "hostname": names.machine_name(OLD),
        }
    ).encode()
    out = podtemplate._rewrite(
        text,
        podtemplate._identity(OLD, T_OLD),
        podtemplate._identity_like(OLD, T_OLD, NEW, T_NEW),
    )
    for form in (OLD, names.pod_hex(OLD), T_OLD, "0f1e2d3c"):
        assert form.encode() not in out
    doc = json.loads(out)
    assert doc["uuid"] == NEW
    assert doc["unit"] == names.app_service(NEW, "web")
    assert doc["mount"] == f"tmp-pods-{NEW.replace('-', chr(92) + 'x2d')}-apps-web-rootfs.mount"
    assert doc["env"] == [f"AC_METADATA_URL=http://127.0.0.1:18112/{T_NEW}", f"PODMGR_POD={NEW}"]
    assert doc["hostname"] == names.machine_name(NEW)


def _k(state: Path, spec: PodSpec, ids: list[str]) -> Any:
    return podtemplate._key(state, podtemplate.spec_doc(spec), ids)


S = Path("/var/lib/podmgr")
SPEC = PodSpec(apps=[AppSpec(image="example.com/app", environment={"A": "1"})])


@pytest.mark.parametrize(
    "other",
    [
        dataclasses.replace(SPEC, environment={"B": "2"}),
        dataclasses.replace(SPEC, apps=[AppSpec(image="example.com/app", name="x")]),
        dataclasses.replace(SPEC, apps=[AppSpec(image="example.com/app", args=["-v"])]),
        dataclasses.replace(SPEC, volumes=[{"name": "v", "kind": "empty"}]),
        dataclasses.replace(SPEC, inherit_env=True),
        dataclasses.replace(SPEC, user_labels={"k": "v"}),
    ],
)
def test_any_other_option_is_another_key(other: PodSpec) -> None:
    key, mine = _k(S, other, ["sha512-a"]), _k(S, SPEC, ["sha512-a"])
    assert key.text != mine.text and key.name != mine.name  # another directory


def test_keys_follow_images_and_inherited_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    key = _k(S, SPEC, ["sha512-a"])
    assert _k(S, SPEC, ["sha512-a"]) == key
    assert _k(S, SPEC, ["sha512-b"]) != key
    assert _k(Path("/srv/podmgr"), SPEC, ["sha512-a"]) != key
    inherit = dataclasses.replace(SPEC, inherit_env=True)
    before = _k(S, inherit, ["sha512-a"])
    monkeypatch.setenv("SOMETHING_ELSE", "1")
    assert _k(S, inherit, ["sha512-a"]) != before
    assert _k(S, SPEC, ["sha512-a"]) == key  # not read without --inherit-env
    monkeypatch.setenv("PODMGR_METADATA_URL", "http://10.0.0.1:1")
    assert _k(S, SPEC, ["sha512-a"]) != key


def test_templates_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert podtemplate.enabled()
    monkeypatch.setenv("PODMGR_TEMPLATES", "0")
    assert not podtemplate.enabled()


def test_host_files_copied_into_the_pod_are_part_of_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from podmgr import netspec
    from podmgr.network import Names
    from podmgr.options import NetMode

    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    monkeypatch.setattr(podtemplate, "_HOST_FILES", (str(hosts),))
    resolv, upstream = tmp_path / "resolv.conf", tmp_path / "upstream.conf"
    resolv.write_text("nameserver 127.0.0.53\n")
    upstream.write_text("nameserver 192.0.2.1\n")
    monkeypatch.setattr(netspec, "HOST_RESOLV_CONF", str(resolv))
    monkeypatch.setattr(netspec, "RESOLVED_UPSTREAM", str(upstream))
    host_net = dataclasses.replace(SPEC, net=NetMode.HOST)
    plain, on_host = _k(S, SPEC, ["sha512-a"]), _k(S, host_net, ["sha512-a"])
    with_hosts = dataclasses.replace(SPEC, names=Names(hosts_entries=("host",)))
    key = _k(S, with_hosts, ["sha512-a"])
    # The default network's pod gets the host's resolvers: resolved's upstream servers here.
    upstream.write_text("nameserver 192.0.2.2\n")
    assert _k(S, SPEC, ["sha512-a"]) != plain
    assert _k(S, host_net, ["sha512-a"]) == on_host  # --net=host: the image's resolv.conf
    hosts.write_text("127.0.0.1 localhost\n10.0.0.1 db\n")
    assert _k(S, with_hosts, ["sha512-a"]) != key
    assert _k(S, host_net, ["sha512-a"]) == on_host  # hosts not read without the option
    # The key holds the file prepare writes, which tells what changed.
    assert "nameserver 192.0.2.2" in _k(S, SPEC, ["sha512-a"]).text


def test_a_packages_origin_is_where_import_would_take_it_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key names jeepney's location as importlib.util.find_spec would, without it."""
    import importlib.util

    assert podtemplate._origin("jeepney") == importlib.util.find_spec("jeepney").origin  # type: ignore[union-attr]
    assert podtemplate._origin("no_such_package_here") is None
    # The first entry of sys.path that has it wins; "" is the working directory.
    for d in ("a", "b"):
        (tmp_path / d / "pkgx").mkdir(parents=True)
        (tmp_path / d / "pkgx" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path / "b")
    monkeypatch.setattr("sys.path", ["", str(tmp_path / "a")])
    assert podtemplate._origin("pkgx") == str(tmp_path / "b" / "pkgx" / "__init__.py")
    monkeypatch.setattr("sys.path", [str(tmp_path / "a"), ""])
    assert podtemplate._origin("pkgx") == str(tmp_path / "a" / "pkgx" / "__init__.py")
