"""The metadata service's HTTP server (podmgr.metadata.Server), its request parser, its
command line without click, and what podmgr advertises to apps; on loopback sockets of
the test's own, without systemd."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podmgr import metadata, network
from podmgr.metadata import BadRequest, Request, Response, Server, parse_request

pytestmark = pytest.mark.unit


# ---- the parser ------------------------------------------------------------------------


def test_a_whole_get_is_parsed_and_what_follows_is_left() -> None:
    buf = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\nGET /next"
    req, used = parse_request(buf) or pytest.fail("not parsed")
    assert req == Request("GET", "/a?b=c", b"", True)
    assert buf[used:] == b"GET /next"


def test_a_request_not_all_there_is_waited_for() -> None:
    assert parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n") is None
    head = b"POST /s HTTP/1.1\r\nContent-Length: 10\r\n\r\n"
    assert parse_request(head + b"12345") is None
    req, used = parse_request(head + b"1234567890") or pytest.fail("not parsed")
    assert req.body == b"1234567890" and used == len(head) + 10


@pytest.mark.parametrize(
    ("version", "connection", "keep"),
    [
        ("HTTP/1.1", None, True),
        ("HTTP/1.1", "close", False),
        ("HTTP/1.0", None, False),
        ("HTTP/1.0", "keep-alive", True),
    ],
)
def test_keep_alive_follows_the_version_and_connection(
    version: str, connection: str | None, keep: bool
) -> None:
    extra = f"Connection: {connection}\r\n" if connection else ""
    parsed = parse_request(f"GET / {version}\r\n{extra}\r\n".encode())
    assert parsed is not None and parsed[0].keep_alive is keep


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET /\r\n\r\n", 400),
        (b"get / HTTP/1.1\r\n\r\n", 400),
        (b"GET x HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nNo colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nName : v\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\n\r\n", 411),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n1", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * metadata.MAX_HEAD, 431),
    ],
)
def test_bad_requests_are_refused_with_their_status(raw: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as e:
        parse_request(raw)
    assert e.value.status == status


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_any_bytes_parse_or_are_refused(data: bytes) -> None:
    with contextlib.suppress(BadRequest):
        parse_request(data)
        parse_request(b"GET / HTTP/1.1\r\n" + data)


_TOKEN = st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":")


@settings(max_examples=200, deadline=1000)
@given(
    st.lists(
        st.tuples(
            st.text(
                st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
                min_size=1,
            ),
            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
        ),
        max_size=8,
    )
)
def test_well_formed_heads_parse(headers: list[tuple[str, str]]) -> None:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers if k.lower() not in _FRAMING)
    parsed = parse_request(f"GET /p HTTP/1.1\r\n{lines}\r\n".encode())
    assert parsed is not None and parsed[0].target == "/p"


_FRAMING = ("content-length", "transfer-encoding", "host", "connection")


def test_the_manifest_always_carries_annotations() -> None:
    doc = json.loads(metadata.pod_manifest(b'{"acKind": "PodManifest", "apps": []}'))
    assert doc["annotations"] == []
    raw = b'{"acKind":"PodManifest","annotations":[{"name":"a","value":"b"}]}'
    assert metadata.pod_manifest(raw) == raw


def test_the_gateway_is_the_default_networks() -> None:
    assert network.DEFAULT_GATEWAY == metadata._GATEWAY


# ---- the server ------------------------------------------------------------------------


@contextlib.contextmanager
def serving(answer: object = None, **kw: int) -> Iterator[tuple[Server, int]]:
    lsock = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def default(req: Request) -> Response:
        return Response(200, req.target.encode())

    server = Server([lsock], answer or default, **kw)  # type: ignore[arg-type]
    t = threading.Thread(target=server.serve, kwargs={"stop": done.is_set})
    t.start()
    try:
        yield server, lsock.getsockname()[1]
    finally:
        done.set()
        t.join(timeout=10)
        server.close()
        lsock.close()


def get(port: int, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def closed(s: socket.socket) -> bool:
    """Whether the server closed ``s`` (an end of file, or a reset: the server closes a
    connection with what it did not read)."""
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def worker_threads() -> int:
    return sum(t.name.startswith("metadata-worker") for t in threading.enumerate())


def test_requests_are_answered_on_kept_alive_connections() -> None:
    with serving() as (_, port):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for i in range(5):
            c.request("GET", f"/{i}")
            r = c.getresponse()
            assert (r.status, r.read()) == (200, f"/{i}".encode())
        c.close()
        c.request("HEAD", "/h")
        r = c.getresponse()
        assert r.status == 200 and r.getheader("Content-Length") == "2" and r.read() == b""


def test_pipelined_requests_are_answered_in_order() -> None:
    with serving() as (_, port), socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        assert data.count(b"HTTP/1.1 200 OK") == 2
        assert data.index(b"\r\n\r\n/1") < data.index(b"\r\n\r\n/2")


def test_a_failing_answer_is_a_500_and_the_server_goes_on() -> None:
    def answer(req: Request) -> Response:
        if req.target == "/boom":
            raise RuntimeError("boom")
        return Response(200, b"ok")

    with serving(answer) as (_, port):
        assert get(port, "/boom")[0] == 500
        assert get(port, "/fine") == (200, b"ok")


def test_slow_clients_cost_no_threads_and_whole_requests_are_answered() -> None:
    before = threading.active_count()
    with serving(max_connections=32) as (_, port):
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
        try:
            for s in slow:
                s.sendall(b"GET /slow HTTP/1.1\r\n")
            assert get(port, "/whole") == (200, b"/whole")
            # The loop's thread is the test's own (serving()), plus the fixed workers.
            assert threading.active_count() == before + 1 + metadata.WORKERS
            assert worker_threads() == metadata.WORKERS
        finally:
            for s in slow:
                s.close()


def test_over_the_cap_the_longest_waiting_connection_goes() -> None:
    with serving(max_connections=4) as (server, port):
        first = socket.create_connection(("127.0.0.1", port), timeout=10)
        first.sendall(b"GET /")
        others = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        try:
            # The first connection, idle longest, is closed to make room.
            assert closed(first)
            assert len(server.conns) <= 4
        finally:
            first.close()
            for s in others:
                s.close()


def test_a_client_that_never_finishes_its_request_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metadata, "REQUEST_TIMEOUT", 0.3)
    with serving() as (_, port), socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\n")
        s.settimeout(10)
        assert closed(s)


def test_it_returns_when_idle() -> None:
    lsock = socket.create_server(("127.0.0.1", 0))
    server = Server([lsock], lambda req: Response(200))
    try:
        server.serve(idle_exit=0.2)
    finally:
        server.close()
        lsock.close()


# ---- what apps are told ------------------------------------------------------------------

URL = f"{metadata.URL_VAR}=http://127.0.0.1:18112/tok"


def batch(url: str = URL) -> metadata.Units:
    app = {"Environment": ["PATH=/bin", url], "Type": "exec"}
    return [("podmgr-x.slice", {}, []), ("podmgr-x-app.service", app, [("hook", {})])]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_url_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setattr(metadata, "PORT", port)
    url = f"{metadata.URL_VAR}=http://127.0.0.1:{port}/tok"
    monkeypatch.setattr(metadata, "DEFAULT_BASE", f"http://127.0.0.1:{port}")
    out = metadata.unadvertised(batch(url))
    assert out[1][1]["Environment"] == ["PATH=/bin"]
    assert out[1][1]["Type"] == "exec"


def test_the_url_stays_when_the_service_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    with serving() as (_, port):
        monkeypatch.setattr(metadata, "PORT", port)
        monkeypatch.setattr(metadata, "DEFAULT_BASE", f"http://127.0.0.1:{port}")
        url = f"{metadata.URL_VAR}=http://172.31.0.1:{port}/tok"
        assert metadata.unadvertised(batch(url)) == batch(url)


def test_a_listener_that_does_not_answer_is_no_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a socket whose service fails to start: systemd closes the connections."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        port = lsock.getsockname()[1]

        def refuse() -> None:
            conn, _ = lsock.accept()
            conn.close()

        t = threading.Thread(target=refuse)
        t.start()
        monkeypatch.setattr(metadata, "PORT", port)
        assert not metadata.serving()
        t.join()


def test_an_administrators_url_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metadata, "PORT", free_port())
    url = f"{metadata.URL_VAR}=http://10.0.0.1:80/tok"
    assert metadata.unadvertised(batch(url)) == batch(url)


# ---- the command line without click ------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["metadata-service", "--help"],
        ["metadata-service", "--bogus"],
        ["--format=json", "metadata-service"],
        ["metadata-service", "--idle-exit", "soon"],
        ["metadata-service", "--listen"],
        ["--dir"],
        ["list"],
    ],
)
def test_what_it_does_not_know_goes_to_click(argv: list[str]) -> None:
    assert metadata.main(argv) is None


def test_its_options_reach_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def serve(state: Path, **kw: object) -> None:
        seen.update(kw, state=state)

    monkeypatch.setattr(metadata, "serve", serve)
    argv = ["--dir=/s", "--debug", "metadata-service", "--listen", "a:1", "--listen=b:2"]
    assert metadata.main([*argv, "--idle-exit", "2m"]) == 0
    assert seen["state"] == Path("/s")
    assert seen["listen"] == ["a:1", "b:2"] and seen["idle_exit"] == 120.0
    # Without it: idle for five minutes, it exits (the socket starts it again).
    assert metadata.main(argv) == 0
    assert seen["idle_exit"] == 300.0
