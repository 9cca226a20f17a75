"""The appc metadata service (ace.md, "App Container Metadata Service").

``podmgr metadata-service`` answers HTTP on the socket it inherits from
``podmgr-metadata.socket`` (the sd_listen_fds protocol), or on ``--listen ADDR:PORT``.
It holds no state of its own: every request names its pod by the token in the URL's
first path segment, which leads through an index in the state directory to the pod's
directory, whose files answer the request.

- ``--dir/metadata/tokens/<token>`` is a symbolic link to the pod's UUID, made at
  prepare time (before the pod directory appears) and removed by ``rm``. A lookup is one
  ``readlink``; the pod's record must then carry the same token (compared in constant
  time), so a stale or forged index entry leads nowhere.
- ``--dir/metadata/hmac.key`` is the host's HMAC-SHA512 key, made on first use (0600).

A request can only reach the pod its token names: paths are matched against a fixed
set of routes, app names against the pod's own apps, and nothing taken from a URL is
ever used as a file name except the token, which must match :func:`podmgr.tokens.is_token` first.

Everything heavy (http.server, cryptography) is imported inside the functions that serve,
so that :func:`metadata_url`, which ``podmgr start`` needs, costs nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from podmgr import logger
from podmgr.errors import InvalidError, UsageError
from podmgr.options import NetMode
from podmgr.tokens import is_token, metadata_dir, tokens_dir

if TYPE_CHECKING:
    from podmgr.podstate import PodRecord

log = logger.get(__name__)

#: rkt's metadata port, where podmgr-metadata.socket listens.
PORT = 18112
#: The base URL (no token) pods on ``--net=host`` are given; podmgr-metadata.socket's
#: ListenStream=. ``$PODMGR_METADATA_URL`` overrides it.
DEFAULT_BASE = f"http://127.0.0.1:{PORT}"
BASE_ENV = "PODMGR_METADATA_URL"

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

JSON = "application/json"
TEXT = "text/plain; charset=us-ascii"
#: Largest POST body accepted (a form with content to sign).
MAX_BODY = 1 << 20
KEY_BYTES = 64
PREFIX = ("acMetadata", "v1")


# ---- the URL pods get ------------------------------------------------------------------


def metadata_base(record: PodRecord, env: Mapping[str, str] | None = None) -> str | None:
    """The service's base URL as seen from inside the pod's network, or None if the pod
    cannot reach it.

    ``--net=host``: loopback, where podmgr-metadata.socket listens (or ``$PODMGR_METADATA_URL``).
    ``--net=none``: only ``lo`` of its own; no URL.
    The default CNI network: its gateway on the bridge (``podmgr-metadata.socket`` also
    listens there). An administrator's network: ``$PODMGR_METADATA_URL`` if set, else no
    URL, since podmgr does not know where the service is reachable from there.
    """
    env = os.environ if env is None else env
    if record.net == NetMode.HOST:
        return (env.get(BASE_ENV) or DEFAULT_BASE).rstrip("/")
    if record.net == NetMode.NONE:
        return None
    from podmgr.network import DEFAULT_GATEWAY

    if env.get(BASE_ENV):
        return env[BASE_ENV].rstrip("/")
    if any(n.split(":", 1)[0] == "default" for n in record.networks):
        return f"http://{DEFAULT_GATEWAY}:{DEFAULT_BASE.rsplit(':', 1)[1]}"
    return None


def metadata_url(record: PodRecord, env: Mapping[str, str] | None = None) -> str | None:
    """``$AC_METADATA_URL`` for the pod's apps (no trailing slash)."""
    base = metadata_base(record, env)
    return f"{base}/{record.metadata_token}" if base else None


# ---- the token index ---------------------------------------------------------------------


def key_path(state: Path) -> Path:
    return metadata_dir(state) / "hmac.key"


def sweep(state: Path) -> list[str]:
    """Remove index entries whose pod is gone (a crash between steps of prepare or rm)."""
    d = tokens_dir(state)
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(d):
            with contextlib.suppress(OSError):
                target = os.readlink(d / name)
                pods = state / "pods"
                # A pod being prepared has its token before its directory has its name.
                if not _UUID_RE.fullmatch(target) or not any(
                    (pods / n).is_dir() for n in (target, f".prep-{target}")
                ):
                    os.unlink(d / name)
                    removed.append(name)
    return removed


def lookup(state: Path, token: str) -> PodRecord | None:
    """The pod whose token this is, or None."""
    if not is_token(token):
        return None
    try:
        uuid = os.readlink(tokens_dir(state) / token)
    except OSError:
        return None
    if not _UUID_RE.fullmatch(uuid):
        return None
    from podmgr import podstate

    try:
        record = podstate.load(podstate.pod_dir(state, uuid))
    except Exception:
        return None
    import hmac

    if record.uuid != uuid or not hmac.compare_digest(record.metadata_token, token):
        return None
    return record


# ---- the HMAC key ------------------------------------------------------------------------


def load_key(state: Path) -> bytes:
    """The host's HMAC key, created on first use; refuses a key others could read."""
    path = key_path(state)
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".hmac.key.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, os.urandom(KEY_BYTES))
        os.fsync(fd)
        os.close(fd)
        # link(), unlike rename(), never replaces a key another process made meanwhile.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    from podmgr.fsutil import fsync_dir

    fsync_dir(path.parent)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077 or st.st_uid != os.geteuid():
            raise InvalidError(
                f"{path} is readable by others or not ours",
                hint=f"chmod 600 {path}, or remove it to make a new key",
            )
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise InvalidError(f"{path} is not a {KEY_BYTES}-byte key", hint="remove it")
    return data


def _mac(key: bytes, uuid: str, content: bytes) -> bytes:
    """HMAC-SHA512 over the pod's UUID (16 bytes) then the content, as rkt signs."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import hmac as chmac

    h = chmac.HMAC(key, hashes.SHA512())
    import uuid as uuidlib

    h.update(uuidlib.UUID(uuid).bytes)
    h.update(content)
    return h.finalize()


def sign(key: bytes, uuid: str, content: bytes) -> str:
    import base64

    return base64.standard_b64encode(_mac(key, uuid, content)).decode("ascii")


def verify(key: bytes, uuid: str, content: bytes, signature: str) -> bool:
    import base64
    import binascii
    import hmac

    try:
        sig = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(_mac(key, uuid, content), sig)


# ---- answering requests (pure: state in, response out) -----------------------------------


class Response(NamedTuple):
    status: int
    body: bytes = b""
    content_type: str = TEXT
    allow: str | None = None


NOT_FOUND = Response(404, b"not found\n")


def _json(value: Any) -> Response:
    return Response(200, json.dumps(value, separators=(",", ":")).encode(), JSON)


def _annotations(items: Any) -> list[dict[str, str]]:
    out = []
    for a in items or ():
        if isinstance(a, dict) and isinstance(a.get("name"), str):
            out.append({"name": a["name"], "value": str(a.get("value", ""))})
    return out


def _merge(image: list[dict[str, str]], pod: list[dict[str, str]]) -> list[dict[str, str]]:
    """Image annotations with the pod manifest's app annotations on top (same order)."""
    merged = {a["name"]: a["value"] for a in image}
    merged.update({a["name"]: a["value"] for a in pod})
    return [{"name": k, "value": v} for k, v in merged.items()]


class Handler:
    """Routes one request to an answer; a request never leaves the pod of its token."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self._key: bytes | None = None
        self._key_lock = threading.Lock()

    def key(self) -> bytes:
        with self._key_lock:
            if self._key is None:
                self._key = load_key(self.state)
            return self._key

    def handle(self, method: str, path: str, form: Callable[[], dict[str, str]]) -> Response:
        raw = path.split("?", 1)[0].split("#", 1)[0]
        parts = raw.split("/")
        # "/<token>/acMetadata/v1/<route…>"
        if len(parts) < 5 or parts[0] != "" or tuple(parts[2:4]) != PREFIX:
            return NOT_FOUND
        record = lookup(self.state, parts[1])
        if record is None:
            return NOT_FOUND
        route = parts[4:]
        pdir = self.state / "pods" / record.uuid
        if route[:2] == ["pod", "hmac"] and len(route) == 3 and route[2] in ("sign", "verify"):
            if method != "POST":
                return Response(405, b"use POST\n", allow="POST")
            return self._hmac(record, route[2], form())
        if method not in ("GET", "HEAD"):
            return Response(405, b"use GET\n", allow="GET, HEAD")
        if route == ["pod", "uuid"]:
            return Response(200, record.uuid.encode("ascii"), TEXT)
        if route == ["pod", "manifest"]:
            return Response(200, (pdir / "manifest").read_bytes(), JSON)
        if route == ["pod", "annotations"]:
            doc = json.loads((pdir / "manifest").read_bytes())
            return _json(_annotations(doc.get("annotations")))
        if len(route) >= 3 and route[0] == "apps":
            app = next((a for a in record.apps if a.name == route[1]), None)
            if app is None:
                return NOT_FOUND
            rest = route[2:]
            if rest == ["image", "id"]:
                return Response(200, app.image_id.encode("ascii"), TEXT)
            if rest == ["image", "manifest"]:
                return Response(
                    200, (pdir / "apps" / app.name / "image-manifest").read_bytes(), JSON
                )
            if rest == ["annotations"]:
                image = json.loads((pdir / "apps" / app.name / "image-manifest").read_bytes())
                doc = json.loads((pdir / "manifest").read_bytes())
                ra: dict[str, Any] = next(
                    (a for a in doc.get("apps", ()) if a.get("name") == app.name), {}
                )
                return _json(
                    _merge(
                        _annotations(image.get("annotations")), _annotations(ra.get("annotations"))
                    )
                )
        return NOT_FOUND

    def _hmac(self, record: PodRecord, op: str, form: dict[str, str]) -> Response:
        if "content" not in form:
            return Response(400, b"missing form field content\n")
        content = form["content"].encode("latin-1")
        if op == "sign":
            return Response(200, sign(self.key(), record.uuid, content).encode("ascii"), TEXT)
        import uuid as uuidlib

        try:
            other = str(uuidlib.UUID(form.get("uuid", "")))
        except ValueError:
            return Response(400, b"missing or malformed form field uuid\n")
        if verify(self.key(), other, content, form.get("signature", "")):
            return Response(200, b"", TEXT)
        return Response(403, b"signature does not verify\n", TEXT)


# ---- the server --------------------------------------------------------------------------


def listen_fds(env: Mapping[str, str] | None = None) -> list[int]:
    """The sockets passed by systemd (sd_listen_fds), or none."""
    env = os.environ if env is None else env
    try:
        pid = int(env.get("LISTEN_PID", ""))
        n = int(env.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if pid != os.getpid() or n < 1:
        return []
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    return list(range(3, 3 + n))


def parse_listen(value: str) -> tuple[str, int]:
    """``ADDR:PORT`` or ``[V6ADDR]:PORT``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {value!r}: expected ADDR:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Activity:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.busy = 0
        self.last = time.monotonic()

    def enter(self) -> None:
        with self.lock:
            self.busy += 1

    def leave(self) -> None:
        with self.lock:
            self.busy -= 1
            self.last = time.monotonic()

    def idle_for(self) -> float:
        with self.lock:
            return 0.0 if self.busy else time.monotonic() - self.last


def _make_server(sock: socket.socket, handler: Handler, activity: _Activity) -> Any:
    import urllib.parse
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "podmgr-metadata"
        sys_version = ""
        timeout = 30

        def _form(self) -> dict[str, str]:
            fields: dict[str, str] = {}
            query = self.path.split("?", 1)[1] if "?" in self.path else ""
            body = getattr(self, "_body", b"")
            # latin-1 maps bytes to code points one to one: content is signed byte-exact.
            for text in (query, body.decode("latin-1")):
                for k, v in urllib.parse.parse_qsl(
                    text, keep_blank_values=True, encoding="latin-1"
                ):
                    fields.setdefault(k, v)
            return fields

        def _serve(self, method: str) -> None:
            activity.enter()
            try:
                self._body = b""
                if method == "POST":
                    length = self.headers.get("Content-Length")
                    if length is None or not length.isdigit():
                        return self._send(Response(411, b"Content-Length required\n"), method)
                    if int(length) > MAX_BODY:
                        self.close_connection = True
                        return self._send(Response(413, b"too large\n"), method)
                    self._body = self.rfile.read(int(length))
                try:
                    resp = handler.handle(method, self.path, self._form)
                except FileNotFoundError:
                    resp = NOT_FOUND
                except Exception:
                    log.exception("metadata request failed")
                    resp = Response(500, b"internal error\n")
                self._send(resp, method)
            finally:
                activity.leave()

        def _send(self, resp: Response, method: str) -> None:
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(resp.body)))
            self.send_header("Cache-Control", "no-store")
            if resp.allow:
                self.send_header("Allow", resp.allow)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(resp.body)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_HEAD(self) -> None:
            self._serve("HEAD")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def log_message(self, format: str, *args: Any) -> None:
            # The path carries the pod's token, a secret: never log it.
            log.debug("metadata: %s %s", self.address_string(), self.command)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = sock.family

    srv = Server(sock.getsockname()[:2], RequestHandler, bind_and_activate=False)
    srv.socket.close()
    srv.socket = sock
    srv.server_address = sock.getsockname()[:2]
    return srv


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UsageError(f"{host}:{port} is in use") from None
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    return sock


def serve(
    state: Path,
    *,
    listen: Sequence[str] = (),
    idle_exit: float = 0.0,
    on_ready: Callable[[list[tuple[str, int]]], None] | None = None,
) -> None:
    """Serve until SIGTERM (or, when socket-activated, ``idle_exit`` seconds idle)."""
    from podmgr.errors import Interrupted

    socks: list[socket.socket] = []
    inherited = listen_fds()
    for fd in inherited:
        socks.append(socket.socket(fileno=fd))
    for value in listen:
        socks.append(_bind(*parse_listen(value)))
    if not socks:
        raise UsageError(
            "no socket to serve",
            hint="start podmgr-metadata.socket, or give --listen ADDR:PORT",
        )
    handler = Handler(state)
    activity = _Activity()
    servers = [_make_server(s, handler, activity) for s in socks]
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True)
        for s in servers
    ]
    for t in threads:
        t.start()
    if on_ready is not None:
        on_ready([s.server_address for s in servers])
    try:
        while all(t.is_alive() for t in threads):
            time.sleep(1.0)
            if inherited and idle_exit > 0 and activity.idle_for() >= idle_exit:
                log.info("idle for %.0f s; exiting (the socket stays)", idle_exit)
                break
    except (KeyboardInterrupt, Interrupted):
        pass
    finally:
        for s in servers:
            s.shutdown()
            # The inherited socket is systemd's to keep listening on; closing our copy
            # does not close it.
            s.server_close()
