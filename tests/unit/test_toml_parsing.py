"""Unit tests for Listener.config.toml_parsing: compiled tomli for ordinary documents, interpreted for large ones."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
import tomli

from Listener.config import toml_parsing
from Listener.config.toml_parsing import INTERLEAVED_ABOVE, loads


def test_small_documents_use_tomli(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: List[str] = []

    def spy(text: str) -> Dict[str, Any]:
        seen.append("tomli")
        return {"spied": True}

    monkeypatch.setattr(tomli, "loads", spy)
    assert loads('a = 1\n') == {"spied": True}
    assert seen == ["tomli"]


def test_large_documents_use_the_interpreted_parser_with_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    document = 'job_id = "big"\n' + "".join(f'key_{n} = "{"v" * 40}"\n' for n in range(INTERLEAVED_ABOVE // 40))
    assert len(document) > INTERLEAVED_ABOVE
    expected = tomli.loads(document)

    def forbidden(text: str) -> Dict[str, Any]:
        raise AssertionError("the compiled parser holds the GIL for the whole document")

    if not hasattr(toml_parsing._interleaved_loads, "__code__"):
        pytest.skip("tomli ships no pure-Python source on this platform")  # then tomli.loads is that source
    monkeypatch.setattr(tomli, "loads", forbidden)
    assert loads(document) == expected
    assert toml_parsing._interleaved_loads.__code__.co_filename.endswith(".py")


def test_both_parsers_refuse_invalid_toml_with_a_value_error() -> None:
    with pytest.raises(ValueError):
        loads("a = = 1")
    with pytest.raises(ValueError):
        loads("a = = 1\n" + "#" * INTERLEAVED_ABOVE)
