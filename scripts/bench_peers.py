"""The hand-written peers of ``scripts/bench.py``: the loop a user would write instead of the listener.

Each peer subscribes to the jobs topic, parses the TOML payload with ``tomli``, keeps a dict of jobs by job
id with a status, calls the bench's processor and publishes its result as JSON to the results topic at the
scenario's QoS (a failed job goes to the error topic). Each acknowledges on receipt, as its client does by
default: gmqtt's optimistic acknowledgement answers before ``on_message`` runs, paho answers when it
returns. They run in the runner process, so the CPU reported is theirs (paho's network thread included).

This module imports nothing from the bench at module level (the runner imports it, as it does bench_group).
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, Callable, Dict, Protocol

import tomli

__all__ = ["GmqttPeer", "PEERS", "PahoPeer", "Peer"]

Processor = Callable[[Dict[str, Any], str], Dict[str, Any]]


class Peer(Protocol):
    """What the runner needs of a peer."""

    jobs: Dict[str, Dict[str, Any]]

    async def start(self, timeout: float) -> None:
        """Connect and subscribe."""

    async def stop(self) -> None:
        """Disconnect."""


def handle(jobs: Dict[str, Dict[str, Any]], processor: Processor, payload: bytes,
           publish: Callable[[str, str], None], results_topic: str, error_topic: str) -> None:
    """One job, as a user's ``on_message`` does it."""
    try:
        data = tomli.loads(payload.decode())
        job_id = str(data["job_id"])
    except (UnicodeDecodeError, tomli.TOMLDecodeError, KeyError) as exc:
        publish(error_topic, json.dumps({"error": f"bad job: {exc}"}))
        return
    job = jobs[job_id] = {"status": "running"}
    try:
        result = processor(data, job_id)
    except Exception as exc:  # noqa: BLE001 - a user's loop reports the job's failure and goes on
        job["status"] = "failed"
        publish(error_topic, json.dumps({"job_id": job_id, "error": str(exc)}))
        return
    job["status"] = "completed"
    publish(results_topic, json.dumps(result))


class GmqttPeer:
    """gmqtt (asyncio): ``on_message`` runs on the event loop; ``publish`` queues the packet."""

    def __init__(self, endpoint: Any, topics: Dict[str, str], qos: int, client_id: str, processor: Processor,
                 inflight: int) -> None:
        from gmqtt import Client

        self.jobs: Dict[str, Dict[str, Any]] = {}
        self._endpoint, self._topics, self._qos, self._processor = endpoint, topics, qos, processor
        self._client = Client(client_id)
        if endpoint.username:
            self._client.set_auth_credentials(endpoint.username, endpoint.password)
        self._client.on_message = self._on_message

    def _publish(self, topic: str, body: str) -> None:
        self._client.publish(topic, body, qos=self._qos)

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        handle(self.jobs, self._processor, payload, self._publish, self._topics["results"], self._topics["errors"])
        return 0

    async def start(self, timeout: float) -> None:
        """Connect, subscribe, wait for the SUBACK."""
        from gmqtt.mqtt.constants import MQTTv311

        subscribed = asyncio.Event()
        self._client.on_subscribe = lambda *_: subscribed.set()
        # MQTT 3.1.1, as the listener (amqtt) and paho speak it. At gmqtt's default, MQTT 5, its pool of packet
        # ids is the broker's receive maximum, and a QoS 1/2 result published past it raises OverflowError
        # (gmqtt does not queue it): a backlog of jobs loses results.
        await self._client.connect(self._endpoint.host, self._endpoint.port, keepalive=60, version=MQTTv311)
        self._client.subscribe(self._topics["jobs"], qos=self._qos)
        await asyncio.wait_for(subscribed.wait(), timeout)

    async def stop(self) -> None:
        """Disconnect."""
        await self._client.disconnect()


class PahoPeer:
    """paho-mqtt: ``on_message`` runs on paho's network thread (``loop_start``)."""

    def __init__(self, endpoint: Any, topics: Dict[str, str], qos: int, client_id: str, processor: Processor,
                 inflight: int) -> None:
        import paho.mqtt.client as mqtt

        self.jobs: Dict[str, Dict[str, Any]] = {}
        self._endpoint, self._topics, self._qos, self._processor = endpoint, topics, qos, processor
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if endpoint.username:
            self._client.username_pw_set(endpoint.username, endpoint.password)
        # paho holds back QoS 1/2 publishes past 20 in flight; raised to the broker's window, as the bench's
        # own publisher does (the listener and gmqtt have no such limit of their own).
        self._client.max_inflight_messages_set(inflight)
        self._client.on_message = self._on_message

    def _publish(self, topic: str, body: str) -> None:
        self._client.publish(topic, body, self._qos)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        handle(self.jobs, self._processor, message.payload, self._publish, self._topics["results"],
               self._topics["errors"])

    async def start(self, timeout: float) -> None:
        """Connect, subscribe in ``on_connect``, wait for the SUBACK (off the event loop)."""
        subscribed = threading.Event()
        self._client.on_connect = lambda client, *_: client.subscribe(self._topics["jobs"], self._qos)
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.connect(self._endpoint.host, self._endpoint.port, keepalive=60)
        self._client.loop_start()
        if not await asyncio.get_running_loop().run_in_executor(None, subscribed.wait, timeout):
            raise RuntimeError("paho peer: no SUBACK")

    async def stop(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        await asyncio.get_running_loop().run_in_executor(None, self._client.loop_stop)


PEERS: Dict[str, Callable[..., Peer]] = {"gmqtt": GmqttPeer, "paho": PahoPeer}
