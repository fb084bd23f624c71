"""Unit tests for Listener.ops.http_endpoints against a fake listener: routes, status codes, limits, eviction, the
request handler, Prometheus text."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import socket
import sys
import threading
import time
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

import pytest

from Listener.ops import http_endpoints, http_server
from Listener.ops.http_endpoints import (
    MAX_BODY_BYTES, HttpEndpoints, HttpRequest, Response, metric_families, start_http_endpoints,
)
from Listener.ops.metrics import ListenerMetrics
from tests.support.waiting import eventually


IO_TIMEOUT = 5.0


class FakeListener:
    """What the endpoints read from an EventListener, with settable state."""

    def __init__(self) -> None:
        self.is_ready = True
        self.is_draining = False
        self.is_running = True
        self.counters = ListenerMetrics()
        self.jobs: Dict[str, int] = {}
        self.broken = False

    def metrics(self) -> Dict[str, Any]:
        if self.broken:
            raise RuntimeError("snapshot failed")
        return self.counters.snapshot(self.jobs, in_flight=0, queue_depth=0, connected=self.is_ready,
                                      ready=self.is_ready, draining=self.is_draining)


@pytest.fixture
def fake() -> FakeListener:
    return FakeListener()


@pytest.fixture
async def server(fake: FakeListener) -> AsyncIterator[HttpEndpoints]:
    endpoints = await start_http_endpoints(fake, "127.0.0.1", 0, read_timeout=0.5)
    yield endpoints
    await endpoints.close()


async def exchange(port: int, raw: bytes) -> bytes:
    """Send raw bytes, read until the server closes."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), IO_TIMEOUT)
    finally:
        writer.close()


def parse(response: bytes) -> Tuple[int, Dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    assert int(headers["content-length"]) == len(body) or not body
    return int(status_line.split()[1]), headers, body


async def get(port: int, path: str, method: str = "GET") -> Tuple[int, Dict[str, str], bytes]:
    return parse(await exchange(port, f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()))


# -- health and readiness ----------------------------------------------------------------------------


async def test_port_zero_binds_a_free_port_on_loopback(server: HttpEndpoints) -> None:
    assert server.port > 0
    assert server.host == "127.0.0.1"


async def test_healthz_follows_readiness(server: HttpEndpoints, fake: FakeListener) -> None:
    status, headers, body = await get(server.port, "/healthz")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert json.loads(body) == {"status": "ok", "ready": True, "running": True}
    fake.is_ready = False
    status, _, body = await get(server.port, "/healthz")
    assert status == 503
    assert json.loads(body)["status"] == "unavailable"


async def test_readyz_is_unavailable_while_draining_or_not_ready(server: HttpEndpoints, fake: FakeListener) -> None:
    assert (await get(server.port, "/readyz"))[0] == 200
    fake.is_draining = True
    status, _, body = await get(server.port, "/readyz")
    assert status == 503
    assert json.loads(body) == {"status": "unavailable", "ready": True, "draining": True}
    assert (await get(server.port, "/healthz"))[0] == 200  # healthy, just not taking work
    fake.is_draining, fake.is_ready = False, False
    assert (await get(server.port, "/readyz"))[0] == 503


async def test_query_strings_are_ignored(server: HttpEndpoints) -> None:
    assert (await get(server.port, "/healthz?verbose=1"))[0] == 200


# -- metrics ------------------------------------------------------------------------------------------


async def test_metrics_json_is_the_snapshot(server: HttpEndpoints, fake: FakeListener) -> None:
    fake.counters.messages_received = 7
    fake.counters.jobs_finished["completed"] = 5
    fake.jobs = {"completed": 5}
    status, headers, body = await get(server.port, "/metrics.json")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == json.loads(json.dumps(fake.metrics()))


async def test_metrics_text_has_the_expected_families(server: HttpEndpoints, fake: FakeListener) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    fake.counters.messages_received = 3
    fake.counters.messages_rejected = 1
    fake.counters.messages_dropped = 7
    fake.counters.jobs_finished["completed"] = 2
    fake.counters.errors["invalid_payload"] = 1
    fake.counters.observe_duration(0.02)
    fake.counters.observe_duration(3.0)
    fake.jobs = {"completed": 2}
    status, headers, body = await get(server.port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    for name in ("mqtt_listener_messages_received_total 3.0", "mqtt_listener_messages_rejected_total 1.0",
                 "mqtt_listener_messages_dropped_total 7.0",
                 'mqtt_listener_jobs_finished_total{status="completed"} 2.0',
                 'mqtt_listener_errors_total{error_type="invalid_payload"} 1.0',
                 'mqtt_listener_jobs{status="completed"} 2.0', "mqtt_listener_ready 1.0",
                 "mqtt_listener_draining 0.0", "mqtt_listener_in_flight 0.0", "mqtt_listener_queue_depth 0.0",
                 "mqtt_listener_reconnects_total 0.0", "mqtt_listener_publishes_total 0.0",
                 'mqtt_listener_processing_seconds_bucket{le="0.025"} 1.0',
                 'mqtt_listener_processing_seconds_bucket{le="+Inf"} 2.0',
                 "mqtt_listener_processing_seconds_count 2.0", "mqtt_listener_processing_seconds_sum 3.02",
                 "mqtt_listener_build_info{version="):
        assert name in text, name
    # The whole exposition parses as Prometheus text.
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["mqtt_listener_processing_seconds"].type == "histogram"
    assert families["mqtt_listener_messages_received"].type == "counter"


async def test_each_scrape_reads_a_fresh_snapshot(server: HttpEndpoints, fake: FakeListener) -> None:
    fake.counters.messages_received = 1
    first = (await get(server.port, "/metrics"))[2]
    fake.counters.messages_received = 2
    second = (await get(server.port, "/metrics"))[2]
    assert b"mqtt_listener_messages_received_total 1.0" in first
    assert b"mqtt_listener_messages_received_total 2.0" in second


def test_metric_families_tolerate_a_partial_snapshot() -> None:
    names = [family.name for family in metric_families({"messages_received": 1, "connected": True})]
    assert "mqtt_listener_messages_received" in names
    assert "mqtt_listener_connected" in names
    assert "mqtt_listener_publishes" not in names  # absent keys are skipped, not reported as 0


async def test_metrics_without_prometheus_client_answers_501(fake: FakeListener,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # makes `import prometheus_client` fail
    endpoints = await start_http_endpoints(fake, "127.0.0.1", 0)
    try:
        assert not endpoints.prometheus_enabled
        status, _, body = await get(endpoints.port, "/metrics")
        assert status == 501
        assert b"[prometheus] extra" in body
        assert body.count(b"\n") == 1
        assert (await get(endpoints.port, "/metrics.json"))[0] == 200
    finally:
        await endpoints.close()


async def test_a_failing_snapshot_is_a_500_and_the_server_goes_on(server: HttpEndpoints, fake: FakeListener) -> None:
    fake.broken = True
    status, _, body = await get(server.port, "/metrics.json")
    assert status == 500
    assert b"snapshot failed" not in body  # details go to the log, not to the client
    assert (await get(server.port, "/metrics"))[0] == 500
    fake.broken = False
    assert (await get(server.port, "/metrics.json"))[0] == 200


# -- methods, paths, malformed and hostile requests ---------------------------------------------------


async def test_unknown_paths_are_404(server: HttpEndpoints) -> None:
    status, _, body = await get(server.port, "/admin")
    assert status == 404
    assert json.loads(body)["status"] == "not_found"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
async def test_other_methods_are_405_with_allow(server: HttpEndpoints, method: str) -> None:
    status, headers, _ = await get(server.port, "/healthz", method)
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


async def test_head_has_headers_and_no_body(server: HttpEndpoints) -> None:
    status, headers, body = await get(server.port, "/healthz", "HEAD")
    assert status == 200
    assert int(headers["content-length"]) > 0
    assert body == b""


async def test_a_post_with_a_body_is_refused_without_reading_it(server: HttpEndpoints) -> None:
    raw = b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000
    assert parse(await exchange(server.port, raw))[0] == 405


@pytest.mark.parametrize("raw, expected", [
    (b"NONSENSE\r\n\r\n", 400),
    (b"GET /healthz\r\n\r\n", 400),
    (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
    (b"GET /healthz HTTP/1.0\n\n", 200),  # bare LF line ends are tolerated
    (b"\r\nGET /healthz HTTP/1.1\r\n\r\n", 200),  # a stray empty line before the request line
])
async def test_malformed_requests(server: HttpEndpoints, raw: bytes, expected: int) -> None:
    assert parse(await exchange(server.port, raw))[0] == expected


async def test_oversized_headers_are_refused_with_431(server: HttpEndpoints) -> None:
    one_long_line = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    assert parse(await exchange(server.port, one_long_line))[0] == 431
    many_lines = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 100) for i in range(200))
    assert parse(await exchange(server.port, many_lines + b"\r\n"))[0] == 431


async def test_a_client_that_never_finishes_its_request_gets_408(server: HttpEndpoints) -> None:
    started = time.monotonic()
    response = await exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: slow")
    assert parse(response)[0] == 408
    assert time.monotonic() - started < 3.0  # read_timeout is 0.5 s in these tests


async def test_a_client_trickling_its_request_cannot_extend_the_deadline(server: HttpEndpoints) -> None:
    """The head has one deadline (read_timeout), not one per read: a byte every 0.2 s still gets 408."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), IO_TIMEOUT)
    started = time.monotonic()
    first = b""
    try:
        for byte in b"GET /healthz HTTP/1.1\r\nHost: slow\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(asyncio.TimeoutError):  # the pause between bytes, or the server's answer
                first = await asyncio.wait_for(reader.read(1), 0.2)
            if first or time.monotonic() - started > 3.0:
                break
        response = first + await asyncio.wait_for(reader.read(), IO_TIMEOUT)
    finally:
        writer.close()
    assert parse(response)[0] == 408
    assert time.monotonic() - started < 3.0  # read_timeout is 0.5 s; the whole request would take 7 s


def test_an_event_loop_that_does_not_answer_in_time_gives_503(fake: FakeListener,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers are computed on the listener's loop; a loop blocked past LOOP_TIMEOUT must not hang the client."""
    monkeypatch.setattr(http_endpoints, "LOOP_TIMEOUT", 0.2)
    blocked = threading.Event()

    async def scenario() -> Tuple[int, bytes]:
        endpoints = await start_http_endpoints(fake, "127.0.0.1", 0)

        def client() -> Tuple[int, bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", endpoints.port, timeout=IO_TIMEOUT)
            try:
                connection.request("GET", "/healthz")
                answer = connection.getresponse()
                return answer.status, answer.read()
            finally:
                blocked.set()
                connection.close()

        try:
            pending = asyncio.ensure_future(asyncio.to_thread(client))
            await asyncio.sleep(0)
            blocked.wait(IO_TIMEOUT)  # blocks the loop (on purpose) until the client has its answer
            return await asyncio.wait_for(pending, IO_TIMEOUT)
        finally:
            await endpoints.close()

    status, body = asyncio.run(scenario())
    assert status == 503
    assert json.loads(body)["status"] == "unavailable"


async def test_a_standard_http_client_gets_the_answer(server: HttpEndpoints) -> None:
    def fetch() -> Tuple[int, str, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=IO_TIMEOUT)
        try:
            connection.request("GET", "/readyz")
            answer = connection.getresponse()
            return answer.status, answer.getheader("Cache-Control") or "", answer.read()
        finally:
            connection.close()

    status, cache_control, body = await asyncio.to_thread(fetch)
    assert (status, cache_control) == (200, "no-store")
    assert json.loads(body) == {"status": "ok", "ready": True, "draining": False}


async def test_a_client_that_sends_nothing_and_leaves_is_just_dropped(server: HttpEndpoints) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.close()
    await writer.wait_closed()
    assert (await get(server.port, "/healthz"))[0] == 200


async def idle_connections(port: int, count: int) -> List[Tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` connections that never send a request, opened one after the other (oldest first)."""
    return [await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT) for _ in range(count)]


async def test_probes_are_answered_when_every_regular_slot_is_taken(fake: FakeListener) -> None:
    """Issue 9, item 8: a full server must not make a probe see "not ready": when every connection is taken by
    clients that have not sent their request, a newcomer evicts the oldest of them."""
    endpoints = await start_http_endpoints(fake, "127.0.0.1", 0, read_timeout=30.0, max_connections=2)
    idle = await idle_connections(endpoints.port, 2)
    try:
        status, _, body = await get(endpoints.port, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert await asyncio.wait_for(idle[0][0].read(), IO_TIMEOUT) == b""  # the oldest idler made room
        assert (await get(endpoints.port, "/readyz"))[0] == 200
        fake.is_ready = False
        status, headers, body = await get(endpoints.port, "/readyz")
        assert status == 503 and json.loads(body)["status"] == "unavailable" and "retry-after" not in headers
        assert (await get(endpoints.port, "/metrics.json"))[0] == 200  # not only probes: anyone evicts idlers
    finally:
        for _, writer in idle:
            writer.close()
        await endpoints.close()


async def test_beyond_the_probe_slots_the_answer_is_busy_with_retry_after(fake: FakeListener) -> None:
    """Every connection is being answered: a newcomer gets 503 with Retry-After and a "busy" body, never
    "unavailable", and the answers in progress keep their place."""
    entered: "asyncio.Queue[str]" = asyncio.Queue()
    release = asyncio.Event()

    async def slow(request: HttpRequest) -> Optional[Response]:
        if request.path != "/slow":
            return None
        entered.put_nowait(request.path)
        await release.wait()
        return 200, "text/plain; charset=utf-8", b"done\n", {}

    endpoints = await start_http_endpoints(fake, "127.0.0.1", 0, max_connections=2, handler=slow)
    answers = [asyncio.ensure_future(get(endpoints.port, "/slow")) for _ in range(2)]
    try:
        for _ in answers:
            await asyncio.wait_for(entered.get(), IO_TIMEOUT)
        status, headers, body = await get(endpoints.port, "/healthz")
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body) == {"status": "busy", "error": "too many connections, retry later"}
        release.set()
        assert [(await asyncio.wait_for(answer, IO_TIMEOUT))[2] for answer in answers] == [b"done\n"] * 2
        assert (await get(endpoints.port, "/healthz"))[0] == 200
    finally:
        release.set()
        await asyncio.wait_for(asyncio.gather(*answers, return_exceptions=True), IO_TIMEOUT)
        await endpoints.close()


async def test_a_silent_client_in_a_probe_slot_gives_it_back_quickly(fake: FakeListener) -> None:
    """Silent clients give their place back as soon as it is needed, oldest first, long before read_timeout;
    a newer one that then sends its request is answered."""
    endpoints = await start_http_endpoints(fake, "127.0.0.1", 0, read_timeout=30.0, max_connections=2)
    idle = await idle_connections(endpoints.port, 2)
    try:
        started = time.monotonic()
        assert (await get(endpoints.port, "/healthz"))[0] == 200
        assert await asyncio.wait_for(idle[0][0].read(), IO_TIMEOUT) == b""
        assert time.monotonic() - started < 3.0
        reader, writer = idle[1]
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert parse(await asyncio.wait_for(reader.read(), IO_TIMEOUT))[0] == 200
    finally:
        for _, writer in idle:
            writer.close()
        await endpoints.close()


async def test_a_slow_sender_loses_its_place_before_a_connection_not_read_yet(fake: FakeListener) -> None:
    """A connection the server has not read from yet may hold a whole request (a probe just accepted): a full
    server drops a client that has sent part of its request first, even a newer one. Slowloris clients that
    reconnect at once go round 64 places thousands of times a second; taking the oldest alone dropped probes
    before their request was read on a loaded machine (CI saw one such probe fail)."""
    endpoints = await start_http_endpoints(fake, "127.0.0.1", 0, read_timeout=30.0, max_connections=2)
    server = endpoints._server
    assert server is not None
    [(unread, unread_writer)] = await idle_connections(endpoints.port, 1)  # oldest: nothing read from it yet
    slow, slow_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", endpoints.port), IO_TIMEOUT)
    try:
        slow_writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # part of a head, never finished
        await eventually(lambda: sum(connection.heard for connection in list(server._reading)) == 1, IO_TIMEOUT,
                         "the partial head read")
        assert (await get(endpoints.port, "/healthz"))[0] == 200  # a newcomer: one of the two must go
        assert await asyncio.wait_for(slow.read(), IO_TIMEOUT) == b""  # the slow sender went
        unread_writer.write(b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert parse(await asyncio.wait_for(unread.read(), IO_TIMEOUT))[0] == 200  # the older one kept its place
    finally:
        for writer in (unread_writer, slow_writer):
            writer.close()
        await endpoints.close()


async def test_a_client_that_does_not_read_its_answer_is_dropped_at_the_write_deadline(
        fake: FakeListener, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that stops reading cannot hold its place past WRITE_TIMEOUT."""
    monkeypatch.setattr(http_server, "WRITE_TIMEOUT", 0.3)
    big = b"x" * (32 * 1024 * 1024)  # more than the socket buffers hold

    async def huge(request: HttpRequest) -> Optional[Response]:
        return (200, "application/octet-stream", big, {}) if request.path == "/huge" else None

    endpoints = await start_http_endpoints(fake, "127.0.0.1", 0, handler=huge)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(sock=_connected(sock, endpoints.port)),
                                                IO_TIMEOUT)
        writer.write(b"GET /huge HTTP/1.1\r\nHost: t\r\n\r\n")
        received = len(await asyncio.wait_for(reader.read(1), IO_TIMEOUT))  # the answer has started
        server = endpoints._server
        assert server is not None
        deadline = time.monotonic() + IO_TIMEOUT
        while server.open_connections() and time.monotonic() < deadline:  # read across threads: a snapshot
            await asyncio.sleep(0.05)
        assert server.open_connections() == 0
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(1 << 20), IO_TIMEOUT):
                received += len(chunk)
        assert received < len(big)
        writer.close()
        assert (await get(endpoints.port, "/healthz"))[0] == 200
    finally:
        sock.close()
        await endpoints.close()


def _connected(sock: socket.socket, port: int) -> socket.socket:
    sock.settimeout(IO_TIMEOUT)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_an_incomplete_request_then_end_of_stream_is_400(server: HttpEndpoints) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), IO_TIMEOUT)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        writer.write_eof()
        assert parse(await asyncio.wait_for(reader.read(), IO_TIMEOUT))[0] == 400
    finally:
        writer.close()


async def test_close_drops_idle_connections_and_frees_the_port(fake: FakeListener) -> None:
    endpoints = await start_http_endpoints(fake, "127.0.0.1", 0, read_timeout=30.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", endpoints.port)
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await endpoints.close()
    await endpoints.close()  # twice is fine
    assert time.monotonic() - started < 3.0
    assert await asyncio.wait_for(reader.read(), IO_TIMEOUT) == b""
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", endpoints.port)


async def test_localhost_with_port_zero_serves_one_port_on_every_address(fake: FakeListener) -> None:
    async with await start_http_endpoints(fake, "localhost", 0) as endpoints:
        assert endpoints.port > 0
        assert (await get(endpoints.port, "/healthz"))[0] == 200


async def test_binding_a_port_in_use_raises_oserror(server: HttpEndpoints, fake: FakeListener) -> None:
    with pytest.raises(OSError):
        await start_http_endpoints(fake, "127.0.0.1", server.port)


def test_respond_routes_without_io(fake: FakeListener) -> None:
    endpoints = HttpEndpoints(fake)
    assert endpoints.respond("GET", "/readyz")[0] == 200
    assert endpoints.respond("PATCH", "/readyz")[0] == 405
    assert endpoints.respond("GET", "/")[0] == 404


def test_metric_families_carry_the_retries_counter() -> None:
    counters = ListenerMetrics()
    counters.jobs_retried = 4
    snapshot = counters.snapshot({}, in_flight=0, queue_depth=0, connected=True, ready=True, draining=False)
    assert snapshot["jobs_retried"] == 4
    retried = [family for family in metric_families(snapshot) if family.name == "mqtt_listener_jobs_retried"]
    assert [(family.type, [sample.value for sample in family.samples]) for family in retried] == [("counter", [4.0])]


# -- the request handler ---------------------------------------------------------------------------------


class Recorder:
    """A request handler that records what it is given; ``/echo`` answers with it, ``/boom`` raises."""

    def __init__(self) -> None:
        self.requests: List[HttpRequest] = []
        self.loops: List[asyncio.AbstractEventLoop] = []

    async def __call__(self, request: HttpRequest) -> Optional[Response]:
        self.requests.append(request)
        self.loops.append(asyncio.get_running_loop())
        if request.path == "/boom":
            raise RuntimeError("handler exploded")
        if request.path.startswith("/echo"):
            seen = {"method": request.method, "path": request.path, "query": dict(request.query),
                    "custom": request.headers.get("x-custom"), "body": request.body.decode("latin-1"),
                    "peer": request.peer_host}
            return 201, "application/json", json.dumps(seen).encode(), {"Set-Cookie": "s=1; HttpOnly", "Location": "/x"}
        if request.path == "/only-get" and request.method != "GET":
            return 405, "text/plain", b"no\n", {"Allow": "GET"}
        return None


@pytest.fixture
async def handled(fake: FakeListener) -> AsyncIterator[Tuple[HttpEndpoints, Recorder]]:
    recorder = Recorder()
    endpoints = await start_http_endpoints(fake, "127.0.0.1", 0, read_timeout=0.5, handler=recorder)
    yield endpoints, recorder
    await endpoints.close()


async def test_the_handler_gets_the_parsed_request_on_the_listeners_loop(
        handled: Tuple[HttpEndpoints, Recorder]) -> None:
    endpoints, recorder = handled
    raw = (b"POST /echo%20it/%C3%A9?a=1&a=2&empty=&slash=%2F HTTP/1.1\r\nHost: t\r\nX-Custom: v1\r\n"
           b"x-custom: v2\r\nContent-Length: 5\r\n\r\nhello")
    status, headers, body = parse(await exchange(endpoints.port, raw))
    assert status == 201
    assert json.loads(body) == {"method": "POST", "path": "/echo it/\u00e9", "query": {"a": "1", "empty": "", "slash": "/"},
                                "custom": "v1, v2", "body": "hello", "peer": "127.0.0.1"}
    assert (headers["set-cookie"], headers["location"]) == ("s=1; HttpOnly", "/x")
    assert headers["cache-control"] == "no-store" and headers["connection"] == "close"
    assert recorder.loops == [asyncio.get_running_loop()]
    assert recorder.requests[0].headers["host"] == "t"


async def test_a_handler_returning_none_leaves_the_request_to_the_built_in_routes(
        handled: Tuple[HttpEndpoints, Recorder]) -> None:
    endpoints, recorder = handled
    assert (await get(endpoints.port, "/metrics.json"))[0] == 200
    assert (await get(endpoints.port, "/nowhere"))[0] == 404
    status, headers, _ = await get(endpoints.port, "/metrics.json", "DELETE")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    seen = [(r.method, r.path) for r in recorder.requests]
    assert seen == [("GET", "/metrics.json"), ("GET", "/nowhere"), ("DELETE", "/metrics.json")]


async def test_any_method_reaches_the_handler_which_may_refuse_it(handled: Tuple[HttpEndpoints, Recorder]) -> None:
    endpoints, recorder = handled
    for method in ("PUT", "PATCH", "OPTIONS"):
        status, headers, body = await get(endpoints.port, "/only-get", method)
        assert (status, headers["allow"], body) == (405, "GET", b"no\n")
    assert [r.method for r in recorder.requests] == ["PUT", "PATCH", "OPTIONS"]


async def test_probes_never_reach_the_handler(handled: Tuple[HttpEndpoints, Recorder], fake: FakeListener) -> None:
    endpoints, recorder = handled
    assert (await get(endpoints.port, "/healthz"))[0] == 200
    assert (await get(endpoints.port, "/readyz?x=1"))[0] == 200
    assert (await get(endpoints.port, "/healthz", "POST"))[0] == 405
    fake.is_ready = False
    assert (await get(endpoints.port, "/healthz"))[0] == 503
    assert recorder.requests == []


async def test_a_failing_handler_costs_one_500_and_a_logged_traceback(
        handled: Tuple[HttpEndpoints, Recorder], caplog: pytest.LogCaptureFixture) -> None:
    endpoints, _ = handled
    with caplog.at_level(logging.ERROR, logger="Listener.http_endpoints"):
        status, _, body = await get(endpoints.port, "/boom")
    assert status == 500
    assert json.loads(body)["status"] == "error" and b"exploded" not in body
    failures = [record for record in caplog.records if "handler failed" in record.getMessage()]
    assert failures and failures[0].exc_info is not None and "handler exploded" in str(failures[0].exc_info[1])
    assert (await get(endpoints.port, "/healthz"))[0] == 200
    assert (await get(endpoints.port, "/echo"))[0] == 201


@pytest.mark.parametrize("extra, expected", [
    (b"Content-Length: %d\r\n" % (MAX_BODY_BYTES + 1), 413),
    (b"Transfer-Encoding: chunked\r\n", 411),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", 400),
    (b"Content-Length: 5, 6\r\n", 400),
    (b"Content-Length: -5\r\n", 400),
])
async def test_bodies_the_handler_cannot_get_are_refused(handled: Tuple[HttpEndpoints, Recorder], extra: bytes,
                                                         expected: int) -> None:
    endpoints, recorder = handled
    raw = b"POST /echo HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n" + b"x" * 10
    assert parse(await exchange(endpoints.port, raw))[0] == expected
    assert recorder.requests == []


async def test_a_body_of_max_body_bytes_is_given_whole(handled: Tuple[HttpEndpoints, Recorder]) -> None:
    endpoints, recorder = handled
    body = bytes(range(256)) * (MAX_BODY_BYTES // 256)
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", endpoints.port), IO_TIMEOUT)
    try:
        writer.write(b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
        for offset in range(0, len(body), 1000):  # in pieces, as a network may deliver it
            writer.write(body[offset:offset + 1000])
            await writer.drain()
        assert parse(await asyncio.wait_for(reader.read(), IO_TIMEOUT))[0] == 201
    finally:
        writer.close()
    assert recorder.requests[0].body == body


async def test_expect_100_continue_is_answered_before_the_body(handled: Tuple[HttpEndpoints, Recorder]) -> None:
    endpoints, recorder = handled
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", endpoints.port), IO_TIMEOUT)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"abc")
        assert parse(await asyncio.wait_for(reader.read(), IO_TIMEOUT))[0] == 201
    finally:
        writer.close()
    assert recorder.requests[0].body == b"abc"


async def test_without_a_handler_bodies_are_never_read(server: HttpEndpoints) -> None:
    raw = b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"
    assert parse(await exchange(server.port, raw))[0] == 405  # not 413: nobody would read it


async def test_head_to_the_handler_gets_headers_only(handled: Tuple[HttpEndpoints, Recorder]) -> None:
    endpoints, recorder = handled
    status, headers, body = await get(endpoints.port, "/echo", "HEAD")
    assert status == 201 and int(headers["content-length"]) > 0 and body == b""
    assert recorder.requests[0].method == "HEAD"


async def test_a_large_answer_is_written_whole(fake: FakeListener) -> None:
    script = bytes(range(256)) * 2400  # about 600 KB, a vendored JavaScript file

    async def assets(request: HttpRequest) -> Optional[Response]:
        return (200, "text/javascript", script, {"Cache-Control": "max-age=3600"}) if request.path == "/app.js" else None

    async with await start_http_endpoints(fake, "127.0.0.1", 0, handler=assets) as endpoints:
        status, headers, body = await get(endpoints.port, "/app.js")
    assert status == 200 and body == script
    assert headers["cache-control"] == "max-age=3600"  # a handler may set its own


@pytest.mark.parametrize("answer", [
    (200, "text/plain", b"x", {"X-Split": "a\r\nSet-Cookie: evil=1"}),
    (200, "text/plain", b"x", {"Bad Name": "v"}),
    (200, "text/plain\r\nX-Evil: 1", b"x", {}),
    (99, "text/plain", b"x", {}),
    "not a response",
    (200, "text/plain", "a str body", {}),
])
async def test_an_answer_that_cannot_be_sent_safely_is_a_500(fake: FakeListener, answer: Any,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    async def bad(request: HttpRequest) -> Any:
        return answer if request.path == "/bad" else None

    async with await start_http_endpoints(fake, "127.0.0.1", 0, handler=bad) as endpoints:
        with caplog.at_level(logging.ERROR, logger="Listener.http_endpoints"):
            response = await exchange(endpoints.port, b"GET /bad HTTP/1.1\r\nHost: t\r\n\r\n")
        assert parse(response)[0] == 500
        assert b"evil" not in response.lower()
        assert (await get(endpoints.port, "/healthz"))[0] == 200
    assert any(record.levelno >= logging.ERROR for record in caplog.records)


async def test_a_slow_handler_gets_503_within_loop_timeout_and_is_cancelled(
        fake: FakeListener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_endpoints, "LOOP_TIMEOUT", 0.2)
    cancelled = asyncio.Event()

    async def stuck(request: HttpRequest) -> Optional[Response]:
        try:
            await asyncio.sleep(IO_TIMEOUT * 2)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return None

    async with await start_http_endpoints(fake, "127.0.0.1", 0, handler=stuck) as endpoints:
        started = time.monotonic()
        status, headers, body = await get(endpoints.port, "/page")
        assert status == 503 and json.loads(body)["status"] == "unavailable" and "retry-after" not in headers
        assert time.monotonic() - started < 2.0
        await asyncio.wait_for(cancelled.wait(), IO_TIMEOUT)
        assert (await get(endpoints.port, "/healthz"))[0] == 200  # probes do not wait for the handler


async def test_answer_routes_a_request_without_sockets(fake: FakeListener) -> None:
    recorder = Recorder()
    endpoints = HttpEndpoints(fake, handler=recorder)

    def request(method: str, path: str) -> HttpRequest:
        return HttpRequest(method=method, path=path, query={}, headers={}, body=b"", peer_host="127.0.0.1")

    assert (await endpoints.answer(request("GET", "/healthz")))[0] == 200
    assert (await endpoints.answer(request("GET", "/echo")))[0] == 201
    assert (await endpoints.answer(request("GET", "/boom")))[0] == 500
    assert (await endpoints.answer(request("POST", "/metrics.json")))[0] == 405
    assert (await endpoints.answer(request("GET", "/missing")))[0] == 404
    assert [r.path for r in recorder.requests] == ["/echo", "/boom", "/metrics.json", "/missing"]
    assert (await HttpEndpoints(fake).answer(request("GET", "/echo")))[0] == 404
