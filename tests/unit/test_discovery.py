"""appc meta discovery against the spec's test pages, served over real HTTPS on 127.0.0.1.

The name's host (``example.com``) is pointed at the loopback server with
``FetchOptions.connect_to``; the test CA is trusted through ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fetch_servers import PKI, Route, Server, closed_port, make_pki, page, redirect, serve

from podmgr.errors import NetworkError, NotFoundError, UsageError
from podmgr.fetch import ref_kind
from podmgr.fetch.discovery import (
    AppString,
    Meta,
    discover,
    discover_pubkeys,
    host_os_arch,
    parse_app_string,
    parse_meta,
    render_template,
)
from podmgr.fetch.http import FetchOptions

# CI clones the repository elsewhere, with shared/ beside it.
SPEC = Path(__file__).resolve().parents[2].parent / "shared" / "appc-spec"
PAGES = SPEC / "testdata" / "discovery"
STORE = "https://storage.example.com"
KEYS = ["https://example.com/pubkeys.gpg"]


def fake_uname(monkeypatch: pytest.MonkeyPatch, system: str, machine: str) -> None:
    """The host's os/arch come from uname(2), as platform.system()/machine() read it."""
    fake = os.uname_result((system, "host", "6.1", "#1", machine))
    monkeypatch.setattr("os.uname", lambda: fake)


def meta(n: int) -> str:
    return (PAGES / f"meta0{n}.html").read_text()


def app(s: str) -> AppString:
    a = parse_app_string(s)
    # Fixed os/arch so the expected URLs do not depend on the machine running the tests.
    return AppString(a.name, {**a.labels, "os": "linux", "arch": "amd64"}, a.explicit)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "no_proxy", "PODMGR_CONNECT_TO"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def site(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Route]]:
    """Routes of a TLS server standing in for example.com; add pages before discovering."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    routes: dict[str, Route] = {}
    yield routes


def opts(srv: Server, **kw: bool) -> FetchOptions:
    return FetchOptions(
        connect_to={"example.com": f"127.0.0.1:{srv.port}"},
        read_timeout=5,
        connect_timeout=5,
        **kw,
    )


# --- app strings -----------------------------------------------------------------------


def test_app_string_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_uname(monkeypatch, "Linux", "x86_64")
    a = parse_app_string("example.com/app")
    assert a.name == "example.com/app" and a.explicit == frozenset()
    assert dict(a.labels) == {"version": "latest", "os": "linux", "arch": "amd64"}


def test_app_string_version_and_labels() -> None:
    a = parse_app_string("example.com/app:1.0.0,os=freebsd,channel=beta%2C1")
    assert dict(a.labels) == {
        "version": "1.0.0",
        "os": "freebsd",
        "channel": "beta,1",
        "arch": host_os_arch()[1],
    }
    assert a.explicit == {"version", "os", "channel"}
    assert str(a) == f"example.com/app:1.0.0,arch={a.labels['arch']},channel=beta%2C1,os=freebsd"
    assert dict(parse_app_string("example.com/app,version=2").labels)["version"] == "2"


@pytest.mark.parametrize(
    ("s", "why"),
    [
        ("Example.com/app", "not an AC identifier"),
        ("example.com/app:1:2", "more than one ':'"),
        ("example.com/app:", "empty version"),
        ("example.com/app,os", "has no '='"),
        ("example.com/app,os=linux,os=freebsd", "given twice"),
        ("example.com/app:1,version=2", "given twice"),
        ("example.com/app,name=x", "other than 'name'"),
        ("example.com/app,os=linux:1", "only allowed between the name and the version"),
        ("example.com/app,", "empty label"),
    ],
)
def test_bad_app_strings(s: str, why: str) -> None:
    with pytest.raises(UsageError, match=why) as ei:
        parse_app_string(s)
    assert str(ei.value).startswith(f"invalid app string {s!r}: ")


@pytest.mark.parametrize(
    ("machine", "arch"),
    [
        ("x86_64", "amd64"),
        ("i686", "i386"),
        ("aarch64", "aarch64"),
        ("armv7l", "armv7l"),
        ("ppc64le", "ppc64le"),
        ("s390x", "s390x"),
    ],
)
def test_host_arch_in_appc_spelling(
    machine: str, arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_uname(monkeypatch, "Linux", machine)
    assert host_os_arch() == ("linux", arch)


def test_ref_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local.aci").write_bytes(b"")
    assert ref_kind("local.aci") == "file"
    assert ref_kind("/abs/img.aci") == "file"
    assert ref_kind("file:///abs/img.aci") == "file"
    assert ref_kind("https://example.com/img.aci") == "url"
    assert ref_kind("example.com/app:1.0") == "name"


# --- templates and meta tags -----------------------------------------------------------


def test_render_template() -> None:
    v = {"name": "example.com/app", "version": "1", "ext": "aci", "x": "{os}"}
    assert (
        render_template("https://s/{name}-{version}.{ext}", v) == "https://s/example.com/app-1.aci"
    )
    assert render_template("https://s/{name}-{os}.{ext}", v) is None
    assert render_template("https://s/{x}", v) == "https://s/{os}"


def test_parse_meta_of_the_spec_pages() -> None:
    assert parse_meta(meta(6)) == [
        Meta(
            "ac-discovery", "example.com", f"{STORE}/{{name}}-{{version}}-{{os}}-{{arch}}.{{ext}}"
        ),
        Meta("ac-discovery", "example.com", f"{STORE}/{{name}}-{{version}}.{{ext}}"),
        Meta(
            "ac-discovery",
            "example.com",
            "hdfs://storage.example.com/{name}-{version}-{os}-{arch}.{ext}",
        ),
        Meta("ac-discovery-pubkeys", "example.com", "https://example.com/pubkeys.gpg"),
    ]
    assert parse_meta('<meta name="ac-discovery" content="only-one-field">') == []


# --- discovery over HTTPS --------------------------------------------------------------


def test_meta01_template_and_pubkeys(pki: PKI, site: dict[str, Route]) -> None:
    site["/reduce-worker"] = page(meta(1))
    with serve(site, tls=pki.server_context()) as srv:
        ep = discover(app("example.com/reduce-worker:1.0.0"), opts(srv))
    assert srv.paths == ["/reduce-worker?ac-discovery=1"]
    assert srv.log[0][1]["Host"] == "example.com"
    assert ep.acis == [f"{STORE}/example.com/reduce-worker-1.0.0-linux-amd64.aci"]
    assert ep.signatures == [f"{STORE}/example.com/reduce-worker-1.0.0-linux-amd64.aci.asc"]
    assert ep.pubkeys == KEYS


def test_meta02_without_pubkeys_and_default_version(pki: PKI, site: dict[str, Route]) -> None:
    site["/app"] = page(meta(2))
    with serve(site, tls=pki.server_context()) as srv:
        ep = discover(app("example.com/app"), opts(srv))
    assert ep.acis == [f"{STORE}/example.com/app-latest-linux-amd64.aci"]
    assert ep.pubkeys == []


def test_meta03_only_pubkeys(pki: PKI, site: dict[str, Route]) -> None:
    site["/app"] = site["/"] = page(meta(3))
    with serve(site, tls=pki.server_context()) as srv:
        with pytest.raises(NotFoundError) as ei:
            discover(app("example.com/app"), opts(srv))
        assert discover_pubkeys("example.com/app", opts(srv)) == KEYS
    assert str(ei.value) == (
        "discovering images for example.com/app failed after 2 discovery URLs; last: "
        "https://example.com?ac-discovery=1 has no ac-discovery tag for example.com/app"
    )


def test_meta04_another_storage_host(pki: PKI, site: dict[str, Route]) -> None:
    site["/app"] = page(meta(4))
    with serve(site, tls=pki.server_context()) as srv:
        ep = discover(app("example.com/app:2"), opts(srv))
    assert ep.acis == ["https://another.storage.example.com/example.com/app-2-linux-amd64.aci"]


def test_meta05_and_06_several_templates_in_order(pki: PKI, site: dict[str, Route]) -> None:
    site["/five"], site["/six"] = page(meta(5)), page(meta(6))
    with serve(site, tls=pki.server_context()) as srv:
        five = discover(app("example.com/five:1"), opts(srv))
        six = discover(app("example.com/six:1"), opts(srv))
    assert five.acis == [
        f"{STORE}/example.com/five-1-linux-amd64.aci",
        f"{STORE}/example.com/five-1.aci",
    ]
    assert five.signatures == [a + ".asc" for a in five.acis]
    # Other transports are returned too; the caller picks the schemes it can fetch.
    assert six.acis[2] == "hdfs://storage.example.com/example.com/six-1-linux-amd64.aci"
    assert six.pubkeys == KEYS


def test_walks_up_the_name(pki: PKI, site: dict[str, Route]) -> None:
    site["/project"] = page("<html><head><title>no tags</title></head></html>")
    site["/"] = page(meta(1))
    with serve(site, tls=pki.server_context()) as srv:
        ep = discover(app("example.com/project/subproject:1"), opts(srv))
    # subproject: 404, project: a page without tags, then the root.
    assert srv.paths == [
        "/project/subproject?ac-discovery=1",
        "/project?ac-discovery=1",
        "/?ac-discovery=1",
    ]
    assert ep.acis == [f"{STORE}/example.com/project/subproject-1-linux-amd64.aci"]


def test_prefix_must_match(pki: PKI, site: dict[str, Route]) -> None:
    other = meta(1).replace('content="example.com ', 'content="example.com/other ')
    site["/app"] = page(other)
    site["/"] = page(meta(4))
    with serve(site, tls=pki.server_context()) as srv:
        ep = discover(app("example.com/app:1"), opts(srv))
    assert ep.acis == ["https://another.storage.example.com/example.com/app-1-linux-amd64.aci"]


def test_labels_and_skipped_templates(pki: PKI, site: dict[str, Route]) -> None:
    site["/app"] = page(
        '<meta name="ac-discovery" content="example.com https://s/{missing}/{name}.{ext}">\n'
        '<meta name="ac-discovery" content="example.com https://s/{name}.aci">\n'
        '<meta name="ac-discovery" content="example.com https://s/{channel}/{name}-{version}.{ext}">'
    )
    with serve(site, tls=pki.server_context()) as srv:
        ep = discover(app("example.com/app:3,channel=beta"), opts(srv))
        with pytest.raises(NotFoundError, match=r"no ac-discovery template for example\.com/app"):
            discover(app("example.com/app:3"), opts(srv))
    assert ep.acis == ["https://s/beta/example.com/app-3.aci"]
    assert ep.signatures == ["https://s/beta/example.com/app-3.aci.asc"]


def test_discovery_follows_redirects(pki: PKI, site: dict[str, Route]) -> None:
    site["/app"] = redirect("/moved/app?ac-discovery=1")
    site["/moved/app"] = page(meta(1))
    with serve(site, tls=pki.server_context()) as srv:
        ep = discover(app("example.com/app:1"), opts(srv))
    assert srv.paths == ["/app?ac-discovery=1", "/moved/app?ac-discovery=1"]
    assert ep.pubkeys == KEYS


def test_unknown_ca_needs_insecure_tls(pki: PKI) -> None:
    # No SSL_CERT_FILE for the test CA here.
    with serve({"/app": page(meta(1))}, tls=pki.server_context()) as srv:
        with pytest.raises(NetworkError) as ei:
            discover(app("example.com/app:1"), opts(srv))
        ep = discover(app("example.com/app:1"), opts(srv, insecure_tls=True))
    assert "TLS certificate of example.com not trusted" in str(ei.value)
    assert ep.pubkeys == KEYS


def test_plain_http_only_with_allow_http() -> None:
    with serve({"/app": page(meta(1))}) as srv:
        with pytest.raises(NetworkError, match="failed after 2 discovery URLs"):
            discover(app("example.com/app:1"), opts(srv))
        ep = discover(app("example.com/app:1"), opts(srv, allow_http=True))
    assert ep.acis == [f"{STORE}/example.com/app-1-linux-amd64.aci"]


def test_unreachable_host_is_a_network_error() -> None:
    port = closed_port()
    o = FetchOptions(connect_to={"example.com": f"127.0.0.1:{port}"})
    with pytest.raises(NetworkError) as ei:
        discover(app("example.com/app"), o)
    assert not isinstance(ei.value, NotFoundError)
    assert "connection refused" in str(ei.value)
    with pytest.raises(NetworkError):
        discover_pubkeys("example.com/app", o)
