"""Differential test: podmgr.schema against ``actool validate``, the reference implementation.

A deterministic corpus of manifests is made by mutating two valid manifests. Each
mutation carries the verdict of the spec's *text*, and podmgr must agree with the text on
every manifest. Where actool disagrees with podmgr, the mutation kind must be listed in
RULES with the direction of the disagreement and a rule quoted from the spec; the quote
is checked to be in the spec, so the table cannot drift from it.
"""

from __future__ import annotations

import copy
import json
import random
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from podmgr import schema
from podmgr.errors import InvalidError

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO.parent / "shared" / "appc-spec"
SEED = 20240611
ID = "sha512-" + "0123456789abcdef" * 8

BASE_IMAGE: dict[str, Any] = {
    "acKind": "ImageManifest",
    "acVersion": "0.8.11",
    "name": "example.com/app",
    "labels": [{"name": "version", "value": "1.0.0"}, {"name": "os", "value": "linux"},
               {"name": "arch", "value": "amd64"}],
    "app": {"exec": ["/bin/app"], "user": "0", "group": "0"},
}
BASE_POD: dict[str, Any] = {
    "acKind": "PodManifest",
    "acVersion": "0.8.11",
    "apps": [{"name": "web", "image": {"name": "example.com/app", "id": ID},
              "mounts": [{"volume": "data", "path": "/data"}]}],
    "volumes": [{"name": "data", "kind": "empty"}],
}

STRICTER = "podmgr rejects, actool accepts"
LOOSER = "podmgr accepts, actool rejects"

# mutation kind -> (direction, file, rule quoted from the spec text)
RULES: dict[str, tuple[str, str, str]] = {
    "image-name": (STRICTER, "types.md",
        "`^[a-z0-9]+([-._~/][a-z0-9]+)*$`"),
    "label-name": (STRICTER, "types.md",
        "`^[a-z0-9]+([-._~/][a-z0-9]+)*$`"),
    "mount-point-name": (STRICTER, "types.md",
        "`^[a-z0-9]+([-][a-z0-9]+)*$`"),
    "pod-app-name": (STRICTER, "types.md",
        "`^[a-z0-9]+([-][a-z0-9]+)*$`"),
    "ac-version": (STRICTER, "types.md",
        "must be in [SemVer v2.0.0](http://semver.org/spec/v2.0.0.html) format"),
    "ac-version-major": (STRICTER, "types.md",
        "must be compatible on major AC version series"),
    "quantity-form": (STRICTER, "ace.md",
        "quantities may either be unsuffixed, have metric suffices (E, P, T, G, M, K) "
        "or binary (power-of-two) suffices"),
    "quantity-integral": (STRICTER, "ace.md",
        "must always be represented internally (i.e. for encoding and any processing) "
        "as an integer value"),
    "request-over-limit": (STRICTER, "ace.md",
        "**request** is the minimum amount of a resource guaranteed to be available"),
    "limit-missing": (STRICTER, "ace.md",
        "If **request** is omitted, it defaults to the value of **limit**."),
    "unknown-isolator": (LOOSER, "ace.md",
        "An executor MAY ignore isolators that it does not understand and run the pod "
        "without them."),
    "caps-empty": (LOOSER, "ace.md",
        "list of capabilities that will be retained in the process's capabilities "
        "bounding set, all others will be removed."),
    "caps-name": (STRICTER, "ace.md",
        "The default set is defined by the following 14 capabilities"),
    "caps-both": (STRICTER, "ace.md",
        "The retain set cannot be used in conjunction with the remove set."),
    "isolator-scope": (STRICTER, "ace.md",
        "* Scope: app\n"),
    "port-count": (STRICTER, "aci.md",
        'specifies a range of ports, starting with "port" and ending with "port" + '
        '"count" - 1. Must be >=1.'),
    "port-protocol": (STRICTER, "aci.md",
        "**protocol** (string, required)"),
    "mount-point-path": (STRICTER, "aci.md",
        "the **path** stipulates where it is to be mounted inside the rootfs"),
    "event-handler": (STRICTER, "aci.md",
        "An eventHandler is a simple object with two fields"),
    "supplementary-gids": (STRICTER, "aci.md",
        "(list of unsigned integers, optional)"),
    "path-whitelist": (STRICTER, "aci.md",
        "whitelist of absolute paths"),
    "dependency-id": (STRICTER, "types.md",
        '"value" is the hex encoded string of the digest'),
    "pod-image-id": (STRICTER, "pods.md",
        "**id** (string of type [Image ID](types.md#image-id-type), required)"),
    "pod-apps": (STRICTER, "pods.md",
        "**apps** (list of objects, required)"),
    "pod-mount-volume": (STRICTER, "pods.md",
        "must have all `mountPoint`s satisfied by `volume`s"),
    "pod-annotation-name": (STRICTER, "pods.md",
        "**name** is restricted to the [AC Name](types.md#ac-name-type) formatting"),
    "volume-mode": (STRICTER, "pods.md",
        "indicates the mode permission of the empty volume"),
    "volume-uid": (STRICTER, "pods.md",
        "indicates the user id that will own the empty volume"),
    "host-port": (STRICTER, "pods.md",
        "**hostPort** (integer, required) port number on the host"),
    "host-ip": (STRICTER, "pods.md",
        "Must be in dotted-quad notation"),
    "pod-port-names": (STRICTER, "pods.md",
        "port names MUST be unique among apps within a pod"),
}


def _set(path: str) -> Callable[[dict[str, Any], Any], None]:
    """A setter for a dotted path ("app.isolators"); a missing value (None) deletes."""

    def apply(m: dict[str, Any], value: Any) -> None:
        keys: list[str | int] = [int(k) if k.isdigit() else k for k in path.split(".")]
        target: Any = m
        for k in keys[:-1]:
            target = target[k]
        last = keys[-1]
        if value == DELETE:
            target.pop(last, None)
        elif isinstance(last, int) and last == len(target):
            target.append(value)
        else:
            target[last] = value

    return apply


DELETE = "\0delete"  # a string, so that deepcopy keeps it equal


def _iso(name: str, value: Any) -> list[dict[str, Any]]:
    return [{"name": name, "value": value}]


def _mem(limit: Any, request: Any = None) -> list[dict[str, Any]]:
    v = {"limit": limit} if request is None else {"limit": limit, "request": request}
    return _iso("resource/memory", v)


@dataclass(frozen=True)
class Kind:
    name: str
    target: str  # "image" or "pod"
    apply: Callable[[dict[str, Any], Any], None]
    #: (value, valid by the spec's text)
    candidates: tuple[tuple[Any, bool], ...]


def _ports(**port: Any) -> list[dict[str, Any]]:
    return [{"name": "http", "port": 80, "protocol": "tcp", **port}]


KINDS: list[Kind] = [
    Kind("image-name", "image", _set("name"), (
        ("a", True), ("example.com/app-1", True), ("a.b_c~d/e-f", True),
        ("sub-domain.example.com/org/product/release", True),
        ("a--b", False), ("a//b", False), ("example.com/~user/app_v1", False), ("a._b", False),
        ("Example.com/x", False), ("-a", False), ("", False), ("a/", False))),
    Kind("label-name", "image", _set("labels"), (
        ([{"name": "channel", "value": "stable"}], True),
        ([{"name": "example.com/tier", "value": ""}], True),
        ([{"name": "a--b", "value": "x"}], False),
        ([{"name": "Tier", "value": "x"}], False),
        ([{"name": "name", "value": "x"}], False))),
    Kind("labels-os-arch", "image", _set("labels"), tuple(
        ([{"name": "os", "value": os_}, {"name": "arch", "value": arch}], ok)
        for os_, arch, ok in (
            ("linux", "amd64", True), ("linux", "i386", True), ("linux", "aarch64", True),
            ("linux", "armv7l", True), ("linux", "ppc64le", True), ("linux", "s390x", True),
            ("freebsd", "arm", True), ("darwin", "x86_64", True), ("freebsd", "amd64", True),
            ("linux", "x86_64", False), ("darwin", "amd64", False), ("plan9", "386", False),
            ("Linux", "amd64", False)))),
    Kind("ac-version", "image", _set("acVersion"), (
        ("0.8.11", True), ("0.8.11-rc.1+build.5", True), ("0.3.0", True), ("0.8.10", True),
        ("01.8.11", False), ("0.8.011", False), ("0.8", False), ("v0.8.11", False))),
    Kind("ac-version-major", "pod", _set("acVersion"), (
        ("0.9.0", True), ("1.0.0", False), ("9.8.11", False))),
    Kind("env-name", "image", _set("app.environment"), tuple(
        ([{"name": n, "value": "v"}], ok) for n, ok in (
            ("A", True), ("_a", True), ("java.home", True), ("my-var", True), ("a-", True),
            ("PATH", True), ("1A", False), ("-a", False), (".a", False), ("A B", False),
            ("", False), ("A=B", False)))),
    Kind("env-duplicate", "image", _set("app.environment"), (
        ([{"name": "A", "value": "1"}, {"name": "A", "value": "2"}], False),
        ([{"name": "A", "value": "1"}, {"name": "a", "value": "2"}], True))),
    Kind("memory-quantity", "image", _set("app.isolators"), tuple(
        (_mem(q), ok) for q, ok in (
            ("1Ki", True), ("1G", True), ("1K", False), ("1k", True), ("1024", True),
            (1024, True), ("1.5Gi", True), ("2Mi", True), ("1KB", False), ("1g", False),
            ("1 Gi", False)))),
    Kind("cpu-quantity", "image", _set("app.isolators"), tuple(
        (_iso("resource/cpu", {"request": r, "limit": q}), True) for r, q in (
            ("250m", "500m"), ("1", "2"), ("0.5", "1"), ("1k", "2k"), ("100m", "0.3")))),
    Kind("quantity-form", "image", _set("app.isolators"), tuple(
        (_mem(q), False) for q in ("-1", "1e3", "+1", "1E3", "Gi"))),
    Kind("quantity-integral", "image", _set("app.isolators"), tuple(
        (_mem(q), False) for q in ("0.5", "1m", "1.0001k"))),
    Kind("request-over-limit", "image", _set("app.isolators"), (
        (_mem("1G", "2G"), False), (_mem("2G", "1G"), True), (_mem("1Gi", "1Gi"), True))),
    Kind("limit-missing", "image", _set("app.isolators"), (
        (_iso("resource/memory", {"request": "1G"}), False),
        (_iso("resource/cpu", {}), False))),
    Kind("unknown-isolator", "image", _set("app.isolators"), (
        (_iso("example.com/custom", {"x": 1}), True),
        (_iso("os/linux/apparmor", {"profile": "p"}), True),
        (_iso("resource/gpu", "1"), True))),
    Kind("caps-empty", "image", _set("app.isolators"), (
        (_iso("os/linux/capabilities-retain-set", {"set": []}), True),)),
    Kind("caps-name", "image", _set("app.isolators"), (
        (_iso("os/linux/capabilities-retain-set", {"set": ["CAP_NET_ADMIN"]}), True),
        (_iso("os/linux/capabilities-remove-set", {"set": ["CAP_SYS_CHROOT", "CAP_MKNOD"]}), True),
        (_iso("os/linux/capabilities-retain-set", {"set": ["net_admin"]}), False),
        (_iso("os/linux/capabilities-retain-set", {"set": "CAP_NET_ADMIN"}), False))),
    Kind("caps-both", "image", _set("app.isolators"), (
        (_iso("os/linux/capabilities-retain-set", {"set": ["CAP_CHOWN"]})
         + _iso("os/linux/capabilities-remove-set", {"set": ["CAP_KILL"]}), False),)),
    Kind("isolator-values", "image", _set("app.isolators"), (
        (_iso("os/linux/seccomp-remove-set", {"errno": "ENOTSUP", "set": ["reboot"]}), True),
        (_iso("os/linux/seccomp-retain-set", {"errno": "", "set": ["read", "write"]}), True),
        (_iso("os/linux/seccomp-retain-set", {"set": ["@appc.io/all"]}), True),
        (_iso("os/linux/seccomp-remove-set", {"set": []}), False),
        (_iso("os/linux/seccomp-remove-set", {"set": ["reboot"], "errno": "enotsup"}), False),
        (_iso("os/linux/seccomp-remove-set", {"set": ["reboot"]})
         + _iso("os/linux/seccomp-retain-set", {"set": ["read"]}), False),
        (_iso("os/linux/seccomp-remove-set", {"set": ["reboot"]})
         + _iso("os/linux/seccomp-remove-set", {"set": ["read"]}), False),
        (_iso("os/linux/no-new-privileges", True), True),
        (_iso("os/linux/no-new-privileges", "yes"), False),
        (_iso("os/linux/selinux-context",
              {"user": "system_u", "role": "system_r", "type": "t", "level": "s0"}), True),
        (_iso("os/linux/selinux-context", {"user": "system_u"}), False),
        (_iso("os/linux/oom-score-adj", 100), True),
        (_iso("os/linux/oom-score-adj", 5000), False),
        (_iso("os/linux/cpu-shares", 512), True),
        (_iso("os/linux/cpu-shares", 1), False),
        (_iso("resource/block-bandwidth", {"default": True, "limit": "2M"}), True),
        (_iso("resource/block-iops", {"default": True, "limit": "1000"}), True),
        (_iso("resource/network-bandwidth", {"default": True, "limit": "1G"}), True),
        (_iso("Resource/CPU", {"limit": "1"}), False))),
    Kind("isolator-scope", "image", _set("app.isolators"), (
        (_iso("os/unix/sysctl", {"net.core.somaxconn": "1024"}), False),)),
    Kind("mount-point-name", "image", _set("app.mountPoints"), (
        ([{"name": "data", "path": "/data", "readOnly": True}], True),
        ([{"name": "a--b", "path": "/data"}], False),
        ([{"name": "Data", "path": "/data"}], False))),
    Kind("mount-point-path", "image", _set("app.mountPoints"), (
        ([{"name": "data"}], False),)),
    Kind("ports", "image", _set("app.ports"), (
        (_ports(), True), (_ports(count=1000, port=20000), True),
        (_ports(socketActivated=True), True),
        (_ports(port=65535), True), (_ports(port=65535, count=2), False), (_ports(port=0), False),
        (_ports(port=65536), False), (_ports(protocol="udp", name="A"), False))),
    Kind("port-count", "image", _set("app.ports"), ((_ports(count=0), False),)),
    Kind("port-protocol", "image", _set("app.ports"), (
        ([{"name": "http", "port": 80}], False),)),
    Kind("event-handler", "image", _set("app.eventHandlers"), (
        ([{"name": "pre-start", "exec": ["/bin/prep"]},
          {"name": "post-stop", "exec": ["/x"]}], True),
        ([{"name": "pre-start"}], False),
        ([{"name": "pre-stop", "exec": ["/x"]}], False),
        ([{"name": "pre-start", "exec": ["/x"]}, {"name": "pre-start", "exec": ["/y"]}], False))),
    Kind("working-directory", "image", _set("app.workingDirectory"), (
        ("/opt/work", True), ("opt/work", False))),
    Kind("app-user", "image", _set("app.user"), (
        ("root", True), ("/usr/bin/ping", True), ("1000", True), ("", False), (DELETE, False))),
    Kind("app-exec", "image", _set("app.exec"), ((DELETE, True), ([], True), (["sh"], True))),
    Kind("supplementary-gids", "image", _set("app.supplementaryGIDs"), (
        ([400, 500], True), ([-1], False))),
    Kind("path-whitelist", "image", _set("pathWhitelist"), (
        (["/etc/ssl", "/usr/bin/app"], True), (["etc/ssl"], False))),
    Kind("dependency-id", "image", _set("dependencies"), tuple(
        ([{"imageName": "example.com/base", "imageID": i}], ok) for i, ok in (
            (ID, True), ("sha512-...", False), ("sha512-abc", False),
            ("sha256-" + "0" * 64, False)))),
    Kind("dependencies", "image", _set("dependencies"), (
        ([{"imageName": "example.com/base", "size": 22017258,
           "labels": [{"name": "os", "value": "linux"}]}], True),
        ([{"imageName": "example.com/base", "size": -1}], False),
        ([{"imageID": ID}], False))),
    Kind("annotations", "image", _set("annotations"), (
        ([{"name": "created", "value": "2014-10-27T19:32:27.67021798Z"},
          {"name": "homepage", "value": "https://example.com"},
          {"name": "appc.io/executor/supports-systemd-notify", "value": "true"}], True),
        ([{"name": "created", "value": "yesterday"}], False),
        ([{"name": "documentation", "value": "ftp://example.com"}], False),
        ([{"name": "a", "value": ""}, {"name": "a", "value": ""}], False))),
    Kind("unknown-field", "image", _set("futureField"), (({"x": [1]}, True),)),
    Kind("pod-apps", "pod", _set("apps"), ((DELETE, False), ([], True))),
    Kind("pod-app-name", "pod", _set("apps.0.name"), (
        ("backend-1", True), ("a--b", False), ("Web", False))),
    Kind("pod-app-duplicate", "pod", _set("apps.1"), (
        ({"name": "web", "image": {"id": ID}}, False),
        ({"name": "worker", "image": {"id": ID}}, True))),
    Kind("pod-image-id", "pod", _set("apps.0.image.id"), (
        (DELETE, False), ("sha512-...", False), (ID.replace("0123", "ABCD"), True))),
    Kind("pod-mount-volume", "pod", _set("apps.0.mounts"), (
        ([{"volume": "missing", "path": "/x"}], False),
        ([{"volume": "own", "path": "/x",
           "appVolume": {"name": "own", "kind": "host", "source": "/srv"}}], True))),
    Kind("volumes", "pod", _set("volumes"), tuple(
        ([{"name": "data", **v}], ok) for v, ok in (
            ({"kind": "host", "source": "/srv", "readOnly": True, "recursive": False}, True),
            ({"kind": "empty", "mode": "0777", "uid": 1000, "gid": 1000}, True),
            ({"kind": "host", "source": "srv"}, False), ({"kind": "host"}, False),
            ({"kind": "tmpfs"}, False)))),
    Kind("volume-mode", "pod", _set("volumes"), (
        ([{"name": "data", "kind": "empty", "mode": "rwx"}], False),)),
    Kind("volume-uid", "pod", _set("volumes"), (
        ([{"name": "data", "kind": "empty", "uid": -1}], False),)),
    Kind("pod-annotation-name", "pod", _set("annotations"), (
        ([{"name": "ip-address", "value": "10.1.2.3"}], True),
        ([{"name": "example.com/owner", "value": "x"}], False))),
    Kind("host-port", "pod", _set("ports"), (
        ([{"name": "http", "hostPort": 8080}], True), ([{"name": "http", "hostPort": 0}], False))),
    Kind("host-ip", "pod", _set("ports"), (
        ([{"name": "http", "hostPort": 80, "hostIP": "203.0.113.23"}], True),
        ([{"name": "http", "hostPort": 80, "hostIP": "::1"}], False),
        ([{"name": "http", "hostPort": 80, "hostIP": "nowhere"}], False))),
    Kind("pod-port-names", "pod", _set("ports"), (
        ([{"name": "http", "hostPort": 80}, {"name": "http", "hostPort": 81}], False),)),
    Kind("pod-isolators", "pod", _set("isolators"), (
        (_iso("os/unix/sysctl", {"net.ipv4.tcp_fin_timeout": "6"}), True),
        (_mem("4G"), True), (_iso("os/linux/oom-score-adj", -1001), False))),
    Kind("isolator-scope", "pod", _set("isolators"), (
        (_iso("os/linux/capabilities-retain-set", {"set": ["CAP_CHOWN"]}), False),
        (_iso("os/linux/no-new-privileges", True), False))),
    Kind("user-maps", "pod", _set("userAnnotations"), (
        ({"any key": "v"}, True), ({"k": 1}, False))),
]


@dataclass
class Case:
    label: str
    target: str
    manifest: dict[str, Any]
    kinds: tuple[str, ...]
    valid: bool


def corpus() -> list[Case]:
    rng = random.Random(SEED)
    cases: list[Case] = []
    for kind in KINDS:
        for i, (value, ok) in enumerate(kind.candidates):
            m = copy.deepcopy(BASE_IMAGE if kind.target == "image" else BASE_POD)
            kind.apply(m, copy.deepcopy(value))
            cases.append(Case(f"{kind.name}#{i}", kind.target, m, (kind.name,), ok))
    # Random combinations of valid mutations on different paths: podmgr must accept them.
    for target in ("image", "pod"):
        valid = [(k, v) for k in KINDS if k.target == target for v, ok in k.candidates if ok]
        for n in range(60):
            picks = rng.sample(valid, rng.randint(2, 4))
            m = copy.deepcopy(BASE_IMAGE if target == "image" else BASE_POD)
            applied = []
            for kind, value in picks:
                try:
                    kind.apply(m, copy.deepcopy(value))
                except (KeyError, IndexError):  # an earlier pick removed the path
                    continue
                applied.append(kind.name)
            cases.append(Case(f"{target}-combo#{n}", target, m, tuple(applied), True))
    return cases


CORPUS = corpus()


def podmgr_accepts(case: Case) -> tuple[bool, str]:
    try:
        if case.target == "image":
            schema.parse_image_manifest(json.dumps(case.manifest))
        else:
            schema.parse_pod_manifest(json.dumps(case.manifest))
    except InvalidError as e:
        return False, e.message
    return True, ""


def actool_accepts(path: Path) -> tuple[bool, str]:
    actool = shutil.which("actool")
    if actool is None:
        pytest.fail("actool is not installed: install the Debian package appc-spec "
                    "(listed in .ci/apt-packages)", pytrace=False)
    # --type=manifest: actool picks image or pod validation from acKind.
    r = subprocess.run([actool, "validate", "--type=manifest", str(path)],
                       capture_output=True, text=True, check=False, timeout=60)
    return r.returncode == 0, (r.stderr or r.stdout).strip()


def test_corpus_is_large_and_deterministic() -> None:
    assert len(CORPUS) >= 200
    assert [c.manifest for c in corpus()] == [c.manifest for c in CORPUS]


def test_rules_quote_the_spec() -> None:
    for kind, (direction, doc, rule) in RULES.items():
        assert direction in (STRICTER, LOOSER), kind
        text = (SPEC / doc).read_text()
        assert rule in text, f"{kind}: rule not found in {doc}: {rule!r}"
    assert set(RULES) <= {k.name for k in KINDS}


def test_podmgr_follows_the_text() -> None:
    wrong = []
    for case in CORPUS:
        ok, msg = podmgr_accepts(case)
        if ok != case.valid:
            wrong.append(f"{case.label}: text says {'valid' if case.valid else 'invalid'}, "
                         f"podmgr {'accepts' if ok else 'rejects: ' + msg}")
    assert not wrong, "\n".join(wrong)


def test_rejections_name_a_field() -> None:
    for case in CORPUS:
        ok, msg = podmgr_accepts(case)
        if not ok:
            assert re.match(r"^[A-Za-z][\w.\[\]']*: \S", msg), (case.label, msg)


def test_round_trip_of_corpus() -> None:
    for case in CORPUS:
        if not case.valid:
            continue
        parse = (schema.parse_image_manifest if case.target == "image"
                 else schema.parse_pod_manifest)
        first = parse(json.dumps(case.manifest))
        assert parse(schema.dump_manifest(first)) == first, case.label


def test_disagreements_with_actool_are_explained(tmp_path: Path) -> None:
    unexplained = []
    seen: set[str] = set()
    for n, case in enumerate(CORPUS):
        path = tmp_path / f"{n}.json"
        path.write_text(json.dumps(case.manifest))
        ours, our_msg = podmgr_accepts(case)
        theirs, their_msg = actool_accepts(path)
        if ours == theirs:
            continue
        direction = LOOSER if ours else STRICTER
        explained = [k for k in case.kinds if k in RULES and RULES[k][0] == direction]
        seen.update(explained)
        if not explained:
            unexplained.append(f"{case.label} ({direction}): podmgr: {our_msg or 'ok'}; "
                               f"actool: {their_msg or 'ok'}\n  {json.dumps(case.manifest)}")
    assert not unexplained, "disagreements with no spec rule:\n" + "\n".join(unexplained)
    # Every listed rule is exercised, so a stale entry is noticed.
    assert seen == set(RULES), sorted(set(RULES) - seen)
