"""What a ``--workers`` group's dashboard reads: each worker's state from the supervisor, and with the Redis
store every worker's jobs (two stores stand for two workers here)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import pytest

from Listener import EventListenerConfig
from Listener.cli.group_dashboard import GroupDashboardView
from Listener.cli.group_status import GroupStatus
from Listener.jobs.records import JobStatus
from Listener.jobs.redis import RedisJobStore
from Listener.jobs.store import JobStoreError
from tests.support.redis_server import RedisServer, needs_redis, redis_server, unique_prefix

__all__ = ["redis_server"]  # the fixture, for pytest


class FakeWorker:
    alive = True


class FakeSupervisor:
    stopping = False

    def __init__(self, reports: List[Optional[Dict[str, Any]]]) -> None:
        self.reports = reports
        self.workers = [FakeWorker() for _ in reports]

    def describe(self) -> List[Dict[str, Any]]:
        return [{"worker": index, "pid": 1000 + index, "alive": True, "restarts": index, "status": report,
                 "counters": {}} for index, report in enumerate(self.reports)]


def report(ready: bool, completed: int) -> Dict[str, Any]:
    return {"ready": ready, "draining": False,
            "metrics": {"jobs": {"completed": completed}, "jobs_finished": {"completed": completed},
                        "messages_received": completed, "ready": ready}}


def test_the_overview_names_every_worker_and_no_job_list_without_redis() -> None:
    status = GroupStatus(FakeSupervisor([report(True, 2), None]))
    view = GroupDashboardView(status, EventListenerConfig(topic="g/jobs", password="hunter2-secret", username="u"),
                              "grp")
    overview = view.overview()
    assert overview["kind"] == "group" and overview["state"] == "connecting"  # worker 1 has not reported yet
    assert [(w["index"], w["pid"], w["ready"], w["restarts"]) for w in overview["workers"]] == [
        (0, 1000, True, 0), (1, 1001, False, 1)]
    assert overview["subscriptions"] == [["$share/grp/g/jobs", 0]]
    assert "hunter2-secret" in view.secrets
    assert view.metrics()["jobs"]["completed"] == 2


async def test_no_job_list_without_a_shared_store() -> None:
    view = GroupDashboardView(GroupStatus(FakeSupervisor([report(True, 0)])), EventListenerConfig(), "grp")
    assert await view.recent_jobs(10) is None and await view.job("x") is None
    await view.close()


@needs_redis
async def test_with_redis_every_workers_jobs_are_listed(redis_server: RedisServer) -> None:
    url = redis_server.url(unique_prefix("group-dashboard"))
    workers = [RedisJobStore(url, 100, 60, keep_input=True) for _ in range(2)]
    for store in workers:
        await store.open()
    try:
        for index, store in enumerate(workers):
            await store.admit(f"w{index}-job", {"n": index}, "g/jobs")
            await store.set_status(f"w{index}-job", JobStatus.COMPLETED, result={"by": index})
            await store.durable()
        config = EventListenerConfig(job_store=url, keep_job_input=False)
        view = GroupDashboardView(GroupStatus(FakeSupervisor([report(True, 1), report(True, 1)])), config, "grp")
        rows = await view.recent_jobs(10)
        assert rows is not None and sorted(row["job_id"] for row in rows) == ["w0-job", "w1-job"]
        detail = await view.job("w1-job")
        assert detail is not None and detail["result"] == {"by": 1} and detail["input"] is None  # keep_job_input off
        assert await view.job("nope") is None
        await view.close()
    finally:
        for store in workers:
            await store.close()


async def test_an_unreachable_redis_is_a_job_store_error_without_its_password() -> None:
    view = GroupDashboardView(GroupStatus(FakeSupervisor([])),
                              EventListenerConfig(job_store="redis://:pa55word-secret@127.0.0.1:1/0"), "grp")
    with pytest.raises(JobStoreError, match="Cannot read job store") as caught:
        await view.recent_jobs(10)
    assert "pa55word-secret" not in str(caught.value)
    with pytest.raises(JobStoreError):
        await view.job("x")
    await view.close()
