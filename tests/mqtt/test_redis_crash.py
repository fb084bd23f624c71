"""The Redis job store across a SIGKILL or a stop, with real Mosquitto and a real ``redis-server`` (issue 23, item 1).

A listener process running QoS 1 jobs is killed and a new one starts at once with the same client id and a
persistent session, as ``--workers`` restarts a worker. The jobs that were running at the kill still have
active records owned by the dead process: their redelivered messages must wait for its owner lease to lapse
and then run again, never be acknowledged as duplicates (which lost them: the records expired later, the
broker had nothing left to redeliver).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Set

import pytest

from Listener import EventListener, EventListenerConfig

from tests.support.brokers import BrokerEndpoint, MqttProbe
from tests.support.job_messages import body
from tests.support.listener_processes import ListenerProcess
from tests.support.listeners import listener_config, run_until_ready
from tests.support.redis_server import RedisServer, redis_server, unique_prefix

__all__ = ["redis_server"]  # the fixture, for pytest

pytestmark = pytest.mark.timeout(90)

JOBS = 24
CONCURRENCY = 6
JOB_SECONDS = 0.5


@pytest.mark.parametrize("ack_policy", ["after_processing", "after_recording"])
async def test_jobs_running_at_a_sigkill_run_again_after_an_immediate_restart(
        mqtt_endpoint: BrokerEndpoint, unique_topic: str, probe: Callable[..., MqttProbe],
        processes: Callable[..., ListenerProcess], redis_server: RedisServer, tmp_path: Path, ack_policy: str) -> None:
    """after_processing: the running jobs' messages come again and wait for the dead owner's lease; after_recording:
    they were acknowledged once recorded, and the new process takes the unfinished records over (orphans)."""
    runs = tmp_path / "runs.txt"
    results = f"{unique_topic}/results"
    watcher = probe(results)
    options = ("--client-id", f"redis-crash-{os.urandom(4).hex()}", "--persistent", "--max-concurrent",
               str(CONCURRENCY), "--job-store", redis_server.url(unique_prefix("crash")), "--runs-file", str(runs),
               "--ack-policy", ack_policy)
    job_ids = [f"c-{n:02d}" for n in range(JOBS)]

    first = processes(mqtt_endpoint, unique_topic, JOB_SECONDS, *options)
    await asyncio.to_thread(first.wait_line, "READY")
    sender = probe()
    await asyncio.to_thread(lambda: [sender.publish(f"{unique_topic}/jobs", f'job_id = "{job_id}"\n', qos=1)
                                     for job_id in job_ids])
    # Killed while a second round of jobs runs: the first round finished, the second is RUNNING in Redis.
    await asyncio.wait_for(_until(lambda: len(first.started_jobs()) > CONCURRENCY, every=0.02), 20)
    first.kill()
    running = set(first.started_jobs()) - {line.split(" ", 1)[1] for line in first.lines if line.startswith("DONE ")}
    assert running, "no job was running at the kill: the test proves nothing"

    second = processes(mqtt_endpoint, unique_topic, JOB_SECONDS, *options)  # at once, same session
    await asyncio.to_thread(second.wait_line, "READY")

    def missing() -> Set[str]:
        return set(job_ids) - {body(message)["job_id"] for message in watcher.messages(results)}

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(_until(lambda: not missing()), 20)
    assert not missing(), f"jobs lost: {sorted(missing())} (running at the kill: {sorted(running)})"
    ran = Counter(line.split()[0] for line in runs.read_text().splitlines())
    assert set(ran) == set(job_ids)
    assert running <= set(second.started_jobs())  # run again, not acknowledged as duplicates
    assert all(count <= 2 for count in ran.values()), ran


async def _until(check: Callable[[], Any], every: float = 0.1) -> None:
    while not check():
        await asyncio.sleep(every)


async def test_a_message_waiting_for_a_job_active_elsewhere_is_left_with_the_broker_at_stop(
        mqtt_endpoint: BrokerEndpoint, unique_topic: str, probe: Callable[..., MqttProbe], redis_server: RedisServer,
        caplog: pytest.LogCaptureFixture) -> None:
    """Worker A runs job "held"; worker B receives its id and waits (BUSY). B stops meanwhile: the message is not
    acknowledged (never as a duplicate), so B's next session gets it again, and then it is a duplicate of the
    job A finished."""
    url = redis_server.url(unique_prefix("busy-stop"))
    started, release = threading.Event(), threading.Event()

    def held(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        started.set()
        assert release.wait(20)  # noqa: S101 - bounded: the test releases it
        return {"by": "a"}

    def never(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        raise AssertionError(f"job {job_id} ran on worker B")

    caplog.set_level(logging.INFO, logger="Listener")
    a = EventListener(EventListenerConfig(job_store=url, client_id="worker-a"))
    config = listener_config(mqtt_endpoint, unique_topic, job_store=url, qos=1, cleansession=False,
                             client_id=f"worker-b-{os.urandom(4).hex()}")
    b = EventListener(config)
    running = asyncio.create_task(a.process_message({"job_id": "held"}, held))
    try:
        assert await asyncio.to_thread(started.wait, 10)
        task = await run_until_ready(b, never)
        await asyncio.to_thread(probe().publish, f"{unique_topic}/jobs", 'job_id = "held"\n', 1)

        def busy() -> bool:
            return any(getattr(record, "event", None) == "job_busy" for record in caplog.records)
        await asyncio.wait_for(_until(busy, every=0.02), 10)
        b.stop()
        await asyncio.wait_for(task, 15)
        release.set()
        assert await asyncio.wait_for(running, 10) == {"by": "a"}

        again = EventListener(config)  # B's next session: the broker sends the message again
        task = await run_until_ready(again, never)
        try:
            async def counted() -> bool:
                job = await again.get_job_status("held")
                return job is not None and job.duplicate_count == 1
            await asyncio.wait_for(_until_async(counted), 15)
        finally:
            again.stop()
            await asyncio.wait_for(task, 15)
    finally:
        release.set()
        await a.__aexit__(None, None, None)


async def _until_async(check: Callable[[], Awaitable[bool]], every: float = 0.05) -> None:
    while not await check():
        await asyncio.sleep(every)
