"""The broker password never leaves the listener: not in logs (every logger, DEBUG, amqtt's included), not in
any MQTT payload, not in the config's repr, not in exception texts, not in job records or metrics.

A whole session runs against a real mosquitto that requires the password: connect, a job, a job whose
processor raises an exception *carrying the password*, a broker restart (reconnect), shutdown. Then every
text the session produced is searched for the password and for pieces and encodings of it.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import time
import traceback
from dataclasses import replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from unittest.mock import AsyncMock
from urllib.parse import quote

import pytest

from Listener import EventListener, EventListenerConfig
from tests.support.brokers import BrokerEndpoint, MosquittoBroker, MqttProbe, session_folder
from tests.support.job_messages import body
from tests.support.listeners import listener_config, run_until_ready

pytestmark = pytest.mark.timeout(90)

WAIT = 15.0
FAST_RECONNECT = dict(reconnect_retries=-1, reconnect_max_interval=0.5, connect_timeout=3)


# -- capturing everything ----------------------------------------------------------------------------------

class AllLogs:
    """Every record of every logger at DEBUG, formatted (with tracebacks) into one buffer.

    The root logger and every existing logger are set to DEBUG for the duration (and restored after);
    loggers that do not propagate get the handler directly.
    """

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setLevel(logging.DEBUG)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        self.loggers: List[str] = []
        self.handler.addFilter(self._remember)
        self._saved: List[Tuple[logging.Logger, int]] = []
        self._attached: List[logging.Logger] = []

    def _remember(self, record: logging.LogRecord) -> bool:
        self.loggers.append(record.name)
        return True

    def __enter__(self) -> "AllLogs":
        root = logging.getLogger()
        loggers = [root] + [obj for obj in logging.Logger.manager.loggerDict.values() if isinstance(obj, logging.Logger)]
        for log in loggers:
            self._saved.append((log, log.level))
            log.setLevel(logging.DEBUG)
            if log is not root and not log.propagate:
                log.addHandler(self.handler)
                self._attached.append(log)
        root.addHandler(self.handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger().removeHandler(self.handler)
        for log in self._attached:
            log.removeHandler(self.handler)
        for log, level in self._saved:
            log.setLevel(level)

    @property
    def text(self) -> str:
        return self.buffer.getvalue()


def exception_texts(exc: BaseException) -> List[str]:
    """str, repr and the formatted traceback of ``exc`` and of every exception chained to it."""
    texts = ["".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    seen: set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return texts


def leaked_forms(secret: str) -> List[str]:
    """The secret, its URL-encoded and hex forms, and every 12-character piece of it."""
    forms = {secret, quote(secret, safe=""), secret.encode("utf-8").hex()}
    forms |= {secret[i:i + 12] for i in range(max(1, len(secret) - 11))}
    return sorted(forms)


def assert_nowhere(secret: str, places: Dict[str, str]) -> None:
    """No form of ``secret`` in any of the labelled texts."""
    leaks = [(label, form) for label, text in places.items() for form in leaked_forms(secret) if form in text]
    assert leaks == [], f"secret leaked into: {sorted({label for label, _ in leaks})}"


@pytest.mark.unit
def test_the_leak_check_finds_what_it_looks_for() -> None:
    secret = "pw-" + os.urandom(8).hex()
    for text in (f"x {secret} y", f"password={quote(secret)}", secret.encode().hex(), f"...{secret[3:16]}..."):
        with pytest.raises(AssertionError):
            assert_nowhere(secret, {"sample": text})
    assert_nowhere(secret, {"sample": "nothing to see " + secret[:6]})


def messages_text(watcher: MqttProbe) -> str:
    return "\n".join(f"{m.topic} {m.payload!r} {m.payload.decode('utf-8', 'replace')}" for m in watcher.messages())


async def wait_for_event(watcher: MqttProbe, topic: str, predicate: Callable[[Dict[str, Any]], bool],
                         what: str) -> Dict[str, Any]:
    """Wait (bounded) for a JSON message on ``topic`` satisfying ``predicate``; return it."""
    found = await asyncio.to_thread(watcher.wait_until, lambda ms: any(predicate(body(m)) for m in ms), WAIT, topic,
                                    what)
    return next(body(m) for m in found if predicate(body(m)))


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``predicate`` without blocking the loop; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)


def leaky_processor(secret: str) -> Callable[[Dict[str, Any], str], Dict[str, Any]]:
    """Succeeds, except for jobs with ``fail = true``: those raise an exception holding the secret, as is and
    inside a URI (URL-encoded there, as a URI must carry it)."""
    def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        if data.get("fail"):
            raise RuntimeError(f"db login failed: password={secret} "
                               f"uri=mqtt://listener:{quote(secret, safe='')}@db.internal:1883")
        return {"job_id": job_id, "ok": True}
    return processor


async def start(listener: EventListener, processor: Any) -> "asyncio.Task[None]":
    return await run_until_ready(listener, processor, WAIT)


async def stop(listener: EventListener, task: "asyncio.Task[None]") -> None:
    listener.stop()
    await asyncio.wait_for(task, WAIT)


async def session_texts(listener: EventListener) -> Dict[str, str]:
    """What a user can see of the listener itself: config, job records, metrics."""
    jobs = await listener.get_all_jobs()
    return {
        "repr(config)": repr(listener.config), "str(config)": str(listener.config),
        "config.redacted_dict()": repr(listener.config.redacted_dict()),
        "jobs": repr(jobs), "job errors": "\n".join(job.error or "" for job in jobs.values()),
        "metrics": json.dumps(listener.metrics()),
    }


async def run_a_session(listener: EventListener, secret: str, watcher: MqttProbe, sender: MqttProbe,
                        prefix: str, restart: Optional[Callable[[], None]] = None) -> None:
    """One job, one failing job, optionally a broker restart and one more job; then stop."""
    task = await start(listener, leaky_processor(secret))
    sender.publish(f"{prefix}/jobs", 'job_id = "ok-1"')
    await wait_for_event(watcher, f"{prefix}/results", lambda e: e.get("job_id") == "ok-1", "result of ok-1")
    sender.publish(f"{prefix}/jobs", 'job_id = "fail-1"\nfail = true')
    error = await wait_for_event(watcher, f"{prefix}/error", lambda e: e.get("job_id") == "fail-1", "error of fail-1")
    assert error["error_type"] == "processing_error" and "RuntimeError" in error["error_message"]
    assert "***" in error["error_message"], "the secret must be masked, not the whole message dropped"
    if restart is not None:
        reconnects = listener.metrics()["reconnects"]
        await asyncio.to_thread(restart)
        await eventually(lambda: listener.metrics()["reconnects"] > reconnects and listener.is_ready,
                         "listener reconnected after the broker restart")
        await asyncio.to_thread(watcher.wait_until_connected, WAIT)
        sender.publish(f"{prefix}/jobs", 'job_id = "ok-2"\nfail = false')
        await wait_for_event(watcher, f"{prefix}/results", lambda e: e.get("job_id") == "ok-2", "result of ok-2")
    await stop(listener, task)


# -- fixtures ---------------------------------------------------------------------------------------------------

@pytest.fixture
def special_broker() -> Iterator[MosquittoBroker]:
    """A private broker whose password needs URL-encoding (``@ : / % #`` and a space)."""
    if os.getenv("MQTT_HOST") and os.getenv("MQTT_PORT"):
        pytest.skip("needs brokers the tests start (MQTT_HOST/MQTT_PORT point at an external broker)")
    folder = session_folder()
    broker = MosquittoBroker(folder / "broker", password="p@ss:w/rd %#-" + os.urandom(8).hex())
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()
        shutil.rmtree(folder, ignore_errors=True)


# -- tests -------------------------------------------------------------------------------------------------------

@pytest.mark.mqtt_integration
async def test_password_never_leaks_through_a_whole_session_with_a_reconnect(
        broker_factory: Callable[..., MosquittoBroker], unique_topic: str, capfd: pytest.CaptureFixture[str]) -> None:
    broker = broker_factory()
    endpoint = broker.auth
    secret = endpoint.password
    assert secret is not None and len(secret) >= 16, "the password must be distinctive to be searched for"
    watcher = MqttProbe(broker.plain).subscribe("#")  # anonymous listener of the same broker: sees everything
    sender = MqttProbe(broker.plain)
    try:
        with AllLogs() as logs:
            config = listener_config(endpoint, unique_topic, log_topic_level="DEBUG", **FAST_RECONNECT)
            listener = EventListener(config)
            await run_a_session(listener, secret, watcher, sender, unique_topic, restart=broker.restart)
        texts = await session_texts(listener)
    finally:
        watcher.close()
        sender.close()
    captured = capfd.readouterr()
    assert any(name.startswith("amqtt") for name in logs.loggers), "amqtt's DEBUG records were not captured"
    assert any(name.startswith("Listener") for name in logs.loggers)
    assert listener.metrics()["connection_losses"] >= 1 and listener.metrics()["reconnects"] >= 1
    assert_nowhere(secret, {"logs": logs.text, "stdout": captured.out, "stderr": captured.err,
                            "mqtt": messages_text(watcher), **texts})


@pytest.mark.mqtt_integration
async def test_credentials_in_the_uri_never_leak(mqtt_auth_endpoint: BrokerEndpoint, mqtt_username: str,
                                                 mqtt_password: str, unique_topic: str, probe: Callable[..., MqttProbe],
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    ep = mqtt_auth_endpoint
    assert len(mqtt_password) >= 16, "the session broker's password is not distinctive enough to search for"
    uri = f"mqtt://{mqtt_username}:{mqtt_password}@{ep.host}:{ep.port}"
    watcher, sender = probe("#"), probe()
    with AllLogs() as logs:
        listener = EventListener(listener_config(ep, unique_topic, username=None, password=None, uri=uri,
                                                 log_topic_level="DEBUG"))
        await run_a_session(listener, mqtt_password, watcher, sender, unique_topic)
    texts = await session_texts(listener)
    assert f"mqtt://{mqtt_username}:***@{ep.host}:{ep.port}" in texts["repr(config)"]
    captured = capfd.readouterr()
    assert_nowhere(mqtt_password, {"logs": logs.text, "stdout": captured.out, "stderr": captured.err,
                                   "mqtt": messages_text(watcher), **texts})


@pytest.mark.mqtt_integration
async def test_a_password_that_needs_url_encoding_in_the_uri_never_leaks(
        special_broker: MosquittoBroker, unique_topic: str, capfd: pytest.CaptureFixture[str]) -> None:
    secret = special_broker.password
    ep = special_broker.auth
    uri = f"mqtt://{quote(ep.username or '', safe='')}:{quote(secret, safe='')}@{ep.host}:{ep.port}"
    watcher = MqttProbe(special_broker.plain).subscribe("#")
    sender = MqttProbe(special_broker.plain)
    try:
        with AllLogs() as logs:
            listener = EventListener(listener_config(ep, unique_topic, username=None, password=None, uri=uri,
                                                     log_topic_level="DEBUG"))
            await run_a_session(listener, secret, watcher, sender, unique_topic)
        texts = await session_texts(listener)
    finally:
        watcher.close()
        sender.close()
    captured = capfd.readouterr()
    assert_nowhere(secret, {"logs": logs.text, "stdout": captured.out, "stderr": captured.err,
                            "mqtt": messages_text(watcher), **texts})


@pytest.mark.mqtt_integration
@pytest.mark.parametrize("where", ["fields", "uri"])
async def test_a_wrong_password_gives_a_connection_error_without_it(
        where: str, mqtt_auth_endpoint: BrokerEndpoint, mqtt_password: str, unique_topic: str,
        capfd: pytest.CaptureFixture[str]) -> None:
    ep = mqtt_auth_endpoint
    wrong = "wrong-pw-" + os.urandom(8).hex()
    if where == "fields":
        config = listener_config(replace(ep, password=wrong), unique_topic, reconnect_retries=2)
    else:
        config = listener_config(ep, unique_topic, username=None, password=None, reconnect_retries=2,
                                 uri=f"mqtt://{ep.username}:{wrong}@{ep.host}:{ep.port}")
    listener = EventListener(config)
    with AllLogs() as logs:
        with pytest.raises(ConnectionError) as info:
            await asyncio.wait_for(listener.run(leaky_processor(wrong)), WAIT)
    message = str(info.value)
    assert f"{ep.host}:{ep.port}" in message and "refused" in message, message
    captured = capfd.readouterr()
    places = {"logs": logs.text, "stdout": captured.out, "stderr": captured.err, "repr(config)": repr(config),
              **{f"exception {i}": text for i, text in enumerate(exception_texts(info.value))}}
    assert_nowhere(wrong, places)
    assert_nowhere(mqtt_password, places)


@pytest.mark.unit
def test_config_repr_and_validation_errors_never_show_the_password() -> None:
    secret = "cfg-secret-" + os.urandom(8).hex()
    configs = [EventListenerConfig(password=secret),
               EventListenerConfig(username="u", password=None, uri=f"mqtt://u:{secret}@broker.example:1883"),
               EventListenerConfig(uri=f"mqtts://u:{quote(secret)}@broker.example:8883", cafile=None)]
    texts: Dict[str, str] = {}
    for i, config in enumerate(configs):
        texts.update({f"repr {i}": repr(config), f"str {i}": str(config), f"dict {i}": repr(config.redacted_dict())})
    for i, bad in enumerate([dict(password=secret, port=0), dict(password=secret, uri=f"ftp://u:{secret}@h:1"),
                             dict(password=secret, uri=f"mqtt://u:{secret}@h:99999"), dict(password=[secret])]):
        with pytest.raises((ValueError, TypeError)) as info:
            EventListenerConfig(**bad)  # type: ignore[arg-type]
        texts.update({f"error {i}.{j}": text for j, text in enumerate(exception_texts(info.value))})
    assert_nowhere(secret, texts)


@pytest.mark.integration
async def test_a_password_with_uri_delimiters_written_raw_inside_a_uri_is_fully_masked() -> None:
    secret = "p@ss:w/rd %#-" + os.urandom(8).hex()
    listener = EventListener(EventListenerConfig(host="broker.example", username="listener", password=secret,
                                                 topic="jobs", error_topic="jobs/error", log_topic="jobs/log"))
    listener.client = AsyncMock()

    def processor(data: Dict[str, Any], job_id: str) -> None:
        raise RuntimeError(f"cannot reach mqtt://listener:{secret}@db.internal:1883")

    with AllLogs() as logs:
        await listener.process_message({"job_id": "raw-uri"}, processor)
    payloads = "\n".join(call.args[1].decode("utf-8") for call in listener.client.publish.call_args_list)
    jobs = await listener.get_all_jobs()
    assert jobs["raw-uri"].error and "***" in jobs["raw-uri"].error
    assert_nowhere(secret, {"logs": logs.text, "mqtt": payloads, "job error": jobs["raw-uri"].error or ""})
