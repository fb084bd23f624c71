"""share_group and ``mqtt-listener run --workers N`` against a real Mosquitto: the stream is split, each job runs
once, a killed worker is restarted and its jobs still get results, SIGTERM drains the group, the group's HTTP
endpoints answer for every worker, and a worker that can never start makes the group give up.

The processor answers with its process id, so each result says which worker ran the job. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from Listener import EventListenerConfig
from Listener.cli.supervisor import Supervisor, WorkerLaunch
from tests.support.brokers import BrokerEndpoint, free_port
from tests.support.listener_processes import ROOT, CliProcess, connection_options
from tests.support.listeners import StartListener
from tests.support.redis_server import RedisServer, redis_server, unique_prefix

__all__ = ["redis_server"]  # the fixture, for pytest

pytestmark = pytest.mark.usefixtures("root_logger")

PROCESSOR = '''
import os
import time


def work(data, job_id):
    delay = float(os.environ.get("WORKER_TEST_DELAY", "0"))
    if delay:
        time.sleep(delay)
    return {"job_id": job_id, "pid": os.getpid(), "topic": data.get("_topic")}
'''
START_TIMEOUT = 30.0


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Callable[..., CliProcess]]:
    """``python -m Listener run worker_test_processors:work --workers N ...``; killed (with its workers) afterwards."""
    (tmp_path / "worker_test_processors.py").write_text(PROCESSOR, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    started: List[CliProcess] = []

    def start(workers: int, endpoint: BrokerEndpoint, prefix: str, *options: str,
              extra_env: Optional[Dict[str, str]] = None) -> CliProcess:
        args = ["run", "worker_test_processors:work", "--workers", str(workers), "--log-format", "json",
                *connection_options(endpoint), "--set", f"topic={prefix}/jobs", "--set", f"results_topic={prefix}/results",
                "--set", f"error_topic={prefix}/error", "--set", f"log_topic={prefix}/log",
                "--set", f"client_id=grp-{uuid.uuid4().hex[:8]}", "--set", "qos=1", "--set", "default_qos=1",
                "--set", "connect_timeout=5", *options]
        process = CliProcess(args, {**env, **(extra_env or {})})
        started.append(process)
        return process

    yield start
    for process in started:
        _kill_group(process)


def _worker_pids(process: CliProcess) -> Dict[int, int]:
    """Worker index -> pid of its latest start, from the supervisor's "Worker i started (pid N" lines."""
    pids: Dict[int, int] = {}
    for body in process.events():
        message = str(body.get("message", ""))
        if message.startswith("Worker ") and " started (pid " in message:
            index = int(message.split()[1])
            pids[index] = int(message.split("(pid ")[1].split(",")[0])
    return pids


def _kill_group(process: CliProcess) -> None:
    for pid in _worker_pids(process).values():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.kill()


def wait_count(process: CliProcess, event: str, count: int, timeout: float = START_TIMEOUT) -> None:
    """Block until ``count`` JSON log lines have ``"event": event`` (AssertionError after ``timeout`` or an exit)."""
    deadline = time.monotonic() + timeout
    with process._condition:
        while sum(1 for body in process.events() if body.get("event") == event) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"fewer than {count} {event!r} events within {timeout} s:\n{process.output()}"
            assert process.process.poll() is None, f"exited ({process.process.returncode}):\n{process.output()}"
            process._condition.wait(min(remaining, 0.2))


def results_by_job(messages: List[Any]) -> Dict[str, List[Dict[str, Any]]]:
    found: Dict[str, List[Dict[str, Any]]] = collections.defaultdict(list)
    for message in messages:
        body = json.loads(message.payload)
        found[body["job_id"]].append(body)
    return found


def http_get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_healthy(port: int, process: CliProcess, timeout: float = START_TIMEOUT) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        assert process.process.poll() is None, process.output()
        try:
            status, body = http_get(port, "/healthz")
        except OSError as exc:
            last = exc
        else:
            last = (status, body)
            if status == 200:
                return dict(json.loads(body))
        time.sleep(0.1)
    raise AssertionError(f"group not healthy within {timeout} s (last answer {last!r}):\n{process.output()}")


# -- share_group, in process ---------------------------------------------------------------------------


async def test_two_listeners_in_one_group_split_the_stream(start_listener: StartListener, probe: Any,
                                                           unique_topic: str) -> None:
    group = "g-" + uuid.uuid4().hex[:8]
    results = probe(f"{unique_topic}/results")
    first, _ = await start_listener(lambda data, job_id: {"job_id": job_id, "topic": data["_topic"], "who": 1},
                                    share_group=group, qos=1)
    second, _ = await start_listener(lambda data, job_id: {"job_id": job_id, "topic": data["_topic"], "who": 2},
                                     share_group=group, qos=1)
    sender = probe()
    for index in range(40):
        await asyncio.to_thread(sender.publish, f"{unique_topic}/jobs", f'job_id = "s-{index}"')
    messages = await asyncio.to_thread(results.wait_for, 40, 20.0, f"{unique_topic}/results")
    found = results_by_job(messages)
    assert sorted(found) == sorted(f"s-{index}" for index in range(40))
    assert all(len(bodies) == 1 for bodies in found.values())  # each message to one member only
    assert {body["topic"] for bodies in found.values() for body in bodies} == {f"{unique_topic}/jobs"}
    handled = collections.Counter(bodies[0]["who"] for bodies in found.values())
    assert handled[1] > 0 and handled[2] > 0, handled
    assert first.metrics()["messages_received"] + second.metrics()["messages_received"] == 40


# -- --workers ------------------------------------------------------------------------------------------


def test_three_workers_share_6000_qos1_jobs_each_once(group: Callable[..., CliProcess], probe: Any,
                                                      unique_topic: str, mqtt_endpoint: BrokerEndpoint) -> None:
    total = 6000
    results = probe(f"{unique_topic}/results")
    listeners = group(3, mqtt_endpoint, unique_topic)
    wait_count(listeners, "listener_started", 3)
    sender = probe()
    for index in range(total):
        sender.publish_nowait(f"{unique_topic}/jobs", f'job_id = "w-{index}"', qos=1)
    found = results_by_job(results.wait_until(lambda got: len(got) >= total, 180.0, f"{unique_topic}/results",
                                              f"{total} results"))
    listeners.process.send_signal(signal.SIGTERM)
    assert listeners.wait(60) == 0, listeners.output()
    found = results_by_job(results.messages(f"{unique_topic}/results"))
    assert len(found) == total
    duplicates = {job: len(bodies) for job, bodies in found.items() if len(bodies) != 1}
    assert not duplicates, f"jobs with more than one result: {list(duplicates.items())[:10]}"
    per_worker = collections.Counter(bodies[0]["pid"] for bodies in found.values())
    assert len(per_worker) == 3, per_worker
    assert min(per_worker.values()) >= 0.15 * total, per_worker
    assert set(per_worker) == set(_worker_pids(listeners).values())


def test_a_killed_worker_is_restarted_and_every_job_gets_a_result(group: Callable[..., CliProcess], probe: Any,
                                                                  unique_topic: str,
                                                                  mqtt_endpoint: BrokerEndpoint) -> None:
    total = 400
    results = probe(f"{unique_topic}/results")
    # cleansession false: the killed worker's unacknowledged messages stay in its session, which the restarted
    # worker (same client id) takes over.
    listeners = group(2, mqtt_endpoint, unique_topic, "--set", "cleansession=false",
                      extra_env={"WORKER_TEST_DELAY": "0.01"})
    wait_count(listeners, "listener_started", 2)
    sender = probe()
    for index in range(total):
        sender.publish_nowait(f"{unique_topic}/jobs", f'job_id = "k-{index}"', qos=1)
    results.wait_until(lambda got: len(got) >= 60, 60.0, f"{unique_topic}/results", "the first results")
    victim = _worker_pids(listeners)[0]
    os.kill(victim, signal.SIGKILL)
    restarted = listeners.wait_for_message("Restarting worker 0")
    assert restarted["level"] == "WARNING"
    ended = next(body for body in listeners.events() if "ended unexpectedly" in str(body.get("message")))
    assert "Worker 0" in ended["message"] and "killed by SIGKILL" in ended["message"]
    wait_count(listeners, "listener_started", 3)
    assert _worker_pids(listeners)[0] != victim
    found = results_by_job(results.wait_until(lambda got: len(results_by_job(got)) >= total, 120.0,
                                              f"{unique_topic}/results", f"results for all {total} jobs"))
    assert sorted(found) == sorted(f"k-{index}" for index in range(total))
    listeners.process.send_signal(signal.SIGTERM)
    assert listeners.wait(60) == 0, listeners.output()


def test_the_group_counters_never_go_down_when_a_worker_is_killed_and_restarted(
        group: Callable[..., CliProcess], probe: Any, unique_topic: str, mqtt_endpoint: BrokerEndpoint) -> None:
    """Issue 23 item 5: the restarted worker counts from 0, but the group's messages_received (and the worker's own)
    keeps what the killed process had counted: sampled all along the kill and the restart, it never decreases."""
    port = free_port()
    listeners = group(2, mqtt_endpoint, unique_topic, "--set", f"http_port={port}")
    wait_healthy(port, listeners)
    sender = probe()
    for index in range(40):
        sender.publish(f"{unique_topic}/jobs", f'job_id = "c-{index}"')
    samples: List[float] = []

    def sample() -> Dict[str, Any]:
        metrics = json.loads(http_get(port, "/metrics.json")[1])
        assert not samples or metrics["messages_received"] >= samples[-1], samples + [metrics["messages_received"]]
        samples.append(metrics["messages_received"])
        return dict(metrics)

    deadline = time.monotonic() + 20.0
    while (sample()["per_worker"]["0"]["metrics"] or {}).get("messages_received", 0) == 0 or samples[-1] < 40:
        assert time.monotonic() < deadline, f"worker 0 took no job: {samples[-1:]}\n{listeners.output()}"
        time.sleep(0.05)
    before = samples[-1]
    os.kill(_worker_pids(listeners)[0], signal.SIGKILL)
    deadline = time.monotonic() + START_TIMEOUT
    while not sample()["ready"] or sample()["per_worker"]["0"]["restarts"] < 1:  # down, restarted, up again
        assert time.monotonic() < deadline, listeners.output()
        time.sleep(0.05)
    sender.publish(f"{unique_topic}/jobs", 'job_id = "after"')
    while sample()["messages_received"] < before + 1:
        assert time.monotonic() < deadline, f"{samples[-5:]}\n{listeners.output()}"
        time.sleep(0.05)
    text = http_get(port, "/metrics")[1].decode()
    assert f"mqtt_listener_messages_received_total {samples[-1]:.1f}" in text, text
    listeners.process.send_signal(signal.SIGTERM)
    assert listeners.wait(60) == 0, listeners.output()


def test_sigterm_drains_the_group_and_the_endpoints_answer_for_every_worker(
        group: Callable[..., CliProcess], probe: Any, unique_topic: str, mqtt_endpoint: BrokerEndpoint) -> None:
    port = free_port()
    results = probe(f"{unique_topic}/results")
    listeners = group(2, mqtt_endpoint, unique_topic, "--set", f"http_port={port}",
                      extra_env={"WORKER_TEST_DELAY": "0.8"})
    health = wait_healthy(port, listeners)
    assert health["ready"] is True
    status, body = http_get(port, "/metrics.json")
    metrics = json.loads(body)
    assert status == 200 and metrics["workers"] == 2 and metrics["workers_ready"] == 2
    assert set(metrics["per_worker"]) == {"0", "1"}
    assert all(worker["healthy"] and worker["metrics"]["ready"] for worker in metrics["per_worker"].values())
    sender = probe()
    for index in range(4):
        sender.publish(f"{unique_topic}/jobs", f'job_id = "t-{index}"')
    deadline = time.monotonic() + 20.0
    while json.loads(http_get(port, "/metrics.json")[1])["in_flight"] < 2:  # both workers are in a job
        assert time.monotonic() < deadline, listeners.output()
        time.sleep(0.05)
    status, text = http_get(port, "/metrics")
    assert status == 200
    assert b'mqtt_listener_worker_up{worker="0"} 1.0' in text and b'mqtt_listener_worker_up{worker="1"} 1.0' in text
    assert b'mqtt_listener_worker_messages_received_total{worker="' in text
    listeners.process.send_signal(signal.SIGTERM)
    assert listeners.wait(60) == 0, listeners.output()
    found = results_by_job(results.messages(f"{unique_topic}/results"))
    assert len(found) >= 2, f"the two jobs in flight at SIGTERM did not finish:\n{listeners.output()}"
    assert any("All 2 workers stopped" in str(body.get("message")) for body in listeners.events())


async def test_a_worker_that_can_never_start_makes_the_group_give_up(
        tmp_path: Path, mqtt_auth_endpoint: BrokerEndpoint, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "worker_test_processors.py").write_text(PROCESSOR, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT)]))
    monkeypatch.chdir(tmp_path)
    overrides = {"host": mqtt_auth_endpoint.host, "port": mqtt_auth_endpoint.port, "username": mqtt_auth_endpoint.username,
                 "password": "wrong-" + uuid.uuid4().hex[:6], "reconnect_retries": 0, "connect_timeout": 5}
    config = EventListenerConfig(client_id="giveup", **overrides)  # type: ignore[arg-type]
    supervisor = Supervisor(WorkerLaunch("worker_test_processors:work", None, overrides, "text", "WARNING"), config, 2,
                            restart_base=0.05, restart_cap=0.2, quick_exit=30.0, max_quick_failures=2)
    caplog.set_level("WARNING", "Listener.supervisor")
    code = await asyncio.wait_for(supervisor.run(), 60)
    assert code == 1
    assert supervisor.gave_up is not None and "failed 2 times in a row" in supervisor.gave_up
    assert "giving up" in capsys.readouterr().err
    assert "Restarting worker" in caplog.text
    assert overrides["password"] not in caplog.text
    assert all(not worker.alive for worker in supervisor.workers)


async def test_a_worker_exiting_with_a_usage_error_is_not_restarted(
        tmp_path: Path, mqtt_endpoint: BrokerEndpoint, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.chdir(tmp_path)
    overrides = {"host": mqtt_endpoint.host, "port": mqtt_endpoint.port, "username": None, "password": None}
    config = EventListenerConfig(client_id="usage", **overrides)  # type: ignore[arg-type]
    # The CLI checks the processor before starting workers; called directly, every worker fails to import it (exit 2).
    supervisor = Supervisor(WorkerLaunch("no_such_worker_module:work", None, overrides, "text", "WARNING"), config, 2,
                            restart_base=0.05, quick_exit=30.0, max_quick_failures=5)
    assert await asyncio.wait_for(supervisor.run(), 60) == 2  # the group exits as its worker did
    assert supervisor.gave_up is not None and "usage error" in supervisor.gave_up
    assert all(worker.restarts == 0 for worker in supervisor.workers)
    assert "no_such_worker_module" in capfd.readouterr().err  # the worker's own message, on the shared stderr


def test_workers_drain_and_exit_when_the_supervisor_is_killed(group: Callable[..., CliProcess],
                                                              unique_topic: str, mqtt_endpoint: BrokerEndpoint) -> None:
    listeners = group(2, mqtt_endpoint, unique_topic)
    wait_count(listeners, "listener_started", 2)
    pids = list(_worker_pids(listeners).values())
    listeners.process.kill()  # SIGKILL: no signal is forwarded; the workers' stdin closes
    listeners.wait(20)
    deadline = time.monotonic() + 20.0
    alive = pids
    while alive:
        assert time.monotonic() < deadline, f"workers {alive} still running 20 s after the supervisor died"
        alive = [pid for pid in pids if _running(pid)]
        time.sleep(0.05)
    assert any("The supervisor is gone" in str(body.get("message")) for body in listeners.events()), listeners.output()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:  # a zombie has exited
        return handle.read().split(") ")[-1][:1] != "Z"


# -- the group's dashboard -------------------------------------------------------------------------------


def test_the_group_dashboard_shows_every_worker_and_with_redis_every_workers_jobs(
        group: Callable[..., CliProcess], probe: Any, unique_topic: str, mqtt_endpoint: BrokerEndpoint,
        redis_server: RedisServer) -> None:
    port = free_port()
    listeners = group(2, mqtt_endpoint, unique_topic, "--set", f"http_port={port}",
                      "--set", f"job_store={redis_server.url(unique_prefix('group'))}", "--set", "keep_job_input=true",
                      extra_env={"WORKER_TEST_DELAY": "0.05"})
    wait_healthy(port, listeners)
    summary = json.loads(http_get(port, "/api/summary")[1])
    assert summary["overview"]["kind"] == "group" and len(summary["overview"]["workers"]) == 2
    assert all(worker["ready"] for worker in summary["overview"]["workers"])
    sender = probe()
    for index in range(30):
        sender.publish(f"{unique_topic}/jobs", f'job_id = "g-{index:02d}"')
    deadline = time.monotonic() + 30.0
    while True:
        listing = json.loads(http_get(port, "/api/jobs?status=completed")[1])["listing"]
        if listing["total"] == 30:
            break
        assert time.monotonic() < deadline, f"{listing['total']} of 30 listed\n{listeners.output()}"
        time.sleep(0.1)
    pids = {json.loads(http_get(port, f"/api/jobs/g-{index:02d}")[1])["result"]["pid"] for index in range(30)}
    assert pids == set(_worker_pids(listeners).values()), pids  # both workers' jobs, read from Redis
    status, page = http_get(port, "/")
    assert status == 200 and b'id="workers-table"' in page and b"g-29" in page
    listeners.process.send_signal(signal.SIGTERM)
    assert listeners.wait(60) == 0, listeners.output()


def test_the_group_dashboard_without_a_shared_store_has_no_job_list(
        group: Callable[..., CliProcess], unique_topic: str, mqtt_endpoint: BrokerEndpoint) -> None:
    port = free_port()
    listeners = group(2, mqtt_endpoint, unique_topic, "--set", f"http_port={port}")
    wait_healthy(port, listeners)
    status, page = http_get(port, "/")
    assert status == 200 and b"keep their jobs to themselves" in page and b'id="workers-table"' in page
    assert json.loads(http_get(port, "/api/jobs")[1])["listing"] is None
    listeners.process.send_signal(signal.SIGTERM)
    assert listeners.wait(60) == 0, listeners.output()
