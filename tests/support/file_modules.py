"""Load a Python file that is not part of an importable package (a script, a MkDocs hook) as a module."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

__all__ = ["load_file_module"]


def load_file_module(name: str, path: Path) -> ModuleType:
    """The module ``path`` defines, executed under ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
