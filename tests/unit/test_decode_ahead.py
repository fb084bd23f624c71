"""Unit tests for Pipeline.decode_ahead: payloads of queued messages decoded together, each used at its turn."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from Listener.jobs.records import JobStatus
from tests.support.mocked_listeners import mocked_listener, publications

pytestmark = pytest.mark.unit


def _counting_parser(listener: Any) -> List[str]:
    """Every text the listener's parser parses from now on."""
    parsed: List[str] = []
    parser = listener._pipeline._parser
    parse = parser.parse_config_from_string

    def counted(text: str) -> Dict[str, Any]:
        parsed.append(text)
        return parse(text)

    parser.parse_config_from_string = counted
    return parsed


async def test_payloads_decoded_ahead_are_parsed_once_and_used_each_at_its_turn() -> None:
    listener = mocked_listener(log_topic="")
    pipeline = listener._pipeline
    parsed = _counting_parser(listener)
    payloads = [bytearray(b'job_id = "a"\nn = 1'), bytearray(b'job_id = "b"\nn = 2')]
    pipeline.decode_ahead(payloads)
    assert len(parsed) == 2 and all(pipeline.decoded_ahead(payload) for payload in payloads)
    assert listener.jobs == {}  # decoded only: nothing admitted, nothing published
    seen: List[Dict[str, Any]] = []

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        seen.append(dict(data))
        return {"done": job_id}

    for payload in payloads:
        await pipeline.process(payload, processor, "test/topic", pipelined=True)
    assert len(parsed) == 2
    assert seen == [{"job_id": "a", "n": 1, "_topic": "test/topic"}, {"job_id": "b", "n": 2, "_topic": "test/topic"}]
    assert all(listener.jobs[job_id].status is JobStatus.COMPLETED for job_id in ("a", "b"))
    assert not any(pipeline.decoded_ahead(payload) for payload in payloads)


async def test_a_payload_that_cannot_be_decoded_ahead_is_reported_at_its_turn_and_parsed_once() -> None:
    listener = mocked_listener(log_topic="")
    pipeline = listener._pipeline
    parsed = _counting_parser(listener)
    payloads = [bytearray(b'job_id = "a"'), bytearray(b"not toml ="), bytearray(b'job_id = "c"')]
    pipeline.decode_ahead(payloads)
    assert publications(listener) == [] and listener.metrics()["messages_rejected"] == 0

    async def processor(data: Dict[str, Any], job_id: str) -> Dict[str, Any]:
        return {"done": job_id}

    for payload in payloads:
        await pipeline.process(payload, processor, "test/topic", pipelined=True)
    topics = [topic for topic, *_ in publications(listener)]
    assert topics == [listener.config.results_topic, listener.config.error_topic, listener.config.results_topic]
    assert listener.metrics()["messages_rejected"] == 1
    assert len(parsed) == 3  # the rejected one too: not parsed again at its turn
    assert "Invalid TOML syntax" in publications(listener)[1][1].decode()


async def test_only_the_very_payload_decoded_ahead_is_taken_and_a_new_run_forgets_the_last() -> None:
    listener = mocked_listener(log_topic="")
    pipeline = listener._pipeline
    parsed = _counting_parser(listener)
    first = bytearray(b'job_id = "x"')
    pipeline.decode_ahead([first])
    await pipeline.process(bytearray(first), None, "test/topic", pipelined=True)  # equal, but another message
    assert len(parsed) == 2 and pipeline.decoded_ahead(first)
    pipeline.decode_ahead([bytearray(b'job_id = "y"')])
    assert not pipeline.decoded_ahead(first)
