"""A sample processor for ``mqtt-listener run``: copy it as the start of your own.

From the repository root, with a broker on localhost:1883 (``docker compose up -d``)::

    mqtt-listener run examples.sample_processor:process --config examples/listener.toml
    mqtt-listener publish --topic test --data 'job_id = "greet-1"
    task = "greet"
    name = "world"'

The result arrives on ``test/results`` as ``{"job_id":"greet-1","greeting":"hello, world"}``.

A processor gets the message as a dict (the parsed TOML, plus ``_topic``, the topic it came on) and the
job id. It returns a dict (published to ``results_topic``), a ``ReturnType`` (published to its own topic),
or None (nothing published). An exception fails only that job: the listener publishes an error event
with the exception's message on ``error_topic`` and goes on with the next message.

Plain functions run on a worker thread, so a slow one never blocks the MQTT connection; an
``async def`` processor is awaited on the event loop instead.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from Listener import create_return_type


def process(data: Dict[str, Any], job_id: str) -> Optional[Any]:
    """Do the job the message's ``task`` names: ``greet``, ``sum`` or ``ignore``."""
    task = data.get("task", "greet")
    if task == "greet":
        return {"job_id": job_id, "greeting": f"hello, {data.get('name', 'world')}"}
    if task == "sum":
        numbers = data.get("numbers", [])
        if not isinstance(numbers, list) or not all(isinstance(n, (int, float)) for n in numbers):
            raise ValueError("sum needs numbers = [1, 2, ...]")
        # A ReturnType chooses its own topic: a subtopic of where the job came from.
        topic = f"{data['_topic']}/sums" if "_topic" in data else ""
        return create_return_type({"job_id": job_id, "total": sum(numbers)}, topic)
    if task == "ignore":
        return None  # the job completes, nothing is published
    raise ValueError(f"unknown task {task!r} (try greet, sum or ignore)")
