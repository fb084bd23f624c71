"""The one door to amqtt: every amqtt name the listener relies on, public or private, is used here and nowhere else.

amqtt 0.12 gives a client no way to read its own packets, to bound its delivery queue, to see at once that a
connection ended, or to close one gently; the listener does all of that inside amqtt's client, and amqtt's
insides change between releases without notice. So the listener pins ``amqtt==0.12.1`` and fences them in here:

- :data:`CONTRACT` lists every amqtt name this module uses (and the asyncio internals it reads), with the
  signature of each method it overrides or calls. Importing this module checks every name that lives on a
  module or class; the attributes ``__init__`` sets are checked on the real objects as they are made (the
  client, and each connection's handler, session and socket adapters). A name missing or changed raises
  :class:`AmqttIncompatible`, which names it, the installed amqtt and the one the listener needs.
- :class:`AmqttClientBase` is amqtt's ``MQTTClient`` with what the listener changes in it, and
  :class:`AmqttHandler` amqtt's protocol handler, which lets :class:`PacketHooks` (the listener's
  :mod:`Listener.mqtt.wire_handler`) read and write the packets of a plain or TLS socket.
- :class:`EmbeddedBroker` is amqtt's broker, for the demo, ``--embedded-broker`` and the tests.

Elsewhere the listener calls a client only through what any client assigned to it has (``connect``,
``subscribe``, ``unsubscribe``, ``publish``, ``disconnect``: amqtt's signatures of them are in :data:`CONTRACT`)
and the methods defined here. ``tests/unit/test_amqtt_contract.py`` holds the table to the installed amqtt and to
this file's source; ``make amqtt-canary`` runs it, and the broker-free tests, against amqtt's newest release.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib
import inspect
import logging
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Protocol, Tuple, TypeVar

from ..errors import ListenerError

__all__ = [
    "CONTRACT", "DISCONNECT_LINGER", "REQUIRED_VERSION", "AmqttClientBase", "AmqttHandler", "AmqttIncompatible",
    "EmbeddedBroker", "Kind", "PacketHooks", "Term", "built_outside_loop", "closed_by_peer", "contract_problems",
    "PINGRESPS_KEPT", "incoming_message", "installed_version", "instance_problems", "refusal_code",
    "require_attributes", "require_contract",
]

#: The amqtt release whose insides :data:`CONTRACT` describes (pinned in pyproject.toml).
REQUIRED_VERSION = "0.12.1"
#: Seconds a clean disconnect waits, after its DISCONNECT, for the broker to close the connection.
DISCONNECT_LINGER = 2.0


class AmqttIncompatible(ListenerError, ImportError):
    """The installed amqtt lacks (or changed) a name the listener relies on; ``problems`` lists them."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        self.installed = installed_version()
        listed = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(
            f"The listener needs amqtt {REQUIRED_VERSION} (pip install 'amqtt=={REQUIRED_VERSION}'); amqtt "
            f"{self.installed} is installed, and it lacks or changed these names the listener relies on:\n{listed}")


class Kind(str, enum.Enum):
    """What :func:`contract_problems` checks of a :class:`Term`."""

    #: A module, class or function that must exist.
    NAME = "name"
    #: A method or function the listener overrides or calls: it must exist with this signature.
    SIGNATURE = "signature"
    #: A method, property or attribute of the class itself.
    CLASS_ATTRIBUTE = "class attribute"
    #: An attribute ``__init__`` sets: checked on the real objects (:func:`require_attributes`).
    INSTANCE_ATTRIBUTE = "instance attribute"


@dataclass(frozen=True)
class Term:
    """One name the listener relies on: ``name`` of ``owner`` (``"module:Class"``, or a module).

    A method or class attribute must be defined by ``owner`` itself, not inherited: amqtt's base handler has a
    stub of every ``handle_*`` method, so a renamed ``ClientProtocolHandler.handle_pingresp`` would still be found.
    """

    owner: str
    name: str
    kind: Kind
    #: Why the listener needs it.
    use: str
    #: For :attr:`Kind.SIGNATURE`: the parameters without annotations, ``async`` first for a coroutine function.
    signature: str = ""
    #: The subclass of ``owner`` the listener reaches the name through, when not ``owner``: it must not
    #: define the name itself (then ``owner``'s definition is still the one used).
    via: str = ""

    @property
    def label(self) -> str:
        """``module.Class.name``, as messages show it."""
        return f"{self.owner.replace(':', '.')}.{self.name}"


_CLIENT = "amqtt.client:MQTTClient"
_HANDLER = "amqtt.mqtt.protocol.client_handler:ClientProtocolHandler"
_BASE_HANDLER = "amqtt.mqtt.protocol.handler:ProtocolHandler"
_SESSION = "amqtt.session:Session"
_READER = "amqtt.adapters:StreamReaderAdapter"
_WRITER = "amqtt.adapters:StreamWriterAdapter"
_PLUGINS = "amqtt.plugins.manager:PluginManager"
_STREAM = "asyncio:StreamReader"
_POLICY = "asyncio.events:BaseDefaultEventLoopPolicy"
_POLICY_LOCAL = "asyncio.events:BaseDefaultEventLoopPolicy._Local"
#: Owners of asyncio internals another event loop policy may not have: read where present, never required.
_READ_WHERE_PRESENT = frozenset({_POLICY, _POLICY_LOCAL})
_N, _S, _C, _A = Kind.NAME, Kind.SIGNATURE, Kind.CLASS_ATTRIBUTE, Kind.INSTANCE_ATTRIBUTE

#: Every name this module uses of amqtt (and of asyncio's internals). ``tests/unit/test_amqtt_contract.py``
#: fails when the installed amqtt does not match it, or when this module touches a name it does not list.
CONTRACT: Tuple[Term, ...] = (
    # -- the client ----------------------------------------------------------------------------------
    Term("amqtt.client", "MQTTClient", _N, "subclassed by AmqttClientBase"),
    Term(_CLIENT, "__init__", _S, "AmqttClientBase is built as an MQTTClient", "(self, client_id=None, config=None)"),
    Term(_CLIENT, "connect", _S, "overridden (and called by every user of the client): connect, then watch the end",
         "async (self, uri=None, cleansession=None, cafile=None, capath=None, cadata=None, additional_headers=None)"),
    Term(_CLIENT, "disconnect", _S, "overridden: wait for the broker to close its side; called otherwise", "async (self)"),
    Term(_CLIENT, "publish", _S, "overridden: written directly on a plain or TLS socket; called otherwise",
         "async (self, topic, message, qos=None, retain=None, ack_timeout=None)"),
    Term(_CLIENT, "subscribe", _S, "called with [(filter, qos)]; the granted codes are read", "async (self, topics)"),
    Term(_CLIENT, "unsubscribe", _S, "called by the share_group probe", "async (self, topics)"),
    Term(_CLIENT, "ping", _S, "called by the liveness watch", "async (self)"),
    Term(_CLIENT, "cancel_tasks", _S, "called by disconnect, as amqtt's own does", "async (self)"),
    Term(_CLIENT, "_init_session", _S, "overridden: credentials and the delivery queue go into each new session",
         "(self, uri=None, cleansession=None, cafile=None, capath=None, cadata=None)"),
    Term(_CLIENT, "_handler", _A, "set by __init__ and for each connection: a property here swaps in AmqttHandler"),
    Term(_CLIENT, "_disconnect_task", _A, "done once amqtt has handled the end of the connection"),
    Term(_CLIENT, "_connected_state", _A, "cleared as soon as the end of the connection is seen"),
    Term(_CLIENT, "session", _A, "the current session (None before the first connect)"),
    Term(_CLIENT, "plugins_manager", _A, "handed to each new handler; its loop is closed when it made one"),
    Term(_CLIENT, "logger", _A, "replaced: its connect-failure warnings go to DEBUG"),
    Term(_PLUGINS, "_loop", _A, "the event loop amqtt made (and installed) when built outside a running loop"),
    # -- the session ---------------------------------------------------------------------------------
    Term(_SESSION, "username", _A, "set directly: amqtt takes credentials from the URI only, and logs it"),
    Term(_SESSION, "password", _A, "set directly, as the username"),
    Term(_SESSION, "delivered_message_queue", _A, "replaced by the listener's bounded delivery queue; amqtt's own "
         "reader (websockets) calls its put_nowait() and put()"),
    Term(_SESSION, "keep_alive", _A, "the keep-alive announced in CONNECT (the liveness watch pings within it)"),
    Term(_SESSION, "transitions", _A, "its is_connected() and disconnect(), as amqtt's client uses them"),
    # -- the protocol handler ------------------------------------------------------------------------
    Term("amqtt.mqtt.protocol.client_handler", "ClientProtocolHandler", _N, "subclassed by AmqttHandler; amqtt's "
         "client makes one per connection, which AmqttClientBase._handler replaces"),
    Term(_HANDLER, "__init__", _S, "AmqttHandler is built with the client's plugin manager",
         "(self, plugins_manager, session=None, loop=None)"),
    Term(_BASE_HANDLER, "_reader_loop", _S, "overridden: the listener reads a plain or TLS socket itself; amqtt's "
         "start() runs it as a task and waits for _reader_ready", "async (self)", via=_HANDLER),
    Term(_BASE_HANDLER, "_send_packet", _S, "overridden: what the listener wrote directly goes first",
         "async (self, packet)", via=_HANDLER),
    Term(_BASE_HANDLER, "_stop_waiters", _S, "overridden: the listener's own publications fail with amqtt's", "(self)",
         via=_HANDLER),
    Term(_HANDLER, "mqtt_connect", _S, "overridden: the CONNACK's session-present flag is kept", "async (self)"),
    Term(_HANDLER, "stop", _S, "overridden (flush first) and called to close a connection", "async (self)"),
    Term(_HANDLER, "_build_connect_packet", _S, "called by mqtt_connect", "(self)"),
    Term(_HANDLER, "handle_connection_closed", _S, "called when the listener's reader sees the end", "async (self)"),
    Term(_HANDLER, "mqtt_disconnect", _S, "called by disconnect: writes DISCONNECT", "async (self)"),
    Term(_BASE_HANDLER, "handle_connack", _S, "called with each CONNACK the listener's reader decodes (as amqtt's "
         "reader does)", "async (self, connack)", via=_HANDLER),
    Term(_HANDLER, "handle_suback", _S, "called with each SUBACK the listener's reader decodes", "async (self, suback)"),
    Term(_HANDLER, "handle_unsuback", _S, "called with each UNSUBACK the listener's reader decodes",
         "async (self, unsuback)"),
    Term(_HANDLER, "handle_pingresp", _S, "what amqtt does with a PINGRESP: put it in _pingresp_queue, which the "
         "listener's reader now does itself, bounded (pingresp_arrived); a change here means that changed too",
         "async (self, pingresp)"),
    Term(_HANDLER, "_pingresp_queue", _A, "each PINGRESP goes in (at most a few unclaimed ones); amqtt's ping awaits "
         "one from it"),
    Term("amqtt.mqtt.pingresp", "PingRespPacket", _N, "what is put in _pingresp_queue for each PINGRESP"),
    Term(_HANDLER, "_subscriptions_waiter", _A, "a SUBACK awaited: the reader reads on (see awaits_answer); failed "
         "when the connection ends"),
    Term(_HANDLER, "_unsubscriptions_waiter", _A, "an UNSUBACK awaited: the reader reads on (see awaits_answer); "
         "failed when the connection ends"),
    Term(_BASE_HANDLER, "handle_disconnect", _S, "called with a DISCONNECT the listener's reader decodes (as amqtt's "
         "reader does)", "async (self, disconnect)", via=_HANDLER),
    Term(_HANDLER, "_loop", _A, "the loop the handler's writes are scheduled on"),
    Term(_HANDLER, "_reader_ready", _A, "set once the listener's reader runs (amqtt's start() waits for it)"),
    Term(_HANDLER, "_reader_stopped", _A, "set once the listener's reader ended; disconnect waits for it"),
    Term(_HANDLER, "_reader_task", _A, "the reader's task: disconnect waits for it only while it runs"),
    Term(_HANDLER, "_keepalive_task", _A, "cancelled by disconnect: no PINGREQ after the half-close"),
    Term(_HANDLER, "_disconnect_waiter", _A, "done as soon as the reader saw the end of the connection"),
    Term(_HANDLER, "reader", _A, "the socket's reader adapter (None before attach)"),
    Term(_HANDLER, "writer", _A, "the socket's writer adapter (None before attach)"),
    Term(_HANDLER, "session", _A, "the session the handler is attached to (None when detached)"),
    Term(_HANDLER, "plugins_manager", _A, "handed on when the handler is swapped"),
    # -- sockets and packets -------------------------------------------------------------------------
    Term("amqtt.adapters", "StreamReaderAdapter", _N, "tells a plain or TLS socket from websockets"),
    Term("amqtt.adapters", "StreamWriterAdapter", _N, "tells a plain or TLS socket from websockets"),
    Term(_READER, "_reader", _A, "the asyncio StreamReader of a plain or TLS socket"),
    Term(_WRITER, "_writer", _A, "the asyncio StreamWriter of a plain or TLS socket"),
    Term(_WRITER, "is_closed", _A, "True once amqtt closed the writer"),
    Term("amqtt.adapters:BufferReader", "__init__", _S, "decodes one packet read by the listener", "(self, buffer)"),
    Term("amqtt.mqtt.packet:MQTTFixedHeader", "from_stream", _S, "decodes a packet's fixed header", "async (reader)"),
    Term("amqtt.mqtt", "packet_class", _S, "the packet class for a fixed header", "(fixed_header)"),
    Term("amqtt.mqtt.packet:MQTTPacket", "from_stream", _S, "decodes the packets the listener hands to amqtt, and "
         "the CONNACK (through ConnackPacket)", "async (reader, fixed_header=None, variable_header=None)",
         via="amqtt.mqtt.connack:ConnackPacket"),
    Term("amqtt.mqtt.connack:ConnackPacket", "session_parent", _C, "the CONNACK's session-present flag"),
    Term("amqtt.mqtt.connack:ConnackPacket", "return_code", _C, "the CONNACK's return code"),
    Term("amqtt.session:IncomingApplicationMessage", "__init__", _S, "each message the listener's reader receives",
         "(self, packet_id, topic, qos, data, retain)"),
    Term("amqtt.errors", "AMQTTError", _N, "raised as amqtt raises it when a handler has no reader"),
    Term("amqtt.errors", "NoDataError", _N, "a connection closed before CONNACK (see closed_by_peer)"),
    Term("amqtt.errors:ConnectError", "return_code", _C, "the CONNACK return code of a refused connection"),
    # -- the broker ----------------------------------------------------------------------------------
    Term("amqtt.broker:Broker", "__init__", _S, "EmbeddedBroker", "(self, config=None, loop=None, plugin_namespace=None)"),
    Term("amqtt.broker:Broker", "start", _S, "EmbeddedBroker.start", "async (self)"),
    Term("amqtt.broker:Broker", "shutdown", _S, "EmbeddedBroker.shutdown", "async (self)"),
    Term("amqtt.plugins.authentication", "AnonymousAuthPlugin", _N, "named in EmbeddedBroker's config"),
    # -- asyncio's internals -------------------------------------------------------------------------
    Term(_STREAM, "_buffer", _A, "bytes received but not read yet: a busy loop, not a dead connection"),
    Term(_STREAM, "feed_data", _C, "wrapped to see every chunk of bytes as it arrives"),
    Term(_POLICY, "_local", _A, "the thread's current loop, put back when amqtt installed its own (read where present: "
         "a custom event loop policy may have none)"),
    Term(_POLICY_LOCAL, "_loop", _A, "as _local"),
)
del _N, _S, _C, _A


def installed_version() -> str:
    """The installed amqtt's version ("not installed" when it is not)."""
    try:
        return metadata.version("amqtt")
    except metadata.PackageNotFoundError:
        return "not installed"


def _resolve(owner: str) -> Any:
    """The module or class ``owner`` names (``"module:Class.Inner"``); raises AttributeError or ImportError."""
    module_name, _, qualname = owner.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in filter(None, qualname.split(".")):
        found = getattr(found, part)
    return found


def _signature(function: Any) -> str:
    """``function``'s parameters without annotations, ``async`` first for a coroutine function."""
    signature = inspect.signature(function)
    bare = [parameter.replace(annotation=inspect.Parameter.empty) for parameter in signature.parameters.values()]
    text = str(signature.replace(parameters=bare, return_annotation=inspect.Signature.empty))
    return f"async {text}" if inspect.iscoroutinefunction(function) else text


def contract_problems(terms: Iterable[Term] = CONTRACT) -> List[str]:
    """What the installed packages lack or changed of ``terms``, instance attributes aside (their owners must
    exist; :func:`instance_problems` checks the attributes on an object). Empty when nothing."""
    problems: List[str] = []
    for term in terms:
        try:
            owner = _resolve(term.owner)
            via = _resolve(term.via) if term.via else None
        except (ImportError, AttributeError):
            if term.owner not in _READ_WHERE_PRESENT:
                missing = " or ".join(owner.replace(":", ".") for owner in (term.owner, term.via) if owner)
                problems.append(f"{missing} is missing (for {term.name}: {term.use})")
            continue
        if term.kind is Kind.INSTANCE_ATTRIBUTE:
            continue
        if not (term.name in vars(owner) if isinstance(owner, type) else hasattr(owner, term.name)):
            problems.append(f"{term.label} is missing ({term.use})")
            continue
        if via is not None:
            provider = next(klass for klass in via.__mro__ if term.name in vars(klass))
            if provider is not owner:
                problems.append(f"{term.label} changed: {term.via.replace(':', '.')}, which the listener uses, now "
                                f"takes it from {provider.__module__}.{provider.__qualname__} ({term.use})")
        if term.kind is Kind.SIGNATURE:
            found = _signature(getattr(owner, term.name))
            if found != term.signature:
                problems.append(f"{term.label} changed: {term.signature} expected, {found} found ({term.use})")
    return sorted(set(problems))


def require_contract(terms: Iterable[Term] = CONTRACT) -> None:
    """Raise :class:`AmqttIncompatible` naming every problem :func:`contract_problems` finds."""
    problems = contract_problems(terms)
    if problems:
        raise AmqttIncompatible(problems)


def _has_attribute(obj: Any, name: str) -> bool:
    """Whether ``obj`` itself, or a class of its that is not the listener's, has ``name``.

    The listener's own classes do not count: ``AmqttClientBase._handler`` is a property whatever amqtt does.
    """
    try:
        if name in vars(obj):
            return True
    except TypeError:  # __slots__
        pass
    return any(name in vars(klass) for klass in type(obj).__mro__ if not klass.__module__.startswith("Listener."))


def instance_problems(obj: Any, owner: str, terms: Iterable[Term] = CONTRACT) -> List[str]:
    """The instance attributes of ``owner`` in ``terms`` that ``obj`` (an ``owner``) lacks."""
    return [f"{term.label} is missing ({term.use})" for term in terms
            if term.owner == owner and term.kind is Kind.INSTANCE_ATTRIBUTE and not _has_attribute(obj, term.name)]


def require_attributes(obj: Any, owner: str) -> None:
    """Raise :class:`AmqttIncompatible` when ``obj`` lacks an instance attribute :data:`CONTRACT` lists for ``owner``."""
    problems = instance_problems(obj, owner)
    if problems:
        raise AmqttIncompatible(problems)


# Nothing below runs unless every name above was found, with the signature the listener was written against.
require_contract()

from amqtt.adapters import BufferReader, StreamReaderAdapter, StreamWriterAdapter  # noqa: E402
from amqtt.broker import Broker  # noqa: E402
from amqtt.client import MQTTClient  # noqa: E402
from amqtt.errors import AMQTTError, ConnectError, NoDataError  # noqa: E402
from amqtt.mqtt import packet_class  # noqa: E402
from amqtt.mqtt.connack import ConnackPacket  # noqa: E402
from amqtt.mqtt.packet import MQTTFixedHeader  # noqa: E402
from amqtt.mqtt.pingresp import PingRespPacket  # noqa: E402
from amqtt.mqtt.protocol.client_handler import ClientProtocolHandler  # noqa: E402
from amqtt.session import IncomingApplicationMessage  # noqa: E402

#: A received message as amqtt's client delivers it: ``(packet_id, topic, qos, payload, retain)``, with
#: ``.topic``, ``.data``, ``.qos``, ``.retain``.
incoming_message: Callable[[Optional[int], str, int, bytes, bool], Any] = IncomingApplicationMessage

# MQTT packet types (3.1.1 §2.2.1) a broker sends a client that amqtt's handler handles when the listener reads.
_CONNACK, _SUBACK, _UNSUBACK, _PINGRESP, _DISCONNECT = 2, 9, 11, 13, 14
#: PINGRESPs kept for pings to claim: amqtt's queue of them is never drained otherwise, and a broker (or anything
#: in the middle) sending PINGRESPs unasked would grow it for good.
PINGRESPS_KEPT = 4


class PacketHooks(Protocol):
    """The listener's own packet handling (:class:`~Listener.mqtt.wire_handler.WireHandler`), as amqtt's handler calls it."""

    def reads_itself(self) -> bool:
        """Whether it reads this connection's packets itself (else amqtt's reader does)."""

    async def read_until_closed(self, stream: asyncio.StreamReader) -> None:
        """Read and handle packets until the connection ends (amqtt's handler then closes it, as its own reader does)."""

    def connack(self, session_present: bool, return_code: Optional[int]) -> None:
        """The broker's CONNACK arrived."""

    def flush(self) -> None:
        """Hand what was written directly to the socket (amqtt writes a packet next, or stops)."""

    def stop_waiters(self) -> None:
        """The connection ends: fail what awaits an acknowledgement from the broker."""

    def answer_awaited(self) -> None:
        """amqtt sent a packet, whose answer it may await (the reader may have paused: it looks again)."""

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Publish on the open socket without amqtt's packet machinery."""

    def start_publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> "Optional[asyncio.Future[None]]":
        """Write a PUBLISH now and return the future of its acknowledgement (done already at QoS 0); None when the
        socket's buffer is full (then :meth:`publish`, which waits for it to drain)."""


class AmqttHandler(ClientProtocolHandler):  # type: ignore[misc]
    """amqtt's client protocol handler, with ``hooks`` (when set) reading and writing a plain or TLS socket."""

    def __init__(self, plugins_manager: Any) -> None:
        super().__init__(plugins_manager)
        require_attributes(self, _HANDLER)
        #: The listener's packet handling for this connection; None: amqtt's alone.
        self.hooks: Optional[PacketHooks] = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the connection runs on."""
        loop: asyncio.AbstractEventLoop = self._loop
        return loop

    @property
    def attached(self) -> bool:
        """Whether the handler is attached to a session (a connection is open or being opened)."""
        return self.session is not None

    def awaits_answer(self) -> bool:
        """Whether amqtt awaits a SUBACK or an UNSUBACK."""
        return bool(self._subscriptions_waiter or self._unsubscriptions_waiter)

    def pingresp_arrived(self) -> None:
        """A PINGRESP arrived: what amqtt's ``handle_pingresp`` does, without a task, keeping at most
        :data:`PINGRESPS_KEPT` that no ping claimed."""
        waiting: asyncio.Queue[Any] = self._pingresp_queue
        if waiting.qsize() < PINGRESPS_KEPT:
            waiting.put_nowait(PingRespPacket())

    def delivery_queue(self) -> Any:
        """The session's delivery queue (None when detached)."""
        session = self.session
        return session.delivered_message_queue if session is not None else None

    def socket_reader(self) -> Optional[asyncio.StreamReader]:
        """The asyncio stream a plain or TLS socket is read from; None over websockets or before attach."""
        reader = self.reader
        if not isinstance(reader, StreamReaderAdapter):
            return None
        stream = reader._reader
        return stream if isinstance(stream, asyncio.StreamReader) else None

    def socket_writer(self) -> Optional[asyncio.StreamWriter]:
        """The open asyncio stream of a plain or TLS socket; None over websockets, or once it is closed or closing."""
        writer = self.writer
        if not isinstance(writer, StreamWriterAdapter) or writer.is_closed:
            return None
        stream = writer._writer
        if not isinstance(stream, asyncio.StreamWriter) or stream.transport.is_closing():
            return None
        return stream

    async def dispatch(self, raw: bytes) -> bool:
        """Decode one whole packet and hand it to amqtt's handler for its type; False for a type a broker never
        sends a client (CONNACK, SUBACK, UNSUBACK, PINGRESP and DISCONNECT are handled; a PINGRESP as
        :meth:`pingresp_arrived` does)."""
        reader = BufferReader(raw)
        fixed_header = await MQTTFixedHeader.from_stream(reader)
        packet = await packet_class(fixed_header).from_stream(reader, fixed_header=fixed_header)
        if fixed_header.packet_type == _PINGRESP:
            self.pingresp_arrived()
            return True
        handlers = {_CONNACK: self.handle_connack, _SUBACK: self.handle_suback, _UNSUBACK: self.handle_unsuback,
                    _DISCONNECT: self.handle_disconnect}
        handle = handlers.get(fixed_header.packet_type)
        if handle is None:
            return False
        await handle(packet)
        return True

    async def _reader_loop(self) -> None:
        hooks, stream = self.hooks, self.socket_reader()
        if hooks is None or stream is None or not hooks.reads_itself():
            await super()._reader_loop()  # websockets: amqtt's reader
            return
        if self._reader_ready is not None:
            self._reader_ready.set()
        await hooks.read_until_closed(stream)
        # The end of amqtt's own reader, so that the client sees the end the same way.
        await self.handle_connection_closed()
        self._reader_stopped.set()
        await self.stop()

    async def _send_packet(self, packet: Any) -> None:
        if self.hooks is not None:
            self.hooks.flush()  # what was written directly goes first
        await super()._send_packet(packet)
        if self.hooks is not None:
            self.hooks.answer_awaited()

    def _stop_waiters(self) -> None:
        super()._stop_waiters()
        if self.hooks is not None:
            self.hooks.stop_waiters()
        # amqtt leaves a SUBSCRIBE or UNSUBSCRIBE waiting for good (the listener's own bound: 10 s) once the
        # connection ended before its answer came.
        for waiter in [*self._subscriptions_waiter.values(), *self._unsubscriptions_waiter.values()]:
            if not waiter.done():
                waiter.set_exception(ConnectionError("the connection ended before the broker answered"))

    async def mqtt_connect(self) -> Optional[int]:
        """amqtt's CONNECT exchange, telling the hooks what the CONNACK says of the session."""
        hooks = self.hooks
        if hooks is None:
            code: Optional[int] = await super().mqtt_connect()
            return code
        reader = self.reader
        if isinstance(reader, StreamReaderAdapter):
            require_attributes(reader, _READER)
            require_attributes(reader._reader, _STREAM)
        if isinstance(self.writer, StreamWriterAdapter):
            require_attributes(self.writer, _WRITER)
        await self._send_packet(self._build_connect_packet())
        if reader is None:
            raise AMQTTError("Reader is not initialized.")
        try:
            connack = await ConnackPacket.from_stream(reader)
        except NoDataError as exc:
            raise ConnectionError from exc
        code = connack.return_code
        hooks.connack(bool(connack.session_parent), code)
        return code

    async def stop(self) -> None:
        if self.hooks is not None:
            self.hooks.flush()
        await super().stop()


if TYPE_CHECKING:
    _LoggerAdapter = logging.LoggerAdapter[logging.Logger]
else:
    _LoggerAdapter = logging.LoggerAdapter


class _ConnectFailuresAtDebug(_LoggerAdapter):
    """amqtt's client logger, with its warnings about a failed connection attempt lowered to DEBUG.

    The listener reports each failure itself, once, with the reason and without secrets; amqtt's
    lines (``Connection failed: ConnectError(ConnectionError())``) repeated it at every attempt.
    """

    _REPORTED_BY_THE_LISTENER = ("Connection failed:", "Connection rejected with code")

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if level == logging.WARNING and isinstance(msg, str) and msg.startswith(self._REPORTED_BY_THE_LISTENER):
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)


class AmqttClientBase(MQTTClient):  # type: ignore[misc]
    """amqtt's ``MQTTClient`` with what the listener changes in it, and what amqtt keeps to itself made visible.

    - Credentials go into the session directly: amqtt takes them from the URI only, and logs the URI at DEBUG.
    - Every new session delivers into :meth:`session_queue` (when a subclass gives one).
    - Each connection's handler is an :class:`AmqttHandler` with the :meth:`packet_hooks` a subclass gives it;
      :meth:`publish` goes through them on an open plain or TLS socket.
    - :meth:`disconnect` waits for the broker to close its side; :meth:`wait_closed`, :attr:`connection_closed`
      and :meth:`is_connected` see the end of the connection as soon as amqtt's reader does.
    - amqtt's warnings about a failed connection attempt go to DEBUG: the listener reports each failure itself.
    """

    def __init__(self, client_id: str, config: Dict[str, Any], username: Optional[str] = None,
                 password: Optional[str] = None) -> None:
        super().__init__(client_id, config)
        require_attributes(self, _CLIENT)
        require_attributes(self.plugins_manager, _PLUGINS)
        self.logger = _ConnectFailuresAtDebug(logging.getLogger("amqtt.client"), {})
        self._username = username
        self._password = password

    # -- what a subclass adds --------------------------------------------------------------------

    def session_queue(self) -> Optional["asyncio.Queue[Any]"]:
        """The delivery queue each new session gets (None: amqtt's own)."""
        return None

    def packet_hooks(self, handler: AmqttHandler) -> Optional[PacketHooks]:
        """The listener's packet handling for a new connection's ``handler`` (None: amqtt's alone)."""
        return None

    def connection_opened(self) -> None:
        """Called once a connection is established (CONNACK accepted, the handler started)."""

    # -- amqtt's client, changed -----------------------------------------------------------------

    @property
    def _handler(self) -> Any:
        return self.__dict__.get("_handler")

    @_handler.setter
    def _handler(self, handler: Any) -> None:
        # amqtt makes a new ClientProtocolHandler for every connection, right before using it.
        if type(handler) is ClientProtocolHandler:
            handler = AmqttHandler(handler.plugins_manager)
            handler.hooks = self.packet_hooks(handler)
        self.__dict__["_handler"] = handler

    def _init_session(self, uri: Optional[str] = None, cleansession: Optional[bool] = None,
                      cafile: Optional[str] = None, capath: Optional[str] = None, cadata: Optional[str] = None) -> Any:
        session = super()._init_session(uri, cleansession, cafile, capath, cadata)
        require_attributes(session, _SESSION)
        session.username = self._username
        session.password = self._password
        queue = self.session_queue()
        if queue is not None:
            session.delivered_message_queue = queue
        return session

    async def connect(self, uri: Optional[str] = None, cleansession: Optional[bool] = None, cafile: Optional[str] = None,
                      capath: Optional[str] = None, cadata: Optional[str] = None,
                      additional_headers: Any = None) -> Any:
        code = await super().connect(uri, cleansession, cafile, capath, cadata, additional_headers)
        self.connection_opened()
        return code

    def is_connected(self) -> bool:
        """True while the MQTT session is established and amqtt has not seen it end.

        amqtt marks the session disconnected only after stopping its handler, which first fails the
        publications awaiting their PUBACK: ``_connected_state`` is cleared earlier, as soon as the
        end is noticed, so those failures are seen as what they are (a lost connection).
        """
        session = self.session
        return (session is not None and bool(session.transitions.is_connected())
                and self._connected_state.is_set())

    async def publish(self, topic: str, message: bytes, qos: Optional[int] = None, retain: Optional[bool] = None,
                      ack_timeout: Optional[int] = None) -> Any:
        """amqtt's ``publish``; on an open plain or TLS socket, the hooks write the packet directly.

        amqtt builds packet and message objects, takes a write lock, drains the socket, re-arms its
        keep-alive timer and, at QoS 1 and 2, waits for each acknowledgement under a 5 s timer of its own,
        for every packet; it also takes a PUBREC refusing the message (reason code 0x80 or more) for a
        success. The hooks (:meth:`Listener.mqtt.wire_handler.WireHandler.publish`) write the same PUBLISH
        bytes. Websockets, or no QoS given (amqtt applies its defaults), go through amqtt.
        """
        hooks = self._direct_hooks() if qos in (0, 1, 2) else None
        if hooks is None:
            return await super().publish(topic, message, qos, retain, ack_timeout)
        await hooks.publish(topic, message, int(qos or 0), bool(retain))
        return None

    def start_publish(self, topic: str, message: bytes, qos: int, retain: bool) -> "Optional[asyncio.Future[None]]":
        """Write a publication on an open plain or TLS socket without waiting: the future returned is done when
        the broker took it (at QoS 0, at once), fails with ``PublicationRefused``, or is cancelled when the
        connection ends (cancel it to stop waiting). None where only :meth:`publish` can send it (websockets, no
        connection, a socket whose buffer must drain first): a caller then uses that."""
        hooks = self._direct_hooks()
        return hooks.start_publish(topic, message, qos, retain) if hooks is not None else None

    def flush_writes(self) -> None:
        """Hand what was written directly in this turn of the event loop to the socket now, not at its end."""
        hooks = self._direct_hooks()
        if hooks is not None:
            hooks.flush()

    async def disconnect(self) -> None:
        """amqtt's ``disconnect``, except that the socket is closed only after the broker closed its side.

        amqtt writes the DISCONNECT and closes the socket at once. Whatever the broker sent meanwhile (the
        next in-flight messages, answering the acknowledgements that just went out) is then unread, so the
        kernel answers the close with a reset instead of a FIN, and mosquitto drops the connection without
        reading what it had not read yet: the last results (QoS 0 ones are never acknowledged) and the
        DISCONNECT itself, so it also publishes the will. Here the DISCONNECT is followed by a half-close,
        and the reader goes on reading (and discarding: the intake is closed) until the broker closes
        the connection, for at most :data:`DISCONNECT_LINGER` seconds.
        """
        handler = self._handler
        stream = handler.socket_writer() if isinstance(handler, AmqttHandler) and self.is_connected() else None
        if stream is None or self.session is None:
            await super().disconnect()  # not connected, or websockets: amqtt's way
            return
        await self.cancel_tasks()
        closing = self._disconnect_task
        if closing is not None and not closing.done():
            closing.cancel()
        await handler.mqtt_disconnect()
        self._connected_state.clear()
        await _until_broker_closed(handler, stream)
        await handler.stop()
        self.session.transitions.disconnect()

    # -- what amqtt keeps to itself --------------------------------------------------------------

    @property
    def hooks(self) -> Optional[PacketHooks]:
        """The packet hooks of the current connection's handler (None before the first connect)."""
        handler = self._handler
        return handler.hooks if isinstance(handler, AmqttHandler) else None

    def _direct_hooks(self) -> Optional[PacketHooks]:
        """The hooks, when they may write packets directly (an open plain or TLS socket), else None."""
        handler = self._handler
        if not isinstance(handler, AmqttHandler) or handler.hooks is None or handler.socket_writer() is None:
            return None
        return handler.hooks if self.is_connected() else None

    def socket_reader(self) -> Optional[asyncio.StreamReader]:
        """The asyncio stream the connection's plain or TLS socket is read from (None over websockets)."""
        handler = self._handler
        return handler.socket_reader() if isinstance(handler, AmqttHandler) else None

    def unread_socket_bytes(self) -> int:
        """Bytes received from the socket that no reader has consumed yet."""
        stream = self.socket_reader()
        return len(stream._buffer) if stream is not None else 0  # type: ignore[attr-defined]

    def announced_keep_alive(self) -> Optional[float]:
        """The keep-alive (seconds) sent in CONNECT: amqtt sends ``keep_alive - ping_delay``; None before connecting."""
        session = self.session
        announced = session.keep_alive if session is not None else None
        return float(announced) if isinstance(announced, (int, float)) else None

    async def ping_broker(self) -> None:
        """amqtt's ping: a PINGREQ, answered when its PINGRESP comes (never, on a half-open connection)."""
        await self.ping()

    def call_when_closed(self, callback: Callable[[Any], None]) -> None:
        """Have ``callback`` called once amqtt has handled the end of the connection just opened."""
        closing = self._disconnect_task
        if closing is not None:
            closing.add_done_callback(callback)

    async def wait_closed(self) -> None:
        """Return as soon as amqtt sees the connection end (at once when there is none)."""
        closing = self._disconnect_task
        if closing is None or self.connection_closed:
            return
        handler = self._handler
        watched = {closing}
        if isinstance(handler, AmqttHandler) and isinstance(handler._disconnect_waiter, asyncio.Future):
            watched.add(handler._disconnect_waiter)
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)

    @property
    def connection_closed(self) -> bool:
        """True once the connection that was opened has ended (or was never opened)."""
        closing = self._disconnect_task
        return closing is None or closing.done() or not self.is_connected()

    def drop_connection(self) -> bool:
        """Abort the connection's socket at once (for a connection found dead: nothing is flushed).

        Returns whether there was an open socket to abort.
        """
        handler = self._handler
        writer = handler.writer if isinstance(handler, AmqttHandler) else None
        if not isinstance(writer, StreamWriterAdapter):
            return False
        transport = writer._writer.transport
        if transport is None or transport.is_closing():
            return False
        transport.abort()
        return True

    async def abort_connection(self) -> None:
        """Close the socket of a connection attempt that failed or was cancelled.

        amqtt leaves it open when CONNACK never comes, which leaks the socket and keeps the peer waiting.
        """
        handler = self._handler
        if handler is not None and handler.writer is not None:
            with contextlib.suppress(Exception):
                await handler.stop()


async def _until_broker_closed(handler: AmqttHandler, stream: asyncio.StreamWriter) -> None:
    """Half-close the socket (TLS cannot: the broker closes after the DISCONNECT anyway) and wait until
    the reader saw the end of the connection, bounded by :data:`DISCONNECT_LINGER`."""
    keepalive = handler._keepalive_task
    if keepalive is not None:
        keepalive.cancel()  # no PINGREQ after the half-close
    reader, stopped = handler._reader_task, handler._reader_stopped
    if not isinstance(reader, asyncio.Task) or reader.done() or not isinstance(stopped, asyncio.Event):
        return
    with contextlib.suppress(Exception):
        await stream.drain()
        if stream.can_write_eof():
            stream.write_eof()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stopped.wait(), DISCONNECT_LINGER)


ClientT = TypeVar("ClientT", bound=AmqttClientBase)


def built_outside_loop(make: Callable[[], ClientT]) -> ClientT:
    """``make()``, also outside a running loop without leaving a stray loop behind.

    amqtt's plugin manager, finding no running loop, makes a new one and installs it as the thread's
    current loop. That loop is never used by the client; close it and put back what was there.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return make()
    # Read where present: a custom event loop policy may keep the thread's loop elsewhere (then none is put back).
    local = getattr(asyncio.get_event_loop_policy(), "_local", None)
    previous = getattr(local, "_loop", None)
    client = make()
    stray = client.plugins_manager._loop
    if stray is not None and stray is not previous and not stray.is_running():
        asyncio.set_event_loop(previous)
        stray.close()
    return client


def closed_by_peer(exc: BaseException) -> bool:
    """True when the chain of ``exc`` shows the broker closed (or reset) an open connection.

    amqtt reports a connection closed before the CONNACK as ``ConnectError`` from ``ConnectionError``
    from ``NoDataError``; a TCP connection refused is a ``ConnectionRefusedError`` instead.
    """
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (NoDataError, ConnectionResetError, asyncio.IncompleteReadError)):
            return True
        current = current.__cause__ or current.__context__
    return False


def refusal_code(exc: BaseException) -> Optional[int]:
    """The CONNACK return code of amqtt's ``ConnectError`` for a refused connection, else None."""
    code = exc.return_code if isinstance(exc, ConnectError) else None
    return code if isinstance(code, int) else None


class EmbeddedBroker:
    """amqtt's broker: a plain TCP listener on ``host:port`` (and websockets on ``websockets_port``), anonymous
    clients allowed. For loopback addresses: the demo, ``--embedded-broker`` and the tests."""

    def __init__(self, host: str, port: int, *, websockets_port: Optional[int] = None) -> None:
        self.bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        listeners: Dict[str, Any] = {"default": {"type": "tcp", "bind": self.bind}}
        if websockets_port is not None:
            listeners["ws"] = {"type": "ws", "bind": f"{host}:{websockets_port}"}
        self._broker = Broker({
            "listeners": listeners,
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        })

    async def start(self) -> None:
        """Listen (raises what amqtt raises when it cannot, e.g. the port is taken)."""
        await self._broker.start()

    async def shutdown(self) -> None:
        """Close every connection and stop listening."""
        await self._broker.shutdown()

    async def __aenter__(self) -> "EmbeddedBroker":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.shutdown()
