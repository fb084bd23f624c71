"""The HTTP transport of :mod:`Listener.ops.http_endpoints`: an asyncio server on a thread of its own.

The server runs its own event loop on a daemon thread, so parsing requests and waiting on slow clients costs
the listener's loop nothing; each complete request is handed to a ``dispatch`` coroutine (run on the
server's loop) that returns the response. One request per connection (``Connection: close``).

Limits, so that slow or hostile clients cannot hang the server or make it hold many descriptors:

- the request head must arrive whole within ``read_timeout`` (one deadline, not one per read) and fit in
  ``max_header_bytes`` (408 and 431 otherwise); a body is read only when ``reads_body(method, target)``
  says so, and only with a ``Content-Length`` of at most ``MAX_BODY_BYTES`` (413, chunked 411);
- the response must be written within ``WRITE_TIMEOUT``; afterwards the connection lingers (reading and
  discarding what the client still sends) for ``LINGER_SECONDS`` at most, so that closing does not send a
  reset that destroys the response before the client has read it;
- at most ``max_connections`` connections are open. When they all are, a new connection evicts the oldest
  one that has sent part of its request but not all of it, else the oldest that has sent nothing yet, else
  the oldest lingering one; a connection whose answer is being computed or written keeps its place. When
  every connection is being answered, the newcomer gets ``503`` ``{"status": "busy", ...}`` with
  ``Retry-After: 1`` (at most ``BUSY_CONNECTIONS`` such answers at once, beyond that it is closed unanswered).

Connections are accepted ``ACCEPT_BATCH`` at a time, so the server holds at most ``max_connections +
BUSY_CONNECTIONS`` connections plus a batch being closed. When the process runs out of descriptors
(EMFILE), accepting pauses for ``ACCEPT_RETRY_DELAY`` and resumes; waiting clients stay in the backlog.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Set, Tuple, cast

from .._version import __version__
from ..errors import ListenerError

__all__ = [
    "HttpServer", "MAX_BODY_BYTES", "MAX_CONNECTIONS", "MAX_HEADER_BYTES", "RawRequest", "READ_TIMEOUT", "Response",
    "WRITE_TIMEOUT", "encode_response", "json_response", "text_response",
]

logger = logging.getLogger("Listener.http_endpoints")

#: (status, content type, body, extra headers).
Response = Tuple[int, str, bytes, Dict[str, str]]

READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 5.0
MAX_HEADER_BYTES = 8 * 1024
MAX_BODY_BYTES = 4096
MAX_CONNECTIONS = 64
BUSY_CONNECTIONS = 16
LINGER_SECONDS = 1.0
BUSY_LINGER_SECONDS = 0.25
LINGER_BYTES = 64 * 1024
ACCEPT_BATCH = 16
ACCEPT_RETRY_DELAY = 0.1
SHUTDOWN_TIMEOUT = 5.0
SERVER_HEADER = "mqtt-event-listener/" + __version__

_READING, _ANSWERING, _LINGERING = "reading", "answering", "lingering"
_HEAD_END = re.compile(rb"\n\r?\n")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])")
_DIGITS = re.compile(r"[0-9]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: Framing headers the server sets itself; a handler's are ignored.
_FRAMING = frozenset({"content-length", "connection", "transfer-encoding"})


@dataclass(frozen=True)
class RawRequest:
    """A request as it arrived: ``target`` is the request-target as sent (not decoded), header names lower-cased."""

    method: str
    target: str
    headers: Mapping[str, str]
    body: bytes
    peer_host: str


Dispatch = Callable[[RawRequest], Awaitable[Response]]
ReadsBody = Callable[[str, str], bool]


def json_response(status: int, body: Mapping[str, Any], extra: Optional[Dict[str, str]] = None) -> Response:
    """A compact JSON response, newline-terminated."""
    payload = json.dumps(body, separators=(",", ":"), default=str).encode("utf-8") + b"\n"
    return status, "application/json", payload, extra or {}


def text_response(status: int, text: str) -> Response:
    """A UTF-8 plain text response."""
    return status, "text/plain; charset=utf-8", text.encode("utf-8"), {}


def busy_response() -> Response:
    """Every connection is being answered: try again in a second (not the "unavailable" of a listener not ready)."""
    return json_response(503, {"status": "busy", "error": "too many connections, retry later"}, {"Retry-After": "1"})


def encode_response(response: Response, *, head_only: bool = False) -> bytes:
    """The bytes of ``response``, status line to body (no body when ``head_only``).

    Raises:
        ValueError: the status is not 100-599, or a header name or value could split the response.
    """
    status, content_type, body, extra = response
    if not 100 <= int(status) <= 599:
        raise ValueError(f"invalid HTTP status {status!r}")
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    headers: Dict[str, Tuple[str, str]] = {}
    for name, value in (("Server", SERVER_HEADER), ("Date", email.utils.formatdate(usegmt=True)),
                        ("Content-Type", content_type), ("Content-Length", str(len(body))), ("Connection", "close"),
                        ("Cache-Control", "no-store")):
        headers[name.lower()] = (name, value)
    for name, value in extra.items():
        if not _TOKEN.fullmatch(name.encode("latin-1", "replace")) or _BAD_VALUE.search(value):
            raise ValueError(f"invalid response header {name!r}")
        if name.lower() not in _FRAMING:
            headers[name.lower()] = (name, value)
    if _BAD_VALUE.search(content_type):
        raise ValueError("invalid Content-Type")
    head = f"HTTP/1.1 {int(status)} {reason}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.values())
    return (head + "\r\n").encode("latin-1") + (b"" if head_only else bytes(body))


class _Refused(ListenerError):
    """The request cannot be served; answer ``status`` with ``message`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Head:
    method: str
    target: str
    headers: Dict[str, str]
    wants_body: bool


class HttpServer:
    """Serves ``dispatch`` on every address of ``host`` (one port) from a daemon thread with its own event loop."""

    def __init__(self, dispatch: Dispatch, *, reads_body: ReadsBody, read_timeout: float = READ_TIMEOUT,
                 max_header_bytes: int = MAX_HEADER_BYTES, max_connections: int = MAX_CONNECTIONS) -> None:
        self.dispatch = dispatch
        self.reads_body = reads_body
        self.read_timeout = read_timeout
        self.max_header_bytes = max_header_bytes
        self.max_connections = max(1, max_connections)
        self.host = ""
        self.port = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._listening: List[socket.socket] = []
        # Insertion order is age: the first of a pool is its oldest connection.
        self._reading: Dict[_Connection, None] = {}
        self._answering: Dict[_Connection, None] = {}
        self._lingering: Dict[_Connection, None] = {}
        self._busy: Dict[_Connection, None] = {}
        self._pools = {_READING: self._reading, _ANSWERING: self._answering, _LINGERING: self._lingering}
        self._attaching: Set["asyncio.Task[None]"] = set()
        self._accept_error_logged = 0.0

    # -- life cycle (called on the caller's loop) ------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        """Bind every address of ``host`` on one port (``port`` 0: a free one) and start serving.

        Raises:
            OSError: an address cannot be bound; the message names it.
        """
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        self._listening = _bind_all(list(dict.fromkeys((info[0], info[4]) for info in infos)), port)
        self.host = host
        self.port = int(self._listening[0].getsockname()[1])
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, args=(self._loop,), daemon=True, name=f"listener-http:{self.port}").start()

    async def close(self) -> None:
        """Stop accepting, drop every connection, release the port and end the thread. Safe to call twice."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._shut_down)
        except RuntimeError:  # pragma: no cover - the thread ended already
            return
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._stopped)), SHUTDOWN_TIMEOUT)
        except asyncio.TimeoutError:  # pragma: no cover - a stuck thread is a daemon: it cannot hold the process
            logger.warning("The HTTP endpoints' thread did not stop within %.0f s", SHUTDOWN_TIMEOUT)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.call_soon(self._accept_again)
            loop.run_forever()
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            for _ in range(3):  # the transports' connection_lost callbacks those tasks scheduled
                loop.run_until_complete(asyncio.sleep(0))
        except Exception:  # pragma: no cover - a bug of ours; the port must still be released
            logger.exception("The HTTP endpoints' event loop failed")
        finally:
            for sock in self._listening:
                sock.close()
            loop.close()
            self._stopped.set_result(None)

    def _shut_down(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._listening:
            loop.remove_reader(sock)
            sock.close()
        for pool in (self._reading, self._answering, self._lingering, self._busy):
            for connection in list(pool):
                connection.drop()
        loop.call_soon(loop.stop)  # after the connections' connection_lost, scheduled by drop()

    # -- accepting (on the server's loop) --------------------------------------------------------------

    def _accept_again(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._listening:
            if sock.fileno() >= 0:
                loop.add_reader(sock, self._accept, sock)

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # EMFILE and the like: leave the clients in the backlog for a moment
                self._pause_accepting(exc)
                return
            sock.setblocking(False)
            self._admit(sock)

    def _pause_accepting(self, exc: OSError) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._listening:
            loop.remove_reader(sock)
        loop.call_later(ACCEPT_RETRY_DELAY, self._accept_again)
        if time.monotonic() - self._accept_error_logged > 60.0:
            self._accept_error_logged = time.monotonic()
            logger.warning("HTTP endpoints on port %d cannot accept connections (%s); trying again every %.1f s",
                           self.port, exc, ACCEPT_RETRY_DELAY)

    def _admit(self, sock: socket.socket) -> None:
        if self.open_connections() >= self.max_connections and not self._evict():
            if len(self._busy) >= BUSY_CONNECTIONS:
                sock.close()
                return
            connection = _Connection(self, self._busy, _ANSWERING, busy=True)
        else:
            connection = _Connection(self, self._reading, _READING)
        task = asyncio.get_running_loop().create_task(self._attach(connection, sock))
        self._attaching.add(task)  # a task nobody refers to may be collected before it runs
        task.add_done_callback(self._attaching.discard)

    async def _attach(self, connection: "_Connection", sock: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: connection, sock)
        except BaseException as exc:
            sock.close()  # closing twice is harmless, leaking is not
            connection.forget()
            if not isinstance(exc, (OSError, asyncio.CancelledError)):
                raise

    def _evict(self) -> bool:
        """Drop the oldest connection that has sent part of its request, else the oldest that has sent nothing
        yet, else the oldest lingering one; False if none.

        One just accepted may have its whole request waiting to be read: clients that reconnect as soon as they
        are dropped (a slowloris attack) go round the pool thousands of times a second, and taking the oldest
        alone would drop such a newcomer before its request was read."""
        victim = (next((connection for connection in self._reading if connection.heard), None)
                  or next(iter(self._reading), None) or next(iter(self._lingering), None))
        if victim is None:
            return False
        logger.debug("HTTP endpoints: full, dropping a connection from %s", victim.peer_host or "?")
        victim.drop()
        return True

    def open_connections(self) -> int:
        """The connections counted against ``max_connections`` (read on the server's loop)."""
        return len(self._reading) + len(self._answering) + len(self._lingering)


class _Connection(asyncio.Protocol):
    """One connection, one request: reading → answering → lingering (``state``), in the server's pool of that state.

    A busy connection (answered 503 at once) stays in the server's busy pool throughout.
    """

    def __init__(self, server: HttpServer, pool: Dict["_Connection", None], state: str, busy: bool = False) -> None:
        self.server = server
        self.pool = pool
        self.state = state
        self.busy = busy
        pool[self] = None
        self.transport: Optional[asyncio.Transport] = None
        self.peer_host = ""
        self._dropped = False
        #: Part of the request has been read.
        self.heard = False
        self._buffer = bytearray()
        self._started = False  # past the one empty line tolerated before the request line
        self._scanned = 0
        self._head: Optional[_Head] = None
        self._continued = False
        self._timer: Optional[asyncio.TimerHandle] = None
        self._task: Optional["asyncio.Task[None]"] = None
        self._sent = False
        self._linger = LINGER_SECONDS
        self._linger_budget = LINGER_BYTES
        self._peer_closed = False

    # -- pools ------------------------------------------------------------------------------------------

    def _move(self, state: str) -> None:
        if self.state == state or self._dropped:
            return
        self.state = state
        if not self.busy:
            self.pool.pop(self, None)
            self.pool = self.server._pools[state]
            self.pool[self] = None

    def forget(self) -> None:
        """Leave every pool (the connection is gone)."""
        self.pool.pop(self, None)
        self._dropped = True
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()

    def drop(self) -> None:
        """Close at once, without an answer (evicted, or the server is closing)."""
        self.forget()
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self._dropped:
            self.transport.abort()
            return
        peer = transport.get_extra_info("peername")
        self.peer_host = str(peer[0]) if peer else ""
        if self.busy:
            self._send(encode_response(busy_response()), linger=BUSY_LINGER_SECONDS)
        else:
            self._timer = asyncio.get_running_loop().call_later(self.server.read_timeout, self._read_deadline)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.forget()

    def data_received(self, data: bytes) -> None:
        if self.state == _LINGERING:
            self._linger_budget -= len(data)
            if self._linger_budget <= 0 and self.transport is not None:
                self.transport.close()
            return
        if self.state != _READING:
            return  # arrived before reading was paused: not needed
        self.heard = True
        self._buffer += data
        try:
            request = self._parse()
        except _Refused as refusal:
            self._refuse(refusal.status, refusal.message)
            return
        if request is not None:
            self._answer(request)

    def eof_received(self) -> bool:
        self._peer_closed = True
        if self.state == _READING and (self._head is not None or self._buffer.strip()):
            self._refuse(400, "Incomplete request")
            return True  # keep the transport to write the answer
        return False

    def pause_writing(self) -> None:
        pass  # the answer is written whole; resume_writing says when the kernel has taken it all

    def resume_writing(self) -> None:
        if self._sent and self.transport is not None and not self.transport.get_write_buffer_size():
            # Not now: the transport calls this in the middle of its own write step, before its half-close.
            asyncio.get_running_loop().call_soon(self._written)

    # -- reading the request ------------------------------------------------------------------------------

    def _read_deadline(self) -> None:
        self._timer = None
        self._refuse(408, "Request not received in time")

    def _parse(self) -> Optional[RawRequest]:
        if self._head is None:
            self._head = self._parse_head()
            if self._head is None:
                return None
        head = self._head
        if not head.wants_body:
            return RawRequest(head.method, head.target, head.headers, b"", self.peer_host)
        length = _body_length(head.headers)
        if len(self._buffer) < length:
            if not self._continued and head.headers.get("expect", "").lower() == "100-continue":
                self._continued = True
                if self.transport is not None:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        return RawRequest(head.method, head.target, head.headers, bytes(self._buffer[:length]), self.peer_host)

    def _parse_head(self) -> Optional[_Head]:
        buffer = self._buffer
        if not self._started:  # RFC 9112 §2.2: one empty line before the request line is tolerated
            if len(buffer) == 0 or buffer == b"\r":
                return None
            for newline in (b"\r\n", b"\n"):
                if buffer.startswith(newline):
                    del buffer[:len(newline)]
                    break
            self._started = True
        end = _HEAD_END.search(buffer, max(0, self._scanned - 2))  # a trickled head is not scanned again
        if (end.end() if end else len(buffer)) > self.server.max_header_bytes:
            raise _Refused(431, "Request header too large")
        if end is None:
            self._scanned = len(buffer)
            return None
        lines = [line[:-1] if line.endswith(b"\r") else line for line in bytes(buffer[:end.start()]).split(b"\n")]
        del buffer[:end.end()]  # what follows is the body
        method, target = _request_line(lines[0])
        headers = _headers(lines[1:])
        wants_body = self.server.reads_body(method, target)
        if wants_body:
            length = _body_length(headers)
            if length > MAX_BODY_BYTES:
                raise _Refused(413, "Request body too large")
        return _Head(method, target, headers, wants_body)

    # -- answering -------------------------------------------------------------------------------------------

    def _answer(self, request: RawRequest) -> None:
        self._move(_ANSWERING)
        self._cancel_timer()
        if self.transport is not None:
            self.transport.pause_reading()
        self._task = asyncio.get_running_loop().create_task(self._compute(request))

    async def _compute(self, request: RawRequest) -> None:
        head_only = request.method == "HEAD"
        try:
            response = await self.server.dispatch(request)
            payload = encode_response(response, head_only=head_only)
        except Exception:  # a bug (ours or a handler's) costs one request, not the server
            logger.exception("HTTP endpoint %s %s failed", request.method, request.target[:200])
            response = json_response(500, {"status": "error", "error": "internal error, see the listener's log"})
            payload = encode_response(response, head_only=head_only)
        logger.debug('%s "%s %s" %d', self.peer_host, request.method, request.target[:200], response[0])
        self._send(payload)

    def _refuse(self, status: int, message: str) -> None:
        logger.debug("%s: HTTP %d %s", self.peer_host, status, message)
        self._send(encode_response(text_response(status, f"{status} {message}\n")))

    def _send(self, payload: bytes, linger: float = LINGER_SECONDS) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self._sent:
            return
        self._move(_ANSWERING)
        self._cancel_timer()
        self._sent, self._linger = True, linger
        transport.pause_reading()
        transport.set_write_buffer_limits(high=0)  # resume_writing once the kernel has taken every byte
        transport.write(payload)
        transport.write_eof()
        if transport.get_write_buffer_size():
            self._timer = asyncio.get_running_loop().call_later(WRITE_TIMEOUT, self._write_deadline)
        else:
            self._written()

    def _write_deadline(self) -> None:
        self._timer = None
        logger.debug("%s: answer not read within %.1f s, dropped", self.peer_host, WRITE_TIMEOUT)
        self.drop()

    def _written(self) -> None:
        """Linger: read and discard what the client still sends, until it closes or the time is up."""
        transport = self.transport
        self._cancel_timer()
        if transport is None or transport.is_closing():
            return
        if self._peer_closed:
            transport.close()
            return
        self._move(_LINGERING)
        transport.resume_reading()
        self._timer = asyncio.get_running_loop().call_later(self._linger, transport.close)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _request_line(line: bytes) -> Tuple[str, str]:
    """(method, target) of a request line; HTTP/0.9 and versions other than 1.x are refused."""
    parts = line.split()
    if b"\r" in line or len(parts) != 3:
        raise _Refused(400, "HTTP/0.9 is not supported" if len(parts) == 2 else "Bad request syntax")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or any(byte < 0x21 or byte == 0x7f for byte in target):
        raise _Refused(400, "Bad request syntax")
    match = _VERSION.fullmatch(version.decode("latin-1"))
    if match is None or match.group(1) == "0":
        raise _Refused(400, f"Bad request version {version[:20].decode('latin-1')!r}")
    if match.group(1) != "1":
        raise _Refused(505, "HTTP version not supported")
    return method.decode("ascii"), target.decode("latin-1")


def _headers(lines: List[bytes]) -> Dict[str, str]:
    """Header fields by lower-cased name; a repeated field's values are joined with ", "."""
    headers: Dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name) or b"\r" in line or b"\x00" in line:
            raise _Refused(400, "Bad header line")  # obsolete line folding included (RFC 9112 §5.2)
        key, text = name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _body_length(headers: Mapping[str, str]) -> int:
    """The body's length from ``Content-Length`` (0 without one); chunked bodies are refused."""
    length = headers.get("content-length")
    if "transfer-encoding" in headers:
        raise _Refused(400 if length is not None else 411, "Send the body with a Content-Length")
    if length is None:
        return 0
    values = {value.strip() for value in length.split(",")}
    if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
        raise _Refused(400, "Bad Content-Length")
    return int(values.pop())


def _bind_all(addresses: List[Tuple[int, Any]], port: int) -> List[socket.socket]:
    """A listening socket per address, all on one port: the first address's, when ``port`` 0 let it be chosen."""
    bound: List[socket.socket] = []
    try:
        for family, sockaddr in addresses:
            chosen = bound[0].getsockname()[1] if bound else port
            address = (sockaddr[0], chosen, *sockaddr[2:])
            sock = socket.socket(family, socket.SOCK_STREAM)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio does: an IPv6 socket does not take the IPv4 port
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:  # say which address, as asyncio's servers do
                raise OSError(exc.errno, f"error while attempting to bind on address {address[:2]!r}: "
                                         f"{str(exc.strerror or exc).lower()}") from None
            # A deep backlog: during a flood, a probe waits its turn there instead of having its SYN dropped.
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound
