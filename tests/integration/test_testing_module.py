"""Listener.testing's own behaviour: TestListener's edges, the in-memory transport, the TOML writer, running_broker."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, Dict

import pytest
from tomli_w import dumps

from Listener import EventListenerConfig, JobStatus, create_return_type
from Listener.testing.memory_broker import MemoryBroker, MemoryClient, MemoryMessage
from Listener.config.parser import SafeConfigParser
from Listener.testing import JobOutcome, TestListener, running_broker, running_listener


def test_toml_writer_round_trips_through_the_listeners_parser() -> None:
    data: Dict[str, Any] = {"job_id": "a", "n": 3, "x": 1.5, "ok": True, "no": False, "text": 'say "hi"\n\tü',
                            "when": datetime.datetime(2024, 1, 2, 3, 4, 5), "items": [1, "two", [3.0]],
                            "table": {"inner key": {"deep": 1}}, "odd key!": "v"}
    assert SafeConfigParser().parse_config_from_string(dumps(data)) == data


def test_toml_writer_special_floats_and_refusals() -> None:
    parsed = SafeConfigParser().parse_config_from_string(dumps({"a": float("inf"), "b": float("-inf"), "c": float("nan")}))
    assert parsed["a"] == float("inf") and parsed["b"] == float("-inf") and parsed["c"] != parsed["c"]
    with pytest.raises(TypeError, match="NoneType"):
        dumps({"a": None})
    with pytest.raises(TypeError, match="string is required"):
        dumps({"a": {1: 2}})


async def test_async_processor_generated_id_and_published_list() -> None:
    async def processor(data: Dict[str, Any], job_id: str) -> Any:
        await asyncio.sleep(0)
        return create_return_type({"id": job_id}, "out/one", qos=2, retain=True)

    config = EventListenerConfig(topic="in", allow_job_id_generation=True, max_concurrent_jobs=4)
    async with TestListener(config, processor) as t:
        outcome = await t.publish("x = 1")
    assert isinstance(outcome, JobOutcome) and outcome.status is JobStatus.COMPLETED
    assert outcome.result == {"id": outcome.job_id} and len(outcome.job_id or "") == 36
    assert t.published == [("out/one", {"id": outcome.job_id})]
    assert t.messages[0].qos == 2 and t.messages[0].retain and "out/one" in t.retained


async def test_publish_refuses_filters_and_needs_a_started_listener() -> None:
    t = TestListener(EventListenerConfig(topic="in/+"))
    with pytest.raises(RuntimeError, match="not started"):
        await t.publish({"job_id": "a"}, "in/x")
    async with t:
        with pytest.raises(ValueError, match="pass topic="):
            await t.publish({"job_id": "a"})
        assert (await t.publish({"job_id": "a"}, "in/x")).status is JobStatus.COMPLETED
    with pytest.raises(RuntimeError):
        await t.publish({"job_id": "b"}, "in/x")
    await t.stop()  # a second stop is harmless


async def test_a_processor_that_never_finishes_times_the_publish_out() -> None:
    release = asyncio.Event()

    async def stuck(data: Dict[str, Any], job_id: str) -> None:
        await release.wait()

    config = EventListenerConfig(topic="in", shutdown_grace_period=1)
    async with TestListener(config, stuck, timeout=0.3) as t:
        with pytest.raises(asyncio.TimeoutError, match="not handled"):
            await t.publish({"job_id": "slow"})
        release.set()


async def test_text_payload_and_non_json_publications_are_kept_raw() -> None:
    async with TestListener(EventListenerConfig(topic="in"), None) as t:
        assert (await t.publish(b'job_id = "raw"')).status is JobStatus.COMPLETED
        await t.listener._send_message("free/text", "not json")
    assert t.published == [("free/text", b"not json")]


async def test_memory_client_routing_rules() -> None:
    broker = MemoryBroker()
    publisher, subscriber = MemoryClient(broker, "p"), MemoryClient(broker, "s")
    with pytest.raises(ConnectionError):
        await publisher.publish("a/b", b"x")
    await publisher.connect()
    await subscriber.connect()
    await publisher.publish("a/b", b"kept", qos=1, retain=True)
    assert await subscriber.subscribe([("a/+", 2), ("a/#", 0)]) == [2, 0]
    first = await subscriber.deliver_message(1)
    assert first == MemoryMessage("a/b", b"kept", 1, True)
    assert (await subscriber.deliver_message(1)).qos == 0  # type: ignore[union-attr]
    await publisher.publish("a/b", b"live", qos=2)
    copies = [await subscriber.deliver_message(1) for _ in range(2)]
    assert sorted(m.qos for m in copies if m) == [0, 2] and all(m and not m.retain for m in copies)
    await publisher.publish("a/b", b"", retain=True)  # clears the retained message, and is delivered as usual
    assert broker.retained == {}
    assert [(await subscriber.deliver_message(1)).data for _ in range(2)] == [b"", b""]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="wildcard"):
        await publisher.publish("a/#", b"x")
    await subscriber.disconnect()
    assert await subscriber.deliver_message() is None
    assert await subscriber.deliver_message() is None
    with pytest.raises(asyncio.TimeoutError):
        await publisher.deliver_message(0.01)


def test_running_broker_refuses_unknown_kinds_and_external_without_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MQTT_HOST", raising=False)
    monkeypatch.delenv("MQTT_PORT", raising=False)
    with pytest.raises(ValueError, match="unknown"):
        with running_broker("rabbit"):
            pass
    with pytest.raises(ValueError, match="MQTT_HOST"):
        with running_broker("external"):
            pass
    monkeypatch.setenv("MQTT_HOST", "broker.invalid")
    monkeypatch.setenv("MQTT_PORT", "1999")
    with running_broker() as address:
        assert (address.host, address.port, address.kind) == ("broker.invalid", 1999, "external")


def test_running_broker_says_when_mosquitto_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr("Listener.testing.brokers.find_mosquitto", lambda: None)
    with pytest.raises(RuntimeError, match="not installed"):
        with running_broker("mosquitto"):
            pass


async def test_running_listener_reports_an_unreachable_broker() -> None:
    config = EventListenerConfig(host="127.0.0.1", port=1, reconnect_retries=0, connect_timeout=2,
                                 username=None, password=None)
    with pytest.raises(ConnectionError):
        async with running_listener(config, None, timeout=5):
            pass  # pragma: no cover - never reached
