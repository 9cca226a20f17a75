"""The appc metadata service, socket-activated by podmgr-metadata.socket in the box, and
asked from inside apps with busybox wget, as an app would; and from the host side with
raw paths, as an attacker holding one pod's token would.

The pods' state is /var/lib/podmgr, the package's, because the service's unit shows it
only that (BindReadOnlyPaths=): the box's /var/lib is its own, and no other test uses
the default state directory.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from podfix import INSTALLED, REPO, UNITS, Podmgr, build_image, sh, until

INSECURE = "--insecure-options=image"
ETC = Path("/etc/systemd/system")
SOCKET = "podmgr-metadata.socket"
SERVICE = "podmgr-metadata.service"
JSON = "application/json"
TEXT = "text/plain; charset=us-ascii"
PODMGR = [sys.executable, "-m", "podmgr"]

SCRIPT = r"""
u="$AC_METADATA_URL/acMetadata/v1"
echo "$AC_METADATA_URL" > /out/url
get() { wget -q -S -O "/out/$2.body" "$u/$1" 2> "/out/$2.headers"; echo $? > "/out/$2.rc"; }
get pod/annotations pod-annotations
get pod/manifest pod-manifest
get pod/uuid pod-uuid
get "apps/$AC_APP_NAME/annotations" app-annotations
get "apps/$AC_APP_NAME/image/manifest" app-image-manifest
get "apps/$AC_APP_NAME/image/id" app-image-id
# Another pod's app, a path that climbs out, a method the endpoint does not take.
get apps/other/image/id other-app
get "apps/$AC_APP_NAME/../../pod/uuid" climb
post() {
  wget -q -S -O "/out/$2.body" --post-data "$3" "$u/$1" 2> "/out/$2.headers"
  echo $? > "/out/$2.rc"
}
post pod/hmac/sign sign 'content=hello%2Bworld'
sig=$(cat /out/sign.body | busybox sed 's/+/%2B/g; s#/#%2F#g; s/=/%3D/g')
uuid=$(cat /out/pod-uuid.body)
post pod/hmac/verify verify "content=hello%2Bworld&uuid=$uuid&signature=$sig"
post pod/hmac/verify forged "content=hello%2BworlD&uuid=$uuid&signature=$sig"
"""


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True)


STATE = Path("/var/lib/podmgr")


@pytest.fixture(scope="module")
def pm() -> Iterator[Podmgr]:
    # A tmpfs, as /tmp is: the box's /var is on an overlay, where a pod's overlay
    # cannot have its upper layer.
    STATE.mkdir(mode=0o700, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", "mode=0700", "podmgr-state", str(STATE))
    yield Podmgr(STATE)
    sh("umount", "--lazy", str(STATE))


@pytest.fixture(scope="module")
def service(pm: Podmgr) -> Iterator[None]:
    """podmgr-metadata.socket and .service from units/, as installed, serving
    /var/lib/podmgr; the service runs the checkout's podmgr unless under deb-test."""
    for name in (SOCKET, SERVICE):
        (ETC / name).write_text((UNITS / name).read_text())
    drop_in = ETC / f"{SERVICE}.d"
    drop_in.mkdir(exist_ok=True)
    if not INSTALLED:
        # The checkout's podmgr, with the system's Python: the service's user may not
        # reach a Python under /root (pyenv), and its path needs the standard library
        # only (no click, no pydantic), which this checks too.
        (drop_in / "test.conf").write_text(
            f"[Service]\nEnvironment=PYTHONPATH={REPO}\nExecStart=\n"
            "ExecStart=/usr/bin/python3 -m podmgr metadata-service\n"
        )
    run("systemctl", "daemon-reload")
    p = run("systemctl", "start", SOCKET)
    assert p.returncode == 0, p.stderr
    yield
    run("systemctl", "stop", SOCKET, SERVICE)
    for name in (SOCKET, SERVICE):
        (ETC / name).unlink(missing_ok=True)
    shutil.rmtree(drop_in, ignore_errors=True)
    run("systemctl", "daemon-reload")
    run("systemctl", "reset-failed", SOCKET, SERVICE)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


def image_with_annotations(images: Path, name: str, exec_: list[str]) -> str:
    aci = images / f"{name}.aci"
    build_image(aci, f"example.com/{name}", exec_)
    layout = images / f"{name}.aci.layout"
    manifest = json.loads((layout / "manifest").read_text())
    manifest["annotations"] = [
        {"name": "authors", "value": "image authors"},
        {"name": "overridden", "value": "by the image"},
    ]
    (layout / "manifest").write_text(json.dumps(manifest))
    subprocess.run(
        [sys.executable, "-m", "podmgr", "image", "build", str(layout), str(aci)],
        check=True,
        capture_output=True,
    )
    return str(aci)


def headers(text: str) -> dict[str, str]:
    """busybox wget -S: '  HTTP/1.1 200 OK' then '  Name: value' lines."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("HTTP/"):
            out["status"] = line.split()[1]
        elif ": " in line:
            k, v = line.split(": ", 1)
            out[k.lower()] = v
    return out


def token_of(pm: Podmgr, uuid: str) -> str:
    return str(json.loads((pm.state / "pods" / uuid / "pod.json").read_text())["metadata_token"])


def pod_manifest(tmp: Path, iid: str, app: str, out: Path | None) -> Path:
    doc: dict[str, object] = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "annotations": [{"name": "pod-note", "value": "from the pod"}],
        "apps": [
            {
                "name": app,
                "image": {"id": iid},
                "annotations": [
                    {"name": "overridden", "value": "by the pod"},
                    {"name": "app-note", "value": "app"},
                ],
                **({"mounts": [{"volume": "out", "path": "/out"}]} if out else {}),
            }
        ],
        "volumes": [{"name": "out", "kind": "host", "source": str(out)}] if out else [],
    }
    path = tmp / f"{app}.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def pods(
    pm: Podmgr, images: Path, service: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, object]]:
    """Pod B (running, app "other"), then pod A (app "probe") that asks everything."""
    tmp = tmp_path_factory.mktemp("metadata")
    out = tmp / "out"
    out.mkdir()
    sleeper = image_with_annotations(images, "mdsleep", ["/bin/sleep", "600"])
    probe = image_with_annotations(images, "mdprobe", ["/bin/sh", "-c", SCRIPT])
    iid_b = pm("fetch", INSECURE, sleeper).stdout.split()[-1]
    iid_a = pm("fetch", INSECURE, probe).stdout.split()[-1]
    # --net=host: the service listens on the host's loopback (see metadata.metadata_base).
    b = pm("start", "--net=host", "--pod-manifest", str(pod_manifest(tmp, iid_b, "other", None)))
    b = b.stdout.strip()
    p = pm(
        "run",
        "--net=host",
        "--pod-manifest",
        str(pod_manifest(tmp, iid_a, "probe", out)),
        "--uuid-file-save",
        str(tmp / "a.uuid"),
        check=False,
    )
    a = (tmp / "a.uuid").read_text().strip()
    assert p.returncode == 0, p.stdout + p.stderr
    yield {"a": a, "b": b, "out": out, "iid_a": iid_a}
    pm("stop", b, check=False)
    pm("rm", a, b, check=False)


def read(out: Path, name: str) -> tuple[dict[str, str], bytes]:
    return headers((out / f"{name}.headers").read_text()), (out / f"{name}.body").read_bytes()


def test_url_has_the_token_and_no_trailing_slash(pm: Podmgr, pods: dict[str, object]) -> None:
    out = Path(str(pods["out"]))
    url = (out / "url").read_text().strip()
    assert url == f"http://127.0.0.1:18112/{token_of(pm, str(pods['a']))}"
    assert not url.endswith("/")
    # The service was started by its socket, and serves from its own unit.
    assert run("systemctl", "is-active", SERVICE).stdout.strip() == "active"


def test_pod_endpoints(pm: Podmgr, pods: dict[str, object]) -> None:
    out = Path(str(pods["out"]))
    h, body = read(out, "pod-uuid")
    assert h["status"] == "200" and h["content-type"] == TEXT
    assert body.decode() == pods["a"]
    h, body = read(out, "pod-annotations")
    assert h["status"] == "200" and h["content-type"] == JSON
    assert json.loads(body) == [{"name": "pod-note", "value": "from the pod"}]
    h, body = read(out, "pod-manifest")
    assert h["status"] == "200" and h["content-type"] == JSON
    assert json.loads(body) == json.loads(pm("cat-manifest", str(pods["a"])).stdout)
    assert json.loads(body)["apps"][0]["image"]["id"] == pods["iid_a"]


def test_app_endpoints(pm: Podmgr, pods: dict[str, object]) -> None:
    out = Path(str(pods["out"]))
    h, body = read(out, "app-image-id")
    assert h["status"] == "200" and h["content-type"] == TEXT
    assert body.decode() == pods["iid_a"]
    h, body = read(out, "app-image-manifest")
    assert h["status"] == "200" and h["content-type"] == JSON
    im = json.loads(body)
    assert im["acKind"] == "ImageManifest" and im["name"] == "example.com/mdprobe"
    h, body = read(out, "app-annotations")
    assert h["status"] == "200" and h["content-type"] == JSON
    # The image's annotations, with the pod manifest's app annotations on top.
    assert {a["name"]: a["value"] for a in json.loads(body)} == {
        "authors": "image authors",
        "overridden": "by the pod",
        "app-note": "app",
    }


def test_hmac_sign_verify_and_forgery(pods: dict[str, object]) -> None:
    out = Path(str(pods["out"]))
    h, sig = read(out, "sign")
    assert h["status"] == "200" and h["content-type"] == TEXT
    assert len(base64.b64decode(sig, validate=True)) == 64  # SHA-512
    h, _ = read(out, "verify")
    assert h["status"] == "200" and h["content-type"] == TEXT
    assert (out / "verify.rc").read_text().strip() == "0"
    # (busybox wget removes its output file on an error status)
    h = headers((out / "forged.headers").read_text())
    assert h["status"] == "403"
    assert (out / "forged.rc").read_text().strip() != "0"


def test_the_key_is_made_once_and_private(pm: Podmgr, pods: dict[str, object]) -> None:
    key = pm.state / "metadata" / "hmac.key"
    st = key.stat()
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == 0
    assert st.st_size == 64


def _request(path: str, method: str = "GET", body: str | None = None) -> tuple[int, str, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", 18112, timeout=10)
    hdrs = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
    c.request(method, path, body=body, headers=hdrs)
    r = c.getresponse()
    out = (r.status, r.getheader("Content-Type") or "", r.read())
    c.close()
    return out


def test_another_pod_verifies_a_signature(pm: Podmgr, pods: dict[str, object]) -> None:
    a, b = str(pods["a"]), str(pods["b"])
    sig = (Path(str(pods["out"])) / "sign.body").read_text()
    from urllib.parse import urlencode

    base = f"/{token_of(pm, b)}/acMetadata/v1/pod/hmac/verify"
    form = {"content": "hello+world", "uuid": a, "signature": sig}
    assert _request(base, "POST", urlencode(form))[0] == 200
    # The signature is pod A's: it does not pass as pod B's.
    assert _request(base, "POST", urlencode({**form, "uuid": b}))[0] == 403
    assert _request(base, "POST", urlencode({**form, "signature": "AAAA" + sig[4:]}))[0] == 403
    assert _request(base, "POST", urlencode({**form, "signature": "not base64!"}))[0] == 403
    assert _request(base, "GET")[0] == 405


def test_a_token_reaches_nothing_of_another_pod(pm: Podmgr, pods: dict[str, object]) -> None:
    a, b = str(pods["a"]), str(pods["b"])
    out = Path(str(pods["out"]))
    # From inside pod A: pod B's app name, and a path that climbs.
    for name in ("other-app", "climb"):
        assert headers((out / f"{name}.headers").read_text())["status"] == "404", name
        assert (out / f"{name}.rc").read_text().strip() != "0"
    ta, tb = token_of(pm, a), token_of(pm, b)
    paths = [
        f"/{ta}/acMetadata/v1/apps/other/image/manifest",
        f"/{ta}/acMetadata/v1/apps/other/annotations",
        f"/{ta}/acMetadata/v1/apps/../../../{tb}/acMetadata/v1/pod/uuid",
        f"/{ta}/../{tb}/acMetadata/v1/pod/uuid",
        f"/{ta}/acMetadata/v1/apps/%2e%2e%2f%2e%2e/pod/uuid",
        f"/{ta}/acMetadata/v1/pods/{b}/uuid",
        f"/{ta}/acMetadata/v1/apps/probe/image/../../other/image/id",
        f"/{ta[:-1]}/acMetadata/v1/pod/uuid",
        f"/{ta}x/acMetadata/v1/pod/uuid",
        f"/{b}/acMetadata/v1/pod/uuid",
        f"/../pods/{b}/pod.json",
        f"/{ta}/../../pods/{b}/pod.json",
        "/hmac.key/acMetadata/v1/pod/uuid",
        "/..%2Fhmac.key/acMetadata/v1/pod/uuid",
        "/acMetadata/v1/pod/uuid",
    ]
    secrets = [b.encode(), tb.encode(), (pm.state / "metadata" / "hmac.key").read_bytes()]
    for path in paths:
        status, _, body = _request(path)
        assert status == 404, path
        assert not any(s in body for s in secrets), path
    # Pod B's own token gives pod B, and only its own app.
    status, ctype, body = _request(f"/{tb}/acMetadata/v1/pod/uuid")
    assert (status, ctype, body.decode()) == (200, TEXT, b)
    assert _request(f"/{tb}/acMetadata/v1/apps/probe/image/id")[0] == 404


def test_removed_pods_token_is_gone(pm: Podmgr, images: Path, pods: dict[str, object]) -> None:
    aci = str(build_image(images / "mdgone.aci", "example.com/mdgone", ["/bin/true"]))
    uuid = pm("prepare", INSECURE, "--net=host", aci).stdout.strip()
    token = token_of(pm, uuid)
    assert (pm.state / "metadata" / "tokens" / token).is_symlink()
    assert _request(f"/{token}/acMetadata/v1/pod/uuid")[2].decode() == uuid
    pm("rm", uuid)
    assert not (pm.state / "metadata" / "tokens" / token).exists()
    assert _request(f"/{token}/acMetadata/v1/pod/uuid")[0] == 404


def test_listen_option_and_metadata_url_override(pm: Podmgr, images: Path, tmp_path: Path) -> None:
    srv = subprocess.Popen(
        [*PODMGR, "--dir", str(pm.state), "metadata-service", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert srv.stdout is not None
        line = srv.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        out = tmp_path / "out"
        out.mkdir()
        script = (
            'wget -q -O /out/uuid "$AC_METADATA_URL/acMetadata/v1/pod/uuid"; '
            "echo $AC_METADATA_URL > /out/url"
        )
        aci = str(
            build_image(images / "mdlisten.aci", "example.com/mdlisten", ["/bin/sh", "-c", script])
        )
        env = {**os.environ, "PODMGR_METADATA_URL": f"http://127.0.0.1:{port}/"}
        p = subprocess.run(
            [
                *PODMGR,
                "--dir",
                str(pm.state),
                "run",
                INSECURE,
                "--net=host",
                "--uuid-file-save",
                str(tmp_path / "uuid"),
                "--volume",
                f"o,kind=host,source={out}",
                aci,
                "--mount",
                "volume=o,target=/out",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        assert p.returncode == 0, p.stderr
        uuid = (tmp_path / "uuid").read_text().strip()
        assert (out / "url").read_text().strip() == f"http://127.0.0.1:{port}/{token_of(pm, uuid)}"
        assert (out / "uuid").read_text() == uuid
    finally:
        srv.terminate()
        assert srv.wait(timeout=10) == 0


def test_net_none_gets_no_url(pm: Podmgr, images: Path) -> None:
    aci = str(
        build_image(
            images / "mdnone.aci",
            "example.com/mdnone",
            ["/bin/sh", "-c", "echo url=$AC_METADATA_URL"],
        )
    )
    p = pm("run", INSECURE, "--net=none", aci)
    assert p.stdout.strip() == "url="


def test_service_survives_a_burst(pm: Podmgr, pods: dict[str, object]) -> None:
    """Threads: 50 concurrent requests, each answered correctly."""
    import concurrent.futures

    a = str(pods["a"])
    path = f"/{token_of(pm, a)}/acMetadata/v1/pod/uuid"
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        results = list(ex.map(lambda _: _request(path), range(50)))
    assert all(r == (200, TEXT, a.encode()) for r in results)
    print(f"50 requests in {time.monotonic() - t0:.3f} s")
    assert sh("systemctl", "is-active", SERVICE).stdout.strip() == "active"


def test_default_network_reaches_the_service_through_the_gateway(
    pm: Podmgr, service: None, images: Path
) -> None:
    aci = build_image(
        images / "gw.aci",
        "example.com/gw",
        [
            "/bin/sh",
            "-c",
            'echo "url=$AC_METADATA_URL"; wget -q -O- "$AC_METADATA_URL/acMetadata/v1/pod/uuid"',
        ],
    )
    p = pm("run", INSECURE, "--uuid-file-save", str(images / "gw.uuid"), str(aci), check=False)
    uuid = (images / "gw.uuid").read_text().strip()
    assert f"url=http://172.31.0.1:18112/{token_of(pm, uuid)}" in p.stdout
    assert p.stdout.strip().splitlines()[-1] == uuid, p.stdout + p.stderr


# ---- the service's confinement (issue 17) ------------------------------------------------


def service_pid() -> int:
    """The running service's PID (a request starts it, if it is not running)."""
    _request("/")
    until(lambda: run("systemctl", "is-active", SERVICE).stdout.strip() == "active", SERVICE)
    return int(run("systemctl", "show", "-P", "MainPID", SERVICE).stdout)


def test_the_service_runs_as_a_user_of_its_own_and_is_not_dumpable(
    pods: dict[str, object],
) -> None:
    pid = service_pid()
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    uids = status["Uid"].split()
    assert "0" not in uids, status["Uid"]
    # CAP_DAC_READ_SEARCH (bit 2), to read the root-only state, and nothing else.
    assert int(status["CapEff"], 16) == 1 << 2
    assert int(status["CapBnd"], 16) == 1 << 2
    # The kernel gives a non-dumpable process's /proc files to root, not to its user.
    assert os.stat(f"/proc/{pid}/environ").st_uid == 0


REACH = r"""
p=$MDPID
ls -d /proc/$p > /out/visible 2>&1; echo $? > /out/visible.rc
cat /proc/$p/root/etc/shadow > /out/shadow 2> /out/shadow.err; echo $? > /out/shadow.rc
cat /proc/$p/environ > /out/environ 2> /out/environ.err; echo $? > /out/environ.rc
ls /proc/$p/root/ > /out/root 2>&1; echo $? > /out/root.rc
ls /proc/$p/cwd/ > /out/cwd 2>&1; echo $? > /out/cwd.rc
wget -q -O /out/uuid "$AC_METADATA_URL/acMetadata/v1/pod/uuid"; echo $? > /out/uuid.rc
"""


def test_a_root_app_cannot_reach_the_service_through_proc(
    pm: Podmgr, images: Path, pods: dict[str, object], tmp_path: Path
) -> None:
    """From a pod's app running as root with the default capabilities: the service's
    root, environment and working directory are refused, and it still answers."""
    pid = service_pid()
    out = tmp_path / "out"
    out.mkdir()
    aci = str(build_image(images / "mdreach.aci", "example.com/mdreach", ["/bin/sh", "-c", REACH]))
    p = pm(
        "run",
        INSECURE,
        "--net=host",
        "--uuid-file-save",
        str(tmp_path / "uuid"),
        "--volume",
        f"o,kind=host,source={out}",
        aci,
        "--environment",
        f"MDPID={pid}",
        "--mount",
        "volume=o,target=/out",
    )
    assert p.returncode == 0, p.stderr
    uuid = (tmp_path / "uuid").read_text().strip()
    # While apps shared the host's PID namespace the service's PID was visible here, and
    # what refused the app was the service's user and dumpability; with apps' own PID
    # namespaces it is hidden as well, and the next test keeps the first point.
    visible = (out / "visible.rc").read_text().strip() == "0"
    print(f"the service's /proc/{pid} is visible from the app: {visible}")
    for name in ("shadow", "environ", "root", "cwd"):
        assert (out / f"{name}.rc").read_text().strip() != "0", name
    assert (out / "shadow").read_bytes() == b"" and (out / "environ").read_bytes() == b""
    if visible:
        assert "Permission denied" in (out / "shadow.err").read_text()
    assert (out / "uuid").read_text() == uuid
    assert (out / "uuid.rc").read_text().strip() == "0"
    assert service_pid() == pid
    pm("rm", uuid)


def _as_root_app(*argv: str, unit: str | None = None) -> subprocess.CompletedProcess[str]:
    """``argv`` run as root with a pod's default capabilities and no more, in the host's
    PID namespace (what a pod's app was before PID namespaces, whatever pods get now);
    with ``unit``, started in the background as that unit."""
    from podmgr.units import DEFAULT_CAPS

    how = ["--unit", unit] if unit else ["--wait", "--pipe", "--quiet"]
    caps = f"CapabilityBoundingSet={' '.join(DEFAULT_CAPS)}"
    return run("systemd-run", *how, "-p", caps, *argv)


def test_a_root_process_with_an_apps_capabilities_cannot_reach_the_service(
    pm: Podmgr, pods: dict[str, object]
) -> None:
    pid = service_pid()
    for path in ("root/etc/shadow", "environ"):
        p = _as_root_app("cat", f"/proc/{pid}/{path}")
        assert p.returncode != 0 and p.stdout == "", (path, p.stdout)
    # The same reaches a dumpable root process of those capabilities: what keeps it out
    # of the service is the service's user and dumpability.
    p = _as_root_app("sleep", "600", unit="md-dumpable-root")
    assert p.returncode == 0, p.stderr
    try:
        other = int(run("systemctl", "show", "-P", "MainPID", "md-dumpable-root").stdout)
        p = _as_root_app("cat", f"/proc/{other}/root/etc/shadow")
        assert p.returncode == 0 and p.stdout.startswith("root:"), p.stderr
    finally:
        run("systemctl", "stop", "md-dumpable-root")
    a = str(pods["a"])
    assert _request(f"/{token_of(pm, a)}/acMetadata/v1/pod/uuid")[2] == a.encode()


def test_tokens_are_in_root_only_files(pm: Podmgr, pods: dict[str, object]) -> None:
    """A pod reaches no file of the host's but its volumes: tokens live in the state
    directory only, in directories no one but root (and the service) may read."""
    for uuid in (str(pods["a"]), str(pods["b"])):
        assert (pm.state / "pods" / uuid).stat().st_mode & 0o777 == 0o700
    tokens = pm.state / "metadata" / "tokens"
    assert tokens.stat().st_mode & 0o777 == 0o700
    assert (pm.state / "metadata" / "hmac.key").stat().st_mode & 0o777 == 0o600


# ---- the service's limits and start (issue 18) -------------------------------------------


def test_slow_clients_cost_no_threads(pm: Podmgr, pods: dict[str, object]) -> None:
    """300 clients that send half a request and wait: the service's threads stay its
    loop and four workers, and a client with a whole request is answered meanwhile."""
    import socket

    pid = service_pid()
    slow = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", 18112), timeout=10)
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        a = str(pods["a"])
        assert _request(f"/{token_of(pm, a)}/acMetadata/v1/pod/uuid")[2] == a.encode()
        threads = int(
            next(
                line.split()[1]
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("Threads:")
            )
        )
        assert threads <= 5, threads
        tasks = int(run("systemctl", "show", "-P", "TasksCurrent", SERVICE).stdout)
        assert tasks <= 5, tasks
    finally:
        for s in slow:
            s.close()
    assert service_pid() == pid


def test_oversized_requests_are_refused(pm: Podmgr, pods: dict[str, object]) -> None:
    base = f"/{token_of(pm, str(pods['a']))}/acMetadata/v1"
    c = http.client.HTTPConnection("127.0.0.1", 18112, timeout=10)
    c.request("GET", f"{base}/pod/uuid", headers={"X-Pad": "x" * (20 << 10)})
    assert c.getresponse().status == 431
    c.close()
    status = _request(f"{base}/pod/hmac/sign", "POST", "content=" + "x" * (300 << 10))[0]
    assert status == 413


def test_an_apps_first_request_is_answered_when_the_service_must_start(
    pm: Podmgr, images: Path, pods: dict[str, object], tmp_path: Path
) -> None:
    """The service stopped (idle exit, as after five minutes), the socket listening: an
    app's very first action is a request, and it is answered. (busybox's wget -T, its
    client timeout, crashes: the figure for this start is measured instead, see
    docs/metadata.md.)"""
    assert run("systemctl", "stop", SERVICE).returncode == 0
    assert run("systemctl", "is-active", SOCKET).stdout.strip() == "active"
    script = 'wget -q -O- "$AC_METADATA_URL/acMetadata/v1/pod/uuid"'
    aci = str(build_image(images / "mdfirst.aci", "example.com/mdfirst", ["/bin/sh", "-c", script]))
    p = pm("run", INSECURE, "--net=host", "--uuid-file-save", str(tmp_path / "uuid"), aci)
    uuid = (tmp_path / "uuid").read_text().strip()
    assert p.stdout.strip().splitlines()[-1] == uuid, p.stdout + p.stderr
    pm("rm", uuid)


def test_a_pod_without_annotations_has_them_empty_in_both(pm: Podmgr, images: Path) -> None:
    aci = str(build_image(images / "mdnoann.aci", "example.com/mdnoann", ["/bin/true"]))
    uuid = pm("prepare", INSECURE, "--net=host", aci).stdout.strip()
    try:
        base = f"/{token_of(pm, uuid)}/acMetadata/v1/pod"
        status, ctype, body = _request(f"{base}/manifest")
        assert (status, ctype) == (200, JSON)
        manifest = json.loads(body)
        status, ctype, body = _request(f"{base}/annotations")
        assert (status, ctype) == (200, JSON)
        assert manifest["annotations"] == json.loads(body) == []
        assert manifest["apps"][0]["name"] == "mdnoann"
    finally:
        pm("rm", uuid)


def test_without_a_listening_socket_apps_get_no_url(pm: Podmgr, images: Path) -> None:
    """As with podmgr installed from source, with no unit files: no URL that nothing
    serves; the socket back, the URL is back."""
    script = "echo url=$AC_METADATA_URL"
    aci = str(build_image(images / "mdnourl.aci", "example.com/mdnourl", ["/bin/sh", "-c", script]))
    assert run("systemctl", "stop", SOCKET, SERVICE).returncode == 0
    try:
        # --net=host, and the default network (whose URL is the bridge's gateway).
        for net in (["--net=host"], []):
            assert pm("run", INSECURE, *net, aci).stdout.strip() == "url=", net
    finally:
        assert run("systemctl", "start", SOCKET).returncode == 0
    assert (
        pm("run", INSECURE, "--net=host", aci)
        .stdout.strip()
        .startswith("url=http://127.0.0.1:18112/")
    )
