"""Connecting for real: credentials, TLS (cafile, capath, cadata, client certificates), refusals, the will."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from Listener import EventListener, EventListenerConfig
from Listener.mqtt.client import (CLOSED_DURING_CONNECT, AmqttClient, BrokerRefusedConnection, build_client_config,
                                  open_connection)
from tests.support.brokers import BrokerEndpoint, MosquittoBroker, MqttProbe, TlsMaterial, free_port
from tests.support.listeners import listener_config, run_until_ready


ROOT = Path(__file__).resolve().parents[2]


async def roundtrip(start_listener: Callable[..., Any], probe: Any, unique_topic: str, endpoint: BrokerEndpoint,
                    **overrides: Any) -> Dict[str, Any]:
    """Start a listener on ``endpoint``, send it one job through the plain listener, return the result."""
    await start_listener(lambda data, job_id: {"job_id": job_id, "ok": True}, endpoint=endpoint, **overrides)
    watcher = probe(f"{unique_topic}/results")
    probe().publish(f"{unique_topic}/jobs", 'job_id = "conn-1"')
    [message] = await asyncio.to_thread(watcher.wait_for, 1, 10.0, f"{unique_topic}/results")
    return json.loads(message.payload)  # type: ignore[no-any-return]


async def test_password_listener_accepts_the_right_credentials(start_listener: Callable[..., Any], probe: Any,
                                                               unique_topic: str, mqtt_auth_endpoint: BrokerEndpoint,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert await roundtrip(start_listener, probe, unique_topic, mqtt_auth_endpoint) == {"job_id": "conn-1", "ok": True}
    assert mqtt_auth_endpoint.password and mqtt_auth_endpoint.password not in caplog.text


async def test_credentials_in_an_explicit_uri_win(start_listener: Callable[..., Any], probe: Any, unique_topic: str,
                                                  mqtt_auth_endpoint: BrokerEndpoint) -> None:
    ep = mqtt_auth_endpoint
    uri = f"mqtt://{ep.username}:{ep.password}@{ep.host}:{ep.port}"
    result = await roundtrip(start_listener, probe, unique_topic, ep, username="wrong", password="wrong", uri=uri)
    assert result["ok"] is True


async def test_wrong_password_is_refused_with_a_clean_connection_error(mqtt_auth_endpoint: BrokerEndpoint,
                                                                       unique_topic: str,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-password-" + os.urandom(4).hex()
    listener = EventListener(listener_config(replace(mqtt_auth_endpoint, password=wrong), unique_topic,
                                             reconnect_retries=3))
    started = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        await asyncio.wait_for(listener.run(lambda d, j: None), 20)
    assert time.monotonic() - started < 5, "a refusal must not be retried"
    message = str(info.value)
    assert f"{mqtt_auth_endpoint.host}:{mqtt_auth_endpoint.port}" in message
    assert "not authorised" in message or "bad user name or password" in message
    assert wrong not in message and wrong not in caplog.text
    assert not listener.is_running


async def test_anonymous_client_refused_by_password_listener(mqtt_auth_endpoint: BrokerEndpoint,
                                                             unique_topic: str) -> None:
    listener = EventListener(listener_config(replace(mqtt_auth_endpoint, username=None, password=None), unique_topic))
    with pytest.raises(ConnectionError, match="CONNACK return code 5"):
        await asyncio.wait_for(listener.run(), 20)


# -- an empty username, and a connection closed during CONNECT (issue 21, item 5) -------------------------

SECRET = "pw-closed-during-connect-5e1"


def empty_username_file(tmp_path: Path, endpoint: BrokerEndpoint, prefix: str) -> Path:
    """A configuration file saying "anonymous" the only way a file can: ``username = ""`` (the password is
    left at the manual's default, "test")."""
    path = tmp_path / "listener.toml"
    path.write_text(f'host = "{endpoint.host}"\nport = {endpoint.port}\nusername = ""\ntopic = "{prefix}/jobs"\n'
                    f'results_topic = "{prefix}/results"\nerror_topic = "{prefix}/error"\nlog_topic = "{prefix}/log"\n'
                    "reconnect_retries = 0\nconnect_timeout = 5\n", encoding="utf-8")
    return path


async def test_an_empty_username_connects_anonymously_and_sends_no_password(
        broker_factory: Callable[..., MosquittoBroker], tmp_path: Path, unique_topic: str) -> None:
    broker = broker_factory()
    config = EventListenerConfig.from_file(empty_username_file(tmp_path, broker.plain, unique_topic))
    assert (config.username, config.password) == ("", "test")
    watcher = MqttProbe(broker.plain).subscribe(f"{unique_topic}/results")
    sender = MqttProbe(broker.plain)
    listener = EventListener(config)
    try:
        task = await run_until_ready(listener, lambda data, job_id: {"job_id": job_id, "anonymous": True})
        try:
            sender.publish(f"{unique_topic}/jobs", 'job_id = "anon-1"')
            [message] = await asyncio.to_thread(watcher.wait_for, 1, 10.0, f"{unique_topic}/results")
            assert json.loads(message.payload) == {"job_id": "anon-1", "anonymous": True}
        finally:
            listener.stop()
            await asyncio.wait_for(task, 10)
    finally:
        watcher.close()
        sender.close()
    # The password listener refuses the same client with a CONNACK (not authorised): no password was sent.
    refused = EventListener(EventListenerConfig.from_file(empty_username_file(tmp_path, broker.auth, unique_topic)))
    with pytest.raises(BrokerRefusedConnection, match="CONNACK return code 5"):
        await asyncio.wait_for(refused.run(), 20)
    assert "password without username" not in broker.log_tail(200)


async def test_a_password_without_a_username_is_closed_during_connect_and_said_so_without_the_password(
        broker_factory: Callable[..., MosquittoBroker]) -> None:
    # The configuration refuses it, so the CONNECT is made with an amqtt client built directly.
    broker = broker_factory()
    config = EventListenerConfig(host="127.0.0.1", port=broker.plain_port, username=None, password=None)
    client = AmqttClient("no-username", build_client_config(config), username=None, password=SECRET)
    with pytest.raises(ConnectionError) as info:
        await open_connection(config, client, 10.0)
    assert str(info.value) == f"Cannot connect to MQTT broker at 127.0.0.1:{broker.plain_port}: {CLOSED_DURING_CONNECT}"
    assert not isinstance(info.value, BrokerRefusedConnection)
    assert "password without username" in broker.log_tail(200)


async def test_a_connection_closed_during_connect_is_reported_once_with_its_likely_causes(
        mqtt_tls_endpoint: BrokerEndpoint, unique_topic: str, caplog: pytest.LogCaptureFixture) -> None:
    # A plain client on a TLS listener: Mosquitto reads the CONNECT as a TLS handshake and closes the connection.
    caplog.set_level(logging.DEBUG)
    plain = BrokerEndpoint("127.0.0.1", mqtt_tls_endpoint.port, "svc", SECRET)
    listener = EventListener(listener_config(plain, unique_topic, reconnect_retries=2, reconnect_max_interval=0.05))
    with pytest.raises(ConnectionError) as info:
        await asyncio.wait_for(listener.run(), 30)
    assert str(info.value) == (f"Cannot connect to MQTT broker at 127.0.0.1:{plain.port}: {CLOSED_DURING_CONNECT} "
                               "(gave up after 3 attempts)")
    shown = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    [once] = [text for text in shown if "during CONNECT" in text] or [shown]
    assert once.startswith(f"Connecting failed (Cannot connect to MQTT broker at 127.0.0.1:{plain.port}: "
                           f"{CLOSED_DURING_CONNECT}); retry 1 in ")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("amqtt")], shown
    assert SECRET not in caplog.text and SECRET not in str(info.value)


async def test_unreachable_port_raises_connection_error_after_retries(unique_topic: str) -> None:
    endpoint = BrokerEndpoint("127.0.0.1", free_port())
    listener = EventListener(listener_config(endpoint, unique_topic, reconnect_retries=1, reconnect_max_interval=0.1))
    with pytest.raises(ConnectionError) as info:
        await asyncio.wait_for(listener.run(), 20)
    assert f"127.0.0.1:{endpoint.port}" in str(info.value) and "gave up after 2 attempts" in str(info.value)


async def test_server_that_never_answers_connect_times_out(unique_topic: str) -> None:
    """A TCP server that accepts but never sends CONNACK: amqtt alone would hang forever."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        listener = EventListener(listener_config(BrokerEndpoint("127.0.0.1", port), unique_topic, connect_timeout=0.5))
        with pytest.raises(ConnectionError, match="timed out"):
            await asyncio.wait_for(listener.run(), 20)


async def test_stop_while_a_silent_server_holds_the_connect_ends_run_and_closes_the_socket(unique_topic: str) -> None:
    accepted = asyncio.Event()
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # returns when the listener closes its socket
        closed.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        listener = EventListener(listener_config(BrokerEndpoint("127.0.0.1", port), unique_topic, connect_timeout=30))
        run = asyncio.create_task(listener.run())
        await asyncio.wait_for(accepted.wait(), 5)
        listener.stop()
        await asyncio.wait_for(run, 5)
        await asyncio.wait_for(closed.wait(), 5)


@pytest.mark.parametrize("tls_option", ["cafile", "capath", "cadata"])
async def test_tls_with_the_right_ca(start_listener: Callable[..., Any], probe: Any, unique_topic: str,
                                     mqtt_tls_endpoint: BrokerEndpoint, tls_material: TlsMaterial,
                                     tls_option: str) -> None:
    options = {"cafile": {"cafile": tls_material.ca_cert}, "capath": {"cafile": None, "capath": tls_material.capath_dir},
               "cadata": {"cafile": None, "cadata": tls_material.ca_pem()}}[tls_option]
    result = await roundtrip(start_listener, probe, unique_topic, mqtt_tls_endpoint, **options)
    assert result["ok"] is True


async def test_tls_with_a_client_certificate(start_listener: Callable[..., Any], probe: Any, unique_topic: str,
                                             mqtt_tls_endpoint: BrokerEndpoint, tls_material: TlsMaterial) -> None:
    result = await roundtrip(start_listener, probe, unique_topic, mqtt_tls_endpoint,
                             certfile=tls_material.client_cert, keyfile=tls_material.client_key)
    assert result["ok"] is True


async def test_tls_with_the_wrong_ca_is_refused(mqtt_tls_endpoint: BrokerEndpoint, tls_material: TlsMaterial,
                                                unique_topic: str) -> None:
    listener = EventListener(listener_config(mqtt_tls_endpoint, unique_topic, cafile=tls_material.other_ca_cert))
    with pytest.raises(ConnectionError) as info:
        await asyncio.wait_for(listener.run(), 20)
    assert f"localhost:{mqtt_tls_endpoint.port}" in str(info.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value) or "certificate verify failed" in str(info.value)


async def test_will_message_arrives_when_the_listener_process_is_killed(probe: Any, unique_topic: str,
                                                                        mqtt_endpoint: BrokerEndpoint) -> None:
    watcher = probe(f"{unique_topic}/status", f"{unique_topic}/results")
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "tests.support.listener_program", mqtt_endpoint.host, str(mqtt_endpoint.port), unique_topic],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 20)  # type: ignore[union-attr]
        assert line.strip() == "READY", process.stderr.read() if process.poll() is not None else line  # type: ignore
        probe().publish(f"{unique_topic}/jobs", 'job_id = "before-kill"')
        await asyncio.to_thread(watcher.wait_for, 1, 10.0, f"{unique_topic}/results")
        assert watcher.messages(f"{unique_topic}/status") == []
        process.send_signal(signal.SIGKILL)
        [will] = await asyncio.to_thread(watcher.wait_for, 1, 20.0, f"{unique_topic}/status")
        assert will.payload == b"listener_offline"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
