"""The receiving side of QoS 2 (MQTT 3.1.1 §4.3.3, "method B"): which messages the listener holds.

A QoS 2 message becomes the receiver's when it answers PUBREC; from then on the broker only resends its
PUBREL, and the packet id stays taken until that PUBREL arrives. So the listener answers PUBREC only when
the delivery queue releases the message (its job settled, with ``ack_policy = "after_processing"``; recorded,
with ``"after_recording"``), and
until the PUBREL, a PUBLISH with the same packet id is the same message: the broker resends it, DUP set,
when the connection ended before the PUBREC reached it. Such a resend is never a second job: its PUBREC
goes out once the first copy is released (at once, if it already was), on the connection it came on.

:class:`QoS2Receipts` lives as long as the delivery queue, across reconnects, because the broker keeps
packet ids across them when it keeps the session. When a CONNACK says it kept none, the ids start afresh
and the receipts are forgotten (their jobs still finish; their PUBRECs go nowhere).
"""

from __future__ import annotations

from typing import Callable, Dict

from .packets import pubrec_packet

__all__ = ["QoS2Receipts", "Receipt"]

Write = Callable[[bytes], None]


class Receipt:
    """One QoS 2 message received and not yet released by the broker's PUBREL."""

    __slots__ = ("packet_id", "released", "write")

    def __init__(self, packet_id: int, write: Write) -> None:
        self.packet_id = packet_id
        #: Writes on the connection the message last came on (a resend moves it).
        self.write = write
        #: True once PUBREC may go out: the listener answers for the message from then on.
        self.released = False

    def release(self) -> None:
        """Answer PUBREC (the delivery queue calls this when the message's acknowledgement may go out)."""
        self.released = True
        self.write(pubrec_packet(self.packet_id))


class QoS2Receipts:
    """The QoS 2 messages received whose PUBREL has not arrived, by packet id."""

    def __init__(self) -> None:
        self._held: Dict[int, Receipt] = {}
        #: Resends of a message already held (counted; never a second job).
        self.resends = 0

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, packet_id: object) -> bool:
        return packet_id in self._held

    def arrived(self, packet_id: int, write: Write) -> "Receipt | None":
        """A new receipt for a message seen for the first time; None for a resend of one already held, whose
        PUBREC is written with ``write`` once it is released (now, if it already was)."""
        held = self._held.get(packet_id)
        if held is not None:
            self.resends += 1
            held.write = write
            if held.released:
                held.release()
            return None
        receipt = self._held[packet_id] = Receipt(packet_id, write)
        return receipt

    def abandon(self, receipt: Receipt) -> None:
        """Forget a message that was never queued (its connection ended first): its resend is a first arrival."""
        if self._held.get(receipt.packet_id) is receipt:
            del self._held[receipt.packet_id]

    def completed(self, packet_id: int) -> None:
        """The broker's PUBREL: the flow is over and the packet id free (unknown ids are fine)."""
        self._held.pop(packet_id, None)

    def forget_all(self) -> None:
        """The broker kept no session: every packet id starts afresh."""
        self._held.clear()
