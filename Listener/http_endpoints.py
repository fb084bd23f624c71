"""Health, readiness and metrics over HTTP, for probes and Prometheus: a tiny HTTP/1.1 server, no framework.

``GET /healthz``       200 while the listener is connected and subscribed, else 503
``GET /readyz``        the same, and 503 while it drains (stop requested, finishing jobs in flight)
``GET /metrics``       Prometheus text format (needs the ``prometheus`` extra: ``prometheus-client``), else 501
``GET /metrics.json``  ``listener.metrics()`` as JSON, always

One request per connection (``Connection: close``). Requests are bounded: the request line and headers
must arrive within ``read_timeout`` seconds and ``max_header_bytes`` bytes, bodies are never read, and at
most ``max_connections`` connections are served at once, so a slow or hostile client cannot hang or bloat
the listener. The server binds the address it is given (``config.http_host``, loopback by default).

When those slots are all taken, ``probe_slots`` more are kept for the probes: a connection there gets
``read_timeout`` (at most ``PROBE_READ_TIMEOUT``) to send its request, and ``/healthz`` and ``/readyz``
are answered as usual; any other path, or any connection beyond the probe slots too, gets
``503`` with ``Retry-After: 1`` and the body ``{"status": "busy", ...}``, never the ``"unavailable"``
body of a listener that is not ready. So a full server cannot make a probe see "not ready".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Protocol, Set, Tuple

from ._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from prometheus_client.registry import CollectorRegistry

__all__ = [
    "HttpEndpoints", "ListenerStatus", "METRIC_PREFIX", "PROMETHEUS_CONTENT_TYPE", "metric_families",
    "start_http_endpoints",
]

logger = logging.getLogger("Listener.http_endpoints")

METRIC_PREFIX = "mqtt_listener"
#: The classic text exposition format, understood by every Prometheus version.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 5.0
MAX_HEADER_BYTES = 8 * 1024
MAX_CONNECTIONS = 64
PROBE_SLOTS = 4
PROBE_READ_TIMEOUT = 1.0
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
LINGER_SECONDS = 1.0
OVERFLOW_LINGER_SECONDS = 0.25
LINGER_BYTES = 64 * 1024
_INSTALL_HINT = "Prometheus metrics need prometheus-client: pip install 'mqtt-event-listener[prometheus]'\n"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
            503: "Service Unavailable", 505: "HTTP Version Not Supported"}


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


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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
        self._server: Optional[asyncio.Server] = None
        self._connections: Set["asyncio.Task[Any]"] = set()
        self._probe_connections: Set["asyncio.Task[Any]"] = set()
        self._registry: Optional["CollectorRegistry"] = _prometheus_registry(listener)

    @property
    def prometheus_enabled(self) -> bool:
        """True when ``/metrics`` can answer (``prometheus-client`` is installed)."""
        return self._registry is not None

    async def _start(self, host: str, port: int) -> None:
        server = await self._bind(host, port)
        ports = {sock.getsockname()[1] for sock in server.sockets}
        if port == 0 and len(ports) > 1:
            # A name with several addresses (localhost: ::1 and 127.0.0.1) got one free port per address;
            # serve them all on the first one so ``port`` is the whole truth.
            chosen = int(server.sockets[0].getsockname()[1])
            server.close()
            await server.wait_closed()
            server = await self._bind(host, chosen)
        self._server = server
        self.host = host
        self.port = int(server.sockets[0].getsockname()[1])

    async def _bind(self, host: str, port: int) -> asyncio.Server:
        # ``limit`` bounds every readline(): a header line can never grow past max_header_bytes.
        return await asyncio.start_server(self._accept, host, port, limit=self.max_header_bytes, reuse_address=True)

    async def close(self) -> None:
        """Stop accepting, drop the connections being served, and release the port. Safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        serving = self._connections | self._probe_connections
        for task in serving:
            task.cancel()
        if serving:
            await asyncio.wait(serving, timeout=WRITE_TIMEOUT)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), WRITE_TIMEOUT)

    async def __aenter__(self) -> "HttpEndpoints":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- one connection ----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - start_server always runs the callback in a task
            writer.close()
            return
        if len(self._connections) < self.max_connections:
            slots, probes_only = self._connections, False
        elif len(self._probe_connections) < self.probe_slots:
            slots, probes_only = self._probe_connections, True
        else:
            # A short linger only: these connections are not counted, so they must not stay long.
            await self._finish(reader, writer, _busy_response(), head_only=False, linger=OVERFLOW_LINGER_SECONDS)
            return
        slots.add(task)
        try:
            await self._serve(reader, writer, probes_only)
        except asyncio.CancelledError:
            # close() cancels the connections being served. Not re-raised: this task belongs to asyncio's
            # stream machinery, which (Python 3.11) reports a cancelled connection task as an error.
            writer.close()
        except Exception:  # a bug of ours must cost one request, not an unhandled-exception log per client
            logger.exception("HTTP endpoint connection failed")
            writer.close()
        finally:
            slots.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, probes_only: bool = False) -> None:
        head_only = False
        timeout = min(self.read_timeout, PROBE_READ_TIMEOUT) if probes_only else self.read_timeout
        try:
            method, path = await asyncio.wait_for(self._read_request(reader), timeout)
        except asyncio.TimeoutError:
            response = _text_response(408, "Request not received in time\n")
        except _BadRequest as exc:
            response = _text_response(exc.status, f"{exc}\n")
        except (OSError, asyncio.IncompleteReadError):
            writer.close()
            return
        else:
            head_only = method == "HEAD"
            response = self.respond(method, path) if not probes_only or path in PROBE_PATHS else _busy_response()
        await self._finish(reader, writer, response, head_only,
                           linger=OVERFLOW_LINGER_SECONDS if probes_only else LINGER_SECONDS)

    async def _read_request(self, reader: asyncio.StreamReader) -> Tuple[str, str]:
        """Read the request line and headers (bounded); return the method and the path without query."""
        total = 0
        lines: List[bytes] = []
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                raise _BadRequest(431, "Request header too large") from None
            except asyncio.IncompleteReadError as exc:
                if not exc.partial and not lines:
                    raise
                raise _BadRequest(400, "Incomplete request") from None
            total += len(line)
            if total > self.max_header_bytes:
                raise _BadRequest(431, "Request header too large")
            if line in (b"\r\n", b"\n"):
                if not lines:
                    continue  # tolerate a stray empty line before the request line (RFC 9112 §2.2)
                break
            lines.append(line)
        parts = lines[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise _BadRequest(400, "Malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            raise _BadRequest(505, "Only HTTP/1.0 and HTTP/1.1 are supported")
        return method, target.split("?", 1)[0].split("#", 1)[0]

    async def _finish(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: Response,
                      head_only: bool, linger: float = LINGER_SECONDS) -> None:
        status, content_type, body, extra = response
        headers = {"Content-Type": content_type, "Content-Length": str(len(body)), "Connection": "close",
                   "Cache-Control": "no-store", **extra}
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        try:
            writer.write(head.encode("latin-1") + (b"" if head_only else body))
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
            if writer.can_write_eof():
                writer.write_eof()
                # Closing with unread request bytes makes the kernel send a reset, which can destroy the
                # response before the client reads it: discard what is left, within a small budget.
                await asyncio.wait_for(_discard(reader, LINGER_BYTES), linger)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT)

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


async def _discard(reader: asyncio.StreamReader, budget: int) -> None:
    while budget > 0:
        chunk = await reader.read(min(budget, 16 * 1024))
        if not chunk:
            return
        budget -= len(chunk)


def _json_response(status: int, body: Mapping[str, Any], extra: Optional[Dict[str, str]] = None) -> Response:
    payload = json.dumps(body, separators=(",", ":"), default=str).encode("utf-8") + b"\n"
    return status, "application/json", payload, extra or {}


def _busy_response() -> Response:
    """Every slot taken: try again in a second (not the "unavailable" answer of a listener that is not ready)."""
    return _json_response(503, {"status": "busy", "error": "too many connections, retry later"}, {"Retry-After": "1"})


def _text_response(status: int, text: str) -> Response:
    return status, "text/plain; charset=utf-8", text.encode("utf-8"), {}


# -- Prometheus ------------------------------------------------------------------------------------

_COUNTERS = (
    ("messages_received", "Messages received from the broker."),
    ("messages_rejected", "Messages rejected before becoming a job (invalid payload, missing job id, too large)."),
    ("publishes", "Messages the listener published (results and events)."),
    ("publish_errors", "Publications that failed."),
    ("publishes_retried", "Publications retried after a failure."),
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
        """One snapshot, all families."""
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
