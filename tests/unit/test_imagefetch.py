"""``podmgr fetch`` over real HTTPS servers on loopback: discovery, signatures, trust,
ETag reuse, pull policies, dependencies, and refusals that leave the store unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fetch_servers import PKI, Blob, Server, make_pki, page, serve
from store_util import build_image, dep, manifest
from test_trust_keys import Keys, keys, write_key

from podmgr.fetch.discovery import host_os_arch
from podmgr.store import Store

__all__ = ["keys"]  # the session fixture, imported so that pytest finds it here

OS, ARCH = host_os_arch()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Site:
    server: Server
    tmp: Path
    env: dict[str, str]
    state: Path
    admin: Path
    blobs: dict[str, Blob] = field(default_factory=dict)

    def publish(
        self,
        keys: Keys,
        name: str,
        *,
        deps: list[dict[str, str]] | None = None,
        signer: str | None = "ed",
        tamper: bool = False,
        files: dict[str, str] | None = None,
        **blob_args: object,
    ) -> tuple[str, Blob]:
        """Serve image ``name`` (version latest) where discovery finds it."""
        short = name.rsplit("/", 1)[-1]
        aci, iid = build_image(self.tmp / f"{short}.aci", manifest(name, deps=deps),
                               files or {short: short})  # fmt: skip
        path = f"/images/{name}-latest-{OS}-{ARCH}.aci"
        if signer is not None:
            sig = keys.sign(signer, aci)
            self.server.httpd.routes[path + ".asc"] = page(sig.read_bytes(), ctype="text/plain")
        data = aci.read_bytes()
        if tamper:
            data = data[:-1] + bytes([data[-1] ^ 1])
        blob = Blob(data, **blob_args)  # type: ignore[arg-type]
        self.server.httpd.routes[path] = blob
        self.blobs[name] = blob
        return iid, blob

    def url(self, name: str) -> str:
        return f"https://example.com/images/{name}-latest-{OS}-{ARCH}.aci"

    def podmgr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "podmgr", "--dir", str(self.state), *args],
            capture_output=True, text=True, env=self.env, stdin=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip

    def listed(self) -> list[dict[str, object]]:
        p = self.podmgr("image", "list", "--format=json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)["data"]  # type: ignore[no-any-return]

    def assert_empty_store(self) -> None:
        assert self.listed() == []
        cas = self.state / "cas"
        for sub in ("blobs", "trees", "tmp"):
            assert list((cas / sub).iterdir()) == [], sub
        assert [p for p in (cas / "downloads").iterdir() if not p.name.endswith("part.json")] == []


DISCOVERY = """<html><head>
<meta name="ac-discovery" content="example.com https://example.com/images/{name}-{version}-{os}-{arch}.{ext}">
<meta name="ac-discovery-pubkeys" content="example.com https://example.com/pubkeys.asc">
</head></html>"""


@pytest.fixture
def site(pki: PKI, keys: Keys, tmp_path: Path) -> Iterator[Site]:
    routes = {"/": page(DISCOVERY), "/pubkeys.asc": page(keys.public("ed"), ctype="text/plain")}
    with serve(routes, tls=pki.server_context()) as server:  # type: ignore[arg-type]
        admin = tmp_path / "etc-trust"
        env = {
            **{k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
            "SSL_CERT_FILE": str(pki.ca),
            "PODMGR_CONNECT_TO": f"example.com=127.0.0.1:{server.port}",
            "PODMGR_TRUST_DIR": str(admin),
            "PODMGR_VENDOR_TRUST_DIR": str(tmp_path / "vendor-trust"),
        }
        yield Site(server, tmp_path, env, tmp_path / "state", admin)


def trust_prefix(site: Site, prefix: str) -> None:
    p = site.podmgr("trust", "--prefix", prefix, "--skip-fingerprint-review")
    assert p.returncode == 0, p.stderr


def test_discovery_signature_and_discovered_trust(site: Site, keys: Keys) -> None:
    iid, _ = site.publish(keys, "example.com/app")
    trust_prefix(site, "example.com/app")  # the key comes from ac-discovery-pubkeys
    p = site.podmgr("fetch", "example.com/app")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == iid
    (img,) = site.listed()
    assert img["verified"] is True and img["signerFingerprint"] == keys.fpr["ed"]
    # Pull policy new: the stored image is used without asking the server.
    before = len(site.server.paths)
    p = site.podmgr("fetch", "--format=json", "example.com/app")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["data"][0]["source"] == "store"
    assert len(site.server.paths) == before


def test_etag_reuse_without_download(site: Site, keys: Keys) -> None:
    write_key(site.admin, keys, "ed", "example.com")
    iid, blob = site.publish(keys, "example.com/app", cache_control=None)
    url = site.url("example.com/app")
    for _ in range(2):
        p = site.podmgr("fetch", "--pull-policy=update", url)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == iid
    assert blob.statuses == [200, 304]
    assert blob.bytes_sent == len(blob.data)


def test_max_age_reuse_without_request(site: Site, keys: Keys) -> None:
    write_key(site.admin, keys, "ed", "example.com")
    _, blob = site.publish(keys, "example.com/app", cache_control="max-age=600")
    url = site.url("example.com/app")
    assert site.podmgr("fetch", "--pull-policy=update", url).returncode == 0
    assert site.podmgr("fetch", "--pull-policy=update", url).returncode == 0
    assert blob.statuses == [200]


def test_pull_policy_never(site: Site, keys: Keys) -> None:
    write_key(site.admin, keys, "ed", "example.com")
    iid, _ = site.publish(keys, "example.com/app")
    p = site.podmgr("fetch", "--pull-policy=never", "example.com/app")
    assert p.returncode == 3 and "--pull-policy=never" in p.stderr
    assert site.server.paths == []
    assert site.podmgr("fetch", "example.com/app").returncode == 0
    p = site.podmgr("fetch", "--pull-policy=never", "example.com/app")
    assert p.returncode == 0 and p.stdout.strip() == iid


def test_dependencies_are_fetched_recursively(site: Site, keys: Keys) -> None:
    write_key(site.admin, keys, "ed", "example.com")
    base_id, _ = site.publish(keys, "example.com/base", files={"etc/base": "base"})
    mid_id, _ = site.publish(keys, "example.com/mid", deps=[dep("example.com/base")],
                             files={"etc/mid": "mid"})  # fmt: skip
    top_id, _ = site.publish(keys, "example.com/top", deps=[dep("example.com/mid")],
                             files={"etc/top": "top"})  # fmt: skip
    p = site.podmgr("fetch", "example.com/top")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [top_id]
    assert {i["id"] for i in site.listed()} == {base_id, mid_id, top_id}
    assert all(i["verified"] for i in site.listed())
    with Store.open(site.state) as store:
        rootfs = store.render(top_id)
        assert sorted(p.name for p in (rootfs / "etc").iterdir()) == ["base", "mid", "top"]


def test_dependency_with_wrong_image_id_is_refused(site: Site, keys: Keys) -> None:
    write_key(site.admin, keys, "ed", "example.com")
    site.publish(keys, "example.com/base")
    site.publish(keys, "example.com/top", deps=[dep("example.com/base", "sha512-" + "0" * 128)])
    p = site.podmgr("fetch", "example.com/top")
    assert p.returncode == 4 and "image ID mismatch" in p.stderr


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("tampered", "bad signature"),
        ("untrusted", "untrusted key"),
        ("missing", "no signature"),
    ],
)
def test_refusals_leave_the_store_unchanged(
    site: Site, keys: Keys, case: str, message: str
) -> None:
    write_key(site.admin, keys, "ed", "example.com")
    site.publish(
        keys,
        "example.com/app",
        tamper=case == "tampered",
        signer={"untrusted": "other", "missing": None}.get(case, "ed"),
    )
    p = site.podmgr("fetch", "example.com/app")
    assert p.returncode == 1, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("podmgr: error:")]
    assert len(errors) == 1 and "example.com/app" in errors[0]
    assert message in p.stderr.lower(), p.stderr
    if case == "untrusted":
        assert keys.fpr["other"] in p.stderr
    site.assert_empty_store()


def test_insecure_image_fetches_unsigned_with_a_warning(site: Site, keys: Keys) -> None:
    iid, _ = site.publish(keys, "example.com/app", signer=None)
    p = site.podmgr("fetch", "--insecure-options=image", "example.com/app")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == iid
    assert "WARNING" in p.stderr and "--insecure-options=image" in p.stderr
    assert site.listed()[0]["verified"] is False


def test_bad_insecure_option_is_a_usage_error(site: Site) -> None:
    p = site.podmgr("fetch", "--insecure-options=imgae", "example.com/app")
    assert p.returncode == 2 and "image, http, tls, all" in p.stderr


def test_local_file_with_signature_beside_and_explicit(site: Site, keys: Keys) -> None:
    write_key(site.admin, keys, "rsa")  # a root key: trusted for every name
    aci, iid = build_image(site.tmp / "local.aci", manifest("example.com/local"), {"a": "b"})
    sig = keys.sign("rsa", aci, site.tmp / "elsewhere.asc")
    p = site.podmgr("fetch", str(aci))
    assert p.returncode == 1 and "no signature" in p.stderr
    p = site.podmgr("fetch", f"--signature={sig}", f"file://{aci}")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == iid
    assert site.listed()[0]["signerFingerprint"] == keys.fpr["rsa"]
    keys.sign("rsa", aci)  # local.aci.asc beside the file
    assert site.podmgr("fetch", str(aci)).returncode == 0


def test_url_with_signature_beside(site: Site, keys: Keys) -> None:
    write_key(site.admin, keys, "ed", "example.com/app")
    iid, _ = site.publish(keys, "example.com/app")
    p = site.podmgr("fetch", site.url("example.com/app"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == iid


def _store_state(site: Site) -> tuple[object, ...]:
    cas = site.state / "cas"
    return (
        site.listed(),
        sorted(p.name for p in (cas / "blobs").iterdir()),
        sorted(p.name for p in (cas / "trees").iterdir()),
        sorted(p.name for p in (cas / "tmp").iterdir()),
        sorted(p.name for p in (cas / "downloads").iterdir() if not p.name.endswith("part.json")),
    )


@pytest.mark.parametrize("source", ["discovery", "file"])
def test_tampered_content_is_refused_after_the_overlapped_import(
    site: Site, keys: Keys, source: str
) -> None:
    """A byte changed inside a file of an uncompressed image: the archive stays valid, so
    the import's pass completes and only the signature check (fed by that pass) refuses."""
    from podmgr import aci as aci_mod

    write_key(site.admin, keys, "ed", "example.com")
    site.publish(keys, "example.com/good")
    assert site.podmgr("fetch", "example.com/good").returncode == 0
    before = _store_state(site)
    assert before[1] and before[2]

    aci, _ = build_image(site.tmp / "app.aci", manifest("example.com/app"),
                         {"payload": "A" * 8192}, aci_mod.Compression.NONE)  # fmt: skip
    sig = keys.sign("ed", aci)
    data = aci.read_bytes()
    i = data.index(b"A" * 8192) + 4000
    tampered = data[:i] + b"B" + data[i + 1 :]
    if source == "file":
        aci.write_bytes(tampered)
        ref = str(aci)
    else:
        path = f"/images/example.com/app-latest-{OS}-{ARCH}.aci"
        site.server.httpd.routes[path + ".asc"] = page(sig.read_bytes(), ctype="text/plain")
        site.server.httpd.routes[path] = Blob(tampered)
        ref = "example.com/app"
    p = site.podmgr("fetch", ref)
    assert p.returncode == 1, p.stderr
    assert "bad signature" in p.stderr.lower() and "example.com/app" in p.stderr
    assert _store_state(site) == before
