"""A user's test file: written only against Listener, Listener.testing and the `listener` plugin's fixtures.

tests/mqtt/test_pytest_plugin.py runs it with pytester, and the slow packaging test runs it in a clean venv
where the wheel was installed with its [test] extra. It is not collected by this suite itself.
"""

import json

import pytest
from amqtt.client import MQTTClient

from Listener import EventListenerConfig, JobStatus, create_return_type
from Listener.testing import TestListener, running_listener

pytestmark = pytest.mark.asyncio


def resize(data, job_id):
    if data["width"] < 0:
        raise ValueError("width must be positive")
    return create_return_type({"job_id": job_id, "width": data["width"] * 2}, "")


async def test_in_memory():
    async with TestListener(EventListenerConfig(topic="jobs"), resize) as t:
        done = await t.publish({"job_id": "r1", "width": 3})
        failed = await t.publish('job_id = "r2"\nwidth = -1')
    assert done.status is JobStatus.COMPLETED and done.result == {"job_id": "r1", "width": 6}
    assert failed.status is JobStatus.FAILED and failed.error["error_type"] == "processing_error"
    assert [topic for topic, _ in t.published] == ["test/results", "test/error", "test/log"]


async def test_against_the_fixture_broker(mqtt_broker, listener_config):
    client = MQTTClient(config={"auto_reconnect": False})
    await client.connect(f"mqtt://{mqtt_broker.host}:{mqtt_broker.port}")
    try:
        await client.subscribe([(listener_config.results_topic, 1)])
        async with running_listener(listener_config, resize) as listener:
            await client.publish(listener_config.topic, b'job_id = "b1"\nwidth = 5', qos=1)
            message = await client.deliver_message(timeout_duration=10)
        job = await listener.get_job_status("b1")  # the listener has stopped: its jobs are finished
    finally:
        await client.disconnect()
    assert json.loads(bytes(message.data)) == {"job_id": "b1", "width": 10}
    assert job is not None and job.status is JobStatus.COMPLETED
