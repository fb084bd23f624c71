"""The HTTP endpoints' view of a ``--workers`` group: healthy when every worker is, metrics summed and per worker.

:class:`GroupStatus` has what :mod:`Listener.ops.http_endpoints` reads from a listener (``is_ready``,
``is_draining``, ``is_running``, ``metrics()``), computed from the workers' latest status reports, plus
``metric_families()`` for the Prometheus text: the group's totals under the usual ``mqtt_listener_*`` names
(a dashboard made for one process keeps working), and each worker's values under ``mqtt_listener_worker_*``
with a ``worker="<i>"`` label (separate names, so that ``sum()`` over a family never counts twice).
A worker that is not running or whose last report is older than
:data:`~Listener.cli.supervisor.STATUS_STALE_AFTER` seconds counts as not ready and adds nothing to the gauges.
Counters never go down: each worker slot adds the last totals its earlier processes reported (and its current
process's last report, fresh or not) to the group's counters and to its own per-worker counters, so a worker
killed and restarted is not read as a counter reset (:func:`add_counters`).
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Optional, Protocol, Sequence

from ..ops.http_endpoints import COUNTER_KEYS, METRIC_PREFIX, metric_families

__all__ = ["GroupStatus", "WorkerGroup", "add_counters", "sum_snapshots"]

# State flags: the group is connected/ready only when every worker is, draining when any is.
_ALL = ("connected", "ready")
_ANY = ("draining",)


def _add(total: Any, value: Any) -> Any:
    if isinstance(total, dict) and isinstance(value, Mapping):
        merged = dict(total)
        for key, item in value.items():
            merged[key] = _add(merged[key], item) if key in merged else _add_first(item)
        return merged
    if isinstance(total, (int, float)) and not isinstance(total, bool) \
            and isinstance(value, (int, float)) and not isinstance(value, bool):
        return total + value
    return total


def _add_first(value: Any) -> Any:
    return {key: _add_first(item) for key, item in value.items()} if isinstance(value, Mapping) else value


def add_counters(total: Mapping[str, Any], snapshot: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``total`` plus the counters of a ``listener.metrics()`` snapshot (its gauges left out); a new dict."""
    merged = _add_first(total)
    for key, value in (snapshot or {}).items():
        if key in COUNTER_KEYS:
            merged[key] = _add(merged[key], value) if key in merged else _add_first(value)
    return dict(merged)


def sum_snapshots(snapshots: List[Optional[Mapping[str, Any]]]) -> Dict[str, Any]:
    """Counters and gauges of several ``listener.metrics()`` snapshots added up (None: a silent worker).

    ``connected`` and ``ready`` hold only when they hold for every worker, ``draining`` when for any.
    """
    total: Dict[str, Any] = {}
    for snapshot in snapshots:
        if snapshot is not None:
            total = _add(total, snapshot) if total else _add_first(snapshot)
    for key in _ALL:
        total[key] = bool(snapshots) and all(s is not None and bool(s.get(key)) for s in snapshots)
    for key in _ANY:
        total[key] = any(s is not None and bool(s.get(key)) for s in snapshots)
    return total


class _Worker(Protocol):
    @property
    def alive(self) -> bool:
        """Whether the worker process runs."""


class WorkerGroup(Protocol):
    """What :class:`GroupStatus` reads from the supervisor (:class:`~Listener.cli.supervisor.Supervisor`)."""

    @property
    def stopping(self) -> bool:
        """The group is stopping."""

    @property
    def workers(self) -> Sequence[_Worker]:
        """The worker processes."""

    def describe(self) -> List[Dict[str, Any]]:
        """Per worker: index, pid, alive, restarts, the last fresh status report, and ``counters``: the counters
        of every process of the slot so far (:func:`add_counters` of their last reports)."""


class GroupStatus:
    """The group's state for :func:`Listener.ops.http_endpoints.start_http_endpoints` (read on the event loop)."""

    def __init__(self, supervisor: WorkerGroup) -> None:
        self.supervisor = supervisor

    def _reports(self) -> List[Optional[Dict[str, Any]]]:
        return [worker["status"] for worker in self.supervisor.describe()]

    @property
    def is_ready(self) -> bool:
        """Every worker runs, reported recently, and is connected and subscribed."""
        return all(report is not None and bool(report.get("ready")) for report in self._reports())

    @property
    def is_draining(self) -> bool:
        """The group is stopping, or a worker drains."""
        return self.supervisor.stopping or any(report is not None and bool(report.get("draining"))
                                               for report in self._reports())

    @property
    def is_running(self) -> bool:
        """The supervisor runs (until every worker has ended)."""
        return not self.supervisor.stopping or any(worker.alive for worker in self.supervisor.workers)

    def metrics(self) -> Dict[str, Any]:
        """The workers' metrics summed, ``workers`` (how many) and ``workers_ready``, and ``per_worker``."""
        described = self.supervisor.describe()
        snapshots = [worker["status"]["metrics"] if worker["status"] is not None else None for worker in described]
        total = sum_snapshots(snapshots)
        counters: Dict[str, Any] = {}
        for worker in described:
            counters = add_counters(counters, worker.get("counters"))
        total.update(counters)  # a worker down (or restarted) keeps what it counted: the sums never go down
        snapshots = [None if snapshot is None else {**snapshot, **add_counters({}, worker.get("counters"))}
                     for worker, snapshot in zip(described, snapshots)]
        total["workers"] = len(described)
        total["workers_ready"] = sum(1 for worker in described
                                     if worker["status"] is not None and worker["status"].get("ready"))
        total["worker_restarts"] = sum(worker["restarts"] for worker in described)
        total["per_worker"] = {
            str(worker["worker"]): {"pid": worker["pid"], "alive": worker["alive"], "restarts": worker["restarts"],
                                    "healthy": worker["status"] is not None and bool(worker["status"].get("ready")),
                                    "metrics": snapshot}
            for worker, snapshot in zip(described, snapshots)}
        return total

    def metric_families(self) -> Iterator[Any]:
        """Prometheus families: the totals, then every worker's values labelled ``worker``."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

        metrics = self.metrics()
        per_worker = metrics.pop("per_worker")
        yield from metric_families(metrics)
        yield GaugeMetricFamily(f"{METRIC_PREFIX}_workers", "Worker processes of this group (--workers).",
                                value=float(metrics["workers"]))
        up = GaugeMetricFamily(f"{METRIC_PREFIX}_worker_up", "1 while the worker runs and reports that it is ready.",
                               labels=["worker"])
        restarts = CounterMetricFamily(f"{METRIC_PREFIX}_worker_restarts", "Times the worker was restarted.",
                                       labels=["worker"])
        renamed: Dict[str, Metric] = {}
        old, new = f"{METRIC_PREFIX}_", f"{METRIC_PREFIX}_worker_"
        for index, worker in per_worker.items():
            up.add_metric([index], 1.0 if worker["healthy"] else 0.0)
            restarts.add_metric([index], float(worker["restarts"]))
            if worker["metrics"] is None:
                continue
            for family in metric_families(worker["metrics"]):
                if family.type == "info":
                    continue
                name = new + family.name[len(old):]
                target = renamed.get(name)
                if target is None:
                    target = renamed[name] = Metric(name, family.documentation + " Per worker.", family.type)
                for sample in family.samples:
                    target.add_sample(new + sample.name[len(old):], {**sample.labels, "worker": index}, sample.value)
        yield up
        yield restarts
        yield from renamed.values()
