"""Real HTTP(S) servers and a CONNECT proxy on 127.0.0.1, in threads, for fetch tests.

- ``make_pki(dir)``: a CA and a server certificate (localhost, 127.0.0.1, example.com,
  *.example.com) made with ``cryptography``.
- ``serve(routes, tls=…)``: a threaded origin server; ``routes`` maps a path (with query)
  to a handler function; returns a ``Server`` with ``.url`` and a request log.
- ``Blob``: a route serving bytes with ETag/Last-Modified/Cache-Control, conditional
  requests, Range/If-Range, and an optional cut after N bytes; counts bytes sent.
- ``serve_proxy()``: an HTTP proxy (absolute-URI GET and CONNECT) logging request lines.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import ipaddress
import select
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Handlers that wait for a stalled client never outlive the test by more than this.
STALL_LIMIT = 20.0


@dataclass
class PKI:
    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def make_pki(directory: Path, cn: str = "podmgr test CA") -> PKI:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName("example.com"),
        x509.DNSName("*.example.com"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pki = PKI(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Origin

    def do_GET(self) -> None:
        self.server.log.append((self.path, dict(self.headers.items())))
        route = self.server.routes.get(self.path) or self.server.routes.get(
            self.path.partition("?")[0]
        )
        if route is None:
            self.reply(404, b"not here\n")
        else:
            route(self)

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Origin(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, routes: dict[str, Callable[[Handler], None]], tls: ssl.SSLContext | None):
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes = routes
        self.tls = tls
        self.log: list[tuple[str, dict[str, str]]] = []
        self.release = threading.Event()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Handshake in the request thread so a client that rejects us blocks nobody.
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out and hang up are the point of some tests


@dataclass
class Server:
    httpd: _Origin
    scheme: str

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = "localhost" if self.scheme == "https" else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def log(self) -> list[tuple[str, dict[str, str]]]:
        return self.httpd.log

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.httpd.log]


@contextlib.contextmanager
def serve(
    routes: dict[str, Callable[[Handler], None]], tls: ssl.SSLContext | None = None
) -> Iterator[Server]:
    httpd = _Origin(routes, tls)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield Server(httpd, "https" if tls else "http")
    finally:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


def stall(h: Handler) -> None:
    """Accept the request and say nothing until the test ends."""
    h.server.release.wait(STALL_LIMIT)


Route = Callable[[Handler], None]


def page(body: bytes | str, status: int = 200, ctype: str = "text/html") -> Route:
    data = body.encode() if isinstance(body, str) else body

    def route(h: Handler) -> None:
        h.reply(status, data, {"Content-Type": ctype})

    return route


def redirect(location: str, status: int = 302) -> Callable[[Handler], None]:
    def route(h: Handler) -> None:
        h.reply(status, b"", {"Location": location})

    return route


@dataclass
class Blob:
    data: bytes
    etag: str | None = '"v1"'
    last_modified: str | None = "Wed, 21 Oct 2015 07:28:00 GMT"
    cache_control: str | None = "max-age=60"
    #: Close the connection after this many body bytes, once.
    cut_after: int | None = None
    #: After this many body bytes, stall until the test ends.
    stall_after: int | None = None
    honour_range: bool = True
    bytes_sent: int = 0
    statuses: list[int] = field(default_factory=list)

    def validators(self) -> dict[str, str]:
        h = {}
        if self.etag:
            h["ETag"] = self.etag
        if self.last_modified:
            h["Last-Modified"] = self.last_modified
        if self.cache_control:
            h["Cache-Control"] = self.cache_control
        return h

    def __call__(self, h: Handler) -> None:
        inm, ims = h.headers.get("If-None-Match"), h.headers.get("If-Modified-Since")
        if (inm is not None and inm == self.etag) or (
            inm is None and ims is not None and ims == self.last_modified
        ):
            self.statuses.append(304)
            h.send_response(304)
            for k, v in self.validators().items():
                h.send_header(k, v)
            h.end_headers()
            return
        start, status, headers = 0, 200, self.validators()
        rng, if_range = h.headers.get("Range"), h.headers.get("If-Range")
        if (
            rng
            and self.honour_range
            and if_range in (None, self.etag, self.last_modified)
        ):
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(self.data):
                self.statuses.append(416)
                h.reply(416, b"", {"Content-Range": f"bytes */{len(self.data)}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(self.data) - 1}/{len(self.data)}"
        self.statuses.append(status)
        body = self.data[start:]
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if self.cut_after is not None:
            body, self.cut_after = body[: self.cut_after], None
            h.close_connection = True
        elif self.stall_after is not None:
            h.wfile.write(body[: self.stall_after])
            h.wfile.flush()
            self.bytes_sent += self.stall_after
            stall(h)
            return
        h.wfile.write(body)
        self.bytes_sent += len(body)


# --- proxy ---------------------------------------------------------------------------


def _pipe(a: socket.socket, b: socket.socket) -> None:
    socks = [a, b]
    while True:
        ready, _, _ = select.select(socks, [], [], STALL_LIMIT)
        if not ready:
            return
        for s in ready:
            data = s.recv(65536)
            if not data:
                return
            (b if s is a else a).sendall(data)


class _ProxyHandler(socketserver.StreamRequestHandler):
    server: _Proxy

    def handle(self) -> None:
        line = self.rfile.readline().decode("latin-1").rstrip("\r\n")
        head: list[str] = []
        while (h := self.rfile.readline().decode("latin-1").rstrip("\r\n")) != "":
            head.append(h)
        self.server.log.append(line)
        self.server.headers.append(head)
        method, target, _ = line.split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up = socket.create_connection((host, int(port)), timeout=5)
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
        else:
            from urllib.parse import urlsplit

            u = urlsplit(target)
            up = socket.create_connection((u.hostname or "", u.port or 80), timeout=5)
            path = u.path + ("?" + u.query if u.query else "")
            kept = [h for h in head if not h.lower().startswith("proxy-")]
            request = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}\r\n" for k in kept)
            up.sendall((request + "\r\n").encode("latin-1"))
        with up:
            _pipe(self.connection, up)


class _Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.log: list[str] = []
        self.headers: list[list[str]] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@contextlib.contextmanager
def serve_proxy() -> Iterator[_Proxy]:
    proxy = _Proxy()
    t = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        t.join(5)


def proxy_url(proxy: _Proxy) -> str:
    return f"http://127.0.0.1:{proxy.server_address[1]}"


def closed_port() -> int:
    """A loopback port with (almost certainly) nobody listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
