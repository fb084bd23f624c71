"""Health, readiness and metrics over HTTP, for probes and Prometheus, served by the standard library's ``http.server``.

``GET /healthz``       200 while the listener is connected and subscribed, else 503
``GET /readyz``        the same, and 503 while it drains (stop requested, finishing jobs in flight)
``GET /metrics``       Prometheus text format (needs the ``prometheus`` extra: ``prometheus-client``), else 501
``GET /metrics.json``  ``listener.metrics()`` as JSON, always

The server runs on daemon threads (one accepting per bound address, one per connection); every answer is
computed on the listener's event loop (``asyncio.run_coroutine_threadsafe``), so the listener's state is
never read from another thread. A loop that does not answer within ``LOOP_TIMEOUT`` gets 503.

One request per connection (``Connection: close``). Requests are bounded: the request line and headers
must arrive within ``read_timeout`` seconds (a deadline for the whole head, not per read) and
``max_header_bytes`` bytes, bodies are never read, and at most ``max_connections`` connections are served
at once, so a slow or hostile client cannot hang or bloat the listener. The server binds the address it is
given (``config.http_host``, loopback by default).

When those slots are all taken, ``probe_slots`` more are kept for the probes: a connection there gets
``read_timeout`` (at most ``PROBE_READ_TIMEOUT``) to send its request, and ``/healthz`` and ``/readyz``
are answered as usual; any other path, or any connection beyond the probe slots too, gets
``503`` with ``Retry-After: 1`` and the body ``{"status": "busy", ...}``, never the ``"unavailable"``
body of a listener that is not ready. So a full server cannot make a probe see "not ready". At most
``max_connections`` such "busy" answers are in progress at once; beyond that a connection is closed unanswered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import json
import logging
import socket
import socketserver
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Protocol, Tuple
from urllib.parse import urlsplit

from .._version import __version__
from ..errors import ListenerError

if TYPE_CHECKING:  # pragma: no cover
    from _typeshed import WriteableBuffer
    from prometheus_client.registry import CollectorRegistry

__all__ = [
    "COUNTER_KEYS", "HttpEndpoints", "ListenerStatus", "METRIC_PREFIX", "PROMETHEUS_CONTENT_TYPE", "metric_families",
    "start_http_endpoints",
]

logger = logging.getLogger("Listener.http_endpoints")

METRIC_PREFIX = "mqtt_listener"
#: The classic text exposition format, understood by every Prometheus version.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 5.0
#: How long a connection's thread waits for the event loop to compute an answer.
LOOP_TIMEOUT = 2.0
MAX_HEADER_BYTES = 8 * 1024
MAX_CONNECTIONS = 64
PROBE_SLOTS = 4
PROBE_READ_TIMEOUT = 1.0
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
LINGER_SECONDS = 1.0
OVERFLOW_LINGER_SECONDS = 0.25
LINGER_BYTES = 64 * 1024
_POLL_INTERVAL = 0.1
_INSTALL_HINT = ("Prometheus metrics need prometheus-client: pip install 'prometheus-client>=0.17' (or install this "
                 "package with its [prometheus] extra: docs/installation.md)\n")
_REGULAR, _PROBE, _BUSY = "regular", "probe", "busy"


class ListenerStatus(Protocol):
    """What the endpoints read from the listener (``EventListener`` provides all of it)."""

    @property
    def is_ready(self) -> bool:
        """Connected and subscribed."""

    @property
    def is_draining(self) -> bool:
        """Stop requested; finishing the jobs in flight."""

    @property
    def is_running(self) -> bool:
        """``run()`` is active."""

    def metrics(self) -> Dict[str, Any]:
        """The counters snapshot (``ListenerMetrics.snapshot`` shape)."""


Response = Tuple[int, str, bytes, Dict[str, str]]


class HttpEndpoints:
    """A running endpoint server; ``port`` is the bound port (useful when started with port 0)."""

    def __init__(self, listener: ListenerStatus, *, read_timeout: float = READ_TIMEOUT,
                 max_header_bytes: int = MAX_HEADER_BYTES, max_connections: int = MAX_CONNECTIONS,
                 probe_slots: int = PROBE_SLOTS) -> None:
        self.listener = listener
        self.read_timeout = read_timeout
        self.max_header_bytes = max_header_bytes
        self.max_connections = max_connections
        self.probe_slots = probe_slots
        self.host = ""
        self.port = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._servers: List["_Server"] = []
        self._lock = threading.Lock()
        self._slots: Dict[str, Dict[socket.socket, threading.Thread]] = {_REGULAR: {}, _PROBE: {}, _BUSY: {}}
        self._registry: Optional["CollectorRegistry"] = _prometheus_registry(listener)

    @property
    def prometheus_enabled(self) -> bool:
        """True when ``/metrics`` can answer (``prometheus-client`` is installed)."""
        return self._registry is not None

    async def _start(self, host: str, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        infos = await self._loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        addresses = list(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos))
        try:
            for family, sockaddr in addresses:
                # A name with several addresses (localhost: 127.0.0.1 and ::1) is served on one port: the first
                # address's, when port 0 let the system choose it.
                chosen = self._servers[0].server_address[1] if self._servers else port
                address = (sockaddr[0], chosen, *sockaddr[2:])
                try:
                    self._servers.append(_Server(self, family, address))
                except OSError as exc:  # say which address, as asyncio's servers do
                    raise OSError(exc.errno, f"error while attempting to bind on address {address[:2]!r}: "
                                             f"{str(exc.strerror or exc).lower()}") from None
        except BaseException:
            for server in self._servers:
                server.server_close()
            self._servers = []
            raise
        self.host = host
        self.port = int(self._servers[0].server_address[1])
        for server in self._servers:
            threading.Thread(target=server.serve_forever, args=(_POLL_INTERVAL,), daemon=True,
                             name=f"listener-http:{self.port}").start()

    async def close(self) -> None:
        """Stop accepting, drop the connections being served, and release the port. Safe to call twice."""
        servers, self._servers = self._servers, []
        if servers:
            await asyncio.to_thread(self._shut_down, servers)

    def _shut_down(self, servers: List["_Server"]) -> None:
        for server in servers:
            server.shutdown()
            server.server_close()
        with self._lock:
            serving = [item for slots in self._slots.values() for item in slots.items()]
        for sock, _ in serving:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading or writing it
        deadline = time.monotonic() + WRITE_TIMEOUT
        for _, thread in serving:
            thread.join(max(0.0, deadline - time.monotonic()))

    async def __aenter__(self) -> "HttpEndpoints":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- connections (server threads) ---------------------------------------------------------------

    def _admit(self, sock: socket.socket, thread: threading.Thread) -> Optional[str]:
        """Take a slot for a new connection: regular, then probe, then busy; None when even those are full."""
        with self._lock:
            for kind, limit in ((_REGULAR, self.max_connections), (_PROBE, self.probe_slots),
                                (_BUSY, self.max_connections)):
                if len(self._slots[kind]) < limit:
                    self._slots[kind][sock] = thread
                    return kind
        return None

    def _release(self, kind: str, sock: socket.socket) -> None:
        with self._lock:
            self._slots[kind].pop(sock, None)

    def _answer_from_thread(self, method: str, path: str) -> Response:
        """``respond`` computed on the event loop, for a connection thread."""
        loop = self._loop
        if loop is None:
            return _unavailable("endpoints not started")

        async def on_loop() -> Response:
            return self.respond(method, path)

        try:
            future = asyncio.run_coroutine_threadsafe(on_loop(), loop)
        except RuntimeError:  # the loop is closed: the listener is gone
            return _unavailable("listener stopped")
        try:
            return future.result(LOOP_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            logger.warning("HTTP endpoint %s: the event loop did not answer within %.1f s", path, LOOP_TIMEOUT)
            return _unavailable("listener did not answer in time")
        except concurrent.futures.CancelledError:
            return _unavailable("listener stopped")

    # -- routing -----------------------------------------------------------------------------------

    def respond(self, method: str, path: str) -> Response:
        """The response to ``method path`` (no I/O; public for tests and embedding in another server)."""
        routes = {"/healthz": self._healthz, "/readyz": self._readyz, "/metrics": self._metrics_text,
                  "/metrics.json": self._metrics_json}
        handler = routes.get(path)
        if handler is None:
            return _json_response(404, {"status": "not_found", "path": path[:200],
                                        "endpoints": sorted(routes)})
        if method not in ("GET", "HEAD"):
            return _json_response(405, {"status": "method_not_allowed", "allowed": ["GET", "HEAD"]},
                                  {"Allow": "GET, HEAD"})
        try:
            return handler()
        except Exception:  # a broken snapshot must cost one scrape, not the server
            logger.exception("HTTP endpoint %s failed", path)
            return _json_response(500, {"status": "error", "error": "internal error, see the listener's log"})

    def _healthz(self) -> Response:
        ready = bool(self.listener.is_ready)
        body = {"status": "ok" if ready else "unavailable", "ready": ready, "running": bool(self.listener.is_running)}
        return _json_response(200 if ready else 503, body)

    def _readyz(self) -> Response:
        ready, draining = bool(self.listener.is_ready), bool(self.listener.is_draining)
        ok = ready and not draining
        return _json_response(200 if ok else 503, {"status": "ok" if ok else "unavailable", "ready": ready,
                                                   "draining": draining})

    def _metrics_json(self) -> Response:
        return _json_response(200, self.listener.metrics())

    def _metrics_text(self) -> Response:
        if self._registry is None:
            return _text_response(501, _INSTALL_HINT)
        from prometheus_client import generate_latest

        return 200, PROMETHEUS_CONTENT_TYPE, generate_latest(self._registry), {}


class _Server(socketserver.TCPServer):
    """One bound address; each accepted connection gets a slot (see ``HttpEndpoints._admit``) and a thread."""

    allow_reuse_address = True
    request_queue_size = 100

    def __init__(self, endpoints: HttpEndpoints, family: int, address: Tuple[Any, ...]) -> None:
        self.endpoints = endpoints
        self.address_family = family
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:  # as asyncio does: an IPv6 socket does not take the IPv4 port
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._serve, args=(request, client_address), daemon=True,
                                  name=f"listener-http:{self.server_address[1]}:connection")
        kind = self.endpoints._admit(request, thread)
        if kind is None:
            self.shutdown_request(request)
            return
        thread.start()

    def _serve(self, sock: socket.socket, client_address: Any) -> None:
        endpoints = self.endpoints
        with endpoints._lock:
            kind = next(kind for kind, slots in endpoints._slots.items() if sock in slots)
        try:
            _Handler(sock, client_address, self, kind)
        except Exception:  # a bug of ours must cost one request, not an unhandled-exception report per client
            logger.exception("HTTP endpoint connection failed")
        finally:
            _linger_and_close(sock, LINGER_SECONDS if kind == _REGULAR else OVERFLOW_LINGER_SECONDS)
            endpoints._release(kind, sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception("HTTP endpoint connection failed")


class _RequestTimeout(ListenerError):
    """The request head did not arrive before its deadline."""


class _HeadTooLarge(ListenerError):
    """The request head is larger than ``max_header_bytes``."""


class _DeadlineSocketReader(io.RawIOBase):
    """Socket reads that share one deadline, so a client trickling bytes cannot extend it."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "WriteableBuffer") -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise _RequestTimeout()
        self._sock.settimeout(remaining)
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            raise _RequestTimeout() from None


class _HeadReader(io.BufferedReader):
    """A buffered reader whose lines, together, may not exceed ``limit`` bytes (the request head's budget)."""

    def __init__(self, raw: io.RawIOBase, limit: int) -> None:
        super().__init__(raw)
        self._left = limit

    def readline(self, size: Optional[int] = -1) -> bytes:
        cap = self._left + 1
        line = super().readline(cap if size is None or size < 0 else min(size, cap))
        self._left -= len(line)
        if self._left < 0:
            raise _HeadTooLarge()
        return line


class _Handler(BaseHTTPRequestHandler):
    """One connection, one request: the standard library parses it; the answer comes from the event loop."""

    server: _Server
    raw_requestline: bytes
    protocol_version = "HTTP/1.1"
    server_version = "mqtt-event-listener/" + __version__
    sys_version = ""
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def __init__(self, request: Any, client_address: Any, server: _Server, kind: str = _REGULAR) -> None:
        self.kind = kind
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        super().setup()
        # What the error paths need before (or without) a parsed request line.
        self.requestline, self.request_version, self.command = "", "HTTP/1.1", ""
        endpoints = self.server.endpoints
        timeout = endpoints.read_timeout if self.kind == _REGULAR else min(endpoints.read_timeout, PROBE_READ_TIMEOUT)
        self.rfile.close()
        self.rfile = _HeadReader(_DeadlineSocketReader(self.connection, time.monotonic() + timeout),
                                 endpoints.max_header_bytes)

    def handle(self) -> None:
        try:
            if self.kind == _BUSY:
                self._reply(_busy_response())
            else:
                self.handle_one_request()
        except _RequestTimeout:
            self._refuse(HTTPStatus.REQUEST_TIMEOUT, "Request not received in time")
        except _HeadTooLarge:
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Request header too large")
        except OSError:  # the client went away, or close() shut the connection
            pass

    def parse_request(self) -> bool:
        if self.raw_requestline in (b"\r\n", b"\n"):
            self.raw_requestline = self.rfile.readline(65537)  # one empty line before the request line (RFC 9112 §2.2)
        return super().parse_request()

    def flush_headers(self) -> None:
        self.connection.settimeout(WRITE_TIMEOUT)  # reading had the head's deadline; writing has its own
        super().flush_headers()

    def send_response_only(self, code: int, message: Optional[str] = None) -> None:
        if self.request_version == "HTTP/0.9":  # never answer without a status line, even to a malformed request
            self.request_version = "HTTP/1.1"
        super().send_response_only(code, message)

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        with contextlib.suppress(OSError):
            self.send_error(status, message)

    def _dispatch(self) -> None:
        if self.request_version == "HTTP/0.9":
            self._refuse(HTTPStatus.BAD_REQUEST, "HTTP/0.9 is not supported")
            return
        path = urlsplit(self.path).path
        if self.kind == _PROBE and path not in PROBE_PATHS:
            response = _busy_response()
        else:
            response = self.server.endpoints._answer_from_thread(self.command, path)
        self._reply(response)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _dispatch

    def _reply(self, response: Response) -> None:
        status, content_type, body, extra = response
        self.send_response(status)
        headers = {"Content-Type": content_type, "Content-Length": str(len(body)), "Connection": "close",
                   "Cache-Control": "no-store", **extra}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


def _linger_and_close(sock: socket.socket, linger: float) -> None:
    """Half-close, then read what the client still sends (bounded) before closing.

    Closing with unread request bytes makes the kernel send a reset, which can destroy the response before
    the client reads it.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline, budget = time.monotonic() + linger, LINGER_BYTES
        while budget > 0 and (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            chunk = sock.recv(min(budget, 16 * 1024))
            if not chunk:
                break
            budget -= len(chunk)
    except OSError:
        pass
    finally:
        sock.close()


def _json_response(status: int, body: Mapping[str, Any], extra: Optional[Dict[str, str]] = None) -> Response:
    payload = json.dumps(body, separators=(",", ":"), default=str).encode("utf-8") + b"\n"
    return status, "application/json", payload, extra or {}


def _busy_response() -> Response:
    """Every slot taken: try again in a second (not the "unavailable" answer of a listener that is not ready)."""
    return _json_response(503, {"status": "busy", "error": "too many connections, retry later"}, {"Retry-After": "1"})


def _unavailable(reason: str) -> Response:
    return _json_response(503, {"status": "unavailable", "error": reason})


def _text_response(status: int, text: str) -> Response:
    return status, "text/plain; charset=utf-8", text.encode("utf-8"), {}


# -- Prometheus ------------------------------------------------------------------------------------

_COUNTERS = (
    ("messages_received", "Messages received from the broker."),
    ("messages_rejected", "Messages rejected before becoming a job (invalid payload, missing job id, too large)."),
    ("jobs_retried", "Retries of failed jobs started (max_retries)."),
    ("messages_dropped", "QoS 0 messages dropped (a sustained overload past max_pending_messages, or DUP set)."),
    ("publishes", "Messages the listener published (results and events)."),
    ("publish_errors", "Publications that failed."),
    ("publishes_retried", "Publications retried after a failure."),
    ("publishes_refused", "Publications the broker refused for a passing reason (quota exceeded), tried again."),
    ("reconnects", "Successful reconnections after a lost connection."),
    ("connection_losses", "Times the broker connection was lost."),
    ("abandoned_threads", "Processor threads still running after their job was given up."),
)
_GAUGES = (
    ("in_flight", "Jobs being processed right now."),
    ("queue_depth", "Messages received and waiting to be processed."),
    ("connected", "1 while connected to the broker."),
    ("ready", "1 while connected and subscribed."),
    ("draining", "1 while stopping: no new message is taken, jobs in flight finish."),
)

#: The keys of a ``listener.metrics()`` snapshot exposed as counters (the histogram's counts and sum too): they
#: only grow while the process lives (a ``--workers`` group adds a restarted worker's earlier totals to them).
COUNTER_KEYS = frozenset([key for key, _ in _COUNTERS] + ["jobs_finished", "errors", "processing_seconds",
                                                          "messages_dropped_by_reason"])


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    return 0.0


def metric_families(snapshot: Mapping[str, Any]) -> Iterator[Any]:
    """The Prometheus metric families for one ``listener.metrics()`` snapshot (names start ``mqtt_listener_``)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily

    yield InfoMetricFamily(f"{METRIC_PREFIX}_build", "The listener library version.", value={"version": __version__})
    for key, doc in _COUNTERS:
        if key in snapshot:
            yield CounterMetricFamily(f"{METRIC_PREFIX}_{key}", doc, value=_number(snapshot[key]))
    for key, doc in _GAUGES:
        if key in snapshot:
            yield GaugeMetricFamily(f"{METRIC_PREFIX}_{key}", doc, value=_number(snapshot[key]))
    labelled = (
        ("jobs", GaugeMetricFamily, "Jobs held in memory, by status.", "status"),
        ("jobs_finished", CounterMetricFamily, "Jobs finished since start, by final status.", "status"),
        ("errors", CounterMetricFamily, "Error events published, by error type.", "error_type"),
        ("messages_dropped_by_reason", CounterMetricFamily,
         "QoS 0 messages dropped, by reason (max_pending_messages: a sustained overload; dup_qos0: DUP set).", "reason"),
    )
    for key, family_class, doc, label in labelled:
        family = family_class(f"{METRIC_PREFIX}_{key}", doc, labels=[label])
        for name, value in sorted(dict(snapshot.get(key) or {}).items()):
            family.add_metric([str(name)], _number(value))
        yield family
    histogram = snapshot.get("processing_seconds")
    if isinstance(histogram, Mapping):
        buckets = [(str(bound), _number(count)) for bound, count in dict(histogram.get("buckets") or {}).items()]
        if not buckets or buckets[-1][0] != "+Inf":
            buckets.append(("+Inf", _number(histogram.get("count", 0))))
        durations = HistogramMetricFamily(f"{METRIC_PREFIX}_processing_seconds", "Time processors took per job.")
        durations.add_metric([], buckets, sum_value=_number(histogram.get("sum", 0)))
        yield durations


class _SnapshotCollector:
    """A prometheus_client collector reading the listener's snapshot at every scrape."""

    def __init__(self, listener: ListenerStatus) -> None:
        self.listener = listener

    def collect(self) -> Iterator[Any]:
        """One snapshot, all families (a status with its own ``metric_families()``, such as a worker group's, gives them)."""
        own = getattr(self.listener, "metric_families", None)
        if callable(own):
            return iter(own())
        return metric_families(self.listener.metrics())


def _prometheus_registry(listener: ListenerStatus) -> Optional["CollectorRegistry"]:
    """A private registry with the listener's collector, or None without prometheus-client."""
    try:
        from prometheus_client import CollectorRegistry
    except ImportError:
        return None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(listener))
    return registry


async def start_http_endpoints(listener: ListenerStatus, host: str, port: int, *, read_timeout: float = READ_TIMEOUT,
                               max_header_bytes: int = MAX_HEADER_BYTES,
                               max_connections: int = MAX_CONNECTIONS, probe_slots: int = PROBE_SLOTS) -> HttpEndpoints:
    """Serve ``/healthz``, ``/readyz``, ``/metrics`` and ``/metrics.json`` for ``listener`` on ``host:port``.

    ``port`` 0 picks a free port (see :attr:`HttpEndpoints.port`). Close with ``await endpoints.close()``.

    Raises:
        OSError: the address cannot be bound (in use, or not an address of this machine).
    """
    endpoints = HttpEndpoints(listener, read_timeout=read_timeout, max_header_bytes=max_header_bytes,
                              max_connections=max_connections, probe_slots=probe_slots)
    await endpoints._start(host, port)
    logger.info("HTTP endpoints on http://%s:%d (/healthz, /readyz, /metrics, /metrics.json)",
                f"[{host}]" if ":" in host else host, endpoints.port)
    return endpoints
