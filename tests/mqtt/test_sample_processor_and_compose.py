"""The compose broker's password file, and examples/ run for real: the sample processor through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

from tests.support.brokers import (COMPOSE_PASSWORD_FILE, BrokerEndpoint, MosquittoBroker, MqttProbe,
                                   session_folder)


ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 20.0


def connack_code(port: int, username: str, password: str) -> int:
    """The CONNACK return code mosquitto gives a CONNECT with these credentials (0 accepted, 5 not authorised)."""
    client_id, user, secret = b"compose-check", username.encode(), password.encode()
    payload = b"".join(len(part).to_bytes(2, "big") + part for part in (client_id, user, secret))
    body = b"\x00\x04MQTT\x04\xc2\x00\x0a" + payload  # MQTT 3.1.1, clean session + username + password
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"\x10" + bytes([len(body)]) + body)
        answer = sock.recv(4)
    assert answer[:1] == b"\x20", answer
    return answer[3]


@pytest.fixture
def compose_passwords_broker() -> Iterator[MosquittoBroker]:
    """A broker from the compose configuration with the compose password file itself (not generated users)."""
    if os.getenv("MQTT_HOST") and os.getenv("MQTT_PORT"):
        pytest.skip("needs brokers the tests start (MQTT_HOST/MQTT_PORT point at an external broker)")
    folder = session_folder()
    broker = MosquittoBroker(folder / "broker")
    shutil.copyfile(COMPOSE_PASSWORD_FILE, broker.password_path)
    broker.password_path.chmod(0o644)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()
        shutil.rmtree(folder, ignore_errors=True)


def test_the_compose_password_file_admits_the_documented_users(compose_passwords_broker: MosquittoBroker) -> None:
    port = compose_passwords_broker.auth_port
    assert connack_code(port, "user", "password") == 0
    assert connack_code(port, "test", "test") == 0
    assert connack_code(port, "user", "wrong") == 5


class Service:
    """``python -m Listener run ...`` in the repository root, its stderr (JSON log lines) read on a thread."""

    def __init__(self, args: List[str]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.lines: List[str] = []
        self._condition = threading.Condition()
        self.process = subprocess.Popen([sys.executable, "-m", "Listener", *args], cwd=str(ROOT), env=env,  # noqa: S603
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._condition:
                self.lines.append(line.rstrip("\n"))
                self._condition.notify_all()

    def wait_for_event(self, event: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with self._condition:
            while not any(_event(line) == event for line in self.lines):
                remaining = deadline - time.monotonic()
                assert remaining > 0 and self.process.poll() is None, f"no {event!r}:\n" + "\n".join(self.lines)
                self._condition.wait(min(remaining, 0.2))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(TIMEOUT)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def _event(line: str) -> Optional[str]:
    try:
        body = json.loads(line)
    except ValueError:
        return None
    return body.get("event") if isinstance(body, dict) else None


@pytest.fixture
def service() -> Iterator[Callable[[List[str]], Service]]:
    started: List[Service] = []

    def start(args: List[str]) -> Service:
        started.append(Service(args))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def test_the_sample_processor_runs_with_the_sample_config(mqtt_endpoint: BrokerEndpoint, unique_topic: str,
                                                          probe: Callable[..., MqttProbe],
                                                          service: Callable[[List[str]], Service]) -> None:
    credentials = (["--unset", "username", "--unset", "password"] if mqtt_endpoint.username is None else
                   ["--set", f"username={mqtt_endpoint.username}", "--set", f"password={mqtt_endpoint.password}"])
    listener = service(["run", "examples.sample_processor:process", "--config", "examples/listener.toml",
                        "--set", f"host={mqtt_endpoint.host}", "--set", f"port={mqtt_endpoint.port}", *credentials,
                        "--set", f"topic={unique_topic}/jobs", "--set", f"results_topic={unique_topic}/results",
                        "--set", f"error_topic={unique_topic}/error", "--set", f"log_topic={unique_topic}/log",
                        "--set", f"client_id=examples-{uuid.uuid4().hex[:8]}", "--set", "qos=1",
                        "--log-format", "json"])
    watcher = probe(f"{unique_topic}/#")
    listener.wait_for_event("listener_started")
    watcher.publish(f"{unique_topic}/jobs", 'job_id = "greet-1"\ntask = "greet"\nname = "examples"\n')
    watcher.publish(f"{unique_topic}/jobs", 'job_id = "sum-1"\ntask = "sum"\nnumbers = [1, 2, 3.5]\n')
    watcher.publish(f"{unique_topic}/jobs", 'job_id = "bad-1"\ntask = "fly"\n')
    results = watcher.wait_for(1, topic=f"{unique_topic}/results")
    sums = watcher.wait_for(1, topic=f"{unique_topic}/jobs/sums")
    errors = watcher.wait_for(1, topic=f"{unique_topic}/error")
    assert json.loads(results[0].payload) == {"job_id": "greet-1", "greeting": "hello, examples"}
    assert json.loads(sums[0].payload) == {"job_id": "sum-1", "total": 6.5}
    error = json.loads(errors[0].payload)
    assert (error["job_id"], error["error_type"]) == ("bad-1", "processing_error")
    assert "unknown task 'fly'" in error["error_message"]
    assert listener.stop() == 0
