"""Server processes the tests start, ended at interpreter exit when a test did not end them itself."""

from __future__ import annotations

import atexit
import threading
from typing import Callable, Dict, Generic, TypeVar

__all__ = ["Leftovers"]

T = TypeVar("T")


class Leftovers(Generic[T]):
    """Servers started and not yet ended, by identity; ``end`` is called on each one left at exit."""

    def __init__(self, end: Callable[[T], None]) -> None:
        self._end = end
        self._live: Dict[int, T] = {}
        self._lock = threading.Lock()
        atexit.register(self.end_all)

    def add(self, server: T) -> None:
        """Remember ``server`` until :meth:`discard`."""
        with self._lock:
            self._live[id(server)] = server

    def discard(self, server: T) -> None:
        """Forget ``server`` (it was ended)."""
        with self._lock:
            self._live.pop(id(server), None)

    def end_all(self) -> None:
        """End every server still remembered (best effort: one failing does not stop the others)."""
        with self._lock:
            leftovers = list(self._live.values())
        for server in leftovers:
            try:
                self._end(server)
            except Exception:  # noqa: S110 - best effort at interpreter exit
                pass
