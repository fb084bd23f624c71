"""Reading MQTT packets off a socket, for tests that play the broker."""

from __future__ import annotations

import asyncio


async def read_packet(reader: asyncio.StreamReader) -> bytes:
    """One MQTT packet: fixed header byte, remaining length, body."""
    head = await reader.readexactly(1)
    length, shift, encoded = 0, 0, b""
    while True:
        byte = await reader.readexactly(1)
        encoded += byte
        length |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            break
    return head + encoded + await reader.readexactly(length)
