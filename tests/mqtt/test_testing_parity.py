"""One table of cases, run through ``Listener.testing.TestListener`` (in memory) and through Mosquitto.

Both runs must publish the same messages (topic, JSON body, QoS), leave the same retained messages and the
same job statuses, and match what the table expects. Each run ends with a sentinel job whose result goes to
a topic nobody else uses, so the broker run knows when everything before it was handled.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Tuple, Union

import pytest
from tomli_w import dumps as toml_dumps

from Listener import EventListener, create_return_type
from Listener.testing import TestListener
from tests.support.brokers import BrokerEndpoint, MqttProbe
from tests.support.listeners import listener_config


Payload = Union[bytes, str, Dict[str, Any]]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class Case:
    """Messages ``(topic, payload, qos)`` for a listener configured with ``config``; ``{p}`` is the test's prefix."""

    name: str
    messages: List[Tuple[str, Payload, int]]
    config: Dict[str, Any] = field(default_factory=dict)
    expect_topics: List[str] = field(default_factory=list)  # topics of the publications, sorted
    expect_statuses: Dict[str, str] = field(default_factory=dict)
    expect_retained: List[str] = field(default_factory=list)
    sentinel_topic: str = "{p}/jobs"


def processor(data: Dict[str, Any], job_id: str) -> Any:
    """What the message asks for: a dict result (default), a ReturnType, nothing, or an exception."""
    mode = data.get("mode", "dict")
    if mode == "raise":
        raise ValueError(f"boom in {job_id}")
    if mode == "none":
        return None
    body = {"job_id": job_id, "topic": data["_topic"], "n": data.get("n", 0)}
    if mode == "return_type":
        return create_return_type(body, data.get("to", ""), qos=data.get("qos", 0), retain=data.get("retain", False))
    return body


CASES = [
    Case("dict result to results_topic", [("{p}/jobs", {"job_id": "a"}, 1)],
         expect_topics=["{p}/results"], expect_statuses={"a": "completed"}),
    Case("return type topic, qos and retain",
         [("{p}/jobs", {"job_id": "b", "mode": "return_type", "to": "{p}/custom", "qos": 1, "retain": True}, 1)],
         expect_topics=["{p}/custom"], expect_statuses={"b": "completed"}, expect_retained=["{p}/custom"]),
    Case("empty return type topic falls back to results_topic",
         [("{p}/jobs", {"job_id": "c", "mode": "return_type", "to": "", "qos": 2}, 2)],
         config={"default_qos": 1}, expect_topics=["{p}/results"], expect_statuses={"c": "completed"}),
    Case("custom_topics give qos/retain to matching publications, and are subscribed",
         [("{p}/jobs", {"job_id": "d"}, 1), ("{p}/extra/x", {"job_id": "e"}, 1)],
         config={"results_topic": "{p}/out/results", "custom_topics": {
             "{p}/out/#": {"qos": 2, "retain": True}, "{p}/extra/+": {"qos": 1}}},
         # each result on {p}/out/results comes back (the listener subscribes to {p}/out/#): its own topic, ignored
         expect_topics=["{p}/out/results", "{p}/out/results"],
         expect_statuses={"d": "completed", "e": "completed"}, expect_retained=["{p}/out/results"]),
    Case("wildcard subscription gives _topic; other topics are not delivered",
         [("{p}/jobs/x", {"job_id": "f"}, 0), ("{p}/elsewhere", {"job_id": "g"}, 1)],
         config={"topic": "{p}/jobs/+", "qos": 1}, sentinel_topic="{p}/jobs/end",
         expect_topics=["{p}/results"], expect_statuses={"f": "completed"}),
    Case("bad payloads: invalid TOML, not UTF-8, no job id, too large",
         [("{p}/jobs", b'job_id = "x"\nnot toml', 1), ("{p}/jobs", b"\xff\xfe binary", 1),
          ("{p}/jobs", {"task": "no id"}, 1), ("{p}/jobs", "job_id = 'big'\nblob = '" + "a" * 600 + "'", 1)],
         config={"max_payload_bytes": 512},
         expect_topics=["{p}/error"] * 4 + ["{p}/log"] * 4),
    # skip ignores a duplicate "silently": an INFO log line, nothing on log_topic at its default level
    Case("duplicate skipped", [("{p}/jobs", {"job_id": "h"}, 1), ("{p}/jobs", {"job_id": "h"}, 1)],
         expect_topics=["{p}/results"], expect_statuses={"h": "duplicate"}),
    Case("duplicate as error", [("{p}/jobs", {"job_id": "i"}, 1), ("{p}/jobs", {"job_id": "i"}, 1)],
         config={"duplicate_action": "error"},
         expect_topics=["{p}/error", "{p}/log", "{p}/results"], expect_statuses={"i": "duplicate"}),
    Case("duplicate reprocessed", [("{p}/jobs", {"job_id": "j", "n": 1}, 1), ("{p}/jobs", {"job_id": "j", "n": 2}, 1)],
         config={"duplicate_action": "reprocess"},
         expect_topics=["{p}/results", "{p}/results"], expect_statuses={"j": "completed"}),
    Case("processor raises; generated job ids; audit log",
         [("{p}/jobs", {"mode": "raise"}, 1), ("{p}/jobs", {"mode": "none", "job_id": "k"}, 0)],
         config={"allow_job_id_generation": True, "log_topic_level": "INFO"},
         expect_topics=["{p}/error", "{p}/log", "{p}/log"],
         expect_statuses={"<uuid>": "failed", "k": "completed"}),
]


def fill(value: Any, prefix: str) -> Any:
    """``value`` with every ``{p}`` replaced by ``prefix`` (in strings, dict keys and values)."""
    if isinstance(value, str):
        return value.replace("{p}", prefix)
    if isinstance(value, dict):
        return {fill(k, prefix): fill(v, prefix) for k, v in value.items()}
    return value


def normalise(value: Any, prefix: str) -> Any:
    """Drop what differs from run to run: timestamps, durations, generated ids, the prefix."""
    if isinstance(value, str):
        return UUID.sub("<uuid>", value.replace(prefix, "{p}"))
    if isinstance(value, dict):
        return {k: normalise(v, prefix) for k, v in value.items() if k not in ("timestamp", "duration_ms")}
    if isinstance(value, list):
        return [normalise(v, prefix) for v in value]
    return value


@dataclass
class Run:
    publications: List[Tuple[str, str, int]]  # (topic, normalised JSON, qos), sorted
    retained: List[str]
    statuses: Dict[str, str]


async def statuses(listener: EventListener, prefix: str, sentinel: str) -> Dict[str, str]:
    jobs = await listener.get_all_jobs()
    return {normalise(job_id, prefix): job.status.value for job_id, job in jobs.items() if job_id != sentinel}


async def settled_statuses(listener: EventListener, prefix: str, sentinel: str, within: float = 5.0) -> Dict[str, str]:
    """The statuses once no job is active: a QoS 1/2 result reaches the watcher before its PUBACK/PUBCOMP
    reaches the listener, and the job turns COMPLETED only then."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        found = await statuses(listener, prefix, sentinel)
        if not {"pending", "running"} & set(found.values()) or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.02)


def sentinel_payload(prefix: str) -> Tuple[str, Dict[str, Any]]:
    job_id = f"sentinel-{uuid.uuid4().hex[:8]}"
    return job_id, {"job_id": job_id, "mode": "return_type", "to": f"{prefix}/sentinel", "qos": 1}


def record(topic: str, payload: bytes, qos: int, prefix: str) -> Tuple[str, str, int]:
    body = normalise(json.loads(payload), prefix)
    return normalise(topic, prefix), json.dumps(body, sort_keys=True), qos


def ours(topic: str, payload: bytes, case: Case, prefix: str, sentinel: str) -> bool:
    """A publication of the listener for the case: not an input, not the sentinel's, not the start-up event."""
    inputs = {fill(t, prefix) for t, _, _ in case.messages} | {fill(case.sentinel_topic, prefix)}
    if topic in inputs or topic == f"{prefix}/sentinel":
        return False
    return not (topic == f"{prefix}/log" and (sentinel.encode() in payload or b'"listener_started"' in payload))


async def run_in_memory(case: Case, endpoint: BrokerEndpoint, prefix: str) -> Run:
    config = listener_config(endpoint, prefix, **fill(case.config, prefix))
    sentinel, payload = sentinel_payload(prefix)
    async with TestListener(config, processor, timeout=10) as t:
        for topic, message, qos in case.messages:
            try:
                await t.publish(fill(message, prefix), fill(topic, prefix), qos=qos)
            except LookupError:  # nothing subscribes: a broker drops it
                pass
        await t.publish(payload, fill(case.sentinel_topic, prefix))
        published = [record(m.topic, m.data, m.qos, prefix) for m in t.messages
                     if ours(m.topic, m.data, case, prefix, sentinel)]
        retained = sorted(normalise(topic, prefix) for topic in t.retained)
        return Run(sorted(published), retained, await statuses(t.listener, prefix, sentinel))


async def run_on_broker(case: Case, start_listener: Callable[..., Any], probe: Callable[..., MqttProbe],
                        prefix: str, expected_count: int) -> Run:
    sentinel, payload = sentinel_payload(prefix)
    listener, _ = await start_listener(processor, **fill(case.config, prefix))
    watcher = probe().subscribe(f"{prefix}/#", qos=2)  # QoS 2: each message arrives at the QoS it was published with
    sender = probe()
    for topic, message, qos in [*case.messages, (case.sentinel_topic, payload, 1)]:
        body = fill(message, prefix)
        await asyncio.to_thread(sender.publish, fill(topic, prefix), toml_dumps(body) if isinstance(body, dict) else body, qos)

    def complete(found: List[Any]) -> bool:
        mine = [m for m in found if ours(m.topic, m.payload, case, prefix, sentinel)]
        return any(m.topic == f"{prefix}/sentinel" for m in found) and len(mine) >= expected_count

    found = await asyncio.to_thread(watcher.wait_until, complete, 10.0, None, "the case's publications")
    published = [record(m.topic, m.payload, m.qos, prefix) for m in found if ours(m.topic, m.payload, case, prefix, sentinel)]
    retained_probe = probe().subscribe(f"{prefix}/#", qos=2)
    await asyncio.to_thread(retained_probe.wait_until, lambda f: sum(m.retain for m in f) >= len(case.expect_retained),
                            5.0, None, "the retained messages")
    retained = sorted({normalise(m.topic, prefix) for m in retained_probe.messages() if m.retain})
    return Run(sorted(published), retained, await settled_statuses(listener, prefix, sentinel))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_in_memory_and_mosquitto_agree(case: Case, mqtt_endpoint: BrokerEndpoint, start_listener: Any,
                                             probe: Any, unique_topic: str) -> None:
    memory = await run_in_memory(case, mqtt_endpoint, unique_topic)
    assert sorted(topic for topic, _, _ in memory.publications) == sorted(case.expect_topics)
    assert memory.statuses == case.expect_statuses
    assert memory.retained == sorted(case.expect_retained)

    broker = await run_on_broker(case, start_listener, probe, unique_topic, len(memory.publications))
    assert broker.publications == memory.publications
    assert broker.retained == memory.retained
    assert broker.statuses == memory.statuses


def test_cases_publish_on_topics_the_table_names() -> None:
    """A guard on the table itself: a case's input topics are never among its expected publication topics."""
    for case in CASES:
        inputs = {t for t, _, _ in case.messages}
        assert not inputs & set(case.expect_topics), case.name


async def test_unsubscribed_topic_raises_lookup_error_in_memory(mqtt_endpoint: BrokerEndpoint) -> None:
    config = listener_config(mqtt_endpoint, "memory-only")
    async with TestListener(config, processor) as t:
        with pytest.raises(LookupError, match="memory-only/jobs"):
            await t.publish({"job_id": "x"}, "memory-only/other")
        assert t.published == []
