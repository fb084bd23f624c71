"""Benchmark the listener end to end through a real Mosquitto broker.

Starts its own ``mosquitto`` on a free loopback port (or uses ``MQTT_HOST``/``MQTT_PORT``, and
``MQTT_USERNAME``/``MQTT_PASSWORD`` when set). Every scenario runs in a fresh Python process (so its RSS
and CPU figures are its own, not what earlier scenarios left behind) made of:

- the listener (or the bare amqtt loop), run in-process with the public API;
- a publisher process (paho-mqtt) sending the TOML jobs, each carrying ``sent = <time.time()>``;
- a collector process (paho-mqtt) receiving the results (the processor echoes ``sent``), which
  computes end-to-end latency without taking CPU from the listener's process.

Each scenario prints one JSON line: msg/s, p50/p99 latency (ms), the listener process's CPU seconds,
RSS delta and bytes per tracked job, the largest event-loop lag, the issue's target and whether it was
met. Trivial-processor scenarios are also run through a bare amqtt receive->publish loop (the
"ceiling") and reported as a ratio to it; a scenario with the SQLite job store is reported as a ratio to
the same traffic with the memory store (``ratio_to_memory_store``). The same trivial-processor traffic also goes
through two hand-written peers, the loop a user would write with gmqtt or paho-mqtt instead
(scripts/bench_peers.py: ``peer-gmqtt-*`` and ``peer-paho-*`` rows, run after the ceiling, before the
listener); every listener row then carries ``ratio_to_best_peer``, its msg/s over the faster peer's at the
same QoS and payload in the same run. ``fixed500-qos1+dashboard`` is ``fixed500-qos1`` with the HTTP
endpoints on and a poller process doing what an open dashboard tab does; it is reported with its p99 as a
ratio to the plain row's (``p99_ratio_to_without_dashboard``). The ``scale-sync5-redis-p*`` and
``scale-sync5-cluster-p*`` rows run the 5 ms processor's processes on one shared job store (a redis-server or
a six-node Redis Cluster of the run's own; ``skipped`` without redis-server or redis-cli), reported against
``scale-sync5-p1`` and, for the cluster, against the standalone row (``ratio_to_standalone_redis``). The
script reports; it never fails on a missed target.

    python scripts/bench.py                      # everything (about 5 minutes on 2 cores)
    python scripts/bench.py --quick              # small counts, under a minute
    python scripts/bench.py --scenario trivial-qos1-small --scenario fixed500-qos1
    python scripts/bench.py --repeat 3 --scenario fixed500-qos1 --scenario fixed500-qos1+dashboard
    python scripts/bench.py --ceiling            # only the bare amqtt loop
    python scripts/bench.py --no-peers           # without the gmqtt and paho-mqtt peers (no ratio_to_best_peer)
    python scripts/bench.py --processes 2 --processes 4   # a 5 ms processor in 1, 2 and 4 processes
    python scripts/bench.py --profile trivial-qos0-small   # cProfile top 25 to stderr
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import gc
import itertools
import json
import logging
import os
import platform
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
# First, even when the editable install lists it already (last): gmqtt's wheel (the dev extra) ships top-level
# ``tests`` and ``examples`` packages, which would shadow this repository's.
if str(ROOT) in sys.path:
    sys.path.remove(str(ROOT))
sys.path.insert(0, str(ROOT))

DEFAULT_MESSAGES = 20_000
START_TIMEOUT = 20.0
SUMMARY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
IDLE_TIMEOUT = 10.0
#: Jobs the publisher has out at once, published and not yet acknowledged (paho reuses its 65,535 message ids).
PUBLISHER_WINDOW = 60_000
#: max_inflight_messages of the bench's own mosquitto (see BrokerContext).
BENCH_BROKER_INFLIGHT = 1000
LAG_PERIOD = 0.010
MIB = 1024 * 1024
MANUAL_BODY = """task_type = "data_processing"
priority = "high"
timestamp = "2025-01-09T10:30:00Z"

[data]
input_file = "/path/to/input.csv"
output_file = "/path/to/output.json"
parameters = { timeout = 300, retries = 3 }

[metadata]
user = "data_processor"
department = "analytics"
"""
_JOB_ID = re.compile(rb'job_id\s*=\s*"([^"]*)"')
_SENT = re.compile(rb"sent\s*=\s*([0-9.]+)")
_NOT_IN_TOPICS = re.compile(r"[^A-Za-z0-9_-]")
#: What an open dashboard tab asks for: (path, every so many seconds). The first round is sent at once.
DASHBOARD_POLLS = (("/api/summary", 1), ("/api/series", 1), ("/", 5), ("/api/jobs?page=1", 5))
DASHBOARD_REQUEST_TIMEOUT = 5.0


# -- scenarios -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One measured run: what the processor does, and the traffic sent to it."""

    name: str
    processor: str  # "trivial", "inline", "echo_async", "async50" or "sync50"
    qos: int
    payload: str  # "small" or "manual" (the manual's section 6.2.1 document)
    count: int
    rate: float = 0.0  # msg/s the publisher paces itself to; 0 = as fast as it can
    max_concurrent_jobs: int = 1
    max_jobs_in_memory: Optional[int] = None  # None: hold every job of the run
    budget_rate: float = 250.0  # the slowest rate (msg/s) waited for before giving up
    ceiling: bool = False  # also measured through the bare amqtt loop and the hand-written peers
    rss_points: int = 0  # RSS samples spread over the run (the soak)
    job_store: str = "memory"  # or "sqlite": a fresh database file in a temporary directory; or "redis" (own server)
    # or "cluster" (a Redis Cluster of its own, six nodes: ``redis+cluster://``)
    compare_to: Optional[str] = None  # the scenario of the same run its msg/s is compared with
    compared_as: str = "memory_store"  # names the ratio: ratio_to_<compared_as>, <compared_as>_msg_per_s
    also_compared: Tuple[Tuple[str, str], ...] = ()  # more (compare_to, compared_as) pairs, msg/s only
    ack_policy: str = "after_processing"  # or "on_receipt" (acknowledged when queued), "after_recording"
    processes: int = 0  # > 0: `mqtt-listener run` processes (--workers N) instead of a listener in the runner
    hung_window: float = 0.0  # > 0: the first job hangs; fast jobs finished per second within this many seconds
    default_pending: bool = False  # keep max_pending_messages at its default (10,000), also at QoS 0
    dashboard: bool = False  # the HTTP endpoints on (http_port 0), polled as an open dashboard tab does

    @property
    def slug(self) -> str:
        """The name as it goes into topics, client ids and job ids (no ``+``, an MQTT wildcard)."""
        return _NOT_IN_TOPICS.sub("_", self.name)

    @property
    def jobs_limit(self) -> int:
        """``max_jobs_in_memory`` for the listener."""
        return self.max_jobs_in_memory or max(self.count, 1)

    def deadline(self, slack: float) -> float:
        """Seconds to wait for every result before reporting the missing ones as lost."""
        if self.rate:
            return slack + 1.5 * self.count / self.rate
        return slack + self.count / self.budget_rate

    def ceiling_name(self) -> str:
        """Name of the bare-loop measurement this scenario is compared with."""
        return f"ceiling-qos{self.qos}-{self.payload}"

    def peer_name(self, peer: str) -> str:
        """Name of the hand-written ``peer``'s measurement of this scenario's traffic."""
        return f"peer-{peer}-qos{self.qos}-{self.payload}"


def catalogue(quick: bool, factor: float) -> List[Scenario]:
    """Every scenario, with counts scaled by ``factor`` (and made small for ``--quick``)."""
    def n(full: int, small: int) -> int:
        return max(10, round((small if quick else full) * factor))

    soak = n(200_000, 10_000)
    return [
        Scenario("trivial-qos0-small", "trivial", 0, "small", n(20_000, 2_000), ceiling=True),
        Scenario("trivial-qos0-manual", "trivial", 0, "manual", n(20_000, 2_000), ceiling=True),
        Scenario("trivial-qos1-small", "trivial", 1, "small", n(10_000, 1_000), ceiling=True),
        Scenario("trivial-qos1-manual", "trivial", 1, "manual", n(10_000, 1_000), ceiling=True),
        Scenario("trivial-qos2-small", "trivial", 2, "small", n(5_000, 500), ceiling=True),
        Scenario("sqlite-qos1-small", "trivial", 1, "small", n(10_000, 1_000), job_store="sqlite",
                 compare_to="trivial-qos1-small"),
        Scenario("echo-async-qos0-small", "echo_async", 0, "small", n(20_000, 2_000), ceiling=True),
        Scenario("echo-async-qos1-small", "echo_async", 1, "small", n(10_000, 1_000), ceiling=True),
        Scenario("echo-async-qos2-small", "echo_async", 2, "small", n(5_000, 500), ceiling=True),
        Scenario("sqlite-qos2-small", "trivial", 2, "small", n(5_000, 500), job_store="sqlite",
                 compare_to="trivial-qos2-small"),
        Scenario("inline-qos0-small", "inline", 0, "small", n(20_000, 2_000), ceiling=True),
        Scenario("async50-c1", "async50", 0, "small", n(200, 40), budget_rate=15.0),
        Scenario("async50-c100", "async50", 0, "small", n(10_000, 1_000), max_concurrent_jobs=100, budget_rate=333.0),
        Scenario("sync50-t16", "sync50", 0, "small", n(2_500, 250), max_concurrent_jobs=16, budget_rate=83.0),
        Scenario("fixed500-qos1", "trivial", 1, "small", n(10_000, 1_000), rate=500.0),
        # The same with a dashboard tab open on the listener (scripts' poller process): its p99 against the above.
        Scenario("fixed500-qos1+dashboard", "trivial", 1, "small", n(10_000, 1_000), rate=500.0, dashboard=True,
                 compare_to="fixed500-qos1", compared_as="without_dashboard"),
        Scenario("acks-qos1-on-receipt", "trivial", 1, "small", n(10_000, 1_000), ack_policy="on_receipt"),
        Scenario("acks-qos1-after-processing", "trivial", 1, "small", n(10_000, 1_000),
                 compare_to="acks-qos1-on-receipt", compared_as="on_receipt"),
        Scenario("flood50k-qos1", "async50", 1, "small", n(50_000, 5_000), max_concurrent_jobs=100, budget_rate=333.0,
                 max_jobs_in_memory=2_000, rss_points=10),  # few jobs held: the RSS shows what the intake holds
        # One publisher's QoS 0 burst with default settings: past max_pending_messages the listener holds it
        # compactly, then stops reading (it kept 16,610 of 50,000 before). processed = received; rss_peak_mb.
        Scenario("burst50k-qos0", "trivial", 0, "small", n(50_000, 5_000), default_pending=True,
                 max_jobs_in_memory=5_000),
        Scenario("soak-200k", "trivial", 0, "small", soak, rate=1000.0,
                 max_jobs_in_memory=max(100, soak // 40), rss_points=10),
        *(scaling(processes, n(4_000, 800)) for processes in SCALING_PROCESSES),
        *(scaling(processes, n(4_000, 800), store) for store in SHARED_STORES for processes in SHARED_PROCESSES),
        *(hung(store, policy, n(10_000, 2_000)) for store, policy in HUNG_STORES),
        Scenario("scale-trivial-p1", "trivial", 1, "small", n(10_000, 1_000), processes=1),
        Scenario("scale-trivial-p2", "trivial", 1, "small", n(10_000, 1_000), processes=2,
                 compare_to="scale-trivial-p1", compared_as="one_process"),
    ]


#: The hand-written peers (scripts/bench_peers.py) the trivial-processor scenarios are compared with.
PEER_NAMES = ("gmqtt", "paho")
#: The job stores (and ack policies) of the one-hung-job scenarios.
HUNG_STORES = (("memory", "after_processing"), ("sqlite", "after_recording"), ("redis", "after_recording"))
#: Seconds a one-hung-job scenario counts the fast jobs that finish.
HUNG_WINDOW = 3.0


def hung(store: str, policy: str, count: int) -> Scenario:
    """One QoS 1 job that hangs for the whole run, then ``count - 1`` fast ones, ``max_concurrent_jobs = 4``,
    through a broker at Mosquitto's default in-flight limit (20): how many fast jobs finish per second."""
    return Scenario(f"hung-{store}-{policy.replace('_', '-')}", "trivial", 1, "small", count, max_concurrent_jobs=4,
                    job_store=store, ack_policy=policy, hung_window=HUNG_WINDOW)


#: The worker counts of the 5 ms scaling scenarios in a full run (``--processes N`` chooses others).
SCALING_PROCESSES = (1, 2, 4)


#: The shared job stores of the 5 ms scaling scenarios ("redis": one redis-server; "cluster": a Redis Cluster),
#: and their process counts: ``scale-sync5-<store>-p<N>``, compared with ``scale-sync5-p1`` (the memory store).
SHARED_STORES = ("redis", "cluster")
SHARED_PROCESSES = (2, 4)


def scaling(processes: int, count: int, store: str = "memory") -> Scenario:
    """A plain ``def`` processor that takes 5 ms, at QoS 1, through ``processes`` listener processes (with the
    job store ``store``: "redis" and "cluster" are shared by every process of the group)."""
    if store == "memory":
        return Scenario(f"scale-sync5-p{processes}", "sync5", 1, "small", count, processes=processes,
                        budget_rate=150.0 * processes,
                        compare_to=None if processes == 1 else "scale-sync5-p1", compared_as="one_process")
    also = (("scale-sync5-redis-p%d" % processes, "standalone_redis"),) if store == "cluster" else ()
    return Scenario(f"scale-sync5-{store}-p{processes}", "sync5", 1, "small", count, processes=processes,
                    budget_rate=100.0 * processes, job_store=store, compare_to="scale-sync5-p1",
                    compared_as="one_process", also_compared=also)


# -- targets ---------------------------------------------------------------------------------------


def _no_loss(row: Dict[str, Any]) -> bool:
    return bool(row["lost"] == 0)


def _at_most(row: Dict[str, Any], key: str, limit: float) -> bool:
    return row.get(key) is not None and bool(row[key] <= limit)


def _ratio_at_least(row: Dict[str, Any], limit: float) -> Optional[bool]:
    """None without a ceiling run to compare with."""
    if row.get("ratio_to_ceiling") is None:
        return None
    return bool(row["ratio_to_ceiling"] >= limit) and _no_loss(row)


def _scaled(row: Dict[str, Any], limit: float) -> Optional[bool]:
    """None without the one-process run to compare with."""
    if row.get("ratio_to_one_process") is None:
        return None
    return bool(row["ratio_to_one_process"] >= limit) and _no_loss(row)


def _soak_flat(row: Dict[str, Any]) -> bool:
    points = row.get("rss_points_mb") or []
    if len(points) < 2:
        return False
    first = points[0]
    return all(abs(p - first) <= 0.10 * first for p in points)


def _stops_growing(row: Dict[str, Any]) -> bool:
    """The second half of the RSS points within +-10% of its first: a flood fills the intake up to its bound
    (``max_pending_messages``), then memory stays there however many jobs follow."""
    points = row.get("rss_points_mb") or []
    if len(points) < 4:
        return False
    settled = points[len(points) // 2:]
    return all(abs(p - settled[0]) <= 0.10 * settled[0] for p in settled)


TARGETS: Dict[str, Tuple[str, Callable[[Dict[str, Any]], Optional[bool]]]] = {
    "trivial-qos0-small": ("ratio_to_ceiling >= 0.85, cpu_ratio_to_ceiling <= 1.6, lost == 0",
                           lambda r: _ratio_at_least(r, 0.85) and _at_most(r, "cpu_ratio_to_ceiling", 1.6)),
    "trivial-qos0-manual": ("ratio_to_ceiling >= 0.75, rss_per_job_beyond_payload <= 1536 B, lost == 0",
                            lambda r: _ratio_at_least(r, 0.75) and _at_most(r, "rss_per_job_beyond_payload", 1536)),
    "trivial-qos1-small": ("ratio_to_ceiling >= 1.0, lost == 0", lambda r: _ratio_at_least(r, 1.0)),
    "trivial-qos1-manual": ("none (reported beside the small QoS 1 row)", lambda r: None),
    "echo-async-qos0-small": ("ratio_to_ceiling >= 1.0 (the processor as async def, no worker thread), lost == 0",
                              lambda r: _ratio_at_least(r, 1.0)),
    "echo-async-qos1-small": ("ratio_to_ceiling >= 1.0 (the processor as async def, no worker thread), lost == 0",
                              lambda r: _ratio_at_least(r, 1.0)),
    "inline-qos0-small": ("none (for comparison: the trivial processor marked @run_inline, no worker thread)",
                          lambda r: None),
    "async50-c1": ("none (reference: one 50 ms job at a time is at most 20 msg/s)", lambda r: None),
    "async50-c100": ("msg_per_s >= 1000, lost == 0", lambda r: r["msg_per_s"] >= 1000 and _no_loss(r)),
    "sync50-t16": ("msg_per_s >= 250, max_loop_lag_ms <= 50 (loop never blocked), lost == 0",
                   lambda r: r["msg_per_s"] >= 250 and _at_most(r, "max_loop_lag_ms", 50) and _no_loss(r)),
    "fixed500-qos1": ("p99_ms <= 20, rss_per_job_beyond_payload <= 1536 B, lost == 0",
                      lambda r: _at_most(r, "p99_ms", 20) and _at_most(r, "rss_per_job_beyond_payload", 1536)
                      and _no_loss(r)),
    "fixed500-qos1+dashboard": ("p99_ms <= 20 (fixed500-qos1's, with a dashboard tab open), every poll answered, "
                                "lost == 0 (p99_ratio_to_without_dashboard: the tab's cost)",
                                lambda r: _at_most(r, "p99_ms", 20) and r.get("dashboard_failed") == 0
                                and _no_loss(r)),
    "sqlite-qos1-small": ("ratio_to_memory_store >= 0.8, lost == 0",
                          lambda r: None if r.get("ratio_to_memory_store") is None
                          else r["ratio_to_memory_store"] >= 0.8 and _no_loss(r)),
    "soak-200k": ("RSS within +-10% of the first of 10 points, lost == 0", lambda r: _soak_flat(r) and _no_loss(r)),
    "acks-qos1-on-receipt": ("none (reference: ack_policy on_receipt, acknowledged when queued)", lambda r: None),
    "acks-qos1-after-processing": ("none (ratio_to_on_receipt: the cost of acknowledging after the job)",
                                   lambda r: None),
    "flood50k-qos1": ("RSS stops growing: the last 5 of 10 points within +-10% of the first of them (the intake's "
                      "bound holds it), lost == 0", lambda r: _stops_growing(r) and _no_loss(r)),
    "burst50k-qos0": ("lost == 0 (default max_pending_messages: the listener stops reading instead of dropping)",
                      _no_loss),
    "scale-sync5-p1": ("none (reference: one process, one 5 ms job at a time, at most 200 msg/s)", lambda r: None),
    "scale-sync5-p2": ("ratio_to_one_process >= 1.8, lost == 0", lambda r: _scaled(r, 1.8)),
    "scale-sync5-p4": ("ratio_to_one_process >= 3.2, lost == 0", lambda r: _scaled(r, 3.2)),
    **{f"scale-sync5-{store}-p{processes}": (
        f"none (ratio_to_one_process: {processes} processes sharing "
        + ("one redis-server" if store == "redis" else "a Redis Cluster (also ratio_to_standalone_redis)")
        + " against one process on the memory store), lost == 0", lambda r: None if "msg_per_s" not in r
        else _no_loss(r)) for store in SHARED_STORES for processes in SHARED_PROCESSES},
    "scale-trivial-p1": ("none (reference for scale-trivial-p2)", lambda r: None),
    "scale-trivial-p2": ("none (a trivial processor on 2 cores: the broker and the clients share them)",
                         lambda r: None),
    "ceiling": ("none (the bare amqtt receive->publish loop the trivial scenarios are compared with)", lambda r: None),
    "peer": ("none (a hand-written loop a user would write instead: ratio_to_best_peer of the listener rows)",
             lambda r: None),
    "hung-memory-after-processing": ("none (reference: the hung job's held acknowledgement stops the broker at its "
                                     "in-flight window)", lambda r: None),
    "hung-sqlite-after-recording": ("fast_per_s >= 100 (the hung job stalls nothing; the memory row stops at the "
                                    "window)", lambda r: None if "fast_per_s" not in r else r["fast_per_s"] >= 100),
    "hung-redis-after-recording": ("fast_per_s >= 100 (the hung job stalls nothing; the memory row stops at the "
                                   "window)", lambda r: None if "fast_per_s" not in r else r["fast_per_s"] >= 100),
}


#: The least ``ratio_to_best_peer`` asked of a row (plain ``def`` and ``async def`` alike): faster than the loop a
#: user would write with gmqtt or paho-mqtt, with every guarantee on.
PEER_TARGETS: Dict[str, float] = {
    f"{processor}-qos{qos}-small": least for processor in ("trivial", "echo-async")
    for qos, least in ((0, 1.3), (1, 1.1), (2, 1.0))
}


def judge(row: Dict[str, Any]) -> None:
    """Add the issue's ``target`` for this scenario and whether it was ``met`` (None: no target); for the rows
    compared with the hand-written peers, also ``peer_target`` and ``peer_target_met`` (None: no peers run)."""
    key = row["scenario"]
    if key.startswith("ceiling-"):
        key = "ceiling"
    elif key.startswith("peer-"):
        key = "peer"
    text, check = TARGETS.get(key, ("none", lambda r: None))
    row["target"] = text
    row["met"] = None if "error" in row else check(row)
    least = PEER_TARGETS.get(key)
    if least is not None:
        ratio = row.get("ratio_to_best_peer")
        row["peer_target"] = f"ratio_to_best_peer >= {least}, lost == 0"
        row["peer_target_met"] = None if ratio is None or "error" in row else ratio >= least and _no_loss(row)
        budget = peer_target_cpu_budget(row, least)
        if budget is not None:
            row["peer_target_cpu_budget_us_per_msg"] = budget


def peer_target_cpu_budget(row: Dict[str, Any], least: float) -> Optional[int]:
    """The CPU per message the loop under test could spend and still reach ``least`` × the best peer's msg/s, the
    rest of the machine's CPU per message (broker, publisher, collector, anything else) staying as this row
    measured it: both cores are near busy in these rows, so msg/s goes as 1 / the machine's CPU per message.
    Negative: out of reach however little the loop spends. None: the CPU figures are missing."""
    peer_machine, machine, own = (row.get(name) for name in (
        "best_peer_machine_cpu_us_per_msg", "machine_cpu_us_per_msg", "cpu_us_per_msg"))
    if not (peer_machine and machine and own):
        return None
    return int(round(peer_machine / least - (machine - own)))


# -- payloads and processors -----------------------------------------------------------------------


def build_payload(kind: str, job_id: str, sent: float) -> bytes:
    """A TOML job: the job id, the send time, and for ``manual`` the manual's example document."""
    head = f'job_id = "{job_id}"\nsent = {sent:.6f}\n'
    return (head + MANUAL_BODY if kind == "manual" else head).encode("utf-8")


def job_prefix(run_id: str, name: str) -> str:
    """The job ids of a run are ``<prefix>-<8 digits>``."""
    return f"bench-{run_id}-{_NOT_IN_TOPICS.sub('_', name)}"


def payload_size(kind: str, run_id: str, name: str) -> int:
    """Bytes of one payload of this scenario (every job id has the same length)."""
    return len(build_payload(kind, f"{job_prefix(run_id, name)}-00000000", time.time()))


class Progress:
    """How many jobs the processor has finished (read by the RSS sampler); safe from worker threads."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self.value = 0

    def tick(self) -> None:
        """Count one job."""
        self.value = next(self._counter)


def make_processor(kind: str, progress: Progress) -> Callable[..., Any]:
    """The scenario's processor: trivial (sync echo), echo_async, async 50 ms sleep, or sync 50 ms sleep."""
    def trivial(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        progress.tick()
        return {"job_id": job_id, "sent": data.get("sent")}

    async def echo_async(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        progress.tick()
        return {"job_id": job_id, "sent": data.get("sent")}

    async def async50(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        await asyncio.sleep(0.05)
        progress.tick()
        return {"job_id": job_id, "sent": data.get("sent")}

    def sync50(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        time.sleep(0.05)
        progress.tick()
        return {"job_id": job_id, "sent": data.get("sent")}

    from Listener import run_inline

    processors = {"trivial": trivial, "echo_async": echo_async, "async50": async50, "sync50": sync50}
    if kind == "inline":
        return run_inline(lambda data, job_id: trivial(data, job_id))
    return processors[kind]


# -- the broker ------------------------------------------------------------------------------------


@dataclass
class Endpoint:
    """Where the broker is, and how to log in."""

    host: str
    port: int
    username: Optional[str] = None
    password: Optional[str] = None
    description: str = "external broker"
    #: The process id of the bench's own broker (None: an external one), whose CPU each row reports.
    broker_pid: Optional[int] = None

    def amqtt_uri(self) -> str:
        """``mqtt://[user:pass@]host:port/`` for amqtt."""
        from urllib.parse import quote

        login = ""
        if self.username is not None:
            login = quote(self.username, safe="") + (":" + quote(self.password, safe="") if self.password else "") + "@"
        return f"mqtt://{login}{self.host}:{self.port}/"


class BrokerContext:
    """``with BrokerContext() as endpoint``: the bench's own mosquitto, or the one in MQTT_HOST/MQTT_PORT."""

    def __init__(self) -> None:
        self._broker: Any = None
        self._folder: Optional[Path] = None

    def __enter__(self) -> Endpoint:
        host = os.environ.get("MQTT_HOST")
        if host:
            return Endpoint(host, int(os.environ.get("MQTT_PORT", "1883")), os.environ.get("MQTT_USERNAME") or None,
                            os.environ.get("MQTT_PASSWORD") or None)
        from tests.support.brokers import MosquittoBroker, session_folder

        self._folder = session_folder()
        # MosquittoBroker sets set_tcp_nodelay true and max_queued_messages 0 (unlimited), as a bench needs.
        # With ack_policy after_processing the broker's in-flight limit (default 20) caps the QoS 1 jobs running
        # at once: raised so that max_concurrent_jobs=100 scenarios can run 100.
        self._broker = MosquittoBroker(self._folder, max_inflight=BENCH_BROKER_INFLIGHT)
        self._broker.start()
        return Endpoint("127.0.0.1", self._broker.plain_port,
                        description=f"{_mosquitto_version(self._broker.binary)}, own, loopback",
                        broker_pid=self._broker.process.pid)

    def __exit__(self, *exc: Any) -> None:
        if self._broker is not None:
            self._broker.stop()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


def _mosquitto_version(binary: str) -> str:
    """``mosquitto version X`` as the binary reports it."""
    try:
        result = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired):
        return "mosquitto"
    lines = (result.stdout or result.stderr).splitlines()
    return lines[0].strip() if lines else "mosquitto"


# -- publisher and collector processes (paho-mqtt) -------------------------------------------------


def paho_client(spec: Dict[str, Any], prefix: str) -> Any:
    """A connected paho client with its network thread running."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-{os.getpid()}")
    if spec.get("username"):
        client.username_pw_set(spec["username"], spec.get("password"))
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(spec["host"], spec["port"], keepalive=60)
    client.loop_start()
    deadline = time.monotonic() + START_TIMEOUT
    while not client.is_connected():
        if time.monotonic() > deadline:
            raise SystemExit(f"{prefix}: could not connect to {spec['host']}:{spec['port']}")
        time.sleep(0.005)
    return client


def watch_stdin(on_line: Callable[[str], None]) -> None:
    """Hand stdin lines to ``on_line`` from a daemon thread; end of file (the runner died) exits."""
    def watch() -> None:
        for line in sys.stdin:
            on_line(line.strip())
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def run_publisher(spec: Dict[str, Any]) -> None:
    """Connect, say READY, wait for GO, publish ``count`` jobs (paced when ``rate``), wait for the acks."""
    go, done = threading.Event(), threading.Event()
    watch_stdin(lambda line: go.set() if line == "GO" else None)
    acked = itertools.count(1)
    state = {"acked": 0}
    # paho numbers its messages 1 to 65,535 and forgets a QoS 1/2 one still unacknowledged whose number comes round
    # again. (A QoS 0 one is gone once written: it needs no window, whose hand-offs would slow the publisher down.)
    window = threading.BoundedSemaphore(PUBLISHER_WINDOW) if spec["qos"] else None

    def on_publish(*_: Any) -> None:
        state["acked"] = next(acked)
        if window is not None:
            window.release()
        if state["acked"] >= spec["count"]:
            done.set()

    client = paho_client(spec, "bench-pub")
    client.on_publish = on_publish
    print("READY", flush=True)
    go.wait()
    started, cpu_before = time.perf_counter(), time.process_time()
    for i, sent in enumerate(pacer(spec["count"], spec["rate"])):
        if window is not None and not window.acquire(timeout=SUMMARY_TIMEOUT):  # no more acknowledgements: the row
            break  # shows what is lost
        client.publish(spec["topic"], build_payload(spec["payload"], f"{spec['prefix']}-{i:08d}", sent), spec["qos"])
    published = time.perf_counter() - started
    done.wait(60.0 + spec["count"] / 1000)
    cpu = time.process_time() - cpu_before  # paho's network thread included
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"published": spec["count"], "acked": state["acked"], "publish_seconds": round(published, 3),
                      "cpu_s": round(cpu, 3)}), flush=True)


def pacer(count: int, rate: float) -> Iterator[float]:
    """Yield ``count`` send times (``time.time()``), sleeping to keep ``rate`` msg/s when it is set."""
    start = time.perf_counter()
    for i in range(count):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        yield time.time()


def run_collector(spec: Dict[str, Any]) -> None:
    """Collect results until ``count`` arrived, none arrived for ``idle_timeout`` s, or the runner says STOP."""
    finish, subscribed = threading.Event(), threading.Event()
    received: List[Tuple[float, str, bytes]] = []
    state = {"results": 0, "last": time.monotonic()}
    results_topic = spec["results_topic"]

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        received.append((time.time(), message.topic, message.payload))
        state["last"] = time.monotonic()
        if message.topic == results_topic:
            state["results"] += 1
            if state["results"] >= spec["count"]:
                finish.set()

    def on_line(line: str) -> None:
        state["last"] = time.monotonic()  # GO: the idle clock starts now
        if line == "STOP":
            finish.set()

    client = paho_client(spec, "bench-collect")
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.subscribe([(results_topic, spec["qos"]), (spec["error_topic"], 1)])
    if not subscribed.wait(START_TIMEOUT):
        raise SystemExit("collector: no SUBACK")
    watch_stdin(on_line)
    print("READY", flush=True)
    while not finish.wait(0.2):
        if time.monotonic() - state["last"] > spec["idle_timeout"]:
            break
    client.disconnect()
    client.loop_stop()
    print(json.dumps(summarise(received, results_topic)), flush=True)


def dashboard_get(opener: urllib.request.OpenerDirector, url: str) -> Tuple[str, float]:
    """GET ``url``: its HTTP status (404 too: the dashboard may not be there), or the error's name; and the ms taken."""
    started = time.perf_counter()
    try:
        with opener.open(url, timeout=DASHBOARD_REQUEST_TIMEOUT) as response:
            response.read()
            status = str(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        status = str(exc.code)
    except (urllib.error.URLError, OSError) as exc:  # refused, reset, timed out
        reason = getattr(exc, "reason", None)
        status = type(reason if isinstance(reason, BaseException) else exc).__name__
    return status, (time.perf_counter() - started) * 1000.0


def run_poller(spec: Dict[str, Any]) -> None:
    """Do what an open dashboard tab does (``DASHBOARD_POLLS``) from GO until STOP; report what was answered.

    Every request counts, by path and status; ``failed`` are those without an HTTP answer or with a 5xx.
    """
    go, stop = threading.Event(), threading.Event()
    watch_stdin(lambda line: go.set() if line == "GO" else stop.set() if line == "STOP" else None)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    statuses: Dict[str, Dict[str, int]] = {path: {} for path, _ in DASHBOARD_POLLS}
    times: List[float] = []
    print("READY", flush=True)
    go.wait()
    started, tick = time.monotonic(), 0
    while not stop.is_set():
        for path, every in DASHBOARD_POLLS:
            if tick % every == 0 and not stop.is_set():
                status, ms = dashboard_get(opener, spec["url"] + path)
                statuses[path][status] = statuses[path].get(status, 0) + 1
                times.append(ms)
        tick = max(tick + 1, int(time.monotonic() - started) + 1)  # a round that overran skips the ticks it missed
        stop.wait(max(0.0, started + tick - time.monotonic()))
    times.sort()
    failed = sum(n for counts in statuses.values() for status, n in counts.items()
                 if not status.isdigit() or int(status) >= 500)
    print(json.dumps({"requests": len(times), "failed": failed, "statuses": statuses,
                      "p50_ms": percentile(times, 50), "max_ms": round(times[-1], 2) if times else None}), flush=True)


def parse_result(payload: bytes) -> Tuple[Optional[str], Optional[float]]:
    """Job id and send time from a result: the listener's JSON, or the TOML the bare loop forwards."""
    if payload[:1] == b"{":
        body = json.loads(payload)
        sent = body.get("sent")
        return body.get("job_id"), float(sent) if sent is not None else None
    job_id, sent = _JOB_ID.search(payload), _SENT.search(payload)
    return (job_id.group(1).decode() if job_id else None), (float(sent.group(1)) if sent else None)


def summarise(received: List[Tuple[float, str, bytes]], results_topic: str) -> Dict[str, Any]:
    """Distinct results, duplicates, errors, and end-to-end latency percentiles."""
    seen: set[str] = set()
    latencies: List[float] = []
    errors = duplicates = 0
    first_sent, last_received = float("inf"), 0.0
    for arrived, topic, payload in received:
        if topic != results_topic:
            errors += 1
            continue
        job_id, sent = parse_result(payload)
        if job_id is None or job_id in seen:
            duplicates += 1
            continue
        seen.add(job_id)
        last_received = max(last_received, arrived)
        if sent is not None:
            first_sent = min(first_sent, sent)
            latencies.append((arrived - sent) * 1000.0)
    spikes = latency_spikes(received, results_topic, first_sent)
    latencies.sort()
    span = last_received - first_sent if latencies else 0.0
    return {"received": len(seen), "duplicates": duplicates, "errors": errors, "span_s": round(span, 3),
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": round(latencies[-1], 2) if latencies else None, "latency_spikes": spikes}


def latency_spikes(received: List[Tuple[float, str, bytes]], results_topic: str, start: float,
                   threshold_ms: float = 50.0, keep: int = 5) -> List[List[float]]:
    """The worst seconds of the run: ``[second since the first send, max latency ms]`` over ``threshold_ms``."""
    worst: Dict[int, float] = {}
    for arrived, topic, payload in received:
        sent = parse_result(payload)[1] if topic == results_topic else None
        if sent is not None:
            second = int(arrived - start)
            worst[second] = max(worst.get(second, 0.0), (arrived - sent) * 1000.0)
    spikes = sorted(((s, ms) for s, ms in worst.items() if ms > threshold_ms), key=lambda item: -item[1])[:keep]
    return [[s, round(ms, 1)] for s, ms in sorted(spikes)]


def percentile(ordered: List[float], pct: float) -> Optional[float]:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * pct // 100))
    return round(ordered[int(rank) - 1], 2)


# -- the runner's helpers: children, loop lag, RSS -------------------------------------------------


class Children:
    """The runner's publisher and collector processes, all ended on the way out whatever happens."""

    def __init__(self) -> None:
        self._procs: List[asyncio.subprocess.Process] = []

    async def spawn(self, role: str, spec: Dict[str, Any]) -> asyncio.subprocess.Process:
        """Start this script in ``role`` with ``spec``; stdin and stdout are pipes."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--role", role, "--spec", json.dumps(spec),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=str(ROOT))
        self._procs.append(proc)
        return proc

    async def close(self) -> None:
        """Kill every child still running and reap them all."""
        for proc in self._procs:
            if proc.returncode is None:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
        for proc in self._procs:
            await asyncio.wait({asyncio.ensure_future(proc.wait())}, timeout=5.0)
        self._procs.clear()


async def read_line(proc: asyncio.subprocess.Process, timeout: Optional[float], what: str) -> str:
    """The child's next stdout line, within ``timeout`` seconds."""
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        raise RuntimeError(f"{what} exited (code {await proc.wait()}) without answering")
    return line.decode().strip()


async def expect_ready(proc: asyncio.subprocess.Process, what: str) -> None:
    """Wait for the child's READY line."""
    line = await read_line(proc, START_TIMEOUT, what)
    if line != "READY":
        raise RuntimeError(f"{what} said {line!r} instead of READY")


async def tell(proc: asyncio.subprocess.Process, text: str) -> None:
    """Write one line to the child's stdin (ignored when it has gone)."""
    assert proc.stdin is not None
    try:
        proc.stdin.write(text.encode() + b"\n")
        await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass


async def final_report(proc: asyncio.subprocess.Process, timeout: float) -> Optional[Dict[str, Any]]:
    """The child's last JSON line, or None (and the child killed) when it does not come in time."""
    try:
        line = await read_line(proc, timeout, "child")
        await asyncio.wait_for(proc.wait(), 5.0)
        return dict(json.loads(line))
    except (asyncio.TimeoutError, RuntimeError, ValueError):
        if proc.returncode is None:
            proc.kill()
        return None


def process_cpu_seconds(pid: Optional[int]) -> Optional[float]:
    """User and system CPU seconds of process ``pid`` so far (None: no pid, or it cannot be read)."""
    import psutil

    if pid is None:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy so far (all processes, the bench's and any other)."""
    import psutil

    times = psutil.cpu_times()
    # Linux counts guest time inside user and nice already; steal is time the hypervisor gave to others.
    return float(times.user + times.system + sum(getattr(times, name, 0.0) for name in ("nice", "irq", "softirq")))


def rss_bytes() -> int:
    """Resident set size of this (the listener's) process."""
    import psutil

    return int(psutil.Process().memory_info().rss)


class LoopLag:
    """Sleeps 10 ms again and again and records the largest overshoot: how long the loop was held up."""

    def __init__(self) -> None:
        self.max_lag = 0.0
        self._task: Optional[asyncio.Task[None]] = None

    def start(self) -> None:
        """Begin measuring."""
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_PERIOD)
            self.max_lag = max(self.max_lag, loop.time() - before - LAG_PERIOD)

    async def stop(self) -> float:
        """Stop; the largest lag seen, in ms."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return round(self.max_lag * 1000.0, 2)


class RssSampler:
    """Records RSS (MiB) each time the processor has finished another 1/``points`` of the scenario's jobs."""

    def __init__(self, progress: Progress, count: int, points: int) -> None:
        self.samples: List[float] = []
        self._progress = progress
        self._marks = [count * (k + 1) // points for k in range(points)] if points else []
        self._task: Optional[asyncio.Task[None]] = None

    def start(self) -> None:
        """Begin sampling (nothing to do without points)."""
        if self._marks:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while len(self.samples) < len(self._marks):
            if self._progress.value >= self._marks[len(self.samples)]:
                self.samples.append(round(rss_bytes() / MIB, 1))
            else:
                await asyncio.sleep(0.05)

    async def stop(self) -> List[float]:
        """Stop; the samples taken."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return self.samples


# -- the runner: one scenario in this process ------------------------------------------------------


@dataclass
class Job:
    """What a runner process is asked to measure."""

    scenario: Scenario
    kind: str  # "listener", "ceiling", or "peer-<name>" (a hand-written peer of scripts/bench_peers.py)
    endpoint: Endpoint
    run_id: str
    slack: float
    idle_timeout: float
    profile: bool = False
    #: With ``profile``: also write the pstats there (for ``python -m pstats``, or a sort by call count).
    profile_out: Optional[str] = None

    @classmethod
    def from_json(cls, text: str) -> "Job":
        """Inverse of ``to_json``."""
        raw = json.loads(text)
        return cls(Scenario(**raw.pop("scenario")), endpoint=Endpoint(**raw.pop("endpoint")), **raw)

    def to_json(self) -> str:
        """The job as JSON, for the runner's command line."""
        return json.dumps(asdict(self))


@dataclass
class Measurement:
    """Everything a runner measured, before it becomes a JSON line."""

    collector: Dict[str, Any]
    publisher: Optional[Dict[str, Any]]
    cpu_s: float
    max_loop_lag_ms: float
    rss_points_mb: List[float]
    rss_before: int
    rss_after: int = 0
    jobs_held: int = 0
    #: CPU seconds meanwhile of the bench's own broker (absent: an external one) and of the collector.
    others_cpu_s: Dict[str, float] = field(default_factory=dict)
    machine_cpu_s: Optional[float] = None  # every core's busy time meanwhile
    poller: Optional[Dict[str, Any]] = None  # the dashboard poller's report (scenarios with ``dashboard``)


@dataclass
class Runner:
    """Hosts the server under test and drives one scenario's traffic through it."""

    job: Job
    children: Children = field(default_factory=Children)
    profile: Optional[cProfile.Profile] = None
    store_dir: Optional[str] = None  # the SQLite job store's temporary directory, removed after the run
    redis_url: str = ""  # the Redis job store (a redis-server of the run's own)

    @property
    def topics(self) -> Dict[str, str]:
        """``bench/<run id>/<scenario>/...``: no run ever sees another's traffic."""
        base = f"bench/{self.job.run_id}/{self.job.scenario.slug}"
        return {"jobs": f"{base}/jobs", "results": f"{base}/results", "errors": f"{base}/errors"}

    def child_spec(self) -> Dict[str, Any]:
        """What the publisher and the collector need to know."""
        sc, ep, topics = self.job.scenario, self.job.endpoint, self.topics
        return {"host": ep.host, "port": ep.port, "username": ep.username, "password": ep.password,
                "topic": topics["jobs"], "results_topic": topics["results"], "error_topic": topics["errors"],
                "qos": sc.qos, "count": sc.count, "rate": sc.rate, "payload": sc.payload,
                "prefix": job_prefix(self.job.run_id, sc.name), "idle_timeout": self.job.idle_timeout}

    async def measure(self, serve: Callable[[], Awaitable[None]], progress: Progress,
                      jobs_held: Callable[[], int], cpu_seconds: Callable[[], float] = time.process_time,
                      dashboard_url: Optional[Callable[[], str]] = None) -> Measurement:
        """Start the children and the server (``serve``), send the traffic, measure the server meanwhile
        (its CPU with ``cpu_seconds``: this process's, unless the server runs in other processes).

        With ``dashboard_url`` (the server's base URL, once it serves), a poller process (``run_poller``) plays an
        open dashboard tab for as long as the traffic lasts; its requests take no CPU from this process."""
        spec = self.child_spec()
        collector = await self.children.spawn("collector", spec)
        publisher = await self.children.spawn("publisher", spec)
        await asyncio.wait_for(serve(), START_TIMEOUT)
        poller = None
        if dashboard_url is not None:
            poller = await self.children.spawn("poller", {"url": dashboard_url()})
            await expect_ready(poller, "dashboard poller")
        await expect_ready(collector, "collector")
        await expect_ready(publisher, "publisher")
        gc.collect()
        lag = LoopLag()
        sampler = RssSampler(progress, self.job.scenario.count, self.job.scenario.rss_points)
        rss_before, cpu_before = rss_bytes(), cpu_seconds()
        # Where the machine's CPU goes meanwhile, beside the server: the broker and the collector (the publisher
        # reports its own), and the whole machine.
        others = {"broker": self.job.endpoint.broker_pid, "collector": collector.pid}
        others_before = {name: process_cpu_seconds(pid) for name, pid in others.items()}
        machine_before = machine_busy_seconds()
        lag.start()
        sampler.start()
        if self.profile is not None:
            self.profile.enable()
        try:
            await tell(collector, "GO")
            if poller is not None:
                await tell(poller, "GO")
            await tell(publisher, "GO")
            summary = await self.await_results(collector)
        finally:
            if self.profile is not None:
                self.profile.disable()
        cpu = cpu_seconds() - cpu_before
        machine = machine_busy_seconds() - machine_before
        others_cpu: Dict[str, float] = {}
        for name, pid in others.items():
            before, after = others_before[name], process_cpu_seconds(pid)
            if before is not None and after is not None:
                others_cpu[name] = round(after - before, 3)
        result = Measurement(summary, None, round(cpu, 3), await lag.stop(), await sampler.stop(), rss_before,
                             others_cpu_s=others_cpu, machine_cpu_s=round(machine, 3))
        if poller is not None:
            await tell(poller, "STOP")
            result.poller = await final_report(poller, STOP_TIMEOUT + 4 * DASHBOARD_REQUEST_TIMEOUT)
        gc.collect()
        result.rss_after, result.jobs_held = rss_bytes(), jobs_held()
        result.publisher = await final_report(publisher, STOP_TIMEOUT)
        return result

    async def await_results(self, collector: asyncio.subprocess.Process) -> Dict[str, Any]:
        """The collector's summary: when every result arrived, or (after STOP) at the scenario's deadline."""
        try:
            line = await read_line(collector, self.job.scenario.deadline(self.job.slack), "collector")
        except asyncio.TimeoutError:
            await tell(collector, "STOP")
            line = await read_line(collector, SUMMARY_TIMEOUT, "collector")
        return dict(json.loads(line))

    async def run(self) -> Dict[str, Any]:
        """Measure the job; its JSON line (without the target, which the orchestrator adds)."""
        if self.job.profile:
            self.profile = cProfile.Profile()
        if self.job.scenario.hung_window:
            try:
                return await self.run_hung()
            finally:
                await self.children.close()
                if self.store_dir is not None:
                    shutil.rmtree(self.store_dir, ignore_errors=True)
        try:
            if self.job.kind == "ceiling":
                measured = await self.run_ceiling()
            elif self.job.kind.startswith("peer-"):
                measured = await self.run_peer(self.job.kind[len("peer-"):])
            elif self.job.scenario.processes:
                with contextlib.ExitStack() as services:
                    skipped = self.start_shared_store(services)
                    if skipped is not None:
                        return skipped
                    measured = await self.run_processes()
            else:
                measured = await self.run_listener()
        finally:
            await self.children.close()
            if self.store_dir is not None:
                shutil.rmtree(self.store_dir, ignore_errors=True)
        if self.profile is not None:
            print_profile(self.profile, self.job.profile_out)
        return row_for(self.job, measured)

    def listener_config(self) -> Any:
        """The EventListenerConfig for this scenario (fields this version lacks are left out)."""
        from Listener import EventListenerConfig

        sc, ep, topics = self.job.scenario, self.job.endpoint, self.topics
        wanted: Dict[str, Any] = {
            "host": ep.host, "port": ep.port, "username": ep.username, "password": ep.password,
            "client_id": f"bench-listener-{self.job.run_id}-{sc.slug}"[:64], "topic": topics["jobs"], "qos": sc.qos,
            "default_qos": sc.qos, "results_topic": topics["results"], "error_topic": topics["errors"], "log_topic": "",
            "max_concurrent_jobs": sc.max_concurrent_jobs, "max_jobs_in_memory": sc.jobs_limit,
            "shutdown_grace_period": 5.0, "ack_policy": sc.ack_policy,
            # A QoS 0 burst is published faster than it is processed: hold all of it, as the ceiling's
            # unbounded queue does (past max_pending_messages the listener would drop QoS 0 messages).
            "max_pending_messages": max(10_000, sc.count) if sc.qos == 0 and not sc.default_pending else 10_000,
        }
        if sc.dashboard:  # the health, metrics and dashboard endpoints on a free loopback port
            wanted.update(http_host="127.0.0.1", http_port=0)
        if sc.job_store == "sqlite":
            self.store_dir = tempfile.mkdtemp(prefix="bench-jobs-")
            wanted["job_store"] = f"sqlite:///{os.path.join(self.store_dir, 'jobs.db')}"
        elif sc.job_store == "redis":
            wanted["job_store"] = self.redis_url
        known = {f.name for f in dataclasses.fields(EventListenerConfig)}
        return EventListenerConfig(**{k: v for k, v in wanted.items() if k in known})

    async def run_listener(self) -> Measurement:
        """The scenario through an EventListener in this process."""
        from Listener import EventListener

        listener = EventListener(self.listener_config())
        progress = Progress()
        task = asyncio.create_task(listener.run(make_processor(self.job.scenario.processor, progress)))

        async def ready() -> None:
            waiting = asyncio.ensure_future(listener.wait_until_ready())
            await asyncio.wait({waiting, task}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                waiting.cancel()
                task.result()  # run() ended before it was ready: raise its error
                raise RuntimeError("listener stopped before it was ready")

        def dashboard_url() -> str:
            port = getattr(listener, "http_port", None)
            if not port:
                raise RuntimeError("the listener serves no HTTP endpoints (http_port)")
            return f"http://127.0.0.1:{port}"

        try:
            return await self.measure(ready, progress, lambda: len(listener.jobs),
                                      dashboard_url=dashboard_url if self.job.scenario.dashboard else None)
        finally:
            listener.stop()
            await asyncio.wait({task}, timeout=STOP_TIMEOUT)
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def run_hung(self) -> Dict[str, Any]:
        """One job that hangs, then fast ones: how many fast jobs finish per second while it hangs, through a
        mosquitto of its own at the default in-flight limit (20; ``MQTT_HOST``: that broker, as it is set)."""
        sc = self.job.scenario
        row: Dict[str, Any] = {"scenario": sc.name, "kind": "listener", "qos": sc.qos, "job_store": sc.job_store,
                               "ack_policy": sc.ack_policy, "max_concurrent_jobs": sc.max_concurrent_jobs}
        with contextlib.ExitStack() as services:
            if not os.environ.get("MQTT_HOST"):
                from tests.support.brokers import MosquittoBroker, session_folder

                folder = session_folder()
                services.callback(shutil.rmtree, folder, ignore_errors=True)
                broker = MosquittoBroker(folder)  # no max_inflight: mosquitto's default, 20
                broker.start()
                services.callback(broker.stop)
                self.job = replace(self.job, endpoint=Endpoint("127.0.0.1", broker.plain_port,
                                                               broker_pid=broker.process.pid if broker.process else None))
                row["broker_inflight"] = 20
            if sc.job_store == "redis":
                from tests.support.redis_server import REDIS_BINARY, RedisServer

                if REDIS_BINARY is None:
                    row["skipped"] = "redis-server is not installed"
                    return row
                server = RedisServer()
                server.start()
                services.callback(server.stop)
                self.redis_url = server.url(prefix=f"bench-{self.job.run_id}")
            row.update(await self._measure_hung())
        return row

    async def _measure_hung(self) -> Dict[str, Any]:
        from Listener import EventListener

        sc = self.job.scenario
        release, progress = threading.Event(), Progress()
        hung_id = f"{job_prefix(self.job.run_id, sc.name)}-{0:08d}"  # the publisher sends it first

        def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
            if job_id == hung_id:
                release.wait(sc.hung_window + 2 * START_TIMEOUT)
            else:
                progress.tick()
            return {"job_id": job_id, "sent": data.get("sent")}

        listener = EventListener(self.listener_config())
        task = asyncio.create_task(listener.run(processor))
        try:
            publisher = await self.children.spawn("publisher", self.child_spec())
            await listener.wait_until_ready(START_TIMEOUT)
            await expect_ready(publisher, "publisher")
            started = time.monotonic()
            await tell(publisher, "GO")
            while progress.value < sc.count - 1 and time.monotonic() - started < sc.hung_window:
                await asyncio.sleep(0.01)
            seconds = time.monotonic() - started
            fast, hung_running = progress.value, await listener.is_job_running(hung_id)
        finally:
            release.set()
            listener.stop()
            await asyncio.wait({task}, timeout=STOP_TIMEOUT)
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return {"fast_jobs": sc.count - 1, "fast_finished": fast, "seconds": round(seconds, 2),
                "fast_per_s": round(fast / seconds, 1), "msg_per_s": round(fast / seconds, 1),
                "hung_job_running": hung_running}

    def start_shared_store(self, services: contextlib.ExitStack) -> Optional[Dict[str, Any]]:
        """For a scenario whose processes share a Redis job store: start a redis-server ("redis") or a six-node
        Redis Cluster ("cluster") of the run's own, stopped by ``services``, and set ``redis_url`` to it. A row
        with ``skipped`` when redis-server (or, for a cluster, redis-cli) is not installed; None otherwise."""
        sc = self.job.scenario
        if sc.job_store not in ("redis", "cluster"):
            return None
        from tests.support.redis_cluster import REDIS_CLI, RedisCluster
        from tests.support.redis_server import REDIS_BINARY, RedisServer

        missing = [name for name, binary in (("redis-server", REDIS_BINARY), ("redis-cli", REDIS_CLI))
                   if binary is None and (name == "redis-server" or sc.job_store == "cluster")]
        if missing:
            return {"scenario": sc.name, "kind": self.job.kind, "processor": sc.processor, "qos": sc.qos,
                    "job_store": sc.job_store, "processes": sc.processes,
                    "skipped": f"{' and '.join(missing)} not installed"}
        prefix = f"bench-{self.job.run_id}"
        if sc.job_store == "redis":
            server = RedisServer()
            server.start()
            services.callback(server.stop)
            self.redis_url = server.url(prefix=prefix)
        else:
            directory = services.enter_context(tempfile.TemporaryDirectory(prefix="bench-cluster-"))
            cluster = RedisCluster(Path(directory))
            services.callback(cluster.stop)  # also the nodes started when start() fails half-way
            cluster.start()
            self.redis_url = cluster.url(prefix=prefix)
        return None

    async def run_processes(self) -> Measurement:
        """The scenario through ``mqtt-listener run`` (``--workers N``) processes: see scripts/bench_group.py."""
        from bench_group import ListenerGroup

        from tests.support.brokers import free_port

        sc, ep, topics = self.job.scenario, self.job.endpoint, self.topics
        settings: Dict[str, Any] = {
            "host": ep.host, "port": ep.port, "username": ep.username, "password": None,
            "client_id": f"bench-{self.job.run_id}-{sc.slug}"[:60], "topic": topics["jobs"], "qos": sc.qos,
            "default_qos": sc.qos, "results_topic": topics["results"], "error_topic": topics["errors"], "log_topic": "",
            "max_concurrent_jobs": sc.max_concurrent_jobs, "max_jobs_in_memory": sc.jobs_limit,
            "shutdown_grace_period": 5.0, "ack_policy": sc.ack_policy,
        }
        if sc.job_store in ("redis", "cluster"):  # one store shared by every process of the group
            settings["job_store"] = self.redis_url
        if ep.password is not None:
            del settings["password"]  # from MQTT_PASSWORD, never on a command line
        group = ListenerGroup(sc.processor, sc.processes, settings, free_port(), ep.password, ROOT)
        try:
            return await self.measure(lambda: group.start(START_TIMEOUT), Progress(), lambda: 0, group.cpu_seconds)
        finally:
            await group.stop(2 * STOP_TIMEOUT)

    async def run_ceiling(self) -> Measurement:
        """The scenario's traffic through a bare amqtt receive->publish loop, with no listener logic."""
        from amqtt.client import MQTTClient

        topics, qos = self.topics, self.job.scenario.qos
        client = MQTTClient(client_id=f"bench-ceiling-{self.job.run_id}-{self.job.scenario.slug}"[:64],
                            config={"plugins": {}, "auto_reconnect": False})
        pump: List[asyncio.Task[None]] = []

        async def ready() -> None:
            await client.connect(self.job.endpoint.amqtt_uri())
            await client.subscribe([(topics["jobs"], qos)])
            pump.append(asyncio.create_task(forward(client, topics["results"], qos)))

        try:
            return await self.measure(ready, Progress(), lambda: 0)
        finally:
            for task in pump:
                task.cancel()
            await asyncio.gather(*pump, return_exceptions=True)
            await asyncio.wait({asyncio.ensure_future(client.disconnect())}, timeout=STOP_TIMEOUT)

    async def run_peer(self, name: str) -> Measurement:
        """The scenario's traffic through a hand-written gmqtt or paho-mqtt loop (scripts/bench_peers.py),
        calling the trivial processor."""
        from bench_peers import PEERS

        progress = Progress()
        client_id = f"bench-{name}-{self.job.run_id}-{self.job.scenario.slug}"[:64]
        peer = PEERS[name](self.job.endpoint, self.topics, self.job.scenario.qos, client_id,
                           make_processor("trivial", progress), BENCH_BROKER_INFLIGHT)
        try:
            return await self.measure(lambda: peer.start(START_TIMEOUT), progress, lambda: len(peer.jobs))
        finally:
            await asyncio.wait({asyncio.ensure_future(peer.stop())}, timeout=STOP_TIMEOUT)


async def forward(client: Any, results_topic: str, qos: int) -> None:
    """The bare amqtt loop: take a message, publish its payload unchanged to the results topic."""
    while True:
        message = await client.deliver_message()
        if message is None:
            return
        await client.publish(results_topic, bytes(message.data), qos=qos)


def rss_peak_mb() -> Optional[float]:
    """This process's peak RSS so far (``VmHWM``; ``ru_maxrss`` where /proc is not there), in MiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) * 1024 / MIB, 1)
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - not on this platform
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB, 1)


def row_for(job: Job, measured: Measurement) -> Dict[str, Any]:
    """The scenario's JSON line (the orchestrator adds the ceiling ratio and the target)."""
    sc, got = job.scenario, measured.collector
    received, span = got["received"], got["span_s"]
    size = payload_size(sc.payload, job.run_id, sc.name)
    delta = measured.rss_after - measured.rss_before
    held = measured.jobs_held
    per_job = round(delta / held) if held else None
    row: Dict[str, Any] = {
        "scenario": sc.name, "kind": job.kind, "processor": sc.processor, "qos": sc.qos, "payload": sc.payload,
        "payload_bytes": size, "rate": sc.rate or "max",
        "max_concurrent_jobs": sc.max_concurrent_jobs if job.kind == "listener" else None,
        "ack_policy": sc.ack_policy if job.kind == "listener" and sc.qos else None,
        "processes": sc.processes or None,
        **({"job_store": sc.job_store} if sc.job_store != "memory" else {}),
        "messages": sc.count, "received": received, "lost": sc.count - received,
        "duplicates": got["duplicates"], "errors": got["errors"],
        "msg_per_s": round(received / span, 1) if span > 0 else 0.0,
        "p50_ms": got["p50_ms"], "p99_ms": got["p99_ms"], "max_ms": got["max_ms"],
        "cpu_s": measured.cpu_s, "cpu_us_per_msg": per_message_us(measured.cpu_s, received),
        **{f"{name}_cpu_us_per_msg": per_message_us(measured.others_cpu_s.get(name), received)
           for name in ("broker", "collector")},
        "machine_cpu_us_per_msg": per_message_us(measured.machine_cpu_s, received),
        "max_loop_lag_ms": measured.max_loop_lag_ms,
        "rss_before_mb": round(measured.rss_before / MIB, 1), "rss_delta_mb": round(delta / MIB, 1),
        "jobs_held": held, "rss_per_job": per_job,
        "rss_per_job_beyond_payload": per_job - size if per_job is not None else None,
        "ratio_to_ceiling": None,
    }
    if sc.rss_points:
        row["rss_points_mb"] = measured.rss_points_mb
    if sc.default_pending:
        row["processed"] = received
        row["rss_peak_mb"] = rss_peak_mb()
    if measured.publisher is None:
        row["publisher"] = "did not finish"
    else:  # when this is close to the run's span, the publisher (not the server) set the pace
        row["publish_s"] = measured.publisher["publish_seconds"]
        row["publisher_cpu_us_per_msg"] = per_message_us(measured.publisher.get("cpu_s"), received)
    if sc.rate and got.get("latency_spikes"):  # in a flood every second is a "spike": the queue
        row["latency_spikes"] = got["latency_spikes"]
    if sc.dashboard and job.kind == "listener":
        polled = measured.poller
        if polled is None:
            row["dashboard_poller"] = "did not report"
        row["dashboard_requests"] = polled["requests"] if polled else None
        row["dashboard_failed"] = polled["failed"] if polled else None
        row["dashboard_p50_ms"] = polled["p50_ms"] if polled else None
        row["dashboard_max_ms"] = polled["max_ms"] if polled else None
        row["dashboard_statuses"] = polled["statuses"] if polled else None
    return row


def print_profile(profile: cProfile.Profile, out: Optional[str] = None) -> None:
    """The top 25 functions by cumulative and by own time, to stderr; every function's stats to ``out`` if given."""
    if out:
        profile.dump_stats(out)
    for order in ("cumulative", "tottime"):
        print(f"\n=== cProfile of the listener's event-loop thread, top 25 by {order} ===", file=sys.stderr)
        pstats.Stats(profile, stream=sys.stderr).strip_dirs().sort_stats(order).print_stats(25)


# -- the orchestrator ------------------------------------------------------------------------------


def per_message_us(seconds: Optional[float], received: int) -> Optional[int]:
    """``seconds`` of CPU per message received, in µs (None when either is unknown or nothing arrived)."""
    return round(seconds / received * 1e6) if seconds is not None and received else None


def run_job(job: Job) -> Dict[str, Any]:
    """Run one job in a fresh runner process; its row, or an error row when it failed or overran."""
    limit = job.scenario.deadline(job.slack) + 2 * START_TIMEOUT + SUMMARY_TIMEOUT + 2 * STOP_TIMEOUT + 30
    command = [sys.executable, str(Path(__file__).resolve()), "--role", "runner", "--spec", job.to_json()]
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=str(ROOT),  # noqa: S603
                              timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return {"scenario": job.scenario.name, "kind": job.kind, "error": f"runner overran {limit:.0f} s and was killed"}
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        return dict(json.loads(lines[-1]))
    except (IndexError, ValueError):
        return {"scenario": job.scenario.name, "kind": job.kind, "error": f"runner failed (exit code {done.returncode})"}


def run_repeated(job: Job, repeat: int) -> Dict[str, Any]:
    """Run the job ``repeat`` times; the row with the median msg/s, with every run's msg/s beside it."""
    if repeat <= 1:
        return run_job(job)
    rows = [run_job(replace(job, run_id=f"{job.run_id}{i}")) for i in range(repeat)]  # own topics and ids
    if any("skipped" in r for r in rows):
        return rows[0]
    good = sorted((r for r in rows if "error" not in r), key=lambda r: r["msg_per_s"])
    if not good:
        return rows[0]
    median = dict(good[len(good) // 2])
    median["runs_msg_per_s"] = [r.get("msg_per_s") for r in rows]
    if job.scenario.rate:  # paced runs all reach the same msg/s: their p99 and CPU are what differs
        for name in ("p99_ms", "cpu_us_per_msg"):
            runs = [r.get(name) for r in rows]
            median[f"runs_{name}"] = runs
            median[f"median_{name}"] = median_of([v for v in runs if v is not None])
    return median


def median_of(values: List[float]) -> Optional[float]:
    """The median (None for no values)."""
    ordered = sorted(values)
    if not ordered:
        return None
    middle = len(ordered) // 2
    return round(float(ordered[middle]) if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2, 2)


def emit(row: Dict[str, Any], rows: List[Dict[str, Any]]) -> None:
    """Judge the row against its target, print it as one JSON line, keep it."""
    judge(row)
    rows.append(row)
    print(json.dumps(row), flush=True)


def add_ratio(row: Dict[str, Any], ceiling: Optional[Dict[str, Any]]) -> None:
    """``ratio_to_ceiling``: the listener's msg/s over the bare loop's, for the same traffic in the same run.

    Also ``cpu_ratio_to_ceiling``, CPU per message over the bare loop's: on a small machine shared with
    the broker and the clients, wall-clock rates vary by tens of percent from run to run, CPU per
    message much less.
    """
    if ceiling and ceiling.get("msg_per_s") and "error" not in row:
        row["ceiling_msg_per_s"] = ceiling["msg_per_s"]
        row["ratio_to_ceiling"] = round(row["msg_per_s"] / ceiling["msg_per_s"], 3)
        if row.get("cpu_us_per_msg") and ceiling.get("cpu_us_per_msg"):
            row["cpu_ratio_to_ceiling"] = round(row["cpu_us_per_msg"] / ceiling["cpu_us_per_msg"], 2)


def add_peer_ratio(row: Dict[str, Any], peers: List[Dict[str, Any]]) -> None:
    """``ratio_to_best_peer``: the listener's msg/s over the faster hand-written peer's, for the same traffic
    in the same run (``best_peer``, ``best_peer_msg_per_s``); ``cpu_ratio_to_best_peer``: CPU per message over
    that peer's."""
    measured = [p for p in peers if p.get("msg_per_s") and "error" not in p]
    if not measured or "error" in row:
        return
    best = max(measured, key=lambda p: p["msg_per_s"])
    row["best_peer"] = best["kind"][len("peer-"):]
    row["best_peer_msg_per_s"] = best["msg_per_s"]
    row["ratio_to_best_peer"] = round(row["msg_per_s"] / best["msg_per_s"], 3)
    if row.get("cpu_us_per_msg") and best.get("cpu_us_per_msg"):
        row["best_peer_cpu_us_per_msg"] = best["cpu_us_per_msg"]
        row["cpu_ratio_to_best_peer"] = round(row["cpu_us_per_msg"] / best["cpu_us_per_msg"], 2)
    if best.get("machine_cpu_us_per_msg"):
        row["best_peer_machine_cpu_us_per_msg"] = best["machine_cpu_us_per_msg"]


def add_comparison(row: Dict[str, Any], scenario: Scenario, rows: List[Dict[str, Any]]) -> None:
    """``ratio_to_<compared_as>``: the row's msg/s over that of ``scenario.compare_to`` in the same run
    (the SQLite store against the memory store, ack after processing against ack on receipt).

    A ``dashboard`` scenario, paced like its reference, is compared by latency and CPU as well:
    ``p99_ratio_to_<compared_as>`` and ``cpu_ratio_to_<compared_as>``, of the medians of the repeated runs'
    p99 and CPU per message (``median_p99_ms``, ``median_cpu_us_per_msg``; with one run, the row's own)."""
    if "msg_per_s" not in row:  # skipped
        return
    for other, named in scenario.also_compared:
        theirs = next((r for r in rows if r["scenario"] == other), None)
        if theirs and theirs.get("msg_per_s") and "error" not in row and "error" not in theirs:
            row[f"{named}_msg_per_s"] = theirs["msg_per_s"]
            row[f"ratio_to_{named}"] = round(row["msg_per_s"] / theirs["msg_per_s"], 3)
    reference = next((r for r in rows if r["scenario"] == scenario.compare_to), None)
    if reference and reference.get("msg_per_s") and "error" not in row and "error" not in reference:
        row[f"{scenario.compared_as}_msg_per_s"] = reference["msg_per_s"]
        row[f"ratio_to_{scenario.compared_as}"] = round(row["msg_per_s"] / reference["msg_per_s"], 3)
        if scenario.processes > 1:  # how much of N times the one-process rate N processes reach
            row["scaling_efficiency"] = round(row["msg_per_s"] / reference["msg_per_s"] / scenario.processes, 3)
        if scenario.dashboard:
            for key, field_name in (("p99", "p99_ms"), ("cpu", "cpu_us_per_msg")):
                mine, theirs = (r.get(f"median_{field_name}", r.get(field_name)) for r in (row, reference))
                row[f"{scenario.compared_as}_{field_name}"] = theirs
                row[f"{key}_ratio_to_{scenario.compared_as}"] = round(mine / theirs, 3) if mine and theirs else None


def orchestrate(args: argparse.Namespace, scenarios: List[Scenario], endpoint: Endpoint) -> List[Dict[str, Any]]:
    """Run the chosen scenarios one after the other (each trivial one after its ceiling and its peers); return
    the rows."""
    run_id = os.urandom(4).hex()
    slack, idle = (5.0, 5.0) if args.quick else (15.0, IDLE_TIMEOUT)
    rows: List[Dict[str, Any]] = []
    ceilings: Dict[str, Dict[str, Any]] = {}
    peers: Dict[str, Dict[str, Any]] = {}
    for scenario in scenarios:
        wants_ceiling = scenario.ceiling and (args.ceiling or not (args.no_ceiling or args.profile))
        if wants_ceiling and scenario.ceiling_name() not in ceilings:
            bare = replace(scenario, name=scenario.ceiling_name())
            ceilings[bare.name] = run_repeated(Job(bare, "ceiling", endpoint, run_id, slack, idle), args.repeat)
            emit(ceilings[bare.name], rows)
        if args.ceiling:
            continue
        wants_peers = scenario.ceiling and not (args.no_peers or args.profile)
        for peer in PEER_NAMES if wants_peers else ():
            if scenario.peer_name(peer) not in peers:
                hand = replace(scenario, name=scenario.peer_name(peer))
                peers[hand.name] = run_repeated(Job(hand, f"peer-{peer}", endpoint, run_id, slack, idle), args.repeat)
                emit(peers[hand.name], rows)
        job = Job(scenario, "listener", endpoint, run_id, slack, idle, profile=bool(args.profile),
                  profile_out=args.profile_out)
        row = run_job(job) if args.profile else run_repeated(job, args.repeat)
        add_ratio(row, ceilings.get(scenario.ceiling_name()) if scenario.ceiling else None)
        if wants_peers:
            add_peer_ratio(row, [peers[scenario.peer_name(peer)] for peer in PEER_NAMES])
        add_comparison(row, scenario, rows)
        emit(row, rows)
    return rows


def environment(endpoint: Endpoint) -> Dict[str, Any]:
    """What the numbers were taken on."""
    from importlib.metadata import version

    from Listener import __version__

    env = {"python": platform.python_version(), "cpus": os.cpu_count(), "system": platform.system(),
           "listener": __version__, "amqtt": version("amqtt"), "paho_mqtt": version("paho-mqtt"),
           "broker": endpoint.description}
    with contextlib.suppress(ImportError):  # the gmqtt peer's client (the dev extra)
        env["gmqtt"] = version("gmqtt")
    return env


def select(args: argparse.Namespace) -> List[Scenario]:
    """The scenarios asked for, in catalogue order."""
    factor = args.messages / DEFAULT_MESSAGES if args.messages else 1.0
    everything = catalogue(args.quick, factor)
    if args.processes:
        if min(args.processes) < 1:
            raise SystemExit("--processes must be at least 1")
        count = next(s.count for s in everything if s.name == "scale-sync5-p1")
        return [scaling(processes, count) for processes in sorted({1, *args.processes})]
    names = [s.name for s in everything]
    wanted = [args.profile] if args.profile else (args.scenario or names)
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    chosen = [s for s in everything if s.name in wanted]
    return [s for s in chosen if s.ceiling] if args.ceiling else chosen


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", metavar="NAME", help="run only this scenario (repeatable)")
    parser.add_argument("--messages", type=int, metavar="N",
                        help=f"scale every count so the trivial QoS 0 scenarios send N jobs (default {DEFAULT_MESSAGES})")
    parser.add_argument("--repeat", type=int, default=1, metavar="K",
                        help="run every scenario (and ceiling) K times and report the run with the median msg/s")
    parser.add_argument("--quick", action="store_true", help="small counts: the whole run in under a minute")
    parser.add_argument("--ceiling", action="store_true", help="measure only the bare amqtt receive->publish loop")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the ceiling runs (no ratio_to_ceiling)")
    parser.add_argument("--no-peers", action="store_true",
                        help="skip the hand-written gmqtt and paho-mqtt peers (no ratio_to_best_peer)")
    parser.add_argument("--profile", metavar="NAME", help="run one scenario under cProfile; top 25 to stderr")
    parser.add_argument("--profile-out", metavar="FILE", help="with --profile: also write the pstats to FILE")
    parser.add_argument("--json-out", metavar="FILE", help="also write the environment and every line to FILE")
    parser.add_argument("--processes", type=int, action="append", metavar="N",
                        help="run only the 5 ms scaling scenario, with 1 and with N listener processes "
                             "(mqtt-listener run --workers N; repeatable)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--role", choices=("runner", "publisher", "collector", "poller"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so every ``finally`` (children, broker) runs."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def run_child(role: str, spec_text: str) -> int:
    """Entry point of the runner, publisher and collector processes."""
    if role == "runner":
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="[%(levelname)s] %(name)s: %(message)s")
        interrupt_on_sigterm()
        try:
            row = asyncio.run(Runner(Job.from_json(spec_text)).run())
        except KeyboardInterrupt:
            return 130
        print(json.dumps(row), flush=True)
        return 0
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C in the terminal: die quietly, the runner cleans up
    roles = {"publisher": run_publisher, "collector": run_collector, "poller": run_poller}
    roles[role](json.loads(spec_text))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the bench; print one JSON line per scenario on stdout."""
    args = parse_args(argv)
    if args.role:
        return run_child(args.role, args.spec)
    scenarios = select(args)
    if args.list:
        for s in scenarios:
            print(f"{s.name:24} {s.processor:10} qos {s.qos} {s.payload:6} {s.count:>7} messages"
                  f"{' (+ ceiling, peers)' if s.ceiling else ''}")
        return 0
    interrupt_on_sigterm()
    started = time.monotonic()
    try:
        with BrokerContext() as endpoint:
            env = environment(endpoint)
            print(json.dumps({"environment": env}), file=sys.stderr, flush=True)
            rows = orchestrate(args, scenarios, endpoint)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    env["seconds"] = round(time.monotonic() - started)
    print(f"bench finished in {env['seconds']} s", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"environment": env, "results": rows}, indent=1) + "\n",
                                       encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
