"""Property tests: whatever result topic a processor returns (issue 9, item 1), the listener either publishes
the result there or fails the job with an error event. It never crashes and never publishes to a topic a broker
would disconnect for. The rule is checked against an independent model of SPEC §10, not against the code's own."""

from __future__ import annotations

from typing import Any, Dict, List

from hypothesis import given
from hypothesis import strategies as st

from Listener import JobStatus, ReturnType
from tests.support.hostile_inputs import (
    ERROR_TOPIC, RESULTS_TOPIC, TOPIC, check_error_shape, check_every_publication_is_strict_json, error_events,
    hostile_listener,
)
from tests.support.mocked_listeners import publications


def publishable(topic: str) -> bool:
    """SPEC §10, written out independently: what a broker accepts as a PUBLISH topic."""
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form
        return False
    if not topic or size > 65535 or topic.startswith("$"):
        return False
    for char in topic:
        code = ord(char)
        if char in "+#" or code <= 0x1F or 0x7F <= code <= 0x9F:
            return False
        if 0xFDD0 <= code <= 0xFDEF or code % 0x10000 in (0xFFFE, 0xFFFF):
            return False
    return True


#: Characters brokers choke on, mixed into ordinary topic text so both outcomes are common.
awkward = st.sampled_from(["\x00", "\x01", "\x1f", "\x7f", "\x85", "\x9f", "\ufdd0", "\ufdef", "\ufffe", "\uffff",
                           "\U0001fffe", "\U0010ffff", "\ud800", "\udfff", "+", "#", "$", "/", " ", "é", "\u00a0"])
topics = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(st.text("abc/", max_size=4), awkward), max_size=8).map("".join),
    st.sampled_from(["", "$SYS/x", "a/+/b", "a/#", "results/ok", "é/ü/ok"]),
)


@given(topic=topics, qos=st.sampled_from([0, 1, 2]), via_return_type=st.booleans())
async def test_a_returned_result_topic_is_published_or_fails_its_job_with_an_error_event(
        topic: str, qos: int, via_return_type: bool) -> None:
    listener = hostile_listener(results_topic=RESULTS_TOPIC)

    async def processor(data: Dict[str, Any], job_id: str) -> Any:
        return ReturnType(data={"job_id": job_id}, topic=topic, qos=qos) if via_return_type else {"job_id": job_id}

    await listener._process_message(b'job_id = "p-1"', processor, topic=TOPIC)

    check_every_publication_is_strict_json(listener)
    sent: List[str] = [t for t, _, _, _ in publications(listener)]
    assert all(publishable(t) for t in sent), sent
    target = (topic or RESULTS_TOPIC) if via_return_type else RESULTS_TOPIC
    job = await listener.get_job_status("p-1")
    assert job is not None
    errors = error_events(listener)
    if publishable(target):
        assert job.status is JobStatus.COMPLETED
        assert sent.count(target) == 1 and errors == []
    else:
        assert job.status is JobStatus.FAILED
        assert [e["error_type"] for e in errors] == ["processing_error"], errors
        check_error_shape(errors[0])
        assert errors[0]["job_id"] == "p-1" and "Result topic" in errors[0]["error_message"]
        assert [t for t in sent if t != ERROR_TOPIC and not t.startswith("out/")] == []


@given(topic=topics)
async def test_send_message_refuses_every_topic_a_broker_would_disconnect_for(topic: str) -> None:
    listener = hostile_listener()
    try:
        await listener._send_message(topic, {"x": 1})
    except ValueError as exc:
        assert not publishable(topic) and "Topic" in str(exc)
    else:
        assert publishable(topic) and [t for t, _, _, _ in publications(listener)] == [topic]
