"""Health, readiness and metrics over HTTP, for probes and Prometheus, and a plug-in point for more pages.

``GET /healthz``       200 while the listener is connected and subscribed, else 503
``GET /readyz``        the same, and 503 while it drains (stop requested, finishing jobs in flight)
``GET /metrics``       Prometheus text format (needs the ``prometheus`` extra: ``prometheus-client``), else 501
``GET /metrics.json``  ``listener.metrics()`` as JSON, always

The transport (:mod:`Listener.ops.http_server`) is an asyncio server on a daemon thread with its own event
loop: slow clients and parsing cost the listener's loop nothing, connections are bounded (slow ones are
evicted first) and the request head, the response and the linger before closing each have a deadline.
Every answer is computed on the listener's event loop (``asyncio.run_coroutine_threadsafe``), so the
listener's state is never read from another thread; a loop that does not answer within ``LOOP_TIMEOUT``
gets ``503`` ``{"status": "unavailable", ...}``.

A request ``handler`` (a coroutine function taking an :class:`HttpRequest`) sees every request but the
probes' (``/healthz`` and ``/readyz`` are always answered by the built-in routes first), any method, with
the body when it has a ``Content-Length`` of at most ``MAX_BODY_BYTES``. It runs on the listener's loop within
``LOOP_TIMEOUT``; returning None leaves the request to the built-in routes, raising costs that request a 500.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, Iterator, Mapping, Optional, Protocol, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from .._version import __version__
from .http_server import (
    MAX_BODY_BYTES, MAX_CONNECTIONS, MAX_HEADER_BYTES, READ_TIMEOUT, HttpServer, RawRequest, Response, json_response,
    text_response,
)

if TYPE_CHECKING:  # pragma: no cover
    from prometheus_client.registry import CollectorRegistry

__all__ = [
    "COUNTER_KEYS", "HttpEndpoints", "HttpRequest", "ListenerStatus", "MAX_BODY_BYTES", "METRIC_PREFIX",
    "PROMETHEUS_CONTENT_TYPE", "RequestHandler", "Response", "metric_families", "start_http_endpoints",
]

logger = logging.getLogger("Listener.http_endpoints")

METRIC_PREFIX = "mqtt_listener"
#: The classic text exposition format, understood by every Prometheus version.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: How long the server waits for the listener's event loop to compute an answer.
LOOP_TIMEOUT = 2.0
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
_INSTALL_HINT = ("Prometheus metrics need prometheus-client: pip install 'prometheus-client>=0.17' (or install this "
                 "package with its [prometheus] extra: docs/installation.md)\n")


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


@dataclass(frozen=True)
class HttpRequest:
    """One request, as a request handler sees it."""

    method: str
    """``"GET"``, ``"POST"``, ... as sent."""
    path: str
    """The percent-decoded path, without the query."""
    query: Mapping[str, str]
    """The first value of each query parameter (``parse_qs`` with ``keep_blank_values=True``)."""
    headers: Mapping[str, str]
    """Header fields by lower-cased name (a repeated field's values joined with ``", "``)."""
    body: bytes
    """``b""`` unless the request sent a ``Content-Length`` (at most ``MAX_BODY_BYTES``)."""
    peer_host: str
    """The client's IP address."""


#: Answers a request, or returns None to leave it to the built-in routes.
RequestHandler = Callable[[HttpRequest], Awaitable[Optional[Response]]]


class HttpEndpoints:
    """A running endpoint server; ``port`` is the bound port (useful when started with port 0)."""

    def __init__(self, listener: ListenerStatus, *, read_timeout: float = READ_TIMEOUT,
                 max_header_bytes: int = MAX_HEADER_BYTES, max_connections: int = MAX_CONNECTIONS,
                 handler: Optional[RequestHandler] = None) -> None:
        self.listener = listener
        self.handler = handler
        self.read_timeout = read_timeout
        self.max_header_bytes = max_header_bytes
        self.max_connections = max_connections
        self.host = ""
        self.port = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server: Optional[HttpServer] = None
        self._registry: Optional["CollectorRegistry"] = _prometheus_registry(listener)

    @property
    def prometheus_enabled(self) -> bool:
        """True when ``/metrics`` can answer (``prometheus-client`` is installed)."""
        return self._registry is not None

    async def _start(self, host: str, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        server = HttpServer(self._from_server_loop, reads_body=self._reads_body, read_timeout=self.read_timeout,
                            max_header_bytes=self.max_header_bytes, max_connections=self.max_connections)
        await server.start(host, port)
        self._server = server
        self.host, self.port = host, server.port

    async def close(self) -> None:
        """Stop accepting, drop the connections being served, and release the port. Safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            await server.close()

    async def __aenter__(self) -> "HttpEndpoints":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- the server's side (its own thread and loop) -------------------------------------------------

    def _reads_body(self, method: str, target: str) -> bool:
        """Only a request that may reach the handler has its body read."""
        return self.handler is not None and _split_target(target)[0] not in PROBE_PATHS

    async def _from_server_loop(self, raw: RawRequest) -> Response:
        """``answer`` computed on the listener's loop, awaited on the server's: within ``LOOP_TIMEOUT``, or 503."""
        request = _request(raw)
        loop = self._loop
        if loop is None:
            return _unavailable("endpoints not started")
        answer = self.answer(request)
        try:
            future = asyncio.run_coroutine_threadsafe(answer, loop)
        except RuntimeError:  # the loop is closed: the listener is gone
            answer.close()
            return _unavailable("listener stopped")
        waiter = asyncio.wrap_future(future)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=LOOP_TIMEOUT)
        finally:
            waiter.cancel()  # no-op once done; otherwise cancels the answer on the listener's loop too
        if not done:
            logger.warning("HTTP %s %s: the listener's event loop did not answer within %.1f s (blocked, or a slow "
                           "request handler)", request.method, request.path[:200], LOOP_TIMEOUT)
            return _unavailable("listener did not answer in time")
        if waiter.cancelled():
            return _unavailable("listener stopped")
        return waiter.result()

    # -- routing (on the listener's loop) ------------------------------------------------------------------

    async def answer(self, request: HttpRequest) -> Response:
        """The response to ``request``: the probes, then the handler, then the built-in routes (no socket needed).

        Called on the listener's event loop; the server bounds it by ``LOOP_TIMEOUT``.
        """
        if self.handler is not None and request.path not in PROBE_PATHS:
            try:
                response = await self.handler(request)
            except Exception:  # a broken page must cost one request, not the server
                logger.exception("HTTP request handler failed on %s %s", request.method, request.path[:200])
                return _internal_error()
            if response is not None:
                if _is_response(response):
                    return response
                logger.error("HTTP request handler answered %s %s with %r, not (status, content type, body, "
                             "headers)", request.method, request.path[:200], type(response).__name__)
                return _internal_error()
        return self.respond(request.method, request.path)

    def respond(self, method: str, path: str) -> Response:
        """The built-in routes' response to ``method path`` (no I/O; public for tests and embedding)."""
        routes = {"/healthz": self._healthz, "/readyz": self._readyz, "/metrics": self._metrics_text,
                  "/metrics.json": self._metrics_json}
        route = routes.get(path)
        if route is None:
            return json_response(404, {"status": "not_found", "path": path[:200], "endpoints": sorted(routes)})
        if method not in ("GET", "HEAD"):
            return json_response(405, {"status": "method_not_allowed", "allowed": ["GET", "HEAD"]},
                                 {"Allow": "GET, HEAD"})
        try:
            return route()
        except Exception:  # a broken snapshot must cost one scrape, not the server
            logger.exception("HTTP endpoint %s failed", path)
            return _internal_error()

    def _healthz(self) -> Response:
        ready = bool(self.listener.is_ready)
        body = {"status": "ok" if ready else "unavailable", "ready": ready, "running": bool(self.listener.is_running)}
        return json_response(200 if ready else 503, body)

    def _readyz(self) -> Response:
        ready, draining = bool(self.listener.is_ready), bool(self.listener.is_draining)
        ok = ready and not draining
        return json_response(200 if ok else 503, {"status": "ok" if ok else "unavailable", "ready": ready,
                                                  "draining": draining})

    def _metrics_json(self) -> Response:
        return json_response(200, self.listener.metrics())

    def _metrics_text(self) -> Response:
        if self._registry is None:
            return text_response(501, _INSTALL_HINT)
        from prometheus_client import generate_latest

        return 200, PROMETHEUS_CONTENT_TYPE, generate_latest(self._registry), {}


def _split_target(target: str) -> Tuple[str, str]:
    """(percent-decoded path, raw query) of a request-target: origin-form, or absolute-form."""
    if target.startswith("/"):  # not urlsplit: "//x" is a path here, not a host
        path, _, query = target.partition("#")[0].partition("?")
    else:
        parts = urlsplit(target)
        path, query = parts.path, parts.query
    return unquote(path) or "/", query


def _request(raw: RawRequest) -> HttpRequest:
    path, query = _split_target(raw.target)
    values = {name: found[0] for name, found in parse_qs(query, keep_blank_values=True).items()}
    return HttpRequest(raw.method, path, values, dict(raw.headers), raw.body, raw.peer_host)


def _is_response(value: Any) -> bool:
    return (isinstance(value, tuple) and len(value) == 4 and isinstance(value[0], int)
            and isinstance(value[1], str) and isinstance(value[2], (bytes, bytearray)) and isinstance(value[3], dict))


def _internal_error() -> Response:
    return json_response(500, {"status": "error", "error": "internal error, see the listener's log"})


def _unavailable(reason: str) -> Response:
    return json_response(503, {"status": "unavailable", "error": reason})


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
                               max_header_bytes: int = MAX_HEADER_BYTES, max_connections: int = MAX_CONNECTIONS,
                               handler: Optional[RequestHandler] = None) -> HttpEndpoints:
    """Serve ``/healthz``, ``/readyz``, ``/metrics`` and ``/metrics.json`` for ``listener`` on ``host:port``.

    ``port`` 0 picks a free port (see :attr:`HttpEndpoints.port`); every address of ``host`` is served on it.
    ``handler`` answers the other requests first (see :class:`HttpRequest`). Close with ``await endpoints.close()``.

    Raises:
        OSError: the address cannot be bound (in use, or not an address of this machine).
    """
    endpoints = HttpEndpoints(listener, read_timeout=read_timeout, max_header_bytes=max_header_bytes,
                              max_connections=max_connections, handler=handler)
    await endpoints._start(host, port)
    logger.info("HTTP endpoints on http://%s:%d (/healthz, /readyz, /metrics, /metrics.json%s)",
                f"[{host}]" if ":" in host else host, endpoints.port, ", and a request handler" if handler else "")
    return endpoints
