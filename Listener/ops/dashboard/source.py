"""What the dashboard reads: one listener, or a ``--workers`` group (plain JSON-ready values, no job objects)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Protocol, Tuple

__all__ = ["DashboardSource"]


class DashboardSource(Protocol):
    """The state a dashboard shows; every method is called on the listener's event loop.

    A job is a dict with ``job_id``, ``status``, ``started_at``, ``completed_at`` (ISO 8601), ``duration_s``,
    ``topic``, ``attempts``, ``duplicate_count`` and ``error``; a job's detail adds ``input`` and ``result``.
    """

    #: Strings masked wherever they appear in what the dashboard shows (the passwords in use).
    secrets: Tuple[str, ...]

    def overview(self) -> Dict[str, Any]:
        """``kind`` ("listener" or "group"), ``version``, ``state``, ``broker``, ``client_id``, ``subscriptions``
        (list of [filter, qos]), ``job_store`` (its kind, never its credentials), ``keep_job_input``,
        ``started_at`` (epoch seconds) and, for a group, ``workers`` (index, pid, alive, ready, restarts)."""

    def metrics(self) -> Dict[str, Any]:
        """The metrics snapshot (``EventListener.metrics()`` shape)."""

    async def recent_jobs(self, limit: int) -> Optional[List[Dict[str, Any]]]:
        """The ``limit`` newest jobs, newest first; None when this source keeps no job list (a group whose
        workers keep their jobs to themselves)."""

    async def job(self, job_id: str) -> Optional[Dict[str, Any]]:
        """One job's detail, or None (unknown id, or no job list)."""
