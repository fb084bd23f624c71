"""Unit tests for Listener.mqtt.delivery_queue: the bounded queue between the client and the listener."""

from __future__ import annotations

import asyncio
from typing import Any, List

from Listener.core.eager import EagerFuture
from Listener.mqtt.delivery_queue import DeliveryQueue, Ticket


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


async def test_closed_delivery_queue_takes_no_more_qos0_messages() -> None:
    """Regression: QoS 0 messages arriving after stop() were still queued and taken, so a steady stream kept
    the drain going until the grace period ran out (and cut short the job then running)."""
    queue = DeliveryQueue(5)
    queue.put_nowait("before")
    queue.close()
    queue.put_nowait("after")
    assert queue.take() == "before" and queue.take() is None
    assert queue.after_close == 1 and queue.dropped == 0


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


async def test_peek_shows_the_next_messages_in_order_and_takes_none() -> None:
    queue = DeliveryQueue(1, hold_acks=True)
    await _queued(queue, "a", "b", "c")
    held, queued_bytes = queue.unacknowledged, queue.queued_bytes
    assert queue.peek(2) == ["a", "b"]
    assert queue.peek(10) == ["a", "b", "c"] and queue.peek(0) == [] and queue.peek(-1) == []
    assert queue.qsize() == 3 and queue.unacknowledged == held and queue.queued_bytes == queued_bytes
    assert [queue.take() for _ in range(3)] == ["a", "b", "c"]
    assert queue.peek(2) == []


# -- ack_policy = "after_processing": the ordered ledger ----------------------------------------


async def _queued(queue: DeliveryQueue, *items: str) -> List["asyncio.Task[None]"]:
    """Start amqtt's put() for each item (one task each, as amqtt does) and let them queue."""
    puts = [asyncio.ensure_future(queue.put(item)) for item in items]
    for _ in range(3):
        await asyncio.sleep(0)
    return puts


def _taken(queue: DeliveryQueue) -> List[Ticket]:
    tickets = []
    while (message := queue.take()) is not None:
        ticket = queue.ticket(message)
        assert ticket is not None
        tickets.append(ticket)
    return tickets


async def test_held_acknowledgements_are_released_in_arrival_order_only() -> None:
    queue = DeliveryQueue(1, hold_acks=True)
    puts = await _queued(queue, "a", "b", "c")
    assert queue.qsize() == 3  # queued ahead at once (pipelining), whatever the window
    a, b, c = _taken(queue)
    c.settle()
    b.settle()
    await asyncio.sleep(0)
    assert not any(put.done() for put in puts)  # b and c finished first: nothing may overtake a
    assert queue.unacknowledged == 3
    a.settle()
    await asyncio.wait_for(asyncio.gather(*puts), 1)
    assert queue.unacknowledged == 0
    a.settle()  # idempotent


async def test_release_stops_at_the_first_unsettled_message() -> None:
    queue = DeliveryQueue(1, hold_acks=True)
    puts = await _queued(queue, "a", "b", "c")
    a, b, c = _taken(queue)
    a.settle()
    c.settle()
    await asyncio.wait_for(puts[0], 1)
    await asyncio.sleep(0)
    assert not puts[1].done() and not puts[2].done()
    b.settle()
    await asyncio.wait_for(asyncio.gather(puts[1], puts[2]), 1)


async def test_a_deferred_ticket_settles_with_its_future_and_never_when_it_is_cancelled() -> None:
    queue = DeliveryQueue(1, hold_acks=True)
    puts = await _queued(queue, "a", "b")
    a, b = _taken(queue)
    acknowledged: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
    a.defer(acknowledged)
    a.settle()  # the run loop's settle after the handler returned: the result is not acknowledged yet
    await asyncio.sleep(0)
    assert not a.settled and not puts[0].done()
    acknowledged.set_result(None)
    await asyncio.wait_for(puts[0], 1)
    cut_short: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
    b.defer(cut_short)
    cut_short.cancel()
    await asyncio.sleep(0.01)
    assert not b.settled and not puts[1].done()  # stopped before the result was acknowledged: stays with the broker
    puts[1].cancel()


async def test_a_ticket_deferred_to_an_eager_future_settles_the_moment_it_is_done() -> None:
    """The end of a job (an EagerFuture) settles its message's ticket in the same call: no turn of the loop
    between the job recorded and its acknowledgement released; a cancelled one still never settles it."""
    queue = DeliveryQueue(1, hold_acks=True)
    await _queued(queue, "a", "b")
    a, b = _taken(queue)
    loop = asyncio.get_running_loop()
    acknowledged, cut_short = EagerFuture(loop=loop), EagerFuture(loop=loop)
    a.defer(acknowledged)
    b.defer(cut_short)
    assert not a.settled
    acknowledged.set_result(None)
    assert a.settled
    cut_short.cancel()
    assert not b.settled


async def test_a_cancelled_put_releases_nothing_and_does_not_block_the_ones_after_it() -> None:
    """The connection ended: amqtt cancels the put() of what it received; a later message (the next
    connection) is still released once the earlier ones' jobs are done."""
    queue = DeliveryQueue(1, hold_acks=True)
    old = await _queued(queue, "old")
    old[0].cancel()
    await asyncio.sleep(0)
    new = await _queued(queue, "new")
    first, second = _taken(queue)
    second.settle()
    await asyncio.sleep(0)
    assert not new[0].done()  # "old" is still being processed: arrival order holds across connections
    first.settle()
    await asyncio.wait_for(new[0], 1)
    assert old[0].cancelled() and queue.unacknowledged == 0


async def test_unacknowledged_messages_are_capped_by_max_pending() -> None:
    queue = DeliveryQueue(1, hold_acks=True, max_pending=2)
    puts = await _queued(queue, "a", "b", "c")
    assert queue.qsize() == 2 and queue.unacknowledged == 2  # c waits: amqtt neither queues nor acknowledges it
    a, b = _taken(queue)
    b.settle()
    await asyncio.sleep(0)
    assert queue.qsize() == 0 and not puts[2].done()
    a.settle()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert queue.take() == "c"
    assert puts[0].done() and puts[1].done() and not puts[2].done()
    puts[2].cancel()


async def test_closed_hold_acks_queue_queues_nothing_more_but_releases_what_finishes() -> None:
    queue = DeliveryQueue(1, hold_acks=True)
    puts = await _queued(queue, "a")
    queue.close()
    late = await _queued(queue, "late")
    (a,) = _taken(queue)
    assert queue.take() is None  # "late" stays with the broker
    a.settle()
    await asyncio.wait_for(puts[0], 1)
    assert not late[0].done()
    late[0].cancel()


async def test_qos0_messages_beyond_max_pending_are_dropped_and_counted() -> None:
    dropped: List[int] = []
    queue = DeliveryQueue(1, hold_acks=True, max_pending=2, on_drop=lambda: dropped.append(1))
    for item in ("a", "b", "c", "d"):
        queue.put_nowait(item)
    assert queue.qsize() == 2 and queue.dropped == 2 and len(dropped) == 2
    assert queue.take() == "a" and queue.ticket("a") is None  # QoS 0: nothing held back
    queue.put_nowait("e")
    assert [queue.take(), queue.take(), queue.take()] == ["b", "e", None]


async def test_on_receipt_queue_drops_qos0_beyond_max_pending_too() -> None:
    queue = DeliveryQueue(4, max_pending=1)
    queue.put_nowait("a")
    queue.put_nowait("b")
    await queue.put("acknowledged")  # QoS 1/2 is bounded by the window, never dropped
    assert queue.dropped == 1 and queue.qsize() == 2
    assert queue.ticket("acknowledged") is None


async def test_drain_forgets_the_tickets_of_what_it_takes() -> None:
    queue = DeliveryQueue(1, hold_acks=True)
    puts = await _queued(queue, "a", "b")
    assert queue.drain() == ["a", "b"]
    assert queue.ticket("a") is None and queue.unacknowledged == 2  # never acknowledged
    for put in puts:
        put.cancel()


async def test_a_pipelined_qos1_result_defers_the_ticket_until_the_broker_acknowledged_it() -> None:
    """The run loop settles a ticket when the handler returns; the pipeline has deferred it to the result's
    acknowledgement by then, so the message's PUBACK waits for the result's."""
    from tests.support.mocked_listeners import mocked_listener

    listener = mocked_listener(default_qos=1)
    acknowledged = asyncio.Event()

    async def publish(*_: Any, **__: Any) -> None:
        await acknowledged.wait()

    listener.client.publish.side_effect = publish
    queue = DeliveryQueue(1, hold_acks=True)
    puts = await _queued(queue, "message")
    (ticket,) = _taken(queue)
    returned = await asyncio.wait_for(listener._process_message(
        {"job_id": "r-1"}, lambda data, job_id: {"ok": True}, topic="test/topic", pipelined=True, ticket=ticket), 5)
    assert returned == {"ok": True}
    ticket.settle()  # what the run loop does next
    await asyncio.sleep(0.01)
    assert not ticket.settled and not puts[0].done()
    acknowledged.set()
    await asyncio.wait_for(puts[0], 5)
    status = await listener.get_job_status("r-1")
    assert status is not None and status.status.value == "completed"


async def test_with_a_barrier_settled_messages_are_released_once_it_passed_in_one_group() -> None:
    """A durable job store: acknowledgements wait for its commit, and one commit covers every message
    settled meanwhile."""
    queue = DeliveryQueue(1, hold_acks=True)
    commits: List["asyncio.Future[None]"] = []

    async def barrier() -> None:
        commit: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        commits.append(commit)
        await commit

    queue.barrier = barrier
    puts = await _queued(queue, "a", "b", "c")
    a, b, c = _taken(queue)
    a.settle()
    b.settle()
    await asyncio.sleep(0)
    assert len(commits) == 1 and not any(put.done() for put in puts)  # settled, not recorded yet
    assert queue.unacknowledged == 3
    c.settle()  # settled while the first commit runs: the next one covers it
    commits[0].set_result(None)
    await asyncio.wait_for(asyncio.gather(puts[0], puts[1]), 1)
    await asyncio.sleep(0)
    assert not puts[2].done() and len(commits) == 2
    commits[1].set_result(None)
    await asyncio.wait_for(puts[2], 1)
    await asyncio.wait_for(queue.released(), 1)
    assert queue.unacknowledged == 0


async def test_a_failing_barrier_keeps_the_acknowledgements_until_it_passes() -> None:
    queue = DeliveryQueue(1, hold_acks=True)
    outcomes = [OSError("disk full"), OSError("disk full"), None]

    async def barrier() -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    queue.barrier = barrier
    puts = await _queued(queue, "a")
    (a,) = _taken(queue)
    a.settle()
    await asyncio.sleep(0.01)
    assert outcomes and not puts[0].done()
    await asyncio.wait_for(puts[0], 2)
    assert outcomes == []


async def test_a_withheld_ticket_is_never_acknowledged() -> None:
    """A job stop() cut short while it waited for a retry: its message goes back to the broker."""
    queue = DeliveryQueue(1, hold_acks=True)
    puts = await _queued(queue, "a", "b")
    a, b = _taken(queue)
    a.withhold()
    a.settle()
    b.settle()
    await asyncio.sleep(0.01)
    assert not puts[0].done() and not puts[1].done()
    for put in puts:
        put.cancel()


async def test_a_failing_barrier_at_stop_gives_up_and_leaves_the_messages_unacknowledged() -> None:
    """Stopping (intake closed), or the store already closed: no endless retry in the background; the
    messages stay with the broker."""
    queue = DeliveryQueue(1, hold_acks=True)
    attempts: List[int] = []

    async def barrier() -> None:
        attempts.append(1)
        raise OSError("job store is not open")

    queue.barrier = barrier
    puts = await _queued(queue, "a")
    (a,) = _taken(queue)
    queue.close()
    a.settle()
    await asyncio.wait_for(queue.released(), 1)
    assert attempts == [1] and not puts[0].done()
    puts[0].cancel()


class _Message:
    """What the queue reads of an incoming message: its topic."""

    def __init__(self, topic: str) -> None:
        self.topic = topic


async def test_a_probe_message_is_intercepted_never_queued_and_takes_no_acknowledgement_turn() -> None:
    arrivals: List[int] = []
    queue = DeliveryQueue(1, on_arrival=lambda: arrivals.append(1), hold_acks=True, max_pending=1)
    backlog = _Message("jobs/a")
    acknowledged: List[str] = []
    assert queue.offer(backlog, lambda: acknowledged.append("a")) is None  # a held QoS 1 job, the queue now full
    caught = queue.intercept("probe/shared")
    first, again = _Message("probe/shared"), _Message("probe/shared")
    queue.put_nowait(first)
    queue.put_nowait(again)  # a copy of a probe published twice: swallowed too
    assert caught.done() and caught.result() is first
    assert queue.qsize() == 1 and queue.dropped == 0 and len(arrivals) == 1  # no arrival, no drop: never queued
    assert queue.unacknowledged == 1
    taken = queue.take()
    assert taken is backlog and queue.take() is None  # the backlog is untouched, the probe is not in it
    ticket = queue.ticket(taken)
    assert ticket is not None
    ticket.settle()
    assert acknowledged == ["a"]  # the probe took no turn in the acknowledgement order
    queue.close()
    queue.put_nowait(_Message("probe/shared"))  # caught even once the intake is closed
    assert queue.after_close == 0
    queue.stop_intercepting("probe/shared")
    queue.put_nowait(_Message("probe/shared"))
    assert queue.after_close == 1  # handled like any message again
