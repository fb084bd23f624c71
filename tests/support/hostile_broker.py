"""A small MQTT 3.1.1 "broker" on a loopback socket that speaks just enough to let a client connect and subscribe
(CONNACK, SUBACK, PINGRESP), then sends whatever a test tells it: floods, packets that lie about their size, bytes
that are not MQTT. For tests of what the listener does with a broker (or anything in the middle) gone wrong."""

from __future__ import annotations

import asyncio
from typing import List, Optional

from tests.support.packets import read_packet

__all__ = ["HostileBroker", "remaining_length"]


def remaining_length(length: int) -> bytes:
    """The variable-length encoding of a fixed header's remaining length (MQTT 3.1.1 §2.2.3)."""
    encoded = bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | 0x80 if length else digit)
        if not length:
            return bytes(encoded)


class HostileBroker:
    """Accepts connections: CONNACK to CONNECT, SUBACK (every filter granted its QoS, followed by
    ``after_suback``) to SUBSCRIBE, PINGRESP to PINGREQ; records the other packets; :meth:`send` writes raw bytes
    to the last connection."""

    def __init__(self) -> None:
        self.port = 0
        #: Bytes written in the same write as each SUBACK, right after it.
        self.after_suback = b""
        #: False: a SUBSCRIBE is recorded, never answered.
        self.answers_subscribe = True
        self.received: List[bytes] = []
        #: PINGREQs answered.
        self.pings = 0
        self.subscribed = asyncio.Event()
        self.closed = asyncio.Event()
        self._writers: List[asyncio.StreamWriter] = []
        self._server: Optional[asyncio.AbstractServer] = None

    async def __aenter__(self) -> "HostileBroker":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            await read_packet(reader)  # CONNECT
            writer.write(b"\x20\x02\x00\x00")  # CONNACK: accepted, no session
            while True:
                packet = await read_packet(reader)
                kind = packet[0] >> 4
                if kind == 8 and self.answers_subscribe:  # SUBSCRIBE: packet id, then (filter, QoS) pairs
                    body = _body(packet)
                    granted, position = bytearray(), 2
                    while position < len(body):
                        size = int.from_bytes(body[position:position + 2], "big")
                        position += 2 + size
                        granted.append(body[position])
                        position += 1
                    writer.write(b"\x90" + remaining_length(2 + len(granted)) + body[:2] + bytes(granted)
                                 + self.after_suback)
                    self.subscribed.set()
                elif kind == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                    self.pings += 1
                elif kind == 14:  # DISCONNECT
                    writer.close()
                    return
                else:
                    self.received.append(packet)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()

    async def send(self, data: bytes) -> None:
        """Write ``data`` to the last connection, and wait until the socket took it."""
        writer = self._writers[-1]
        writer.write(data)
        await writer.drain()


def _body(packet: bytes) -> bytes:
    """The body of a whole packet (after its fixed header)."""
    position = 1
    while packet[position] & 0x80:
        position += 1
    return packet[position + 1:]
