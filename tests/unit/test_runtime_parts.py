"""The listener's runtime parts on their own: worker threads, the delivery queue, the publisher, metrics."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, List, Optional, Tuple
from unittest.mock import AsyncMock

import pytest

from Listener.delivery import DeliveryQueue
from Listener.metrics import ListenerMetrics
from Listener.processing import JobTimeoutError, call_processor
from Listener.publisher import MAX_STRIKES, ConnectionLost, NotConnected, Publication, Publisher, RefusedTopic
from Listener.workers import ThreadWorkers


# -- worker threads ------------------------------------------------------------------------------


async def test_workers_run_calls_off_the_loop_thread() -> None:
    workers = ThreadWorkers(2)
    names = await asyncio.gather(*(workers.run(lambda: threading.current_thread().name) for _ in range(4)))
    assert threading.current_thread().name not in names
    assert workers.threads <= 2
    workers.shutdown()


async def test_workers_pass_exceptions_through() -> None:
    workers = ThreadWorkers(1)

    def boom() -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError):
        await workers.run(boom)
    assert await workers.run(lambda x: x + 1, 1) == 2


async def test_workers_use_up_to_size_threads_at_once() -> None:
    workers = ThreadWorkers(3)
    barrier = threading.Barrier(3, timeout=5)
    # Only passes if three calls run at the same time on three threads.
    assert await asyncio.gather(*(workers.run(barrier.wait) for _ in range(3))) is not None
    assert workers.threads == 3


async def test_a_hung_call_is_abandoned_and_replaced() -> None:
    workers = ThreadWorkers(1)
    release = threading.Event()
    with pytest.raises(asyncio.TimeoutError):
        await workers.run(release.wait, timeout=0.1)
    assert workers.abandoned == 1
    # The only slot was stuck: a new worker must take the next call.
    assert await asyncio.wait_for(workers.run(lambda: "next"), 5) == "next"
    release.set()


async def test_a_cancelled_call_is_abandoned() -> None:
    workers = ThreadWorkers(1)
    release = threading.Event()
    started = threading.Event()

    def hang() -> None:
        started.set()
        release.wait(10)

    task = asyncio.ensure_future(workers.run(hang))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert workers.abandoned == 1
    assert await asyncio.wait_for(workers.run(lambda: 7), 5) == 7
    release.set()


async def test_idle_workers_exit_and_shutdown_refuses_new_calls() -> None:
    workers = ThreadWorkers(2, idle_timeout=0.05)
    await workers.run(lambda: None)

    async def no_threads() -> None:
        while workers.threads:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(no_threads(), 5)
    assert await workers.run(lambda: "again") == "again"
    workers.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        await workers.run(lambda: None)


async def test_call_processor_times_out_async_and_sync_processors() -> None:
    async def slow(data: Any, job_id: str) -> None:
        await asyncio.sleep(10)

    with pytest.raises(JobTimeoutError, match="Timed out after 0.05 s"):
        await call_processor(slow, {}, "a", timeout=0.05)
    release = threading.Event()
    with pytest.raises(JobTimeoutError):
        await call_processor(lambda d, j: release.wait(10), {}, "b", workers=ThreadWorkers(1), timeout=0.05)
    with pytest.raises(JobTimeoutError):
        await call_processor(lambda d, j: release.wait(10), {}, "c", timeout=0.05)
    release.set()


async def test_a_timeout_error_raised_by_the_processor_is_not_a_job_timeout() -> None:
    async def raises(data: Any, job_id: str) -> None:
        raise TimeoutError("its own")

    with pytest.raises(TimeoutError) as caught:
        await call_processor(raises, {}, "a", timeout=5)
    assert not isinstance(caught.value, JobTimeoutError)


# -- delivery queue ------------------------------------------------------------------------------


async def test_delivery_queue_holds_acknowledged_messages_at_the_window() -> None:
    arrivals: List[int] = []
    queue = DeliveryQueue(2, on_arrival=lambda: arrivals.append(1))
    await queue.put("a")
    await queue.put("b")
    third = asyncio.ensure_future(queue.put("c"))
    await asyncio.sleep(0)
    assert not third.done() and queue.qsize() == 2
    queue.put_nowait("qos0")  # never held back
    assert queue.qsize() == 3
    assert queue.take() == "a"
    assert queue.take() == "b"
    await asyncio.wait_for(third, 1)
    assert [queue.take(), queue.take(), queue.take()] == ["qos0", "c", None]
    assert len(arrivals) == 4


async def test_closed_delivery_queue_takes_no_more_acknowledged_messages() -> None:
    queue = DeliveryQueue(5)
    await queue.put("kept")
    queue.close()
    blocked = asyncio.ensure_future(queue.put("stays with the broker"))
    await asyncio.sleep(0.01)
    assert queue.take() == "kept" and queue.take() is None
    assert not blocked.done()
    blocked.cancel()


# -- publisher -----------------------------------------------------------------------------------


def make_publisher(connected: List[bool], client: Any, limit: int = 10) -> Publisher:
    return Publisher(lambda: client, lambda: connected[0], ListenerMetrics(), lambda: "h:1", timeout=1.0,
                     max_in_flight=2, outbox_limit=limit)


async def test_publisher_keeps_publications_while_disconnected_and_flushes_them_in_order() -> None:
    client = AsyncMock()
    connected = [False]
    publisher = make_publisher(connected, client)
    assert await publisher.deliver(Publication("t/1", b"1", 1, False)) is None
    assert await publisher.deliver(Publication("t/2", b"2", 0, False)) is None
    assert publisher.pending == 2 and client.publish.call_count == 0
    with pytest.raises(NotConnected, match="h:1"):
        await publisher.publish("t/x", b"x", 0, False)
    connected[0] = True
    assert await publisher.flush() == 2
    assert [c.args for c in client.publish.call_args_list] == [("t/1", b"1", 1, False), ("t/2", b"2", 0, False)]
    assert publisher.pending == 0


async def test_publisher_reports_what_it_cannot_keep_or_send() -> None:
    client = AsyncMock()
    connected = [False]
    publisher = make_publisher(connected, client, limit=1)
    assert await publisher.deliver(Publication("t/1", b"1", 0, False)) is None
    reason = await publisher.deliver(Publication("t/2", b"2", 0, False))
    assert reason is not None and "already waiting" in reason
    assert publisher.discard() == 1
    connected[0] = True
    client.publish.side_effect = RuntimeError("broker said no")
    assert await publisher.deliver(Publication("t/3", b"3", 1, False)) == "RuntimeError: broker said no"


async def test_publisher_bounds_qos1_publications_in_flight() -> None:
    gate = asyncio.Event()
    in_flight = 0
    peak = 0

    async def publish(*args: Any) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await gate.wait()
        in_flight -= 1

    client = AsyncMock()
    client.publish.side_effect = publish
    publisher = make_publisher([True], client)
    sends = [asyncio.ensure_future(publisher.publish(f"t/{i}", b"", 1, False)) for i in range(6)]
    await asyncio.sleep(0.01)
    assert peak == 2
    gate.set()
    await asyncio.wait_for(asyncio.gather(*sends), 2)


async def test_publisher_times_out_a_hung_publish() -> None:
    async def hang(*args: Any) -> None:
        await asyncio.sleep(10)

    client = AsyncMock()
    client.publish.side_effect = hang
    publisher = Publisher(lambda: client, lambda: True, ListenerMetrics(), lambda: "h:1", timeout=0.05)
    assert await publisher.deliver(Publication("t", b"", 0, False)) == "timed out"


async def test_publisher_refuses_topics_brokers_disconnect_for_without_sending() -> None:
    """Issue 9 item 1: the topic rule applies to every publication, whatever path it takes."""
    client = AsyncMock()
    publisher = make_publisher([True], client)
    for topic in ("$SYS/x", "r/\x01", "r/\x85", "r/\uffff", "a/+", ""):
        with pytest.raises(RefusedTopic):
            await publisher.publish(topic, b"{}", 1, False)
        reason = await publisher.deliver(Publication(topic, b"{}", 1, False))
        assert reason is not None and "Topic" in reason
    assert client.publish.call_count == 0 and publisher.pending == 0


async def test_a_cancellation_from_inside_the_client_is_a_lost_connection_and_the_publication_is_kept() -> None:
    """Issue 9 item 7: amqtt cancels its PUBACK waiter when the connection resets; that must not lose the result."""
    connected = [True]

    async def reset_mid_flight(*args: Any) -> None:
        connected[0] = False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter.cancel()  # what amqtt's handler.stop() does to the PUBACK waiter
        await waiter

    client = AsyncMock()
    client.publish.side_effect = reset_mid_flight
    publisher = make_publisher(connected, client)
    with pytest.raises(ConnectionLost):
        await publisher.publish("t/1", b"1", 1, False)
    assert await publisher.deliver(Publication("t/1", b"1", 1, False), job_id="j1") is None
    assert publisher.pending == 1


async def test_a_publication_that_ends_the_connection_twice_is_dropped_and_reported() -> None:
    """Issue 9 item 1: kept, retried once after the reconnect, then dropped and reported, not retried forever."""
    connected = [True]
    dropped: List[Tuple[Publication, Optional[str], str]] = []

    async def on_dropped(publication: Publication, job_id: Optional[str], reason: str) -> None:
        dropped.append((publication, job_id, reason))

    async def poison(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if payload == b"poison":
            connected[0] = False
            raise ConnectionResetError("broker closed the connection")

    client = AsyncMock()
    client.publish.side_effect = poison
    metrics = ListenerMetrics()
    publisher = Publisher(lambda: client, lambda: connected[0], metrics, lambda: "h:1", timeout=1.0,
                          on_dropped=on_dropped)
    assert await publisher.deliver(Publication("t/big", b"poison", 1, False), job_id="big-1") is None
    assert publisher.pending == 1 and dropped == []
    assert await publisher.deliver(Publication("t/next", b"fine", 1, False), job_id="next-1") is None  # not connected: kept
    connected[0] = True  # reconnected
    assert await publisher.flush() == 0  # the poison ends the connection again: dropped, the rest waits
    assert [(p.topic, job_id) for p, job_id, _ in dropped] == [("t/big", "big-1")]
    assert f"given up after {MAX_STRIKES} attempts" in dropped[0][2]
    assert publisher.pending == 1 and metrics.publish_errors == 1
    connected[0] = True
    assert await publisher.flush() == 1 and publisher.pending == 0
    assert len(dropped) == 1


async def test_a_publication_that_only_met_a_down_connection_is_never_dropped() -> None:
    connected = [False]
    client = AsyncMock()
    publisher = make_publisher(connected, client)
    assert await publisher.deliver(Publication("t/1", b"1", 1, False)) is None
    for _ in range(5):
        assert await publisher.flush() == 0  # NotConnected: nothing was sent, no strike
    connected[0] = True
    assert await publisher.flush() == 1


# -- metrics -------------------------------------------------------------------------------------


def test_histogram_is_cumulative() -> None:
    metrics = ListenerMetrics()
    for seconds in (0.0005, 0.003, 0.003, 2.0, 100.0):
        metrics.observe_duration(seconds)
    histogram = metrics.histogram()
    assert histogram["count"] == 5
    assert histogram["buckets"]["0.001"] == 1 and histogram["buckets"]["0.005"] == 3
    assert histogram["buckets"]["2.5"] == 4 and histogram["buckets"]["+Inf"] == 5
    assert histogram["sum"] == pytest.approx(102.0065)


async def test_run_inline_processors_are_called_on_the_loop_thread() -> None:
    from Listener import run_inline

    @run_inline
    def quick(data: Any, job_id: str) -> str:
        return threading.current_thread().name

    assert await call_processor(quick, {}, "j", workers=ThreadWorkers(1)) == threading.current_thread().name


async def test_delivery_queue_waiters_never_overtake() -> None:
    queue = DeliveryQueue(1)
    await queue.put("a")
    b = asyncio.ensure_future(queue.put("b"))
    await asyncio.sleep(0)
    assert queue.take() == "a"  # frees the place: reserved for b, which has not run yet
    c = asyncio.ensure_future(queue.put("c"))
    await asyncio.sleep(0)
    await asyncio.wait_for(b, 1)
    assert not c.done()
    assert queue.take() == "b"
    await asyncio.wait_for(c, 1)
    assert queue.take() == "c"
