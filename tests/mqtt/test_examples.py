"""The manual's chapter 11 programs in examples/, each driven to completion against the test broker.

Each runs as a subprocess with ``--count N``: the test waits for its "Listening" line, publishes N jobs,
expects N results (matched by job id, on the topics the program publishes to) and a clean exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from Listener.testing import BrokerAddress
from tests.support.brokers import BrokerEndpoint, MqttProbe


EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
TIMEOUT = 30.0


@dataclass
class Program:
    script: str
    jobs: List[Tuple[str, str]]  # (topic, TOML with {id} for the job id)
    results: List[str]  # filters the results arrive on
    env: Dict[str, str] = field(default_factory=dict)


PROGRAMS = [
    Program("ch11_simple_processing.py", [("events/tasks", 'task_type = "demo"')] * 3, ["events/results"]),
    Program("ch11_config_from_env.py", [("env-example/jobs", 'n = 1')] * 3, ["env-example/results"],
            env={"MQTT_TOPIC": "env-example/jobs", "RESULTS_TOPIC": "env-example/results"}),
    Program("ch11_multi_topic.py", [
        ("events/alerts", 'severity = "high"\nmessage = "disk full"\nalert_id = "a-1"'),
        ("events/metrics", 'metric_name = "cpu"\nvalue = 0.93'),
        ("events/commands", 'command = "backup"\nparameters = {target = "db"}'),
        ("events/other", 'type = "note"'),
    ], ["monitoring/alerts", "analytics/metrics", "commands/results", "processed/events"]),
    Program("ch11_resilient_processor.py", [
        ("tasks/a", 'task_type = "data_processing"\ninput_data = {name = "x"}'),
        ("tasks/b", 'task_type = "file_operation"\nfile_path = "/tmp/in.csv"'),
        ("tasks/c", 'task_type = "api_call"\nendpoint = "/status"'),
        ("tasks/d", 'task_type = "mystery"'),
        ("tasks/e", 'task_type = "file_operation"'),
    ], ["data/results", "files/results", "api/results", "skipped/tasks", "errors/tasks"]),
    Program("ch11_iot_sensors.py", [
        ("sensors/s1/data", 'sensor_id = "s1"\nsensor_type = "temperature"\nvalue = 85'),
        ("sensors/s2/data", 'sensor_id = "s2"\nsensor_type = "humidity"\nvalue = 40'),
        ("sensors/s3/data", 'sensor_type = "pressure"'),
    ], ["processed/sensors/+", "sensors/errors"]),
    Program("ch11_task_worker.py", [
        ("tasks/queue", 'task_type = "image_processing"\nimage_url = "http://example.invalid/a.jpg"'),
        ("tasks/queue", 'task_type = "data_analysis"\ndataset_id = "d1"'),
        ("tasks/queue", 'task_type = "report_generation"\nreport_type = "weekly"'),
        ("tasks/queue", 'task_type = "unknown"'),
    ], ["tasks/completed/#", "tasks/errors"]),
]


async def read_until_listening(process: "asyncio.subprocess.Process") -> List[str]:
    lines: List[str] = []
    assert process.stdout is not None
    while True:
        line = (await process.stdout.readline()).decode(errors="replace")
        if not line:
            raise AssertionError(f"the program exited before listening: {lines}")
        lines.append(line)
        if line.startswith("Listening on"):
            return lines


@pytest.mark.parametrize("program", PROGRAMS, ids=[p.script for p in PROGRAMS])
async def test_example_processes_count_jobs_and_exits(program: Program, mqtt_broker: BrokerAddress) -> None:
    endpoint = BrokerEndpoint(mqtt_broker.host, mqtt_broker.port)
    ids = [f"{program.script[5:-3]}-{uuid.uuid4().hex[:8]}" for _ in program.jobs]
    env = {k: v for k, v in os.environ.items() if k not in ("MQTT_HOST", "MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD")}
    env.update(program.env)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / program.script), "--host", mqtt_broker.host, "--port", str(mqtt_broker.port),
        "--count", str(len(program.jobs)), cwd=str(EXAMPLES), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    watcher = await asyncio.to_thread(MqttProbe, endpoint)
    try:
        for topic_filter in program.results:
            await asyncio.to_thread(watcher.subscribe, topic_filter)
        await asyncio.wait_for(read_until_listening(process), TIMEOUT)
        for job_id, (topic, toml) in zip(ids, program.jobs):
            await asyncio.to_thread(watcher.publish, topic, f'job_id = "{job_id}"\n{toml}')

        def ours(found: List[Any]) -> List[Dict[str, Any]]:
            bodies = [json.loads(m.payload) for m in found if not m.retain and m.topic not in {t for t, _ in program.jobs}]
            return [b for b in bodies if b.get("job_id") in ids]

        found = await asyncio.to_thread(watcher.wait_until, lambda f: len(ours(f)) >= len(ids), TIMEOUT, None,
                                        f"{len(ids)} results")
        output, _ = await asyncio.wait_for(process.communicate(), TIMEOUT)
    finally:
        watcher.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, output.decode(errors="replace")
    assert sorted(b["job_id"] for b in ours(found)) == sorted(ids)
