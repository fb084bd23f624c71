"""The listener's MQTT client: amqtt's, configured, with credentials, TLS material, liveness and connect errors.

Everything it changes inside amqtt goes through :mod:`Listener.mqtt.amqtt_boundary`. Facts about amqtt 0.12
this module works around (each checked against Mosquitto):
- unknown config keys are rejected, and the connect timeout key is ``connection_timeout``;
- credentials are only taken from the URI, and amqtt logs that URI at DEBUG: we hand the
  credentials to the session directly instead, so no log line ever carries them;
- ``capath`` and ``cadata`` are ignored, so we merge them into one CA bundle file ourselves;
- its packet-logging plugin is on by default and costs CPU for nothing here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Set
from urllib.parse import unquote, urlsplit

# PUBLIC_DEFAULT_PASSWORD: public knowledge, and masking every "test" in a log made topics like
# ``test/results`` and job ids like ``test-1`` unreadable. Still never printed as a field value.
from ..config.settings import PUBLIC_DEFAULT_PASSWORD, EventListenerConfig, http_token
from ..core.deadlines import settle_within
from ..core.redaction import SecretRedactingFilter, redact, split_uri_credentials
from ..errors import ConfigError, ListenerError
from .amqtt_boundary import AmqttClientBase, AmqttHandler, AmqttIncompatible, built_outside_loop, closed_by_peer, refusal_code
from .delivery_queue import DeliveryQueue, Ticket
from .wire_handler import WireHandler

__all__ = [
    "CLOSED_DURING_CONNECT", "AmqttClient", "BrokerRefusedConnection", "build_client_config", "connection_error",
    "create_client", "credentials", "endpoint_label", "new_client", "open_connection", "secrets", "tls_bundle",
]

logger = logging.getLogger("Listener.transport")

DEFAULT_CONNECT_TIMEOUT = 30.0
ABORT_TIMEOUT = 5.0
#: What a connection closed by the broker after CONNECT, without a CONNACK, usually means.
CLOSED_DURING_CONNECT = (
    "the broker closed the connection during CONNECT, without a CONNACK. Likely causes: a password sent "
    "without a user name, an authentication or ACL plugin refusing this client, a client id the broker "
    "refuses, or a listener that expects TLS (then use mqtts:// and cafile); the broker's log says which")
_CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class BrokerRefusedConnection(ListenerError, ConnectionError):
    """The broker answered and said no (bad credentials, not authorised, subscription refused).

    Retrying cannot help, so the listener does not; it is still a ``ConnectionError``.
    """

    def __init__(self, message: str, return_code: Optional[int] = None) -> None:
        super().__init__(message)
        self.return_code = return_code


class AmqttClient(AmqttClientBase):
    """The listener's own client: amqtt's (see :class:`~Listener.mqtt.amqtt_boundary.AmqttClientBase`), with a
    bounded delivery queue read without a task per message, and a watch on the connection's liveness.

    ``delivery_window`` bounds the acknowledged-but-unread messages; with ``hold_acks`` acknowledgements
    wait for :meth:`ticket` to be settled instead, and ``max_pending`` bounds the queue (see
    :mod:`Listener.mqtt.delivery_queue`). ``on_wakeup`` is called whenever a message arrives or the connection ends,
    ``on_drop`` for each QoS 0 message dropped: without an argument for want of room (``max_pending`` messages
    queued and the reader's held bytes full, see :mod:`Listener.mqtt.wire_handler`), with the reason
    (:data:`~Listener.mqtt.wire_handler.DUP_QOS0`) for one dropped for what it is. A QoS 0/1
    message whose payload is over ``max_payload`` bytes is never held in memory (see
    :class:`~Listener.mqtt.wire_handler.WireHandler`).
    """

    def __init__(self, client_id: str, config: Dict[str, Any], username: Optional[str] = None,
                 password: Optional[str] = None, delivery_window: int = 1,
                 on_wakeup: Optional[Callable[[], None]] = None, *, hold_acks: bool = False,
                 max_pending: int = 10_000, max_payload: Optional[int] = None,
                 label: str = "the MQTT broker") -> None:
        self.max_payload = max_payload
        self.label = label
        super().__init__(client_id, config, username, password)
        self.delivery_window = delivery_window
        self.hold_acks = hold_acks
        self.max_pending = max_pending
        self.on_wakeup = on_wakeup
        self.on_drop: Optional[Callable[..., None]] = None
        #: Awaited before acknowledgements held back are released (a durable job store's ``durable()``).
        self.ack_barrier: Optional[Callable[[], Awaitable[None]]] = None
        self._deliveries: Optional[DeliveryQueue] = None
        self.bytes_received = 0
        self._last_traffic = 0.0

    def session_queue(self) -> DeliveryQueue:
        """The delivery queue of every session: made once, kept across connections (and handed on by
        :meth:`adopt_deliveries`)."""
        if self._deliveries is None:
            self._deliveries = DeliveryQueue(self.delivery_window, self._wake, hold_acks=self.hold_acks,
                                             max_pending=self.max_pending, on_drop=self._dropped)
        self._deliveries.barrier = self.ack_barrier
        return self._deliveries

    def packet_hooks(self, handler: AmqttHandler) -> WireHandler:
        """The listener's packet handling for a new connection."""
        return WireHandler(handler, max_payload=self.max_payload, label=self.label, on_drop=self._dropped_for)

    @property
    def wire(self) -> Optional[WireHandler]:
        """The packet handling of the current connection (None before the first connect)."""
        hooks = self.hooks
        return hooks if isinstance(hooks, WireHandler) else None

    def _wake(self, *_: Any) -> None:
        if self.on_wakeup is not None:
            self.on_wakeup()

    def _dropped(self) -> None:
        if self.on_drop is not None:
            self.on_drop()

    def _dropped_for(self, reason: str) -> None:
        if self.on_drop is not None:
            self.on_drop(reason)

    def adopt_deliveries(self, previous: "AmqttClient") -> None:
        """Take over the delivery queue of the client of the previous connection (call before connecting).

        What that connection received and acknowledged is still processed, by the same consumer, while
        this client connects: a reconnect never waits for a backlog to drain, and loses none of it.
        """
        queue = previous._deliveries
        if queue is not None and not queue.closed:
            queue.on_arrival = self._wake
            queue.on_drop = self._dropped
            queue.barrier = self.ack_barrier
            self._deliveries = queue

    def connection_opened(self) -> None:
        """Count the traffic of the new connection, and wake the consumer when it ends."""
        self._count_traffic()
        self.call_when_closed(self._wake)

    def _count_traffic(self) -> None:
        """Note every chunk of bytes the socket delivers (for :meth:`watch_liveness`).

        Wraps the stream's ``feed_data``, which asyncio calls as data arrives: it sees traffic even
        while the reader is still working through a backlog of packets received before it.
        """
        self.note_traffic(0)
        stream = self.socket_reader()
        if stream is None:
            return  # websockets: liveness falls back to the ping alone
        feed = stream.feed_data
        note = self.note_traffic

        def feed_data(data: bytes) -> None:
            note(len(data))
            feed(data)

        stream.feed_data = feed_data  # type: ignore[method-assign, assignment]

    def note_traffic(self, size: int) -> None:
        """Record that ``size`` bytes arrived from the broker just now: the connection is alive."""
        self.bytes_received += size
        self._last_traffic = time.monotonic()

    def take_message(self) -> Any:
        """The next received message (an amqtt ``ApplicationMessage``), or None when none is waiting."""
        return self._deliveries.take() if self._deliveries is not None else None

    def ticket(self, message: Any) -> Optional[Ticket]:
        """The held acknowledgement of a message just taken (None when it is not held back)."""
        return self._deliveries.ticket(message) if self._deliveries is not None else None

    def intercept(self, topic: str) -> "asyncio.Future[Any]":
        """The first QoS 0 message on ``topic``; none on it is queued (see :meth:`DeliveryQueue.intercept`).

        Raises:
            ConnectionError: no connection was opened yet (there is no delivery queue).
        """
        if self._deliveries is None:
            raise ConnectionError("Not connected")
        return self._deliveries.intercept(topic)

    def stop_intercepting(self, topic: str) -> None:
        """Queue messages on ``topic`` again."""
        if self._deliveries is not None:
            self._deliveries.stop_intercepting(topic)

    def hold_acks_until(self, barrier: Optional[Callable[[], Awaitable[None]]]) -> None:
        """Await ``barrier`` before releasing held acknowledgements (see :class:`DeliveryQueue`)."""
        self.ack_barrier = barrier
        if self._deliveries is not None:
            self._deliveries.barrier = barrier

    async def acks_released(self) -> None:
        """Return once the acknowledgements waiting for the barrier are released."""
        if self._deliveries is not None:
            await self._deliveries.released()

    def peek_messages(self, count: int) -> List[Any]:
        """The next ``count`` received messages at most, oldest first, not taken."""
        return self._deliveries.peek(count) if self._deliveries is not None else []

    def drop_queued_messages(self) -> List[Any]:
        """Empty the delivery queue (the listener is stopping); returns the messages dropped."""
        return self._deliveries.drain() if self._deliveries is not None else []

    @property
    def deliveries(self) -> Optional[DeliveryQueue]:
        """The delivery queue (None before the first connection)."""
        return self._deliveries

    @property
    def held_bytes(self) -> int:
        """Bytes received from the broker and held, not processed yet: the queued messages' payloads and topics,
        the messages the reader holds for room in their wire form, and the bytes not parsed or not read yet."""
        queued = self._deliveries.queued_bytes if self._deliveries is not None else 0
        wire = self.wire
        return queued + (wire.held_bytes + wire.unread if wire is not None else 0) + self.unread_socket_bytes()

    @property
    def queued_messages(self) -> int:
        """Messages received (and, for QoS 1/2, acknowledged) but not yet taken."""
        return self._deliveries.qsize() if self._deliveries is not None else 0

    def close_intake(self) -> None:
        """Acknowledge no more messages: what is queued can still be taken, the rest stays with the broker."""
        if self._deliveries is not None:
            self._deliveries.close()

    async def watch_liveness(self, period: float, label: str) -> bool:
        """Ping regularly; drop the connection when nothing at all arrived for ``2 * period`` seconds.

        amqtt never notices a half-open connection (its PINGREQ waits forever), so without this a
        black-holed connection would look healthy indefinitely. Any byte received counts as a sign of
        life, not only the PINGRESP: under a backlog the PINGRESP queues behind thousands of packets,
        which are themselves proof that the connection works. The pings go out whatever arrives (every
        ``period`` seconds, more often when the keep-alive announced to the broker needs it), so the
        broker, too, keeps hearing from the listener. Returns True when it dropped the
        connection, False when the connection ended by itself.
        """
        pings: Set["asyncio.Future[Any]"] = set()
        if not self._last_traffic:
            self.note_traffic(0)
        # The broker drops a client it has not heard from for 1.5 x the keep-alive sent in CONNECT; amqtt's own
        # ping stops while an earlier one awaits its answer.
        announced = self.announced_keep_alive()
        every = min(period, 0.75 * announced) if announced is not None and announced > 0 else period
        last_ping = time.monotonic()
        try:
            while not self.connection_closed:
                now = time.monotonic()
                if now - self._last_traffic >= 2 * period and self.unread_socket_bytes():
                    # Received, just not read yet: the loop was busy, or the reader paused for room (then the
                    # kernel's window closes only once asyncio holds unread bytes), the connection is fine.
                    self.note_traffic(0)
                    now = self._last_traffic
                if now - self._last_traffic >= 2 * period:
                    logger.warning("Nothing received from %s for %g s, not even an answer to a ping: "
                                   "dropping the connection", label, 2 * period)
                    self.drop_connection()
                    return True
                if now - last_ping >= every:
                    ping = asyncio.ensure_future(self.ping_broker())
                    pings.add(ping)
                    ping.add_done_callback(_retrieve_outcome)
                    ping.add_done_callback(pings.discard)
                    last_ping = now
                await asyncio.sleep(max(0.01, min(last_ping + every, self._last_traffic + 2 * period) - now))
            return False
        finally:
            for pending in pings:
                pending.cancel()


def _retrieve_outcome(ping: "asyncio.Future[Any]") -> None:
    """Mark a ping's failure as seen (the watchdog judges by traffic, not by each ping)."""
    if not ping.cancelled():
        ping.exception()


def endpoint_label(config: EventListenerConfig) -> str:
    """``host:port`` of the broker the config points at, for messages (never with credentials)."""
    clean, _, _ = split_uri_credentials(config.uri or "")
    parts = urlsplit(clean)
    if parts.hostname:
        port = parts.port or (8883 if parts.scheme in ("mqtts", "wss") else 1883)
        return f"{parts.hostname}:{port}"
    return f"{config.host}:{config.port}"


def credentials(config: EventListenerConfig) -> tuple[str, Optional[str], Optional[str]]:
    """(URI without user info, username, password): credentials in an explicit URI win; an empty
    ``username`` means none at all (the password is not sent without it)."""
    clean, user, password = split_uri_credentials(config.uri or "")
    if user is not None:
        return clean, unquote(user), unquote(password) if password is not None else None
    if not config.username:
        return clean, None, None
    return clean, config.username, config.password


def secrets(config: EventListenerConfig) -> tuple[str, ...]:
    """The secret strings to mask wherever they appear in text: the password(s) in use."""
    found = (credentials(config)[2], config.password, _job_store_password(config.job_store), _dashboard_token(config))
    return tuple(dict.fromkeys(s for s in found if s and s != PUBLIC_DEFAULT_PASSWORD))


def _dashboard_token(config: EventListenerConfig) -> Optional[str]:
    """The dashboard's token, or None (an unreadable token file is reported when the dashboard starts)."""
    try:
        return http_token(config)
    except ConfigError:
        return None


def _job_store_password(job_store: str) -> Optional[str]:
    """The password in a ``redis://`` job store URL, or None."""
    if "://" not in job_store or "@" not in job_store:
        return None
    _, _, password = split_uri_credentials(job_store)
    return unquote(password) if password else None


def build_client_config(config: EventListenerConfig, cafile: Optional[str] = None) -> Dict[str, Any]:
    """Map an :class:`EventListenerConfig` onto amqtt's client configuration dict.

    amqtt's own auto-reconnect is off: it reconnects without resubscribing, so the listener runs
    its own reconnect loop (see ``EventListener.run``).
    """
    uri, _, _ = credentials(config)
    connection: Dict[str, Any] = {"uri": uri}
    if cafile is not None:
        connection["cafile"] = cafile
    if config.certfile is not None:
        connection["certfile"] = config.certfile
        connection["keyfile"] = config.keyfile
    client_config: Dict[str, Any] = {
        "keep_alive": config.keep_alive,
        "ping_delay": config.ping_delay,
        "default_qos": config.default_qos,
        "default_retain": config.default_retain,
        "auto_reconnect": False,
        "reconnect_retries": config.reconnect_retries,
        "reconnect_max_interval": math.ceil(config.reconnect_max_interval),
        "cleansession": config.cleansession,
        "connection_timeout": math.ceil(config.connect_timeout or DEFAULT_CONNECT_TIMEOUT),
        "topics": {
            topic: {"qos": options.get("qos", 0), "retain": options.get("retain", False)}
            for topic, options in config.custom_topics.items()
        },
        "connection": connection,
        "plugins": {},
        "check_hostname": config.tls_check_hostname,
    }
    if config.will is not None:
        message = config.will["message"]
        client_config["will"] = {
            "topic": config.will["topic"],
            "message": message.decode("utf-8") if isinstance(message, bytes) else message,
            "qos": config.will.get("qos", 0),
            "retain": config.will.get("retain", False),
        }
    return client_config


def create_client(config: EventListenerConfig, on_wakeup: Optional[Callable[[], None]] = None) -> AmqttClient:
    """A new amqtt client for ``config``, its debug logs filtered so no secret can reach them."""
    _, username, password = credentials(config)
    _guard_amqtt_logs(secrets(config))
    return AmqttClient(config.client_id, build_client_config(config), username, password,
                       delivery_window=config.max_concurrent_jobs, on_wakeup=on_wakeup,
                       hold_acks=config.ack_policy != "on_receipt", max_pending=config.max_pending_messages,
                       max_payload=config.max_payload_bytes, label=endpoint_label(config))


def new_client(config: EventListenerConfig) -> AmqttClient:
    """:func:`create_client`, also outside a running loop without leaving a stray loop behind (see
    :func:`~Listener.mqtt.amqtt_boundary.built_outside_loop`)."""
    return built_outside_loop(lambda: create_client(config))


def _guard_amqtt_logs(known: tuple[str, ...]) -> None:
    for name in ("amqtt", "amqtt.client", "amqtt.mqtt.protocol.handler", "amqtt.mqtt.protocol.client_handler"):
        log = logging.getLogger(name)
        existing = [f for f in log.filters if isinstance(f, SecretRedactingFilter)]
        if existing:
            existing[0].secrets = tuple(sorted(set(existing[0].secrets) | set(known)))
        else:
            log.addFilter(SecretRedactingFilter(known))


@contextlib.contextmanager
def tls_bundle(config: EventListenerConfig) -> Iterator[Optional[str]]:
    """Yield the CA file amqtt should load: ``cafile`` itself, or a private temporary bundle.

    amqtt ignores ``capath`` and ``cadata``; when either is set, every CA certificate from
    ``cafile``, the ``capath`` directory and ``cadata`` is written into one PEM file that exists
    only while the connection is being opened.
    """
    if config.capath is None and config.cadata is None:
        yield config.cafile
        return
    pem = _collect_ca_pem(config)
    fd, name = tempfile.mkstemp(prefix="listener-ca-", suffix=".pem")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(pem)
        yield name
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def _collect_ca_pem(config: EventListenerConfig) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if config.cafile is not None:
            context.load_verify_locations(cafile=config.cafile)
        if config.capath is not None:
            for entry in sorted(Path(config.capath).iterdir()):
                if entry.is_file():
                    with contextlib.suppress(ssl.SSLError, UnicodeDecodeError):
                        context.load_verify_locations(cafile=str(entry))
        if config.cadata is not None:
            context.load_verify_locations(cadata=config.cadata)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionError(f"Cannot load CA certificates for {endpoint_label(config)}: {exc}") from None
    certificates = context.get_ca_certs(binary_form=True)
    if not certificates:
        raise ConnectionError(f"No CA certificates found in capath/cadata for {endpoint_label(config)}")
    return "".join(ssl.DER_cert_to_PEM_cert(der) for der in certificates)


async def open_connection(config: EventListenerConfig, client: Any, timeout: float, cleansession: bool = True) -> None:
    """Connect ``client`` to the broker of ``config`` within ``timeout`` seconds.

    Raises:
        ConnectionError: naming host and port and the reason, never a secret (``BrokerRefusedConnection``
            when the broker said no). A failed attempt's half-open socket is closed first.
        AmqttIncompatible: the installed amqtt lacks a name the listener relies on (not retried).
    """
    uri = credentials(config)[0]
    with tls_bundle(config) as cafile:
        # Not wait_for: amqtt turns the cancellation into a ConnectError, hiding the timeout.
        try:
            connecting = await settle_within(
                client.connect(uri, cleansession=cleansession, cafile=cafile, additional_headers=config.additional_headers),
                timeout)
        except asyncio.CancelledError:  # stop() while connecting: close what was opened, then give way
            if isinstance(client, AmqttClient):
                await asyncio.wait({asyncio.ensure_future(client.abort_connection())}, timeout=ABORT_TIMEOUT)
            raise
        if connecting is None:
            failure: Optional[BaseException] = asyncio.TimeoutError()
        elif connecting.cancelled():
            failure = asyncio.CancelledError()
        else:
            failure = connecting.exception()
        if failure is not None:
            if isinstance(client, AmqttClient):
                await asyncio.wait({asyncio.ensure_future(client.abort_connection())}, timeout=ABORT_TIMEOUT)
            if isinstance(failure, AmqttIncompatible):
                raise failure
            raise connection_error(config, failure, connecting=True) from None


def connection_error(config: EventListenerConfig, exc: BaseException, *, connecting: bool = False) -> ConnectionError:
    """A ConnectionError naming host and port and the reason, with every secret removed.

    ``connecting``: ``exc`` ended a connection attempt (so a connection closed without data was closed
    during CONNECT).
    """
    reason = CLOSED_DURING_CONNECT if connecting and closed_by_peer(exc) else _describe(exc)
    message = redact(f"Cannot connect to MQTT broker at {endpoint_label(config)}: {reason}", secrets(config))
    code = _return_code(exc)
    return BrokerRefusedConnection(message, code) if code is not None else ConnectionError(message)


def _return_code(exc: BaseException) -> Optional[int]:
    """The CONNACK return code of a refused connection, in ``exc`` or its cause; else None."""
    for candidate in (exc, exc.__cause__):
        if isinstance(candidate, BrokerRefusedConnection) and candidate.return_code is not None:
            return candidate.return_code
        code = refusal_code(candidate) if candidate is not None else None
        if code is not None:
            return code
    return None


def _describe(exc: BaseException) -> str:
    code = _return_code(exc)
    if code is not None:
        return f"connection refused by broker: {_CONNACK_REASONS.get(code, 'refused')} (CONNACK return code {code})"
    cause = exc.__cause__ or exc
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or isinstance(cause, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    if isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {getattr(cause, 'reason', None) or cause}"
    text = str(cause) or type(cause).__name__
    return text
