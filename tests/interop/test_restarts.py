"""Brokers restarted under the listener, on every broker of the tier (private instances, restarted on the same port).

The listener runs with a persistent session (``cleansession=False``, a fixed client id, QoS 1) and reconnects
by itself; it reaches the broker through a proxy (tests/support/proxy.py) that the test closes while the broker
is down, so that the paho probes are back before the listener publishes again (none of its results is missed).

What is expected of jobs in flight at the restart:

- a job the listener had already taken from the broker runs once and its result is acknowledged by the broker,
  on every broker (the listener keeps what it holds and publishes the result after it reconnects); a result
  whose PUBACK the restart cut off is sent again (QoS 1 is at least once), so it may arrive twice;
- a job still queued in the broker survives only where the broker keeps sessions across a restart (Mosquitto
  with persistence, RabbitMQ); amqtt's broker and Aedes keep their state in memory and lose it. After a SIGKILL
  only RabbitMQ still has everything it acknowledged: Mosquitto loses what it had not saved yet (messages on
  their way to connected clients, here the listener and the probe watching the results). A broker that
  keeps the session also redelivers what the listener took but had not acknowledged: the listener skips
  those by job id, so no job runs or answers twice anywhere.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Callable, Iterator

import pytest

from tests.support.brokers import MqttProbe, session_folder
from tests.support.interop_brokers import KINDS, InteropBroker, make_broker, require
from tests.support.job_messages import duplicates, job_ids_of, publish_jobs, results_for
from tests.support.listeners import (RECONNECTING, StartListener, all_finished, publish_errors, received, statuses,
                                     via)
from tests.support.processors import CountingProcessor
from tests.support.proxy import TcpProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(180)

BURST = 30


@pytest.fixture(scope="module", params=KINDS)
def private_broker(request: pytest.FixtureRequest) -> Iterator[InteropBroker]:
    """One broker per kind for this module's tests alone (they restart it); Mosquitto with persistence."""
    kind = str(request.param)
    require(kind)
    broker = make_broker(kind, session_folder(), persistence=True)
    broker.start()
    yield broker
    broker.close()


@pytest.fixture
def restartable(private_broker: InteropBroker) -> Iterator[InteropBroker]:
    """The module's broker, running (a test that failed half-way may have left it stopped)."""
    if not private_broker.is_running:
        private_broker.start()
    yield private_broker


@pytest.fixture
def proxy(restartable: InteropBroker) -> Iterator[TcpProxy]:
    """A proxy to the broker for the listener; closed after the test."""
    with TcpProxy(restartable.host, restartable.port) as started:
        yield started


async def restart_behind(broker: InteropBroker, proxy: TcpProxy, listener: Any, probes: "list[MqttProbe]",
                         hard: bool) -> None:
    """Stop (or kill) the broker under the listener, keep the listener out until ``probes`` are back, let it in."""
    if hard:
        broker.kill()
    else:
        await asyncio.to_thread(broker.stop)
    await eventually(lambda: not listener.is_ready, 15, "the listener noticed the broker was gone")
    proxy.refuse()
    await asyncio.to_thread(broker.start)
    for client in probes:
        await asyncio.to_thread(client.wait_until_connected, 20)
    proxy.admit()
    await listener.wait_until_ready(30)


@pytest.mark.parametrize("qos", [1, 2], ids=["qos1", "qos2"])
@pytest.mark.parametrize("hard", [False, True], ids=["stopped", "killed"])
async def test_a_broker_restarted_mid_burst_loses_no_job_the_listener_took_and_jobs_after_it_run(
        restartable: InteropBroker, proxy: TcpProxy, start_listener: StartListener, probe: Callable[..., MqttProbe],
        unique_topic: str, hard: bool, qos: int) -> None:
    """Jobs and results at QoS 1, or at QoS 2 (RabbitMQ takes both at QoS 1)."""
    jobs, results = f"{unique_topic}/jobs", f"{unique_topic}/results"
    processor = CountingProcessor(results, qos=qos, seconds=0.02)
    listener, _ = await start_listener(via(proxy), processor, qos=qos, cleansession=False,
                                       client_id=f"restart-{uuid.uuid4().hex[:8]}", **RECONNECTING)
    # A persistent session: where the broker keeps sessions, results on their way to it survive the restart too.
    watcher = probe(restartable.endpoint, results, qos=1, client_id=f"watch-{uuid.uuid4().hex[:8]}",
                    clean_session=False)
    sender = probe(restartable.endpoint)
    burst = [f"b-{index}" for index in range(BURST)]
    await publish_jobs(sender, jobs, burst, qos)
    await asyncio.to_thread(watcher.wait_for, 5, 20.0, results)  # jobs flowing: some done, some held, some queued

    await restart_behind(restartable, proxy, listener, [watcher, sender], hard)
    after = [f"a-{index}" for index in range(10)]
    await publish_jobs(sender, jobs, after, qos)
    messages = await results_for(watcher, results, after, timeout=30)
    await all_finished(listener, processor.ran())

    ran_before = sorted(job_id for job_id in processor.ran() if job_id.startswith("b-"))
    assert len(ran_before) >= 5
    # DUPLICATE: a broker that kept the session sent again a job whose PUBACK the restart cut off (skipped).
    assert await statuses(listener, processor.ran()) <= {"completed", "duplicate"}
    assert publish_errors(listener) == 0
    assert processor.ran_twice() == []
    traits = restartable.traits
    if traits.keeps_sessions and (traits.queues_survive_kill or not hard):
        assert ran_before == sorted(burst), "the broker kept the session: every job of the burst ran"
        messages = await results_for(watcher, results, burst, timeout=30)
    else:  # what the broker held for the listener or the watcher died with it (or was not saved yet)
        assert {job_id for job_id in job_ids_of(messages) if job_id.startswith("b-")} <= set(ran_before)
    # A result whose acknowledgement (PUBACK; PUBCOMP at QoS 2) the restart cut off is sent again, so the burst's
    # results are at least once. Never one sent after it.
    assert set(duplicates(messages)) <= set(burst)
    assert listener.metrics()["reconnects"] >= 1


async def test_jobs_queued_while_the_listener_is_away_survive_a_restart_only_where_the_broker_keeps_sessions(
        restartable: InteropBroker, proxy: TcpProxy, start_listener: StartListener, probe: Callable[..., MqttProbe],
        unique_topic: str) -> None:
    jobs, results = f"{unique_topic}/jobs", f"{unique_topic}/results"
    processor = CountingProcessor(results, qos=1)
    listener, _ = await start_listener(via(proxy), processor, qos=1, cleansession=False,
                                       client_id=f"away-{uuid.uuid4().hex[:8]}", **RECONNECTING)
    watcher = probe(restartable.endpoint, results, qos=1)
    sender = probe(restartable.endpoint)
    await publish_jobs(sender, jobs, ["present"])
    await results_for(watcher, results, ["present"])
    await all_finished(listener, ["present"])  # its result acknowledged: it is not sent again after the cut

    proxy.refuse()  # the listener is cut off; the broker stays up and queues for its session
    await eventually(lambda: not listener.is_ready, 15, "the listener noticed it was cut off")
    away = [f"away-{index}" for index in range(5)]
    await publish_jobs(sender, jobs, away)
    await asyncio.to_thread(restartable.stop)
    await asyncio.to_thread(restartable.start)
    for client in (watcher, sender):
        await asyncio.to_thread(client.wait_until_connected, 20)
    proxy.admit()
    await listener.wait_until_ready(30)
    taken = received(listener)

    # A queued job would be delivered on reconnection, before this one.
    await publish_jobs(sender, jobs, ["back"])
    messages = await results_for(watcher, results, ["back"])
    if restartable.traits.keeps_sessions:
        messages = await results_for(watcher, results, away)
        assert sorted(job_ids_of(messages)) == sorted(["present", "back"] + away)
    else:  # its memory went with the process: the queued jobs are gone
        assert sorted(job_ids_of(messages)) == ["back", "present"]
        assert processor.ran() == ["back", "present"] and taken == 1
    assert duplicates(messages) == {}
    assert processor.ran_twice() == []
