"""Writing TOML documents for generated values, to publish them as jobs."""

from __future__ import annotations

import math
from datetime import date, datetime, time
from typing import Any, Dict, List, Tuple

__all__ = ["toml_document", "toml_string", "toml_value"]


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    """An inline TOML value for a bool, int, float, str, datetime, date, time, list or dict."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_document(document: Dict[str, Any], headers: bool = False) -> str:
    """A TOML document; with ``headers``, top-level tables become ``[section]`` blocks."""
    lines: List[str] = []
    sections: List[Tuple[str, Dict[str, Any]]] = []
    for key, value in document.items():
        if headers and isinstance(value, dict):
            sections.append((key, value))
        else:
            lines.append(f"{toml_string(key)} = {toml_value(value)}")
    for key, table in sections:
        lines.append(f"[{toml_string(key)}]")
        lines.extend(f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"
