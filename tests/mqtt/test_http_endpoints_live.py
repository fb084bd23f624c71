"""The HTTP endpoints of a running listener (``http_port=0``): metrics move as jobs flow, health follows the broker."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable, Dict, Tuple

import pytest

from tests.support.brokers import BrokerEndpoint


IO_TIMEOUT = 5.0


async def http_get(port: int, path: str) -> Tuple[int, bytes]:
    """GET http://127.0.0.1:port/path; (status, body)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), IO_TIMEOUT)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def metrics_json(port: int) -> Dict[str, Any]:
    status, body = await http_get(port, "/metrics.json")
    assert status == 200
    snapshot: Dict[str, Any] = json.loads(body)
    return snapshot


def sample(text: str, name: str) -> float:
    """The value of the unlabelled sample ``name`` in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


async def wait_for_status(port: int, path: str, expected: int, timeout: float) -> float:
    """Poll ``path`` until it answers ``expected``; the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    last = None
    while time.monotonic() < deadline:
        last, _ = await http_get(port, path)
        if last == expected:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} still answers {last}, not {expected}, after {timeout} s")


async def test_metrics_move_as_jobs_flow(start_listener: Callable[..., Any], probe: Any, unique_topic: str) -> None:
    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if data.get("fail"):
            raise ValueError("asked to fail")
        return {"job_id": job_id}

    listener, _ = await start_listener(processor, http_port=0, qos=1)
    port = listener.http_port
    assert isinstance(port, int) and port > 0
    assert listener.config.http_host == "127.0.0.1"

    before = await metrics_json(port)
    assert before["ready"] is True and before["connected"] is True and before["draining"] is False
    assert before["messages_received"] == 0
    assert (await http_get(port, "/healthz"))[0] == 200
    assert (await http_get(port, "/readyz"))[0] == 200

    watcher = probe(f"{unique_topic}/results", f"{unique_topic}/error")
    sender = probe()
    for n in range(3):
        sender.publish(f"{unique_topic}/jobs", f'job_id = "m-{n}"')
    sender.publish(f"{unique_topic}/jobs", 'job_id = "m-fail"\nfail = true')
    sender.publish(f"{unique_topic}/jobs", "not toml ]]")
    await asyncio.to_thread(watcher.wait_for, 3, 10.0, f"{unique_topic}/results")
    await asyncio.to_thread(watcher.wait_for, 2, 10.0, f"{unique_topic}/error")

    deadline = time.monotonic() + 5.0
    while True:  # the counters are updated just after the publications the probe saw
        after = await metrics_json(port)
        if after["jobs_finished"].get("failed") == 1 and after["jobs_finished"].get("completed") == 3:
            break
        assert time.monotonic() < deadline, after
        await asyncio.sleep(0.05)
    assert after["messages_received"] == 5
    assert after["messages_rejected"] == 1
    assert after["jobs"] == {"completed": 3, "failed": 1}
    assert after["errors"].get("invalid_payload") == 1
    assert after["errors"].get("processing_error") == 1
    assert after["processing_seconds"]["count"] == 4
    assert after["publishes"] >= 5  # 3 results, 2 error events

    status, body = await http_get(port, "/metrics")
    assert status == 200
    text = body.decode()
    assert sample(text, "mqtt_listener_messages_received_total") == 5
    assert sample(text, "mqtt_listener_messages_rejected_total") == 1
    assert 'mqtt_listener_jobs_finished_total{status="completed"} 3.0' in text
    assert 'mqtt_listener_errors_total{error_type="processing_error"} 1.0' in text
    assert sample(text, "mqtt_listener_processing_seconds_count") == 4
    assert sample(text, "mqtt_listener_ready") == 1


async def test_the_endpoints_close_with_the_listener(start_listener: Callable[..., Any]) -> None:
    listener, task = await start_listener(None, http_port=0)
    port = listener.http_port
    assert (await http_get(port, "/healthz"))[0] == 200
    listener.stop()
    await asyncio.wait_for(task, 15.0)
    assert listener.http_port is None
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_readyz_is_503_while_draining(start_listener: Callable[..., Any], probe: Any, unique_topic: str) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        started.set()
        await asyncio.wait_for(release.wait(), 10.0)
        return {"job_id": job_id}

    listener, task = await start_listener(processor, http_port=0)
    port = listener.http_port
    probe().publish(f"{unique_topic}/jobs", 'job_id = "drain-1"')
    await asyncio.wait_for(started.wait(), 10.0)
    listener.stop()
    try:
        status, body = await http_get(port, "/readyz")
        assert status == 503
        assert json.loads(body)["draining"] is True
        assert (await metrics_json(port))["draining"] is True
    finally:
        release.set()
    await asyncio.wait_for(task, 15.0)


async def test_healthz_follows_the_broker_down_and_back(start_listener: Callable[..., Any],
                                                        broker_factory: Callable[..., Any]) -> None:
    broker = broker_factory()  # private: this test stops it
    listener, _ = await start_listener(None, endpoint=BrokerEndpoint("127.0.0.1", broker.port), http_port=0,
                                       reconnect_retries=-1, reconnect_max_interval=1, keep_alive=2)
    port = listener.http_port
    assert (await http_get(port, "/healthz"))[0] == 200

    await asyncio.to_thread(broker.stop)
    await wait_for_status(port, "/healthz", 503, timeout=15.0)
    status, body = await http_get(port, "/readyz")
    assert status == 503
    assert json.loads(body)["ready"] is False
    down = await metrics_json(port)
    assert down["ready"] is False and down["connected"] is False
    assert down["connection_losses"] >= 1

    await asyncio.to_thread(broker.start)
    await wait_for_status(port, "/healthz", 200, timeout=20.0)
    assert (await http_get(port, "/readyz"))[0] == 200
    back = await metrics_json(port)
    assert back["ready"] is True
    assert back["reconnects"] >= 1


async def held_job(start_listener: Callable[..., Any], probe: Any, unique_topic: str, broker: Any,
                   **overrides: Any) -> Tuple[Any, "asyncio.Task[None]", asyncio.Event, asyncio.Event]:
    """A listener on ``broker`` whose processor holds job "long-1" until released; returns once it runs."""
    started, release = asyncio.Event(), asyncio.Event()

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        started.set()
        await asyncio.wait_for(release.wait(), 20.0)
        return {"job_id": job_id}

    listener, task = await start_listener(processor, endpoint=BrokerEndpoint("127.0.0.1", broker.port), http_port=0,
                                          reconnect_retries=-1, reconnect_max_interval=0.5, **overrides)
    probe(endpoint=BrokerEndpoint("127.0.0.1", broker.port)).publish(f"{unique_topic}/jobs", 'job_id = "long-1"')
    await asyncio.wait_for(started.wait(), 10.0)
    return listener, task, started, release


async def test_healthz_is_503_as_soon_as_the_broker_dies_during_a_long_job(
        start_listener: Callable[..., Any], broker_factory: Callable[..., Any], probe: Any, unique_topic: str) -> None:
    """Issue 9 item 8: the broker dies while a job runs: /healthz and /readyz answer 503 (and the loss is counted)
    while the job is still running, not only once it ends."""
    broker = broker_factory()
    listener, _, _, release = await held_job(start_listener, probe, unique_topic, broker)
    port = listener.http_port
    try:
        assert (await http_get(port, "/healthz"))[0] == 200
        await asyncio.to_thread(broker.kill)
        await wait_for_status(port, "/healthz", 503, timeout=5.0)
        assert (await http_get(port, "/readyz"))[0] == 503
        snapshot = await metrics_json(port)
        assert snapshot["connection_losses"] == 1 and snapshot["in_flight"] == 1, snapshot
        assert not release.is_set()
    finally:
        release.set()


async def test_healthz_follows_the_connection_during_a_drain(
        start_listener: Callable[..., Any], broker_factory: Callable[..., Any], probe: Any, unique_topic: str) -> None:
    """Issue 9 item 8: stop() while a job runs, then the broker dies: /healthz goes from 200 (still connected,
    draining) to 503 while the drain goes on; the job still finishes and run() returns."""
    broker = broker_factory()
    listener, task, _, release = await held_job(start_listener, probe, unique_topic, broker)
    port = listener.http_port
    try:
        listener.stop()
        assert (await http_get(port, "/healthz"))[0] == 200
        assert (await http_get(port, "/readyz"))[0] == 503
        await asyncio.to_thread(broker.kill)
        await wait_for_status(port, "/healthz", 503, timeout=5.0)
        assert listener.is_draining and not task.done()
    finally:
        release.set()
    await asyncio.wait_for(task, 15.0)
    job = await listener.get_job_status("long-1")
    assert job is not None and job.status.value == "completed"
