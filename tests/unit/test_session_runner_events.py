"""The split's parts on their own: sessions and client adapters, the run loop's state and backoff,
the event sink, ErrorType, and the signal handlers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from typing import Any, Dict, List, Tuple
from unittest.mock import AsyncMock, MagicMock

import pytest

from Listener import EventListener, EventListenerConfig, JobStatus
from Listener.events import ErrorType, EventSink
from Listener.metrics import ListenerMetrics
from Listener.runner import State, backoff_delay
from Listener.session import AmqttAdapter, ClientSlot, ForeignClientAdapter, Session, adapt
from Listener.signals import StopSignals
from Listener.topics import PublishOptions, subscriptions

pytestmark = pytest.mark.unit


async def wait_forever() -> Any:
    await asyncio.Event().wait()


def mocked_listener(**overrides: Any) -> EventListener:
    listener = EventListener(EventListenerConfig(host="test-host", topic="test/topic", **overrides))
    listener.client = AsyncMock()
    listener.client.subscribe.return_value = [0]
    return listener


# -- sessions and adapters ---------------------------------------------------------------------------


async def test_a_session_connects_subscribes_and_disconnects_and_is_not_reentrant() -> None:
    client = AsyncMock()
    client.subscribe.return_value = [1]
    session = Session(adapt(client), EventListenerConfig(topic="a/#", qos=1), "h:1", [("a/#", 1)])
    async with session as entered:
        assert entered is session
        client.connect.assert_awaited_once()
        client.subscribe.assert_awaited_once_with([("a/#", 1)])
        with pytest.raises(RuntimeError, match="opened once"):
            await session.__aenter__()
    client.disconnect.assert_awaited_once()


async def test_a_refused_subscription_ends_opening_with_a_connection_error() -> None:
    client = AsyncMock()
    client.subscribe.return_value = [0x80]
    with pytest.raises(ConnectionError, match="refused the subscription to t"):
        async with Session(adapt(client), EventListenerConfig(topic="t"), "h:1", [("t", 0)]):
            pass  # pragma: no cover - never entered


def test_only_the_listeners_own_client_gets_the_amqtt_adapter() -> None:
    slot = ClientSlot(EventListenerConfig())
    assert isinstance(slot.adapter, AmqttAdapter) and slot.owned
    assert slot.adapter is slot.adapter  # wrapped once
    mock = MagicMock()
    slot.client = mock
    assert isinstance(slot.adapter, ForeignClientAdapter) and slot.adapter.client is mock and not slot.owned
    assert slot.is_connected()  # a client the user assigned is taken as connected
    slot.client = None
    assert slot.current is None and slot.owned


async def test_a_foreign_clients_delivery_is_cancelled_when_the_intake_closes() -> None:
    client = AsyncMock()
    client.deliver_message.side_effect = wait_forever
    adapter = ForeignClientAdapter(client)
    waiting = asyncio.ensure_future(adapter.next_message())
    await asyncio.sleep(0.01)
    adapter.close_intake()
    assert await asyncio.wait_for(waiting, 2) is None
    assert await adapter.next_message() is None  # closed: nothing more is asked of the client
    assert client.deliver_message.await_count == 1


async def test_a_foreign_client_that_fails_to_deliver_ends_its_connection() -> None:
    client = AsyncMock()
    client.deliver_message.side_effect = RuntimeError("Session is not initialized.")
    assert await ForeignClientAdapter(client).next_message() is None


async def test_the_amqtt_adapter_hands_out_queued_messages_then_ends_with_the_connection() -> None:
    slot = ClientSlot(EventListenerConfig())
    adapter = slot.adapter
    assert isinstance(adapter, AmqttAdapter)
    assert adapter.closed and await adapter.next_message() is None  # never connected
    assert adapter.queued == 0 and adapter.drop_queued() == []


class IdleClient:
    """What the amqtt adapter uses of its client: a delivery queue and the end of the connection."""

    def __init__(self) -> None:
        self.on_wakeup: Any = None
        self.connection_closed = False
        self.messages: List[str] = []
        self.watches = 0
        self.ended: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()

    def take_message(self) -> Any:
        return self.messages.pop(0) if self.messages else None

    def arrive(self, message: str) -> None:
        self.messages.append(message)
        self.on_wakeup()

    def close_intake(self) -> None:
        pass

    async def wait_closed(self) -> None:
        self.watches += 1
        await self.ended


async def test_an_arriving_message_wakes_the_waiting_consumer_in_one_loop_pass() -> None:
    # The wait between two messages of a slow stream is paid once per message: one future, one wake-up.
    client = IdleClient()
    adapter = AmqttAdapter(client)  # type: ignore[arg-type]
    for message in ("first", "second", "third"):
        taking = asyncio.ensure_future(adapter.next_message())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not taking.done()  # idle: waiting for a message
        client.arrive(message)
        await asyncio.sleep(0)
        assert taking.done() and taking.result() == message
    assert client.watches == 1  # the end of the connection is watched once, not once per wait
    adapter.release()


async def test_the_waiting_consumer_wakes_when_the_connection_ends_or_the_intake_closes() -> None:
    client = IdleClient()
    adapter = AmqttAdapter(client)  # type: ignore[arg-type]
    taking = asyncio.ensure_future(adapter.next_message())
    await asyncio.sleep(0)
    client.connection_closed = True
    client.ended.set_result(None)
    assert await asyncio.wait_for(taking, 1.0) is None

    client = IdleClient()
    adapter = AmqttAdapter(client)  # type: ignore[arg-type]
    taking = asyncio.ensure_future(adapter.next_message())
    await asyncio.sleep(0)
    adapter.close_intake()
    assert await asyncio.wait_for(taking, 1.0) is None
    adapter.release()


# -- run loop --------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_less_a_random_quarter() -> None:
    assert [backoff_delay(n, 10.0, jitter=lambda: 0.0) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert [backoff_delay(n, 10.0, jitter=lambda: 1.0) for n in (1, 5)] == [0.75, 7.5]
    delays = {backoff_delay(3, 10.0) for _ in range(50)}
    assert all(3.0 <= d <= 4.0 for d in delays) and len(delays) > 1


async def test_state_goes_idle_running_draining_stopped() -> None:
    listener = mocked_listener()
    listener.client.deliver_message.side_effect = wait_forever
    assert listener.state is State.IDLE and not listener.is_running
    run = asyncio.create_task(listener.run())
    await listener.wait_until_ready(5)
    assert listener.state is State.RUNNING and listener.is_running
    listener.stop()
    assert listener.state is State.DRAINING and listener.is_draining
    await asyncio.wait_for(run, 5)
    assert listener.state is State.STOPPED and not listener.is_running and not listener.is_draining
    run = asyncio.create_task(listener.run())  # reusable once stopped
    await listener.wait_until_ready(5)
    listener.stop()
    await asyncio.wait_for(run, 5)


async def test_stop_before_run_makes_the_next_run_return_without_connecting() -> None:
    listener = mocked_listener()
    listener.stop()
    await asyncio.wait_for(listener.run(), 5)
    listener.client.connect.assert_not_awaited()
    assert listener.state is State.STOPPED


# -- events ------------------------------------------------------------------------------------------


def test_error_type_is_a_str_enum() -> None:
    assert ErrorType.TIMEOUT == "timeout" and str(ErrorType.PUBLISH_ERROR) == "publish_error"
    assert ErrorType("duplicate_job") is ErrorType.DUPLICATE_JOB
    assert json.dumps({"t": ErrorType.TIMEOUT}) == '{"t": "timeout"}'


async def test_the_event_sink_logs_redacts_and_mirrors_at_its_level(caplog: pytest.LogCaptureFixture) -> None:
    sent: List[Tuple[str, Dict[str, Any]]] = []

    async def send(topic: str, body: Dict[str, Any]) -> None:
        sent.append((topic, body))

    metrics = ListenerMetrics()
    sink = EventSink(logging.getLogger("test.sink"), ("s3cret",), "t/log", "t/err", logging.WARNING, metrics, send)
    with caplog.at_level(logging.INFO, "test.sink"):
        await sink.log(logging.INFO, "quiet", "not mirrored %s", "s3cret")
        await sink.log(logging.ERROR, "loud", "mirrored", job_id="j", status="failed", duration_ms=1.23456)
        await sink.log(logging.ERROR, "local", "not published", publish=False)
        await sink.error("j", ErrorType.TIMEOUT, "password s3cret leaked", "in/t")
    assert "not mirrored ***" in caplog.text and "s3cret" not in caplog.text
    assert [(topic, body.get("event")) for topic, body in sent] == [("t/log", "loud"), ("t/err", None)]
    assert sent[0][1]["duration_ms"] == 1.235 and sent[0][1]["status"] == "failed"
    assert sent[1][1]["error_type"] == "timeout" and sent[1][1]["error_message"] == "password *** leaked"
    assert metrics.errors == {"timeout": 1}
    assert not sink.info_wanted() or logging.getLogger("test.sink").isEnabledFor(logging.INFO)


def test_publish_options_and_subscriptions_follow_custom_topics() -> None:
    custom = {"out/#": {"qos": 2, "retain": True}, "in/x": {"qos": 1}}
    options = PublishOptions(1, False, custom)
    assert options("out/a") == (2, True) and options("other") == (1, False) and options("out/a") == (2, True)
    assert subscriptions("in/#", 0, custom) == [("in/#", 0), ("out/#", 2)]


# -- signals -----------------------------------------------------------------------------------------


async def test_a_second_signal_cancels_the_running_job_at_once() -> None:
    listener = mocked_listener(shutdown_grace_period=30)
    messages: asyncio.Queue[Any] = asyncio.Queue()
    messages.put_nowait(MagicMock(topic="test/topic", data=bytearray(b'job_id = "stuck"')))
    listener.client.deliver_message.side_effect = messages.get
    started = asyncio.Event()
    after_second: List[int] = []

    async def processor(data: Dict[str, Any], job_id: str) -> None:
        started.set()
        await asyncio.Event().wait()

    previous = signal.getsignal(signal.SIGUSR1)
    handlers = listener.install_signal_handlers([signal.SIGUSR1], on_second_signal=lambda: after_second.append(1))
    assert handlers.signals == (signal.SIGUSR1,)
    run = asyncio.create_task(listener.run(processor))
    await asyncio.wait_for(started.wait(), 5)
    os.kill(os.getpid(), signal.SIGUSR1)
    await asyncio.sleep(0.05)
    assert listener.is_draining and not run.done()  # the first signal drains: the job keeps running
    os.kill(os.getpid(), signal.SIGUSR1)
    await asyncio.wait_for(run, 5)  # well within the 30 s grace period
    job = await listener.get_job_status("stuck")
    assert job is not None and job.status is JobStatus.FAILED and job.error == "Cancelled: listener stopped"
    assert after_second == [1] and handlers.received == 2 and handlers.exit_code == 128 + signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is previous  # removed with the run


def test_signal_handlers_put_the_previous_ones_back() -> None:
    loop = asyncio.new_event_loop()
    try:
        previous = signal.getsignal(signal.SIGUSR2)
        handlers = StopSignals(loop, lambda: None, lambda: None, [signal.SIGUSR2], exit_after=60.0)
        assert signal.getsignal(signal.SIGUSR2) is not previous
        handlers.remove()
        assert signal.getsignal(signal.SIGUSR2) is previous and handlers.signals == ()
    finally:
        loop.close()
