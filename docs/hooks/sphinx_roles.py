"""MkDocs hook: Sphinx roles in docstrings (``:class:`~Listener.errors.ConfigError```) shown as plain code.

The package's docstrings are also read with ``help()``, where Sphinx roles are the usual way to name
another object. mkdocstrings renders the role's name as text before the code (``:class:ConfigError``);
this hook drops the role, and a leading ``~`` with the module path, as Sphinx would show them.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|data|attr|mod|exc|obj|const):(<code>)(~?)([^<]*)(</code>)")


def _shown(match: "re.Match[str]") -> str:
    target = match.group(3)
    if match.group(2):  # ~a.b.C shows C
        target = target.rsplit(".", 1)[-1]
    return f"{match.group(1)}{target}{match.group(4)}"


def on_page_content(html: str, **kwargs: Any) -> str:
    """MkDocs event: strip the roles from the page's HTML."""
    return _ROLE.sub(_shown, html)
