"""What this listener published recently, so that its own echo is not taken for a job.

A processor may publish its result (a ``ReturnType``) to a topic the listener's own subscription
covers, such as the manual's ``events/processed`` under ``topic = "events/#"``. The broker then sends
that JSON result back, and without this memory it would be rejected as an invalid job and reported.
Only a digest of each payload is kept, for a bounded number of publications and a bounded time.

Only results (and ``_publish_result``) are remembered; events go to the listener's own topics, which
are never jobs. A message sent with ``_send_message`` to a subscribed topic is a job when it comes back,
as in the first release, whose users and tests publish jobs to their own listener that way.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, OrderedDict
from typing import Callable, Dict, FrozenSet, Tuple, Union

from ..core.topics import topic_matches
from ..ops.metrics import ListenerMetrics

__all__ = ["OwnMessages", "RecentPublications"]

Payload = Union[bytes, bytearray, memoryview]


def _digest(payload: Payload) -> bytes:
    return hashlib.blake2b(payload, digest_size=16).digest()


class RecentPublications:
    """The last ``limit`` publications (topic and payload digest), each forgotten after ``ttl`` seconds.

    Lookups cost nothing for topics never published to, so the common case (results go elsewhere)
    does not hash incoming payloads at all.
    """

    def __init__(self, limit: int = 4096, ttl: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.ttl = ttl
        self._clock = clock
        self._expiry: "OrderedDict[Tuple[str, bytes], float]" = OrderedDict()
        self._topics: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._expiry)

    def remember(self, topic: str, payload: Payload) -> None:
        """Record that ``payload`` is being published to ``topic``."""
        now = self._clock()
        self._forget_expired(now)
        key = (topic, _digest(payload))
        if key in self._expiry:
            self._expiry.move_to_end(key)
        else:
            self._topics[topic] += 1
        self._expiry[key] = now + self.ttl
        while len(self._expiry) > self.limit:
            self._drop_oldest()

    def is_echo(self, topic: str, payload: Payload) -> bool:
        """True when this exact payload was published to ``topic`` within the last ``ttl`` seconds."""
        if topic not in self._topics:
            return False
        self._forget_expired(self._clock())
        return (topic, _digest(payload)) in self._expiry

    def _forget_expired(self, now: float) -> None:
        # Every entry lives ``ttl`` seconds and a refreshed one moves to the end: expiry order is insertion order.
        while self._expiry:
            expiry = next(iter(self._expiry.values()))
            if expiry > now:
                return
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        (topic, _), _ = self._expiry.popitem(last=False)
        self._topics[topic] -= 1
        if self._topics[topic] <= 0:
            del self._topics[topic]


class OwnMessages:
    """Tells the listener's own messages from jobs: those on its own topics, and echoes of its results.

    Taking them as jobs would answer each with an error event, which may come back in turn.

    Args:
        own_topics: the listener's ``error_topic``, ``log_topic`` and ``results_topic``.
        filters: the filters it subscribes to (a publication they cover comes back as an echo).
        metrics: counts what is ignored.
    """

    def __init__(self, own_topics: FrozenSet[str], filters: Tuple[str, ...], metrics: ListenerMetrics) -> None:
        self.own_topics = own_topics
        self._filters = filters
        self._metrics = metrics
        self._recent = RecentPublications()
        self._echoes: Dict[str, bool] = {}  # topic -> whether the subscription receives it back

    def __len__(self) -> int:
        return len(self._recent)

    def is_own(self, payload: Union[Payload, str, None], topic: str) -> bool:
        """True (and counted) for a message on an own topic or the echo of a recent publication.

        ``payload`` None: a message given as a dict, which cannot be an echo.
        """
        if topic in self.own_topics:
            self._metrics.own_messages_ignored += 1
            return True
        if payload is not None:
            raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
            if self._recent.is_echo(topic, raw):
                self._metrics.own_echoes_ignored += 1
                return True
        return False

    def remember(self, topic: str, payload: bytes) -> None:
        """Note a result the subscription will bring back, so that its echo is dropped."""
        echoes = self._echoes.get(topic)
        if echoes is None:
            echoes = topic not in self.own_topics and any(topic_matches(f, topic) for f in self._filters)
            if len(self._echoes) < 1024:
                self._echoes[topic] = echoes
        if echoes:
            self._recent.remember(topic, payload)
