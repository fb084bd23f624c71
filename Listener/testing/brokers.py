"""Brokers for tests: an external one (MQTT_HOST/MQTT_PORT), a ``mosquitto`` process, or amqtt's embedded broker.

Used by :func:`Listener.testing.running_broker` and the pytest plugin's ``mqtt_broker`` fixture. Every
broker started here listens on a free loopback port, accepts anonymous clients, and is stopped (the
process killed, its folder removed) when the context manager exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess  # nosec B404
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from ..mqtt.amqtt_boundary import EmbeddedBroker

__all__ = ["BROKER_KINDS", "BrokerAddress", "find_mosquitto", "running_broker"]

#: What ``LISTENER_TEST_BROKER`` (or ``running_broker(kind=...)``) may ask for; "auto" picks the first that works.
BROKER_KINDS = ("auto", "external", "mosquitto", "embedded")
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class BrokerAddress:
    """Where a test broker listens: ``host``, ``port``, and ``kind`` ("external", "mosquitto" or "embedded")."""

    host: str
    port: int
    kind: str


def find_mosquitto() -> Optional[str]:
    """The ``mosquitto`` binary on PATH or in the sbin folders Debian installs it into, else None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(folder) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_connect(port: int) -> bool:
    """True when something on 127.0.0.1:port answers an MQTT CONNECT with a CONNACK."""
    client_id = b"readiness-probe"
    body = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(client_id).to_bytes(2, "big") + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"\x10" + bytes([len(body)]) + body)
            return sock.recv(4)[:1] == b"\x20"
    except OSError:
        return False


def _wait_until_serving(port: int, alive: Any, describe: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers_connect(port):
        if not alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the test broker did not start on 127.0.0.1:{port}: {describe()}")
        time.sleep(0.02)


@contextlib.contextmanager
def _mosquitto(binary: str) -> Iterator[BrokerAddress]:
    folder = Path(tempfile.mkdtemp(prefix="listener-broker-"))
    try:
        folder.chmod(0o755)  # mosquitto started as root drops to its own user and must read its config
        config = folder / "mosquitto.conf"
        log = folder / "mosquitto.log"
        for _attempt in range(3):  # another process may take the free port before mosquitto binds it
            port = _free_port()
            config.write_text("\n".join([
                "persistence false", "set_tcp_nodelay true", "max_queued_messages 0",
                f"listener {port} 127.0.0.1", "allow_anonymous true", ""]), encoding="ascii")
            config.chmod(0o644)
            with open(log, "ab") as stderr:
                command = [binary, "-c", str(config)]
                process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)  # nosec B603
            try:
                _wait_until_serving(port, lambda: process.poll() is None,
                                    lambda: log.read_text(errors="replace")[-2000:] or "(no log)")
            except RuntimeError:
                _kill(process)
                if _attempt == 2:
                    raise
                continue
            try:
                yield BrokerAddress("127.0.0.1", port, "mosquitto")
            finally:
                _kill(process)
            return
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _kill(process: "subprocess.Popen[bytes]") -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def _embedded() -> Iterator[BrokerAddress]:
    """amqtt's broker on its own event loop in a thread, so that it serves tests on any loop."""
    port = _free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []
    holder: list[Any] = []

    async def start() -> None:
        broker = EmbeddedBroker("127.0.0.1", port)
        await broker.start()
        holder.append(broker)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # reported to the thread that waits for the start
            failure.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name=f"embedded-broker-{port}", daemon=True)
    thread.start()
    try:
        if not started.wait(START_TIMEOUT) or failure:
            raise RuntimeError(f"amqtt's embedded broker did not start on 127.0.0.1:{port}: "
                               f"{failure[0] if failure else 'timed out'}")
        _wait_until_serving(port, thread.is_alive, lambda: "the broker thread ended")
        yield BrokerAddress("127.0.0.1", port, "embedded")
    finally:
        if holder:
            stopping = asyncio.run_coroutine_threadsafe(holder[0].shutdown(), loop)
            with contextlib.suppress(Exception):
                stopping.result(START_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT)
        if not thread.is_alive():
            loop.close()


@contextlib.contextmanager
def running_broker(kind: Optional[str] = None) -> Iterator[BrokerAddress]:
    """A broker for tests, for the duration of the ``with`` block.

    ``kind`` (default: the ``LISTENER_TEST_BROKER`` environment variable, else "auto"):
    "external" uses ``MQTT_HOST``/``MQTT_PORT`` (e.g. a docker-compose container); "mosquitto" starts the
    ``mosquitto`` binary; "embedded" starts amqtt's broker in a thread; "auto" is "external" when
    ``MQTT_HOST`` and ``MQTT_PORT`` are set, else "mosquitto" when it is installed, else "embedded".

    Raises:
        ValueError: an unknown ``kind``, or "external" without ``MQTT_HOST``/``MQTT_PORT``.
        RuntimeError: the broker could not be started (or "mosquitto" asked for and not installed).
    """
    kind = (kind or os.environ.get("LISTENER_TEST_BROKER") or "auto").strip().lower()
    if kind not in BROKER_KINDS:
        raise ValueError(f"unknown test broker kind {kind!r}; expected one of {', '.join(BROKER_KINDS)}")
    host, port = os.environ.get("MQTT_HOST"), os.environ.get("MQTT_PORT")
    if kind == "external" or (kind == "auto" and host and port):
        if not (host and port):
            raise ValueError("the external test broker needs MQTT_HOST and MQTT_PORT")
        yield BrokerAddress(host, int(port), "external")
        return
    binary = find_mosquitto() if kind in ("auto", "mosquitto") else None
    if kind == "mosquitto" and binary is None:
        raise RuntimeError("mosquitto is not installed")
    with (_mosquitto(binary) if binary else _embedded()) as address:
        yield address
