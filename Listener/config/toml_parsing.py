"""``tomli`` for every TOML document, and its pure-Python parser for the large ones.

The compiled ``tomli`` parses about 3× faster than the pure-Python one, but holds the GIL for the whole
document: a 1 MiB payload parsed on a worker thread would still stop the event loop for tens of
milliseconds. Interpreted code lets other threads run every few milliseconds, so documents above
``INTERLEAVED_ABOVE`` characters (parsed on a thread, see :mod:`Listener.pipeline.payloads`) go through tomli's own
pure-Python source, which its wheels ship beside the compiled modules.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Dict

import tomli

__all__ = ["INTERLEAVED_ABOVE", "loads"]

#: Documents longer than this (in characters) are parsed by the pure-Python parser.
INTERLEAVED_ABOVE = 64 * 1024


def _pure_python_loads() -> Callable[[str], Dict[str, Any]]:
    """tomli's ``loads`` from its ``.py`` source (the one in use when tomli is not compiled here)."""
    source = Path(tomli.__file__).with_name("_parser.py")
    if hasattr(tomli.loads, "__code__") or not source.is_file():  # already interpreted, or no source shipped
        return tomli.loads
    spec = importlib.util.spec_from_file_location("tomli._listener_pure_parser", source)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a loader
        return tomli.loads
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its relative imports resolve inside the tomli package
    return module.loads  # type: ignore[no-any-return]


_interleaved_loads = _pure_python_loads()


def loads(text: str) -> Dict[str, Any]:
    """Parse a TOML document (raises ``tomli.TOMLDecodeError``, a ``ValueError``)."""
    if len(text) > INTERLEAVED_ABOVE:
        return _interleaved_loads(text)
    return tomli.loads(text)
