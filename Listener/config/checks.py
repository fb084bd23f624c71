"""Checks of a valid configuration against its surroundings: what ``check-config`` and ``run()`` report.

``EventListenerConfig()`` validates each value on its own and touches no file, because configurations
are often built before certificates are mounted. The checks here look further: whether the
subscription also receives the listener's own publications, whether ``uri`` and ``host``/``port``
contradict each other, and whether the certificate files exist (checked by ``check-config`` and when
``run()`` starts, not at construction).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, List, Tuple
from urllib.parse import urlsplit

from ..core.topics import topic_matches
from .settings import EventListenerConfig

__all__ = ["check_before_start", "config_warnings", "covered_own_topics", "file_problems", "own_topics",
           "session_loses_messages", "subscription_filters", "uri_conflict"]

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EventListenerConfig)}
#: Options naming files (or, for capath, a directory) the TLS set-up reads.
_FILE_OPTIONS = (("cafile", False), ("capath", True), ("certfile", False), ("keyfile", False))


def own_topics(config: EventListenerConfig) -> Tuple[str, ...]:
    """The topics the listener publishes its events and default results to (no empty ``log_topic``)."""
    names = (config.error_topic, config.log_topic, config.results_topic)
    return tuple(dict.fromkeys(name for name in names if name))


def subscription_filters(config: EventListenerConfig) -> Tuple[str, ...]:
    """Every filter the listener subscribes to: ``topic`` and the ``custom_topics`` keys."""
    return tuple(dict.fromkeys((config.topic, *config.custom_topics)))


def covered_own_topics(config: EventListenerConfig) -> List[Tuple[str, str, str]]:
    """``(option, topic, filter)`` for each own topic a subscription filter also receives."""
    found = []
    for option in ("error_topic", "log_topic", "results_topic"):
        topic = getattr(config, option)
        if not topic:
            continue
        for topic_filter in subscription_filters(config):
            if topic_matches(topic_filter, topic):
                found.append((option, topic, topic_filter))
                break
    return found


def _uri_host_port(uri: str) -> Tuple[str, int]:
    parts = urlsplit(uri)
    default_port = 8883 if parts.scheme in ("mqtts", "wss") else 1883
    if parts.scheme in ("ws", "wss"):
        default_port = 443 if parts.scheme == "wss" else 80
    return (parts.hostname or "").lower(), parts.port or default_port


def uri_conflict(config: EventListenerConfig) -> str | None:
    """A warning when ``host``/``port`` were changed from their defaults and say otherwise than ``uri``."""
    host, port = _uri_host_port(config.uri or "")
    generated = urlsplit(config._generated_uri())  # what host/port alone would give
    if (generated.hostname or "").lower() == host and (generated.port or 0) == port:
        return None
    disagreeing = []
    if config.host != _DEFAULTS["host"] and config.host.strip("[]").lower() != host:
        disagreeing.append(f"host {config.host!r}")
    if config.port != _DEFAULTS["port"] and config.port != port:
        disagreeing.append(f"port {config.port}")
    if not disagreeing:
        return None
    both = " and ".join(disagreeing)
    return f"uri points at {host}:{port}, which disagrees with {both}: the uri wins ({both} ignored)"


def config_warnings(config: EventListenerConfig) -> List[str]:
    """Settings that are valid but probably not what was meant (logged at start, printed by check-config)."""
    warnings = []
    for option, topic, topic_filter in covered_own_topics(config):
        warnings.append(f"the subscription {topic_filter!r} also receives {option} {topic!r}: the listener "
                        f"ignores its own messages there (counted as own_messages_ignored); "
                        f"give {option} a topic outside the subscription")
    conflict = uri_conflict(config)
    if conflict:
        warnings.append(conflict)
    lost = session_loses_messages(config)
    if lost:
        warnings.append(lost)
    if config.max_inflight_publications > BROKER_QOS2_QUOTA:
        warnings.append(
            f"max_inflight_publications = {config.max_inflight_publications} is above the {BROKER_QOS2_QUOTA} QoS 2 "
            f"messages Mosquitto takes in flight from a client by default; past its quota a broker drops QoS 2 "
            f"publications while answering an MQTT 3.1.1 client as if it took them: raise the broker's limit "
            f"(Mosquitto: max_inflight_messages) to at least {config.max_inflight_publications}, or lower this")
    return warnings


#: QoS 2 messages in flight Mosquitto 2.0 takes from one client by default (its ``max_inflight_messages``).
BROKER_QOS2_QUOTA = 20


def session_loses_messages(config: EventListenerConfig) -> str | None:
    """A warning when a QoS 1/2 subscription uses a clean session: what is in flight is lost on restart."""
    highest = max([config.qos, *(options.get("qos", 0) for options in config.custom_topics.values())])
    if highest < 1 or not config.cleansession:
        return None
    return (f"qos {highest} with cleansession=True: messages in flight are lost when the listener restarts "
            f"(the broker forgets the session); at-least-once delivery needs cleansession=False and a fixed client_id")


def file_problems(config: EventListenerConfig) -> List[str]:
    """One message per certificate option whose file (or directory) does not exist or cannot be read."""
    problems = []
    for option, is_directory in _FILE_OPTIONS:
        path = getattr(config, option)
        if path is None:
            continue
        kind = "directory" if is_directory else "file"
        if not os.path.exists(path):
            problems.append(f"{option} {path!r}: no such {kind}")
        elif is_directory != os.path.isdir(path):
            problems.append(f"{option} {path!r}: is not a {kind}")
        elif not os.access(path, os.R_OK):
            problems.append(f"{option} {path!r}: not readable")
    return problems


def check_before_start(config: EventListenerConfig, files_needed: bool, endpoint: str, warn: Callable[[str], None]) -> None:
    """Refuse missing certificate files by name (when ``files_needed``); ``warn`` about likely mistakes.

    Raises:
        ConnectionError: naming ``endpoint`` and every missing or unreadable file.
    """
    problems = file_problems(config) if files_needed else []
    if problems:
        raise ConnectionError(f"Cannot connect to MQTT broker at {endpoint}: {'; '.join(problems)}")
    for warning in config_warnings(config):
        warn(warning)
