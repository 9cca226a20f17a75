"""podmgr.schema: the appc types and manifests, against the spec text and its examples."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from podmgr import isolators as iso
from podmgr import schema
from podmgr.errors import ExitCode, InvalidError

REPO = Path(__file__).resolve().parents[2]
# CI clones the repository next to shared/, so the spec is found from the repo's parent.
SPEC = REPO.parent / "shared" / "appc-spec"
DATA = REPO / "tests" / "data" / "schema"
TYPES = json.loads((DATA / "types.json").read_text())

ID = "sha512-" + "ab" * 64


def image(**app: Any) -> dict[str, Any]:
    return {
        "acKind": "ImageManifest",
        "acVersion": "0.8.11",
        "name": "example.com/x",
        "app": {"exec": ["/bin/x"], "user": "0", "group": "0", **app},
    }


def pod(**extra: Any) -> dict[str, Any]:
    return {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [{"name": "a", "image": {"name": "example.com/x", "id": ID}}],
        **extra,
    }


def invalid(fn: Any, *args: Any, **kw: Any) -> str:
    with pytest.raises(InvalidError) as e:
        fn(*args, **kw)
    assert e.value.exit_code is ExitCode.INVALID
    assert "\n" not in e.value.message
    return e.value.message


# --- the spec's examples ---------------------------------------------------------------


def test_spec_examples_are_present() -> None:
    names = sorted(p.name for p in (SPEC / "examples").glob("*.json"))
    assert names == ["image.json", "pod_runtime.json", "pod_template.json"], SPEC


def test_example_image_manifest() -> None:
    text = (SPEC / "examples" / "image.json").read_text()
    # The example's dependency imageID is the placeholder "sha512-...", which types.md's
    # Image ID ("the hex encoded string of the digest") does not allow: say so, precisely.
    msg = invalid(schema.parse_image_manifest, text)
    assert msg.startswith("dependencies[0].imageID: 'sha512-...' is not an image ID")
    m = schema.parse_image_manifest(text.replace('"sha512-..."', f'"{ID}"'))
    assert m.name == "example.com/reduce-worker"
    assert (m.version, m.os, m.arch) == ("1.0.0", "linux", "amd64")
    assert m.app is not None and m.app.exec == ("/usr/bin/reduce-worker", "--quiet")
    names = [i.name for i in m.app.isolators]
    assert names[0] == "resource/cpu" and names[-1] == "os/linux/seccomp-remove-set"
    assert isinstance(m.app.isolators[0], iso.CPUIsolator)
    assert m.app.isolators[0].value.limit_millicores == 20
    assert isinstance(m.app.isolators[1], iso.MemoryIsolator)
    assert m.app.isolators[1].value.limit_bytes == 10**9
    seccomp = m.app.isolators[4]
    assert isinstance(seccomp, iso.SeccompRemoveSetIsolator)
    assert seccomp.value.errno == "EACCESS"
    assert m.app.event_handler("pre-start") is not None
    assert m.app.ports[0].socket_activated is True
    assert m.annotations.get("homepage") == "https://example.com"
    assert m.dependencies[0].labels.get("env") == "canary"
    assert m.path_whitelist[-1] == "/etc/systemd/system/"


def test_example_pod_runtime() -> None:
    m = schema.parse_pod_manifest((SPEC / "examples" / "pod_runtime.json").read_bytes())
    assert [a.name for a in m.apps] == ["reduce-worker", "backup", "register"]
    assert m.app("backup") is not None
    vol = m.volume("buildoutput")
    assert vol is not None and (vol.kind, vol.mode, vol.uid) == ("empty", "0777", 0)
    sysctl = m.isolators[1]
    assert isinstance(sysctl, iso.SysctlIsolator)
    assert sysctl.value == {"net.ipv4.tcp_fin_timeout": "6"}
    assert m.annotations.get("ip-address") == "10.1.2.3"


def test_example_pod_template() -> None:
    text = (SPEC / "examples" / "pod_template.json").read_text()
    m = schema.parse_pod_manifest(text, template=True)
    assert m.ac_version == "0.3.0"
    assert m.apps[1].image.id is None
    # A template is not runnable until reified: pods.md, "by image ID".
    assert invalid(schema.parse_pod_manifest, text).startswith("apps[1].image.id: is required")


def test_examples_in_spec_text_parse() -> None:
    """The JSON blocks in aci.md and pods.md (same placeholder as image.json)."""
    for doc, parse in (("aci.md", schema.parse_image_manifest),
                       ("pods.md", schema.parse_pod_manifest)):
        text = (SPEC / doc).read_text()
        block = text.split("```json\n", 1)[1].split("```", 1)[0]
        parse(block.replace('"sha512-..."', f'"{ID}"'))


# --- types tables ----------------------------------------------------------------------


@pytest.mark.parametrize("value", TYPES["ac_name"]["good"])
def test_ac_name_good(value: str) -> None:
    assert schema.is_ac_name(value)
    assert schema.validate_ac_name(value) == value
    schema.parse_image_manifest(image(mountPoints=[{"name": value, "path": "/x"}]))


@pytest.mark.parametrize("value", TYPES["ac_name"]["bad"])
def test_ac_name_bad(value: str) -> None:
    assert not schema.is_ac_name(value)
    assert invalid(schema.validate_ac_name, value, "volume").startswith("volume: ")
    msg = invalid(schema.parse_image_manifest, image(ports=[
        {"name": "ok", "port": 1, "protocol": "tcp"},
        {"name": value, "port": 2, "protocol": "tcp"},
    ]))
    assert msg.startswith(f"app.ports[1].name: {value!r} is not a valid AC Name")


@pytest.mark.parametrize("value", TYPES["ac_identifier"]["good"])
def test_ac_identifier_good(value: str) -> None:
    assert schema.is_ac_identifier(value)
    m = schema.parse_image_manifest({**image(), "name": value})
    assert m.name == value


@pytest.mark.parametrize("value", TYPES["ac_identifier"]["bad"])
def test_ac_identifier_bad(value: str) -> None:
    assert not schema.is_ac_identifier(value)
    labels = [{"name": value, "value": ""}]
    msg = invalid(schema.parse_image_manifest, {**image(), "labels": labels})
    assert msg.startswith(f"labels[0].name: {value!r} is not a valid AC Identifier")


@pytest.mark.parametrize("value", TYPES["ac_version"]["good"])
def test_ac_version_good(value: str) -> None:
    assert schema.parse_pod_manifest(pod(acVersion=value)).ac_version == value


@pytest.mark.parametrize("value", TYPES["ac_version"]["bad"])
def test_ac_version_bad(value: str) -> None:
    assert invalid(schema.parse_pod_manifest, pod(acVersion=value)).startswith("acVersion: ")


@pytest.mark.parametrize("value", TYPES["image_id"]["good"])
def test_image_id_good(value: str) -> None:
    assert schema.is_image_id(value)
    deps = [{"imageName": "example.com/base", "imageID": value}]
    m = schema.parse_image_manifest({**image(), "dependencies": deps})
    assert m.dependencies[0].image_id == value


@pytest.mark.parametrize("value", TYPES["image_id"]["bad"])
def test_image_id_bad(value: str) -> None:
    assert not schema.is_image_id(value)
    p = pod()
    p["apps"][0]["image"]["id"] = value
    assert invalid(schema.parse_pod_manifest, p).startswith(f"apps[0].image.id: {value!r}")


def test_image_id_is_lower_cased() -> None:
    p = pod()
    p["apps"][0]["image"]["id"] = ID.upper().replace("SHA512", "sha512")
    assert schema.parse_pod_manifest(p).apps[0].image.id == ID


@pytest.mark.parametrize("value", TYPES["env_name"]["good"])
def test_env_name_good(value: str) -> None:
    m = schema.parse_image_manifest(image(environment=[{"name": value, "value": "v"}]))
    assert m.app is not None and m.app.environment.get(value) == "v"


@pytest.mark.parametrize("value", TYPES["env_name"]["bad"])
def test_env_name_bad(value: str) -> None:
    env = [{"name": "OK", "value": ""}, {"name": value, "value": "v"}]
    msg = invalid(schema.parse_image_manifest, image(environment=env))
    assert msg.startswith("app.environment[1].name: ")


def test_env_duplicates() -> None:
    env = [{"name": "A", "value": "1"}, {"name": "B", "value": ""}, {"name": "A", "value": "2"}]
    msg = invalid(schema.parse_image_manifest, image(environment=env))
    assert msg == "app.environment[2].name: duplicate environment variable name 'A'"


@pytest.mark.parametrize("value", TYPES["date"]["good"])
def test_date_good(value: str) -> None:
    schema.parse_date(value)
    schema.parse_image_manifest({**image(), "annotations": [{"name": "created", "value": value}]})


@pytest.mark.parametrize("value", TYPES["date"]["bad"])
def test_date_bad(value: str) -> None:
    with pytest.raises(ValueError):
        schema.parse_date(value)
    anns = [{"name": "created", "value": value}]
    assert invalid(schema.parse_image_manifest, {**image(), "annotations": anns}).startswith(
        "annotations[0].value: ")


@pytest.mark.parametrize(("text", "expected"), sorted(TYPES["quantity"]["bytes"].items()))
def test_quantity_bytes(text: str, expected: int) -> None:
    assert iso.quantity_bytes(text) == expected


@pytest.mark.parametrize(("text", "expected"), sorted(TYPES["quantity"]["millicores"].items()))
def test_quantity_millicores(text: str, expected: int) -> None:
    assert iso.quantity_millicores(text) == expected


@pytest.mark.parametrize("text", TYPES["quantity"]["bad"])
def test_quantity_bad(text: str) -> None:
    with pytest.raises(ValueError, match="is not valid"):
        iso.parse_quantity(text)
    isolators = [{"name": "resource/cpu", "value": {"limit": "1"}},
                 {"name": "resource/memory", "value": {"limit": "1G"}},
                 {"name": "resource/memory", "value": {"request": "1", "limit": text}}]
    msg = invalid(schema.parse_image_manifest, image(isolators=isolators))
    assert msg.startswith(f"app.isolators[2].value.limit: quantity {text!r} is not valid")


@pytest.mark.parametrize("text", TYPES["quantity"]["not_whole_bytes"])
def test_quantity_not_whole_bytes(text: str) -> None:
    with pytest.raises(ValueError, match="whole number of bytes"):
        iso.quantity_bytes(text)


@pytest.mark.parametrize("text", TYPES["quantity"]["not_whole_millicores"])
def test_quantity_not_whole_millicores(text: str) -> None:
    with pytest.raises(ValueError, match="whole number of millicores"):
        iso.quantity_millicores(text)


def test_quantity_upper_case_k_is_refused_with_both_spellings() -> None:
    # Kubernetes quantities: "1K" is neither 1k (1000) nor 1Ki (1024); say so.
    with pytest.raises(InvalidError) as ei:
        schema.parse_image_manifest(
            image(isolators=[{"name": "resource/memory", "value": {"limit": "1K"}}]))
    assert "app.isolators[0].value.limit" in str(ei.value)
    assert "write 1k for 1000s or 1Ki for 1024s" in str(ei.value)
    m = schema.parse_image_manifest(
        image(isolators=[{"name": "resource/memory", "value": {"limit": "1Ki"}}]))
    assert m.app is not None
    mem = m.app.isolators[0]
    assert isinstance(mem, iso.MemoryIsolator)
    assert (mem.value.limit_bytes, mem.value.request_bytes) == (1024, 1024)


# --- isolators -------------------------------------------------------------------------


def _iso_id(case: dict[str, Any]) -> str:
    return f"{case['name']}={json.dumps(case['value'])}"


@pytest.mark.parametrize("case", TYPES["isolators"], ids=_iso_id)
def test_app_isolator_values(case: dict[str, Any]) -> None:
    isolators = [{"name": "resource/cpu", "value": {"limit": "1"}},
                 {"name": case["name"], "value": case["value"]}]
    if case["error"] is None:
        m = schema.parse_image_manifest(image(isolators=isolators))
        assert m.app is not None and m.app.isolators[1].name == case["name"]
    else:
        msg = invalid(schema.parse_image_manifest, image(isolators=isolators))
        assert msg.startswith(f"app.isolators[1].{case['error']}") or (
            msg.startswith("app.isolators[1]") and case["error"] in msg), msg


@pytest.mark.parametrize("case", TYPES["pod_isolators"], ids=_iso_id)
def test_pod_isolator_values(case: dict[str, Any]) -> None:
    isolators = [{"name": case["name"], "value": case["value"]}]
    if case["error"] is None:
        schema.parse_pod_manifest(pod(isolators=isolators))
    else:
        msg = invalid(schema.parse_pod_manifest, pod(isolators=isolators))
        assert msg.startswith("isolators[0]") and case["error"] in msg, msg


def test_unknown_isolator_is_kept_raw() -> None:
    raw = {"profile": "docker-default", "nested": [1, None]}
    m = schema.parse_image_manifest(image(isolators=[{"name": "os/linux/apparmor", "value": raw}]))
    assert m.app is not None
    unknown = m.app.isolators[0]
    assert isinstance(unknown, iso.UnknownIsolator) and not unknown.known
    assert unknown.value == raw
    assert json.loads(schema.dump_manifest(m))["app"]["isolators"][0]["value"] == raw


@pytest.mark.parametrize(("first", "second", "error"), [
    ("os/linux/seccomp-remove-set", "os/linux/seccomp-retain-set", "cannot be used together"),
    ("os/linux/seccomp-remove-set", "os/linux/seccomp-remove-set", "only a single"),
    ("os/linux/capabilities-retain-set", "os/linux/capabilities-remove-set",
     "cannot be used together"),
])
def test_isolator_combinations(first: str, second: str, error: str) -> None:
    value = {"set": ["CAP_CHOWN"]} if "capabilities" in first else {"set": ["reboot"]}
    msg = invalid(schema.parse_image_manifest, image(isolators=[
        {"name": first, "value": value}, {"name": second, "value": value}]))
    assert msg.startswith("app.isolators[1]: ") and error in msg


def test_isolator_scope() -> None:
    msg = invalid(schema.parse_image_manifest, image(isolators=[
        {"name": "os/unix/sysctl", "value": {"net.core.somaxconn": "1024"}}]))
    assert msg == ("app.isolators[0]: os/unix/sysctl applies to pods only, not to apps "
                   "(ace.md: Scope)")


def test_isolator_not_an_object() -> None:
    msg = invalid(schema.parse_image_manifest, image(isolators=["resource/cpu"]))
    assert msg.startswith("app.isolators[0]: an isolator must be an object")


# --- image manifest fields -------------------------------------------------------------


def test_image_manifest_fields() -> None:
    m = schema.parse_image_manifest(image(
        supplementaryGids=[400, 500],
        workingDirectory="/opt/work",
        mountPoints=[{"name": "work", "path": "/var/lib/work"}],
        ports=[{"name": "ftp-data", "port": 20000, "count": 1000, "protocol": "tcp"}],
        userAnnotations={"any key": "v"},
        userLabels={"team": "x"},
        eventHandlers=[{"name": "post-stop", "exec": ["/bin/cleanup"]}],
    ))
    app = m.app
    assert app is not None
    assert app.supplementary_gids == (400, 500)
    assert app.mount_points[0].read_only is False
    assert app.ports[0].last == 20999 and app.ports[0].socket_activated is False
    assert app.user_annotations == {"any key": "v"}
    assert app.event_handler("pre-start") is None
    # The text's own spelling is supplementaryGIDs, and that is what is written.
    assert json.loads(schema.dump_manifest(m))["app"]["supplementaryGIDs"] == [400, 500]


@pytest.mark.parametrize(("app", "error"), [
    ({"user": ""}, "app.user: must not be empty"),
    ({"group": 0}, "app.group: input should be a valid string"),
    ({"exec": "/bin/x"}, "app.exec: input should be a valid tuple"),
    ({"workingDirectory": "opt"}, "app.workingDirectory: 'opt' is not an absolute path"),
    ({"supplementaryGIDs": [-1]}, "app.supplementaryGIDs[0]: input should be greater than"),
    ({"eventHandlers": [{"name": "pre-stop", "exec": []}]}, "app.eventHandlers[0].name: "),
    ({"eventHandlers": [{"name": "pre-start"}]}, "app.eventHandlers[0].exec: is required"),
    ({"eventHandlers": [{"name": "pre-start", "exec": ["a"]}, {"name": "pre-start", "exec": []}]},
     "app.eventHandlers[1].name: only one pre-start event handler is allowed"),
    ({"mountPoints": [{"name": "w"}]}, "app.mountPoints[0].path: is required"),
    ({"mountPoints": [{"name": "w", "path": "/w", "readOnly": "no"}]},
     "app.mountPoints[0].readOnly: input should be a valid boolean"),
    ({"ports": [{"name": "p", "port": 0, "protocol": "tcp"}]}, "app.ports[0].port: "),
    ({"ports": [{"name": "p", "port": 65536, "protocol": "tcp"}]}, "app.ports[0].port: "),
    ({"ports": [{"name": "p", "port": 80, "protocol": "tcp", "count": 0}]}, "app.ports[0].count: "),
    ({"ports": [{"name": "p", "port": 65535, "protocol": "tcp", "count": 2}]},
     "app.ports[0].count: port range 65535-65536 goes beyond 65535"),
    ({"ports": [{"name": "p", "port": 80}]}, "app.ports[0].protocol: is required"),
    ({"ports": [{"name": "p", "port": "80", "protocol": "tcp"}]},
     "app.ports[0].port: input should be a valid integer"),
    ({"userLabels": {"a": 1}}, "app.userLabels.a: input should be a valid string"),
])
def test_app_errors(app: dict[str, Any], error: str) -> None:
    assert invalid(schema.parse_image_manifest, image(**app)).startswith(error)


def test_app_without_user_or_exec() -> None:
    m = image()
    del m["app"]["user"]
    assert invalid(schema.parse_image_manifest, m) == "app.user: is required"
    # aci.md: exec is optional (for example, an image used only as a dependency).
    m = image()
    del m["app"]["exec"]
    app = schema.parse_image_manifest(m).app
    assert app is not None and app.exec is None


@pytest.mark.parametrize(("top", "error"), [
    ({"acKind": "PodManifest"}, "acKind: input should be 'ImageManifest'"),
    ({"acVersion": None}, "acVersion: input should be a valid string"),
    ({"name": None}, "name: input should be a valid string"),
    ({"labels": [{"name": "name", "value": "x"}]},
     'labels[0].name: a label cannot be called "name"'),
    ({"labels": [{"name": "os", "value": "linux"}, {"name": "os", "value": "linux"}]},
     "labels[1].name: duplicate label name 'os'"),
    ({"labels": [{"name": "os", "value": "plan9"}]},
     "labels[0].value: os 'plan9' is not supported"),
    ({"labels": [{"name": "arch", "value": "amd64"}, {"name": "os", "value": "darwin"}]},
     "labels[0].value: arch 'amd64' is not supported with os 'darwin'"),
    ({"labels": [{"name": "version", "value": 1}]},
     "labels[0].value: input should be a valid string"),
    ({"annotations": [{"name": "a", "value": ""}, {"name": "a", "value": ""}]},
     "annotations[1].name: duplicate annotation name 'a'"),
    ({"annotations": [{"name": "homepage", "value": "ftp://example.com"}]},
     "annotations[0].value: 'ftp://example.com' is not an http or https URL"),
    ({"dependencies": [{"imageID": ID}]}, "dependencies[0].imageName: is required"),
    ({"dependencies": [{"imageName": "x", "size": -1}]}, "dependencies[0].size: "),
    ({"pathWhitelist": ["etc/passwd"]}, "pathWhitelist[0]: 'etc/passwd' is not an absolute path"),
])
def test_image_manifest_errors(top: dict[str, Any], error: str) -> None:
    assert invalid(schema.parse_image_manifest, {**image(), **top}).startswith(error)


def test_arch_without_os_is_not_checked() -> None:
    # aci.md: "arch is meaningful only if os is provided".
    m = schema.parse_image_manifest({**image(), "labels": [{"name": "arch", "value": "mips"}]})
    assert m.arch == "mips" and m.os is None


def test_unknown_fields_are_ignored() -> None:
    m = image(futureAppField=1)
    m["futureField"] = {"x": 1}
    parsed = schema.parse_image_manifest(m)
    assert "futureField" not in schema.dump_manifest(parsed)


@pytest.mark.parametrize(("data", "error"), [
    (b"{", "image manifest is not valid JSON: "),
    (b"\xff", "image manifest is not valid JSON: "),
    ("[]", "image manifest must be a JSON object"),
])
def test_not_json(data: bytes | str, error: str) -> None:
    assert invalid(schema.parse_image_manifest, data).startswith(error)


def test_parse_manifest_by_kind() -> None:
    assert isinstance(schema.parse_manifest(image()), schema.ImageManifest)
    assert isinstance(schema.parse_manifest(pod()), schema.PodManifest)
    assert invalid(schema.parse_manifest, {"acKind": "Other"}).startswith("acKind: ")


# --- pod manifest fields ---------------------------------------------------------------


def _pod_with(path: str, value: Any) -> dict[str, Any]:
    p = pod(volumes=[{"name": "v", "kind": "empty"}])
    target: Any = p
    keys = path.split(".")
    for k in keys[:-1]:
        target = target[int(k)] if k.isdigit() else target[k]
    target[keys[-1]] = value
    return p


@pytest.mark.parametrize(("path", "value", "error"), [
    ("apps.0.name", "A", "apps[0].name: 'A' is not a valid AC Name"),
    ("apps.0.image", {"name": "example.com/x"}, "apps[0].image.id: is required"),
    ("apps.0.readOnlyRootFS", "true", "apps[0].readOnlyRootFS: input should be a valid boolean"),
    ("apps.0.mounts", [{"volume": "nope", "path": "/x"}],
     "apps[0].mounts[0].volume: no volume named 'nope' in volumes"),
    ("apps.0.mounts", [{"volume": "v"}], "apps[0].mounts[0].path: is required"),
    ("apps.0.mounts", [{"volume": "w", "path": "/w", "appVolume": {"name": "w", "kind": "host"}}],
     "apps[0].mounts[0].appVolume.source: a \"host\" volume needs a source path"),
    ("apps.0.annotations", [{"name": "example.com/a", "value": "x"}],
     "apps[0].annotations[0].name: 'example.com/a' is not a valid AC Name"),
    ("apps.0.app", {"user": "0"}, "apps[0].app.group: is required"),
    ("volumes", [{"name": "v", "kind": "other"}],
     "volumes[0].kind: input should be 'host' or 'empty'"),
    ("volumes", [{"name": "v", "kind": "host", "source": "data"}],
     "volumes[0].source: 'data' is not an absolute path"),
    ("volumes", [{"name": "v", "kind": "empty", "mode": "rwx"}],
     "volumes[0].mode: 'rwx' is not an octal permission mode"),
    ("volumes", [{"name": "v", "kind": "empty", "uid": -1}], "volumes[0].uid: "),
    ("volumes", [{"name": "v", "kind": "empty"}, {"name": "v", "kind": "empty"}],
     "volumes[1].name: duplicate name 'v'"),
    ("annotations", [{"name": "a.b", "value": ""}],
     "annotations[0].name: 'a.b' is not a valid AC Name"),
    ("ports", [{"name": "p", "hostPort": 0}], "ports[0].hostPort: "),
    ("ports", [{"name": "p", "hostPort": 80, "hostIP": "::1"}],
     "ports[0].hostIP: '::1' is not an IPv4 address"),
    ("ports", [{"name": "p", "hostPort": 80}, {"name": "p", "hostPort": 81}],
     "ports[1].name: duplicate name 'p'"),
    ("ports", [{"name": "p", "hostPort": 80, "podPort": {"name": "p", "port": 80}}],
     "ports[0].podPort.protocol: is required"),
    ("userAnnotations", {"k": 1}, "userAnnotations.k: input should be a valid string"),
])
def test_pod_errors(path: str, value: Any, error: str) -> None:
    assert invalid(schema.parse_pod_manifest, _pod_with(path, value)).startswith(error)


def test_pod_duplicate_apps_and_missing_apps() -> None:
    p = pod()
    p["apps"].append(copy.deepcopy(p["apps"][0]))
    assert invalid(schema.parse_pod_manifest, p) == "apps[1].name: duplicate name 'a'"
    p = pod()
    del p["apps"]
    assert invalid(schema.parse_pod_manifest, p) == "apps: is required"


def test_pod_fields() -> None:
    p = _pod_with("apps.0.mounts", [
        {"volume": "v", "path": "/v"},
        {"volume": "own", "path": "/o",
         "appVolume": {"name": "own", "kind": "host", "source": "/srv"}},
    ])
    p["ports"] = [{"name": "http", "hostPort": 8080, "hostIP": "203.0.113.23"}]
    p["userLabels"] = {"a": "b"}
    m = schema.parse_pod_manifest(p)
    assert m.apps[0].mounts[1].app_volume is not None
    assert m.apps[0].read_only_root_fs is False
    assert m.ports[0].host_ip == "203.0.113.23"
    assert m.user_labels == {"a": "b"}
    volume = m.volume("v")
    assert volume is not None and volume.recursive is None


def test_template_allows_late_bound_volumes() -> None:
    p = _pod_with("apps.0.mounts", [{"volume": "later", "path": "/x"}])
    schema.parse_pod_manifest(p, template=True)


# --- writing ---------------------------------------------------------------------------


def test_round_trip_examples() -> None:
    for path in sorted((SPEC / "examples").glob("*.json")):
        text = path.read_text().replace('"sha512-..."', f'"{ID}"')
        if "pod" in path.name:
            m1: schema.ImageManifest | schema.PodManifest = schema.parse_pod_manifest(
                text, template=True)
            m2: schema.ImageManifest | schema.PodManifest = schema.parse_pod_manifest(
                schema.dump_manifest(m1), template=True)
        else:
            m1 = schema.parse_image_manifest(text)
            m2 = schema.parse_image_manifest(schema.dump_manifest(m1))
        assert m1 == m2, path.name
        out = json.loads(schema.dump_manifest(m1))
        assert list(out)[:2] == ["acKind", "acVersion"]


def test_dump_omits_empty_optional_lists() -> None:
    m = schema.parse_image_manifest({**image(), "labels": [], "dependencies": []})
    out = json.loads(schema.dump_manifest(m))
    assert "labels" not in out and "dependencies" not in out and "annotations" not in out
    assert out["app"] == {"exec": ["/bin/x"], "user": "0", "group": "0"}


def test_models_are_frozen() -> None:
    m = schema.parse_image_manifest(image())
    with pytest.raises(ValueError):
        m.name = "other"  # type: ignore[misc]


def test_python_construction_uses_snake_case() -> None:
    app = schema.App(exec=["/bin/sh"], user="0", group="0", working_directory="/")
    m = schema.ImageManifest(ac_version=schema.AC_VERSION, name="example.com/y", app=app)
    assert schema.parse_image_manifest(schema.dump_manifest(m)) == m


# --- helpers ---------------------------------------------------------------------------


def test_host_os_arch_is_in_the_table() -> None:
    from podmgr.fetch.discovery import host_os_arch

    os_name, arch = host_os_arch()
    assert arch in schema.VALID_OS_ARCH[os_name]


def test_uuid() -> None:
    u = "6733C088-4F7C-4C62-9D0C-1F47A8B6B3A0"
    assert schema.validate_uuid(u) == u.lower()
    assert invalid(schema.validate_uuid, "6733c0884f7c4c629d0c1f47a8b6b3a0").startswith("'6733")


def test_labels_helpers() -> None:
    m = schema.parse_image_manifest({**image(), "labels": [{"name": "version", "value": "1"}]})
    assert m.labels.get("version") == "1" and m.labels.get("nope", "d") == "d"
    assert m.labels.as_dict() == {"version": "1"}
    assert len(m.labels) == 1 and [label.name for label in m.labels] == ["version"]


def test_identifier_regex_wins_over_its_own_example() -> None:
    # types.md lists "example.com/~user/app_v1" as an example, but says an AC Identifier
    # "will match" ^[a-z0-9]+([-._~/][a-z0-9]+)*$, which "/~" does not. The regex is the
    # precise rule (it is also what makes "a--b" invalid), so it wins.
    text = (SPEC / "types.md").read_text()
    assert "example.com/~user/app_v1" in text
    assert "`^[a-z0-9]+([-._~/][a-z0-9]+)*$`" in text
    assert not schema.is_ac_identifier("example.com/~user/app_v1")


# --- trailing newlines, duplicate keys, depth (issue 18) --------------------------------


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *head, last = path.split(".")
    node: Any = doc
    for k in head:
        node = node[int(k)] if k.isdigit() else node[k]
    node[int(last) if last.isdigit() else last] = value
    return doc


_ISO = {"name": "os/linux/capabilities-retain-set", "value": {"set": ["CAP_NET_ADMIN"]}}


@pytest.mark.parametrize(
    ("doc", "path", "value"),
    [
        (image(), "name", "example.com/x\n"),
        (image(), "acVersion", "0.8.11\n"),
        (image(), "acKind", "ImageManifest\n"),
        (image(), "labels", [{"name": "version\n", "value": "1"}]),
        (image(), "labels", [{"name": "os", "value": "linux\n"}]),
        (image(environment=[{"name": "FOO\n", "value": "1"}]), "app.user", "0"),
        (image(isolators=[_ISO]), "app.isolators.0.name", _ISO["name"] + "\n"),
        (image(isolators=[_ISO]), "app.isolators.0.value", {"set": ["CAP_NET_ADMIN\n"]}),
        (image(ports=[{"name": "http\n", "protocol": "tcp", "port": 80}]), "name", "example.com/x"),
        (image(mountPoints=[{"name": "d\n", "path": "/d"}]), "name", "example.com/x"),
        (image(), "dependencies", [{"imageName": "example.com/y", "imageID": ID + "\n"}]),
        (image(), "annotations", [{"name": "created\n", "value": "x"}]),
        (pod(), "apps.0.name", "a\n"),
        (pod(), "apps.0.image.id", ID + "\n"),
        (pod(), "apps.0.image.name", "example.com/x\n"),
        (pod(), "volumes", [{"name": "v\n", "kind": "empty"}]),
    ],
)
def test_a_trailing_newline_is_never_valid(doc: dict[str, Any], path: str, value: Any) -> None:
    # re.match with "$" accepts "x\n": every pattern ends in \Z now.
    invalid(schema.parse_manifest, json.dumps(_set(doc, path, value)))


@pytest.mark.parametrize(
    "check",
    [schema.is_ac_name, schema.is_ac_identifier, schema.is_image_id, schema.is_semver],
)
def test_predicates_refuse_a_trailing_newline(check: Any) -> None:
    good = {"is_image_id": ID, "is_semver": "1.2.3"}.get(check.__name__, "example")
    assert check(good) and not check(good + "\n")


def test_other_patterns_refuse_a_trailing_newline() -> None:
    from podmgr import trust
    from podmgr.errors import PodmgrError
    from podmgr.fetch.appstring import parse_app_string

    with pytest.raises(PodmgrError):
        parse_app_string("example.com/x\n")
    with pytest.raises(PodmgrError):
        parse_app_string("example.com/x,version\n=1")
    with pytest.raises(PodmgrError):
        trust.check_name("example.com/x\n")
    with pytest.raises(PodmgrError):
        trust.check_fingerprint("A" * 40 + "\n")
    with pytest.raises(ValueError):
        schema.parse_date("2015-05-18T13:49:28Z\n")
    with pytest.raises(InvalidError):
        schema.validate_uuid("6733c088-4f7c-4c62-9d0c-1f47a8b6b3a0\n")
    assert not schema.is_semver("\uff11.2.3")  # a full-width digit is no ASCII digit


@pytest.mark.parametrize(
    "raw",
    [
        b'{"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "a.com/x", "name": "b.com/y"}',
        b'{"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "a.com/x",'
        b' "app": {"exec": ["/x"], "user": "0", "group": "0", "user": "1"}}',
    ],
    ids=["top", "nested"],
)
def test_duplicate_keys_are_refused(raw: bytes) -> None:
    assert "appears twice" in invalid(schema.parse_image_manifest, raw)


@pytest.mark.parametrize("depth", [65, 900, 200_000])
def test_deep_nesting_is_refused(depth: int) -> None:
    raw = b'{"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "a.com/x", "x": '
    raw += b"[" * depth + b"]" * depth + b"}"
    assert "nests deeper than 64" in invalid(schema.parse_image_manifest, raw)
    assert "nests deeper" in invalid(schema.parse_pod_manifest, b"[" * depth + b"]" * depth)


@pytest.mark.parametrize(
    "raw", [b'{"x": NaN}', b'{"x": -Infinity}', b'{"x": ' + b"1" * 5000 + b"}", b"\xff\xfe"]
)
def test_other_bad_json_is_invalid(raw: bytes) -> None:
    assert "not valid JSON" in invalid(schema.parse_image_manifest, raw)
