"""docs/security.md's Mosquitto ACL file, as printed there, in a real Mosquitto: a listener with ``share_group``
takes a job and publishes its result and an error event through it; without the share-probe line it cannot start;
without the ``write`` line of its results topic, Mosquitto closes its connection at each result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import subprocess  # noqa: S404
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest

from Listener import EventListener, EventListenerConfig, JobStatus
from tests.support.brokers import BrokerEndpoint, MosquittoBroker, MqttProbe, find_binary, session_folder
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent.parent
CHAPTER = ROOT / "docs" / "security.md"
PROBE_LINE = "topic readwrite mqtt-listener/share-probe/#"


def documented_acl() -> str:
    """The ```text block right after ``<!-- tested: acl -->`` in docs/security.md."""
    found = re.search(r"^<!-- tested: acl -->\n```text\n(.*?)^```$", CHAPTER.read_text(encoding="utf-8"),
                      re.MULTILINE | re.DOTALL)
    assert found is not None, "docs/security.md has no ```text block after <!-- tested: acl -->"
    return found.group(1)


def start_broker(acl: str) -> Tuple[MosquittoBroker, Dict[str, str]]:
    """A Mosquitto whose password listener has the accounts ``listener`` and ``producer`` and ``acl`` as its acl_file."""
    if os.getenv("MQTT_HOST") and os.getenv("MQTT_PORT"):
        pytest.skip("needs a broker the test starts (MQTT_HOST/MQTT_PORT point at an external broker)")
    passwd = find_binary("mosquitto_passwd")
    if passwd is None or find_binary("mosquitto") is None:
        pytest.skip("needs mosquitto and mosquitto_passwd")
    folder = session_folder()
    passwords = {"listener": "pw-" + os.urandom(6).hex(), "producer": "pw-" + os.urandom(6).hex()}
    password_file = folder / "accounts"
    for index, (user, password) in enumerate(passwords.items()):
        create = ["-c"] if index == 0 else []
        subprocess.run([passwd, "-b", *create, str(password_file), user, password],  # noqa: S603
                       check=True, capture_output=True, timeout=30)
    acl_file = folder / "acl"
    acl_file.write_text(acl, encoding="utf-8")
    acl_file.chmod(0o644)
    broker = MosquittoBroker(folder / "broker", password_file=password_file, username="listener",
                             password=passwords["listener"])
    # per_listener_settings: the acl_file belongs to the password listener's section, after its password_file.
    config = broker.config_path.read_text(encoding="ascii")
    config = re.sub(r"^(password_file .*)$", rf"\1\nacl_file {acl_file}", config, flags=re.MULTILINE)
    broker.config_path.write_text(config, encoding="ascii")
    broker.start()
    return broker, passwords


@pytest.fixture
def acl_broker(request: pytest.FixtureRequest) -> Iterator[Tuple[MosquittoBroker, Dict[str, str]]]:
    broker, passwords = start_broker(request.param)
    try:
        yield broker, passwords
    finally:
        broker.stop()
        shutil.rmtree(broker.folder.parent, ignore_errors=True)


def orders_config(broker: MosquittoBroker, password: str) -> EventListenerConfig:
    return EventListenerConfig(host="127.0.0.1", port=broker.auth_port, username="listener", password=password,
                               client_id="orders-listener", topic="orders/jobs", results_topic="orders/results",
                               error_topic="orders/error", log_topic="orders/log", share_group="orders",
                               reconnect_retries=0, connect_timeout=5)


def process(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
    return {"job_id": job_id, "total": data["quantity"] * 2}


@pytest.mark.parametrize("acl_broker", [documented_acl()], indirect=True)
async def test_the_documented_acl_lets_a_shared_listener_take_jobs_and_publish(
        acl_broker: Tuple[MosquittoBroker, Dict[str, str]]) -> None:
    broker, passwords = acl_broker
    producer = MqttProbe(BrokerEndpoint("127.0.0.1", broker.auth_port, "producer", passwords["producer"]))
    try:
        producer.subscribe("orders/results")
        producer.subscribe("orders/error")
        listener = EventListener(orders_config(broker, passwords["listener"]))
        running = asyncio.create_task(listener.run(process))
        try:
            await asyncio.wait_for(listener.wait_until_ready(), 20)   # the share probe passed through the ACL
            producer.publish("orders/jobs", 'job_id = "o-1"\nquantity = 21')
            producer.publish("orders/jobs", "not toml ]]")
            results = await asyncio.to_thread(producer.wait_for, 1, 10.0, "orders/results")
            errors = await asyncio.to_thread(producer.wait_for, 1, 10.0, "orders/error")
        finally:
            listener.stop()
            await asyncio.wait_for(running, 20)
    finally:
        producer.close()
    assert json.loads(results[0].payload) == {"job_id": "o-1", "total": 42}
    assert json.loads(errors[0].payload)["error_type"] == "invalid_payload"


@pytest.mark.parametrize("acl_broker", [documented_acl().replace(PROBE_LINE, "")], indirect=True)
async def test_without_the_share_probe_line_the_listener_cannot_start(
        acl_broker: Tuple[MosquittoBroker, Dict[str, str]]) -> None:
    broker, passwords = acl_broker
    assert PROBE_LINE in documented_acl()
    with pytest.raises(ConnectionError, match="share|probe"):
        await asyncio.wait_for(EventListener(orders_config(broker, passwords["listener"])).run(process), 30)


@pytest.mark.parametrize("acl_broker", [documented_acl().replace("topic write orders/results\n", "")], indirect=True)
async def test_without_write_on_the_results_topic_mosquitto_drops_the_connection_at_the_result(
        acl_broker: Tuple[MosquittoBroker, Dict[str, str]]) -> None:
    """What the chapter says a missing ``write`` line looks like: the job completes, the QoS 0 result costs the
    connection (Mosquitto 2.0 closes it), the listener reconnects, and the result never arrives."""
    broker, passwords = acl_broker
    assert "topic write orders/results\n" in documented_acl()
    producer = MqttProbe(BrokerEndpoint("127.0.0.1", broker.auth_port, "producer", passwords["producer"]))
    config = dataclasses.replace(orders_config(broker, passwords["listener"]), reconnect_retries=-1)
    listener = EventListener(config)
    running = asyncio.create_task(listener.run(process))
    try:
        await asyncio.wait_for(listener.wait_until_ready(), 20)
        producer.publish("orders/jobs", 'job_id = "o-2"\nquantity = 1')
        await eventually(lambda: listener.metrics()["connection_losses"] >= 1, 10, "the connection lost")
        await eventually(lambda: listener.is_ready, 20, "reconnected")
        job = await listener.get_job_status("o-2")
        assert job is not None and job.status is JobStatus.COMPLETED
        assert producer.messages("orders/results") == []
    finally:
        listener.stop()
        await asyncio.wait_for(running, 20)
        producer.close()
