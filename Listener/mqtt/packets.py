"""The MQTT 3.1.1 packets the listener reads and writes itself, as bytes.

Only the ones every message crosses: PUBLISH (§3.3) and its acknowledgements PUBACK, PUBREC, PUBREL and
PUBCOMP (§3.4–3.7). Everything else (CONNECT, SUBSCRIBE, pings) goes through amqtt's packet classes.

Brokers speaking MQTT 5 to a 3.1.1 client (Mosquitto 2.0 among them) may add a reason code after the packet
id of an acknowledgement; :func:`parse_ack` reads it, because a code of 0x80 or more means the publication
was *not* taken (0x97: the broker's quota of QoS 2 messages in flight from this client is used up).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from ..errors import ListenerError

__all__ = ["ConnectionEnded", "FAILURE", "MAX_BODY", "MalformedPacket", "OversizePayload", "PINGRESP", "PUBACK",
           "PUBCOMP", "PUBLISH", "PUBREC", "PUBREL", "PublicationRefused", "PublishHead", "REASONS", "body_bound_error",
           "parse_ack", "parse_publish_head", "puback_packet", "pubcomp_packet", "publish_packet", "pubrec_packet",
           "pubrel_packet", "reason_text", "split_packet"]

PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
PINGRESP = 13
#: The largest body (remaining length) each packet type a broker sends a client may have; a PUBLISH is bounded
#: by ``max_payload_bytes`` instead (its payload is discarded as it arrives). MQTT 3.1.1 fixes them at 2 bytes
#: (a CONNACK, an acknowledgement, an UNSUBACK) or 0 (PINGRESP); the slack takes what brokers speaking MQTT 5
#: add (a reason code, properties). A SUBACK has one byte per filter of the SUBSCRIBE. A type a broker never
#: sends a client (CONNECT, SUBSCRIBE, PINGREQ...) gets the smallest bound: its body is never read anyway.
MAX_BODY = {
    2: 256, 4: 256, 5: 256, 6: 256, 7: 256,  # CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP
    9: 2 + 65_535, 11: 256, 13: 0, 14: 256,  # SUBACK, UNSUBACK, PINGRESP, DISCONNECT (MQTT 5)
}
#: The bound of a type :data:`MAX_BODY` does not list.
_OTHER_BODY = 256
_NAMES = {2: "CONNACK", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL", 7: "PUBCOMP", 9: "SUBACK", 11: "UNSUBACK",
          13: "PINGRESP", 14: "DISCONNECT"}
#: The lowest reason code that reports a failure (MQTT 5 §2.4).
FAILURE = 0x80
#: What the failure codes a broker may put in a PUBACK or PUBREC mean (MQTT 5 §3.4.2.1).
REASONS = {
    0x80: "unspecified error", 0x83: "implementation specific error", 0x87: "not authorized",
    0x90: "topic name invalid", 0x91: "packet identifier in use", 0x92: "packet identifier not found",
    0x97: "quota exceeded", 0x99: "payload format invalid",
}
#: Four bytes of remaining length at most (§2.2.3): 256 MiB.
_MAX_LENGTH_BYTES = 4


class MalformedPacket(ListenerError, ValueError):
    """The broker sent bytes that are not an MQTT 3.1.1 packet."""


class ConnectionEnded(ListenerError, ConnectionError):
    """The connection a publication went out on ended before the broker acknowledged it (it may go out again on the
    next one). A failure rather than a cancellation, so that no Python version takes it for the caller's."""


class PublicationRefused(ListenerError):
    """The broker answered a publication with a failure reason code: it did not take the message."""

    def __init__(self, reason_code: int, packet: str) -> None:
        super().__init__(f"refused by the broker in its {packet}: {reason_text(reason_code)}")
        self.reason_code = reason_code


def publish_packet(topic: str, payload: bytes, qos: int, retain: bool, packet_id: int = 0) -> bytes:
    """A PUBLISH packet: fixed header, topic name, packet id (QoS 1 and 2), payload.

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


def pubrec_packet(packet_id: int) -> bytes:
    """The PUBREC by which a receiver takes over the QoS 2 PUBLISH ``packet_id``."""
    return b"\x50\x02" + packet_id.to_bytes(2, "big")


def pubrel_packet(packet_id: int) -> bytes:
    """The PUBREL that releases the QoS 2 publication ``packet_id`` (its fixed header's flags are 0010)."""
    return b"\x62\x02" + packet_id.to_bytes(2, "big")


def pubcomp_packet(packet_id: int) -> bytes:
    """The PUBCOMP that ends the QoS 2 flow ``packet_id``."""
    return b"\x70\x02" + packet_id.to_bytes(2, "big")


def parse_ack(buffer: bytearray, start: int, end: int) -> tuple[int, int]:
    """``(packet id, reason code)`` of a PUBACK, PUBREC, PUBREL or PUBCOMP whose body is ``buffer[start:end]``;
    the reason code is 0 (success) when the broker sent none, as MQTT 3.1.1 brokers never do.

    Raises:
        MalformedPacket: a body shorter than a packet id.
    """
    if end - start < 2:
        raise MalformedPacket("acknowledgement without a packet id")
    packet_id = (buffer[start] << 8) | buffer[start + 1]
    return packet_id, buffer[start + 2] if end - start > 2 else 0


def body_bound_error(kind: int, length: int) -> Optional[str]:
    """Why a packet of type ``kind`` (not PUBLISH) declaring a body of ``length`` bytes is refused before its body is
    read, or None when it is within :data:`MAX_BODY`."""
    bound = MAX_BODY.get(kind, _OTHER_BODY)
    if length <= bound:
        return None
    name = _NAMES.get(kind, f"packet of type {kind}")
    return f"a {name} declaring {length} bytes, more than the {bound} it may have"


def reason_text(code: int) -> str:
    """``"quota exceeded (0x97)"``: a reason code as a person reads it."""
    return f"{REASONS.get(code, 'error')} (0x{code:02X})"


def split_packet(buffer: bytearray, start: int) -> Optional[tuple[int, int]]:
    """Where the body of the packet starting at ``start`` begins and ends: ``(body start, body end)``, once
    its fixed header is in the buffer (the body may not be, yet); None while the fixed header is not.

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
    return position, position + length


class PublishHead(NamedTuple):
    """What precedes the payload of a PUBLISH packet, and where its payload starts."""

    topic: str
    qos: int
    retain: bool
    dup: bool
    packet_id: Optional[int]
    payload_start: int


def parse_publish_head(flags: int, buffer: bytearray, start: int, end: int) -> Optional[PublishHead]:
    """Decode the topic and packet id of a PUBLISH packet whose body starts at ``start`` and ends at ``end``
    (the fixed header's flags are its low four bits); None while the buffer does not hold them yet.

    Raises:
        MalformedPacket: QoS 3, a body too short for its topic and packet id, or a topic not UTF-8.
    """
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    if end - start < 2:
        raise MalformedPacket("PUBLISH without a topic name")
    available = len(buffer)
    if available < start + 2:
        return None
    topic_end = start + 2 + ((buffer[start] << 8) | buffer[start + 1])
    payload_start = topic_end + (2 if qos else 0)
    if payload_start > end:
        raise MalformedPacket("PUBLISH shorter than its topic name and packet id")
    if available < payload_start:
        return None
    try:
        topic = buffer[start + 2:topic_end].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("PUBLISH topic name is not UTF-8") from None
    packet_id = ((buffer[topic_end] << 8) | buffer[topic_end + 1]) if qos else None
    return PublishHead(topic, qos, bool(flags & 0x01), bool(flags & 0x08), packet_id, payload_start)


class OversizePayload(bytes):
    """Stands for the payload of a message larger than the listener accepts, which was never kept in memory:
    empty, but ``len()`` is the size it had (what the size check reports)."""

    size: int

    def __new__(cls, size: int) -> "OversizePayload":
        payload = super().__new__(cls, b"")
        payload.size = size
        return payload

    def __len__(self) -> int:
        return self.size
