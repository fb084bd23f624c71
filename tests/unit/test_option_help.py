"""Every option of EventListenerConfig says what it does (the site's configuration table is built from it)."""

from __future__ import annotations

import pytest

from Listener.config.option_help import FIELD_HELP, option_help
from Listener.config.settings import (ACK_POLICIES, DUPLICATE_ACTIONS, LOG_LEVELS, MAX_RETRIES, EventListenerConfig)


def test_every_option_has_a_description_and_nothing_else_has_one() -> None:
    fields = EventListenerConfig.field_names()
    assert [name for name in fields if name not in FIELD_HELP] == []
    assert [name for name in FIELD_HELP if name not in fields] == []


def test_descriptions_are_in_declaration_order_and_not_empty() -> None:
    assert list(FIELD_HELP) == list(EventListenerConfig.field_names())
    assert [name for name, text in FIELD_HELP.items() if len(text.strip()) < 20] == []


def test_choices_and_limits_come_from_the_checks() -> None:
    assert all(f"`{value}`" in FIELD_HELP["duplicate_action"] for value in DUPLICATE_ACTIONS)
    assert all(f"`{value}`" in FIELD_HELP["ack_policy"] for value in ACK_POLICIES)
    assert all(f"`{value}`" in FIELD_HELP["log_topic_level"] for value in LOG_LEVELS)
    assert str(MAX_RETRIES) in FIELD_HELP["max_retries"]


def test_option_help_names_an_option_or_raises() -> None:
    assert option_help("port") == FIELD_HELP["port"]
    with pytest.raises(KeyError):
        option_help("prot")
