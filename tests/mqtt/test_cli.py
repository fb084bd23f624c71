"""The ``mqtt-listener`` command for real: subprocesses (``python -m Listener``) against Mosquitto and amqtt.

Each test writes a tiny processor module into its tmp_path and puts that folder on PYTHONPATH. The
listener process logs JSON lines; the tests wait for its ``listener_started`` event instead of sleeping.
Every wait is bounded, and every process is killed in ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from Listener.cli import command as cli_module
from tests.support.brokers import BrokerEndpoint, MqttProbe, free_port
from tests.support.listener_processes import ROOT, CliProcess, connection_options, topic_options


pytestmark = pytest.mark.usefixtures("root_logger")  # main() installs a root log handler


READY_TIMEOUT = 20.0
EXIT_TIMEOUT = 20.0
SECRET = "pw-cli-" + uuid.uuid4().hex[:8]

PROCESSORS = '''
import asyncio
import os
import pathlib
import time


def echo(data, job_id):
    return {"job_id": job_id, "value": data.get("value"), "topic": data.get("_topic")}


def slow(data, job_id):
    pathlib.Path(os.environ["CLI_TEST_MARKER"]).write_text(job_id)
    time.sleep(float(os.environ.get("CLI_TEST_SLEEP", "1.0")))
    return {"job_id": job_id, "slow": True}


async def exits(data, job_id):
    await asyncio.sleep(0)
    if job_id.startswith("exit"):
        raise SystemExit(0)
    return {"job_id": job_id}


async def swallows(data, job_id):
    pathlib.Path(os.environ["CLI_TEST_MARKER"]).write_text(job_id)
    while True:
        try:
            await asyncio.sleep(0.05)
        except BaseException:
            continue


async def blocks(data, job_id):
    pathlib.Path(os.environ["CLI_TEST_MARKER"]).write_text(job_id)
    while True:
        try:
            time.sleep(0.05)
        except BaseException:
            continue
'''


@pytest.fixture
def processor_dir(tmp_path: Path) -> Path:
    (tmp_path / "cli_test_processors.py").write_text(PROCESSORS, encoding="utf-8")
    return tmp_path


@pytest.fixture
def cli(processor_dir: Path) -> Iterator[Callable[..., CliProcess]]:
    """Start ``python -m Listener ...`` with the processor folder on PYTHONPATH; killed after the test."""
    started: List[CliProcess] = []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(processor_dir), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"

    def start(*args: str, extra_env: Optional[Dict[str, str]] = None) -> CliProcess:
        process = CliProcess(list(args), {**env, **(extra_env or {})})
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def run_cli(*args: str, timeout: float = 60.0) -> "subprocess.CompletedProcess[str]":
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "Listener", *args], capture_output=True, text=True,  # noqa: S603
                          timeout=timeout, env=env, cwd=str(ROOT))


def wait_for_file(path: Path, listener: CliProcess, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared:\n" + listener.output()
        assert listener.process.poll() is None, listener.output()
        time.sleep(0.02)


# -- run ------------------------------------------------------------------------------------------------


def test_run_processes_a_job_end_to_end_and_exits_0_on_sigterm(cli: Callable[..., CliProcess], probe: Any,
                                                               unique_topic: str, mqtt_endpoint: BrokerEndpoint) -> None:
    watcher = probe(f"{unique_topic}/results")
    listener = cli("run", "cli_test_processors:echo", *connection_options(mqtt_endpoint), *topic_options(unique_topic),
                   "--log-format", "json")
    listener.wait_for_event("listener_started")
    probe().publish(f"{unique_topic}/jobs", 'job_id = "cli-1"\nvalue = 42\n')
    [message] = watcher.wait_for(1, 10.0, f"{unique_topic}/results")
    assert json.loads(message.payload) == {"job_id": "cli-1", "value": 42, "topic": f"{unique_topic}/jobs"}
    completed = listener.wait_for_event("job_completed")
    assert completed["job_id"] == "cli-1"
    assert completed["level"] == "INFO"
    listener.process.send_signal(signal.SIGTERM)
    assert listener.wait() == 0, listener.output()
    assert all(set(body) >= {"timestamp", "level", "logger", "message"} for body in listener.events())


def test_run_never_shows_the_password_even_at_debug(cli: Callable[..., CliProcess], unique_topic: str,
                                                    mqtt_endpoint: BrokerEndpoint, mosquitto: Any) -> None:
    if mosquitto is None:
        pytest.skip("needs the test-started mosquitto, whose plain listener accepts any credentials")
    listener = cli("run", "cli_test_processors:echo", "--set", f"host={mqtt_endpoint.host}",
                   "--set", f"port={mqtt_endpoint.port}", "--set", "username=cli-user", "--set", f"password={SECRET}",
                   *topic_options(unique_topic), "--log-format", "json", "--log-level", "DEBUG")
    try:
        listener.wait_for_event("listener_started")
        listener.process.send_signal(signal.SIGINT)
        assert listener.wait() == 0, listener.output()
    finally:
        listener.kill()
    assert len(listener.lines) > 10  # DEBUG really logged (amqtt included)
    assert SECRET not in listener.output()


def test_sigterm_lets_the_job_in_flight_finish_and_publish(cli: Callable[..., CliProcess], probe: Any,
                                                           unique_topic: str, mqtt_endpoint: BrokerEndpoint,
                                                           tmp_path: Path) -> None:
    marker = tmp_path / "started"
    watcher = probe(f"{unique_topic}/results")
    listener = cli("run", "cli_test_processors:slow", *connection_options(mqtt_endpoint), *topic_options(unique_topic),
                   "--log-format", "json", extra_env={"CLI_TEST_MARKER": str(marker)})
    listener.wait_for_event("listener_started")
    probe().publish(f"{unique_topic}/jobs", 'job_id = "drain-1"')
    wait_for_file(marker, listener)
    listener.process.send_signal(signal.SIGTERM)
    assert listener.wait() == 0, listener.output()
    [message] = watcher.wait_for(1, 5.0, f"{unique_topic}/results")
    assert json.loads(message.payload) == {"job_id": "drain-1", "slow": True}
    events = [body.get("event") for body in listener.events()]
    assert "job_completed" in events


def test_a_second_signal_stops_at_once_with_exit_1(cli: Callable[..., CliProcess], probe: Any, unique_topic: str,
                                                   mqtt_endpoint: BrokerEndpoint, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    watcher = probe(f"{unique_topic}/results")
    listener = cli("run", "cli_test_processors:slow", *connection_options(mqtt_endpoint), *topic_options(unique_topic),
                   "--log-format", "json", extra_env={"CLI_TEST_MARKER": str(marker), "CLI_TEST_SLEEP": "30"})
    listener.wait_for_event("listener_started")
    probe().publish(f"{unique_topic}/jobs", 'job_id = "stuck-1"')
    wait_for_file(marker, listener)
    listener.process.send_signal(signal.SIGTERM)
    listener.wait_for_message("SIGTERM received")  # two signals sent at once would be seen as one
    started = time.monotonic()
    listener.process.send_signal(signal.SIGTERM)
    assert listener.wait(10.0) == 1, listener.output()
    assert time.monotonic() - started < 10.0
    assert "stopped at once by a second signal" in listener.output()
    assert watcher.messages(f"{unique_topic}/results") == []


def test_system_exit_in_an_async_processor_with_job_timeout_fails_the_job_not_the_process(
        cli: Callable[..., CliProcess], probe: Any, unique_topic: str, mqtt_endpoint: BrokerEndpoint) -> None:
    watcher = probe(f"{unique_topic}/results", f"{unique_topic}/error")
    listener = cli("run", "cli_test_processors:exits", *connection_options(mqtt_endpoint), *topic_options(unique_topic),
                   "--set", "job_timeout=5", "--log-format", "json")
    listener.wait_for_event("listener_started")
    probe().publish(f"{unique_topic}/jobs", 'job_id = "exit-1"', qos=1)
    probe().publish(f"{unique_topic}/jobs", 'job_id = "after-1"', qos=1)
    [result] = watcher.wait_for(1, 15.0, f"{unique_topic}/results")
    assert json.loads(result.payload)["job_id"] == "after-1"
    [error] = watcher.wait_for(1, 5.0, f"{unique_topic}/error")
    assert json.loads(error.payload)["error_message"] == "SystemExit: 0"
    assert listener.process.poll() is None, listener.output()
    listener.process.send_signal(signal.SIGTERM)
    assert listener.wait() == 0, listener.output()


def service_with_a_stuck_job(cli: Callable[..., CliProcess], processor: str, job_id: str, probe: Any,
                             unique_topic: str, mqtt_endpoint: BrokerEndpoint, tmp_path: Path) -> CliProcess:
    """`run` with ``processor``, one job sent, returned once the processor has started it (its marker file)."""
    marker = tmp_path / "started"
    listener = cli("run", processor, *connection_options(mqtt_endpoint), *topic_options(unique_topic),
                   "--log-format", "json", extra_env={"CLI_TEST_MARKER": str(marker)})
    listener.wait_for_event("listener_started")
    probe().publish(f"{unique_topic}/jobs", f'job_id = "{job_id}"')
    wait_for_file(marker, listener)
    return listener


def test_a_second_signal_ends_the_process_when_the_processor_swallows_cancellation(
        cli: Callable[..., CliProcess], probe: Any, unique_topic: str, mqtt_endpoint: BrokerEndpoint,
        tmp_path: Path) -> None:
    listener = service_with_a_stuck_job(cli, "cli_test_processors:swallows", "stubborn", probe, unique_topic,
                                        mqtt_endpoint, tmp_path)
    listener.process.send_signal(signal.SIGTERM)
    listener.wait_for_message("SIGTERM received")
    listener.process.send_signal(signal.SIGTERM)
    assert listener.wait(10.0) == 1, listener.output()  # the task is abandoned: a clean "stopped at once"
    assert "stopped at once by a second signal" in listener.output()


def test_a_second_signal_ends_the_process_even_when_the_processor_blocks_the_event_loop(
        cli: Callable[..., CliProcess], probe: Any, unique_topic: str, mqtt_endpoint: BrokerEndpoint,
        tmp_path: Path) -> None:
    listener = service_with_a_stuck_job(cli, "cli_test_processors:blocks", "blocker", probe, unique_topic,
                                        mqtt_endpoint, tmp_path)
    # The loop is held up, so no log line can confirm that a signal was seen: signal until the process ends,
    # as an operator would. Signals pending at the same time count once, hence the pause between them.
    first = time.monotonic()
    deadline = first + cli_module.FORCED_EXIT_AFTER + 10.0
    while listener.process.poll() is None and time.monotonic() < deadline:
        listener.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            listener.process.wait(0.3)
    assert listener.wait(5.0) == 128 + signal.SIGTERM, listener.output()
    assert "did not stop within" in listener.output()


def test_run_against_an_unreachable_broker_exits_1_without_secrets(cli: Callable[..., CliProcess],
                                                                   unique_topic: str) -> None:
    port = free_port()
    listener = cli("run", "cli_test_processors:echo", "--set", "host=127.0.0.1", "--set", f"port={port}",
                   "--set", f"password={SECRET}", *topic_options(unique_topic))
    try:
        assert listener.wait() == 1
    finally:
        listener.kill()
    assert f"Cannot connect to MQTT broker at 127.0.0.1:{port}" in listener.output()
    assert SECRET not in listener.output()
    assert "Traceback" not in listener.output()


def test_run_with_an_unimportable_processor_exits_2(cli: Callable[..., CliProcess]) -> None:
    listener = cli("run", "cli_test_processors:missing")
    try:
        assert listener.wait() == 2
    finally:
        listener.kill()
    assert "has no attribute 'missing'" in listener.output()


def test_embedded_broker_processes_a_job_published_with_paho(cli: Callable[..., CliProcess],
                                                             unique_topic: str) -> None:
    port = free_port()
    listener = cli("run", "cli_test_processors:echo", "--embedded-broker", "--set", "host=127.0.0.1",
                   "--set", f"port={port}", *topic_options(unique_topic), "--log-format", "json")
    probe: Optional[MqttProbe] = None
    try:
        listener.wait_for_event("listener_started")
        probe = MqttProbe(BrokerEndpoint("127.0.0.1", port))
        probe.subscribe(f"{unique_topic}/results")
        probe.publish(f"{unique_topic}/jobs", 'job_id = "emb-1"\nvalue = "x"\n')
        [message] = probe.wait_for(1, 10.0, f"{unique_topic}/results")
        assert json.loads(message.payload)["job_id"] == "emb-1"
        probe.close()
        probe = None
        listener.process.send_signal(signal.SIGTERM)
        assert listener.wait() == 0, listener.output()
    finally:
        if probe is not None:
            probe.close()
        listener.kill()
    # The broker is gone with the process.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# -- publish ------------------------------------------------------------------------------------------


def test_publish_delivers_one_message(probe: Any, unique_topic: str, mqtt_endpoint: BrokerEndpoint,
                                      tmp_path: Path) -> None:
    watcher = probe(f"{unique_topic}/#")
    job = tmp_path / "job.toml"
    job.write_text('job_id = "pub-2"\n[params]\nn = 3\n', encoding="utf-8")
    options = ["--host", mqtt_endpoint.host, "--port", str(mqtt_endpoint.port)]
    if mqtt_endpoint.username is not None:
        options += ["--username", mqtt_endpoint.username, "--password", mqtt_endpoint.password or ""]
    else:
        options += ["--unset", "username", "--unset", "password"]
    result = run_cli("publish", "--topic", f"{unique_topic}/a", "--data", 'job_id = "pub-1"', *options)
    assert result.returncode == 0, result.stderr
    assert f"to '{unique_topic}/a' (QoS 1)" in result.stdout
    result = run_cli("publish", "-t", f"{unique_topic}/b", "-f", str(job), "--qos", "0", *options)
    assert result.returncode == 0, result.stderr
    messages = watcher.wait_for(2, 10.0)
    assert {m.topic: m.payload for m in messages} == {f"{unique_topic}/a": b'job_id = "pub-1"',
                                                      f"{unique_topic}/b": job.read_bytes()}


def test_publish_refuses_invalid_toml_and_sends_nothing(probe: Any, unique_topic: str,
                                                        mqtt_endpoint: BrokerEndpoint) -> None:
    watcher = probe(f"{unique_topic}/#")
    result = run_cli("publish", "--topic", f"{unique_topic}/bad", "--data", "job_id = ", "--host", mqtt_endpoint.host,
                     "--port", str(mqtt_endpoint.port))
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr
    # A marker published afterwards arrives alone: the invalid payload never reached the broker.
    probe().publish(f"{unique_topic}/marker", b"end")
    messages = watcher.wait_for(1, 10.0)
    assert [m.topic for m in messages] == [f"{unique_topic}/marker"]


def test_publish_and_run_together_from_a_config_file(cli: Callable[..., CliProcess], probe: Any, unique_topic: str,
                                                     mqtt_endpoint: BrokerEndpoint, tmp_path: Path) -> None:
    """One listener.toml serves both commands; publish never takes over the listener's client id."""
    config = tmp_path / "listener.toml"
    lines = [f'host = "{mqtt_endpoint.host}"', f"port = {mqtt_endpoint.port}", f'topic = "{unique_topic}/jobs"',
             f'results_topic = "{unique_topic}/results"', f'error_topic = "{unique_topic}/error"',
             f'log_topic = "{unique_topic}/log"', f'client_id = "cli-{uuid.uuid4().hex[:10]}"', "qos = 1",
             "reconnect_retries = 0"]
    if mqtt_endpoint.username is not None:
        lines += [f'username = "{mqtt_endpoint.username}"', f'password = "{mqtt_endpoint.password}"']
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    watcher = probe(f"{unique_topic}/results")
    listener = cli("run", "cli_test_processors:echo", "--config", str(config), "--log-format", "json")
    listener.wait_for_event("listener_started")
    for n in range(3):
        result = run_cli("publish", "--config", str(config), "-t", f"{unique_topic}/jobs", "-d", f'job_id = "f-{n}"')
        assert result.returncode == 0, result.stderr
    messages = watcher.wait_for(3, 10.0, f"{unique_topic}/results")
    assert sorted(json.loads(m.payload)["job_id"] for m in messages) == ["f-0", "f-1", "f-2"]
    # Still connected: the publishes used client ids of their own (the same id would have kicked it off).
    assert listener.process.poll() is None
    assert "connection_down" not in [body.get("event") for body in listener.events()]
    listener.process.send_signal(signal.SIGTERM)
    assert listener.wait() == 0, listener.output()


# -- the same code paths in this process (so coverage sees them) ---------------------------------------


def publish_options(endpoint: BrokerEndpoint) -> List[str]:
    options = ["--host", endpoint.host, "--port", str(endpoint.port)]
    if endpoint.username is not None:
        return options + ["--username", endpoint.username, "--password", endpoint.password or ""]
    return options + ["--unset", "username", "--unset", "password"]


def test_publish_in_process(probe: Any, unique_topic: str, mqtt_endpoint: BrokerEndpoint,
                            capsys: pytest.CaptureFixture[str]) -> None:
    watcher = probe(f"{unique_topic}/#")
    code = cli_module.main(["publish", "-t", f"{unique_topic}/in", "-d", 'job_id = "inproc-1"', "--retain",
                            "--qos", "2", *publish_options(mqtt_endpoint)])
    assert code == 0, capsys.readouterr().err
    [message] = watcher.wait_for(1, 10.0)
    assert message.payload == b'job_id = "inproc-1"'
    probe().publish(f"{unique_topic}/in", b"", retain=True)  # clear the retained message


def test_run_service_in_process_with_the_embedded_broker_until_sigterm(unique_topic: str, processor_dir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``main(["run", ...])`` in this process (signal handlers need the main thread); a helper thread plays
    the user: it sends a job through the embedded broker, reads the result, then sends SIGTERM."""
    monkeypatch.syspath_prepend(str(processor_dir))
    for name in list(os.environ):
        if name.startswith("MQTT_"):
            monkeypatch.delenv(name)
    port = free_port()
    settings = ["host=127.0.0.1", f"port={port}", "reconnect_retries=0", f"topic={unique_topic}/jobs",
                f"results_topic={unique_topic}/results", f"error_topic={unique_topic}/error",
                f"log_topic={unique_topic}/log"]
    argv = ["run", "cli_test_processors:echo", "--embedded-broker", "--unset", "username", "--unset", "password"]
    for setting in settings:
        argv += ["--set", setting]
    returned = threading.Event()
    results: List[Any] = []
    failures: List[BaseException] = []

    def user() -> None:
        probe: Optional[MqttProbe] = None
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert not returned.is_set(), "the command returned before its broker listened"
                    assert time.monotonic() < deadline, "the embedded broker never listened"
                    time.sleep(0.05)
            probe = MqttProbe(BrokerEndpoint("127.0.0.1", port))
            probe.subscribe(f"{unique_topic}/results")
            # Retained, so the job waits for the listener's subscription instead of racing it.
            probe.publish(f"{unique_topic}/jobs", 'job_id = "svc-1"\nvalue = 7', 1, True)
            results.extend(probe.wait_for(1, 10.0, f"{unique_topic}/results"))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        finally:
            if probe is not None:
                probe.close()
            # The listener is inside run(), so the command's signal handlers are installed: a real SIGTERM drains
            # it. Still running EXIT_TIMEOUT s later: a second SIGTERM stops it at once (exit 1, the test fails).
            if not returned.is_set():
                os.kill(os.getpid(), signal.SIGTERM)
                if not returned.wait(EXIT_TIMEOUT):
                    os.kill(os.getpid(), signal.SIGTERM)

    late_signals: List[int] = []
    # A SIGTERM sent just as main() returns (its handlers removed) must not end pytest: this one records it.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: late_signals.append(signum))
    driver = threading.Thread(target=user, daemon=True)
    driver.start()
    try:
        code = cli_module.main(argv)
    finally:
        returned.set()
        driver.join(EXIT_TIMEOUT)
        signal.signal(signal.SIGTERM, previous)
    assert not failures, failures
    assert code == 0
    [message] = results
    assert json.loads(message.payload)["value"] == 7
