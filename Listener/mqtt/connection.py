"""One broker connection, and the one shape the listener sees of whatever client makes it.

The listener talks to a client through a :class:`ClientAdapter`: :class:`AmqttAdapter` for the amqtt
client it creates itself, :class:`ForeignClientAdapter` for one a user or a test assigned to
``listener.client`` (a mock, or :mod:`Listener.testing`'s in-memory client). :class:`ClientSlot` holds
the current client and wraps it once. :class:`BrokerConnection` is one connection: ``async with connection:``
connects and subscribes, exiting disconnects; it hands out messages and owns the liveness ping. (Not amqtt's
``Session``, which is the MQTT session state amqtt keeps inside its client.)
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any, Awaitable, Callable, List, Optional, Protocol, Sequence, Tuple, Type

from ..config.settings import EventListenerConfig
from ..core.run_state import RunState
from ..processing.containment import cancel
from .client import (DEFAULT_CONNECT_TIMEOUT, AmqttClient, BrokerRefusedConnection, connection_error, endpoint_label,
                     new_client, open_connection)
from .delivery_queue import Ticket
from .share_probe import verify_share_group

__all__ = ["AmqttAdapter", "BrokerConnection", "ClientAdapter", "ClientSlot", "ForeignClientAdapter", "adapt"]

logger = logging.getLogger("Listener.session")
#: The stalled-connection warning keeps the logger it had when the facade logged it (users filter on it).
_stall_logger = logging.getLogger("Listener.event_listener")

SUBSCRIBE_TIMEOUT = 10.0
DISCONNECT_TIMEOUT = 5.0
_YIELD_EVERY = 64  # messages taken without waiting once, then the consumer lets the loop run other tasks
_REFUSED = 0x80


class ClientAdapter(Protocol):
    """What a connection and the run loop need from a client."""

    #: The client itself (what ``listener.client`` returns).
    client: Any
    #: Whether the listener created it (then a dead connection is watched for, and replaced).
    owned: bool

    async def connect(self, config: EventListenerConfig, timeout: float) -> None:
        """Open the connection (``ConnectionError`` naming host and port, never a secret)."""

    async def subscribe(self, filters: Sequence[Tuple[str, int]]) -> Any:
        """Subscribe to every filter in one SUBSCRIBE; returns the granted QoS codes when known."""

    async def verify_share_group(self, group: str, client_id: str, endpoint: str) -> None:
        """Check that the broker applies ``$share/<group>/`` (``SharedSubscriptionUnsupported`` when it does not)."""

    async def disconnect(self) -> None:
        """Close the connection cleanly, when there is one."""

    def is_connected(self) -> bool:
        """Whether publishing can work now."""

    @property
    def closed(self) -> bool:
        """True once the connection is known to have ended."""

    async def next_message(self) -> Any:
        """The next message (``.topic``, ``.data``), or None once the connection ended or the intake closed
        and nothing that was received is left."""

    def close_intake(self) -> None:
        """Take nothing more from the broker; what was received is still handed out."""

    async def wait_closed(self) -> None:
        """Return when the connection ends (never, when the client cannot tell)."""

    async def watch_liveness(self, period: float, label: str) -> None:
        """Ping, and drop a connection from which nothing arrived for ``2 * period`` seconds."""

    @property
    def queued(self) -> int:
        """Messages received (and acknowledged) but not handed out yet."""

    def peek(self, count: int) -> List[Any]:
        """The next ``count`` messages at most that :meth:`next_message` would hand out, oldest first, left where
        they are (none, when the client cannot tell)."""

    def drop_queued(self) -> List[Any]:
        """Forget the messages not handed out yet (stopping); returns them."""

    @property
    def holds_acks(self) -> bool:
        """Whether a queued QoS 1/2 message is still unacknowledged (its PUBACK / PUBREC held back until
        its job settles), so that one dropped is redelivered; False when queued means acknowledged."""

    def ticket(self, message: Any) -> Optional[Ticket]:
        """The held-back acknowledgement of a message just handed out (None when there is none to hold)."""

    def on_drop(self, callback: Callable[[], None]) -> None:
        """Have ``callback`` called for each QoS 0 message dropped because the intake is full."""

    def hold_acks_until(self, barrier: Callable[[], Awaitable[None]]) -> None:
        """Await ``barrier`` (a durable job store's ``durable()``) before releasing held acknowledgements."""

    async def acks_released(self) -> None:
        """Return once the acknowledgements waiting for that barrier went out to the client."""


class _Adapter:
    """What both adapters do the same way: connect and subscribe (a new connection reopens the intake)."""

    client: Any
    _intake_closed = False

    async def connect(self, config: EventListenerConfig, timeout: float) -> None:
        self._intake_closed = False
        await open_connection(config, self.client, timeout, config.cleansession)

    async def subscribe(self, filters: Sequence[Tuple[str, int]]) -> Any:
        return await self.client.subscribe(list(filters))


class AmqttAdapter(_Adapter):
    """The listener's own amqtt client: a bounded delivery queue read without a task per message."""

    owned = True

    def __init__(self, client: AmqttClient) -> None:
        self.client = client
        client.on_wakeup = self._wake
        self._arrival: Optional["asyncio.Future[None]"] = None
        self._lost: Optional["asyncio.Future[None]"] = None
        self._intake_closed = False
        self._taken_in_a_row = 0

    def _wake(self) -> None:
        arrival = self._arrival
        if arrival is not None and not arrival.done():
            arrival.set_result(None)

    async def disconnect(self) -> None:
        if self.client.is_connected():
            await self.client.disconnect()

    def is_connected(self) -> bool:
        return bool(self.client.is_connected())

    async def verify_share_group(self, group: str, client_id: str, endpoint: str) -> None:
        await verify_share_group(self.client, group, client_id, endpoint)

    @property
    def closed(self) -> bool:
        return bool(self.client.connection_closed)

    async def next_message(self) -> Any:
        client = self.client
        self._taken_in_a_row += 1
        if self._taken_in_a_row >= _YIELD_EVERY:
            # A backlog of jobs that never wait would hold the loop: let the reader, the pings and the probes run.
            self._taken_in_a_row = 0
            await asyncio.sleep(0)
        while True:
            if client.connection_closed and not self._intake_closed:
                return None  # what is queued is taken over by the next connection
            message = client.take_message()
            if message is not None:
                return message
            if self._intake_closed or client.connection_closed:
                return None
            self._taken_in_a_row = 0
            await self._message_or_loss()

    async def _message_or_loss(self) -> None:
        """Wait until a message arrives, the connection ends, or the intake closes (FIRST_COMPLETED).

        All three resolve the one ``_arrival`` future: the watch on the connection's end is made once per
        connection and wakes it from a done callback. A fixed-rate stream waits once per message, so
        this wait is kept to one future and one wake-up (``asyncio.wait`` would add a waiter, two
        callbacks and a second loop iteration every time).
        """
        lost = self._lost
        if lost is None or lost.done():
            self._lost = lost = asyncio.ensure_future(self.client.wait_closed())
            lost.add_done_callback(self._on_lost)
        self._arrival = arrival = asyncio.get_running_loop().create_future()
        try:
            await arrival
        finally:
            self._arrival = None

    def _on_lost(self, lost: "asyncio.Future[None]") -> None:
        if not lost.cancelled():
            lost.exception()  # retrieved: a failed watch only means "look again", as asyncio.wait treated it
        self._wake()

    def close_intake(self) -> None:
        self._intake_closed = True
        self.client.close_intake()
        self._wake()

    async def wait_closed(self) -> None:
        await self.client.wait_closed()

    async def watch_liveness(self, period: float, label: str) -> None:
        if await self.client.watch_liveness(period, label):
            self._wake()

    @property
    def queued(self) -> int:
        return int(self.client.queued_messages)

    def peek(self, count: int) -> List[Any]:
        return list(self.client.peek_messages(count))

    def drop_queued(self) -> List[Any]:
        return list(self.client.drop_queued_messages())

    @property
    def holds_acks(self) -> bool:
        return bool(self.client.hold_acks)

    def ticket(self, message: Any) -> Optional[Ticket]:
        ticket: Optional[Ticket] = self.client.ticket(message)
        return ticket

    def on_drop(self, callback: Callable[[], None]) -> None:
        self.client.on_drop = callback

    def hold_acks_until(self, barrier: Callable[[], Awaitable[None]]) -> None:
        self.client.hold_acks_until(barrier)

    async def acks_released(self) -> None:
        await self.client.acks_released()

    def release(self) -> None:
        """Stop watching for the end of the connection (it is over)."""
        if self._lost is not None and not self._lost.done():
            self._lost.cancel()


class ForeignClientAdapter(_Adapter):
    """A client the listener did not create: any object with amqtt's ``connect``, ``subscribe``,
    ``publish``, ``deliver_message`` and ``disconnect`` coroutines. It is taken as connected."""

    owned = False

    def __init__(self, client: Any) -> None:
        self.client = client
        self._pending: Optional["asyncio.Future[Any]"] = None
        self._intake_closed = False

    async def disconnect(self) -> None:
        await self.client.disconnect()

    def is_connected(self) -> bool:
        return self.client is not None

    async def verify_share_group(self, group: str, client_id: str, endpoint: str) -> None:
        return None  # a mock or an in-memory client: it decides what a share group does

    @property
    def closed(self) -> bool:
        return False

    async def next_message(self) -> Any:
        """``deliver_message()``, cancelled by :meth:`close_intake`; None when it fails or gives None."""
        if self._intake_closed:
            return None
        delivery = asyncio.ensure_future(self.client.deliver_message())
        self._pending = delivery
        try:
            await asyncio.wait({delivery})
        finally:
            self._pending = None
            if not delivery.done():
                delivery.cancel()
        if delivery.cancelled():
            return None
        error = delivery.exception()
        if error is not None:  # amqtt raises assorted errors once the session is gone
            logger.debug("deliver_message failed: %r", error)
            return None
        return delivery.result()

    def close_intake(self) -> None:
        self._intake_closed = True
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()

    async def wait_closed(self) -> None:
        await asyncio.get_running_loop().create_future()  # the end shows as deliver_message() giving None

    async def watch_liveness(self, period: float, label: str) -> None:
        return None

    @property
    def queued(self) -> int:
        return 0

    def peek(self, count: int) -> List[Any]:
        return []

    def drop_queued(self) -> List[Any]:
        return []

    @property
    def holds_acks(self) -> bool:
        return False

    def ticket(self, message: Any) -> Optional[Ticket]:
        return None  # a client the listener did not create acknowledges on its own terms

    def on_drop(self, callback: Callable[[], None]) -> None:
        return None

    def hold_acks_until(self, barrier: Callable[[], Awaitable[None]]) -> None:
        return None

    async def acks_released(self) -> None:
        return None

    def release(self) -> None:
        return None


def adapt(client: Any) -> "AmqttAdapter | ForeignClientAdapter":
    """Wrap ``client`` in the adapter that fits it (the one place that asks what the client is)."""
    return AmqttAdapter(client) if isinstance(client, AmqttClient) else ForeignClientAdapter(client)


class ClientSlot:
    """``listener.client``: the amqtt client the listener creates (on first use), or one assigned to it.

    ``run_state`` tells whether ``run()`` serves the connection: a connection of the listener's own client
    is then watched for liveness and, when a publication stalls on it, dropped to be opened again.
    """

    def __init__(self, config: EventListenerConfig, run_state: RunState) -> None:
        self._config = config
        self._run = run_state
        self._client: Any = None
        self._adapter: "Optional[AmqttAdapter | ForeignClientAdapter]" = None
        self.owned = True

    @property
    def client(self) -> Any:
        """The current client, created when there is none."""
        if self._client is None:
            self._client = new_client(self._config)
        return self._client

    @client.setter
    def client(self, value: Any) -> None:
        self._client = value
        self._adapter = None
        self.owned = value is None

    @property
    def adapter(self) -> "AmqttAdapter | ForeignClientAdapter":
        """The adapter of the current client (made once per client)."""
        client = self.client
        adapter = self._adapter
        if adapter is None or adapter.client is not client:
            adapter = self._adapter = adapt(client)
        return adapter

    @property
    def current(self) -> "Optional[AmqttAdapter | ForeignClientAdapter]":
        """The adapter of the current client, without creating one."""
        return self.adapter if self._client is not None else None

    def is_connected(self) -> bool:
        """Whether publishing can work now (a client assigned by the user, e.g. a mock, is taken as connected)."""
        client = self._client
        if not self.owned:
            return client is not None
        return client is not None and bool(client.is_connected())

    def watched(self) -> bool:
        """Whether ``run()`` serves a connection of the listener's own client (not one a user assigned)."""
        return self.owned and self._run.active

    def drop_stalled(self, waited: float) -> bool:
        """Drop the connection a QoS 1/2 publication got no acknowledgement on for ``waited`` seconds, so that
        the run loop reconnects and the publication goes out again; only a watched connection that the
        listener reconnects (``auto_reconnect``). False when the connection stays."""
        if not (self.watched() and self._config.auto_reconnect):
            return False
        if self.client.drop_connection():  # else dropped already, for another publication
            _stall_logger.warning("No acknowledgement from MQTT broker at %s within %g s: dropping the connection, "
                                  "to send what it did not acknowledge again on the next one",
                                  endpoint_label(self._config), waited)
        return True

    def for_new_connection(self) -> "AmqttAdapter | ForeignClientAdapter":
        """The adapter to open a connection with: a fresh amqtt client when the previous connection ended
        (a used one can hang on publish), taking over what that connection received."""
        previous = self._client
        if self.owned and previous is not None and previous.connection_closed:
            self._client = None
            fresh = self.client
            if isinstance(previous, AmqttClient) and isinstance(fresh, AmqttClient):
                fresh.adopt_deliveries(previous)
        return self.adapter


async def connect(adapter: ClientAdapter, config: EventListenerConfig, endpoint: str) -> None:
    """Open the MQTT connection (raises ConnectionError naming host and port, never a secret).

    The failure is raised, not logged: the run loop reports it once per run of identical failures.
    """
    try:
        await adapter.connect(config, float(config.connect_timeout or DEFAULT_CONNECT_TIMEOUT))
    except ConnectionError as error:
        logger.debug("%s", error)
        raise
    logger.info("Connected to MQTT broker at %s", endpoint)


async def subscribe(adapter: ClientAdapter, config: EventListenerConfig, endpoint: str,
                    filters: Sequence[Tuple[str, int]]) -> None:
    """Subscribe to every filter in one SUBSCRIBE (``BrokerRefusedConnection`` when the broker refuses one)."""
    try:
        granted = await asyncio.wait_for(adapter.subscribe(filters), SUBSCRIBE_TIMEOUT)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise connection_error(config, exc) from None
    if isinstance(granted, list):
        refused = [f for (f, _), code in zip(filters, granted) if code == _REFUSED]
        if refused:
            raise BrokerRefusedConnection(f"MQTT broker at {endpoint} refused the subscription to {', '.join(refused)}")
    logger.info("Subscribed to %s", ", ".join(f"{f} (qos {q})" for f, q in filters))


async def disconnect(adapter: ClientAdapter) -> None:
    """Close the connection cleanly (the broker then does not send the will message); never raises."""
    try:
        await asyncio.wait_for(adapter.disconnect(), DISCONNECT_TIMEOUT)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.debug("Disconnect failed: %r", exc)


class BrokerConnection:
    """One broker connection: ``async with connection:`` connects and subscribes; exiting disconnects.

    Not reentrant: it is opened once (a new connection is a new ``BrokerConnection``). While open it hands
    out messages (:meth:`next_message`) and, for the listener's own client, pings the broker and drops
    a connection found dead.
    """

    def __init__(self, adapter: "AmqttAdapter | ForeignClientAdapter", config: EventListenerConfig, endpoint: str,
                 filters: Sequence[Tuple[str, int]]) -> None:
        self.adapter = adapter
        self._config = config
        self.endpoint = endpoint
        self._filters = filters
        self._opened = False
        self._liveness: Optional["asyncio.Task[None]"] = None

    async def open(self) -> "BrokerConnection":
        """Connect and subscribe, check that a ``share_group`` is applied; start the liveness ping (the
        listener's own client only)."""
        if self._opened:
            raise RuntimeError("A BrokerConnection is opened once; make a new one for a new connection")
        self._opened = True
        await connect(self.adapter, self._config, self.endpoint)
        await subscribe(self.adapter, self._config, self.endpoint, self._filters)
        group = self._config.share_group
        if group is not None:
            # Every connection, not only the first: a reconnect may land on another broker (a failover).
            try:
                await self.adapter.verify_share_group(group, self._config.client_id, self.endpoint)
            except Exception:
                await disconnect(self.adapter)  # a retry starts on a fresh connection
                raise
        if self.adapter.owned:
            self._liveness = asyncio.create_task(self.adapter.watch_liveness(float(self._config.keep_alive), self.endpoint),
                                                 name=f"listener[{self._config.client_id}].liveness")
        return self

    async def close(self, *, disconnect_client: bool = True) -> None:
        """Stop the liveness ping, then disconnect (skipped with ``disconnect_client=False``: the connection was lost)."""
        liveness, self._liveness = self._liveness, None
        if liveness is not None and not liveness.done():
            cancel(liveness)
            await asyncio.wait({liveness})
        self.adapter.release()
        if disconnect_client:
            await disconnect(self.adapter)

    async def __aenter__(self) -> "BrokerConnection":
        return await self.open()

    async def __aexit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                        tb: Optional[TracebackType]) -> None:
        await self.close()

    async def next_message(self) -> Any:
        """The next message, or None when the connection ended (or the intake closed) and none is left."""
        return await self.adapter.next_message()

    def ticket(self, message: Any) -> Optional[Ticket]:
        """The held-back acknowledgement of ``message`` (``ack_policy = "after_processing"``), or None."""
        return self.adapter.ticket(message)

    def peek(self, count: int) -> List[Any]:
        """The next ``count`` messages at most that :meth:`next_message` would hand out, left where they are."""
        return self.adapter.peek(count)

    async def wait_closed(self) -> None:
        """Return when the connection ends."""
        await self.adapter.wait_closed()
