"""The MQTT 3.1.1 packets the listener reads and writes itself, as bytes.

Only the ones every message crosses: PUBLISH at QoS 0 and 1 (§3.3) and PUBACK (§3.4). Everything
else (CONNECT, SUBSCRIBE, pings, QoS 2) goes through amqtt's packet classes.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

__all__ = ["MalformedPacket", "PUBACK", "PUBLISH", "Publish", "parse_publish", "puback_packet", "publish_packet",
           "split_packet"]

PUBLISH = 3
PUBACK = 4
#: Four bytes of remaining length at most (§2.2.3): 256 MiB.
_MAX_LENGTH_BYTES = 4


class MalformedPacket(ValueError):
    """The broker sent bytes that are not an MQTT 3.1.1 packet."""


class Publish(NamedTuple):
    """An incoming PUBLISH packet, decoded."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: Optional[int]


def publish_packet(topic: str, payload: bytes, qos: int, retain: bool, packet_id: int = 0) -> bytes:
    """A PUBLISH packet at QoS 0 or 1: fixed header, topic name, packet id (QoS 1), payload.

    The topic is one the publisher has already checked (``topics.topic_name_error``): at most 65,535
    bytes of UTF-8.
    """
    name = topic.encode("utf-8")
    remaining = 2 + len(name) + len(payload) + (2 if qos else 0)
    header = bytearray((0x30 | (qos << 1) | (1 if retain else 0),))
    while True:  # the remaining length, 7 bits per byte, least significant first
        remaining, digit = divmod(remaining, 128)
        header.append(digit | 0x80 if remaining else digit)
        if not remaining:
            break
    header += len(name).to_bytes(2, "big")
    header += name
    if qos:
        header += packet_id.to_bytes(2, "big")
    return bytes(header) + payload


def puback_packet(packet_id: int) -> bytes:
    """The PUBACK acknowledging the QoS 1 PUBLISH ``packet_id``."""
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


def split_packet(buffer: bytearray, start: int) -> Optional[tuple[int, int]]:
    """Where the packet starting at ``start`` has its body: ``(body start, body end)``, or None when the
    buffer does not hold all of it yet.

    Raises:
        MalformedPacket: the remaining length takes more than four bytes.
    """
    end = len(buffer)
    position, length, shift = start + 1, 0, 0
    while True:
        if position >= end:
            return None
        digit = buffer[position]
        position += 1
        length |= (digit & 0x7F) << shift
        if not digit & 0x80:
            break
        shift += 7
        if shift >= 7 * _MAX_LENGTH_BYTES:
            raise MalformedPacket("remaining length longer than four bytes")
    if end - position < length:
        return None
    return position, position + length


def parse_publish(flags: int, body: bytes) -> Publish:
    """Decode a PUBLISH packet from its fixed header's flags (low four bits) and its body.

    Raises:
        MalformedPacket: QoS 3, a body too short for its topic and packet id, or a topic not UTF-8.
    """
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    size = len(body)
    if size < 2:
        raise MalformedPacket("PUBLISH without a topic name")
    topic_end = 2 + ((body[0] << 8) | body[1])
    payload_start = topic_end + (2 if qos else 0)
    if payload_start > size:
        raise MalformedPacket("PUBLISH shorter than its topic name and packet id")
    try:
        topic = body[2:topic_end].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("PUBLISH topic name is not UTF-8") from None
    packet_id = ((body[topic_end] << 8) | body[topic_end + 1]) if qos else None
    return Publish(topic, body[payload_start:], qos, bool(flags & 0x01), bool(flags & 0x08), packet_id)
