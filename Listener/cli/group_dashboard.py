"""What the dashboard shows of a ``--workers`` group: each worker's state, the group's sums, and with the Redis
job store every worker's jobs (the memory and SQLite stores keep each worker's jobs in that worker)."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

from .._version import __version__
from ..config.settings import EventListenerConfig
from ..core.redaction import mask_uri_credentials
from ..core.topics import shared_filters, subscriptions
from ..jobs.factory import REDIS_SCHEMES
from ..jobs.records import job_as_dict
from ..mqtt.client import endpoint_label, secrets
from .group_status import GroupStatus

__all__ = ["GroupDashboardView"]


class GroupDashboardView:
    """A :class:`~Listener.ops.dashboard.DashboardSource` for the supervisor of a worker group."""

    def __init__(self, status: GroupStatus, config: EventListenerConfig, group: str) -> None:
        self._status = status
        self._config = config
        self._group = group
        self.secrets = secrets(config)
        self._started_at = time.time()
        self._reader: Any = None
        if config.job_store.startswith(REDIS_SCHEMES):
            from ..jobs.redis import RedisJobReader

            self._reader = RedisJobReader(config.job_store)

    def overview(self) -> Dict[str, Any]:
        status, config = self._status, self._config
        workers = [{"index": worker["worker"], "pid": worker["pid"], "alive": worker["alive"],
                    "ready": worker["status"] is not None and bool(worker["status"].get("ready")),
                    "restarts": worker["restarts"]} for worker in status.supervisor.describe()]
        state = "draining" if status.is_draining else "running" if status.is_ready else "connecting"
        filters = shared_filters(subscriptions(config.topic, config.qos, config.custom_topics), self._group)
        return {"kind": "group", "version": __version__, "state": state, "broker": endpoint_label(config),
                "client_id": f"{config.client_id}-<worker>", "subscriptions": [[topic, qos] for topic, qos in filters],
                "job_store": mask_uri_credentials(config.job_store), "keep_job_input": config.keep_job_input,
                "started_at": self._started_at, "workers": workers}

    def metrics(self) -> Dict[str, Any]:
        return self._status.metrics()

    async def recent_jobs(self, limit: int) -> Optional[List[Dict[str, Any]]]:
        if self._reader is None:
            return None
        return [job_as_dict(job) for job in await self._reader.recent(limit)]

    async def job(self, job_id: str) -> Optional[Dict[str, Any]]:
        if self._reader is None:
            return None
        job = await self._reader.get(job_id)
        return None if job is None else job_as_dict(job, detail=True, show_input=self._config.keep_job_input)

    async def close(self) -> None:
        """Disconnect from Redis (a no-op without the Redis store)."""
        if self._reader is not None:
            await self._reader.close()
