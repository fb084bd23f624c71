"""MkDocs hook: ``mqtt-listener --help`` and each subcommand's ``--help``, as the installed command prints them.

A page line ``<!-- cli-help -->`` becomes one section per command with its help text in a code block,
taken from ``Listener.cli.command.build_parser()`` at build time, so the page cannot drift from the CLI.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Iterator, List, Tuple

from Listener.cli.command import build_parser

MARKER = "<!-- cli-help -->"
WIDTH = "100"


def commands() -> Iterator[Tuple[str, argparse.ArgumentParser]]:
    """``("mqtt-listener", parser)``, then each subcommand with its parser."""
    parser = build_parser()
    yield parser.prog, parser
    for action in parser._actions:  # argparse has no public accessor for its subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield f"{parser.prog} {name}", subparser


def help_sections() -> str:
    """Markdown: a heading and a ``text`` block per command."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH  # argparse wraps at the terminal's width
    try:
        sections: List[str] = []
        for name, parser in commands():
            sections.append(f"### `{name}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
        return "\n".join(sections)
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs event: put the help texts where the marker is."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, help_sections())
