"""The dashboard's routes, plugged into the HTTP endpoints as their request handler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from importlib import resources
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import parse_qs

from ...core.redaction import mask_secrets
from ...errors import ListenerError
from ..http_endpoints import HttpRequest, Response
from ..http_server import json_response
from . import views
from .access import Access
from .series import SAMPLE_INTERVAL, Series
from .source import DashboardSource

__all__ = ["PAGE_SIZE", "SCAN_LIMIT", "Dashboard"]

logger = logging.getLogger("Listener.http_endpoints")

#: The most jobs one request reads from the store, whatever it holds (the list shows the newest).
SCAN_LIMIT = 500
#: Jobs per page of the list.
PAGE_SIZE = 25
#: Seconds a metrics snapshot is reused for the counts and the chart.
METRICS_MAX_AGE = 1.0
#: Failed jobs the overview lists.
FAILED_SHOWN = 10
_ASSET_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".txt": "text/plain; charset=utf-8", ".LICENSE": "text/plain; charset=utf-8"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
}
_PAGES = ("/", "/index.html")
_HTML = "text/html; charset=utf-8"


def _assets() -> Dict[str, Tuple[str, bytes]]:
    """The files under ``assets/`` by name: read once, served from memory (no path from a request is opened)."""
    found: Dict[str, Tuple[str, bytes]] = {}
    folder = resources.files(__package__).joinpath("assets")
    if not folder.is_dir():
        return found
    for entry in folder.iterdir():
        suffix = next((s for s in _ASSET_TYPES if entry.name.endswith(s)), None)
        if suffix is not None and entry.is_file():
            found[entry.name] = (_ASSET_TYPES[suffix], entry.read_bytes())
    return found


class Dashboard:
    """``/`` and its pages: a read-only view of ``source`` (a listener or a worker group).

    Call :meth:`start` on the listener's event loop (it samples the chart's series there), then give the
    instance to :func:`~Listener.ops.http_endpoints.start_http_endpoints` as its ``handler``.
    """

    def __init__(self, source: DashboardSource, *, token: Optional[str], bind_host: str,
                 sample_interval: float = SAMPLE_INTERVAL) -> None:
        self.source = source
        self.access = Access(token, bind_host)
        self.series = Series()
        self.sample_interval = sample_interval
        self._sampler: Optional["asyncio.Task[None]"] = None
        self._assets = _assets()
        self._snapshot: Dict[str, Any] = {}
        self._snapshot_at = -math.inf

    def __repr__(self) -> str:
        return f"Dashboard({self.access!r})"

    async def start(self) -> None:
        """Start sampling throughput and latency (every ``sample_interval`` seconds)."""
        if self.access.closed:
            logger.warning("Dashboard: the HTTP endpoints listen on a non-loopback address and no http_token is set, "
                           "so the dashboard shows no job data; set MQTT_HTTP_TOKEN or http_token_file to open it")
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample_forever(), name="listener-dashboard")

    async def close(self) -> None:
        """Stop sampling."""
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    async def _sample_forever(self) -> None:
        while True:
            try:
                self.series.sample(self._metrics())
            except Exception:  # noqa: BLE001 - a broken snapshot costs one point of the chart
                logger.exception("Dashboard: sampling the metrics failed")
            await asyncio.sleep(self.sample_interval)

    # -- routing ------------------------------------------------------------------------------------

    async def __call__(self, request: HttpRequest) -> Optional[Response]:
        """The answer to ``request``, or None for a path that is not the dashboard's."""
        path = request.path
        if path.startswith("/assets/"):
            return self._asset(request, path[len("/assets/"):])
        if path == "/login":
            return self._login(request)
        if not (path in _PAGES or path.startswith("/jobs/") or path.startswith("/api/")):
            return None
        if request.method not in ("GET", "HEAD"):
            return _not_allowed("GET, HEAD")
        if not self.access.allows(request.headers):
            return self._refused(path)
        try:
            if path in _PAGES:
                return await self._overview(request.query)
            if path.startswith("/jobs/"):
                return await self._job_page(path[len("/jobs/"):])
            return await self._api(path[len("/api/"):], request.query)
        except ListenerError as exc:  # the job store cannot be read: say so, as the log does
            text = mask_secrets(str(exc), self.source.secrets)
            logger.warning("Dashboard: %s", text)
            return _problem(path, 503, "Job store unavailable", text)

    def _asset(self, request: HttpRequest, name: str) -> Optional[Response]:
        found = self._assets.get(name)
        if found is None:
            return None
        if request.method not in ("GET", "HEAD"):
            return _not_allowed("GET, HEAD")
        content_type, body = found
        return _respond(200, content_type, body, {"Cache-Control": "public, max-age=3600"})

    def _refused(self, path: str) -> Response:
        if self.access.loopback and not self.access.needs_token:
            text = ("This dashboard answers requests addressed to localhost, 127.0.0.1 or [::1] only (the Host header "
                    "names another host).")
            return _problem(path, 403, "Unexpected host", text)
        if self.access.closed:
            text = ("The HTTP endpoints listen on a non-loopback address and no http_token is set: the dashboard "
                    "shows no job data. Set MQTT_HTTP_TOKEN or http_token_file, or bind http_host to 127.0.0.1.")
            return _problem(path, 403, "Dashboard closed", text)
        challenge = {"WWW-Authenticate": 'Bearer realm="mqtt-listener"'}
        if path.startswith("/api/"):
            return _json_answer(401, {"status": "unauthorized", "error": "token required"}, challenge)
        return _respond(401, _HTML, views.login_page(), challenge)

    def _login(self, request: HttpRequest) -> Response:
        if not self.access.needs_token:
            return _respond(303, _HTML, b"", {"Location": "/"})
        if request.method in ("GET", "HEAD"):
            return _respond(200, _HTML, views.login_page())
        if request.method != "POST":
            return _not_allowed("GET, HEAD, POST")
        try:
            form = parse_qs(request.body.decode("utf-8"), max_num_fields=4)
        except (UnicodeDecodeError, ValueError):
            form = {}
        if self.access.token_matches((form.get("token") or [""])[0]):
            return _respond(303, _HTML, b"", {"Location": "/", "Set-Cookie": self.access.session_cookie()})
        return _respond(403, _HTML, views.login_page(failed=True))

    # -- what the pages show ------------------------------------------------------------------------

    def _mask(self, value: Any) -> Any:
        """``value`` with secrets masked in every string it holds (as the logs mask them)."""
        if isinstance(value, str):
            return mask_secrets(value, self.source.secrets)
        if isinstance(value, Mapping):
            return {self._mask(key): self._mask(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._mask(item) for item in value]
        return value

    async def _listing(self, query: Mapping[str, str]) -> Tuple[Optional[Dict[str, Any]], Optional[List[Any]], str, str]:
        status = query.get("status", "")
        status = status if status in views.STATUSES else ""
        search = query.get("q", "")[:200]
        jobs = await self.source.recent_jobs(SCAN_LIMIT)
        if jobs is None:
            return None, None, status, search
        failed = [job for job in jobs if job["status"] == "failed"][:FAILED_SHOWN]
        matching = [job for job in jobs if (not status or job["status"] == status)
                    and (not search or search.lower() in str(job["job_id"]).lower())]
        if search and not any(job["job_id"] == search for job in matching):
            exact = await self.source.job(search)  # an older job than the newest SCAN_LIMIT, found by its id
            if exact is not None and (not status or exact["status"] == status):
                matching.insert(0, {key: value for key, value in exact.items() if key not in ("input", "result")})
        pages = max(1, -(-len(matching) // PAGE_SIZE))
        try:
            page = min(max(1, int(query.get("page", "1"))), pages)
        except ValueError:
            page = 1
        # Masking runs a few regular expressions per string: only on the rows shown, not on every job scanned.
        listing = {"jobs": self._mask(matching[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]), "page": page,
                   "pages": pages, "total": len(matching), "scanned": len(jobs), "truncated": len(jobs) >= SCAN_LIMIT,
                   "status": status, "q": self._mask(search)}
        return listing, self._mask(failed), status, search

    def _metrics(self) -> Dict[str, Any]:
        """The source's metrics, read at most once per :data:`METRICS_MAX_AGE` (counting the jobs by status walks
        every job held: an open tab must not do that at every poll)."""
        now = time.monotonic()
        if now - self._snapshot_at >= METRICS_MAX_AGE:
            self._snapshot, self._snapshot_at = self.source.metrics(), now
        return self._snapshot

    def _summary(self) -> Dict[str, Any]:
        metrics = self._metrics()
        overview = self.source.overview()
        keep = ("messages_received", "messages_rejected", "messages_dropped", "in_flight", "queue_depth",
                "jobs_finished", "errors", "reconnects", "connection_losses", "publish_errors")
        return {"overview": overview, "counts": views.counts_of(metrics),
                "metrics": {key: metrics[key] for key in keep if key in metrics}}

    async def _overview(self, query: Mapping[str, str]) -> Response:
        listing, failed, status, search = await self._listing(query)
        metrics = self._metrics()
        body = views.overview_page(self.source.overview(), views.counts_of(metrics), metrics, listing, failed,
                                   status, search)
        return _respond(200, _HTML, body)

    async def _job_page(self, job_id: str) -> Response:
        job = await self.source.job(job_id)
        if job is None:
            return _respond(404, _HTML, views.message_page("Job not found", f"No job {job_id!r} is held."))
        return _respond(200, _HTML, views.job_page(self._mask(job), bool(self.source.overview().get("keep_job_input"))))

    async def _api(self, name: str, query: Mapping[str, str]) -> Response:
        if name == "summary":
            return _json_answer(200, self._summary())
        if name == "series":
            return _json_answer(200, self.series.as_dict())
        if name == "jobs":
            listing, failed, _, _ = await self._listing(query)
            return _json_answer(200, {"listing": listing, "failed": failed})
        if name.startswith("jobs/"):
            job = await self.source.job(name[len("jobs/"):])
            if job is None:
                return _json_answer(404, {"status": "not_found"})
            return _json_answer(200, self._mask(job))
        return _json_answer(404, {"status": "not_found"})


_STATUS_WORDS = {403: "forbidden", 503: "unavailable"}


def _problem(path: str, status: int, title: str, text: str) -> Response:
    """A refusal: JSON for ``/api/…``, a page saying ``text`` otherwise."""
    if path.startswith("/api/"):
        return _json_answer(status, {"status": _STATUS_WORDS[status], "error": text})
    return _respond(status, _HTML, views.message_page(title, text))


def _not_allowed(allow: str) -> Response:
    return _json_answer(405, {"status": "method_not_allowed"}, {"Allow": allow})


def _json_answer(status: int, body: Any, extra: Optional[Dict[str, str]] = None) -> Response:
    status, content_type, payload, _ = json_response(status, body)
    return _respond(status, content_type, payload, extra)


def _respond(status: int, content_type: str, body: bytes, extra: Optional[Dict[str, str]] = None) -> Response:
    return status, content_type, body, {**_SECURITY_HEADERS, **(extra or {})}
