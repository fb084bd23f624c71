"""How a Redis store reports a failover (its master changed under it): once per change, naming both servers and
the store by its label, never its password. The failover itself, with real servers: tests/mqtt/test_redis_failover.py
and tests/integration/test_redis_sentinel.py."""

from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import pytest

from Listener.jobs import redis as redis_store

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("url", ["redis+sentinel://:s3cret-pw@s1:26379,s2:26379/jobs-master?db=0",
                                 "redis+cluster://user:s3cret-pw@node-a:6379,node-b:6379?prefix=jobs"])
def test_a_changed_master_is_reported_once_per_change_without_the_password(url: str) -> None:
    masters: Iterator[Optional[Tuple[str, int]]] = iter([("10.0.0.5", 6379), ("10.0.0.5", 6379), ("10.0.0.6", 6379),
                                                         None, ("10.0.0.6", 6379), ("10.0.0.5", 6380)])
    store = redis_store.RedisJobStore(url, 10, 60)
    reports: List[str] = []
    store.on_failover = reports.append
    store._writing_to = lambda: next(masters)  # type: ignore[method-assign]  # what the client writes to
    for _ in range(6):
        store._check_master()
    assert store.failovers == 2 and len(reports) == 2, reports
    assert "from 10.0.0.5:6379 to 10.0.0.6:6379 (a failover)" in reports[0]
    assert "from 10.0.0.6:6379 to 10.0.0.5:6380" in reports[1]
    assert all(store.label in report and "s3cret-pw" not in report for report in reports)
    assert redis_store.FAILOVER_WINDOW in reports[0]


def test_a_standalone_store_reports_no_failover() -> None:
    store = redis_store.RedisJobStore("redis://:s3cret-pw@h:6379/0", 10, 60)
    reports: List[str] = []
    store.on_failover = reports.append
    store._client = object()  # a standalone client has no master to follow
    store._check_master()
    store._check_master()
    assert reports == [] and store.failovers == 0
