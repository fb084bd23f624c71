"""Unit tests for Listener.ops.http_endpoints against a fake listener: routes, status codes, limits, Prometheus text."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import sys
import threading
import time
from typing import Any, AsyncIterator, Dict, Tuple

import pytest

from Listener.ops import http_endpoints
from Listener.ops.http_endpoints import HttpEndpoints, metric_families, start_http_endpoints
from Listener.ops.metrics import ListenerMetrics


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


async def idle_connections(port: int, count: int) -> list[Any]:
    """``count`` connections that never send a request (they hold a slot until the read timeout)."""
    return [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]


async def test_probes_are_answered_when_every_regular_slot_is_taken(fake: FakeListener) -> None:
    """Issue 9, item 8: a full server must not make a probe see "not ready"; a slot is kept for probes."""
    endpoints = await start_http_endpoints(fake, "127.0.0.1", 0, read_timeout=2.0, max_connections=2)
    idle = await idle_connections(endpoints.port, 2)
    try:
        await asyncio.sleep(0.05)  # let the server accept the idle connections
        status, _, body = await get(endpoints.port, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert (await get(endpoints.port, "/readyz"))[0] == 200
        fake.is_ready = False
        status, headers, body = await get(endpoints.port, "/readyz")
        assert status == 503 and json.loads(body)["status"] == "unavailable" and "retry-after" not in headers
        status, headers, body = await get(endpoints.port, "/metrics.json")  # not a probe: told to come back
        assert status == 503 and headers["retry-after"] == "1" and json.loads(body)["status"] == "busy"
    finally:
        for _, writer in idle:
            writer.close()
        await endpoints.close()


async def test_beyond_the_probe_slots_the_answer_is_busy_with_retry_after(fake: FakeListener) -> None:
    """Regular and probe slots all taken: 503 with Retry-After and a "busy" body, never "unavailable"."""
    endpoints = await start_http_endpoints(fake, "127.0.0.1", 0, read_timeout=2.0, max_connections=2, probe_slots=1)
    idle = await idle_connections(endpoints.port, 3)
    try:
        await asyncio.sleep(0.05)
        status, headers, body = await get(endpoints.port, "/healthz")
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body) == {"status": "busy", "error": "too many connections, retry later"}
    finally:
        for _, writer in idle:
            writer.close()
        await endpoints.close()


async def test_a_silent_client_in_a_probe_slot_gives_it_back_quickly(fake: FakeListener) -> None:
    """Probe slots wait at most PROBE_READ_TIMEOUT for the request, so idlers cannot keep them."""
    endpoints = await start_http_endpoints(fake, "127.0.0.1", 0, read_timeout=30.0, max_connections=1, probe_slots=1)
    idle = await idle_connections(endpoints.port, 2)
    try:
        reader = idle[1][0]
        closed = await asyncio.wait_for(reader.read(), IO_TIMEOUT)  # the probe slot's idler gets a 408 and is closed
        assert parse(closed)[0] == 408
        idle[1][1].close()
        deadline = time.monotonic() + IO_TIMEOUT
        while (status := (await get(endpoints.port, "/healthz"))[0]) != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the slot is free once the server has closed that connection
        assert status == 200
    finally:
        for _, writer in idle:
            writer.close()
        await endpoints.close()


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
