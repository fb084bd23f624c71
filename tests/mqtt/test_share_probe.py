"""``share_group`` proven at start against real brokers: Mosquitto 2 applies shared subscriptions (the probe passes
in a few milliseconds, never becomes a job, and gets through a full in-flight window); amqtt's broker takes
``$share/...`` as a literal filter, so ``run()`` fails with a clear error before it is ever ready. Every wait is
bounded."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Callable, Dict, List

import pytest
from amqtt.broker import Broker

from Listener import EventListener
from Listener.share_probe import PROBE_PREFIX, REPUBLISH_AFTER, SharedSubscriptionUnsupported
from tests.mqtt.conftest import StartListener, listener_config, run_until_ready
from tests.support.brokers import BrokerEndpoint, MqttProbe, free_port

#: run() connects, subscribes, publishes the probe, and gives its verdict one VERDICT_GRACE later: well within this.
REFUSAL_TIMEOUT = 15.0


def _probe_durations(caplog: pytest.LogCaptureFixture) -> List[float]:
    """The milliseconds each passed probe took, from the listener's "checked in N ms" log lines."""
    return [float(record.args[2]) for record in caplog.records  # type: ignore[index]
            if record.name == "Listener.share_probe" and "applies shared subscriptions" in record.msg]


# -- Mosquitto: the probe passes -------------------------------------------------------------------------


async def test_on_mosquitto_the_probe_passes_at_once_and_never_becomes_a_job(
        start_listener: StartListener, probe: Callable[..., MqttProbe], unique_topic: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "Listener.share_probe")
    client_id = f"probe-{uuid.uuid4().hex[:8]}"
    watcher = probe(f"{PROBE_PREFIX}/{client_id}/#")  # a plain subscriber sees both probe messages
    errors = probe(f"{unique_topic}/error")
    listener, _ = await start_listener(lambda data, job_id: {"job_id": job_id}, share_group=f"g-{uuid.uuid4().hex[:6]}",
                                       client_id=client_id, qos=1)
    seen = await asyncio.to_thread(watcher.wait_for, 2, 10.0)
    assert sorted(message.topic.rsplit("/", 1)[1] for message in seen) == ["direct", "shared"]
    [took] = _probe_durations(caplog)
    assert took < 1000 * REPUBLISH_AFTER[0]  # the first messages passed: no second try
    assert listener.metrics()["messages_received"] == 0 and not listener.jobs  # the probe was no job
    results = probe(f"{unique_topic}/results")
    probe().publish(f"{unique_topic}/jobs", 'job_id = "after-probe"')
    [result] = await asyncio.to_thread(results.wait_for, 1, 10.0, f"{unique_topic}/results")
    assert json.loads(result.payload)["job_id"] == "after-probe"
    assert listener.metrics()["messages_received"] == 1 and list(listener.jobs) == ["after-probe"]
    assert errors.messages(f"{unique_topic}/error") == []  # nothing was rejected either


async def test_the_probe_passes_a_full_in_flight_window_of_held_jobs(
        probe: Callable[..., MqttProbe], unique_topic: str, mqtt_endpoint: BrokerEndpoint,
        caplog: pytest.LogCaptureFixture) -> None:
    """A restart with a backlog: Mosquitto sends 20 QoS 1 jobs at once, whose PUBACKs wait until each job is done,
    and jobs start only once the probe passed. The QoS 0 probe messages are not held behind them."""
    caplog.set_level(logging.INFO, "Listener.share_probe")
    total = 60
    client_id = f"backlog-{uuid.uuid4().hex[:8]}"
    config = listener_config(mqtt_endpoint, unique_topic, share_group=f"g-{uuid.uuid4().hex[:6]}",
                             client_id=client_id, cleansession=False, qos=1)
    first = EventListener(config)
    task = await run_until_ready(first, None)
    first.stop()
    await asyncio.wait_for(task, 20)
    sender = probe()
    for index in range(total):  # queued by Mosquitto for the offline member of the group
        sender.publish(f"{unique_topic}/jobs", f'job_id = "b-{index}"', qos=1)
    watcher = probe(f"{PROBE_PREFIX}/{client_id}/#")
    results = probe(f"{unique_topic}/results")
    second = EventListener(config)

    def slowly(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        time.sleep(0.01)
        return {"job_id": job_id}

    task = await run_until_ready(second, slowly)
    try:
        found = await asyncio.to_thread(results.wait_until, lambda got: len(got) >= total, 30.0,
                                        f"{unique_topic}/results", f"{total} results")
        assert sorted(json.loads(message.payload)["job_id"] for message in found) == sorted(
            f"b-{index}" for index in range(total))
        assert len(watcher.messages()) == 2  # the probe of this start ran
        assert all(took < 1000 * REPUBLISH_AFTER[0] for took in _probe_durations(caplog))
        assert second.metrics()["messages_received"] == total
    finally:
        second.stop()
        await asyncio.wait_for(task, 20)


# -- amqtt's broker: $share taken literally ---------------------------------------------------------------


@pytest.fixture
async def amqtt_broker() -> AsyncIterator[BrokerEndpoint]:
    """amqtt's broker on this loop (it has no shared subscriptions: it grants $share/... as a literal filter)."""
    port = free_port()
    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                     "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}})
    await broker.start()
    try:
        yield BrokerEndpoint("127.0.0.1", port)
    finally:
        await broker.shutdown()


async def test_on_amqtts_broker_run_fails_before_it_is_ever_ready(amqtt_broker: BrokerEndpoint,
                                                                  unique_topic: str) -> None:
    group = f"g-{uuid.uuid4().hex[:6]}"
    listener = EventListener(listener_config(amqtt_broker, unique_topic, share_group=group, qos=1))
    started = time.monotonic()
    run = asyncio.create_task(listener.run(lambda data, job_id: None))
    ready = asyncio.create_task(listener.wait_until_ready(REFUSAL_TIMEOUT))
    try:
        await asyncio.wait({run, ready}, timeout=REFUSAL_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        assert run.done() and not ready.done(), "run() went on (or said ready) on a broker without $share"
        with pytest.raises(SharedSubscriptionUnsupported) as raised:
            run.result()
    finally:
        listener.stop()
        ready.cancel()
        await asyncio.wait({run, ready}, timeout=REFUSAL_TIMEOUT)
    assert time.monotonic() - started < REFUSAL_TIMEOUT
    message = str(raised.value)
    assert "shared subscription" in message and f"127.0.0.1:{amqtt_broker.port}" in message and repr(group) in message
    assert "Mosquitto 2" in message and "remove share_group" in message
    assert not listener.is_ready and listener.state.value == "stopped"
