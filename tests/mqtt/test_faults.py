"""Faults the listener must survive, injected for real: brokers killed and restarted, connections black-holed
or reset by a proxy (tests/support/proxy.py), listener processes killed or signalled, processors that hang,
connections that cannot be made at all. docs/reliability.md maps each fault to the test that proves it.

Every wait is bounded and waits for an event or a state, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from Listener import EventListener, JobStatus
from tests.support.brokers import BrokerEndpoint, MosquittoBroker, MqttProbe, TlsMaterial
from tests.support.job_messages import assert_each_result_once, body, publish_jobs, results_for
from tests.support.listener_processes import ListenerProcess
from tests.support.listeners import RECONNECTING, job_finished, listener_config, via
from tests.support.processors import CountingProcessor
from tests.support.proxy import TcpProxy
from tests.support.redis_server import RedisServer, needs_redis, redis_server, unique_prefix
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)
__all__ = ["redis_server"]  # the fixture, for pytest

# -- helpers -------------------------------------------------------------------------------------------


def connected(listener: EventListener) -> bool:
    """Whether the listener itself believes it has a connection."""
    return bool(listener.metrics()["connected"])


# -- broker killed / restarted -------------------------------------------------------------------------


async def test_broker_killed_mid_job_and_restarted_on_the_same_port(
        broker_factory: Callable[..., MosquittoBroker], proxy_factory: Callable[..., TcpProxy],
        start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    """SIGKILL the broker while a job runs: the job's result is kept and published after the broker is back on
    the same port, processing resumes, and no job is processed twice."""
    broker = broker_factory(persistence=True)
    proxy = proxy_factory(broker.plain)
    processor = CountingProcessor(hold=("mid",))
    results = f"{unique_topic}/results"
    listener, _ = await start_listener(processor, endpoint=via(proxy), client_id=f"kill-{os.urandom(4).hex()}",
                                       cleansession=False, qos=1, **RECONNECTING)
    watcher = probe(results, endpoint=broker.plain)
    sender = probe(endpoint=broker.plain)
    jobs = f"{unique_topic}/jobs"

    await publish_jobs(sender, jobs, ["a-0", "a-1", "a-2"])
    await results_for(watcher, results, ["a-0", "a-1", "a-2"])
    await publish_jobs(sender, jobs, ["mid"])
    assert await asyncio.to_thread(processor.started.wait, 10)

    broker.kill()
    await eventually(lambda: proxy.active_connections == 0 and not connected(listener), 10, "connection lost")
    processor.release.set()  # the job ends while there is no broker: its result cannot be published now
    await job_finished(listener, "mid")
    proxy.refuse()  # keep the listener away until the probes are back, so none of its publications is missed
    broker.start()
    await asyncio.to_thread(watcher.wait_until_connected, 10)
    await asyncio.to_thread(sender.wait_until_connected, 10)
    proxy.admit()
    await listener.wait_until_ready(15)

    await results_for(watcher, results, ["mid"])
    await publish_jobs(sender, jobs, ["c-0", "c-1", "c-2"])
    messages = await results_for(watcher, results, ["c-0", "c-1", "c-2"])
    assert_each_result_once(messages)
    assert processor.ran_twice() == []
    job = await listener.get_job_status("mid")
    # Its PUBACK went out just before the kill; if mosquitto had not saved that yet, it redelivers "mid" after
    # the restart (docs/reliability.md: a lost PUBACK means a resend, skipped by job id): then the record says
    # DUPLICATE, once. Either way it ran once (above).
    assert job is not None and (job.status, job.duplicate_count) in {(JobStatus.COMPLETED, 0), (JobStatus.DUPLICATE, 1)}
    metrics = listener.metrics()
    assert metrics["connection_losses"] >= 1 and metrics["reconnects"] >= 1
    assert metrics["publishes_retried"] >= 1 and metrics["publish_errors"] == 0


async def test_jobs_published_while_the_listener_is_away_arrive_once_after_a_broker_restart(
        broker_factory: Callable[..., MosquittoBroker], proxy_factory: Callable[..., TcpProxy],
        start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    """QoS 1 + cleansession=False + fixed client id: the broker queues jobs while the listener is disconnected,
    keeps them across its own restart, and delivers them in order when the listener returns; a job id sent twice
    (a publisher retrying) is processed once."""
    broker = broker_factory(persistence=True)
    proxy = proxy_factory(broker.plain)
    processor = CountingProcessor()
    results, jobs = f"{unique_topic}/results", f"{unique_topic}/jobs"
    listener, _ = await start_listener(processor, endpoint=via(proxy), client_id=f"away-{os.urandom(4).hex()}",
                                       cleansession=False, qos=1, **RECONNECTING)
    watcher = probe(results, endpoint=broker.plain)
    sender = probe(endpoint=broker.plain)
    await publish_jobs(sender, jobs, ["a-0"])
    await results_for(watcher, results, ["a-0"])

    proxy.refuse()  # the listener is cut off and cannot reconnect; the broker stays up
    await eventually(lambda: not listener.is_ready, 10, "listener noticed the reset")
    away = [f"b-{i}" for i in range(5)]
    await publish_jobs(sender, jobs, away + ["b-2"])
    broker.restart()  # SIGTERM: mosquitto saves the queued messages and the listener's session
    await asyncio.to_thread(watcher.wait_until_connected, 10)
    await asyncio.to_thread(sender.wait_until_connected, 10)
    proxy.admit()

    await results_for(watcher, results, away)
    await publish_jobs(sender, jobs, ["c-0"])
    messages = await results_for(watcher, results, ["c-0"])
    assert_each_result_once(messages)
    assert processor.ran_twice() == []
    assert processor.order == ["a-0"] + away + ["c-0"], \
        "max_concurrent_jobs=1 processes in arrival order, and mosquitto delivers a session's queue in order"


# -- network faults through the proxy ------------------------------------------------------------------


@pytest.mark.slow
async def test_black_holed_connection_is_detected_and_replaced(
        proxy_factory: Callable[..., TcpProxy], start_listener: Callable[..., Any], probe: Callable[..., MqttProbe],
        unique_topic: str) -> None:
    """Freeze the proxy (no FIN, no RST, nothing): with keep_alive 2 s the listener's own ping times out, it drops
    the connection, reconnects once the network is back and processes jobs again."""
    proxy = proxy_factory()
    processor = CountingProcessor()
    results, jobs = f"{unique_topic}/results", f"{unique_topic}/jobs"
    listener, _ = await start_listener(processor, endpoint=via(proxy), keep_alive=2, ping_delay=1, **RECONNECTING)
    watcher = probe(results)
    sender = probe()
    await publish_jobs(sender, jobs, ["f-0"])
    await results_for(watcher, results, ["f-0"])

    frozen_at = time.monotonic()
    proxy.freeze()
    await eventually(lambda: not listener.is_ready, 10, "black hole detected")
    detected_after = time.monotonic() - frozen_at
    assert detected_after < 2 * 2 + 1.5, f"took {detected_after:.1f} s to notice a dead connection (keep_alive 2 s)"
    # readiness follows the client at once; the run loop counts the loss as soon as it next runs
    await eventually(lambda: listener.metrics()["connection_losses"] >= 1, 2, "the loss counted")

    proxy.thaw()
    await listener.wait_until_ready(15)
    await publish_jobs(sender, jobs, ["f-1"])
    await results_for(watcher, results, ["f-1"])
    assert processor.ran_twice() == []


async def finish_behind_a_frozen_proxy(proxy: TcpProxy, processor: CountingProcessor,
                                       start_listener: Callable[..., Any], probe: Callable[..., MqttProbe],
                                       unique_topic: str, monkeypatch: pytest.MonkeyPatch, **config: Any) -> Any:
    """Start a listener (publish timeout 1 s) through ``proxy``, send it job ``s-0`` (which ``processor`` holds),
    freeze the proxy and let the job finish: the connection stays open, and neither the job's acknowledgement
    nor its result reaches the broker. Returns ``start_listener``'s (listener, task)."""
    monkeypatch.setattr("Listener.event_listener.PUBLISH_TIMEOUT", 1.0)
    started = await start_listener(processor, endpoint=via(proxy), **config)
    await publish_jobs(probe(), f"{unique_topic}/jobs", ["s-0"])
    assert await asyncio.to_thread(processor.started.wait, 10)
    proxy.freeze()
    processor.release.set()
    return started


def job_store_url(store: str, folder: Path, request: pytest.FixtureRequest) -> str:
    """The ``job_store`` setting for ``store`` ("memory", "sqlite" or "redis": the session's redis-server)."""
    if store == "sqlite":
        return f"sqlite:///{folder / 'jobs.db'}"
    if store == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url(unique_prefix("stalled"))
    return "memory"


@pytest.mark.parametrize("store", ["memory", "sqlite", pytest.param("redis", marks=needs_redis)])
@pytest.mark.parametrize("qos", [1, 2])
async def test_a_result_the_broker_leaves_unacknowledged_goes_out_again_on_the_next_connection(
        proxy_factory: Callable[..., TcpProxy], start_listener: Callable[..., Any], probe: Callable[..., MqttProbe],
        unique_topic: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path,
        request: pytest.FixtureRequest, qos: int, store: str) -> None:
    """A broker that keeps the connection open but acknowledges nothing (amqtt's broker does that for seconds
    while it shuts down): once the publish timeout passes, the listener drops that connection and sends the
    result again on the next one (MQTT 3.1.1 resends only after a reconnect), instead of reporting it lost."""
    proxy = proxy_factory()
    processor = CountingProcessor(hold=("s-0",))
    results = f"{unique_topic}/results"
    watcher = probe(results)
    listener, _ = await finish_behind_a_frozen_proxy(proxy, processor, start_listener, probe, unique_topic, monkeypatch,
                                                     qos=qos, default_qos=qos,
                                                     job_store=job_store_url(store, tmp_path, request), **RECONNECTING)
    await eventually(lambda: listener.metrics()["connection_losses"] >= 1, 10, "the stalled connection dropped")
    proxy.thaw()
    await results_for(watcher, results, ["s-0"])
    await job_finished(listener, "s-0")
    assert (await listener.get_job_status("s-0")).status == JobStatus.COMPLETED
    assert listener.metrics()["publish_errors"] == 0
    assert processor.ran_twice() == []
    assert any("No acknowledgement from MQTT broker" in r.getMessage() and r.name == "Listener.event_listener"
               for r in caplog.records)


async def test_without_auto_reconnect_an_unacknowledged_result_is_reported_and_the_connection_kept(
        proxy_factory: Callable[..., TcpProxy], start_listener: Callable[..., Any], probe: Callable[..., MqttProbe],
        unique_topic: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropping the stalled connection would end ``run()`` when the listener may not reconnect: it keeps it."""
    proxy = proxy_factory()
    listener, task = await finish_behind_a_frozen_proxy(proxy, CountingProcessor(hold=("s-0",)), start_listener,
                                                        probe, unique_topic, monkeypatch, qos=1, default_qos=1,
                                                        auto_reconnect=False)
    await eventually(lambda: listener.metrics()["publish_errors"] >= 1, 10, "the result reported lost")
    assert listener.metrics()["connection_losses"] == 0 and not task.done()
    proxy.thaw()


async def test_reset_connection_is_replaced(
        proxy_factory: Callable[..., TcpProxy], start_listener: Callable[..., Any], probe: Callable[..., MqttProbe],
        unique_topic: str) -> None:
    """A connection reset (RST) is noticed at once; the listener reconnects, resubscribes and goes on."""
    proxy = proxy_factory()
    processor = CountingProcessor()
    results, jobs = f"{unique_topic}/results", f"{unique_topic}/jobs"
    listener, _ = await start_listener(processor, endpoint=via(proxy), **RECONNECTING)
    watcher = probe(results)
    sender = probe()
    await publish_jobs(sender, jobs, ["r-0"])
    await results_for(watcher, results, ["r-0"])

    proxy.cut()
    await eventually(lambda: listener.metrics()["reconnects"] >= 1, 10, "reconnected after the reset")
    assert proxy.accepted >= 2
    await publish_jobs(sender, jobs, ["r-1"])
    messages = await results_for(watcher, results, ["r-1"])
    assert_each_result_once(messages)
    assert listener.metrics()["connection_losses"] == 1


async def test_connection_down_and_up_are_published_on_the_log_topic(
        proxy_factory: Callable[..., TcpProxy], start_listener: Callable[..., Any], probe: Callable[..., MqttProbe],
        unique_topic: str) -> None:
    """connection_down (WARNING, kept until it can be sent) and then connection_up (INFO) reach the log topic."""
    proxy = proxy_factory()
    log = f"{unique_topic}/log"
    watcher = probe(log)
    listener, _ = await start_listener(CountingProcessor(), endpoint=via(proxy), log_topic_level="INFO", **RECONNECTING)
    proxy.cut()
    found = await asyncio.to_thread(
        watcher.wait_until, lambda ms: {"connection_down", "connection_up"} <= {body(m)["event"] for m in ms}, 10.0,
        log, "connection_down and connection_up")
    events = [body(m) for m in found if body(m)["event"] in ("connection_down", "connection_up")]
    down = next(e for e in events if e["event"] == "connection_down")
    up = next(e for e in events if e["event"] == "connection_up")
    assert down["level"] == "WARNING" and up["level"] == "INFO"
    assert down["timestamp"] <= up["timestamp"]
    assert [e["event"] for e in events] == ["connection_down", "connection_up"], \
        "a consumer reading the log topic must see the connection come back after it went down"


async def test_result_finished_during_an_outage_is_published_after_reconnect(
        proxy_factory: Callable[..., TcpProxy], start_listener: Callable[..., Any], probe: Callable[..., MqttProbe],
        unique_topic: str) -> None:
    """A job that finishes while the connection is down keeps its result; it is published once after reconnect."""
    proxy = proxy_factory()
    processor = CountingProcessor(hold=("out-1",))
    results, jobs = f"{unique_topic}/results", f"{unique_topic}/jobs"
    listener, _ = await start_listener(processor, endpoint=via(proxy), **RECONNECTING)
    watcher = probe(results, f"{unique_topic}/error")
    await publish_jobs(probe(), jobs, ["out-1"])
    assert await asyncio.to_thread(processor.started.wait, 10)
    proxy.refuse()
    await eventually(lambda: not connected(listener), 10, "connection lost")
    processor.release.set()
    await job_finished(listener, "out-1")
    assert watcher.messages(results) == []
    proxy.admit()
    messages = await results_for(watcher, results, ["out-1"])
    assert_each_result_once(messages)
    assert watcher.messages(f"{unique_topic}/error") == []
    metrics = listener.metrics()
    assert metrics["publishes_retried"] >= 1 and metrics["publish_errors"] == 0


async def test_result_that_can_never_be_published_is_reported_not_silently_lost(
        proxy_factory: Callable[..., TcpProxy], start_listener: Callable[..., Any], probe: Callable[..., MqttProbe],
        unique_topic: str, caplog: pytest.LogCaptureFixture) -> None:
    """Stopped while a result still waits for the connection: an ERROR log line and a publish error count."""
    caplog.set_level(logging.INFO, logger="Listener")
    proxy = proxy_factory()
    processor = CountingProcessor(hold=("lost-1",))
    listener, task = await start_listener(processor, endpoint=via(proxy), **RECONNECTING)
    await publish_jobs(probe(), f"{unique_topic}/jobs", ["lost-1"])
    assert await asyncio.to_thread(processor.started.wait, 10)
    proxy.refuse()
    await eventually(lambda: not connected(listener), 10, "connection lost")
    processor.release.set()
    await job_finished(listener, "lost-1")
    listener.stop()
    await asyncio.wait_for(task, 10)
    assert listener.metrics()["publish_errors"] >= 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("could not be sent" in r.getMessage() for r in errors), [r.getMessage() for r in errors]


async def test_reconnect_gives_up_when_the_broker_is_gone_for_good(
        broker_factory: Callable[..., MosquittoBroker], start_listener: Callable[..., Any]) -> None:
    """reconnect_retries=1: once the broker stops, run() ends with a ConnectionError naming host and port."""
    broker = broker_factory()
    listener, task = await start_listener(CountingProcessor(), endpoint=broker.plain, reconnect_retries=1,
                                          reconnect_max_interval=0.2, connect_timeout=1)
    started = time.monotonic()
    broker.stop()
    with pytest.raises(ConnectionError) as info:
        await asyncio.wait_for(task, 15)
    assert time.monotonic() - started < 10
    assert f"127.0.0.1:{broker.port}" in str(info.value) and "gave up after 2 attempts" in str(info.value)
    assert not listener.is_running


# -- hanging processors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_hanging_processor_times_out_and_the_next_job_runs(
        kind: str, start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    """job_timeout: the hanging job is FAILED ("Timed out…"), a "timeout" error event is published, and the
    listener moves on (an async processor is cancelled, a sync one abandoned on its thread)."""
    release = threading.Event()  # lets the abandoned thread end when the test is over
    cancelled = threading.Event()

    async def async_processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if job_id == "hang":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return {"job_id": job_id}

    def sync_processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if job_id == "hang":
            release.wait(60)
        return {"job_id": job_id}

    results, errors = f"{unique_topic}/results", f"{unique_topic}/error"
    listener, _ = await start_listener(async_processor if kind == "async" else sync_processor, job_timeout=0.5)
    watcher = probe(results, errors)
    try:
        started = time.monotonic()
        await publish_jobs(probe(), f"{unique_topic}/jobs", ["hang", "next"])
        await results_for(watcher, results, ["next"])
        assert time.monotonic() - started < 5
        [error] = await asyncio.to_thread(watcher.wait_for, 1, 5.0, errors)
        event = body(error)
        assert event["error_type"] == "timeout" and event["job_id"] == "hang" and event["status"] == "error"
        assert event["error_message"].startswith("Timed out")
        job = await listener.get_job_status("hang")
        assert job is not None and job.status is JobStatus.FAILED and (job.error or "").startswith("Timed out")
        if kind == "async":
            assert cancelled.is_set()
        else:
            assert listener.metrics()["abandoned_threads"] >= 1
    finally:
        release.set()


# -- connections that cannot be made --------------------------------------------------------------------


SECRET = "s3cret-" + os.urandom(4).hex()


@pytest.mark.parametrize("case", ["wrong_credentials_retry_forever", "unreachable_host", "tls_wrong_ca"])
async def test_connection_failures_are_bounded_and_never_show_the_password(
        case: str, mqtt_auth_endpoint: BrokerEndpoint, mqtt_tls_endpoint: BrokerEndpoint, tls_material: TlsMaterial,
        unique_topic: str, caplog: pytest.LogCaptureFixture) -> None:
    """Each ends in a ConnectionError within a bounded time, naming host and port, with the password nowhere."""
    caplog.set_level(logging.DEBUG)
    options: Dict[str, Any]
    if case == "wrong_credentials_retry_forever":
        # A refusal cannot be cured by retrying: even "retry forever" must fail fast.
        endpoint, options = replace(mqtt_auth_endpoint, password=SECRET), dict(reconnect_retries=-1)
    elif case == "unreachable_host":
        # TEST-NET-1 (RFC 5737): never routed; the connect times out (or fails at once without a route).
        endpoint = BrokerEndpoint("192.0.2.1", 1883, "user", SECRET)
        options = dict(connect_timeout=1, reconnect_retries=1, reconnect_max_interval=0.2)
    else:
        endpoint = replace(mqtt_tls_endpoint, username="user", password=SECRET, cafile=tls_material.other_ca_cert)
        options = dict(reconnect_retries=1, reconnect_max_interval=0.2)
    listener = EventListener(listener_config(endpoint, unique_topic, **options))
    started = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        await asyncio.wait_for(listener.run(CountingProcessor()), 20)
    elapsed = time.monotonic() - started
    assert elapsed < 6, f"{case} took {elapsed:.1f} s"
    message = str(info.value)
    assert f"{endpoint.host}:{endpoint.port}" in message
    assert SECRET not in message and SECRET not in caplog.text
    assert not listener.is_running


# -- the listener process killed or signalled -----------------------------------------------------------


@pytest.fixture
def listener_processes(processes: Callable[..., ListenerProcess],
                       mqtt_endpoint: BrokerEndpoint) -> Callable[..., ListenerProcess]:
    """Start listener subprocesses on the session broker; every one is killed after the test."""
    return functools.partial(processes, mqtt_endpoint)


async def test_sigterm_lets_the_job_in_flight_finish_and_publish_before_exit(
        listener_processes: Callable[..., ListenerProcess], probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    """SIGTERM (install_signal_handlers) → stop(): the running job completes, its result is published, the
    process exits 0 after a clean disconnect (no will message)."""
    status, results = f"{unique_topic}/status", f"{unique_topic}/results"
    watcher = probe(status, results)
    process = listener_processes(unique_topic, 1.5, "--signals", "--grace", "10")
    await asyncio.to_thread(process.wait_line, "READY")
    await publish_jobs(probe(), f"{unique_topic}/jobs", ["term-1"])
    await asyncio.to_thread(process.wait_line, "STARTED term-1", 10)
    process.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(process.process.wait, 15)
    assert code == 0, process.errors[-20:]
    assert "DONE term-1" in process.lines and "EXITED" in process.lines
    [result] = await asyncio.to_thread(watcher.wait_for, 1, 5.0, results)
    assert body(result)["job_id"] == "term-1"
    # The will would have been sent when the connection closed, before the process ended: a marker published
    # now arrives after it, so seeing only the marker proves there was none.
    probe().publish(status, "marker")
    [only] = await asyncio.to_thread(watcher.wait_for, 1, 5.0, status)
    assert only.payload == b"marker" and len(watcher.messages(status)) == 1


async def test_sigkill_mid_job_loses_at_most_the_acknowledged_window(
        listener_processes: Callable[..., ListenerProcess], probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    """SIGKILL with a job running and five more waiting: the will arrives; a new process with the same client id
    and a persistent session gets every job the killed one had not acknowledged. Lost are only the running job
    and at most max_concurrent_jobs (1) acknowledged-but-unprocessed one; nothing is processed twice."""
    status, results = f"{unique_topic}/status", f"{unique_topic}/results"
    watcher = probe(status, results)
    client_id = f"kill9-{os.urandom(4).hex()}"
    first = listener_processes(unique_topic, 30.0, "--client-id", client_id, "--persistent")
    await asyncio.to_thread(first.wait_line, "READY")
    waiting = [f"k-{i}" for i in range(1, 6)]
    await publish_jobs(probe(), f"{unique_topic}/jobs", ["k-0"] + waiting)
    await asyncio.to_thread(first.wait_line, "STARTED k-0", 10)
    first.process.send_signal(signal.SIGKILL)
    [will] = await asyncio.to_thread(watcher.wait_for, 1, 10.0, status)
    assert will.payload == b"listener_offline"
    first.kill()

    second = listener_processes(unique_topic, 0.0, "--client-id", client_id, "--persistent")
    await asyncio.to_thread(second.wait_line, "READY")
    await publish_jobs(probe(), f"{unique_topic}/jobs", ["k-last"])
    await results_for(watcher, results, ["k-last"])  # QoS 1 keeps order: everything before it was processed
    redelivered = second.started_jobs()
    assert len(redelivered) == len(set(redelivered)), redelivered
    never_processed = [job for job in waiting if job not in redelivered]
    assert len(never_processed) <= 1, f"lost {never_processed}; the second process ran {redelivered}"
