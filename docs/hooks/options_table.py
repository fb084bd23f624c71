"""MkDocs hook: the configuration reference table, built from EventListenerConfig at every build.

A page line ``<!-- options-table -->`` becomes one Markdown table row per field of
``EventListenerConfig``: its type (from the type hints, ``Listener.config.settings.option_kinds``), its
default, the environment variables ``from_env()`` reads for it, its TOML line and ``--set`` form, and
what it does (``Listener.config.option_help.FIELD_HELP``). A field added to the dataclass appears by
itself; one without a description fails the build (and tests/unit/test_option_help.py).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Iterator, List, Mapping

import tomli_w

from Listener.config.option_help import FIELD_HELP
from Listener.config.settings import EventListenerConfig, OptionKind, environment_variables, option_kinds

MARKER = "<!-- options-table -->"
PREFIX = "MQTT_"
#: Options whose None default is replaced at construction: what the table says instead.
GENERATED_DEFAULTS = {"uri": "generated from `host` and `port`"}
_PLACEHOLDERS = {str: '"…"', int: "…", float: "…", bool: "true", dict: "{ … }"}
_PLACEHOLDERS_SET = "…"


class _Recorder(Mapping[str, str]):
    """An environment that holds every variable asked for: it records the names ``from_env`` looks up."""

    def __init__(self) -> None:
        self.asked: List[str] = []

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.append(key)
        return True

    def __getitem__(self, key: str) -> str:
        return ""

    def __iter__(self) -> Iterator[str]:
        return iter(self.asked)

    def __len__(self) -> int:
        return len(self.asked)


def variables_by_option(prefix: str = PREFIX) -> Dict[str, List[str]]:
    """``{option: [variables]}``: each ``{prefix}…`` variable ``EventListenerConfig.from_env`` reads, by option.

    Asked through the public ``environment_variables()``, one variable at a time, so aliases such as
    ``MQTT_CA_FILE`` are found without a second list of them here.
    """
    recorder = _Recorder()
    environment_variables(prefix, recorder)
    found: Dict[str, List[str]] = {name: [] for name in EventListenerConfig.field_names()}
    for variable in recorder.asked:
        for option, used in environment_variables(prefix, {variable: ""}).items():
            if used not in found[option]:
                found[option].append(used)
    return found


def default_of(field: "dataclasses.Field[Any]") -> Any:
    """The field's default value (calling its default factory)."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def type_label(kind: OptionKind) -> str:
    """``int``, ``Optional[str]``, ...: the option's type as its type hint spells it."""
    return f"Optional[{kind.type.__name__}]" if kind.optional else kind.type.__name__


def toml_value(value: Any, kind: OptionKind) -> str:
    """The value as TOML text; a placeholder for None or a table."""
    if value is None or isinstance(value, dict):
        return _PLACEHOLDERS.get(kind.type, "…")
    return tomli_w.dumps({"v": value})[len("v = "):].strip()


def default_label(value: Any) -> str:
    """The default as Python writes it, strings in double quotes as in TOML."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def set_form(name: str, value: Any, kind: OptionKind) -> str:
    """``--set name=value``: text as typed (the CLI keeps it as text), anything else as TOML; quoted for a shell."""
    if kind.type is str:
        raw = _PLACEHOLDERS_SET if value is None else value
    else:
        raw = toml_value(value, kind)
    form = f"--set {name}={raw}"
    return f"'{form}'" if any(c in raw for c in " {}\"'\"") else form


def _code(text: str) -> str:
    return f"`{text}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rows() -> List[Dict[str, str]]:
    """One dict per option, in declaration order: the cells of its row (Markdown)."""
    kinds = option_kinds()
    variables = variables_by_option()
    missing = [name for name in EventListenerConfig.field_names() if name not in FIELD_HELP]
    if missing:
        raise ValueError(f"no description in Listener.config.option_help.FIELD_HELP for: {', '.join(missing)}")
    table = []
    for field in dataclasses.fields(EventListenerConfig):
        kind = kinds[field.name]
        default = default_of(field)
        toml = toml_value(default, kind)
        set_cell = _code(set_form(field.name, default, kind))
        if kind.optional:
            set_cell += f", `--unset {field.name}`"
        table.append({
            "name": _code(field.name),
            "type": _code(type_label(kind)),
            "default": GENERATED_DEFAULTS.get(field.name) or _code(default_label(default)),
            "environment": ", ".join(_code(v) for v in variables[field.name]) or "—",
            "toml": _code(f"{field.name} = {toml}"),
            "set": set_cell,
            "help": FIELD_HELP[field.name],
        })
    return table


HEADER = ("Option", "Type", "Default", "Environment", "TOML", "`--set`", "What it does")
COLUMNS = ("name", "type", "default", "environment", "toml", "set", "help")


def options_table() -> str:
    """The whole Markdown table."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows():
        lines.append("| " + " | ".join(_cell(row[key]) for key in COLUMNS) + " |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs event: put the table where the marker is."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, options_table())
