"""The running listener with a mocked client: signals, job timeouts, metrics, publications kept during an outage."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any, Dict, List

from Listener import JobStatus
from tests.support.mocked_listeners import feed, mocked_listener, published_json, wait_forever


async def test_sigterm_stops_a_running_listener_after_its_job() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    listener = mocked_listener()
    feed(listener, 'job_id = "j1"')
    started = asyncio.Event()
    finished: List[str] = []

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        started.set()
        await asyncio.sleep(0.2)
        finished.append(job_id)
        return {"job_id": job_id}

    run = asyncio.create_task(listener.run(processor, handle_signals=True))
    await asyncio.wait_for(started.wait(), 5)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(run, 5)
    assert finished == ["j1"]
    assert published_json(listener, "test/results") == [{"job_id": "j1"}]
    # The handlers are removed with the run: SIGTERM is back to its previous handler.
    assert signal.getsignal(signal.SIGTERM) is previous


async def test_install_signal_handlers_before_run() -> None:
    listener = mocked_listener()
    feed(listener)
    listener.install_signal_handlers([signal.SIGUSR1])
    run = asyncio.create_task(listener.run())
    await listener.wait_until_ready(5)
    os.kill(os.getpid(), signal.SIGUSR1)
    await asyncio.wait_for(run, 5)
    assert not listener.is_running


async def test_job_timeout_cancels_an_async_job_and_the_next_one_runs() -> None:
    listener = mocked_listener(job_timeout=0.1)
    cancelled: List[str] = []

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if job_id == "slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(job_id)
                raise
        return {"job_id": job_id}

    assert await listener.process_message({"job_id": "slow"}, processor) is None
    assert await listener.process_message({"job_id": "fast"}, processor) == {"job_id": "fast"}
    assert cancelled == ["slow"]
    job = await listener.get_job_status("slow")
    assert job is not None and job.status is JobStatus.FAILED and job.error == "Timed out after 0.1 s"
    [error] = published_json(listener, "test/error")
    assert error["error_type"] == "timeout" and error["job_id"] == "slow"
    assert listener.metrics()["errors"] == {"timeout": 1}


async def test_metrics_follow_the_jobs() -> None:
    listener = mocked_listener(duplicate_action="skip")

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if data.get("fail"):
            raise ValueError("no")
        return {"ok": True}

    await listener.process_message('job_id = "a"', processor)
    await listener.process_message('job_id = "a"', processor)
    await listener.process_message('job_id = "b"\nfail = true', processor)
    await listener.process_message(b"not toml ===", processor)
    snapshot = listener.metrics()
    assert snapshot["messages_received"] == 4 and snapshot["messages_rejected"] == 1
    assert snapshot["jobs"] == {"duplicate": 1, "failed": 1}
    assert snapshot["jobs_finished"] == {"completed": 1, "duplicate": 1, "failed": 1}
    assert snapshot["errors"] == {"processing_error": 1, "invalid_payload": 1}
    assert snapshot["processing_seconds"]["count"] == 2
    assert snapshot["publishes"] == listener.client.publish.await_count
    assert snapshot["in_flight"] == 0 and snapshot["draining"] is False and snapshot["connected"] is False
    json.dumps(snapshot)


# Results kept during an outage and sent after the reconnect, and those given up on at stop, need a
# connection that really goes down: tests/mqtt/test_faults.py
# (test_result_finished_during_an_outage_is_published_after_reconnect and the one after it).


async def test_grace_period_cancels_concurrent_jobs_that_run_too_long() -> None:
    listener = mocked_listener(max_concurrent_jobs=3, shutdown_grace_period=0.2)
    feed(listener, 'job_id = "x1"', 'job_id = "x2"')

    async def processor(data: Dict[str, Any], job_id: str) -> None:
        await asyncio.sleep(30)

    run = asyncio.create_task(listener.run(processor))

    async def both_running() -> None:
        while len(await listener.get_running_jobs()) < 2:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(both_running(), 5)
    listener.stop()
    await asyncio.wait_for(run, 5)
    jobs = await listener.get_all_jobs()
    assert {job.status for job in jobs.values()} == {JobStatus.FAILED}
    assert all(job.error == "Cancelled: listener stopped" for job in jobs.values())


async def test_a_stop_before_run_makes_run_return_at_once_and_is_used_up() -> None:
    listener = mocked_listener()
    feed(listener)
    listener.stop()
    await asyncio.wait_for(listener.run(), 5)
    listener.client.connect.assert_not_awaited()
    run = asyncio.create_task(listener.run())  # the stop was used up: this run serves
    await listener.wait_until_ready(5)
    listener.stop()
    await asyncio.wait_for(run, 5)
    listener.client.connect.assert_awaited_once()


async def test_stop_while_connecting_returns_at_once() -> None:
    listener = mocked_listener(connect_timeout=30)
    listener.client.connect.side_effect = wait_forever  # a broker that never answers CONNECT
    run = asyncio.create_task(listener.run())

    async def connecting() -> None:
        while listener.client.connect.await_count == 0:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(connecting(), 5)
    listener.stop()
    await asyncio.wait_for(run, 2)
    assert not listener.is_running
    listener.client.subscribe.assert_not_awaited()


async def test_concurrent_jobs_waiting_for_room_in_a_full_store_all_get_in() -> None:
    listener = mocked_listener(max_concurrent_jobs=4, max_jobs_in_memory=2)
    feed(listener, *(f'job_id = "full-{i}"' for i in range(8)))
    done: List[str] = []

    async def processor(data: Dict[str, Any], job_id: str) -> None:
        await asyncio.sleep(0.01)
        done.append(job_id)

    run = asyncio.create_task(listener.run(processor))

    async def all_done() -> None:
        while len(done) < 8:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(all_done(), 10)
    listener.stop()
    await asyncio.wait_for(run, 5)
    assert sorted(done) == [f"full-{i}" for i in range(8)]
    assert len(listener.jobs) <= 2


async def test_the_next_job_starts_while_a_qos1_result_awaits_its_acknowledgement() -> None:
    listener = mocked_listener(default_qos=1)
    feed(listener, 'job_id = "p1"', 'job_id = "p2"')
    acknowledged = asyncio.Event()
    sent: List[str] = []

    async def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        sent.append(json.loads(payload)["job_id"])
        await acknowledged.wait()  # the broker's PUBACK

    listener.client.publish.side_effect = publish
    started: List[str] = []

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        started.append(job_id)
        return {"job_id": job_id}

    run = asyncio.create_task(listener.run(processor))

    async def both_sent() -> None:
        while len(sent) < 2:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(both_sent(), 5)
    assert started == ["p1", "p2"] and sent == ["p1", "p2"]  # p2 ran before p1's result was acknowledged
    assert not await listener.is_job_completed("p1")
    assert listener.metrics()["in_flight"] == 2
    acknowledged.set()
    listener.stop()
    await asyncio.wait_for(run, 5)
    assert await listener.is_job_completed("p1") and await listener.is_job_completed("p2")


async def test_a_result_unacknowledged_when_the_grace_period_ends_leaves_its_job_to_run_again() -> None:
    """A QoS 1 result whose PUBACK never came before the grace period ended: the job is not COMPLETED (the
    result may not have reached the broker) but cut short, so when its message is redelivered it runs again
    instead of being skipped as a duplicate."""
    listener = mocked_listener(default_qos=1, shutdown_grace_period=0.1)
    feed(listener, 'job_id = "r1"')
    sent = asyncio.Event()

    async def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if topic == "test/results":
            sent.set()
            await asyncio.Event().wait()  # the broker never acknowledges it

    listener.client.publish.side_effect = publish
    calls: List[str] = []

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        calls.append(job_id)
        return {"job_id": job_id}

    run = asyncio.create_task(listener.run(processor))
    await asyncio.wait_for(sent.wait(), 10)
    listener.stop()
    await asyncio.wait_for(run, 10)
    job = await listener.get_job_status("r1")
    assert job is not None and (job.status, job.error) == (JobStatus.FAILED, "Cancelled: listener stopped")

    listener.client.publish.side_effect = None
    assert await listener.process_message({"job_id": "r1"}, processor) == {"job_id": "r1"}
    assert calls == ["r1", "r1"]
    job = await listener.get_job_status("r1")
    assert job is not None and job.status is JobStatus.COMPLETED
