"""MQTT topic names and filters: validation and matching (MQTT 3.1.1 §4.7)."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Set, Tuple

__all__ = [
    "PublishOptions",
    "filter_covers",
    "filter_error",
    "share_group_error",
    "shared_filters",
    "strip_share_prefix",
    "subscriptions",
    "topic_matches",
    "topic_name_error",
]

_SHARE_PREFIX = "$share/"
_MAX_TOPIC_BYTES = 65535


def strip_share_prefix(topic_filter: str) -> str:
    """Return the filter without a ``$share/<group>/`` prefix (the part that matches topics)."""
    if topic_filter.startswith(_SHARE_PREFIX):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else ""
    return topic_filter


def _common_error(topic: str) -> str | None:
    if not isinstance(topic, str):
        return f"must be a string, got {type(topic).__name__}"
    if not topic:
        return "must not be empty"
    if "\x00" in topic:
        return "must not contain a NUL character"
    if len(topic.encode("utf-8", "surrogatepass")) > _MAX_TOPIC_BYTES:
        return "is longer than 65535 bytes"
    return None


def share_group_error(group: str) -> str | None:
    """Explain why ``group`` cannot name a shared subscription group, or return None when it can."""
    if not isinstance(group, str):
        return f"must be a string, got {type(group).__name__}"
    if not group:
        return "must not be empty"
    for char, name in (("/", "'/'"), ("+", "the wildcard '+'"), ("#", "the wildcard '#'"), ("\x00", "a NUL character")):
        if char in group:
            return f"must not contain {name} (it is one level of $share/<group>/<filter>)"
    return _common_error(group)


def shared_filters(filters: Sequence[Tuple[str, int]], group: str | None) -> List[Tuple[str, int]]:
    """``filters`` as sent in the SUBSCRIBE: each as ``$share/<group>/<filter>`` when ``group`` is set."""
    if group is None:
        return list(filters)
    return [(f"{_SHARE_PREFIX}{group}/{topic_filter}", qos) for topic_filter, qos in filters]


def filter_error(topic_filter: str) -> str | None:
    """Explain why ``topic_filter`` is not a valid subscription filter, or return None when it is."""
    problem = _common_error(topic_filter)
    if problem:
        return problem
    if topic_filter.startswith(_SHARE_PREFIX):
        parts = topic_filter.split("/", 2)
        if len(parts) < 3 or not parts[1] or any(c in parts[1] for c in "+#"):
            return "has a malformed $share/<group>/<filter> prefix"
        topic_filter = parts[2]
        if not topic_filter:
            return "has an empty filter after its $share prefix"
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "may use '#' only as a whole last level"
        if "+" in level and level != "+":
            return "may use '+' only as a whole level"
    return None


def _forbidden_character(topic: str) -> str | None:
    """Describe the first character brokers refuse in a topic name (they disconnect the client for it)."""
    for char in topic:
        point = ord(char)
        if point < 0x20 or 0x7F <= point <= 0x9F:
            return f"must not contain the control character U+{point:04X}"
        if 0xFDD0 <= point <= 0xFDEF or (point & 0xFFFE) == 0xFFFE:
            return f"must not contain the Unicode non-character U+{point:04X}"
        if 0xD800 <= point <= 0xDFFF:
            return f"must not contain the lone surrogate U+{point:04X} (it has no UTF-8 form)"
    return None


#: Topic names found valid lately (at most :data:`_VALID_NAMES_KEPT`, then forgotten at once).
_VALID_NAMES: Set[str] = set()
_VALID_NAMES_KEPT = 1024


def topic_name_error(topic: str) -> str | None:
    """Explain why ``topic`` cannot be published to, or return None when it can.

    The one rule for every publication (results, error and log events, the will, the CLI): not empty,
    no wildcards, no U+0000, no control characters (U+0001-U+001F, U+007F-U+009F), no Unicode
    non-characters, no lone surrogates, not starting with ``$`` (reserved for the broker), at most
    65,535 bytes of UTF-8. Brokers answer such a PUBLISH by dropping the connection, so it is refused
    here, before it is sent.
    """
    if type(topic) is str and topic in _VALID_NAMES:  # a result topic is checked for every job: once is enough
        return None
    problem = _common_error(topic)
    if problem:
        return problem
    if "+" in topic or "#" in topic:
        return "must not contain the wildcards '+' or '#'"
    if topic.startswith("$"):
        return "must not start with '$' (topics starting with '$' are reserved for the broker)"
    problem = None if topic.isascii() and topic.isprintable() else _forbidden_character(topic)
    if problem is None and type(topic) is str:
        if len(_VALID_NAMES) >= _VALID_NAMES_KEPT:
            _VALID_NAMES.clear()
        _VALID_NAMES.add(topic)
    return problem


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Return True when the concrete ``topic`` matches ``topic_filter``."""
    pattern = strip_share_prefix(topic_filter).split("/")
    levels = topic.split("/")
    # Wildcards at the first level never match topics starting with '$' (MQTT 3.1.1 §4.7.2).
    if topic.startswith("$") and pattern[0] in ("+", "#"):
        return False
    for index, part in enumerate(pattern):
        if part == "#":
            return True
        if index >= len(levels):
            return False
        if part != "+" and part != levels[index]:
            return False
    return len(pattern) == len(levels)


def _share_group(topic_filter: str) -> str | None:
    return topic_filter.split("/", 2)[1] if topic_filter.startswith(_SHARE_PREFIX) else None


def filter_covers(wide: str, narrow: str) -> bool:
    """Return True when every message ``narrow`` receives is also received through ``wide``.

    A shared subscription (``$share/<group>/...``) only covers filters of the same group: it gets its
    group's share of the messages, not all of them. A plain filter covers shared ones too (subscribing
    both would only deliver the same messages twice).
    """
    group = _share_group(wide)
    if group is not None and group != _share_group(narrow):
        return False
    wide_levels = strip_share_prefix(wide).split("/")
    narrow_levels = strip_share_prefix(narrow).split("/")
    if narrow_levels[0].startswith("$") and wide_levels[0] in ("+", "#"):
        return False  # leading wildcards never match '$' topics
    for index, part in enumerate(wide_levels):
        if part == "#":
            return True
        if index >= len(narrow_levels):
            return False
        other = narrow_levels[index]
        if other == "#":
            return False
        if part != "+" and part != other:
            return False
    return len(wide_levels) == len(narrow_levels)


class PublishOptions:
    """QoS and retain for the listener's own publication on a topic: ``custom_topics``, else the defaults.

    The first ``custom_topics`` filter matching the topic gives its ``qos``/``retain``; answers are cached
    (for up to 1024 topics), since every result and event asks.
    """

    def __init__(self, default_qos: int, default_retain: bool, custom_topics: Mapping[str, Mapping[str, Any]]) -> None:
        self._default = (default_qos, default_retain)
        self._custom = [(f, (int(o.get("qos", 0)), bool(o.get("retain", False)))) for f, o in custom_topics.items()]
        self._cache: Dict[str, Tuple[int, bool]] = {}

    def __call__(self, topic: str) -> Tuple[int, bool]:
        cached = self._cache.get(topic)
        if cached is None:
            cached = next((options for f, options in self._custom if topic_matches(f, topic)), self._default)
            if len(self._cache) < 1024:
                self._cache[topic] = cached
        return cached


def subscriptions(topic: str, qos: int, custom_topics: Mapping[str, Mapping[str, Any]]) -> List[Tuple[str, int]]:
    """The filters to subscribe to: ``topic``, plus custom topics it does not already cover."""
    filters = [(topic, qos)]
    for topic_filter, options in custom_topics.items():
        if not any(filter_covers(existing, topic_filter) for existing, _ in filters):
            filters.append((topic_filter, int(options.get("qos", 0))))
    return filters
