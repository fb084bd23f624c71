"""A self-contained tour of the listener: no broker to install.

Starts amqtt's embedded broker on a free loopback port (or uses MQTT_HOST/MQTT_PORT when set),
runs an EventListener with a sample processor, publishes a handful of TOML jobs - one valid, one
returning a plain dict, one invalid payload, one duplicate, one that makes the processor raise -
prints every result, error and log event as it arrives (explaining the invalid payload's
``"job_id": null``), then the final job table (the duplicate keeps its first result) and what to try
next. Exits 0 when everything arrived as expected, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from typing import Any, Dict, List, Optional

from amqtt.client import MQTTClient

from Listener import EventListener, EventListenerConfig, ReturnType, create_return_type
from Listener.mqtt.amqtt_boundary import EmbeddedBroker

TIMEOUT = 20.0
JOBS = [
    ("a job with a ReturnType result", 'job_id = "demo-001"\ntask_type = "greet"\nname = "world"\n'),
    ("a job returning a plain dict", 'job_id = "demo-002"\ntask_type = "sum"\nnumbers = [1, 2, 3.5]\n'),
    ("an invalid TOML payload", 'job_id = "demo-003"\nthis is not toml ]]\n'),
    ("a duplicate of demo-001", 'job_id = "demo-001"\ntask_type = "greet"\nname = "again"\n'),
    ("a job that makes the processor raise", 'job_id = "demo-004"\ntask_type = "explode"\n'),
    ("a final job, to know the others are done", 'job_id = "demo-005"\ntask_type = "greet"\nname = "done"\n'),
]
# What must arrive: 3 results (demo-001, -002, -005), 2 errors (invalid payload, processor failure).
EXPECTED_RESULTS = 3
EXPECTED_ERRORS = 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def processor(data: Dict[str, Any], job_id: str) -> Optional[Any]:
    """The sample processor: greets, sums, or raises."""
    task = data.get("task_type")
    if task == "greet":
        return create_return_type({"job_id": job_id, "greeting": f"hello, {data.get('name')}"}, "demo/results/greetings")
    if task == "sum":
        return {"job_id": job_id, "total": sum(data.get("numbers", []))}
    raise ValueError(f"cannot do task {task!r}")


async def collect(client: MQTTClient, seen: Dict[str, List[Any]], done: asyncio.Event) -> None:
    while True:
        message = await client.deliver_message()
        if message is None:
            return
        body = json.loads(bytes(message.data).decode("utf-8"))
        kind = "error" if message.topic == "demo/error" else "log" if message.topic == "demo/log" else "result"
        seen[kind].append(body)
        print(f"  <- {kind:6} on {message.topic}: {json.dumps(body)}")
        if kind == "error" and body.get("job_id") is None:
            print('     "job_id": null - the payload is not valid TOML, so no job id could be read from it '
                  "and no job was created")
        if len(seen["result"]) >= EXPECTED_RESULTS and len(seen["error"]) >= EXPECTED_ERRORS:
            done.set()


async def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="  [log] %(levelname)s %(name)s: %(message)s")
    broker: Optional[EmbeddedBroker] = None
    host = os.environ.get("MQTT_HOST")
    port = int(os.environ.get("MQTT_PORT", "1883"))
    if not host:
        host, port = "127.0.0.1", free_port()
        broker = EmbeddedBroker(host, port)
        await broker.start()
        print(f"Embedded amqtt broker listening on {host}:{port}")
    else:
        print(f"Using the broker at {host}:{port} (MQTT_HOST/MQTT_PORT)")

    config = EventListenerConfig(
        host=host, port=port, client_id="demo-listener", topic="demo/jobs", qos=1,
        username=os.environ.get("MQTT_USERNAME", "test"), password=os.environ.get("MQTT_PASSWORD", "test"),
        error_topic="demo/error", log_topic="demo/log", results_topic="demo/results",
        duplicate_action="skip",
    )
    print("Listener config (the options that differ from the defaults; password hidden):")
    print(config_block(config))
    listener = EventListener(config)

    watcher = MQTTClient("demo-watcher", {"auto_reconnect": False, "plugins": {}})
    await watcher.connect(f"mqtt://{host}:{port}")
    await watcher.subscribe([("demo/results/#", 1), ("demo/error", 1), ("demo/log", 1)])
    seen: Dict[str, List[Any]] = {"result": [], "error": [], "log": []}
    done = asyncio.Event()
    collector = asyncio.create_task(collect(watcher, seen, done))

    run = asyncio.create_task(listener.run(processor))
    publisher = MQTTClient("demo-publisher", {"auto_reconnect": False, "plugins": {}})
    await publisher.connect(f"mqtt://{host}:{port}")
    ready = asyncio.create_task(listener.wait_until_ready(TIMEOUT))
    await asyncio.wait({ready, run}, return_when=asyncio.FIRST_COMPLETED)
    if run.done():
        run.result()  # raises the ConnectionError that ended it
    for label, payload in JOBS:
        print(f"-> publishing {label}")
        await publisher.publish("demo/jobs", payload.encode("utf-8"), qos=1)

    ok = True
    try:
        await asyncio.wait_for(done.wait(), TIMEOUT)
    except asyncio.TimeoutError:
        ok = False
        print(f"!! timed out after {TIMEOUT} s waiting for results and errors")

    listener.stop()
    await asyncio.wait_for(run, TIMEOUT)
    print("\nFinal job table:")
    print(f"  {'job id':10} {'status':10} {'result / error'}")
    for job_id, job in (await listener.get_all_jobs()).items():
        outcome = job.error if job.error else (job.result.data if isinstance(job.result, ReturnType) else job.result)
        print(f"  {job_id:10} {job.status.value:10} {outcome}")

    collector.cancel()
    await publisher.disconnect()
    await watcher.disconnect()
    if broker is not None:
        await broker.shutdown()
    duplicates = await listener.get_duplicate_jobs()
    first = duplicates.get("demo-001")
    kept = first is not None and first.result is not None and first.completed_at is not None
    print(f"\ndemo-001 shows {'duplicate' if first else 'no duplicate'}: its second message was not processed "
          f"(duplicate_action = \"skip\", logged at INFO only),\nand the job keeps the result and completion time of "
          f"its first run{'' if kept else ' - NOT kept here, which is a fault'}.")
    ok = ok and kept and len(seen["result"]) == EXPECTED_RESULTS
    print("\nDemo finished:", "OK" if ok else "FAILED")
    print(WHAT_NEXT)
    return 0 if ok else 1


def config_block(config: EventListenerConfig) -> str:
    """The settings that differ from the defaults, one ``key = value`` line each (password masked)."""
    defaults = EventListenerConfig().redacted_dict()
    lines = [f"  {key:24} = {json.dumps(value)}" for key, value in config.redacted_dict().items()
             if value != defaults.get(key)]
    return "\n".join(lines)


WHAT_NEXT = """
What to try next:
  .venv/bin/mqtt-listener run examples.sample_processor:process --config examples/listener.toml --embedded-broker \\
      --unset username --unset password       # a listener as a service, with its own broker on localhost:1883
  .venv/bin/mqtt-listener publish --topic test --unset username --unset password --data 'job_id = "try-1"'
                                              # in a second terminal: one job; the result goes to test/results
  .venv/bin/mqtt-listener check-config examples/listener.toml   # every option, commented, in examples/listener.toml
"""


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
