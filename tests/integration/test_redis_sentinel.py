"""The Redis job store through sentinels (``job_store = "redis+sentinel://…/service_name"``): the URL forms, and
a store that goes on, its records kept, when the master dies and the sentinels promote its replica."""

from __future__ import annotations

import asyncio
from typing import List

import pytest
import redis

from Listener import JobStatus
from Listener.jobs.admission import Admission
from Listener.jobs.factory import JobStoreError, check_job_store, job_store_problem
from Listener.jobs.redis import DATA_LOST, FAILOVER_WINDOW, RedisJobStore, parse_redis_url
from tests.support.brokers import free_port
from tests.support.redis_sentinel import RedisSentinels, redis_sentinels
from tests.support.redis_server import unique_prefix

__all__ = ["redis_sentinels"]  # the fixture, for pytest

pytestmark = pytest.mark.timeout(90)


def test_the_sentinel_url_forms() -> None:
    parsed = parse_redis_url("redis+sentinel://user:p%40ss@s1:26380, s2/jobs-master?db=2&prefix=orders")
    assert (parsed.sentinel, parsed.service, parsed.db, parsed.prefix, parsed.username, parsed.password) == (
        True, "jobs-master", 2, "orders", "user", "p@ss")
    assert parsed.nodes == (("s1", 26380), ("s2", 26379)) and parsed.keyspace == "orders"
    assert "p@ss" not in parsed.label and "p%40ss" not in parsed.label and "p@ss" not in repr(parsed)
    assert job_store_problem("redis+sentinel://s1:26379/mymaster") is None
    assert "service name" in (job_store_problem("redis+sentinel://s1:26379") or "")
    assert "database must be a number" in (job_store_problem("redis+sentinel://s1/m?db=one") or "")
    assert "unknown URL parameter" in (job_store_problem("redis+sentinel://s1/m?ttl=1") or "")
    assert "at least one host:port" in (job_store_problem("redis+sentinel://,s1/m") or "")


def test_unreachable_sentinels_are_reported_without_the_password() -> None:
    problem = check_job_store(f"redis+sentinel://:sn-secret-42@127.0.0.1:{free_port()}/m")
    assert problem is not None and "sn-secret-42" not in problem


async def test_a_store_through_sentinels_keeps_its_records_across_a_failover(redis_sentinels: RedisSentinels) -> None:
    url = redis_sentinels.url(unique_prefix("sentinel"))
    assert check_job_store(url) is None
    reports: List[str] = []
    failovers: List[str] = []
    store = RedisJobStore(url, 10, 60)
    await store.open(on_error=reports.append, on_failover=failovers.append)
    try:
        assert await store.admit("done", {"x": 1}, None) is Admission.CREATED
        await store.start_attempt("done")
        await store.set_status("done", JobStatus.COMPLETED, result=1)
        await store.durable()
        master = redis.Redis(port=redis_sentinels.master.port)
        assert master.wait(1, 5000) == 1  # the replica has every write
        master.close()
        old, new = redis_sentinels.master.port, redis_sentinels.replica.port
        await asyncio.to_thread(redis_sentinels.master.stop)

        async def promoted() -> None:
            while await asyncio.to_thread(redis_sentinels.master_port) != new:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(promoted(), 30)

        async def written() -> None:
            while True:
                try:
                    return await store.durable()
                except JobStoreError:  # the writer retries (backoff) until the client finds the new master
                    await asyncio.sleep(0.1)
        await asyncio.wait_for(written(), 20)
        assert old != new
        assert await store.admit("next", None, None) is Admission.CREATED
        assert await store.admit("done", None, None) is Admission.DUPLICATE
        await store.durable()
        promoted_master = redis.Redis(port=new, decode_responses=True)
        fields = promoted_master.hgetall(f"{store.target.keyspace}:job:done")
        assert (fields["status"], fields["result"], fields["duplicate_count"]) == ("duplicate", "1", "1")
        assert promoted_master.exists(f"{store.target.keyspace}:job:next")
        promoted_master.close()
        assert not any(DATA_LOST in message for message in reports)  # the replica had the data
        # The listener is told, once, naming both servers (its event: tests/mqtt/test_redis_failover.py).
        assert store.failovers == 1 and len(failovers) == 1, failovers
        assert f"from 127.0.0.1:{old} to 127.0.0.1:{new}" in failovers[0] and FAILOVER_WINDOW in failovers[0]
    finally:
        await store.close()


async def test_wait_replicas_holds_a_finished_batch_until_the_replica_has_it(redis_sentinels: RedisSentinels) -> None:
    """With ``wait_replicas=1`` a batch that finishes a job counts as written only once the replica acknowledged
    it: with the replica gone, durable() fails (the writer retries); with it back, the batch goes through."""
    url = redis_sentinels.url(unique_prefix("wait")) + "&wait_replicas=1&wait_timeout_ms=200"
    assert check_job_store(url) is None  # the replica is online
    reports: List[str] = []
    store = RedisJobStore(url, 10, 60)
    await store.open(on_error=reports.append)
    try:
        assert await store.admit("one", None, None) is Admission.CREATED
        await store.set_status("one", JobStatus.COMPLETED, result=1)
        await store.durable()  # the replica is there: WAIT answers 1
        replica = redis.Redis(port=redis_sentinels.replica.port, decode_responses=True)
        assert replica.hget(f"{store.target.keyspace}:job:one", "status") == "completed"
        replica.close()
        await asyncio.to_thread(redis_sentinels.replica.stop)
        assert "has 0 replica(s) online" in (check_job_store(url) or "")
        assert await store.admit("two", None, None) is Admission.CREATED  # a claim waits for no replica
        await store.set_status("two", JobStatus.COMPLETED, result=2)
        with pytest.raises(JobStoreError, match="0 of the 1 replicas wait_replicas asks for"):
            await asyncio.wait_for(store.durable(), 10)
        assert any("0 of the 1 replicas" in message for message in reports)
        await asyncio.to_thread(redis_sentinels.replica.start)  # --replicaof the master again

        async def written() -> None:
            while True:
                try:
                    return await store.durable()
                except JobStoreError:
                    await asyncio.sleep(0.1)
        await asyncio.wait_for(written(), 30)
        replica = redis.Redis(port=redis_sentinels.replica.port, decode_responses=True)
        assert replica.hget(f"{store.target.keyspace}:job:two", "status") == "completed"
        replica.close()
    finally:
        await store.close()


async def test_wait_replicas_waits_in_the_database_the_url_names(redis_sentinels: RedisSentinels) -> None:
    """Regression: the WAIT connection wrote its batch mark check into database 0 whatever ``?db=n`` said, so with
    any other database no batch was ever found on the master and nothing was acknowledged."""
    url = redis_sentinels.url(unique_prefix("waitdb"), db=3) + "&wait_replicas=1&wait_timeout_ms=2000"
    store = RedisJobStore(url, 10, 60)
    await store.open()
    try:
        assert await store.admit("one", None, None) is Admission.CREATED
        await store.set_status("one", JobStatus.COMPLETED, result=1)
        await asyncio.wait_for(store.durable(), 10)
        master = redis.Redis(port=redis_sentinels.master.port, db=3, decode_responses=True)
        assert master.hget(f"{store.target.keyspace}:job:one", "status") == "completed"
        master.close()
    finally:
        await store.close()
