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
- ``--dir/metadata/hmac.key`` is the host's HMAC-SHA512 key, made by the first prepare
  (0600, root's): the service itself runs as an unprivileged user of its own
  (podmgr-metadata.service) and only reads the state.

A request can only reach the pod its token names: paths are matched against a fixed
set of routes, app names against the pod's own apps, and nothing taken from a URL is
ever used as a file name except the token, which must match :func:`podmgr.tokens.is_token` first.

The service's path imports the standard library only, and the heavy parts of it
(hashlib, urllib.parse) on first use: it is socket-activated, and a pod's app may ask
it something the moment it starts (docs/metadata.md: cold start). Connections are
served by one thread that reads requests without blocking and a fixed pool of workers
that answer them, so a flood of slow clients costs file descriptors and buffers, both
capped, not threads.
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
from podmgr.errors import InvalidError, PodmgrError, UsageError
from podmgr.options import NetMode
from podmgr.tokens import KEY_BYTES, ensure_key, is_token, key_path, tokens_dir

if TYPE_CHECKING:
    from podmgr.podstate import PodRecord

log = logger.get(__name__)

#: rkt's metadata port, where podmgr-metadata.socket listens.
PORT = 18112
#: The base URL (no token) pods on ``--net=host`` are given; podmgr-metadata.socket's
#: ListenStream=. ``$PODMGR_METADATA_URL`` overrides it.
DEFAULT_BASE = f"http://127.0.0.1:{PORT}"
BASE_ENV = "PODMGR_METADATA_URL"

#: The default pod network's gateway (podmgr.network.DEFAULT_GATEWAY, which the test of
#: this module checks; not imported, to keep the network module off the service's path).
_GATEWAY = "172.31.0.1"

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

JSON = "application/json"
TEXT = "text/plain; charset=us-ascii"
#: Largest POST body accepted (a form with content to sign).
MAX_BODY = 1 << 20
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


#: The variable that gives apps the URL (ace.md).
URL_VAR = "AC_METADATA_URL"

Units = list[tuple[str, dict[str, Any], list[tuple[str, dict[str, Any]]]]]


def serving(timeout: float = 2.0) -> bool:
    """Whether the service answers where podmgr-metadata.socket listens.

    The question is an HTTP request (for ``/``, which is not found), and the answer is
    waited for: a running service gives it in well under a millisecond, and a stopped
    one is started by the socket for it, so that it is ready before the pod's apps
    start and their first request is answered at once (docs/metadata.md, cold start).
    Nothing listening, or a service that fails, is no service. Past ``timeout`` the
    service is taken to be there but slow. (On loopback for every pod: the socket's
    gateway address may not be up yet, and both are one socket unit's.)"""
    try:
        with socket.create_connection(("127.0.0.1", PORT), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return s.recv(1) == b"H"
    except TimeoutError:
        return True
    except OSError:
        return False


def _default_url(value: str) -> bool:
    return value.startswith((f"{DEFAULT_BASE}/", f"http://{_GATEWAY}:{PORT}/"))


def unadvertised(batch: Units) -> Units:
    """``batch`` (podmgr.launch's units to start) with ``$AC_METADATA_URL`` taken out of
    the apps' environment if it is the service's default address and nothing listens
    there, as when podmgr is installed from source without its unit files: an app is
    better told there is no service than given a URL that refuses it. A URL set with
    ``$PODMGR_METADATA_URL`` is the administrator's word, and stays."""
    prefix = f"{URL_VAR}="

    def ours(props: Mapping[str, Any]) -> bool:
        return any(
            isinstance(e, str) and e.startswith(prefix) and _default_url(e[len(prefix) :])
            for e in props.get("Environment", ())
        )

    if not any(ours(p) or any(ours(ap) for _, ap in aux) for _, p, aux in batch):
        return batch
    if serving():
        return batch
    log.info("nothing listens on %s: the pod's apps get no %s", DEFAULT_BASE, URL_VAR)

    def strip(props: dict[str, Any]) -> dict[str, Any]:
        if not ours(props):
            return props
        env = [e for e in props["Environment"] if not str(e).startswith(prefix)]
        return {**props, "Environment": env}

    return [(n, strip(p), [(an, strip(ap)) for an, ap in aux]) for n, p, aux in batch]


# ---- the token index ---------------------------------------------------------------------


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


class PodInfo(NamedTuple):
    """What the service needs of a pod's record (``pod.json``), read as plain JSON:
    the models would cost the service's first request pydantic's import (~100 ms)."""

    uuid: str
    token: str
    #: App name to image ID, in the pod's order.
    apps: dict[str, str]


def read_pod(pdir: Path) -> PodInfo | None:
    """The pod's :class:`PodInfo`, or None if its record is missing or malformed."""
    try:
        data = json.loads((pdir / "pod.json").read_bytes())
        apps = {str(a["name"]): str(a["image_id"]) for a in data["apps"]}
        uuid, token = data["uuid"], data["metadata_token"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(uuid, str) or not isinstance(token, str):
        return None
    return PodInfo(uuid, token, apps)


def lookup(state: Path, token: str) -> PodInfo | None:
    """The pod whose token this is, or None."""
    if not is_token(token):
        return None
    try:
        uuid = os.readlink(tokens_dir(state) / token)
    except OSError:
        return None
    if not _UUID_RE.fullmatch(uuid):
        return None
    info = read_pod(state / "pods" / uuid)
    if info is None:
        return None
    import hmac

    if info.uuid != uuid or not hmac.compare_digest(info.token, token):
        return None
    return info


# ---- the HMAC key ------------------------------------------------------------------------


def load_key(state: Path) -> bytes:
    """The host's HMAC key. podmgr makes it as a pod is prepared (:func:`ensure_key`);
    made here only if missing and we may (a service run by hand as root)."""
    path = key_path(state)
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    try:
        ensure_key(state)
    except OSError as e:
        raise InvalidError(
            f"{path} is missing and cannot be made here: {e.strerror}",
            hint="prepare a pod (podmgr makes the key), or run podmgr gc as root",
        ) from None
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        # root's (podmgr made it), or ours (a service run by hand as another user).
        if st.st_mode & 0o077 or st.st_uid not in (0, os.geteuid()):
            raise InvalidError(
                f"{path} is readable by others or not root's",
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
    import hashlib
    import hmac

    return hmac.new(key, bytes.fromhex(uuid.replace("-", "")) + content, hashlib.sha512).digest()


def sign(key: bytes, uuid: str, content: bytes) -> str:
    import binascii

    return binascii.b2a_base64(_mac(key, uuid, content), newline=False).decode("ascii")


def verify(key: bytes, uuid: str, content: bytes, signature: str) -> bool:
    import binascii
    import hmac

    try:
        sig = binascii.a2b_base64(signature, strict_mode=True)
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
FAILED = Response(500, b"the metadata service failed; its journal says why\n")


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
        pod = lookup(self.state, parts[1])
        if pod is None:
            return NOT_FOUND
        route = parts[4:]
        pdir = self.state / "pods" / pod.uuid
        if route[:2] == ["pod", "hmac"] and len(route) == 3 and route[2] in ("sign", "verify"):
            if method != "POST":
                return Response(405, b"use POST\n", allow="POST")
            return self._hmac(pod, route[2], form())
        if method not in ("GET", "HEAD"):
            return Response(405, b"use GET\n", allow="GET, HEAD")
        if route == ["pod", "uuid"]:
            return Response(200, pod.uuid.encode("ascii"), TEXT)
        if route == ["pod", "manifest"]:
            return Response(200, pod_manifest((pdir / "manifest").read_bytes()), JSON)
        if route == ["pod", "annotations"]:
            doc = json.loads((pdir / "manifest").read_bytes())
            return _json(_annotations(doc.get("annotations")))
        if len(route) >= 3 and route[0] == "apps":
            if route[1] not in pod.apps:
                return NOT_FOUND
            name, rest = route[1], route[2:]
            if rest == ["image", "id"]:
                return Response(200, pod.apps[name].encode("ascii"), TEXT)
            if rest == ["image", "manifest"]:
                return Response(200, (pdir / "apps" / name / "image-manifest").read_bytes(), JSON)
            if rest == ["annotations"]:
                image = json.loads((pdir / "apps" / name / "image-manifest").read_bytes())
                doc = json.loads((pdir / "manifest").read_bytes())
                ra: dict[str, Any] = next(
                    (a for a in doc.get("apps", ()) if a.get("name") == name), {}
                )
                return _json(
                    _merge(
                        _annotations(image.get("annotations")), _annotations(ra.get("annotations"))
                    )
                )
        return NOT_FOUND

    def _hmac(self, pod: PodInfo, op: str, form: dict[str, str]) -> Response:
        if "content" not in form:
            return Response(400, b"missing form field content\n")
        content = form["content"].encode("latin-1")
        if op == "sign":
            return Response(200, sign(self.key(), pod.uuid, content).encode("ascii"), TEXT)
        import uuid as uuidlib

        try:
            other = str(uuidlib.UUID(form.get("uuid", "")))
        except ValueError:
            return Response(400, b"missing or malformed form field uuid\n")
        if verify(self.key(), other, content, form.get("signature", "")):
            return Response(200, b"", TEXT)
        return Response(403, b"signature does not verify\n", TEXT)


def pod_manifest(raw: bytes) -> bytes:
    """The reified pod manifest as served: as stored, but with its ``annotations`` always
    present, ``[]`` when it has none (podmgr's manifests omit empty lists), so that it
    agrees with ``/pod/annotations``."""
    doc = json.loads(raw)
    if isinstance(doc, dict) and "annotations" not in doc:
        doc["annotations"] = []
        return json.dumps(doc, indent=2, ensure_ascii=False).encode() + b"\n"
    return raw


# ---- the server --------------------------------------------------------------------------

#: Limits on what one client may make the service hold. A request's head is a request
#: line and a few headers; a body is a form to sign (rkt's clients sign small documents).
MAX_HEAD = 16 << 10
MAX_BODY = 256 << 10
#: Open connections at once; a new one beyond this closes the longest-waiting idle one.
MAX_CONNECTIONS = 256
#: Threads answering complete requests (file reads, HMAC); reading requests and writing
#: answers takes none of them.
WORKERS = 4
#: Seconds a connection has for sending its request (head and body), from its first
#: byte or the end of its previous answer; and for taking an answer.
REQUEST_TIMEOUT = 10.0

_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    505: "HTTP Version Not Supported",
}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})


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


class Request(NamedTuple):
    method: str
    target: str
    body: bytes
    keep_alive: bool


class BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Method, target, version and headers (names lowercased) of a request head, without
    its blank line. Raises :class:`BadRequest`."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "request head is not ASCII") from None
    lines = text.split("\n")
    parts = lines[0].rstrip("\r").split(" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not method.isalpha() or not method.isupper():
        raise BadRequest(400, "malformed method")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest(505, "HTTP/1.0 or HTTP/1.1 only")
    if not target.startswith("/") or any(c <= " " or c == "\x7f" for c in target):
        raise BadRequest(400, "malformed request target")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        line = line.rstrip("\r")
        name, sep, value = line.partition(":")
        # No obsolete line folding, no space before the colon (RFC 9112, 5.1 and 5.2).
        if not sep or not name or name != name.strip() or any(c <= " " for c in name):
            raise BadRequest(400, "malformed header line")
        name = name.lower()
        if name in headers and name in ("content-length", "transfer-encoding", "host"):
            raise BadRequest(400, f"repeated {name}")
        headers[name] = value.strip(" \t")
    return method, target, version, headers


def parse_request(buf: bytes | bytearray) -> tuple[Request, int] | None:
    """The first request in ``buf`` and how many bytes it took, or None if it is not
    all there yet. Raises :class:`BadRequest` for one that cannot be answered."""
    end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise BadRequest(431, "request head too large")
        return None
    method, target, version, headers = parse_head(bytes(buf[:end]))
    if "transfer-encoding" in headers:
        raise BadRequest(411, "Content-Length required")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit() or not length_text.isascii() or len(length_text) > 12:
        raise BadRequest(400, "malformed Content-Length")
    length = int(length_text)
    if length > MAX_BODY:
        raise BadRequest(413, "too large")
    if method == "POST" and "content-length" not in headers:
        raise BadRequest(411, "Content-Length required")
    start = end + 4
    if len(buf) < start + length:
        return None
    connection = headers.get("connection", "").lower()
    keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    body = bytes(buf[start : start + length])
    return Request(method, target, body, keep), start + length


def form_of(target: str, body: bytes) -> dict[str, str]:
    """The query's and the urlencoded body's fields (first wins), byte for byte:
    latin-1 maps bytes to code points one to one, so content is signed byte-exact."""
    import urllib.parse

    fields: dict[str, str] = {}
    query = target.split("?", 1)[1] if "?" in target else ""
    for text in (query, body.decode("latin-1")):
        for k, v in urllib.parse.parse_qsl(text, keep_blank_values=True, encoding="latin-1"):
            fields.setdefault(k, v)
    return fields


def render(resp: Response, *, head_only: bool, close: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}",
        "Server: podmgr-metadata",
        # C locale, whatever the environment says: Python never calls setlocale itself.
        "Date: " + time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
        "Cache-Control: no-store",
    ]
    if resp.allow:
        lines.append(f"Allow: {resp.allow}")
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + resp.body


class _Conn:
    """One client connection, touched by the loop's thread only."""

    __slots__ = ("buf", "busy", "close_after", "deadline", "events", "out", "since", "sock")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.out: memoryview | None = None
        self.close_after = False
        self.deadline = now + REQUEST_TIMEOUT
        #: A worker is answering its request.
        self.busy = False
        self.since = now
        self.events = 0


class Server:
    """The metadata service's HTTP/1.1 server: one loop (the calling thread) that
    accepts, reads requests and writes answers without blocking, and WORKERS threads
    that turn complete requests into answers. Threads are fixed whatever the clients do;
    connections are capped at MAX_CONNECTIONS, each request at MAX_HEAD + MAX_BODY bytes
    and REQUEST_TIMEOUT seconds."""

    def __init__(
        self,
        socks: Sequence[socket.socket],
        answer: Callable[[Request], Response],
        *,
        workers: int = WORKERS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        import collections
        import selectors

        self.socks = list(socks)
        self.answer = answer
        self.max_connections = max_connections
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, _Conn] = {}
        # deques (thread-safe for append and popleft) and a semaphore, not queue, whose
        # import would be the service's start-up's.
        self.jobs: collections.deque[tuple[_Conn, Request] | None] = collections.deque()
        self.pending = threading.Semaphore(0)
        self.done: collections.deque[tuple[_Conn, bytes, bool]] = collections.deque()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.last_activity = time.monotonic()
        for s in self.socks:
            s.setblocking(False)
            self.sel.register(s, 1, None)  # selectors.EVENT_READ
        self.sel.register(self.wake_r, 1, None)
        self.threads = [
            threading.Thread(target=self._work, name=f"metadata-worker-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self.threads:
            t.start()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for s in self.socks]

    # -- workers (any thread but the loop's) --

    def _put(self, job: tuple[_Conn, Request] | None) -> None:
        self.jobs.append(job)
        self.pending.release()

    def _work(self) -> None:
        while True:
            self.pending.acquire()
            job = self.jobs.popleft()
            if job is None:
                return
            conn, req = job
            try:
                resp = self.answer(req)
            except PodmgrError as e:
                # One line for the journal (a missing key, say), and no detail to a client.
                log.error("metadata request failed: %s", e.message)
                resp = FAILED
            except Exception:
                log.exception("metadata request failed")
                resp = FAILED
            close = not req.keep_alive
            data = render(resp, head_only=req.method == "HEAD", close=close)
            self.done.append((conn, data, close))
            with contextlib.suppress(BlockingIOError):
                os.write(self.wake_w, b"x")

    # -- the loop --

    def serve(self, *, idle_exit: float = 0.0, stop: Callable[[], bool] | None = None) -> None:
        """Serve until ``stop()`` says so, or, with ``idle_exit``, until that many seconds
        pass with no connection open."""
        while stop is None or not stop():
            now = time.monotonic()
            waits = [c.deadline for c in self.conns.values() if not c.busy]
            timeout = min([1.0, *(max(0.0, d - now) for d in waits)])
            for key, ready in self.sel.select(timeout):
                obj = key.fileobj
                if obj == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                elif isinstance(obj, socket.socket) and key.data is None:
                    self._accept(obj)
                else:
                    conn = key.data
                    if ready & 2 and conn.out is not None:  # EVENT_WRITE
                        self._write(conn)
                    elif ready & 1:
                        self._read(conn)
            while self.done:
                conn, data, close = self.done.popleft()
                self._answer(conn, data, close)
            now = time.monotonic()
            for conn in [c for c in self.conns.values() if not c.busy and c.deadline <= now]:
                self._close(conn)
            if self.conns:
                self.last_activity = now
            elif idle_exit > 0 and now - self.last_activity >= idle_exit:
                log.info("idle for %.0f s; exiting (the socket stays)", idle_exit)
                return

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(64):
            try:
                sock, _addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # EMFILE and the like: leave the rest in the backlog for later.
                log.warning("metadata: accept: %s", e.strerror)
                return
            now = time.monotonic()
            if len(self.conns) >= self.max_connections and not self._evict():
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock, now)
            self.conns[sock.fileno()] = conn
            self._watch(conn, 1)

    def _evict(self) -> bool:
        """Close the idle connection that has waited longest, to make room for a new
        one: a slow client then costs others nothing but its own slot."""
        idle = [c for c in self.conns.values() if not c.busy and c.out is None]
        if not idle:
            return False
        self._close(min(idle, key=lambda c: c.since))
        return True

    def _watch(self, conn: _Conn, events: int) -> None:
        if events == conn.events:
            return
        if not events:
            self.sel.unregister(conn.sock)
        elif not conn.events:
            self.sel.register(conn.sock, events, conn)
        else:
            self.sel.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: _Conn) -> None:
        self._watch(conn, 0)
        self.conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        if not conn.buf:
            conn.since = time.monotonic()
        conn.buf += data
        self._next(conn)

    def _next(self, conn: _Conn) -> None:
        """Hand the buffered request to a worker if it is complete."""
        try:
            parsed = parse_request(conn.buf)
        except BadRequest as e:
            resp = Response(e.status, f"{e}\n".encode())
            self._answer(conn, render(resp, head_only=False, close=True), True)
            return
        if parsed is None:
            return
        req, used = parsed
        del conn.buf[:used]
        if req.method not in _METHODS:
            resp = Response(501, b"not implemented\n")
            self._answer(conn, render(resp, head_only=False, close=True), True)
            return
        conn.busy = True
        self._watch(conn, 0)
        self._put((conn, req))

    def _answer(self, conn: _Conn, data: bytes, close: bool) -> None:
        conn.busy = False
        if conn.sock.fileno() < 0:
            return
        conn.out = memoryview(data)
        conn.close_after = close
        conn.deadline = time.monotonic() + REQUEST_TIMEOUT
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        assert conn.out is not None
        try:
            n = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[n:]
        if conn.out:
            self._watch(conn, 2)
            return
        conn.out = None
        if conn.close_after:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            self._close(conn)
            return
        now = time.monotonic()
        conn.deadline = now + REQUEST_TIMEOUT
        conn.since = now
        self._watch(conn, 1)
        if conn.buf:
            self._next(conn)

    def close(self) -> None:
        for _ in self.threads:
            self._put(None)
        for t in self.threads:
            t.join(timeout=5)
        for conn in list(self.conns.values()):
            self._close(conn)
        self.sel.close()
        os.close(self.wake_r)
        os.close(self.wake_w)


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


PR_SET_DUMPABLE = 4


def make_nondumpable() -> None:
    """Make this process non-dumpable: the kernel's ptrace access check then refuses
    every process without CAP_SYS_PTRACE, of whatever user, so that a pod's root app
    cannot reach our memory, environment or root through /proc/<pid> (issue 17)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "prctl(PR_SET_DUMPABLE)")


def serve(
    state: Path,
    *,
    listen: Sequence[str] = (),
    idle_exit: float = 0.0,
    on_ready: Callable[[list[tuple[str, int]]], None] | None = None,
) -> None:
    """Serve until SIGTERM (or, when socket-activated, ``idle_exit`` seconds idle)."""
    from podmgr.errors import Interrupted

    make_nondumpable()
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

    def answer(req: Request) -> Response:
        try:
            return handler.handle(req.method, req.target, lambda: form_of(req.target, req.body))
        except FileNotFoundError:
            return NOT_FOUND

    server = Server(socks, answer)
    try:
        if on_ready is not None:
            on_ready(server.addresses)
        server.serve(idle_exit=idle_exit if inherited else 0.0)
    except (KeyboardInterrupt, Interrupted):
        pass
    finally:
        # The inherited sockets are systemd's to keep listening on; closing our copies
        # does not close them.
        server.close()
        for s in socks:
            s.close()


# ---- the command, without click ------------------------------------------------------------


#: --idle-exit's default.
IDLE_EXIT = "5m"


def main(argv: Sequence[str]) -> int | None:
    """``podmgr [--dir DIR] [--debug] metadata-service [--listen ADDR:PORT]…
    [--idle-exit DURATION]`` without click: the service is socket-activated, and its
    start-up is the first request's wait (docs/metadata.md). None for any other command
    line (``--help``, an option this does not know, a bad value): click takes it then, and
    says what is wrong. podmgr.cli.metadata is the same command's documentation."""
    from podmgr import names

    state = os.environ.get(names.DIR_ENV) or names.STATE_DIR
    listen: list[str] = []
    # Socket-activated, it exits when idle: no podmgr process stays on a host whose
    # pods have not asked for a while; the next pod's start waits for it again.
    idle = IDLE_EXIT
    debug = command = False
    args = list(argv)
    while args:
        a = args.pop(0)
        name, eq, value = a.partition("=")
        if name in ("--dir", "--listen", "--idle-exit") and not eq:
            if not args:
                return None
            value = args.pop(0)
        if not command and a == "metadata-service":
            command = True
        elif not command and name == "--dir":
            state = value
        elif not command and a == "--debug":
            debug = True
        elif command and name == "--listen":
            listen.append(value)
        elif command and name == "--idle-exit":
            idle = value
        else:
            return None
    from podmgr.duration import seconds

    idle_exit = seconds(idle)
    if not command or idle_exit is None:
        return None
    if debug:
        logger.set_level(logger.DEBUG)

    def ready(addresses: list[tuple[str, int]]) -> None:
        for host, port in addresses:
            print(f"listening on {host}:{port}", flush=True)

    serve(Path(state), listen=listen, idle_exit=idle_exit, on_ready=ready)
    return 0
