"""Listener.pipeline.own_messages: what the listener published recently, so that its own echo is not taken for a job."""

from __future__ import annotations

from Listener.pipeline.own_messages import OwnMessages, RecentPublications
from Listener.ops.metrics import ListenerMetrics


def test_publications_the_subscription_cannot_bring_back_are_not_remembered() -> None:
    metrics = ListenerMetrics()
    own = OwnMessages(frozenset({"jobs/results"}), ("jobs/+",), metrics)
    own.remember("elsewhere/x", b'{"n": 1}')  # not covered by the subscription: nothing to remember
    own.remember("jobs/results", b"{}")  # an own topic: ignored whatever it carries
    own.remember("jobs/in", b'{"n": 2}')  # covered: remembered
    assert len(own) == 1
    assert own.is_own(b'{"n": 2}', "jobs/in") and not own.is_own(b'{"n": 3}', "jobs/in")
    assert metrics.own_echoes_ignored == 1


def test_recent_publications_expire_and_stay_bounded() -> None:
    now = [0.0]
    recent = RecentPublications(limit=3, ttl=10.0, clock=lambda: now[0])
    recent.remember("a", b"1")
    assert recent.is_echo("a", b"1") and recent.is_echo("a", bytearray(b"1"))
    assert not recent.is_echo("a", b"2") and not recent.is_echo("b", b"1")
    now[0] = 9.0
    recent.remember("a", b"1")  # refreshed: lives until 19
    recent.remember("b", b"1")
    now[0] = 15.0
    assert recent.is_echo("a", b"1") and recent.is_echo("b", b"1")
    for n in range(10):
        recent.remember("c", str(n).encode())
    assert len(recent) == 3 and not recent.is_echo("a", b"1") and recent.is_echo("c", b"9")
    now[0] = 100.0
    assert not recent.is_echo("c", b"9") and len(recent) == 0
