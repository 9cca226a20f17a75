"""podmgr.fetch.http against real HTTP(S) servers and a CONNECT proxy on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fetch_servers import (
    PKI,
    Blob,
    Route,
    closed_port,
    make_pki,
    page,
    proxy_url,
    redirect,
    serve,
    serve_proxy,
    stall,
)

from podmgr.errors import ExitCode, NetworkError
from podmgr.fetch.http import (
    CacheInfo,
    FetchOptions,
    HTTPStatusError,
    download,
    get,
    max_age,
    parse_connect_to,
)
from podmgr.fetch.progress import ProgressBar, human_size

DATA = os.urandom(300_000)
HTTP = FetchOptions(allow_http=True, connect_timeout=5, read_timeout=5)
PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.delenv("PODMGR_CONNECT_TO", raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def trust_ca(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    yield


def sha512(b: bytes) -> str:
    return hashlib.sha512(b).hexdigest()


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# --- TLS -------------------------------------------------------------------------------


def test_verified_tls_with_ssl_cert_file(pki: PKI, trust_ca: None, tmp_path: Path) -> None:
    blob = Blob(DATA)
    with serve({"/img.aci": blob}, tls=pki.server_context()) as srv:
        d = download(f"{srv.url}/img.aci", tmp_path, name="img")
    assert d.path == tmp_path / "img" and d.path.read_bytes() == DATA
    assert (d.not_modified, d.size, d.etag, d.max_age) == (False, len(DATA), '"v1"', 60)
    assert d.last_modified == blob.last_modified and d.final_url == f"{srv.url}/img.aci"
    assert leftovers(tmp_path) == ["img"]


def test_unknown_ca_is_refused(pki: PKI, tmp_path: Path) -> None:
    with (
        serve({"/img.aci": Blob(DATA)}, tls=pki.server_context()) as srv,
        pytest.raises(NetworkError) as ei,
    ):
        download(f"{srv.url}/img.aci", tmp_path)
    msg = str(ei.value)
    assert msg.startswith(f"fetching {srv.url}/img.aci: TLS certificate of localhost not trusted")
    assert "--insecure-options=tls" in msg and "\n" not in msg
    assert ei.value.exit_code == ExitCode.NETWORK
    assert leftovers(tmp_path) == []


def test_hostname_mismatch_is_refused(pki: PKI, trust_ca: None, tmp_path: Path) -> None:
    with serve({"/x": Blob(DATA)}, tls=pki.server_context()) as srv:
        opts = FetchOptions(connect_to={"other.test": f"127.0.0.1:{srv.port}"})
        with pytest.raises(NetworkError, match=r"TLS certificate of other\.test not trusted"):
            download("https://other.test/x", tmp_path, options=opts)


def test_insecure_tls_skips_verification(pki: PKI, tmp_path: Path) -> None:
    with serve({"/img.aci": Blob(DATA)}, tls=pki.server_context()) as srv:
        d = download(f"{srv.url}/img.aci", tmp_path, options=FetchOptions(insecure_tls=True))
    assert d.path is not None and d.path.read_bytes() == DATA


def test_connect_to_keeps_the_url_host(pki: PKI, trust_ca: None, tmp_path: Path) -> None:
    with serve({"/a.aci": Blob(DATA)}, tls=pki.server_context()) as srv:
        env = f"storage.example.com:443=127.0.0.1:{srv.port}"
        os.environ["PODMGR_CONNECT_TO"] = env  # the clean_env fixture removes it again
        d = download("https://storage.example.com/a.aci", tmp_path)
    assert d.path is not None and d.path.read_bytes() == DATA
    assert srv.log[0][1]["Host"] == "storage.example.com"


def test_plain_http_is_refused_unless_allowed(tmp_path: Path) -> None:
    with serve({"/img.aci": Blob(DATA)}) as srv:
        url = f"{srv.url}/img.aci"
        with pytest.raises(NetworkError) as ei:
            download(url, tmp_path)
        assert srv.log == []
        d = download(url, tmp_path, options=FetchOptions(allow_http=True))
    assert str(ei.value) == (
        f"fetching {url}: plain http refused (--insecure-options=http allows it)"
    )
    assert d.path is not None and d.path.read_bytes() == DATA


# --- caching ---------------------------------------------------------------------------


def test_etag_reuse_downloads_nothing(tmp_path: Path) -> None:
    blob = Blob(DATA)
    with serve({"/img.aci": blob}) as srv:
        url = f"{srv.url}/img.aci"
        first = download(url, tmp_path, options=HTTP)
        sent = blob.bytes_sent
        cache = CacheInfo(first.etag, first.last_modified)
        second = download(url, tmp_path, cache=cache, options=HTTP)
    assert sent == len(DATA) and blob.bytes_sent == sent
    assert len(srv.log) == 2 and blob.statuses == [200, 304]
    assert srv.log[1][1]["If-None-Match"] == '"v1"'
    assert srv.log[1][1]["If-Modified-Since"] == blob.last_modified
    assert second.not_modified and second.path is None and second.size == 0
    assert (second.etag, second.max_age) == ('"v1"', 60)


def test_last_modified_only_and_a_changed_resource(tmp_path: Path) -> None:
    blob = Blob(DATA, etag=None, cache_control="no-cache")
    with serve({"/img.aci": blob}) as srv:
        url = f"{srv.url}/img.aci"
        first = download(url, tmp_path, options=HTTP)
        assert first.etag is None and first.max_age == 0
        second = download(url, tmp_path, cache=CacheInfo(None, first.last_modified), options=HTTP)
        assert second.not_modified
        blob.last_modified = "Thu, 22 Oct 2015 07:28:00 GMT"
        third = download(url, tmp_path, cache=CacheInfo(None, first.last_modified), options=HTTP)
    assert "If-None-Match" not in srv.log[1][1]
    assert not third.not_modified and third.last_modified == blob.last_modified


def test_max_age_parsing() -> None:
    assert max_age(None) is None
    assert max_age("public, max-age=300") == 300
    assert max_age('max-age="5"') == 5
    assert max_age("no-store, max-age=300") == 0
    assert max_age("max-age=oops") is None


# --- resumption ------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_interrupted_download_resumes_with_range(
    scheme: str, pki: PKI, trust_ca: None, tmp_path: Path
) -> None:
    cut = 100_000
    blob = Blob(DATA, cut_after=cut)
    tls = pki.server_context() if scheme == "https" else None
    with serve({"/img.aci": blob}, tls=tls) as srv:
        url = f"{srv.url}/img.aci"
        with pytest.raises(NetworkError) as ei:
            download(url, tmp_path, options=HTTP, name="img")
        assert str(ei.value) == (
            f"fetching {url}: connection closed after {cut} of {len(DATA)} bytes"
        )
        assert (tmp_path / "img.part").stat().st_size == cut
        side = json.loads((tmp_path / "img.part.json").read_text())
        assert side == {"url": url, "validator": '"v1"'}
        d = download(url, tmp_path, options=HTTP, name="img")
    headers = srv.log[1][1]
    assert headers["Range"] == f"bytes={cut}-" and headers["If-Range"] == '"v1"'
    assert blob.statuses == [200, 206]
    assert d.resumed_from == cut and d.size == len(DATA)
    assert d.path is not None and sha512(d.path.read_bytes()) == sha512(DATA)
    assert blob.bytes_sent == len(DATA)
    assert leftovers(tmp_path) == ["img"]


def _leave_partial(d: Path, url: str, data: bytes, validator: str = '"v1"') -> None:
    (d / "img.part").write_bytes(data)
    (d / "img.part.json").write_text(json.dumps({"url": url, "validator": validator}))


def test_server_ignoring_range_restarts(tmp_path: Path) -> None:
    blob = Blob(DATA, honour_range=False)
    with serve({"/img.aci": blob}) as srv:
        url = f"{srv.url}/img.aci"
        _leave_partial(tmp_path, url, b"x" * 1000)
        d = download(url, tmp_path, options=HTTP, name="img")
    assert srv.log[0][1]["Range"] == "bytes=1000-" and blob.statuses == [200]
    assert d.resumed_from == 0 and d.path is not None and d.path.read_bytes() == DATA


def test_changed_resource_restarts_via_if_range(tmp_path: Path) -> None:
    blob = Blob(DATA, etag='"v2"', last_modified=None)
    with serve({"/img.aci": blob}) as srv:
        url = f"{srv.url}/img.aci"
        _leave_partial(tmp_path, url, b"old" * 1000, validator='"v1"')
        d = download(url, tmp_path, options=HTTP, name="img")
    assert blob.statuses == [200]
    assert d.path is not None and d.path.read_bytes() == DATA and d.etag == '"v2"'


def test_partial_of_another_url_is_dropped(tmp_path: Path) -> None:
    blob = Blob(DATA)
    with serve({"/img.aci": blob}) as srv:
        _leave_partial(tmp_path, f"{srv.url}/other.aci", DATA[:1000])
        d = download(f"{srv.url}/img.aci", tmp_path, options=HTTP, name="img")
    assert "Range" not in srv.log[0][1] and d.resumed_from == 0
    assert d.path is not None and d.path.read_bytes() == DATA


def test_416_on_a_complete_partial_finishes_it(tmp_path: Path) -> None:
    blob = Blob(DATA)
    with serve({"/img.aci": blob}) as srv:
        url = f"{srv.url}/img.aci"
        _leave_partial(tmp_path, url, DATA)
        d = download(url, tmp_path, options=HTTP, name="img")
    assert blob.statuses == [416] and blob.bytes_sent == 0
    assert d.etag == '"v1"'
    assert d.path is not None and d.path.read_bytes() == DATA and d.size == len(DATA)


def test_416_on_an_oversized_partial_restarts(tmp_path: Path) -> None:
    blob = Blob(DATA)
    with serve({"/img.aci": blob}) as srv:
        url = f"{srv.url}/img.aci"
        _leave_partial(tmp_path, url, DATA + b"junk")
        d = download(url, tmp_path, options=HTTP, name="img")
    assert blob.statuses == [416, 200]
    assert d.path is not None and d.path.read_bytes() == DATA
    assert leftovers(tmp_path) == ["img"]


# --- errors and timeouts ---------------------------------------------------------------


def test_404_is_one_clear_line(tmp_path: Path) -> None:
    with serve({}) as srv:
        url = f"{srv.url}/missing.aci"
        with pytest.raises(HTTPStatusError) as ei:
            download(url, tmp_path, options=HTTP)
    assert str(ei.value) == f"fetching {url}: HTTP 404 Not Found"
    assert ei.value.status == 404 and ei.value.exit_code == ExitCode.NETWORK
    assert leftovers(tmp_path) == []


def test_stalled_server_before_headers(tmp_path: Path) -> None:
    opts = FetchOptions(allow_http=True, connect_timeout=5, read_timeout=1)
    with serve({"/img.aci": stall}) as srv:
        url = f"{srv.url}/img.aci"
        with pytest.raises(NetworkError) as ei:
            download(url, tmp_path, options=opts)
    assert str(ei.value) == f"fetching {url}: no data for 1 s (server stalled)"


def test_stalled_server_mid_body_keeps_the_partial(tmp_path: Path) -> None:
    opts = FetchOptions(allow_http=True, read_timeout=1.5)
    with serve({"/img.aci": Blob(DATA, stall_after=50_000)}) as srv:
        url = f"{srv.url}/img.aci"
        with pytest.raises(NetworkError) as ei:
            download(url, tmp_path, options=opts, name="img")
    assert str(ei.value) == f"fetching {url}: no data for 1.5 s (server stalled)"
    assert (tmp_path / "img.part").stat().st_size == 50_000


def test_connection_refused(tmp_path: Path) -> None:
    port = closed_port()
    with pytest.raises(NetworkError) as ei:
        download(f"http://127.0.0.1:{port}/x", tmp_path, options=HTTP)
    assert str(ei.value) == (
        f"fetching http://127.0.0.1:{port}/x: connection refused by 127.0.0.1:{port}"
    )


# --- redirects -------------------------------------------------------------------------


def test_redirects_are_followed(tmp_path: Path) -> None:
    routes: dict[str, Route] = {
        "/a": redirect("/b", 301), "/b": redirect("sub/c", 307), "/sub/c": Blob(DATA),
    }
    with serve(routes) as srv:
        d = download(f"{srv.url}/a", tmp_path, options=HTTP)
    assert srv.paths == ["/a", "/b", "/sub/c"]
    assert d.final_url == f"{srv.url}/sub/c" and d.path is not None
    assert d.path.read_bytes() == DATA


def test_redirect_loop_is_bounded(tmp_path: Path) -> None:
    opts = FetchOptions(allow_http=True, max_redirects=3)
    with (
        serve({"/loop": redirect("/loop")}) as srv,
        pytest.raises(NetworkError, match="more than 3 redirects"),
    ):
        download(f"{srv.url}/loop", tmp_path, options=opts)
    assert len(srv.log) == 4


def test_https_to_http_downgrade_refused(pki: PKI, trust_ca: None, tmp_path: Path) -> None:
    with serve({"/img.aci": Blob(DATA)}) as plain:
        target = f"{plain.url}/img.aci"
        with serve({"/a": redirect(target)}, tls=pki.server_context()) as srv:
            with pytest.raises(NetworkError) as ei:
                download(f"{srv.url}/a", tmp_path)
            assert plain.log == []
            d = download(f"{srv.url}/a", tmp_path, options=FetchOptions(allow_http=True))
    assert str(ei.value) == (
        f"fetching {srv.url}/a: redirected to plain http {target} "
        "(--insecure-options=http allows it)"
    )
    assert d.final_url == target


# --- proxies ---------------------------------------------------------------------------


def test_http_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve({"/img.aci": Blob(DATA)}) as srv, serve_proxy() as proxy:
        monkeypatch.setenv("http_proxy", proxy_url(proxy))
        d = download(f"{srv.url}/img.aci", tmp_path, options=HTTP)
    assert proxy.log == [f"GET {srv.url}/img.aci HTTP/1.1"]
    assert d.path is not None and d.path.read_bytes() == DATA


def test_https_proxy_tunnels_with_connect(
    pki: PKI, trust_ca: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve({"/img.aci": Blob(DATA)}, tls=pki.server_context()) as srv, serve_proxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy_url(proxy).replace("http://", "user:pw@"))
        d = download(f"{srv.url}/img.aci", tmp_path)
    assert proxy.log == [f"CONNECT localhost:{srv.port} HTTP/1.0"]
    assert "Proxy-Authorization: Basic dXNlcjpwdw==" in proxy.headers[0]
    assert d.path is not None and d.path.read_bytes() == DATA


def test_no_proxy_bypasses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve({"/img.aci": Blob(DATA)}) as srv, serve_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy_url(proxy))
        monkeypatch.setenv("no_proxy", "localhost, .example.com,127.0.0.1")
        download(f"{srv.url}/img.aci", tmp_path, options=HTTP)
    assert proxy.log == [] and len(srv.log) == 1


def test_dead_proxy_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
    with pytest.raises(NetworkError) as ei:
        download("http://example.com/x", tmp_path, options=HTTP)
    assert str(ei.value) == (
        f"fetching http://example.com/x: via proxy 127.0.0.1:{port}: "
        f"connection refused by 127.0.0.1:{port}"
    )


# --- small documents, progress, helpers -------------------------------------------------


def test_get_small_document() -> None:
    with serve({"/p": page("<html>hi</html>"), "/big": page(b"x" * 2000)}) as srv:
        p = get(f"{srv.url}/p?ac-discovery=1", options=HTTP)
        with pytest.raises(NetworkError, match="larger than 1000 bytes"):
            get(f"{srv.url}/big", options=HTTP, limit=1000)
    assert p.body == b"<html>hi</html>" and p.content_type == "text/html"
    assert srv.paths[0] == "/p?ac-discovery=1"


def test_progress_callback(tmp_path: Path) -> None:
    calls: list[tuple[int, int | None]] = []
    with serve({"/img.aci": Blob(DATA)}) as srv:
        download(
            f"{srv.url}/img.aci", tmp_path, options=HTTP, progress=lambda d, t: calls.append((d, t))
        )
    assert calls[0] == (0, len(DATA)) and calls[-1] == (len(DATA), len(DATA))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_only_on_a_tty() -> None:
    quiet = io.StringIO()
    with ProgressBar(quiet, "x") as bar:
        bar(5, 10)
    assert quiet.getvalue() == ""

    now = [0.0]
    tty = _Tty()
    with ProgressBar(tty, "example.com/app", width=10, clock=lambda: now[0]) as bar:
        bar(0, 2048)
        bar(1024, 2048)  # throttled: no time has passed
        now[0] = 1.0
        bar(1024, 2048)
        bar(2048, 2048)  # the last update always draws
    frames = tty.getvalue().split("\r\x1b[K")[1:]
    assert frames == [
        "example.com/app [          ]   0% 0 B/2.0 KiB",
        "example.com/app [#####     ]  50% 1.0 KiB/2.0 KiB",
        "example.com/app [##########] 100% 2.0 KiB/2.0 KiB\n",
    ]
    assert human_size(3 * 1024**3) == "3.0 GiB"


def test_parse_connect_to() -> None:
    assert parse_connect_to("a.com=127.0.0.1:1, B.com:443=[::1]:2") == {
        "a.com": "127.0.0.1:1",
        "b.com:443": "[::1]:2",
    }
    with pytest.raises(NetworkError, match="bad connect-to entry"):
        parse_connect_to("nonsense")
