"""HTTP(S) transport: download a URL to a file in constant memory.

Public interface::

    download(url, dest_dir, *, cache=None, options=None, progress=None, name=None) -> Download
    get(url, *, options=None, limit=1 MiB) -> Page            # small documents, in memory
    FetchOptions(allow_http=False, insecure_tls=False, connect_timeout=30.0,
                 read_timeout=30.0, max_redirects=10, connect_to=None)
    CacheInfo(etag=None, last_modified=None)                  # validators the store recorded
    Download(path, not_modified, etag, last_modified, max_age, final_url, size, resumed_from)
    Page(body, final_url, content_type)
    ProgressCallback = Callable[[int, int | None], None]      # (bytes so far, total or None)
    HTTPStatusError(NetworkError)                             # .status, .url

Behaviour:

- TLS is verified against the system CA store; OpenSSL honours ``SSL_CERT_FILE`` and
  ``SSL_CERT_DIR``. ``insecure_tls`` skips verification. Plain ``http`` is refused
  unless ``allow_http`` (also for a redirect from https to http).
- Proxies come from ``http_proxy``/``https_proxy``/``no_proxy`` (either case); https goes
  through a CONNECT tunnel. Only ``http://`` proxies are supported.
- ``download`` with a ``cache`` sends ``If-None-Match``/``If-Modified-Since``; a 304
  gives ``Download(path=None, not_modified=True)``. ``max_age`` comes from
  ``Cache-Control`` (0 for ``no-cache``/``no-store``) so the caller can skip the
  request entirely while its copy is fresh.
- The body is written to ``<dest_dir>/<name>.part``; next to it ``<name>.part.json``
  records the URL and the response's validator. If the connection drops, the next
  ``download`` of the same URL into the same directory resumes with ``Range`` and
  ``If-Range``; a server answering 200 instead of 206 restarts from zero. On success
  the file is renamed to ``<dest_dir>/<name>`` (the caller moves it into the store).
  Callers serialise downloads of one name into one directory (the store's lock).
- ``connect_timeout`` bounds connecting (and the TLS handshake and proxy tunnel);
  ``read_timeout`` bounds every wait for data, so a stalled server fails in bounded time.
- ``connect_to`` (a test hook, like curl's ``--connect-to``) maps ``host`` or
  ``host:port`` to the ``addr:port`` to connect to, keeping the URL's host for the
  ``Host`` header, SNI and certificate checks. When None it is read from the
  ``PODMGR_CONNECT_TO`` environment variable (``host[:port]=addr:port,…``).
- Every failure is a ``NetworkError`` (``HTTPStatusError`` for a bad status) with a
  one-line message starting ``fetching <url>: ``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import socket
import ssl
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podmgr import __version__
from podmgr.errors import LimitError, NetworkError
from podmgr.fsutil import atomic_write, fsync_dir

ProgressCallback = Callable[[int, int | None], None]

USER_AGENT = f"podmgr/{__version__}"
CHUNK = 64 * 1024
REDIRECTS = frozenset({301, 302, 303, 307, 308})
HINT_TLS = "if you trust this server anyway, pass --insecure-options=tls"
HINT_HTTP = "use an https URL, or pass --insecure-options=http if you trust the network"


class HTTPStatusError(NetworkError):
    """The server answered with a status that is not a success."""

    def __init__(self, message: str, *, status: int, url: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.url = url


@dataclass(frozen=True)
class FetchOptions:
    allow_http: bool = False
    insecure_tls: bool = False
    connect_timeout: float = 30.0
    read_timeout: float = 30.0
    max_redirects: int = 10
    connect_to: Mapping[str, str] | None = None


@dataclass(frozen=True)
class CacheInfo:
    """Validators of a copy the caller already has."""

    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class Download:
    #: The downloaded file, or None when the server said "not modified".
    path: Path | None
    not_modified: bool
    etag: str | None
    last_modified: str | None
    #: Seconds the response may be reused without asking again, if the server said.
    max_age: int | None
    #: The URL after redirects.
    final_url: str
    #: Size of the complete file (0 when not modified).
    size: int
    #: Bytes kept from an interrupted earlier attempt (0 when started afresh).
    resumed_from: int = 0


@dataclass(frozen=True)
class Page:
    body: bytes
    final_url: str
    content_type: str | None


# --- connections -----------------------------------------------------------------------


def _fmt_s(seconds: float) -> str:
    return f"{seconds:g} s"


def parse_connect_to(spec: str) -> dict[str, str]:
    """Parse ``host[:port]=addr:port,…`` (the ``PODMGR_CONNECT_TO`` format)."""
    result: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key or ":" not in value:
            raise NetworkError(f"bad connect-to entry {item!r}: expected host[:port]=addr:port")
        result[key.lower()] = value
    return result


def _connect_target(options: FetchOptions, host: str, port: int) -> tuple[str, int] | None:
    mapping = options.connect_to
    if mapping is None:
        mapping = parse_connect_to(os.environ.get("PODMGR_CONNECT_TO", ""))
    value = mapping.get(f"{host}:{port}") or mapping.get(host)
    if value is None:
        return None
    addr, _, p = value.rpartition(":")
    return addr.strip("[]"), int(p)


def _connector(target: tuple[str, int] | None) -> Callable[..., socket.socket]:
    def create(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        return socket.create_connection(target or address, *args, **kwargs)

    return create


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, timeout: float, target: tuple[str, int] | None):
        super().__init__(host, port, timeout=timeout)
        # http.client keeps the socket factory on the instance; swapping it redirects the
        # TCP connection while Host, SNI and the certificate check keep the URL's host.
        self._create_connection = _connector(target)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(
        self,
        host: str,
        port: int,
        timeout: float,
        target: tuple[str, int] | None,
        context: ssl.SSLContext,
    ):
        super().__init__(host, port, timeout=timeout, context=context)
        self._create_connection = _connector(target)


def _tls_context(options: FetchOptions) -> ssl.SSLContext:
    # A fresh default context per connection: it reads SSL_CERT_FILE/SSL_CERT_DIR now.
    ctx = ssl.create_default_context()
    if options.insecure_tls:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _bypass(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``no_proxy`` (``*``, ``host``, ``.domain``, ``host:port``) covers us."""
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if entry == "*":
            return True
        name, _, eport = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if eport and eport != str(port):
            continue
        name = name.strip("[]").lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _proxy_for(scheme: str, host: str, port: int) -> urllib.parse.SplitResult | None:
    # getproxies_environment reads both cases and ignores HTTP_PROXY under CGI (httpoxy).
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme)
    if not proxy or _bypass(host, port, proxies.get("no", "")):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    parts = urllib.parse.urlsplit(proxy)
    if parts.scheme != "http" or not parts.hostname:
        raise NetworkError(
            f"unsupported proxy {proxy} in {scheme}_proxy: only http:// proxies are supported"
        )
    return parts


def _proxy_auth(proxy: urllib.parse.SplitResult) -> dict[str, str]:
    if proxy.username is None:
        return {}
    creds = urllib.parse.unquote(proxy.username) + ":" + urllib.parse.unquote(proxy.password or "")
    return {"Proxy-Authorization": "Basic " + base64.b64encode(creds.encode()).decode()}


@dataclass
class _Target:
    url: str
    scheme: str
    host: str
    port: int
    path: str


def _check_url(url: str, options: FetchOptions) -> _Target:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise NetworkError(f"fetching {url}: invalid URL ({e})") from e
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise NetworkError(f"fetching {url}: not an http or https URL")
    if scheme == "http" and not options.allow_http:
        raise NetworkError(
            f"fetching {url}: plain http refused (--insecure-options=http allows it)",
            hint=HINT_HTTP,
        )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    default_port = 443 if scheme == "https" else 80
    return _Target(url, scheme, parts.hostname, port or default_port, path)


def _describe(exc: BaseException, t: _Target, options: FetchOptions, connecting: bool) -> str:
    where = f"{t.host}:{t.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or str(exc)
        return (
            f"TLS certificate of {t.host} not trusted ({why}); "
            "--insecure-options=tls skips the check"
        )
    if isinstance(exc, TimeoutError):
        if connecting:
            return f"could not connect to {where} within {_fmt_s(options.connect_timeout)}"
        return f"no data for {_fmt_s(options.read_timeout)} (server stalled)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {t.host}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error with {t.host}: {exc.reason or exc}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "server closed the connection without a response"
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP response ({type(exc).__name__}: {exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def _fail(exc: BaseException, t: _Target, options: FetchOptions, connecting: bool) -> NetworkError:
    hint = HINT_TLS if isinstance(exc, ssl.SSLCertVerificationError) else None
    return NetworkError(f"fetching {t.url}: {_describe(exc, t, options, connecting)}", hint=hint)


def _request(
    t: _Target, options: FetchOptions, headers: Mapping[str, str]
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Connect (directly or through a proxy), send a GET and read the response head."""
    proxy = _proxy_for(t.scheme, t.host, t.port)
    target_path = t.path
    extra: dict[str, str] = {}
    pport = (proxy.port or 80) if proxy is not None else 0
    conn: http.client.HTTPConnection
    if proxy is None:
        direct = _connect_target(options, t.host, t.port)
        if t.scheme == "https":
            conn = _HTTPSConnection(
                t.host, t.port, options.connect_timeout, direct, _tls_context(options)
            )
        else:
            conn = _HTTPConnection(t.host, t.port, options.connect_timeout, direct)
    else:
        assert proxy.hostname is not None
        if t.scheme == "https":
            conn = _HTTPSConnection(
                proxy.hostname, pport, options.connect_timeout, None, _tls_context(options)
            )
            conn.set_tunnel(t.host, t.port, headers=_proxy_auth(proxy))
        else:
            conn = _HTTPConnection(proxy.hostname, pport, options.connect_timeout, None)
            # A plain-http proxy wants the absolute URL as the request target.
            host = f"[{t.host}]" if ":" in t.host else t.host
            target_path = f"http://{host}:{t.port}{t.path}"
            extra = _proxy_auth(proxy)
    try:
        conn.connect()
    except OSError as e:
        conn.close()
        if proxy is not None and not isinstance(e, ssl.SSLError):
            # Everything but TLS (which is end to end through the tunnel) is the proxy's.
            via = _Target(t.url, "http", proxy.hostname or "", pport, "/")
            raise NetworkError(
                f"fetching {t.url}: via proxy {via.host}:{via.port}: "
                f"{_describe(e, via, options, True)}"
            ) from e
        raise _fail(e, t, options, connecting=True) from e
    assert conn.sock is not None
    conn.sock.settimeout(options.read_timeout)
    hdrs = {
        "User-Agent": USER_AGENT,
        "Accept-Encoding": "identity",
        "Connection": "close",
        **extra,
        **headers,
    }
    try:
        conn.request("GET", target_path, headers=hdrs)
        return conn, conn.getresponse()
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        raise _fail(e, t, options, connecting=False) from e


def _open(
    url: str, options: FetchOptions, headers: Mapping[str, str]
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, _Target]:
    """GET ``url``, following redirects; return the first non-redirect response."""
    t = _check_url(url, options)
    for _ in range(options.max_redirects + 1):
        conn, resp = _request(t, options, headers)
        if resp.status not in REDIRECTS:
            return conn, resp, t
        location = resp.getheader("Location")
        conn.close()
        if not location:
            raise NetworkError(f"fetching {t.url}: HTTP {resp.status} redirect without Location")
        new = urllib.parse.urljoin(t.url, location)
        if urllib.parse.urlsplit(new).scheme.lower() == "http" and not options.allow_http:
            raise NetworkError(
                f"fetching {t.url}: redirected to plain http {new} "
                "(--insecure-options=http allows it)",
                hint=HINT_HTTP,
            )
        t = _check_url(new, options)
    raise NetworkError(f"fetching {url}: more than {options.max_redirects} redirects")


def _status_error(t: _Target, resp: http.client.HTTPResponse) -> HTTPStatusError:
    reason = resp.reason or http.client.responses.get(resp.status, "")
    return HTTPStatusError(
        f"fetching {t.url}: HTTP {resp.status} {reason}".rstrip(), status=resp.status, url=t.url
    )


def get(url: str, *, options: FetchOptions | None = None, limit: int = 1 << 20) -> Page:
    """GET a small document (a discovery page, a key, a signature) into memory."""
    options = options or FetchOptions()
    conn, resp, t = _open(url, options, {})
    try:
        if not 200 <= resp.status < 300:
            raise _status_error(t, resp)
        try:
            body = resp.read(limit + 1)
        except (OSError, http.client.HTTPException) as e:
            raise _fail(e, t, options, connecting=False) from e
        if len(body) > limit:
            raise NetworkError(f"fetching {t.url}: response larger than {limit} bytes")
        return Page(body, t.url, resp.getheader("Content-Type"))
    finally:
        conn.close()


# --- download ------------------------------------------------------------------------


def max_age(cache_control: str | None) -> int | None:
    """Seconds a response may be reused per its ``Cache-Control``, or None if unsaid."""
    if not cache_control:
        return None
    age: int | None = None
    for directive in cache_control.split(","):
        key, _, value = directive.strip().partition("=")
        key = key.strip().lower()
        if key in ("no-cache", "no-store"):
            return 0
        if key == "max-age":
            with contextlib.suppress(ValueError):
                age = max(0, int(value.strip().strip('"')))
    return age


def _name_for(url: str) -> str:
    return "dl-" + hashlib.sha256(url.encode()).hexdigest()[:32]


def _validator(etag: str | None, last_modified: str | None) -> str | None:
    """The ``If-Range`` value for a response: a strong ETag, else its date."""
    if etag and not etag.startswith("W/"):
        return etag
    return last_modified or None


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, complete length) from ``bytes a-b/len`` or ``bytes */len``."""
    if not value:
        return None, None
    unit, _, rest = value.strip().partition(" ")
    if unit.lower() != "bytes":
        return None, None
    span, _, total = rest.partition("/")
    first: int | None = None
    with contextlib.suppress(ValueError):
        first = int(span.partition("-")[0]) if span != "*" else None
    length: int | None = None
    with contextlib.suppress(ValueError):
        length = int(total)
    return first, length


@dataclass
class _Partial:
    part: Path
    sidecar: Path

    def load(self, url: str) -> tuple[int, str] | None:
        """(bytes on disk, If-Range validator) of a resumable earlier attempt."""
        try:
            meta = json.loads(self.sidecar.read_text())
            size = self.part.stat().st_size
        except (OSError, ValueError):
            self.discard()
            return None
        validator = meta.get("validator") if isinstance(meta, dict) else None
        if meta.get("url") != url or not isinstance(validator, str) or size == 0:
            self.discard()
            return None
        return size, validator

    def remember(self, url: str, validator: str | None) -> None:
        if validator is None:
            with contextlib.suppress(FileNotFoundError):
                self.sidecar.unlink()
            return
        atomic_write(self.sidecar, json.dumps({"url": url, "validator": validator}), 0o600)

    def discard(self) -> None:
        for p in (self.part, self.sidecar):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def download(
    url: str,
    dest_dir: str | os.PathLike[str],
    *,
    cache: CacheInfo | None = None,
    options: FetchOptions | None = None,
    progress: ProgressCallback | None = None,
    name: str | None = None,
    max_size: int | None = None,
) -> Download:
    """Download ``url`` to ``dest_dir/name`` (default: a name derived from the URL).

    A body larger than ``max_size`` bytes (by its Content-Length, or as it arrives)
    raises LimitError, and its partial file is removed."""
    options = options or FetchOptions()
    dest = Path(dest_dir)
    name = name or _name_for(url)
    partial = _Partial(dest / f"{name}.part", dest / f"{name}.part.json")
    # Two rounds at most: a resume the server cannot honour is retried from zero once.
    for _ in range(2):
        resume = partial.load(url)
        try:
            result = _attempt(url, dest / name, partial, resume, cache, options, progress, max_size)
        except LimitError:
            partial.discard()
            raise
        if result is not None:
            return result
        partial.discard()
    raise NetworkError(f"fetching {url}: the server keeps refusing the byte range")


def _attempt(
    url: str,
    final: Path,
    partial: _Partial,
    resume: tuple[int, str] | None,
    cache: CacheInfo | None,
    options: FetchOptions,
    progress: ProgressCallback | None,
    max_size: int | None = None,
) -> Download | None:
    """One request; None means "drop the partial file and try again from zero"."""
    headers: dict[str, str] = {}
    if cache is not None and cache.etag:
        headers["If-None-Match"] = cache.etag
    if cache is not None and cache.last_modified:
        headers["If-Modified-Since"] = cache.last_modified
    if resume is not None:
        headers["Range"] = f"bytes={resume[0]}-"
        headers["If-Range"] = resume[1]
    conn, resp, t = _open(url, options, headers)
    try:
        etag = resp.getheader("ETag")
        modified = resp.getheader("Last-Modified")
        age = max_age(resp.getheader("Cache-Control"))

        def done(path: Path | None, size: int, offset: int = 0) -> Download:
            return Download(path, path is None, etag, modified, age, t.url, size, offset)

        if resp.status == 304 and cache is not None:
            # Whatever the partial file held, the caller's copy is current.
            partial.discard()
            etag = etag or cache.etag
            modified = modified or cache.last_modified
            return done(None, 0)
        offset = 0
        if resp.status == 416 and resume is not None:
            _, length = _parse_content_range(resp.getheader("Content-Range"))
            if length != resume[0]:
                return None
            # Killed after the last byte but before the rename: the file is complete.
            offset = resume[0]
            if etag is None and resume[1].startswith('"'):
                etag = resume[1]
            if progress is not None:
                progress(offset, offset)
            return done(_finish(partial, final), offset, offset)
        if resp.status == 206 and resume is not None:
            first, _ = _parse_content_range(resp.getheader("Content-Range"))
            if first != resume[0]:
                return None
            offset = resume[0]
        elif resp.status == 200:
            # Record the validator before the first byte so an interruption is resumable;
            # keyed on the URL asked for, since redirects may differ next time.
            partial.remember(url, _validator(etag, modified))
        else:
            raise _status_error(t, resp)
        size = _receive(resp, t, partial, offset, options, progress, max_size)
        return done(_finish(partial, final), size, offset)
    finally:
        conn.close()


def _receive(
    resp: http.client.HTTPResponse,
    t: _Target,
    partial: _Partial,
    offset: int,
    options: FetchOptions,
    progress: ProgressCallback | None,
    max_size: int | None = None,
) -> int:
    """Stream the body into the part file; return the complete file's size."""
    length = resp.getheader("Content-Length")
    expected = offset + int(length) if length and length.isdigit() else None

    def too_large() -> LimitError:
        from podmgr.extract import format_size

        assert max_size is not None
        return LimitError(
            f"fetching {t.url}: it is larger than {format_size(max_size)}, the limit",
            hint="if the source is trusted, raise PODMGR_MAX_ARCHIVE_SIZE",
        )

    if max_size and expected is not None and expected > max_size:
        raise too_large()
    received = offset
    with open(partial.part, "r+b" if offset else "wb") as f:
        f.truncate(offset)
        f.seek(offset)
        if progress is not None:
            progress(received, expected)
        while True:
            try:
                # read1, not readinto: a buffered readinto waits to fill the whole buffer,
                # so bytes that arrived before a stall would be lost instead of kept.
                data = resp.read1(CHUNK)
            except ssl.SSLEOFError:
                # A TLS close without close_notify: a truncation, judged by length below.
                if expected is None:
                    raise NetworkError(f"fetching {t.url}: TLS connection cut short") from None
                data = b""
            except (OSError, http.client.HTTPException) as e:
                raise _fail(e, t, options, connecting=False) from e
            if not data:
                break
            f.write(data)
            received += len(data)
            if max_size and received > max_size:
                raise too_large()
            if progress is not None:
                progress(received, expected)
        f.flush()
        os.fsync(f.fileno())
    if expected is not None and received < expected:
        raise NetworkError(
            f"fetching {t.url}: connection closed after {received} of {expected} bytes",
            hint="run the command again to resume the download",
        )
    return received


def _finish(partial: _Partial, final: Path) -> Path:
    os.replace(partial.part, final)
    with contextlib.suppress(FileNotFoundError):
        partial.sidecar.unlink()
    fsync_dir(final.parent)
    return final
