"""One exception root: every exception class of the package is a ListenerError, and keeps its old built-in base."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
from typing import List, Type

import pytest

import Listener
from Listener import ConfigError, JobTimeoutError, ListenerError


def exception_classes() -> List[Type[BaseException]]:
    found = {}
    for info in pkgutil.walk_packages(Listener.__path__, "Listener."):
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("Listener"):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return list(found.values())


@pytest.mark.unit
def test_every_exception_class_of_the_package_derives_from_listener_error() -> None:
    classes = exception_classes()
    assert len(classes) >= 16
    outside = sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in classes if not issubclass(cls, ListenerError))
    assert outside == []


@pytest.mark.unit
@pytest.mark.parametrize("name, builtin", [
    ("Listener.errors.ConfigError", ValueError),
    ("Listener.processing.processors.JobTimeoutError", TimeoutError),
    ("Listener.processing.workers.CallTimeoutError", asyncio.TimeoutError),
    ("Listener.core.serialization.ResultEncodingError", TypeError),
    ("Listener.jobs.store.JobStoreError", OSError),
    ("Listener.mqtt.client.BrokerRefusedConnection", ConnectionError),
    ("Listener.mqtt.publisher.RefusedTopic", ValueError),
])
def test_the_built_in_bases_are_kept(name: str, builtin: Type[BaseException]) -> None:
    module, _, attribute = name.rpartition(".")
    cls = getattr(importlib.import_module(module), attribute)
    assert issubclass(cls, ListenerError) and issubclass(cls, builtin)


@pytest.mark.unit
def test_one_except_clause_catches_what_the_listener_raises() -> None:
    with pytest.raises(ListenerError):
        raise ConfigError("bad")
    with pytest.raises(ListenerError):
        raise JobTimeoutError(1.5)
    with pytest.raises(ValueError):  # what the first release's users catch still works
        raise ConfigError("bad")
