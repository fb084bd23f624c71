"""share_group and the pieces of ``run --workers`` that need no broker: validation, the SUBSCRIBE rewrite, the
in-memory broker's shared subscriptions, the group's health and metrics, the worker's status pipe, the CLI."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional

import pytest

from Listener import EventListenerConfig
from Listener.testing.memory_broker import MemoryBroker, MemoryClient, MemoryMessage
from Listener.cli.command import main
from Listener.errors import ConfigError
from Listener.cli.group_status import GroupStatus, sum_snapshots
from Listener.cli.group_worker import StatusPipe
from Listener.ops.metrics import ListenerMetrics
from Listener.cli.supervisor import STATUS_STALE_AFTER, Supervisor, WorkerLaunch, worker_settings
from Listener.testing import TestListener
from Listener.core.topics import share_group_error, shared_filters


# -- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("group,fragment", [
    ("", "empty"), ("a/b", "'/'"), ("a+", "'+'"), ("#", "'#'"), ("a\x00b", "NUL"), (5, "string"),
])
def test_invalid_share_groups_name_the_field(group: Any, fragment: str) -> None:
    with pytest.raises(ConfigError, match="Invalid share_group") as raised:
        EventListenerConfig(share_group=group)
    assert fragment in str(raised.value)


@pytest.mark.parametrize("group", ["workers", "g-1", "with space", "ünïcode", "$dollar"])
def test_valid_share_groups(group: str) -> None:
    assert EventListenerConfig(share_group=group).share_group == group
    assert share_group_error(group) is None


def test_share_group_defaults_to_none_and_reads_the_environment() -> None:
    assert EventListenerConfig().share_group is None
    assert EventListenerConfig.from_env(environ={"MQTT_SHARE_GROUP": "pool"}).share_group == "pool"


@pytest.mark.parametrize("overrides", [{"topic": "$share/g/jobs"}, {"custom_topics": {"$share/g/x": {"qos": 1}}}])
def test_a_share_prefix_together_with_share_group_is_refused(overrides: Dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"already has a \$share/ prefix"):
        EventListenerConfig(share_group="g", **overrides)


# -- the SUBSCRIBE rewrite ------------------------------------------------------------------------------


def test_shared_filters_prefix_every_filter_and_keep_their_qos() -> None:
    filters = [("jobs/#", 1), ("other/+", 0)]
    assert shared_filters(filters, None) == filters
    assert shared_filters(filters, "pool") == [("$share/pool/jobs/#", 1), ("$share/pool/other/+", 0)]


async def test_the_listener_subscribes_shared_but_detects_its_own_messages_on_the_real_filters() -> None:
    config = EventListenerConfig(topic="jobs/#", results_topic="jobs/results", error_topic="jobs/error",
                                 log_topic="jobs/log", share_group="pool", custom_topics={"extra/x": {"qos": 1}})
    async with TestListener(config, lambda data, job_id: {"topic": data["_topic"]}) as harness:
        assert sorted(harness._client.subscriptions) == [("$share/pool/extra/x", 1), ("$share/pool/jobs/#", 0)]
        outcome = await harness.publish('job_id = "a"', topic="jobs/one")
        assert outcome.result is not None and outcome.result["topic"] == "jobs/one"  # the real topic
        # The result went to jobs/results, which the shared subscription covers: its echo is not a job.
        await harness.publish('job_id = "b"', topic="jobs/two")
        metrics = harness.listener.metrics()
        assert metrics["own_messages_ignored"] >= 1 and metrics["messages_rejected"] == 0


async def test_memory_broker_gives_each_message_to_one_member_of_a_group_and_all_to_plain_subscribers() -> None:
    broker = MemoryBroker()
    members = [MemoryClient(broker, f"m{i}") for i in range(2)]
    plain = MemoryClient(broker, "plain")
    publisher = MemoryClient(broker, "pub")
    for client in (*members, plain, publisher):
        await client.connect()
    for client in members:
        await client.subscribe([("$share/g/t/+", 1)])
    await plain.subscribe([("t/+", 1)])
    for index in range(6):
        await publisher.publish(f"t/{index}", b"x", 1)
    received = [[m.topic for m in _drain(client)] for client in members]
    assert sorted(received[0] + received[1]) == [f"t/{i}" for i in range(6)]
    assert len(received[0]) == len(received[1]) == 3
    assert len(_drain(plain)) == 6


def _drain(client: MemoryClient) -> List[MemoryMessage]:
    found = []
    while not client._inbox.empty():
        message = client._inbox.get_nowait()
        if message is not None:
            found.append(message)
    return found


# -- the group's share group ----------------------------------------------------------------------------


def test_workers_without_share_group_use_the_client_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "Listener.supervisor")
    assert worker_settings(EventListenerConfig(client_id="svc"), 3) == {"share_group": "svc"}
    assert "share_group is not set" in caplog.text and "'svc'" in caplog.text
    assert worker_settings(EventListenerConfig(client_id="svc", share_group="pool"), 3) == {"share_group": "pool"}
    assert worker_settings(EventListenerConfig(client_id="svc"), 1) == {"share_group": None}


def test_a_client_id_that_cannot_name_a_group_asks_for_share_group() -> None:
    with pytest.raises(ValueError, match="set share_group"):
        worker_settings(EventListenerConfig(client_id="svc/a"), 2)


def test_launch_message_carries_client_id_group_and_no_http_port() -> None:
    config = EventListenerConfig(client_id="svc", http_port=8080)
    supervisor = Supervisor(WorkerLaunch("m:f", None, {"password": "s3cret"}), config, 2)
    message = supervisor._launch_message(supervisor.workers[1], 7)
    assert message["overrides"] == {"password": "s3cret", "client_id": "svc-1", "share_group": "svc", "http_port": None}
    assert message["status_fd"] == 7 and message["processor"] == "m:f"


# -- the group's health and metrics ---------------------------------------------------------------------


def _snapshot(received: int, ready: bool = True, draining: bool = False, errors: Optional[Dict[str, int]] = None
              ) -> Dict[str, Any]:
    counters = ListenerMetrics()
    counters.messages_received = received
    for name, count in (errors or {}).items():
        counters.errors[name] = count
    return counters.snapshot({"completed": received}, in_flight=1, queue_depth=2, connected=ready, ready=ready,
                             draining=draining)


def test_sum_snapshots_adds_counters_and_combines_flags() -> None:
    total = sum_snapshots([_snapshot(3, errors={"a": 1}), _snapshot(4, draining=True, errors={"b": 2}), None])
    assert total["messages_received"] == 7 and total["jobs"] == {"completed": 7}
    assert total["errors"] == {"a": 1, "b": 2} and total["in_flight"] == 2 and total["queue_depth"] == 4
    assert total["processing_seconds"]["count"] == 0
    assert total["ready"] is False and total["connected"] is False  # one worker is silent
    assert total["draining"] is True
    assert sum_snapshots([_snapshot(1), _snapshot(1)])["ready"] is True


class _FakeProcess:
    def __init__(self, pid: int, returncode: Optional[int] = None) -> None:
        self.pid = pid
        self.returncode = returncode


def _group(reports: List[Optional[Dict[str, Any]]], age: float = 0.0) -> Supervisor:
    supervisor = Supervisor(WorkerLaunch("m:f"), EventListenerConfig(client_id="svc"), len(reports))
    for worker, report in zip(supervisor.workers, reports):
        worker.process = _FakeProcess(1000 + worker.index)  # type: ignore[assignment]
        worker.status, worker.status_at = report, time.monotonic() - age
    return supervisor


def _report(received: int, ready: bool = True, errors: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    return {"ready": ready, "draining": False, "running": True, "metrics": _snapshot(received, ready, errors=errors)}


def test_group_is_ready_only_when_every_worker_reports_ready() -> None:
    assert GroupStatus(_group([_report(1), _report(2)])).is_ready
    assert not GroupStatus(_group([_report(1), _report(2, ready=False)])).is_ready
    assert not GroupStatus(_group([_report(1), None])).is_ready
    assert not GroupStatus(_group([_report(1), _report(2)], age=STATUS_STALE_AFTER + 1)).is_ready
    dead = _group([_report(1), _report(2)])
    dead.workers[1].process = _FakeProcess(5, returncode=-9)  # type: ignore[assignment]
    assert not GroupStatus(dead).is_ready


def test_group_metrics_are_summed_with_a_section_per_worker() -> None:
    status = GroupStatus(_group([_report(3), _report(5), None]))
    metrics = status.metrics()
    assert metrics["messages_received"] == 8 and metrics["workers"] == 3 and metrics["workers_ready"] == 2
    assert metrics["per_worker"]["1"]["metrics"]["messages_received"] == 5
    assert metrics["per_worker"]["2"] == {"pid": 1002, "alive": True, "restarts": 0, "healthy": False, "metrics": None}
    json.dumps(metrics)


def test_group_counters_never_go_down_when_a_worker_dies_and_restarts() -> None:
    """Issue 23 item 5: a restarted worker counts from 0 again; the slot keeps its earlier process's last totals, so
    the group's counters (and the worker's own) never fall, while gauges are the live process's only."""
    supervisor = _group([_report(200, errors={"a": 1}), _report(200)])
    status = GroupStatus(supervisor)
    assert status.metrics()["messages_received"] == 400
    supervisor.workers[0].process = _FakeProcess(1000, returncode=-9)  # type: ignore[assignment]
    down = status.metrics()
    assert down["messages_received"] == 400 and down["errors"] == {"a": 1}  # the dead worker's last report
    assert down["jobs"] == {"completed": 200} and down["per_worker"]["0"]["metrics"] is None  # gauges: live only
    supervisor.workers[0].started(_FakeProcess(2000))  # type: ignore[arg-type]
    assert status.metrics()["messages_received"] == 400
    supervisor.workers[0].status, supervisor.workers[0].status_at = _report(10), time.monotonic()
    back = status.metrics()
    assert back["messages_received"] == 410 and back["errors"] == {"a": 1}
    assert back["per_worker"]["0"]["metrics"]["messages_received"] == 210
    assert back["per_worker"]["0"]["metrics"]["jobs"] == {"completed": 10}
    assert back["jobs"] == {"completed": 210} and back["in_flight"] == 2
    assert back["processing_seconds"]["count"] == 0


def test_group_prometheus_text_has_totals_and_worker_labels() -> None:
    pytest.importorskip("prometheus_client", reason="the Prometheus text needs the prometheus extra")
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)

    class Collector:
        def collect(self) -> Any:
            return GroupStatus(_group([_report(3), _report(5)])).metric_families()

    registry.register(Collector())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert "mqtt_listener_messages_received_total 8.0" in text
    assert 'mqtt_listener_worker_messages_received_total{worker="0"} 3.0' in text
    assert 'mqtt_listener_worker_messages_received_total{worker="1"} 5.0' in text
    assert 'mqtt_listener_worker_jobs{status="completed",worker="1"} 5.0' in text
    assert 'mqtt_listener_worker_up{worker="0"} 1.0' in text
    assert "mqtt_listener_workers 2.0" in text


# -- the worker's status pipe ---------------------------------------------------------------------------


def test_status_pipe_writes_json_lines_and_never_blocks() -> None:
    read_fd, write_fd = os.pipe()
    try:
        pipe = StatusPipe(write_fd)
        pipe.send({"ready": True, "n": 1})
        assert json.loads(os.read(read_fd, 65536)) == {"ready": True, "n": 1}
        big = {"pad": "x" * 300_000}
        pipe.send(big)  # larger than the pipe: what does not fit waits for the next send, the loop never blocks
        pipe.send({"skipped": True})
        received = b""
        for _ in range(20):
            received += os.read(read_fd, 1 << 20)
            if received.endswith(b"\n"):
                break
            pipe.send({"skipped": True})
        assert json.loads(received) == big
        os.close(read_fd)
        read_fd = -1
        pipe.send({"after": "close"})
        assert pipe.closed
    finally:
        if read_fd >= 0:
            os.close(read_fd)
        os.close(write_fd)


# -- the command line ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "x", "65"])
def test_workers_must_be_a_sensible_count(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "m:f", "--workers", value]) == 2
    assert "--workers" in capsys.readouterr().err


@pytest.mark.parametrize("options", [["--workers", "2"], ["--set", "share_group=pool"]])
def test_embedded_broker_refuses_shared_subscriptions(options: List[str], capsys: pytest.CaptureFixture[str],
                                                      root_logger: Any) -> None:
    code = main(["run", "m:f", "--embedded-broker", "--set", "host=127.0.0.1", *options])
    assert code == 2
    assert "does not implement $share" in capsys.readouterr().err
