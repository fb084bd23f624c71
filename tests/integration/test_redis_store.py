"""The Redis job store against a real ``redis-server``: what only a shared store does (atomic claims across
clients, every worker's jobs in the queries, one limit for all, TTLs) and how it fails (unreachable at
start, a wrong password), never showing the password. The contract it shares with the other stores is
in tests/unit/test_job_store_contract.py; Redis lost and back mid-run is in tests/mqtt/test_redis_store_live.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Dict, List

import pytest
import redis

from Listener import EventListener, EventListenerConfig, JobStatus
from Listener.cli.command import EXIT_FAILURE, EXIT_OK, main
from Listener.jobs.factory import JobStoreError, check_job_store, job_store_problem
from Listener.jobs.admission import Admission
from Listener.jobs.redis import (ACTIVE_LEASE, CLUSTER_TRANSACTIONS, DATA_LOST, OWNER_LEASE, RedisJobReader, RedisJobStore,
                                 parse_redis_url)
from Listener.mqtt.client import secrets
from tests.support.brokers import free_port
from tests.support.redis_cluster import RedisCluster, redis_cluster
from tests.support.redis_server import RedisFactory, RedisServer, redis_factory, redis_server, unique_prefix

__all__ = ["redis_cluster", "redis_factory", "redis_server"]  # the fixtures, for pytest

pytestmark = pytest.mark.timeout(60)

CREATED, DUPLICATE, FULL, BUSY = Admission.CREATED, Admission.DUPLICATE, Admission.FULL, Admission.BUSY


@dataclass
class Backend:
    """Where the ``stores`` of a test keep their records: a standalone Redis, or a Redis Cluster."""

    url: Callable[[str], str]  # a job_store setting for a prefix
    reader: Callable[[], Any]  # a synchronous client (decoding answers)
    cluster: bool

    def keys(self, prefix: str) -> str:
        """What the keys of the stores with ``prefix`` start with (a hash tag in a cluster)."""
        return f"{{{prefix}}}" if self.cluster else prefix


@pytest.fixture(params=["standalone", pytest.param("cluster", marks=pytest.mark.timeout(90))])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each store test runs against a standalone Redis and against a Redis Cluster (one store's keys in one
    slot: its prefix is a hash tag)."""
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return Backend(cluster.url, cluster.client, True)
    server: RedisServer = request.getfixturevalue("redis_server")
    return Backend(server.url, lambda: reader(server), False)


@pytest.fixture
async def stores(backend: Backend) -> AsyncIterator[Callable[..., Any]]:
    """``make(max_jobs=10, ttl=60, prefix=None, owner_lease=OWNER_LEASE)``: an open store (its own client); all
    closed afterwards. ``make.prefix``: the stores' prefix, ``make.keys``: what their keys start with,
    ``make.reader()``: a client of the same Redis."""
    made: List[RedisJobStore] = []
    shared = unique_prefix("store")

    async def make(max_jobs: int = 10, ttl: float = 60, prefix: str = "",
                   owner_lease: float = OWNER_LEASE) -> RedisJobStore:
        store = RedisJobStore(backend.url(prefix or shared), max_jobs, ttl)
        store.owner_lease = owner_lease
        await store.open()
        made.append(store)
        return store

    make.prefix = shared  # type: ignore[attr-defined]
    make.keys = backend.keys(shared)  # type: ignore[attr-defined]
    make.reader = backend.reader  # type: ignore[attr-defined]
    yield make
    for store in made:
        await store.close()


def reader(server: RedisServer) -> "redis.Redis[str]":
    return redis.Redis(port=server.port, password=server.password, decode_responses=True)


async def test_a_finished_record_expires_after_the_ttl_an_active_one_holds_a_lease(
        stores: Any) -> None:
    store = await stores(ttl=30)
    assert await store.admit("a", {"x": 1}, "t") is CREATED
    await store.start_attempt("a")
    await store.durable()
    check = stores.reader()
    key = f"{stores.keys}:job:a"
    active_ttl = check.pttl(key)
    assert 0 < active_ttl <= ACTIVE_LEASE * 1000  # a worker that dies does not hold the id for ever
    await store.set_status("a", JobStatus.COMPLETED, result={"y": 2})
    await store.durable()
    finished_ttl = check.pttl(key)
    assert 25_000 < finished_ttl <= 30_000
    assert check.hget(key, "status") == "completed" and check.hget(key, "result") == '{"y":2}'
    assert check.zscore(f"{stores.keys}:finished", "a") is not None
    check.close()


async def test_a_claim_whose_answer_was_lost_is_claimed_again_not_taken_for_a_duplicate(stores: Any) -> None:
    """A claim that reached Redis but whose answer never came back (the connection failed, the master died after
    replicating it) left a PENDING record owned by this store for a job it does not hold: the next claim is this
    job's, not a duplicate of it (which acknowledged the message of a job that never ran)."""
    store = await stores()
    check = stores.reader()
    check.hset(f"{stores.keys}:job:lost", mapping={"job_id": "lost", "status": "pending", "duplicate_count": "0",
                                                   "started_at": "2026-01-01T00:00:00.000000", "attempts": "0",
                                                   "interrupted": "0", "owner": store.owner})
    check.zadd(f"{stores.keys}:ids", {"lost": 1.0})
    check.close()
    assert await store.admit("lost", {"n": 1}, None) is CREATED
    assert await store.admit("lost", {"n": 1}, None) is DUPLICATE  # held now: a copy of a job that runs here


class Monitor:
    """Every command a Redis server runs, as MONITOR shows it (``client_type``, the words), from now to stop()."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.seen: List[Any] = []
        ready = threading.Event()
        self.thread = threading.Thread(target=self._watch, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(5)

    def _watch(self, ready: threading.Event) -> None:
        with reader(self.server).monitor() as feed:
            ready.set()
            for command in feed.listen():
                self.seen.append((command["client_type"], command["command"].split()))
                if command["command"] == "SET monitor-done 1":
                    return

    def stop(self) -> List[Any]:
        check = reader(self.server)
        check.set("monitor-done", 1)
        check.close()
        self.thread.join(5)
        return self.seen


async def test_a_full_store_evicts_with_one_script_run_per_claim(redis_server: RedisServer) -> None:
    """A store at its limit evicts the oldest finished record at every claim: the claim that evicts names the
    records next in line, so that the next claim is given them at once (one script run, not two)."""
    store = RedisJobStore(redis_server.url(unique_prefix("evict")), 3, 60)
    await store.open()
    try:
        for n in range(3):
            assert await store.admit(f"old-{n}", None, None) is CREATED
            await store.set_status(f"old-{n}", JobStatus.COMPLETED, result=n)
        await store.durable()
        assert await store.admit("first", None, None) is CREATED  # asks for old-0's key, then evicts it
        await store.set_status("first", JobStatus.COMPLETED, result=0)
        await store.durable()
        monitor = Monitor(redis_server)
        for n in range(5):
            assert await store.admit(f"new-{n}", None, None) is CREATED
            await store.set_status(f"new-{n}", JobStatus.COMPLETED, result=n)
            await store.durable()
        seen = monitor.stop()
        assert [job.job_id for job in await store.recent(10)] == ["new-4", "new-3", "new-2"]
    finally:
        await store.close()
    runs = [words for kind, words in seen if kind != "lua" and words[0].upper() == "EVALSHA"]
    assert len(runs) == 5, runs


async def test_the_scripts_touch_only_the_keys_they_are_given(redis_server: RedisServer) -> None:
    """Redis requires of a script that it touch only the keys it is given (a cluster checks part of it): MONITOR
    shows every command the claim and take-over scripts run, each on one of the KEYS of its EVALSHA, through a
    claim that waits for a live owner, one that evicts a finished record, one that finds the store full of a dead
    worker's jobs, and a take-over."""
    url = redis_server.url(unique_prefix("keys"))
    monitor = Monitor(redis_server)
    a, b = RedisJobStore(url, 3, 60), RedisJobStore(url, 3, 60)
    resumed = RedisJobStore(url, 3, 60)
    resumed.resumable = True
    for store in (a, b, resumed):
        await store.open()
    try:
        assert await a.admit("f1", None, None) is CREATED
        await a.set_status("f1", JobStatus.COMPLETED, result=1)
        await a.durable()
        assert await a.admit("a1", None, None) is CREATED
        await a.durable()
        assert await b.admit("a1", None, None) is BUSY  # a's lease is alive
        assert await b.admit("b1", None, None) is CREATED
        assert await b.admit("b2", None, None) is CREATED  # f1, finished, evicted
        assert await b.get("f1") is None
        await a.close()  # a1 is a dead worker's job now
        assert await b.admit("b3", None, None) is CREATED  # a1 dropped: its record only held a slot
        assert await b.get("a1") is None
        await b.set_status("b1", JobStatus.COMPLETED, result=1)
        await b.durable()
        assert await resumed.admit("r1", {"n": 1}, None) is CREATED
        await resumed.durable()
        await resumed.close()
        assert [job.job_id for job in await b.orphans()] == ["r1"]
    finally:
        for store in (a, b, resumed):
            await store.close()
        seen = monitor.stop()
    given: List[str] = []
    scripts = 0
    for kind, words in seen:
        if kind != "lua" and words[0].upper() == "EVALSHA":
            given, scripts = words[3:3 + int(words[2])], scripts + 1
        elif kind == "lua":
            assert words[1] in given, f"{words} touches a key its script was not given ({given})"
    assert scripts > 7  # the claims above and the scripts run again with the keys they asked for


async def test_a_claim_is_atomic_across_clients(stores: Any) -> None:
    first, second = await stores(max_jobs=1000), await stores(max_jobs=1000)
    ids = [f"job-{n}" for n in range(60)]
    outcomes = await asyncio.gather(*(store.admit(job_id, {"n": job_id}, None)
                                      for job_id in ids for store in (first, second)))
    by_id: Dict[str, List[Admission]] = {}
    for index, outcome in enumerate(outcomes):
        by_id.setdefault(ids[index // 2], []).append(outcome)
    # The loser waits: the job is active in a live worker (a duplicate once it settled).
    assert all(sorted(o.value for o in got) == ["busy", "created"] for got in by_id.values()), by_id
    assert not set(first.jobs) & set(second.jobs)
    assert set(first.jobs) | set(second.jobs) == set(ids)


async def test_a_duplicate_counts_in_the_record_and_an_interrupted_job_runs_again_elsewhere(stores: Any) -> None:
    first, second = await stores(), await stores()
    assert await first.admit("done", None, None) is CREATED
    await first.start_attempt("done")
    await first.set_status("done", JobStatus.COMPLETED, result=1)
    assert await first.admit("cut", None, None) is CREATED
    await first.start_attempt("cut")
    await first.interrupt("cut")
    await first.durable()
    assert await second.admit("done", None, None) is DUPLICATE
    record = await second.get("done")
    assert record is not None and (record.status, record.result, record.duplicate_count) == (JobStatus.DUPLICATE, 1, 1)
    assert await second.admit("cut", {"v": 2}, None) is CREATED  # stop() cut it short: it runs again
    assert second.jobs["cut"].attempts == 1
    assert await first.admit("cut", None, None) is BUSY  # only once: the second store runs it now


async def test_reprocess_does_not_run_a_job_running_elsewhere(stores: Any) -> None:
    first, second = await stores(), await stores()
    assert await first.admit("r", None, None) is CREATED
    await first.start_attempt("r")
    await first.durable()
    assert await second.admit("r", None, None, duplicate_action="reprocess") is BUSY
    await first.set_status("r", JobStatus.COMPLETED)
    await first.durable()
    assert await second.admit("r", None, None, duplicate_action="reprocess") is CREATED


async def test_the_limit_counts_every_workers_records(stores: Any) -> None:
    first, second = await stores(max_jobs=3), await stores(max_jobs=3)
    assert await first.admit("a", None, None) is CREATED
    assert await first.admit("b", None, None) is CREATED
    assert await second.admit("c", None, None) is CREATED
    assert await second.admit("d", None, None) is FULL  # three active records, two workers
    assert await first.admit("d", None, None) is FULL
    await first.set_status("a", JobStatus.COMPLETED)
    await first.durable()
    assert await second.admit("d", None, None) is CREATED  # "a", finished, was evicted to make room
    check = stores.reader()
    assert not check.exists(f"{stores.keys}:job:a")
    assert sorted(check.zrange(f"{stores.keys}:ids", 0, -1)) == ["b", "c", "d"]
    check.close()


async def test_queries_see_every_listeners_jobs(backend: Backend) -> None:
    url = backend.url(unique_prefix("queries"))
    one = EventListener(EventListenerConfig(job_store=url, client_id="one"))
    two = EventListener(EventListenerConfig(job_store=url, client_id="two"))

    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if data.get("fail"):
            raise ValueError("asked to fail")
        return {"by": job_id}

    try:
        assert await one.process_message({"job_id": "from-one"}, processor) == {"by": "from-one"}
        assert await two.process_message({"job_id": "from-two", "fail": True}, processor) is None
        assert await two.process_message({"job_id": "from-one"}, processor) is None  # a duplicate across listeners
        seen = await two.get_job_status("from-one")
        assert seen is not None and (seen.status, seen.result, seen.duplicate_count) == (
            JobStatus.DUPLICATE, {"by": "from-one"}, 1)
        assert await one.is_job_completed("from-two") and await one.job_exists("from-two")
        assert sorted(await one.get_all_jobs()) == ["from-one", "from-two"]
        assert list(await one.get_failed_jobs()) == ["from-two"]
        assert list(one.jobs) == ["from-one"]  # listener.jobs: this process's jobs only
    finally:
        await one.__aexit__(None, None, None)
        await two.__aexit__(None, None, None)


async def test_unreachable_at_start_is_a_clear_error_without_the_password() -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    listener = EventListener(EventListenerConfig(job_store=url, reconnect_retries=0))
    with pytest.raises(JobStoreError) as raised:
        await asyncio.wait_for(listener.run(lambda data, job_id: None), 20)
    text = str(raised.value)
    assert "Cannot open job store redis://:***@127.0.0.1:" in text and "hunter2-secret" not in text
    problem = check_job_store(url)
    assert problem is not None and "127.0.0.1" in problem and "hunter2-secret" not in problem
    assert "hunter2-secret" not in repr(listener.config)


async def test_a_wrong_password_is_refused_by_name_and_never_shown(redis_factory: RedisFactory,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    server = redis_factory.start(password="right-pw-4711")
    wrong = server.url(unique_prefix("auth"), password="wrong-pw-0815")
    caplog.set_level(logging.DEBUG)
    store = RedisJobStore(wrong, 10, 60)
    with pytest.raises(JobStoreError) as raised:
        await store.open()
    assert f"127.0.0.1:{server.port}" in str(raised.value) and "wrong-pw-0815" not in str(raised.value)
    problem = check_job_store(wrong)
    assert problem is not None and "wrong-pw-0815" not in problem
    assert "wrong-pw-0815" not in caplog.text
    assert check_job_store(server.url(unique_prefix("auth"))) is None
    right = RedisJobStore(server.url(unique_prefix("auth")), 10, 60)
    await right.open()
    assert await right.admit("a", None, None) is CREATED
    await right.close()


def test_the_url_forms() -> None:
    parsed = parse_redis_url("rediss://user:p%40ss@cache.example:6380/2?prefix=orders")
    assert (parsed.prefix, parsed.password) == ("orders", "p@ss")
    assert parsed.label == "rediss://user:***@cache.example:6380/2" and "prefix" not in parsed.url
    assert parse_redis_url("redis://localhost").prefix == "mqtt-listener"
    assert job_store_problem("redis://localhost:6379/0") is None
    assert "database must be a number" in (job_store_problem("redis://localhost:6379/zero") or "")
    assert "needs a host" in (job_store_problem("redis:///0") or "")
    assert "unknown URL parameter" in (job_store_problem("redis://h/0?ttl=5") or "")
    assert "port" in (job_store_problem("redis://h:99999/0") or "")


@pytest.mark.parametrize("query, expected", [
    ("wait_replicas=1", (1, 1000)),
    ("wait_replicas=2&wait_timeout_ms=250", (2, 250)),
    ("wait_replicas=0", (0, 0)),
    ("prefix=jobs", (0, 0)),
])
def test_wait_replicas_in_each_url_form(query: str, expected: Any) -> None:
    for url in (f"redis://h:6379/0?{query}", f"redis+cluster://h:7000?{query}", f"redis+sentinel://s:26379/m?{query}"):
        parsed = parse_redis_url(url)
        assert (parsed.wait_replicas, parsed.wait_timeout_ms) == expected, url
        assert job_store_problem(url) is None and "wait" not in parsed.url and "wait" not in parsed.label


@pytest.mark.parametrize("query, problem", [
    ("wait_replicas=", "wait_replicas must be a number of replicas from 0 to 64, got ''"),
    ("wait_replicas=one", "wait_replicas must be a number of replicas from 0 to 64, got 'one'"),
    ("wait_replicas=-1", "wait_replicas must be a number of replicas from 0 to 64, got '-1'"),
    ("wait_replicas=65", "wait_replicas must be a number of replicas from 0 to 64, got '65'"),
    ("wait_replicas=1&wait_timeout_ms=0", "wait_timeout_ms must be milliseconds from 1 to 4000, got '0'"),
    ("wait_replicas=1&wait_timeout_ms=5000", "wait_timeout_ms must be milliseconds from 1 to 4000, got '5000'"),
    ("wait_replicas=1&wait_timeout_ms=1s", "wait_timeout_ms must be milliseconds from 1 to 4000, got '1s'"),
    ("wait_timeout_ms=100", "wait_timeout_ms needs wait_replicas=n (n >= 1)"),
    ("wait_replica=1", "unknown URL parameter(s) wait_replica (only prefix=name, wait_replicas=n"),
])
def test_a_bad_wait_replicas_setting_is_refused_saying_why(query: str, problem: str) -> None:
    for url in (f"redis://:pw-4711@h:6379/0?{query}", f"redis+cluster://:pw-4711@h:7000?{query}",
                f"redis+sentinel://:pw-4711@s:26379/m?{query}"):
        found = job_store_problem(url) or ""
        assert problem in found and "pw-4711" not in found, (url, found)
    with pytest.raises(ValueError, match="wait_"):
        EventListenerConfig(job_store=f"redis://h:6379/0?{query}")


def test_the_cluster_url_forms() -> None:
    parsed = parse_redis_url("rediss+cluster://user:p%40ss@node-a:7000, node-b:7001,[::1]?prefix=orders")
    assert (parsed.cluster, parsed.tls, parsed.prefix, parsed.username, parsed.password) == (
        True, True, "orders", "user", "p@ss")
    assert parsed.nodes == (("node-a", 7000), ("node-b", 7001), ("::1", 6379))
    assert parsed.keyspace == "{orders}" and parse_redis_url("redis://h/0?prefix=orders").keyspace == "orders"
    assert "p@ss" not in parsed.label and "p%40ss" not in parsed.label and parsed.label.startswith("rediss+cluster://")
    assert job_store_problem("redis+cluster://h:7000,h:7001") is None
    assert "database 0 only" in (job_store_problem("redis+cluster://h:7000/3") or "")
    assert "must not contain { or }" in (job_store_problem("redis+cluster://h:7000?prefix={x}") or "")
    assert "at least one host:port" in (job_store_problem("redis+cluster://h:7000,") or "")
    assert "port" in (job_store_problem("redis+cluster://h:99999") or "")
    assert "unknown URL parameter" in (job_store_problem("redis+cluster://h:7000?db=1") or "")


def test_check_config_counts_the_replicas_wait_replicas_asks_for(redis_cluster: RedisCluster,
                                                                 redis_server: RedisServer) -> None:
    """Each master of the test cluster has one replica, the standalone server none: check-config says when
    ``wait_replicas`` asks for more than there are (no finished job would ever be acknowledged)."""
    prefix = unique_prefix("check-wait")
    assert check_job_store(redis_cluster.url(prefix) + "&wait_replicas=1") is None
    problem = check_job_store(redis_cluster.url(prefix) + "&wait_replicas=2") or ""
    assert "wait_replicas=2, but the master of its records has 1 replica(s) online" in problem
    problem = check_job_store(redis_server.url(prefix) + "&wait_replicas=1") or ""
    assert "has 0 replica(s) online: finished jobs would never be acknowledged" in problem
    assert check_job_store(redis_server.url(prefix)) is None


async def test_wait_replicas_in_a_cluster_waits_on_the_master_of_the_stores_slot(redis_cluster: RedisCluster) -> None:
    """Each master of the test cluster has one replica: ``wait_replicas=1`` passes (the finished record is on the
    replica when durable() returns), ``wait_replicas=2`` cannot be met and the batch is not counted as written."""
    prefix = unique_prefix("wait")
    one = RedisJobStore(redis_cluster.url(prefix) + "&wait_replicas=1", 10, 60)
    two = RedisJobStore(redis_cluster.url(prefix + "-2") + "&wait_replicas=2&wait_timeout_ms=100", 10, 60)
    reports: List[str] = []
    await one.open()
    await two.open(on_error=reports.append)
    try:
        assert await one.admit("a", None, None) is CREATED
        await one.set_status("a", JobStatus.COMPLETED, result=1)
        await one.durable()
        replica = redis_cluster.replica_of(redis_cluster.master_of(f"{{{prefix}}}:ids"))
        check = redis.Redis(port=replica.port, decode_responses=True)
        check.execute_command("READONLY")
        assert check.hget(f"{{{prefix}}}:job:a", "status") == "completed"
        check.close()
        assert await two.admit("b", None, None) is CREATED
        await two.set_status("b", JobStatus.COMPLETED, result=1)
        with pytest.raises(JobStoreError, match="1 of the 2 replicas wait_replicas asks for"):
            await asyncio.wait_for(two.durable(), 10)
        assert reports and "1 of the 2 replicas" in reports[0]
    finally:
        await one.close()
        await two.close()


async def test_one_cluster_stores_keys_share_a_slot_and_a_reader_sees_them(redis_cluster: RedisCluster) -> None:
    prefix = unique_prefix("slot")
    store = RedisJobStore(redis_cluster.url(prefix), 10, 60)
    await store.open()
    try:
        assert await store.admit("a", {"x": 1}, "t") is CREATED
        await store.set_status("a", JobStatus.COMPLETED, result=1)
        await store.durable()
        check = redis_cluster.client()
        names = [f"{{{prefix}}}:{name}" for name in ("job:a", "ids", "finished", "epoch", f"owner:{store.owner}")]
        assert all(check.exists(name) for name in names)
        assert len({check.keyslot(name) for name in names}) == 1
        check.close()
        assert check_job_store(redis_cluster.url(prefix)) is None
        job_reader = RedisJobReader(redis_cluster.url(prefix))
        try:
            assert [job.job_id for job in await job_reader.recent(5)] == ["a"]
        finally:
            await job_reader.close()
    finally:
        await store.close()


async def test_a_redis_py_without_cluster_transactions_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.asyncio.cluster import RedisCluster as Client
    from redis.exceptions import RedisClusterException

    def refuse(self: Any, transaction: Any = None, shard_hint: Any = None) -> Any:
        raise RedisClusterException("transaction is deprecated in cluster mode")  # as redis-py 5 says

    monkeypatch.setattr(Client, "pipeline", refuse)
    store = RedisJobStore(f"redis+cluster://:cl-pw-7@127.0.0.1:{free_port()}", 10, 60)
    with pytest.raises(JobStoreError) as raised:
        await store.open()
    assert CLUSTER_TRANSACTIONS in str(raised.value) and "cl-pw-7" not in str(raised.value) and not store.is_open


def test_an_unreachable_cluster_is_reported_without_its_password() -> None:
    url = f"redis+cluster://:cl-secret-99@127.0.0.1:{free_port()}"
    problem = check_job_store(url)
    assert problem is not None and "127.0.0.1" in problem and "cl-secret-99" not in problem


def test_check_config_pings_the_store_and_masks_its_password(redis_server: RedisServer, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'job_store = "{redis_server.url(unique_prefix("cfg"))}"\n', encoding="utf-8")
    assert main(["check-config", str(good)]) == EXIT_OK
    bad = tmp_path / "bad.toml"
    bad.write_text(f'job_store = "redis://:hunter3-secret@127.0.0.1:{free_port()}/0"\n', encoding="utf-8")
    assert main(["check-config", str(bad)]) == EXIT_FAILURE
    captured = capsys.readouterr()
    assert "job_store redis://:***@127.0.0.1:" in captured.err
    assert "hunter3-secret" not in captured.out + captured.err


def test_the_redis_password_is_one_of_the_secrets_masked_in_events() -> None:
    config = EventListenerConfig(job_store="redis://worker:p%40ss-w0rd@cache:6379/0")
    assert "p@ss-w0rd" in secrets(config)
    assert "p%40ss-w0rd" not in repr(config) and "p@ss-w0rd" not in repr(config)


async def test_a_duplicate_claimed_before_the_first_outcome_is_written_is_still_recorded(stores: Any) -> None:
    """The same process finishes a job and receives its id again before the background write: the claim
    must see the outcome (else the late write of COMPLETED undoes the DUPLICATE the claim recorded)."""
    store = await stores()
    assert await store.admit("x", None, None) is CREATED
    await store.start_attempt("x")
    await store.set_status("x", JobStatus.COMPLETED, result=5)  # not written yet
    assert await store.admit("x", None, None) is DUPLICATE
    await store.durable()
    record = await store.get("x")
    assert record is not None and (record.status, record.result, record.duplicate_count) == (
        JobStatus.DUPLICATE, 5, 1)


async def test_a_duplicate_of_a_pending_job_leaves_it_pending_and_its_record_active(
        stores: Any) -> None:
    """As with the other stores, the duplicate is counted and the job, yet to run, stays PENDING: its record keeps
    its lease and is not evictable, and the run's outcome replaces the status. An explicit mark_duplicate
    makes it DUPLICATE, as ever."""
    store = await stores(max_jobs=2)
    assert await store.admit("p", {"v": 1}, None) is CREATED
    assert await store.admit("p", {"v": 2}, None) is DUPLICATE
    record = await store.get("p")
    assert record is not None and (record.status, record.input_data, record.duplicate_count) == (
        JobStatus.PENDING, {"v": 1}, 1)
    assert store.jobs["p"].status is JobStatus.PENDING
    check = stores.reader()
    assert check.zscore(f"{stores.keys}:finished", "p") is None
    assert 0 < check.pttl(f"{stores.keys}:job:p") <= ACTIVE_LEASE * 1000
    check.close()
    assert await store.admit("q", None, None) is CREATED
    assert await store.admit("r", None, None) is FULL  # "p" was not evicted
    await store.start_attempt("p")
    await store.set_status("p", JobStatus.COMPLETED, result=1)
    assert await store.mark_duplicate("p") and not await store.mark_duplicate("never-seen")
    record = await store.get("p")
    assert record is not None and (record.status, record.result, record.duplicate_count) == (
        JobStatus.DUPLICATE, 1, 2)


async def crash(store: RedisJobStore) -> None:
    """As SIGKILL leaves it: the writer stops (no more writes, no lease renewed), the owner key is not deleted."""
    writer, client = store._writer, store._client
    assert writer is not None and client is not None
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    store._writer = store._client = store._wake = None
    await client.aclose()


async def lease_lapsed(stores: Any, store: RedisJobStore) -> None:
    check = stores.reader()
    try:
        while check.exists(f"{stores.keys}:owner:{store.owner}"):
            await asyncio.sleep(0.02)
    finally:
        check.close()


async def test_a_job_active_in_a_live_worker_is_busy_and_runs_again_once_its_lease_lapsed(
        stores: Any) -> None:
    """The job a killed worker was running: its redelivered message is never counted as a duplicate (it
    would be acknowledged, and the job lost); it waits (BUSY) while the owner's lease is alive, and runs
    again, its attempts kept, once the lease lapsed."""
    first, second = await stores(owner_lease=0.6), await stores()  # renewed every 0.2 s while the store lives
    assert await first.admit("job", {"v": 1}, "t") is CREATED and await first.admit("queued", {"v": 1}, "t") is CREATED
    await first.start_attempt("job")
    await first.durable()
    for _ in range(3):  # more than a lease: renewed
        assert await second.admit("job", {"v": 2}, "t") is BUSY
        assert await second.admit("queued", {"v": 2}, "t", duplicate_action="reprocess") is BUSY
        await asyncio.sleep(0.3)
    record = await second.get("job")
    assert record is not None and (record.status, record.duplicate_count, record.attempts) == (JobStatus.RUNNING, 0, 1)
    assert "job" not in second.jobs
    await crash(first)
    await asyncio.wait_for(lease_lapsed(stores, first), 10)
    assert await second.admit("job", {"v": 2}, "t") is CREATED  # taken over: runs here
    assert await second.admit("queued", {"v": 2}, "t") is CREATED
    assert (second.jobs["job"].attempts, second.jobs["job"].input_data) == (1, {"v": 2})
    assert await second.start_attempt("job") == 2
    await second.durable()
    check = stores.reader()
    assert check.hget(f"{stores.keys}:job:job", "owner") == second.owner
    check.close()
    assert await second.admit("job", None, None) is DUPLICATE  # now active in this worker


async def test_a_store_that_closes_hands_its_active_jobs_over_at_once(stores: Any) -> None:
    first, second = await stores(), await stores()
    assert await first.admit("left", {"v": 1}, None) is CREATED
    assert await second.admit("left", {"v": 1}, None) is BUSY
    await first.close()  # without settling "left": its lease ends with it
    assert await second.admit("left", {"v": 1}, None) is CREATED


async def test_a_full_store_drops_the_records_of_dead_workers_not_resumed(
        stores: Any) -> None:
    first, second = await stores(max_jobs=2, owner_lease=0.3), await stores(max_jobs=2)
    assert await first.admit("a", None, None) is CREATED and await first.admit("b", None, None) is CREATED
    assert await second.admit("c", None, None) is FULL
    await crash(first)
    await asyncio.wait_for(lease_lapsed(stores, first), 10)
    assert await second.admit("c", None, None) is CREATED  # their messages, unacknowledged, bring them back


async def test_orphans_are_taken_over_once_their_owners_lease_lapsed(stores: Any) -> None:
    """A store that resumes its jobs (ack_policy after_recording keeps the input): a dead worker's active jobs
    with their input are taken over by exactly one live store, PENDING with their attempts kept; their records
    never expire while active, and are not dropped to make room."""
    first = await stores(max_jobs=3, owner_lease=0.3)
    second, third = await stores(max_jobs=3), await stores(max_jobs=3)
    for store in (first, second, third):
        store.keep_input = True
        assert await store.orphans() == []
    assert await first.admit("ran", {"v": 1}, "t") is CREATED and await first.admit("queued", {"v": 2}, "t") is CREATED
    assert await first.admit("no-input", None, "t") is CREATED
    await first.start_attempt("ran")
    await first.durable()
    check = stores.reader()
    assert check.pttl(f"{stores.keys}:job:queued") == -1  # no lease of its own: the owner's lease says
    assert await second.orphans() == []  # its owner lives
    await crash(first)
    await asyncio.wait_for(lease_lapsed(stores, first), 10)
    # To make room, only the dead worker's record that cannot be resumed (it has no input) is dropped.
    assert await second.admit("new", None, None) is CREATED
    assert await second.admit("newer", None, None) is FULL
    found, other = await asyncio.gather(second.orphans(), third.orphans())
    taken = {job.job_id: job for job in found + other}
    assert len(taken) == len(found) + len(other) == 2  # each orphan once
    ran, queued = taken["ran"], taken["queued"]
    assert (ran.status, ran.input_data, ran.attempts, ran.topic) == (JobStatus.PENDING, {"v": 1}, 1, "t")
    assert (queued.status, queued.input_data, queued.attempts) == (JobStatus.PENDING, {"v": 2}, 0)
    owner = second if "ran" in {job.job_id for job in found} else third
    assert owner.jobs["ran"].status is JobStatus.PENDING
    assert check.hget(f"{stores.keys}:job:ran", "owner") == owner.owner
    assert check.pttl(f"{stores.keys}:job:ran") == -1
    check.close()
    assert await second.orphans() == [] and await third.orphans() == []


async def test_a_message_whose_job_runs_on_another_listener_waits_for_it_then_is_a_duplicate(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    url = redis_server.url(unique_prefix("busy"))
    one = EventListener(EventListenerConfig(job_store=url, client_id="one"))
    two = EventListener(EventListenerConfig(job_store=url, client_id="two"))
    started, release = threading.Event(), threading.Event()
    ran: List[str] = []

    def slow(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        ran.append("one")
        started.set()
        assert release.wait(20)  # noqa: S101 - bounded: the test releases it
        return {"by": "one"}

    def other(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        ran.append("two")
        return {"by": "two"}

    caplog.set_level(logging.INFO, logger="Listener")
    try:
        first = asyncio.create_task(one.process_message({"job_id": "shared"}, slow))
        assert await asyncio.to_thread(started.wait, 10)
        second = asyncio.create_task(two.process_message({"job_id": "shared"}, other))

        async def busy_logged() -> None:
            while not any(getattr(r, "event", None) == "job_busy" for r in caplog.records):
                await asyncio.sleep(0.02)
        await asyncio.wait_for(busy_logged(), 10)
        running = await two.get_job_status("shared")
        assert not second.done() and running is not None and running.status is JobStatus.RUNNING
        assert running.duplicate_count == 0
        release.set()
        assert await asyncio.wait_for(first, 10) == {"by": "one"}
        assert await asyncio.wait_for(second, 10) is None  # a duplicate once the job finished
        assert ran == ["one"]
        done = await two.get_job_status("shared")
        assert done is not None and (done.status, done.result, done.duplicate_count) == (
            JobStatus.DUPLICATE, {"by": "one"}, 1)
    finally:
        release.set()
        await one.__aexit__(None, None, None)
        await two.__aexit__(None, None, None)


class Reports:
    """An ``on_error`` callback that keeps the messages; :meth:`lost` awaits the report of a lost Redis."""

    def __init__(self) -> None:
        self.messages: List[str] = []
        self._changed = asyncio.Event()

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        self._changed.set()

    async def lost(self, timeout: float = 10) -> str:
        async def found() -> str:
            while True:
                for message in self.messages:
                    if DATA_LOST in message:
                        return message
                self._changed.clear()
                await self._changed.wait()
        return await asyncio.wait_for(found(), timeout)


async def test_a_flushall_mid_run_is_reported_and_this_workers_jobs_written_again(
        stores: Any) -> None:
    store = await stores(owner_lease=0.3)  # the marker is checked every 0.1 s
    reports = Reports()
    store.on_error = reports
    assert await store.admit("done", {"x": 1}, None) is CREATED
    await store.start_attempt("done")
    await store.set_status("done", JobStatus.COMPLETED, result=1)
    await store.durable()
    check = stores.reader()
    check.flushall()
    message = await reports.lost()
    assert message.startswith(f"Job store {store.label}: ") and store.data_losses == 1
    assert check.get(f"{stores.keys}:epoch")  # written again
    await store.durable()
    record = await store.get("done")  # this worker's record is back: its duplicate is still caught
    assert record is not None and record.status is JobStatus.COMPLETED
    assert await store.admit("done", None, None) is DUPLICATE
    check.close()


async def test_a_claim_after_the_data_was_lost_reports_it_before_the_job_runs_again(
        stores: Any) -> None:
    first = await stores()
    assert await first.admit("done", None, None) is CREATED
    await first.start_attempt("done")
    await first.set_status("done", JobStatus.COMPLETED, result=1)
    await first.close()  # its process is gone: no one writes the record again
    second = await stores(owner_lease=60)  # no lease renewal before the claim
    reports = Reports()
    second.on_error = reports
    check = stores.reader()
    check.flushall()
    check.close()
    assert await second.admit("done", None, None) is CREATED  # it runs again: there is no record of it
    assert DATA_LOST in await reports.lost(0.1) and second.data_losses == 1
    assert await second.admit("other", None, None) is CREATED and second.data_losses == 1  # reported once


async def test_a_redis_restarted_without_persistence_is_reported(redis_factory: RedisFactory) -> None:
    server = redis_factory.start()
    store = RedisJobStore(server.url(unique_prefix("restart")), 10, 60)
    store.owner_lease = 0.3
    reports = Reports()
    await store.open(on_error=reports)
    try:
        assert await store.admit("done", None, None) is CREATED
        await store.set_status("done", JobStatus.COMPLETED, result=1)
        await store.durable()
        await asyncio.to_thread(server.restart)
        message = await reports.lost()
        assert "password" not in message and store.data_losses == 1
        await store.durable()
        record = await store.get("done")
        assert record is not None and record.status is JobStatus.COMPLETED
    finally:
        await store.close()
