"""ack_policy = "after_processing" against a real Mosquitto: acknowledgements after the job, in arrival order,
nothing lost to SIGKILL or SIGTERM, and bounded intake under floods (issue 11, items 1 and 2).

The listener's own PUBACKs cannot be watched from outside, so they are observed through the broker: a message
whose PUBACK was sent is never redelivered to the next session with the same client id; one whose PUBACK was
held back always is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Set

import psutil
import pytest

from Listener.processing.batches import MAX_BATCH
from tests.support.brokers import BrokerFactory, MqttProbe
from tests.support.job_messages import body
from tests.support.listener_processes import ListenerProcess

pytestmark = pytest.mark.timeout(120)

#: Mosquitto's default max_inflight_messages: QoS 1 messages sent to the listener and not yet acknowledged.
BROKER_INFLIGHT = 20


async def publish(sender: MqttProbe, topic: str, payloads: List[str], qos: int = 1) -> None:
    """Publish each payload (QoS 1: each acknowledged by the broker) from a thread."""
    def go() -> None:
        for payload in payloads:
            sender.publish(topic, payload, qos=qos)
    await asyncio.to_thread(go)


async def test_acknowledgements_wait_for_earlier_messages_finishing_later(
        broker_factory: BrokerFactory, processes: Callable[..., ListenerProcess], probe: Callable[..., MqttProbe],
        unique_topic: str) -> None:
    """max_concurrent_jobs 4: job "slow" (first) is still running when "fast" (second) finished. SIGKILL then: the
    next session gets both again, because fast's PUBACK waits for slow's (MQTT 3.1.1 §4.6, arrival order)."""
    broker = broker_factory()
    client_id = f"ordered-{os.urandom(4).hex()}"
    options = ("--client-id", client_id, "--persistent", "--max-concurrent", "4", "--sleep-from-payload")
    first = processes(broker.plain, unique_topic, 0.0, *options)
    await asyncio.to_thread(first.wait_line, "READY")
    await publish(probe(endpoint=broker.plain), f"{unique_topic}/jobs",
                  ['job_id = "slow"\nsleep = 30', 'job_id = "fast"\nsleep = 0'])
    await asyncio.to_thread(first.wait_line, "DONE fast", 10)
    assert "DONE slow" not in first.lines
    first.kill()

    second = processes(broker.plain, unique_topic, 0.0, *options)
    await asyncio.to_thread(second.wait_line, "READY")
    await asyncio.to_thread(second.wait_line, "DONE fast", 10)
    await asyncio.to_thread(second.wait_line, "STARTED slow", 10)
    assert sorted(second.started_jobs()) == ["fast", "slow"]


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_sigterm_leaves_the_unfinished_jobs_with_the_broker_for_the_next_session(
        broker_factory: BrokerFactory, processes: Callable[..., ListenerProcess], probe: Callable[..., MqttProbe],
        unique_topic: str, tmp_path: Path, store: str) -> None:
    """SIGTERM with a stuck job and one queued behind it: the grace period (1 s) ends, neither is acknowledged,
    and the next process with the same client id runs both. A job that finished before is not redelivered.
    With the SQLite store the cancelled job is in the file, FAILED "Cancelled", and still runs again."""
    broker = broker_factory()
    client_id = f"term-{os.urandom(4).hex()}"
    options = ("--client-id", client_id, "--persistent", "--sleep-from-payload",
               "--job-store", "memory" if store == "memory" else f"sqlite:///{tmp_path / 'jobs.db'}")
    first = processes(broker.plain, unique_topic, 0.0, *options, "--signals", "--grace", "1")
    await asyncio.to_thread(first.wait_line, "READY")
    sender = probe(endpoint=broker.plain)
    await publish(sender, f"{unique_topic}/jobs", ['job_id = "done-before"'])
    await asyncio.to_thread(first.wait_line, "DONE done-before", 10)
    await publish(sender, f"{unique_topic}/jobs", ['job_id = "stuck"\nsleep = 8', 'job_id = "queued"'])
    await asyncio.to_thread(first.wait_line, "STARTED stuck", 10)
    first.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(first.wait_line, "EXITED", 15)
    assert "STARTED queued" not in first.lines
    first.kill()

    second = processes(broker.plain, unique_topic, 0.0, *options, "--signals")
    await asyncio.to_thread(second.wait_line, "READY")
    await asyncio.to_thread(second.wait_line, "DONE queued", 20)
    assert second.started_jobs() == ["stuck", "queued"]  # redelivered in order; done-before was acknowledged


def _runs(path: Path) -> Dict[str, List[int]]:
    found: Dict[str, List[int]] = defaultdict(list)
    for line in path.read_text().splitlines():
        job_id, pid = line.split()
        found[job_id].append(int(pid))
    return found


def _completed_in(database: Path) -> Set[str]:
    """Job ids the SQLite store recorded COMPLETED (read as an operator would, with a second connection)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as reader:
        return {row[0] for row in reader.execute("SELECT job_id FROM jobs WHERE status = 'completed'")}


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory", "sqlite"])
@pytest.mark.parametrize("concurrency", [1, 16])
@pytest.mark.parametrize("qos", [1, 2])
async def test_sigkill_mid_burst_loses_no_job(
        broker_factory: BrokerFactory, processes: Callable[..., ListenerProcess], probe: Callable[..., MqttProbe],
        unique_topic: str, tmp_path: Path, concurrency: int, store: str, qos: int) -> None:
    """3,000 jobs at QoS 1 (results at QoS 0) or QoS 2 (results at QoS 2 too), persistent session, SIGKILL
    mid-burst, restart: every job has a result, and a job ran twice only if it was unacknowledged at the kill:
    among the last ones the first process started, no more than the broker's in-flight limit. With the SQLite
    store, no job recorded COMPLETED before the kill runs again. At QoS 2 the PUBREC is the acknowledgement
    (the broker hands the message over with it), so it waits for the job as a QoS 1 PUBACK does."""
    broker = broker_factory(max_inflight=BROKER_INFLIGHT)
    runs = tmp_path / "runs.txt"
    database = tmp_path / "jobs.db"
    results = f"{unique_topic}/results"
    watcher = probe(results, endpoint=broker.plain)
    client_id = f"burst-{os.urandom(4).hex()}"
    options = ("--client-id", client_id, "--persistent", "--max-concurrent", str(concurrency),
               "--runs-file", str(runs), "--quiet", "--qos", str(qos),
               "--job-store", "memory" if store == "memory" else f"sqlite:///{database}",
               *(("--result-qos", "2") if qos == 2 else ()))
    job_ids = [f"b-{i:04d}" for i in range(3000)]
    first = processes(broker.plain, unique_topic, 0.0, *options)
    await asyncio.to_thread(first.wait_line, "READY")
    sending = asyncio.ensure_future(publish(probe(endpoint=broker.plain), f"{unique_topic}/jobs",
                                            [f'job_id = "{job_id}"' for job_id in job_ids], qos=qos))
    for _ in range(600):  # at most 30 s: kill once a few hundred jobs ran
        if runs.exists() and len(runs.read_text().splitlines()) >= 300:
            break
        await asyncio.sleep(0.05)
    first.process.send_signal(signal.SIGKILL)
    first.kill()
    first_runs = [line.split()[0] for line in runs.read_text().splitlines()]
    completed_before = _completed_in(database) if store == "sqlite" else set()
    await asyncio.wait_for(sending, 60)

    second = processes(broker.plain, unique_topic, 0.0, *options)
    await asyncio.to_thread(second.wait_line, "READY")
    wanted = set(job_ids)

    def missing() -> Set[str]:
        return wanted - {body(m)["job_id"] for m in watcher.messages(results)}
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(_until(lambda: not missing(), every=0.2), 60)
    assert not missing(), f"{len(missing())} jobs without a result, e.g. {sorted(missing())[:10]}"
    by_job = _runs(runs)
    twice = sorted(job for job, pids in by_job.items() if len(pids) > 1)
    print(f"QoS {qos}, {store} store, concurrency {concurrency}: first process ran {len(first_runs)} jobs before SIGKILL "
          f"({len(completed_before)} recorded COMPLETED); {len(twice)} ran again after the restart")
    assert set(by_job) == wanted  # none lost
    assert all(len(pids) <= 2 for pids in by_job.values())
    if store == "sqlite":
        # What ran again had run before the kill without its outcome committed (an acknowledgement waits for
        # the commit, so this can exceed the broker's in-flight limit); nothing recorded COMPLETED ran again.
        assert completed_before, "the store recorded nothing before the kill: the checks below prove nothing"
        assert not completed_before & set(twice), sorted(completed_before & set(twice))
        assert set(twice) <= set(first_runs) - completed_before
    else:
        # What ran again was unacknowledged at the kill. Mosquitto 2.0.11 sends an acknowledging client more than
        # its in-flight limit, the more so on a busy machine (up to 32 unacknowledged with a limit of 20 under CPU
        # load, the same before and after the listener's changes); one job at a time, a batch of those
        # (Listener.processing.batches) may have run on the worker thread before the loop recorded and
        # acknowledged them. Acknowledging only at the end, or never, would put hundreds here.
        bound = 2 * BROKER_INFLIGHT + (MAX_BATCH if concurrency == 1 else 0)
        assert len(twice) <= bound, twice
        assert set(twice) <= set(first_runs[-bound:]), (twice, first_runs[-bound:])


def _rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2 ** 20


async def test_qos0_flood_in_a_sustained_overload_is_dropped_counted_and_survived(
        start_listener: Callable[..., Any], probe: Callable[..., MqttProbe], unique_topic: str) -> None:
    """10,000 QoS 0 messages of 4 KB while one job blocks and the other slot's jobs publish QoS 1 results: each
    result's PUBACK is behind the flood, so the listener must read on (a paused reader would never see it).
    At most max_pending_messages (200) wait queued and 4 MiB held as bytes; the rest are dropped, counted in
    messages_dropped and reported by a (rate-limited) WARNING event; afterwards the listener processes a QoS 1
    job (never dropped: it waits for room instead). Without results awaiting acknowledgements, the same flood
    waits unread and is processed whole (tests/mqtt/test_memory_bounds.py)."""
    release = asyncio.Event()
    after_flood = asyncio.Event()

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if job_id == "blocker":
            await release.wait()
        if job_id == "after-flood":
            after_flood.set()
        return {"job_id": job_id}

    later = f"{unique_topic}/later"
    listener, _ = await start_listener(processor, max_pending_messages=200, qos=0, max_concurrent_jobs=2,
                                       custom_topics={later: {"qos": 1}, f"{unique_topic}/results": {"qos": 1}})
    watcher = probe(f"{unique_topic}/log")
    sender = probe()
    before = _rss_mb()
    sender.publish(f"{unique_topic}/jobs", 'job_id = "blocker"', qos=0)
    await asyncio.wait_for(_until(lambda: listener.metrics()["messages_received"] >= 1), 10)
    padding = "x = '" + "y" * 4000 + "'\n"
    flood = 10_000
    for i in range(flood):
        sender.publish_nowait(f"{unique_topic}/jobs", f'job_id = "f-{i}"\n{padding}', qos=0)
    await asyncio.to_thread(
        watcher.wait_until, lambda found: any(body(m).get("event") == "messages_dropped" for m in found), 30.0,
        f"{unique_topic}/log", "a messages_dropped event")
    peak = _rss_mb()
    snapshot = listener.metrics()
    assert snapshot["queue_depth"] <= 200
    assert snapshot["messages_dropped_by_reason"].get("max_pending_messages", 0) == snapshot["messages_dropped"]
    sender.publish(later, 'job_id = "after-flood"', qos=1)
    release.set()
    await asyncio.wait_for(after_flood.wait(), 60)
    dropped = listener.metrics()["messages_dropped"]
    print(f"QoS 0 flood: {dropped} dropped, RSS {before:.0f} MB before, {peak:.0f} MB during the flood")
    assert dropped > 0
    assert peak - before < 300


@pytest.mark.slow
async def test_qos1_flood_is_bounded_by_the_unacknowledged_window(
        broker_factory: BrokerFactory, start_listener: Callable[..., Any], probe: Callable[..., MqttProbe]) -> None:
    """5,000 QoS 1 messages to a listener whose jobs block: the broker keeps what is not acknowledged, so the
    listener holds no more than the broker's in-flight limit; nothing is dropped, everything runs after."""
    broker = broker_factory(max_inflight=BROKER_INFLIGHT)
    release = asyncio.Event()
    done: Set[str] = set()

    async def processor(data: Dict[str, Any], job_id: str) -> None:
        await release.wait()
        done.add(job_id)

    listener, _ = await start_listener(processor, endpoint=broker.plain, qos=1, max_concurrent_jobs=4)
    before = _rss_mb()
    sender = probe(endpoint=broker.plain)
    count = 5_000
    await publish(sender, f"{listener.config.topic}", [f'job_id = "q-{i}"' for i in range(count)])
    await asyncio.sleep(0.5)  # let the broker push whatever it would
    snapshot = listener.metrics()
    received, queued = snapshot["messages_received"], snapshot["queue_depth"]
    peak = _rss_mb()
    print(f"QoS 1 flood: {received} of {count} taken and {queued} queued while jobs block; "
          f"RSS {before:.0f} MB before, {peak:.0f} MB after")
    assert received + queued <= BROKER_INFLIGHT
    release.set()
    await asyncio.wait_for(_until(lambda: len(done) == count), 60)
    assert listener.metrics()["messages_dropped"] == 0


async def _until(condition: Callable[[], bool], every: float = 0.02) -> None:
    while not condition():
        await asyncio.sleep(every)
