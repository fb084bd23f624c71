"""The PUBLISH and PUBACK bytes the listener writes and reads itself, checked against amqtt's packet classes."""

from __future__ import annotations

import asyncio
import pytest
from amqtt.adapters import BufferReader
from amqtt.mqtt.packet import MQTTFixedHeader
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.publish import PublishPacket

from Listener.mqtt.packets import (
    MalformedPacket, OversizePayload, PublishHead, parse_publish_head, puback_packet, publish_packet, split_packet,
)

pytestmark = pytest.mark.unit

CASES = [
    ("a/b", b"x", 0, False, 0), ("t", b"y" * 200, 1, True, 1), ("r" * 300, b"z" * 20_000, 0, False, 0),
    ("é/ü", b"", 1, False, 65_535), ("big", b"p" * 2_097_152, 1, False, 513),
]


@pytest.mark.parametrize("topic, payload, qos, retain, packet_id", CASES)
def test_a_publish_packet_is_the_one_amqtt_builds(topic: str, payload: bytes, qos: int, retain: bool,
                                                  packet_id: int) -> None:
    """Same bytes as amqtt's PublishPacket: the remaining length's 1 to 4 bytes, QoS and retain flags, UTF-8
    topics, the packet id at QoS 1."""
    expected = PublishPacket.build(topic, payload, packet_id if qos else None, False, qos, retain).to_bytes()
    assert publish_packet(topic, payload, qos, retain, packet_id) == expected


@pytest.mark.parametrize("topic, payload, qos, retain, packet_id", CASES)
def test_a_publish_packet_reads_back_as_amqtt_reads_it(topic: str, payload: bytes, qos: int, retain: bool,
                                                       packet_id: int) -> None:
    raw = bytearray(b"junk" + publish_packet(topic, payload, qos, retain, packet_id))
    where = split_packet(raw, 4)
    assert where is not None and where[1] == len(raw)
    head = parse_publish_head(raw[4] & 0x0F, raw, *where)
    assert head is not None
    theirs = _amqtt_reads(bytes(raw[4:]))
    assert (head.topic, bytes(raw[head.payload_start:]), head.qos, head.retain, head.packet_id) == (
        theirs.topic_name, theirs.data, theirs.qos, theirs.retain_flag, theirs.packet_id)
    assert head.packet_id == (packet_id if qos else None) and not head.dup


def _amqtt_reads(raw: bytes) -> PublishPacket:
    async def read() -> PublishPacket:
        reader = BufferReader(raw)
        header = await MQTTFixedHeader.from_stream(reader)
        return await PublishPacket.from_stream(reader, fixed_header=header)
    return asyncio.run(read())


def test_a_puback_packet_is_the_one_amqtt_builds() -> None:
    for packet_id in (1, 300, 65_535):
        assert puback_packet(packet_id) == PubackPacket.build(packet_id).to_bytes()


@pytest.mark.parametrize("cut", [1, 2])
def test_a_fixed_header_not_all_received_yet_is_left_for_later(cut: int) -> None:
    raw = publish_packet("topic/x", b"p" * 200, 1, False, 7)
    assert split_packet(bytearray(raw[:cut]), 0) is None


@pytest.mark.parametrize("cut", [3, 4, 5, 12, 14])
def test_a_publish_head_not_all_received_yet_is_left_for_later(cut: int) -> None:
    """Topic "topic/x" (bytes 5 to 11) and packet id (12 and 13) after a 3-byte fixed header."""
    raw = bytearray(publish_packet("topic/x", b"p" * 200, 1, False, 7))
    where = split_packet(raw[:cut], 0)
    assert where == (3, 3 + 2 + 7 + 2 + 200)
    head = parse_publish_head(raw[0] & 0x0F, raw[:cut], *where)
    assert head == (None if cut < 14 else PublishHead("topic/x", 1, False, False, 7, 14))


def test_a_remaining_length_over_four_bytes_is_malformed() -> None:
    with pytest.raises(MalformedPacket, match="four bytes"):
        split_packet(bytearray(b"\x30\xff\xff\xff\xff\x01"), 0)


@pytest.mark.parametrize("flags, body, reason", [
    (0x06, b"\x00\x01t\x00\x01", "QoS 3"),
    (0x00, b"\x00", "without a topic"),
    (0x02, b"\x00\x05abc", "shorter"),
    (0x02, b"\x00\x01t\x00", "shorter"),
    (0x00, b"\x00\x02\xff\xfe", "not UTF-8"),
])
def test_a_malformed_publish_is_refused_with_the_reason(flags: int, body: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        parse_publish_head(flags, bytearray(body), 0, len(body))


def test_the_dup_flag_is_read() -> None:
    assert parse_publish_head(0x0A, bytearray(b"\x00\x01t\x00\x09data"), 0, 9) == ("t", 1, False, True, 9, 5)


def test_an_oversize_payload_is_empty_but_has_the_size_it_had() -> None:
    payload = OversizePayload(300_000_000)
    assert len(payload) == 300_000_000 and bytes(payload) == b"" and isinstance(payload, bytes)
