"""Each broker's :class:`~tests.support.interop_brokers.BrokerTraits` checked against the running broker, with raw
packets and paho clients (no listener), so the table in docs/testing.md cannot drift from what the brokers do.

Will messages, retained results and sessions kept across a restart are checked through the listener itself
(test_will.py, test_jobs_and_results.py, test_restarts.py).
"""

from __future__ import annotations

import socket
import uuid
from typing import Callable, Tuple

import pytest

from tests.support.brokers import MqttProbe
from tests.support.interop_brokers import InteropBroker

pytestmark = pytest.mark.timeout(60)

PUBACK, PUBREC = 0x40, 0x50


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _packet(first: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([first, len(body)]) + body


def _connected(broker: InteropBroker) -> socket.socket:
    """A raw MQTT 3.1.1 connection (clean session) that got its CONNACK."""
    sock = socket.create_connection((broker.host, broker.port), timeout=5)
    sock.sendall(_packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c" + _string("traits-" + uuid.uuid4().hex[:8])))
    assert sock.recv(4)[:1] == b"\x20"
    return sock


def qos2_answers(broker: InteropBroker, topic: str) -> Tuple[int, int]:
    """The QoS granted to a QoS 2 subscription, and the packet type answering a QoS 2 PUBLISH."""
    with _connected(broker) as sock:
        sock.sendall(_packet(0x82, b"\x00\x01" + _string(topic) + b"\x02"))
        suback = sock.recv(5)
        assert suback[:1] == b"\x90", suback
        sock.sendall(_packet(0x34, _string(topic + "/x") + b"\x00\x07" + b"qos2"))
        answer = sock.recv(4)
        sock.sendall(_packet(0xE0, b""))
        return suback[4], answer[0] & 0xF0


def test_qos2_is_granted_and_answered_with_pubrec_only_where_the_broker_does_qos2(interop_broker: InteropBroker,
                                                                                  unique_topic: str) -> None:
    granted, answer = qos2_answers(interop_broker, unique_topic)
    if interop_broker.traits.qos2:
        assert (granted, answer) == (2, PUBREC)
    else:  # RabbitMQ 3.10: QoS 1 for the subscription, and a QoS 2 PUBLISH acknowledged with PUBACK
        assert (granted, answer) == (1, PUBACK)


def test_delivered_qos_is_the_lower_of_the_two_unless_the_broker_upgrades(
        interop_broker: InteropBroker, probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    watcher = probe(interop_broker.endpoint, f"{unique_topic}/#", qos=2)
    sender = probe(interop_broker.endpoint)
    for qos in (0, 1, 2):
        sender.publish(f"{unique_topic}/{qos}", b"x", qos=qos)
    messages = watcher.wait_for(3, 10, None)
    granted = 2 if interop_broker.traits.qos2 else 1
    expected = [granted] * 3 if interop_broker.traits.upgrades_qos else [min(qos, granted) for qos in (0, 1, 2)]
    assert [message.qos for message in sorted(messages, key=lambda m: m.topic)] == expected


def test_shared_subscriptions_split_the_messages_or_deliver_none(interop_broker: InteropBroker,
                                                                 probe: Callable[..., MqttProbe],
                                                                 unique_topic: str) -> None:
    shared = f"$share/g-{uuid.uuid4().hex[:6]}/{unique_topic}/jobs"
    members = [probe(interop_broker.endpoint, shared, f"{unique_topic}/fence", qos=1) for _ in range(2)]
    sender = probe(interop_broker.endpoint)
    for index in range(20):
        sender.publish(f"{unique_topic}/jobs", f"m-{index}", qos=1)
    sender.publish(f"{unique_topic}/fence", b"fence", qos=1)  # each member gets it after whatever came before
    for member in members:
        member.wait_for(1, 10, f"{unique_topic}/fence")
    counts = [len(member.messages(f"{unique_topic}/jobs")) for member in members]
    if interop_broker.traits.shared_subscriptions:
        assert sum(counts) == 20 and min(counts) > 0, counts
    else:  # the SUBACK grants it, as a filter no topic can match: nothing ever arrives
        assert counts == [0, 0]


def test_retained_messages_on_connect_only_where_the_broker_sends_them(
        interop_broker: InteropBroker, probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    kept, fence = f"{unique_topic}/kept", f"{unique_topic}/fence"
    probe(interop_broker.endpoint, kept, qos=1)  # some client subscribed to the retained message's topic
    probe(interop_broker.endpoint).publish(kept, b"kept", qos=1, retain=True)
    newcomer = probe(interop_broker.endpoint, fence, qos=1)  # subscribes to the fence only
    probe(interop_broker.endpoint).publish(fence, b"fence", qos=1)
    newcomer.wait_for(1, 10, fence)
    expected = [b"kept"] if interop_broker.traits.retained_on_connect else []
    assert [message.payload for message in newcomer.messages(kept)] == expected
    probe(interop_broker.endpoint).publish(kept, b"", qos=1, retain=True)  # clears it
