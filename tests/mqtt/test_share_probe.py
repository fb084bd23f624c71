"""``share_group`` proven at start against real brokers: Mosquitto 2 applies shared subscriptions (the probe passes
in a few milliseconds, never becomes a job, and gets through a full in-flight window); amqtt's broker takes
``$share/...`` as a literal filter, so ``run()`` fails with a clear error before it is ever ready, ``mqtt-listener
run`` exits 2 (also with ``--workers 2``) and ``check-config`` says so. Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List

import pytest

from Listener import EventListener
from Listener.mqtt.amqtt_boundary import EmbeddedBroker
from Listener.testing.brokers import BrokerAddress, running_broker
from Listener.cli.command import main
from Listener.mqtt.share_probe import PROBE_PREFIX, REPUBLISH_AFTER, SharedSubscriptionUnsupported
from tests.support.brokers import BrokerEndpoint, MqttProbe, free_port
from tests.support.job_messages import assert_each_result_once, publish_jobs, results_for
from tests.support.listener_processes import ROOT, CliProcess, connection_options, topic_options
from tests.support.listeners import RECONNECTING, StartListener, listener_config, run_until_ready, via
from tests.support.processors import CountingProcessor
from tests.support.proxy import TcpProxy
from tests.support.waiting import eventually

#: run() connects, subscribes, publishes the probe, and gives its verdict one VERDICT_GRACE later: well within this.
REFUSAL_TIMEOUT = 15.0
PROCESSOR = '''
def echo(data, job_id):
    return {"job_id": job_id}
'''


def _arrived(listener: EventListener) -> int:
    """Messages the listener holds: those taken for processing and those still queued."""
    metrics = listener.metrics()
    return int(metrics["messages_received"]) + int(metrics["queue_depth"])


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


async def test_after_a_reconnect_the_probe_runs_again_and_never_mixes_with_the_backlog(
        proxy_factory: Callable[..., TcpProxy], start_listener: StartListener, probe: Callable[..., MqttProbe],
        unique_topic: str, caplog: pytest.LogCaptureFixture) -> None:
    """The connection drops while one job runs and ten wait in the delivery queue: the next connection probes
    again (a failover may have changed the broker) while that backlog is still queued, and every job runs once."""
    caplog.set_level(logging.INFO, "Listener.share_probe")
    proxy = proxy_factory()
    processor = CountingProcessor(hold=("held",))
    client_id = f"again-{uuid.uuid4().hex[:8]}"
    probes = probe(f"{PROBE_PREFIX}/{client_id}/#")
    errors, results = probe(f"{unique_topic}/error"), f"{unique_topic}/results"
    watcher = probe(results)
    listener, _ = await start_listener(processor, endpoint=via(proxy), client_id=client_id, cleansession=False,
                                       qos=1, share_group=f"g-{uuid.uuid4().hex[:6]}", **RECONNECTING)
    await asyncio.to_thread(probes.wait_for, 2, 10.0)
    jobs = ["held"] + [f"q-{index}" for index in range(10)]
    await publish_jobs(probe(), f"{unique_topic}/jobs", jobs)
    assert await asyncio.to_thread(processor.started.wait, 10)
    # The held job may have been handed to the worker with the next one (a batch): count both places.
    await eventually(lambda: _arrived(listener) == len(jobs), 10, "the backlog is queued")
    proxy.cut()
    await eventually(lambda: listener.metrics()["reconnects"] == 1 and listener.is_ready, 15, "reconnected")
    assert len(await asyncio.to_thread(probes.wait_for, 4, 10.0)) == 4  # probed again on the new connection
    assert len(_probe_durations(caplog)) == 2
    processor.release.set()
    assert_each_result_once(await results_for(watcher, results, jobs))
    assert processor.ran() == sorted(jobs) and processor.ran_twice() == []  # no probe ran as a job
    assert sorted(listener.jobs) == sorted(jobs)
    assert errors.messages() == []  # and none was rejected as a payload


# -- amqtt's broker: $share taken literally ---------------------------------------------------------------


@pytest.fixture
async def amqtt_broker() -> AsyncIterator[BrokerEndpoint]:
    """amqtt's broker on this loop (it has no shared subscriptions: it grants $share/... as a literal filter)."""
    port = free_port()
    async with EmbeddedBroker("127.0.0.1", port):
        yield BrokerEndpoint("127.0.0.1", port)


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


@pytest.fixture
def embedded_broker() -> Iterator[BrokerAddress]:
    """amqtt's broker in a thread of its own: it serves the command line's processes."""
    with running_broker("embedded") as address:
        yield address


@pytest.fixture
def cli_env(tmp_path: Path) -> Dict[str, str]:
    (tmp_path / "share_probe_processors.py").write_text(PROCESSOR, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "workers-2"])
def test_mqtt_listener_run_exits_2_on_a_broker_without_shared_subscriptions(
        embedded_broker: BrokerAddress, cli_env: Dict[str, str], unique_topic: str, workers: List[str]) -> None:
    endpoint = BrokerEndpoint(embedded_broker.host, embedded_broker.port)
    process = CliProcess(["run", "share_probe_processors:echo", *connection_options(endpoint),
                          *topic_options(unique_topic), "--set", "share_group=pool", *workers], cli_env)
    try:
        assert process.wait(REFUSAL_TIMEOUT + 15) == 2, process.output()
    finally:
        process.kill()
    output = process.output()
    assert "does not apply MQTT shared subscriptions, which share_group 'pool' needs" in output
    assert f"127.0.0.1:{embedded_broker.port}" in output and "Traceback" not in output
    if workers:
        assert "not restarting it" in output and "Restarting worker" not in output


def _config_file(tmp_path: Path, host: str, port: int) -> str:
    path = tmp_path / "listener.toml"
    path.write_text(f'host = "{host}"\nport = {port}\ntopic = "jobs"\nshare_group = "pool"\n', encoding="utf-8")
    return str(path)


def test_check_config_reports_a_broker_without_shared_subscriptions(
        embedded_broker: BrokerAddress, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", _config_file(tmp_path, embedded_broker.host, embedded_broker.port)]) == 1
    err = capsys.readouterr().err
    assert "does not apply MQTT shared subscriptions" in err and f"127.0.0.1:{embedded_broker.port}" in err
    assert "configuration is valid" not in err


def test_check_config_confirms_shared_subscriptions_on_mosquitto_and_only_warns_when_unreachable(
        mqtt_endpoint: BrokerEndpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if mqtt_endpoint.username is not None:
        pytest.skip("the config file carries no credentials")
    assert main(["check-config", _config_file(tmp_path, mqtt_endpoint.host, mqtt_endpoint.port)]) == 0
    err = capsys.readouterr().err
    assert f"the broker at {mqtt_endpoint.host}:{mqtt_endpoint.port} applies shared subscriptions" in err
    assert "configuration is valid" in err
    closed = free_port()
    assert main(["check-config", _config_file(tmp_path, "127.0.0.1", closed)]) == 0
    err = capsys.readouterr().err
    assert f"warning: share_group not verified: Cannot connect to MQTT broker at 127.0.0.1:{closed}" in err
    assert "configuration is valid" in err
