"""Unit tests for Listener.ops.dashboard against a fake source: pages, escaping, access, paging, masking, series."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Dict, List, Mapping, Optional, Tuple

import pytest

from Listener.jobs.records import JobInfo, JobStatus, job_as_dict
from Listener.ops.dashboard import Dashboard, is_loopback_host
from Listener.ops.dashboard.app import PAGE_SIZE, SCAN_LIMIT
from Listener.ops.dashboard.series import Series
from Listener.ops.dashboard.views import error_parts
from Listener.ops.http_endpoints import HttpRequest

TOKEN = "a-dashboard-token-0123456789"
SECRET = "hunter2-broker-password"
HOSTILE = '<script>alert("x")</script>'


def job(job_id: str, status: str = "completed", error: Optional[str] = None, age: float = 0.0,
        **detail: Any) -> Dict[str, Any]:
    started = datetime(2026, 12, 6, 12, 0, 0) - timedelta(seconds=age)
    info = JobInfo(job_id=job_id, status=JobStatus(status), started_at=started,
                   completed_at=None if status in ("pending", "running") else started + timedelta(seconds=0.25),
                   error=error, topic="jobs/in", attempts=1, input_data=detail.get("input"), result=detail.get("result"))
    return job_as_dict(info, detail=bool(detail))


class FakeSource:
    def __init__(self, jobs: Optional[List[Dict[str, Any]]] = None, keep_job_input: bool = True) -> None:
        self.jobs = jobs if jobs is not None else []
        self.details: Dict[str, Dict[str, Any]] = {}
        self.secrets: Tuple[str, ...] = (SECRET,)
        self.keep_job_input = keep_job_input
        self.limits: List[int] = []
        self.snapshot: Dict[str, Any] = {"jobs": {"completed": 2, "failed": 1}, "messages_received": 3,
                                         "jobs_finished": {"completed": 2, "failed": 1},
                                         "processing_seconds": {"buckets": {"0.1": 3, "+Inf": 3}, "sum": 0.3, "count": 3}}

    def overview(self) -> Dict[str, Any]:
        return {"kind": "listener", "version": "9.9", "state": "running", "broker": "127.0.0.1:1883",
                "client_id": "c1", "subscriptions": [["jobs/#", 1]], "job_store": "memory",
                "keep_job_input": self.keep_job_input, "started_at": 0, "workers": None}

    def metrics(self) -> Dict[str, Any]:
        return self.snapshot

    async def recent_jobs(self, limit: int) -> Optional[List[Dict[str, Any]]]:
        self.limits.append(limit)
        return self.jobs[:limit]

    async def job(self, job_id: str) -> Optional[Dict[str, Any]]:
        return self.details.get(job_id)


def request(path: str, method: str = "GET", query: Optional[Mapping[str, str]] = None,
            headers: Optional[Mapping[str, str]] = None, body: bytes = b"") -> HttpRequest:
    sent = {"host": "127.0.0.1:9100", **(headers or {})}
    return HttpRequest(method=method, path=path, query=dict(query or {}), headers=sent, body=body, peer_host="127.0.0.1")


async def answer(dashboard: Dashboard, path: str, **kwargs: Any) -> Tuple[int, str, str, Dict[str, str]]:
    response = await dashboard(request(path, **kwargs))
    assert response is not None, path
    status, content_type, body, headers = response
    return status, content_type, body.decode("utf-8"), headers


def loopback(source: FakeSource, token: Optional[str] = None) -> Dashboard:
    return Dashboard(source, token=token, bind_host="127.0.0.1")


async def test_overview_shows_state_counts_subscriptions_and_failed_jobs() -> None:
    source = FakeSource([job("j-1"), job("j-2", "failed", "ValueError: bad input", age=1)])
    status, content_type, body, headers = await answer(loopback(source), "/")
    assert status == 200 and content_type.startswith("text/html")
    assert 'id="count-completed">2<' in body and 'id="count-failed">1<' in body
    assert "jobs/# (QoS 1)" in body and "127.0.0.1:1883" in body and "state-running" in body
    failed = body[body.index('id="failed-table"'):]
    assert "ValueError" in failed and "bad input" in failed and "j-2" in failed
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert source.limits == [SCAN_LIMIT]  # bounded work whatever the store holds


async def test_a_hostile_job_id_and_error_are_rendered_as_text() -> None:
    source = FakeSource([job(HOSTILE, "failed", f"RuntimeError: {HOSTILE}")])
    source.details[HOSTILE] = job(HOSTILE, "failed", f"RuntimeError: {HOSTILE}", input={"x": HOSTILE}, result=None)
    _, _, body, _ = await answer(loopback(source), "/")
    assert HOSTILE not in body and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in body
    assert "/jobs/%3Cscript%3E" in body  # the link quotes the id
    _, _, page, _ = await answer(loopback(source), f"/jobs/{HOSTILE}")
    assert HOSTILE not in page and "&lt;script&gt;" in page


async def test_jobs_are_filtered_searched_and_paged() -> None:
    jobs = [job(f"job-{n:03d}", "failed" if n % 3 == 0 else "completed", "E: x" if n % 3 == 0 else None, age=n)
            for n in range(60)]
    dashboard = loopback(FakeSource(jobs))
    _, _, body, _ = await answer(dashboard, "/api/jobs")
    listing = json.loads(body)["listing"]
    assert (listing["page"], listing["pages"], listing["total"]) == (1, 3, 60)
    assert [row["job_id"] for row in listing["jobs"]] == [f"job-{n:03d}" for n in range(PAGE_SIZE)]
    _, _, body, _ = await answer(dashboard, "/api/jobs", query={"status": "failed", "page": "2"})
    listing = json.loads(body)["listing"]
    assert listing["total"] == 20 and listing["page"] == 1  # past the last page: the last page
    assert {row["status"] for row in listing["jobs"]} == {"failed"}
    _, _, body, _ = await answer(dashboard, "/api/jobs", query={"q": "JOB-05"})
    assert [row["job_id"] for row in json.loads(body)["listing"]["jobs"]] == [f"job-05{n}" for n in range(10)]
    _, _, body, _ = await answer(dashboard, "/api/jobs", query={"page": "999"})
    assert json.loads(body)["listing"]["page"] == 3
    _, _, html, _ = await answer(dashboard, "/", query={"status": "failed"})
    assert "page 1 of 1" in html and 'value="failed" selected' in html and 'rel="next"' not in html


async def test_search_finds_an_older_job_by_its_exact_id() -> None:
    source = FakeSource([job("recent")])
    source.details["very-old"] = job("very-old", "completed", input={"a": 1}, result={"b": 2})
    _, _, body, _ = await answer(loopback(source), "/api/jobs", query={"q": "very-old"})
    rows = json.loads(body)["listing"]["jobs"]
    assert [row["job_id"] for row in rows] == ["very-old"] and "input" not in rows[0]


async def test_a_job_page_shows_input_result_error_attempts_with_secrets_masked() -> None:
    source = FakeSource()
    source.details["j"] = job("j", "failed", f"ConnectionError: login as admin:{SECRET} refused",
                              input={"password": SECRET, "n": 1}, result={"echo": f"uri mqtt://u:{SECRET}@h"})
    status, _, body, _ = await answer(loopback(source), "/jobs/j")
    assert status == 200 and SECRET not in body
    assert 'id="job-attempts">1<' in body and "ConnectionError" in body and "&quot;n&quot;: 1" in body
    assert "jobs/in" in body and "0.250 s" in body
    _, _, api, _ = await answer(loopback(source), "/api/jobs/j")
    assert SECRET not in api and json.loads(api)["input"]["n"] == 1


async def test_input_is_hidden_when_not_kept() -> None:
    source = FakeSource(keep_job_input=False)
    source.details["j"] = job("j", result={"r": 1}, input=None)
    _, _, body, _ = await answer(loopback(source), "/jobs/j")
    assert "keep_job_input = true" in body


async def test_unknown_job_is_404_and_other_paths_fall_through() -> None:
    dashboard = loopback(FakeSource())
    assert (await answer(dashboard, "/jobs/nope"))[0] == 404
    assert (await answer(dashboard, "/api/nope"))[0] == 404
    assert await dashboard(request("/metrics")) is None
    assert await dashboard(request("/healthz")) is None
    assert await dashboard(request("/assets/../../etc/passwd")) is None
    assert (await answer(dashboard, "/", method="POST"))[0] == 405


async def test_assets_are_served_from_the_package() -> None:
    status, content_type, body, headers = await answer(loopback(FakeSource()), "/assets/dashboard.js")
    assert status == 200 and content_type.startswith("text/javascript") and "textContent" in body
    status, content_type, _, _ = await answer(loopback(FakeSource()), "/assets/uPlot.iife.min.js")
    assert status == 200 and content_type.startswith("text/javascript")


@pytest.mark.parametrize("path", ["/", "/jobs/j", "/api/summary", "/api/jobs", "/api/series"])
async def test_with_a_token_every_dashboard_path_needs_it(path: str) -> None:
    source = FakeSource([job("j")])
    source.details["j"] = job("j", input={"a": 1}, result=None)
    dashboard = loopback(source, TOKEN)
    status, _, body, headers = await answer(dashboard, path)
    assert status == 401 and '"job_id"' not in body and "jobs/in" not in body
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert (await answer(dashboard, path, headers={"authorization": "Bearer wrong-token-0123456789"}))[0] == 401
    assert (await answer(dashboard, path, headers={"authorization": f"Bearer {TOKEN}"}))[0] == 200


async def test_login_sets_a_cookie_that_opens_the_dashboard_and_never_holds_the_token() -> None:
    dashboard = loopback(FakeSource(), TOKEN)
    status, _, _, headers = await answer(dashboard, "/login", method="POST", body=b"token=wrong")
    assert status == 403 and "Set-Cookie" not in headers
    status, _, _, headers = await answer(dashboard, "/login", method="POST", body=f"token={TOKEN}".encode())
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert TOKEN not in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert (await answer(dashboard, "/", headers={"cookie": cookie.split(";")[0]}))[0] == 200
    assert (await answer(dashboard, "/", headers={"cookie": "listener_dashboard=forged"}))[0] == 401
    assert TOKEN not in repr(dashboard)


async def test_off_loopback_without_a_token_no_job_data_is_shown() -> None:
    source = FakeSource([job("secret-job")])
    dashboard = Dashboard(source, token=None, bind_host="0.0.0.0")
    for path in ("/", "/api/jobs", "/api/summary", "/jobs/secret-job"):
        status, _, body, _ = await answer(dashboard, path)
        assert status == 403 and "secret-job" not in body and "http_token" in body
    assert source.limits == []
    assert (await answer(dashboard, "/assets/dashboard.css"))[0] == 200


def test_loopback_hosts() -> None:
    assert all(is_loopback_host(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2", "[::1]"))
    assert not any(is_loopback_host(h) for h in ("0.0.0.0", "::", "", "10.0.0.1", "example.org"))


def test_series_rates_latency_and_counter_resets() -> None:
    series = Series()

    def snap(finished: int, failed: int, seconds: float, fast: int) -> Dict[str, Any]:
        return {"jobs_finished": {"completed": finished - failed, "failed": failed},
                "processing_seconds": {"buckets": {"0.01": fast, "1.0": finished, "+Inf": finished}, "sum": seconds}}

    series.sample(snap(0, 0, 0.0, 0), now=100.0)
    series.sample(snap(20, 2, 2.0, 10), now=102.0)
    series.sample(snap(5, 0, 0.5, 5), now=104.0)  # a restart lowered the totals: no negative rate
    series.sample(snap(25, 2, 2.5, 25), now=106.0)
    data = series.as_dict()
    assert data["t"] == [102.0, 106.0]
    assert data["jobs_per_s"] == [10.0, 10.0] and data["failed_per_s"] == [1.0, 1.0]
    assert data["mean_ms"] == [100.0, 100.0] and data["p95_ms"] == [1000.0, 10.0]


def test_error_parts() -> None:
    assert error_parts("ValueError: bad: input") == ("ValueError", "bad: input")
    assert error_parts("no type here") == ("", "no type here")
    assert error_parts(None) == ("", "")


async def test_a_store_that_cannot_be_read_is_a_503_that_names_it_without_secrets() -> None:
    from Listener.errors import ListenerError

    class Broken(FakeSource):
        async def recent_jobs(self, limit: int) -> Optional[List[Dict[str, Any]]]:
            raise ListenerError(f"Cannot read job store redis://:{SECRET}@h:6379/0: connection refused")

    dashboard = loopback(Broken())
    status, _, body, _ = await answer(dashboard, "/")
    assert status == 503 and "connection refused" in body and SECRET not in body
    status, _, body, _ = await answer(dashboard, "/api/jobs")
    assert status == 503 and json.loads(body)["status"] == "unavailable" and SECRET not in body


async def test_the_memory_store_lists_the_newest_jobs_first_without_input_and_result() -> None:
    from Listener.jobs.memory import MemoryJobStore

    store = MemoryJobStore(100, 3600, True)
    for n in range(10):
        await store.admit(f"r-{n}", {"n": n}, "t")
        await store.set_status(f"r-{n}", JobStatus.COMPLETED, result={"n": n})
    newest = await store.recent(3)
    assert [job.job_id for job in newest] == ["r-9", "r-8", "r-7"]
    assert all(job.input_data is None and job.result is None for job in newest)
    assert store.jobs["r-9"].input_data == {"n": 9}  # copies: the held jobs keep theirs
    assert await store.recent(0) == [] and len(await store.recent(50)) == 10


async def test_an_open_tab_counts_the_jobs_at_most_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    from Listener.ops.dashboard import app

    calls: List[int] = []
    source = FakeSource()
    original = source.metrics
    source.metrics = lambda: calls.append(1) or original()  # type: ignore[method-assign]
    dashboard = loopback(source)
    clock = [1000.0]
    monkeypatch.setattr(app.time, "monotonic", lambda: clock[0])
    for _ in range(5):
        assert (await answer(dashboard, "/api/summary"))[0] == 200
    assert len(calls) == 1
    clock[0] += app.METRICS_MAX_AGE
    await answer(dashboard, "/")
    assert len(calls) == 2


@pytest.mark.parametrize("host", ["evil.example:9100", "evil.example", "10.0.0.1:9100", ""])
async def test_a_loopback_dashboard_refuses_requests_addressed_to_another_host(host: str) -> None:
    """DNS rebinding: a page elsewhere resolves its own name to 127.0.0.1 and reads the dashboard through a local
    browser; the Host header still names that page's host."""
    source = FakeSource([job("private-job")])
    for path in ("/", "/api/jobs", "/jobs/private-job"):
        status, _, body, _ = await answer(loopback(source), path, headers={"host": host})
        assert status == 403 and "private-job" not in body, (path, host)


@pytest.mark.parametrize("host", ["localhost:9100", "127.0.0.1", "[::1]:9100", "LOCALHOST"])
async def test_loopback_names_are_accepted(host: str) -> None:
    assert (await answer(loopback(FakeSource()), "/api/summary", headers={"host": host}))[0] == 200
