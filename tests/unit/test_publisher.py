"""Unit tests for Listener.mqtt.publisher: the outbox, the in-flight bound, timeouts and refused topics."""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional, Tuple
from unittest.mock import AsyncMock

import pytest

from Listener.core.topics import PublishOptions
from Listener.mqtt.amqtt_boundary import AmqttClientBase
from Listener.ops.metrics import ListenerMetrics
from Listener.mqtt.packets import PublicationRefused
from Listener.mqtt.publisher import MAX_STRIKES, ConnectionLost, NotConnected, Publication, Publisher, RefusedTopic


class FakeConnection:
    """The publisher's view of a connection: ``client``, whether it is up, and what dropping a stalled one does."""

    def __init__(self, client: Any, connected: Optional[List[bool]] = None, drops: bool = False) -> None:
        self.client = client
        self.connected = connected if connected is not None else [True]
        self.drops = drops
        #: One entry per ``drop_stalled`` call: how long the publication waited.
        self.dropped: List[float] = []

    def is_connected(self) -> bool:
        return self.connected[0]

    def watched(self) -> bool:
        return False

    def drop_stalled(self, waited: float) -> bool:
        self.dropped.append(waited)
        return self.drops


def publisher_for(connection: FakeConnection, metrics: Optional[ListenerMetrics] = None, timeout: float = 1.0,
                  **limits: int) -> Publisher:
    return Publisher(connection, metrics if metrics is not None else ListenerMetrics(), "h:1", PublishOptions(0, False, {}),
                     timeout=timeout, **limits)


def make_publisher(connected: List[bool], client: Any, limit: int = 10) -> Publisher:
    return publisher_for(FakeConnection(client, connected), max_in_flight=2, outbox_limit=limit)


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
    assert await publisher.flush() == (2, [])
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


async def test_a_publication_failing_after_its_connection_was_lost_is_kept_even_if_connected_again() -> None:
    """Regression: amqtt fails a QoS 1 publish of a connection that was lost with an AttributeError of its
    torn-down session, after the listener has reconnected. That is a lost connection, not a refusal: the
    publication is kept for the new connection, not reported as a publish error."""
    metrics = ListenerMetrics()
    client = AsyncMock()

    async def lost_meanwhile(*args: Any) -> None:
        metrics.connection_losses += 1  # the connection went down and came back while this waited
        raise AttributeError("'NoneType' object has no attribute 'inflight_out'")

    client.publish.side_effect = lost_meanwhile
    publisher = publisher_for(FakeConnection(client), metrics)
    assert await publisher.deliver(Publication("t/1", b"1", 1, False)) is None
    assert publisher.pending == 1 and metrics.publish_errors == 0
    client.publish.side_effect = None
    assert (await publisher.flush()).sent == 1


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


def hung_client() -> AsyncMock:
    """A client whose publish never returns (a broker that acknowledges nothing)."""
    async def hang(*args: Any) -> None:
        await asyncio.sleep(10)

    client = AsyncMock()
    client.publish.side_effect = hang
    return client


async def test_publisher_times_out_a_hung_publish() -> None:
    connection = FakeConnection(hung_client(), drops=True)
    publisher = publisher_for(connection, timeout=0.05)
    assert await publisher.deliver(Publication("t", b"", 0, False)) == "timed out"
    assert connection.dropped == [], "QoS 0 is never acknowledged: its timeout says nothing of the connection"


@pytest.mark.parametrize("qos", [1, 2])
async def test_an_unacknowledged_publication_is_kept_for_the_next_connection_when_the_stalled_one_is_dropped(
        qos: int) -> None:
    connection = FakeConnection(hung_client(), drops=True)
    metrics = ListenerMetrics()
    publisher = publisher_for(connection, metrics, timeout=0.05)
    assert await publisher.deliver(Publication("t", b"r", qos, False), job_id="j") is None
    assert connection.dropped == [0.05] and publisher.pending == 1 and metrics.publish_errors == 0
    with pytest.raises(ConnectionLost, match="No acknowledgement from h:1 within 0.05 s"):
        await publisher.publish("t", b"r", qos, False)


async def test_an_unacknowledged_publication_is_reported_when_the_connection_is_not_dropped() -> None:
    metrics = ListenerMetrics()
    publisher = publisher_for(FakeConnection(hung_client(), drops=False), metrics, timeout=0.05)
    assert await publisher.deliver(Publication("t", b"r", 1, False)) == "timed out"
    assert publisher.pending == 0 and metrics.publish_errors == 1


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

    async def poison(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if payload == b"poison":
            connected[0] = False
            raise ConnectionResetError("broker closed the connection")

    client = AsyncMock()
    client.publish.side_effect = poison
    metrics = ListenerMetrics()
    publisher = publisher_for(FakeConnection(client, connected), metrics)
    assert await publisher.deliver(Publication("t/big", b"poison", 1, False), job_id="big-1") is None
    assert publisher.pending == 1
    assert await publisher.deliver(Publication("t/next", b"fine", 1, False), job_id="next-1") is None  # not connected: kept
    connected[0] = True  # reconnected
    sent, dropped = await publisher.flush()  # the poison ends the connection again: dropped, the rest waits
    assert sent == 0 and [(d.publication.topic, d.job_id) for d in dropped] == [("t/big", "big-1")]
    assert f"given up after {MAX_STRIKES} attempts" in dropped[0].reason
    assert publisher.pending == 1 and metrics.publish_errors == 1
    connected[0] = True
    assert await publisher.flush() == (1, []) and publisher.pending == 0


async def test_a_publication_that_only_met_a_down_connection_is_never_dropped() -> None:
    connected = [False]
    client = AsyncMock()
    publisher = make_publisher(connected, client)
    assert await publisher.deliver(Publication("t/1", b"1", 1, False)) is None
    for _ in range(5):
        assert await publisher.flush() == (0, [])  # NotConnected: nothing was sent, no strike
    connected[0] = True
    assert await publisher.flush() == (1, [])


async def test_a_publication_refused_for_a_passing_reason_is_sent_again_until_taken() -> None:
    """Mosquitto refuses QoS 2 publications past its in-flight quota with PUBREC 0x97: not a delivery, not a failure."""
    metrics = ListenerMetrics()
    client = AsyncMock()
    client.publish.side_effect = [PublicationRefused(0x97, "PUBREC"), PublicationRefused(0x97, "PUBREC"), None]
    publisher = publisher_for(FakeConnection(client), metrics, timeout=5.0)
    assert await publisher.deliver(Publication("t/1", b"1", 2, False)) is None
    assert client.publish.call_count == 3 and metrics.publishes == 1
    assert metrics.publishes_refused == 2 and metrics.publish_errors == 0


async def test_a_publication_refused_for_good_is_reported_never_counted_as_delivered() -> None:
    metrics = ListenerMetrics()
    client = AsyncMock()
    client.publish.side_effect = PublicationRefused(0x87, "PUBACK")
    publisher = publisher_for(FakeConnection(client), metrics, timeout=5.0)
    reason = await publisher.deliver(Publication("t/1", b"1", 1, False))
    assert reason is not None and "not authorized (0x87)" in reason
    assert client.publish.call_count == 1 and metrics.publishes == 0 and metrics.publish_errors == 1
    assert publisher.pending == 0  # not kept for a reconnect either: the broker said no


async def test_a_passing_refusal_that_lasts_is_reported_within_the_timeout() -> None:
    metrics = ListenerMetrics()
    client = AsyncMock()
    client.publish.side_effect = PublicationRefused(0x97, "PUBREC")
    publisher = publisher_for(FakeConnection(client), metrics, timeout=0.5)
    started = asyncio.get_running_loop().time()
    reason = await publisher.deliver(Publication("t/1", b"1", 2, False))
    assert reason is not None and "quota exceeded (0x97)" in reason
    assert asyncio.get_running_loop().time() - started < 1.0
    assert client.publish.call_count >= 2 and metrics.publishes == 0 and metrics.publish_errors == 1


class DirectClient(AmqttClientBase):
    """A client whose QoS 1/2 publications go out directly (``start_publish``): each returns a future the test
    settles as the broker would (PUBACK, a refusal, the connection's end). ``publish`` is the ordinary way."""

    def __init__(self) -> None:
        super().__init__("direct-test", {"auto_reconnect": False})
        self.started: List["asyncio.Future[None]"] = []
        self.ordinary = AsyncMock()
        self.up = True  # as the real client, it writes nothing while not connected

    def start_publish(self, topic: str, message: bytes, qos: int, retain: bool) -> "Optional[asyncio.Future[None]]":
        if not self.up:
            return None
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started.append(acked)
        return acked

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        return await self.ordinary(*args)


async def _started(client: DirectClient, count: int) -> None:
    async def until() -> None:
        while len(client.started) < count:
            await asyncio.sleep(0)
    await asyncio.wait_for(until(), 2)


async def test_a_direct_publication_is_through_at_its_acknowledgement_and_frees_its_slot() -> None:
    metrics = ListenerMetrics()
    client = DirectClient()
    publisher = publisher_for(FakeConnection(client), metrics, max_in_flight=1)
    outcome = await publisher.deliver_in_background(Publication("t/1", b"1", 1, False))
    assert not outcome.done() and len(client.started) == 1 and client.ordinary.call_count == 0
    second = asyncio.ensure_future(publisher.deliver_in_background(Publication("t/2", b"2", 1, False)))
    await asyncio.sleep(0.01)
    assert not second.done()  # the only slot is held until the first is acknowledged
    client.started[0].set_result(None)
    assert await asyncio.wait_for(outcome, 1) is None and metrics.publishes == 1
    assert not (await asyncio.wait_for(second, 1)).done()


async def test_start_in_background_now_takes_a_free_slot_without_an_await_or_does_nothing() -> None:
    metrics = ListenerMetrics()
    client = DirectClient()
    publisher = publisher_for(FakeConnection(client), metrics, max_in_flight=1)
    client.up = False  # cannot be written directly: nothing is done, no slot taken
    assert publisher.start_in_background_now(Publication("t/0", b"0", 1, False)) is None and not client.started
    client.up = True
    outcome = publisher.start_in_background_now(Publication("t/1", b"1", 1, False))
    assert outcome is not None and len(client.started) == 1
    assert publisher.start_in_background_now(Publication("t/2", b"2", 1, False)) is None  # the only slot is held
    waiting = asyncio.ensure_future(publisher.deliver_in_background(Publication("t/3", b"3", 1, False)))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    client.started[0].set_result(None)
    assert await asyncio.wait_for(outcome, 1) is None and metrics.publishes == 1
    third = await asyncio.wait_for(waiting, 1)  # the slot went to the one waiting for it
    assert publisher.start_in_background_now(Publication("t/4", b"4", 1, False)) is None
    client.started[1].set_result(None)
    assert await asyncio.wait_for(third, 1) is None
    assert publisher.start_in_background_now(Publication("t/5", b"5", 1, False)) is not None


@pytest.mark.parametrize("drops, expected", [(True, None), (False, "timed out")])
async def test_a_direct_publication_not_acknowledged_in_time_is_kept_or_reported(
        drops: bool, expected: Optional[str]) -> None:
    metrics = ListenerMetrics()
    client = DirectClient()
    connection = FakeConnection(client, drops=drops)
    publisher = publisher_for(connection, metrics, timeout=0.05, max_in_flight=1)
    outcome = await publisher.deliver_in_background(Publication("t/1", b"1", 1, False))
    assert await asyncio.wait_for(outcome, 2) == expected
    assert client.started[0].cancelled()  # its packet id is no longer awaited
    assert connection.dropped == [0.05]
    assert (publisher.pending, metrics.publish_errors) == ((1, 0) if drops else (0, 1))
    await asyncio.wait_for(publisher.deliver_in_background(Publication("t/2", b"2", 1, False)), 1)  # slot freed


async def test_a_direct_publication_cut_short_by_the_connection_s_end_is_kept() -> None:
    metrics = ListenerMetrics()
    client = DirectClient()
    publisher = publisher_for(FakeConnection(client), metrics)
    outcome = await publisher.deliver_in_background(Publication("t/1", b"1", 2, False))
    client.started[0].cancel()  # what the wire handler does to the waiters of a connection that ended
    assert await asyncio.wait_for(outcome, 1) is None
    assert publisher.pending == 1 and metrics.publish_errors == 0 and metrics.publishes == 0
    assert (await publisher.flush()).sent == 1 and client.ordinary.call_count == 1  # sent again on the next one


@pytest.mark.parametrize("qos, code, packet", [(2, 0x97, "PUBREC"), (1, 0x87, "PUBACK")])
async def test_a_direct_publication_refused_is_sent_again_the_ordinary_way_for_a_passing_reason_else_reported(
        qos: int, code: int, packet: str) -> None:
    metrics = ListenerMetrics()
    client = DirectClient()
    publisher = publisher_for(FakeConnection(client), metrics, timeout=5.0)
    outcome = await publisher.deliver_in_background(Publication("t/1", b"1", qos, False))
    client.started[0].set_exception(PublicationRefused(code, packet))
    reason = await asyncio.wait_for(outcome, 2)
    if code == 0x97:  # quota exceeded: passes with time
        assert reason is None and client.ordinary.call_count == 1
        assert metrics.publishes == 1 and metrics.publishes_refused == 1
    else:
        assert reason is not None and "not authorized (0x87)" in reason
        assert client.ordinary.call_count == 0 and metrics.publish_errors == 1 and publisher.pending == 0


@pytest.mark.parametrize("failing", [False, True])
async def test_giving_up_on_a_background_delivery_frees_its_slot(failing: bool) -> None:
    """Regression: a delivery task cancelled before it started never ran the ``finally`` that freed its slot, so
    each result cut short at stop took one of the ``max_in_flight`` slots for good."""
    client = DirectClient()
    publisher = publisher_for(FakeConnection(client), max_in_flight=1)
    outcome = await publisher.deliver_in_background(Publication("t/1", b"1", 1, False))
    if failing:  # the failure is being handed to deliver(), in a task that has not started yet
        client.started[0].set_exception(PublicationRefused(0x97, "PUBREC"))
        await asyncio.sleep(0)
    outcome.cancel()
    await asyncio.sleep(0)
    if not failing:
        assert client.started[0].cancelled()  # no longer awaited
    await asyncio.wait_for(publisher.deliver_in_background(Publication("t/2", b"2", 1, False)), 1)


async def test_giving_up_on_an_ordinary_background_delivery_before_it_started_frees_its_slot() -> None:
    publisher = publisher_for(FakeConnection(AsyncMock()), max_in_flight=1)
    outcome = await publisher.deliver_in_background(Publication("t/1", b"1", 1, False))
    outcome.cancel()
    await asyncio.wait_for(publisher.deliver_in_background(Publication("t/2", b"2", 1, False)), 1)


class WatchedConnection(FakeConnection):
    def __init__(self, client: Any, watched: bool = True) -> None:
        super().__init__(client)
        self.is_watched = watched

    def watched(self) -> bool:
        return self.is_watched


@pytest.mark.parametrize("case", ["sent", "not watched", "buffer full", "not connected", "bad topic", "QoS 1",
                                  "client fails"])
async def test_a_qos0_publication_is_written_at_once_only_where_nothing_needs_awaiting(case: str) -> None:
    metrics = ListenerMetrics()
    client = DirectClient()
    connection = WatchedConnection(client, watched=case != "not watched")
    connection.connected = [case != "not connected"]
    client.up = case != "not connected"
    if case == "buffer full":
        client.start_publish = lambda *args: None  # type: ignore[method-assign]
    if case == "client fails":
        def fail(*args: Any) -> None:
            raise ConnectionError("Not connected")
        client.start_publish = fail  # type: ignore[method-assign,assignment]
    publisher = publisher_for(connection, metrics)
    publication = Publication("results/+" if case == "bad topic" else "results/out", b"{}", int(case == "QoS 1"), False)
    assert publisher.send_now(publication) is (case == "sent")
    assert metrics.publishes == (case == "sent")
    assert len(client.started) == (case == "sent")


async def test_direct_publications_time_out_in_the_order_sent_and_those_acknowledged_never() -> None:
    """One timer serves every direct publication awaiting its acknowledgement (the oldest's): each times out in the
    order sent and never before its own ``timeout`` is up, however late the loop runs the timer."""
    metrics = ListenerMetrics()
    client = DirectClient()
    loop = asyncio.get_running_loop()
    publisher = publisher_for(FakeConnection(client), metrics, timeout=0.1, max_in_flight=5)
    sent: List[float] = []
    ended: List[Tuple[str, float]] = []

    async def send(name: str) -> "asyncio.Future[Optional[str]]":
        sent.append(loop.time())
        answer = await publisher.deliver_in_background(Publication(f"t/{name}", name.encode(), 1, False))
        answer.add_done_callback(lambda _: ended.append((name, loop.time())))
        return answer

    first = await send("1")
    await asyncio.sleep(0.03)
    second = await send("2")
    third = await send("3")
    client.started[1].set_result(None)
    assert await asyncio.wait_for(second, 1) is None
    assert await asyncio.wait_for(first, 1) == "timed out"
    assert await asyncio.wait_for(third, 1) == "timed out"
    assert [name for name, _ in ended] == ["2", "1", "3"]
    early = 0.002  # a timer may run up to the clock's resolution early; _Deadlines itself allows 1 ms
    assert ended[1][1] >= sent[0] + 0.1 - early
    assert ended[2][1] >= sent[2] + 0.1 - early  # not at the first's deadline, which came 30 ms before its own
    assert [acked.cancelled() for acked in client.started] == [True, False, True]
    assert metrics.publishes == 1 and metrics.publish_errors == 2
