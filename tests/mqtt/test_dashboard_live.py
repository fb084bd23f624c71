"""The dashboard of a running listener (``http_port=0``) with jobs published to Mosquitto: every job store,
the token off loopback, and the probes that never need it."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import pytest

from tests.support.redis_server import REDIS_BINARY, RedisServer, redis_server, unique_prefix
from tests.support.waiting import until

__all__ = ["redis_server"]  # the fixture, for pytest

IO_TIMEOUT = 5.0
TOKEN = "dashboard-token-for-tests-0123"


async def http(port: int, path: str, headers: Optional[Dict[str, str]] = None, method: str = "GET",
               body: bytes = b"") -> Tuple[int, Dict[str, str], bytes]:
    """One request to 127.0.0.1:port; (status, headers lower-cased, body)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)
    try:
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        length = f"Content-Length: {len(body)}\r\n" if body else ""
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}{length}Connection: close\r\n\r\n".encode()
                     + body)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), IO_TIMEOUT)
    finally:
        writer.close()
    head, _, content = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    found = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), found, content


async def api(port: int, path: str, headers: Optional[Dict[str, str]] = None) -> Any:
    status, _, body = await http(port, path, headers)
    assert status == 200, (path, status, body[:300])
    return json.loads(body)


def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
    if data.get("fail"):
        raise ValueError(f"asked to fail <b>{job_id}</b>")
    return {"doubled": int(data.get("n", 0)) * 2}


@pytest.fixture(params=["memory", "sqlite", "redis"])
def job_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    if REDIS_BINARY is None:  # pragma: no cover - CI installs redis-server
        pytest.skip("redis-server is not installed")
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url(unique_prefix("dashboard"))


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_the_dashboard_follows_jobs_on_every_store(start_listener: Callable[..., Any], probe: Any,
                                                         unique_topic: str, job_store: str, qos: int) -> None:
    listener, _ = await start_listener(processor, http_port=0, qos=qos, default_qos=qos, job_store=job_store,
                                       keep_job_input=True)
    port = listener.http_port
    sender = probe()
    for n in range(5):
        sender.publish(f"{unique_topic}/jobs", f'job_id = "ok-{n}"\nn = {n}', qos=qos)
    sender.publish(f"{unique_topic}/jobs", 'job_id = "bad-1"\nfail = true', qos=qos)

    async def finished() -> Any:
        summary = await api(port, "/api/summary")
        return summary if summary["counts"]["completed"] == 5 and summary["counts"]["failed"] == 1 else None

    summary = await until(finished, "5 completed and 1 failed job in /api/summary")
    assert summary["overview"]["state"] == "running" and summary["overview"]["subscriptions"]
    assert summary["metrics"]["messages_received"] == 6
    listing = (await api(port, "/api/jobs"))["listing"]
    assert {row["job_id"] for row in listing["jobs"]} == {f"ok-{n}" for n in range(5)} | {"bad-1"}
    failed = (await api(port, "/api/jobs?status=failed"))["listing"]["jobs"]
    assert [row["job_id"] for row in failed] == ["bad-1"]
    detail = await api(port, "/api/jobs/bad-1")
    assert detail["status"] == "failed" and detail["error"].startswith("ValueError: asked to fail")
    ok = await api(port, "/api/jobs/ok-3")
    assert ok["result"] == {"doubled": 6} and ok["input"]["n"] == 3 and ok["attempts"] == 1
    status, headers, page = await http(port, "/jobs/bad-1")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"asked to fail &lt;b&gt;bad-1&lt;/b&gt;" in page and b"<b>bad-1</b>" not in page
    status, _, overview = await http(port, "/?status=failed")
    assert status == 200 and b'id="count-completed">5<' in overview and b"bad-1" in overview


async def test_input_is_hidden_when_keep_job_input_is_off(
        start_listener: Callable[..., Any], probe: Any, unique_topic: str, tmp_path: Path) -> None:
    # after_recording makes the store keep the input (to resume the job): the dashboard still hides it.
    listener, _ = await start_listener(processor, http_port=0, qos=1, ack_policy="after_recording",
                                       job_store=f"sqlite:///{tmp_path / 'jobs.db'}")
    port = listener.http_port
    probe().publish(f"{unique_topic}/jobs", 'job_id = "quiet"\nn = 1\ntoken = "from-the-message"')

    async def done() -> Any:
        status, _, body = await http(port, "/api/jobs/quiet")
        return status == 200 and json.loads(body)["status"] == "completed" and json.loads(body)
    detail = await until(done, "job quiet completed")
    assert detail["input"] is None
    _, _, page = await http(port, "/jobs/quiet")
    assert b"from-the-message" not in page and b"keep_job_input = true" in page


async def test_off_loopback_job_data_needs_the_token_and_probes_stay_open(
        start_listener: Callable[..., Any], probe: Any, unique_topic: str) -> None:
    listener, _ = await start_listener(processor, http_port=0, qos=1, http_host="0.0.0.0", http_token=TOKEN)
    port = listener.http_port
    probe().publish(f"{unique_topic}/jobs", 'job_id = "private"\nn = 2')
    assert (await http(port, "/healthz"))[0] == 200 and (await http(port, "/readyz"))[0] == 200
    for path in ("/", "/api/jobs", "/api/summary", "/jobs/private", "/api/jobs/private"):
        status, headers, body = await http(port, path)
        assert status == 401 and b"private" not in body and "www-authenticate" in headers, path
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    await until(lambda: _completed(port, "private", bearer), "job private completed")
    status, headers, _ = await http(port, "/login", method="POST", body=urllib.parse.urlencode({"token": TOKEN}).encode(),
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 303 and TOKEN not in headers["set-cookie"]
    cookie = {"Cookie": headers["set-cookie"].split(";")[0]}
    assert (await http(port, "/", cookie))[0] == 200


async def _completed(port: int, job_id: str, headers: Dict[str, str]) -> bool:
    status, _, body = await http(port, f"/api/jobs/{job_id}", headers)
    return status == 200 and json.loads(body)["status"] == "completed"


async def test_off_loopback_without_a_token_the_dashboard_is_closed(
        start_listener: Callable[..., Any], unique_topic: str) -> None:
    listener, _ = await start_listener(processor, http_port=0, http_host="0.0.0.0")
    port = listener.http_port
    status, _, body = await http(port, "/")
    assert status == 403 and b"http_token" in body
    assert (await http(port, "/healthz"))[0] == 200
    assert (await http(port, "/metrics.json"))[0] == 200
