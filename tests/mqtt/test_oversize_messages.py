"""One message far over ``max_payload_bytes`` (Mosquitto passes up to 256 MiB by default): rejected with its size,
never held in the listener's memory, and the jobs after it go on."""

from __future__ import annotations

import asyncio
import json
import subprocess  # nosec B404 - the test's own publisher
import sys
import threading
import time
from typing import Any, Callable, List

import psutil

from tests.support.brokers import BrokerEndpoint
from tests.support.job_messages import body, wait_for

HUGE = 64 * 1024 * 1024

# Publishes in its own process, so that the test's process (the listener's) never holds the payload.
PUBLISHER = """
import json, sys
import paho.mqtt.client as mqtt
spec = json.loads(sys.stdin.read())
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
if spec["username"] is not None:
    client.username_pw_set(spec["username"], spec["password"])
client.connect(spec["host"], spec["port"])
client.loop_start()
huge = b'job_id = "huge"\\nblob = "' + b"a" * spec["size"] + b'"'
for payload in (huge, b'job_id = "after"'):
    client.publish(spec["topic"], payload, qos=1).wait_for_publish(60)
client.disconnect()
client.loop_stop()
"""


def publish_from_another_process(endpoint: BrokerEndpoint, topic: str, size: int) -> None:
    spec = {"host": endpoint.host, "port": endpoint.port, "username": endpoint.username,
            "password": endpoint.password, "topic": topic, "size": size}
    subprocess.run([sys.executable, "-c", PUBLISHER], input=json.dumps(spec).encode(), check=True,  # nosec B603
                   timeout=120)


async def test_a_huge_message_is_rejected_without_being_held_in_memory(
        start_listener: Callable[..., Any], probe: Any, unique_topic: str, mqtt_endpoint: BrokerEndpoint) -> None:
    listener, _ = await start_listener(lambda data, job_id: {"job_id": job_id}, qos=1)
    watcher = probe(f"{unique_topic}/error", f"{unique_topic}/results")
    me = psutil.Process()
    baseline = me.memory_info().rss
    samples: List[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            samples.append(me.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        if mqtt_endpoint.tls:  # pragma: no cover - the plain endpoint is the default
            raise AssertionError("this test publishes on a plain endpoint")
        await asyncio.to_thread(publish_from_another_process, mqtt_endpoint, f"{unique_topic}/jobs", HUGE)
        [error] = await wait_for(watcher, 1, f"{unique_topic}/error", 60.0)
        [result] = await wait_for(watcher, 1, f"{unique_topic}/results", 30.0)
    finally:
        sampling.set()
        sampler.join(5)
    assert body(error)["error_type"] == "payload_too_large"
    assert f"Payload of {HUGE + 25} bytes exceeds the limit" in body(error)["error_message"]
    assert body(result) == {"job_id": "after"}
    assert list(await listener.get_all_jobs()) == ["after"]
    assert max(samples) - baseline < 16 * 1024 * 1024, "the listener held the huge payload"
