"""Jobs over websockets (``uri = "ws://…"``), where amqtt still reads and writes every packet: the listener's own
packet handling (``Listener.mqtt.wire_handler``) only takes plain and TLS sockets. Against amqtt's broker, which
serves websockets; the Mosquitto 2.0.11 of these machines does not start a websockets listener."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Dict, Tuple

import pytest
from Listener import EventListener
from Listener.mqtt.amqtt_boundary import EmbeddedBroker
from Listener.mqtt.wire_handler import WireHandler
from tests.support.brokers import BrokerEndpoint, MqttProbe, free_port
from tests.support.listeners import listener_config, run_until_ready

JOBS = 30


@pytest.fixture
async def websockets_broker() -> AsyncIterator[Tuple[int, int]]:
    """amqtt's broker on this loop: (its plain TCP port, its websockets port)."""
    tcp, ws = free_port(), free_port()
    broker = EmbeddedBroker("127.0.0.1", tcp, websockets_port=ws)
    await broker.start()
    try:
        yield tcp, ws
    finally:
        await broker.shutdown()


@pytest.mark.parametrize("qos", [0, 1])
async def test_jobs_over_websockets_get_their_results(websockets_broker: Tuple[int, int], unique_topic: str,
                                                      qos: int) -> None:
    tcp, ws = websockets_broker
    config = listener_config(BrokerEndpoint("127.0.0.1", ws), unique_topic, uri=f"ws://127.0.0.1:{ws}/",
                             qos=qos, default_qos=qos, log_topic="")
    listener = EventListener(config)

    def double(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        return {"job_id": job_id, "n": data["n"] * 2}

    task = await run_until_ready(listener, double)
    # The broker runs on this loop: the probe's blocking calls go to a thread.
    probe = await asyncio.to_thread(MqttProbe, BrokerEndpoint("127.0.0.1", tcp))
    try:
        wire = listener.client.wire
        assert isinstance(wire, WireHandler) and wire.stream is None  # amqtt's way, not the direct one
        await asyncio.to_thread(probe.subscribe, f"{unique_topic}/results", qos)
        for i in range(JOBS):
            await asyncio.to_thread(probe.publish, f"{unique_topic}/jobs", f'job_id = "ws-{i}"\nn = {i}\n', qos)
        results = await asyncio.to_thread(probe.wait_for, JOBS, 20.0, f"{unique_topic}/results")
        assert sorted((json.loads(m.payload)["job_id"], json.loads(m.payload)["n"]) for m in results) == sorted(
            (f"ws-{i}", 2 * i) for i in range(JOBS))
        assert all(m.qos == qos for m in results)
    finally:
        await asyncio.to_thread(probe.close)
        listener.stop()
        await asyncio.wait_for(task, 15)
