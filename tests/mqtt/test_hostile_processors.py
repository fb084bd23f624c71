"""Hostile processors against Mosquitto: their own CancelledError, SystemExit with ``job_timeout``, and a
processor that swallows cancellation. Each costs its job (FAILED, an error event on the broker), the
connection stays up, and the QoS 1 jobs published right behind it are all processed."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict

import pytest

from Listener import JobStatus
from Listener.processing import containment
from tests.support.brokers import MqttProbe
from tests.support.job_messages import body, publish_jobs, results_for

pytestmark = pytest.mark.timeout(60)

AFTER = ["after-1", "after-2", "after-3", "after-4"]


async def error_events(watcher: MqttProbe, topic: str, count: int) -> Dict[str, Dict[str, Any]]:
    found = await asyncio.to_thread(watcher.wait_for, count, 10.0, topic)
    return {body(message)["job_id"]: body(message) for message in found}


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_processors_own_cancelled_error_does_not_drop_the_connection_nor_the_next_qos1_jobs(
        kind: str, start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    async def async_processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if job_id == "cancels":
            await asyncio.sleep(0.2)  # the jobs behind it are queued by then
            raise asyncio.CancelledError()
        return {"job_id": job_id}

    def sync_processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if job_id == "cancels":
            raise asyncio.CancelledError()
        return {"job_id": job_id}

    results, errors = f"{unique_topic}/results", f"{unique_topic}/error"
    listener, run = await start_listener(async_processor if kind == "async" else sync_processor, qos=1)
    watcher = probe(results, errors)
    await publish_jobs(probe(), f"{unique_topic}/jobs", ["cancels", *AFTER])
    found = await results_for(watcher, results, AFTER)
    assert sorted(body(m)["job_id"] for m in found) == AFTER
    event = (await error_events(watcher, errors, 1))["cancels"]
    assert event["error_type"] == "processing_error" and event["error_message"] == "CancelledError"
    job = await listener.get_job_status("cancels")
    assert job is not None and job.status is JobStatus.FAILED
    assert listener.metrics()["connection_losses"] == 0 and not run.done()


async def test_system_exit_from_an_async_processor_with_job_timeout_fails_only_its_job(
        start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        await asyncio.sleep(0)
        if job_id == "exits":
            raise SystemExit(0)
        return {"job_id": job_id}

    results, errors = f"{unique_topic}/results", f"{unique_topic}/error"
    listener, run = await start_listener(processor, qos=1, job_timeout=5)
    watcher = probe(results, errors)
    await publish_jobs(probe(), f"{unique_topic}/jobs", ["exits", *AFTER])
    await results_for(watcher, results, AFTER)
    event = (await error_events(watcher, errors, 1))["exits"]
    assert event["error_type"] == "processing_error" and event["error_message"] == "SystemExit: 0"
    assert not run.done() and listener.is_running


async def swallowing(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
    """A retry loop with a bare except: every cancellation is swallowed."""
    while job_id == "stubborn":
        try:
            await asyncio.sleep(0.05)
        except BaseException:  # noqa: B036 - the hostile processor under test
            continue
    return {"job_id": job_id}


@pytest.fixture
def quick_abandon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containment, "ABANDON_AFTER", 0.2)


@pytest.mark.usefixtures("quick_abandon")
async def test_a_processor_swallowing_cancellation_is_abandoned_at_its_timeout(
        start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    results, errors = f"{unique_topic}/results", f"{unique_topic}/error"
    listener, run = await start_listener(swallowing, qos=1, job_timeout=0.3)
    watcher = probe(results, errors)
    await publish_jobs(probe(), f"{unique_topic}/jobs", ["stubborn", *AFTER])
    await results_for(watcher, results, AFTER)
    event = (await error_events(watcher, errors, 1))["stubborn"]
    assert event["error_type"] == "timeout" and event["error_message"] == "Timed out after 0.3 s"
    job = await listener.get_job_status("stubborn")
    assert job is not None and job.status is JobStatus.FAILED and not run.done()


@pytest.mark.usefixtures("quick_abandon")
async def test_stop_ends_run_when_a_processor_swallows_cancellation(
        start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    listener, run = await start_listener(swallowing, qos=1, shutdown_grace_period=0.3)
    await publish_jobs(probe(), f"{unique_topic}/jobs", ["stubborn"])

    async def running() -> bool:
        job = await listener.get_job_status("stubborn")
        return job is not None and job.status is JobStatus.RUNNING

    async def until_running() -> None:
        while not await running():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(until_running(), 10)
    listener.stop()
    await asyncio.wait_for(run, 10)
    job = await listener.get_job_status("stubborn")
    assert job is not None and job.status is JobStatus.FAILED and job.error == "Cancelled: listener stopped"
