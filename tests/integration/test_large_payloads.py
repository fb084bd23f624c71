"""Large payloads are parsed off the event loop (issue 9, item 3): a 1 MiB TOML document takes over 100 ms to
parse, during which pings, other jobs and the HTTP probes would otherwise all wait."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Dict, List

from Listener.pipeline.payloads import LARGE_PAYLOAD_BYTES
from tests.support.mocked_listeners import mocked_listener, published_json


def big_document(size: int) -> bytes:
    """A TOML document of about ``size`` bytes (never more): a job id and many short keys."""
    lines = ['job_id = "big-1"']
    total = len(lines[0]) + 1
    while total < size - 100:
        lines.append(f'key_{len(lines)} = "{"v" * 40}"')
        total += len(lines[-1]) + 1
    return ("\n".join(lines) + "\n").encode()


def spy_on_parser(listener: Any, record: List[Dict[str, Any]], ticks: List[int]) -> None:
    """Record, for each parse, its thread and the heartbeat count before and after."""
    parse = listener.config_parser.parse_config_from_string

    def spying(text: str) -> Dict[str, Any]:
        before = len(ticks)
        try:
            return parse(text)  # type: ignore[no-any-return]
        finally:
            record.append({"thread": threading.current_thread(), "ticks": len(ticks) - before})

    listener.config_parser.parse_config_from_string = spying


async def test_a_payload_above_64_kib_is_parsed_in_another_thread_while_the_loop_keeps_serving() -> None:
    listener = mocked_listener()
    record: List[Dict[str, Any]] = []
    ticks: List[int] = []
    spy_on_parser(listener, record, ticks)

    async def heartbeat() -> None:
        while True:
            ticks.append(1)
            await asyncio.sleep(0.001)

    beating = asyncio.create_task(heartbeat())
    try:
        payload = big_document(1024 * 1024 - 1024)
        result = await listener.process_message(payload, lambda data, job_id: {"keys": len(data)})
    finally:
        beating.cancel()
    assert result == {"keys": len(payload.splitlines())}  # the job id and every key
    assert record[0]["thread"] is not threading.main_thread()
    assert record[0]["ticks"] >= 2, "the event loop went on serving other tasks during the parse"
    assert published_json(listener, "test/results") == [result]


async def test_a_small_payload_is_parsed_on_the_loop_and_the_dotted_key_guard_still_applies() -> None:
    listener = mocked_listener()
    record: List[Dict[str, Any]] = []
    spy_on_parser(listener, record, [])
    assert await listener.process_message(b'job_id = "small-1"', lambda data, job_id: None) is None
    assert record[0]["thread"] is threading.main_thread()
    # A large payload built to exhaust the parser with a very long dotted key is still refused, in the thread.
    dotted = ("job_id = \"d-1\"\n" + ".".join(["a"] * 5000) + " = 1\n").encode()
    padding = b"#" * (LARGE_PAYLOAD_BYTES + 1) + b"\n"
    assert await listener.process_message(padding + dotted, lambda data, job_id: {"x": 1}) is None
    assert record[1]["thread"] is not threading.main_thread()
    errors = published_json(listener, "test/error")
    assert [e["error_type"] for e in errors] == ["invalid_payload"] and "dotted parts" in errors[0]["error_message"]
