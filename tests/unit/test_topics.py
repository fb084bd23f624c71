"""Unit tests for Listener.core.topics: topic filter / name validation and matching (MQTT 3.1.1 §4.7)."""

from __future__ import annotations

from typing import Any

import pytest

from Listener.core.topics import (PublishOptions, filter_covers, filter_error, strip_share_prefix, subscriptions,
                                  topic_matches, topic_name_error)


# -- filter_error -----------------------------------------------------------------------------------


@pytest.mark.parametrize("topic_filter", [
    "a", "a/b/c", "/", "/finance", "a//b", "a/", "#", "+", "+/x", "a/+", "a/+/c", "a/#", "+/+/#",
    "sport/tennis/+", "$SYS/#", "$SYS/monitor/+", "$share/g/a/#", "$share/group/+", "$share/g/#",
    "x" * 65535,
])
def test_valid_filters(topic_filter: str) -> None:
    assert filter_error(topic_filter) is None


@pytest.mark.parametrize("topic_filter,fragment", [
    ("", "empty"),
    ("a/#/b", "'#'"),
    ("#/a", "'#'"),
    ("a/b#", "'#'"),
    ("sport/tennis#", "'#'"),
    ("a+", "'+'"),
    ("+a/b", "'+'"),
    ("a/+b", "'+'"),
    ("a\x00b", "NUL"),
    ("x" * 65536, "65535"),
    ("é" * 32768, "65535"),  # 65536 bytes in UTF-8
    ("$share//a", "$share"),
    ("$share/g", "$share"),
    ("$share/g+/a", "$share"),
    ("$share/#/a", "$share"),
    ("$share/g/", "empty"),
    ("$share/g/a/#/b", "'#'"),
])
def test_invalid_filters(topic_filter: str, fragment: str) -> None:
    problem = filter_error(topic_filter)
    assert problem is not None and fragment in problem


@pytest.mark.parametrize("value", [None, 42, b"a/b", ["a"]])
def test_filter_must_be_a_string(value: Any) -> None:
    problem = filter_error(value)
    assert problem is not None and "string" in problem and type(value).__name__ in problem


# -- topic_name_error -------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["a", "a/b", "/", "a//b", "test/results", "a$b", "é/ü", "x" * 65535,
                                   "emoji/\U0001F600", "cjk/\u4e2d", "a b", "\u00a0nbsp", "\ufffd", "\U0010fffd"])
def test_valid_topic_names(topic: str) -> None:
    assert topic_name_error(topic) is None


@pytest.mark.parametrize("topic,fragment", [
    ("", "empty"),
    ("a/+", "wildcard"),
    ("a/#", "wildcard"),
    ("#", "wildcard"),
    ("+", "wildcard"),
    ("a+b", "wildcard"),
    ("a\x00", "NUL"),
    ("x" * 65536, "65535"),
    ("é" * 32768, "65535"),
    ("$SYS/x", "'$'"),
    ("$share/g/x", "'$'"),
    ("results/\x01", "U+0001"),
    ("results/\x1f", "U+001F"),
    ("results/\x7f", "U+007F"),
    ("results/\x85", "U+0085"),
    ("results/\x9f", "U+009F"),
    ("results/\n", "U+000A"),
    ("results/\ufdd0", "non-character U+FDD0"),
    ("results/\ufdef", "non-character U+FDEF"),
    ("results/\ufffe", "non-character U+FFFE"),
    ("results/\uffff", "non-character U+FFFF"),
    ("results/\U0001fffe", "non-character U+1FFFE"),
    ("results/\U0010ffff", "non-character U+10FFFF"),
    ("results/\ud800", "surrogate U+D800"),
    ("results/\udfff", "surrogate U+DFFF"),
])
def test_invalid_topic_names(topic: str, fragment: str) -> None:
    problem = topic_name_error(topic)
    assert problem is not None and fragment in problem


@pytest.mark.parametrize("value", [None, 1, b"t"])
def test_topic_name_must_be_a_string(value: Any) -> None:
    problem = topic_name_error(value)
    assert problem is not None and "string" in problem


# -- strip_share_prefix ------------------------------------------------------------------------------


@pytest.mark.parametrize("topic_filter,expected", [
    ("$share/g/a/#", "a/#"),
    ("$share/group/a/b/c", "a/b/c"),
    ("$share/g", ""),
    ("a/b", "a/b"),
    ("$SYS/x", "$SYS/x"),
    ("share/g/a", "share/g/a"),
])
def test_strip_share_prefix(topic_filter: str, expected: str) -> None:
    assert strip_share_prefix(topic_filter) == expected


# -- topic_matches ----------------------------------------------------------------------------------


@pytest.mark.parametrize("topic_filter,topic,expected", [
    # exact
    ("a/b", "a/b", True),
    ("a/b", "a/c", False),
    ("a/b", "a/b/c", False),
    ("a/b/c", "a/b", False),
    ("a", "A", False),
    # single level
    ("a/+", "a/b", True),
    ("a/+", "a/b/c", False),
    ("a/+", "a", False),
    ("a/+", "a/", True),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a/b/d", False),
    ("+", "a", True),
    ("+", "/finance", False),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("sport/+", "sport/tennis/player1", False),
    ("+/+/+", "a/b/c", True),
    # multi level
    ("#", "a", True),
    ("#", "a/b/c", True),
    ("#", "/finance", True),
    ("a/#", "a", True),
    ("a/#", "a/b", True),
    ("a/#", "a/b/c/d", True),
    ("a/#", "b/a", False),
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("+/b/#", "a/b/c", True),
    # $-topics are not matched by leading wildcards
    ("#", "$SYS/broker/uptime", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("+", "$SYS", False),
    ("$SYS/#", "$SYS/broker/uptime", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("a/+", "a/$b", True),
    # shared subscriptions match the real topic
    ("$share/group/a/#", "a/b", True),
    ("$share/group/a/+", "a/b", True),
    ("$share/group/a/+", "a/b/c", False),
    ("$share/group/sensors/temp", "sensors/temp", True),
    ("$share/group/#", "$SYS/x", False),
    ("$share/group/a/#", "$share/group/a/b", False),
])
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


# -- filter_covers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("wide,narrow,expected", [
    # identical filters cover each other
    ("a/b", "a/b", True),
    ("a/+", "a/+", True),
    ("a/#", "a/#", True),
    ("#", "#", True),
    # '#' covers everything below (and the parent level itself)
    ("#", "a", True),
    ("#", "a/+/c", True),
    ("a/#", "a/b", True),
    ("a/#", "a/b/c", True),
    ("a/#", "a/+", True),
    ("a/#", "a/+/#", True),
    ("a/#", "a", True),
    ("a/#", "b/c", False),
    ("a/b/#", "a/#", False),
    # '+' covers one level
    ("a/+", "a/b", True),
    ("a/+/c", "a/b/c", True),
    ("+/+", "a/b", True),
    ("+/b", "a/b", True),
    ("a/+", "a/b/c", False),
    ("a/+", "a/#", False),
    ("+", "#", False),
    ("a/+", "a", False),
    # a concrete level does not cover a wildcard
    ("a/b", "a/+", False),
    ("a/b", "a/#", False),
    ("a/b", "a", False),
    ("a/b", "a/b/c", False),
    ("a/#", "#", False),
    # leading wildcards never match '$' topics, so they cannot cover '$' filters
    ("#", "$SYS/#", False),
    ("#", "$SYS/broker/uptime", False),
    ("+/monitor/#", "$SYS/monitor/Clients", False),
    ("+", "$SYS", False),
    ("$SYS/#", "$SYS/broker/uptime", True),
    ("$SYS/+/#", "$SYS/monitor/Clients", True),
    # $share prefixes are ignored for the filter part
    ("$share/g/a/#", "$share/g/a/b", True),
    ("a/#", "$share/g/a/b", True),
    ("$share/g/a/+", "$share/g/a/b/c", False),
    # a shared subscription receives only its group's share, so it covers nothing outside its group
    ("$share/g/a/#", "a/b", False),
    ("$share/g/a/#", "$share/h/a/b", False),
])
def test_filter_covers(wide: str, narrow: str, expected: bool) -> None:
    assert filter_covers(wide, narrow) is expected


@pytest.mark.parametrize("topic", ["a", "a/b", "a/b/c", "x/b/c", "a/", "$SYS/broker/uptime", "$SYS/monitor/Clients"])
@pytest.mark.parametrize("wide,narrow", [
    ("#", "a/+/c"), ("a/#", "a/+"), ("+/b/#", "a/b/c"), ("#", "$SYS/#"), ("+/monitor/#", "$SYS/monitor/+"),
    ("$SYS/#", "$SYS/+/Clients"),
])
def test_filter_covers_agrees_with_topic_matches(wide: str, narrow: str, topic: str) -> None:
    # When wide covers narrow, no topic may match narrow without matching wide.
    if filter_covers(wide, narrow) and topic_matches(narrow, topic):
        assert topic_matches(wide, topic)


# -- PublishOptions and subscriptions ------------------------------------------------------------


def test_publish_options_and_subscriptions_follow_custom_topics() -> None:
    custom = {"out/#": {"qos": 2, "retain": True}, "in/x": {"qos": 1}}
    options = PublishOptions(1, False, custom)
    assert options("out/a") == (2, True) and options("other") == (1, False) and options("out/a") == (2, True)
    assert subscriptions("in/#", 0, custom) == [("in/#", 0), ("out/#", 2)]


def test_valid_topic_names_are_remembered_within_a_bound_and_invalid_ones_never() -> None:
    from Listener.core import topics

    topics._VALID_NAMES.clear()
    assert topic_name_error("results/out") is None and "results/out" in topics._VALID_NAMES
    assert topic_name_error("results/+") is not None and "results/+" not in topics._VALID_NAMES
    assert topic_name_error("results/\x07") is not None and "results/\x07" not in topics._VALID_NAMES
    assert topic_name_error("results/out") is None  # answered from memory
    for n in range(topics._VALID_NAMES_KEPT + 5):
        assert topic_name_error(f"results/{n}") is None
    assert len(topics._VALID_NAMES) <= topics._VALID_NAMES_KEPT
