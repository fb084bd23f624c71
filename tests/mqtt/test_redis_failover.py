"""A Redis master killed under load, with a listener process on real Mosquitto (QoS 1) and a Redis Cluster or a
Redis watched by sentinels (issue 26, item 3).

A listener process (tests/support/listener_program.py) runs a stream of jobs on a ``redis+cluster://`` or
``redis+sentinel://`` store. A third of the way through, the master holding the store's records is killed
(SIGKILL) and its replica promoted (a cluster: ``CLUSTER FAILOVER TAKEOVER`` on the replica; sentinels: their own
failover, ``down-after-milliseconds`` 1000); the killed server then comes back, as a replica of the new master.

- No job is lost and none runs twice: every job has its result, each job ran once.
- The listener reports the failover: a ``job_store_failover`` log event.
- Then every job is published again (an at-least-once publisher retrying, a redelivery): a job whose finished
  record the new master has is a duplicate (``duplicate_action = "error"``: a ``duplicate_job`` error event);
  one whose record the old master had not yet passed on runs again. Those re-runs are counted, and printed
  (docs/scaling.md, "Failover"). Without ``wait_replicas`` they are the few jobs finished in the moment before the
  kill; with ``wait_replicas=1`` there are none: a finished record is acknowledged only once the replica has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Protocol, Set

import pytest
import redis

from tests.support.brokers import BrokerEndpoint, MqttProbe
from tests.support.job_messages import body, job_ids_of, publish_jobs
from tests.support.listener_processes import ListenerProcess
from tests.support.redis_cluster import RedisCluster, private_redis_cluster
from tests.support.redis_sentinel import RedisSentinels, redis_sentinels
from tests.support.redis_server import RedisServer, unique_prefix
from tests.support.waiting import eventually

__all__ = ["private_redis_cluster", "redis_sentinels"]  # the fixtures, for pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

JOBS = 600
#: Seconds between two publications (the stream lasts about JOBS * PACE seconds, the kill comes a third in).
PACE = 0.008
JOB_SECONDS = 0.002
CONCURRENCY = "8"
#: Without wait_replicas: the most jobs that may run again besides those started while the replica was cut off: the
#: jobs in flight at the cut, and those finished in the moment before it whose records were still being written
#: (replication on one host lags by well under a millisecond).
UNREPLICATED_BOUND = 2 * int(CONCURRENCY)
#: Seconds the replica is cut off from its master just before the kill (its link down, a partition): the writes of
#: those seconds are on the master only. Without it, on one host, the replica had every write the killed master
#: acknowledged (a killed process's socket still delivers what it had sent).
LAG = 0.3
WAIT = "&wait_replicas=1&wait_timeout_ms=500"
#: Seconds for each stage: the failover, all the results, the jobs published again settled.
STAGE_TIMEOUT = 30.0


class Failover(Protocol):
    """A replicated Redis whose master can be killed and replaced."""

    def url(self, prefix: str) -> str:
        """The ``job_store`` setting of a store with ``prefix``."""

    def crash(self, prefix: str, lag: float, at_cut: Callable[[], None]) -> RedisServer:
        """Kill the master of ``prefix``'s records and return once a replica took its place; the server killed.
        ``lag``: seconds the replica is cut off from the master just before the kill, a replica lagging behind;
        ``at_cut`` is called as it is cut off (or just before the kill)."""

    def rejoin(self, killed: RedisServer) -> None:
        """Start ``killed`` again and return once it replicates the new master."""


@dataclass
class ClusterFailover:
    cluster: RedisCluster

    def url(self, prefix: str) -> str:
        return self.cluster.url(prefix)

    def crash(self, prefix: str, lag: float, at_cut: Callable[[], None]) -> RedisServer:
        master = self.cluster.master_of(f"{{{prefix}}}:ids")
        replica = self.cluster.replica_of(master)
        with _cut_off(replica, master, lag, at_cut):
            master.kill()
        client = redis.Redis(port=replica.port, decode_responses=True, socket_timeout=5)
        try:
            client.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")  # no vote needed from the dead master
            _until(lambda: client.info("replication").get("role") == "master", "the replica promoted")
        finally:
            client.close()
        return master

    def rejoin(self, killed: RedisServer) -> None:
        killed.start()  # its nodes.conf says it was a master; the cluster makes it the new master's replica
        self.cluster.wait_until_ready(STAGE_TIMEOUT)


@dataclass
class SentinelFailover:
    sentinels: RedisSentinels

    def url(self, prefix: str) -> str:
        return self.sentinels.url(prefix)

    def crash(self, prefix: str, lag: float, at_cut: Callable[[], None]) -> RedisServer:
        killed, replica = self.sentinels.master, self.sentinels.replica
        with _cut_off(replica, killed, lag, at_cut):
            killed.kill()
        _until(lambda: self.sentinels.master_port() == replica.port, "the sentinels promoted the replica")
        return killed

    def rejoin(self, killed: RedisServer) -> None:
        # As a replica of the new master at once (the sentinels would turn it into one too, in their own time).
        killed.extra_args = [*killed.extra_args, "--replicaof", "127.0.0.1", str(self.sentinels.replica.port)]
        killed.start()
        client = redis.Redis(port=self.sentinels.replica.port, decode_responses=True, socket_timeout=5)
        try:
            _until(lambda: any(isinstance(value, dict) and value.get("state") == "online"
                               for value in client.info("replication").values()), "the old master replicating")
        finally:
            client.close()


@contextlib.contextmanager
def _cut_off(replica: RedisServer, master: RedisServer, seconds: float, at_cut: Callable[[], None]) -> Iterator[None]:
    """``replica`` cut off from ``master`` for ``seconds`` before what the block does (the master's writes meanwhile
    do not reach it: a link down, a partition), and back after it: it is stopped (SIGSTOP), so that it cannot
    reconnect, and the master drops its replication link; continued (SIGCONT) after the block."""
    process = replica.process
    assert process is not None
    at_cut()
    if seconds:
        process.send_signal(signal.SIGSTOP)
        client = redis.Redis(port=master.port, socket_timeout=5)
        try:
            client.client_kill_filter(_type="replica")
        finally:
            client.close()
        time.sleep(seconds)  # the lag to build up: a duration chosen by the test, not a wait for a condition
    try:
        yield
    finally:
        if seconds:
            process.send_signal(signal.SIGCONT)


def _until(check: Callable[[], bool], what: str, timeout: float = STAGE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def _publish_paced(sender: MqttProbe, topic: str, job_ids: List[str]) -> None:
    for job_id in job_ids:
        sender.publish(topic, f'job_id = "{job_id}"', qos=1)
        time.sleep(PACE)


def _runs(path: Path) -> Counter[str]:
    return Counter(line.split()[0] for line in path.read_text().splitlines()) if path.exists() else Counter()


@dataclass
class Outcome:
    reran: Set[str]
    duplicates: Set[str]
    started_by_the_kill: Set[str]
    started_at_the_cut: Set[str]
    failover_events: int


async def _killed_under_load(failover: Failover, wait: bool, lag: float, endpoint: BrokerEndpoint, unique_topic: str,
                             probe: Callable[..., MqttProbe], processes: Callable[..., ListenerProcess],
                             tmp_path: Path) -> Outcome:
    runs = tmp_path / "runs.txt"
    jobs, results, errors, log = (f"{unique_topic}/{name}" for name in ("jobs", "results", "error", "log"))
    watcher = probe(results, errors, log)
    url = failover.url(unique_prefix("failover")) + (WAIT if wait else "")
    listener = processes(endpoint, unique_topic, JOB_SECONDS, "--quiet", "--max-concurrent", CONCURRENCY,
                         "--job-store", url, "--runs-file", str(runs), "--duplicate-action", "error")
    await asyncio.to_thread(listener.wait_line, "READY")
    ids = [f"j-{n:04d}" for n in range(JOBS)]
    sender = probe()
    publishing = asyncio.ensure_future(asyncio.to_thread(_publish_paced, sender, jobs, ids))

    def results_for_all() -> bool:
        return set(ids) <= set(job_ids_of(watcher.messages(results)))

    await eventually(lambda: len(watcher.messages(results)) >= JOBS // 3, STAGE_TIMEOUT, "a third of the results")
    prefix = url.split("prefix=", 1)[1].split("&", 1)[0]
    at_cut: Set[str] = set()
    killed = await asyncio.to_thread(failover.crash, prefix, lag, lambda: at_cut.update(_runs(runs)))
    started = set(_runs(runs))  # every job that may have finished on the old master
    assert len(started) < JOBS, "the stream ended before the kill: the test proves nothing"
    await asyncio.to_thread(failover.rejoin, killed)
    await asyncio.wait_for(publishing, STAGE_TIMEOUT)
    await eventually(results_for_all, STAGE_TIMEOUT, "a result for every job")

    ran = _runs(runs)
    assert set(ran) == set(ids) and set(ran.values()) == {1}, {i: n for i, n in ran.items() if n != 1}  # none lost
    assert set(Counter(job_ids_of(watcher.messages(results))).values()) == {1}
    events = [body(message).get("event") for message in watcher.messages(log)]

    def duplicates() -> Set[str]:
        return {str(body(message)["job_id"]) for message in watcher.messages(errors)
                if body(message).get("error_type") == "duplicate_job"}

    def settled() -> bool:
        again = Counter(job_ids_of(watcher.messages(results)))
        return {job_id for job_id in ids if again[job_id] >= 2} | duplicates() == set(ids)

    await publish_jobs(sender, jobs, ids)  # every job again: a duplicate, or run again if its record was lost
    await eventually(settled, STAGE_TIMEOUT, "every job published again run or refused as a duplicate")
    ran = _runs(runs)
    reran = {job_id for job_id in ids if ran[job_id] >= 2}
    assert max(ran.values()) <= 2 and not reran & duplicates()
    assert listener.process.poll() is None, listener.errors[-20:]
    return Outcome(reran, duplicates(), started, at_cut, events.count("job_store_failover"))


def _report(kind: str, wait: bool, lag: float, outcome: Outcome) -> None:
    print(f"\nFAILOVER {kind} {'wait_replicas=1' if wait else 'asynchronous replication'}, replica lagging "
          f"{lag:.1f} s: {len(outcome.reran)} of {JOBS} completed jobs ran again after the failover "
          f"({len(outcome.started_by_the_kill)} had started by the kill, "
          f"{len(outcome.started_by_the_kill - outcome.started_at_the_cut)} while the replica was cut off; "
          f"{outcome.failover_events} job_store_failover event(s)): {sorted(outcome.reran)}")


def _check(outcome: Outcome, wait: bool, lag: float) -> None:
    # Only jobs that had run on the old master can have lost their records with it, and only those finished in
    # the moment before the kill (``lag`` longer with a replica lagging behind): at most one a PACE, and the jobs
    # in flight. With wait_replicas, none.
    assert outcome.reran <= outcome.started_by_the_kill, sorted(outcome.reran - outcome.started_by_the_kill)
    bound = 0 if wait else UNREPLICATED_BOUND + len(outcome.started_by_the_kill - outcome.started_at_the_cut)
    assert len(outcome.reran) <= bound, sorted(outcome.reran)
    if lag and not wait:  # the window is real (and seen): what wait_replicas closes is there to close
        assert outcome.reran
    assert outcome.failover_events >= 1  # the listener said so (a job_store_failover log event)


#: (wait_replicas, seconds the replica lags behind at the kill)
CASES = [pytest.param(False, 0.0, id="async"), pytest.param(False, LAG, id="async-lagging-replica"),
         pytest.param(True, LAG, id="wait_replicas-lagging-replica")]


@pytest.mark.parametrize("wait, lag", CASES)
async def test_a_cluster_master_killed_under_load_loses_no_job(
        private_redis_cluster: RedisCluster, wait: bool, lag: float, mqtt_endpoint: BrokerEndpoint,
        unique_topic: str, probe: Callable[..., MqttProbe], processes: Callable[..., ListenerProcess],
        tmp_path: Path) -> None:
    outcome = await _killed_under_load(ClusterFailover(private_redis_cluster), wait, lag, mqtt_endpoint, unique_topic,
                                       probe, processes, tmp_path)
    _report("redis+cluster", wait, lag, outcome)
    _check(outcome, wait, lag)


@pytest.mark.parametrize("wait, lag", CASES)
async def test_a_sentinel_master_killed_under_load_loses_no_job(
        redis_sentinels: RedisSentinels, wait: bool, lag: float, mqtt_endpoint: BrokerEndpoint, unique_topic: str,
        probe: Callable[..., MqttProbe], processes: Callable[..., ListenerProcess], tmp_path: Path) -> None:
    outcome = await _killed_under_load(SentinelFailover(redis_sentinels), wait, lag, mqtt_endpoint, unique_topic,
                                       probe, processes, tmp_path)
    _report("redis+sentinel", wait, lag, outcome)
    _check(outcome, wait, lag)
