"""The user manual's own test and API examples, kept as close to the text as possible.

Where the manual contradicts itself, SPEC.md decides and the deviation is named in the test.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any, Dict
from unittest.mock import AsyncMock, patch

import pytest

from Listener import (
    ConfigError,
    EventListener,
    EventListenerConfig,
    JobInfo,
    JobStatus,
    ReturnType,
    SafeConfigParser,
    __version__,
    create_error_result,
    create_return_type,
)


async def wait_forever() -> Any:
    """A deliver_message that never delivers (until cancelled)."""
    await asyncio.Event().wait()


@pytest.fixture
def sample_config() -> EventListenerConfig:
    return EventListenerConfig(host="test-host", port=1883, topic="test/topic", client_id="test-client")


@pytest.fixture
def event_listener(sample_config: EventListenerConfig) -> EventListener:
    return EventListener(sample_config)


def test_public_surface_imports_as_documented() -> None:
    from Listener.event_listener import EventListener as E2, EventListenerConfig as C2, JobInfo as J2
    from Listener.event_listener import JobStatus as S2, ReturnType as R2
    from Listener.config.parser import (  # noqa: F401
        ConfigError as CE, ConfigParseError, ConfigSource, ConfigValidationError, ParsedConfig,
        SafeConfigParser as P2, validate_field_types, validate_required_fields)

    documented = (EventListener, EventListenerConfig, JobInfo, JobStatus, ReturnType, SafeConfigParser, ConfigError)
    assert (E2, C2, J2, S2, R2, P2, CE) == documented
    assert EventListener.__version__ == __version__
    assert issubclass(ConfigParseError, ConfigError) and issubclass(ConfigValidationError, ConfigError)


def test_installation_verification_snippet() -> None:
    """§4.3."""
    print(f"Installed version: {EventListener.__version__}")
    config = EventListenerConfig()
    assert config.uri == "mqtt://localhost:1883"


def test_listener_can_be_created_outside_an_event_loop() -> None:
    listener = EventListener(EventListenerConfig())
    assert listener.client is not None
    assert hasattr(listener.client, "is_connected") and listener.client.is_connected() is False


def test_validation_example_catches_value_error() -> None:
    """§5.4 and §9.5.4."""
    with pytest.raises(ValueError):
        EventListenerConfig(host="invalid-host", port=99999, qos=5)
    with pytest.raises(ValueError):
        EventListenerConfig(port=-1)
    with pytest.raises(ConfigError):
        EventListenerConfig(qos=5)


def test_config_from_json_file_example(tmp_path: Any) -> None:
    """§5.3.4: EventListenerConfig(**json.load(f))."""
    import json
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"host": "mqtt.example.com", "port": 8883, "username": "client", "password": "secret",
                                "topic": "events/+", "auto_reconnect": True, "max_jobs_in_memory": 10000}))
    with open(path) as f:
        config = EventListenerConfig(**json.load(f))
    assert config.port == 8883 and "secret" not in repr(config)


def test_environment_example_with_unset_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """§5.3.3: os.getenv may return None for username/password."""
    import os
    monkeypatch.delenv("MQTT_USERNAME", raising=False)
    monkeypatch.delenv("MQTT_PASSWORD", raising=False)
    config = EventListenerConfig(
        host=os.getenv("MQTT_HOST", "localhost"), port=int(os.getenv("MQTT_PORT", 1883)),
        username=os.getenv("MQTT_USERNAME"), password=os.getenv("MQTT_PASSWORD"), topic=os.getenv("MQTT_TOPIC", "events"))
    assert config.username is None and config.password is None


def test_complete_configuration_example() -> None:
    """§5.1.2 (certificate data shortened)."""
    config = EventListenerConfig(
        host="mqtt.example.com", port=8883, client_id="my-listener", username="mqtt_user", password="secure_password",
        uri="mqtts://mqtt.example.com:8883", cafile="/path/to/ca.crt", capath="/path/to/ca/",
        cadata="-----BEGIN CERTIFICATE-----...", keep_alive=60, ping_delay=1, auto_reconnect=True, reconnect_retries=5,
        cleansession=False, topic="events/+", qos=1, retain=False, error_topic="events/errors", log_topic="events/logs",
        results_topic="events/results", max_jobs_in_memory=10000, job_cleanup_interval=3600,
        allow_job_id_generation=True, duplicate_action="reprocess")
    assert config.uri == "mqtts://mqtt.example.com:8883"
    assert "secure_password" not in str(config)


def test_will_and_custom_topics_examples() -> None:
    """§5.3.1, §5.3.2, §6.5.2."""
    EventListenerConfig(will={"topic": "status/offline", "message": "Client disconnected", "qos": 1, "retain": True})
    EventListenerConfig(custom_topics={"alerts": {"qos": 2, "retain": True}, "metrics": {"qos": 0, "retain": False},
                                       "commands": {"qos": 1, "retain": False}})
    EventListenerConfig(topic="events/#", custom_topics={"alerts/+": {"qos": 2, "retain": True}})


def test_custom_parser_example() -> None:
    """§6.5.1."""
    import logging
    parser = SafeConfigParser(logging.getLogger(__name__))
    listener = EventListener(EventListenerConfig(host="localhost", topic="events"), config_parser=parser)
    assert listener.config_parser is parser


def test_helper_functions() -> None:
    """§7.4.1."""
    result = create_return_type({"a": 1}, "results/simple", "job-1", qos=1)
    assert (result.topic, result.job_id, result.qos, result.retain) == ("results/simple", "job-1", 1, False)
    error = create_error_result("job-2", "went wrong")
    assert error.topic == "errors" and error.qos == 1 and error.data["error_type"] == "processing_error"


@pytest.mark.integration
@pytest.mark.unit
async def test_job_lifecycle(event_listener: EventListener) -> None:
    """§9.3.2 TestJobManagement.test_job_lifecycle."""
    await event_listener._create_job("test-001", {"data": "test"})
    job = await event_listener.get_job_status("test-001")
    assert job.status == JobStatus.PENDING
    await event_listener._update_job_status("test-001", JobStatus.RUNNING)
    job = await event_listener.get_job_status("test-001")
    assert job.status == JobStatus.RUNNING
    result = {"success": True, "processed": "test"}
    await event_listener._update_job_status("test-001", JobStatus.COMPLETED, result=result)
    job = await event_listener.get_job_status("test-001")
    assert job.status == JobStatus.COMPLETED
    assert job.result == result


@pytest.mark.parametrize("status,expected_running", [
    (JobStatus.PENDING, False),
    (JobStatus.RUNNING, True),
    (JobStatus.COMPLETED, False),
    (JobStatus.FAILED, False),
])
async def test_job_running_status(event_listener: EventListener, status: JobStatus, expected_running: bool) -> None:
    """§9.5.3. (§8.5.2 claims a freshly created PENDING job is running; the status table and this test say not.)"""
    await event_listener._create_job("param-001", {})
    await event_listener._update_job_status("param-001", status)
    is_running = await event_listener.is_job_running("param-001")
    assert is_running == expected_running


async def test_duplicate_job_handling(event_listener: EventListener) -> None:
    """§9.5.4."""
    await event_listener._create_job("dup-001", {"data": "test"})
    duplicate_created = await event_listener._create_job("dup-001", {"data": "test2"})
    assert duplicate_created is False
    duplicates = await event_listener.get_duplicate_jobs()
    assert "dup-001" in duplicates


async def test_mqtt_connection_error_handling(event_listener: EventListener) -> None:
    """§9.5.2."""
    with patch.object(event_listener.client, "connect") as mock_connect:
        mock_connect.side_effect = ConnectionError("Connection failed")
        with pytest.raises(ConnectionError):
            await event_listener._connect()


async def test_message_processing_workflow(event_listener: EventListener) -> None:
    """§8.5.2 integration example."""
    event_listener.client = AsyncMock()
    test_data = {"job_id": "test-001", "task": "process"}
    await event_listener.process_message(test_data)
    job_info = await event_listener.get_job_status("test-001")
    assert job_info is not None
    assert job_info.status == JobStatus.COMPLETED


async def test_connected_listener_fixture_pattern(event_listener: EventListener) -> None:
    """§9.4.3 connected_listener: mocked client, _connect(), stop() when not running."""
    client = AsyncMock()
    event_listener.client = client
    await event_listener._connect()
    client.connect.assert_awaited_once()
    event_listener.stop()


async def test_error_handling_example() -> None:
    """§11.4.1 test_error_handling (the manual forgets to pass error_processor; passed here)."""
    listener = EventListener(EventListenerConfig())
    listener.client = AsyncMock()

    def error_processor(data: Dict[str, Any], job_id: str) -> ReturnType:
        if data.get("should_fail"):
            raise ValueError("Test error")
        return ReturnType(data={"success": True}, topic="test/results", qos=0, retain=False, message_id=1,
                          timestamp=datetime.now(), job_id=job_id)

    await listener._process_message({"job_id": "error-001", "should_fail": True}, error_processor)
    job_info = await listener.get_job_status("error-001")
    assert job_info.status == JobStatus.FAILED
    assert "Test error" in job_info.error


async def test_memory_management_over_time() -> None:
    """§9.3.2 slow example: max_jobs_in_memory holds at all times (no sleep needed)."""
    listener = EventListener(EventListenerConfig(max_jobs_in_memory=100, job_cleanup_interval=1))
    for i in range(200):
        await listener._create_job(f"job-{i}", {"data": i})
    all_jobs = await listener.get_all_jobs()
    assert len(all_jobs) <= 100


async def test_new_status_query_pattern(event_listener: EventListener) -> None:
    """§8.4.2: iterate self.jobs under self.job_lock."""
    await event_listener._create_job("q-1", {})
    async with event_listener.job_lock:
        pending = {jid: job for jid, job in event_listener.jobs.items() if job.status == JobStatus.PENDING}
    assert list(pending) == ["q-1"]


async def test_benchmark_snippet_processes_many_messages() -> None:
    """§12.3.2 benchmark_throughput, shortened and without timing asserts."""
    listener = EventListener(EventListenerConfig())
    listener.client = AsyncMock()
    processed = []

    def benchmark_processor(data: Dict[str, Any], job_id: str) -> ReturnType:
        processed.append(job_id)
        return ReturnType(data={"processed": True, "job_id": job_id}, topic="benchmark/results", qos=0, retain=False,
                          message_id=1, timestamp=datetime.now(), job_id=job_id)

    start = time.time()
    for i in range(200):
        await listener._process_message({"job_id": f"benchmark-{i}", "data": f"test-data-{i}"}, benchmark_processor)
    print(f"Throughput: {200 / max(time.time() - start, 1e-9):.1f} messages/second")
    assert len(processed) == 200 and listener.client.publish.await_count == 200


async def test_graceful_shutdown_pattern() -> None:
    """§6.5.3: stop() from a handler makes run() return."""
    listener = EventListener(EventListenerConfig(topic="events"))
    listener.client = AsyncMock()
    listener.client.subscribe.return_value = [0]
    listener.client.deliver_message.side_effect = wait_forever
    task = asyncio.create_task(listener.run(lambda d, j: None))
    await listener.wait_until_ready(5)
    listener.stop()
    await asyncio.wait_for(task, 5)
