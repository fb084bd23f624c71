"""Keeping secrets out of reprs, log lines, exception messages and MQTT payloads: the one place that masks.

- :func:`redact`: given secrets (raw or percent-encoded) and URI passwords;
- :func:`mask_secrets`: that, plus the value of ``password=...``, ``token: ...``-like assignments;
- :func:`shown_setting`: one configuration option as it may be shown (``check-config``, ``repr(config)``);
- :class:`SecretRedactingFilter`: the logging filter doing :func:`mask_secrets` on every record it sees.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Iterable
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["CERTIFICATE_DATA", "MASK", "SECRET_SETTINGS", "SecretRedactingFilter", "mask_secrets",
           "mask_uri_credentials", "redact", "shown_setting", "split_uri_credentials"]

MASK = "***"
#: What ``repr()``, ``redacted_dict()`` and ``check-config`` show instead of ``cadata``.
CERTIFICATE_DATA = "<certificate data>"
#: Configuration options whose value is never shown.
SECRET_SETTINGS = frozenset({"password", "http_token"})

# The start of a URI: ``scheme://``.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# Characters after which a ``scheme://`` starts another URI rather than continuing a password.
_URI_BOUNDARY = frozenset(" \t\"'(<[{,=")
_LINE_ENDS = ("\n", "\r")


def split_uri_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """Split ``uri`` into (uri without user info, username, password); the names are not unquoted."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    username, sep, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    return clean, username or None, password if sep else None


def mask_uri_credentials(text: str) -> str:
    """Replace the password of every ``scheme://user:password@host`` in ``text`` with ``***``.

    The one function that masks URI user info: config reprs and errors, log formatters, the CLI and
    :func:`redact` all call it. Whatever the password holds (``/``, ``@``, spaces, ``#``), it is masked:
    the user info ends at the *last* ``@`` of the URI, and a URI runs to the end of its line or to
    the next ``scheme://`` that follows a space, a quote or a bracket. When in doubt more is masked,
    never less (``mqtt://h:1883 for admin@example.com`` shows as ``mqtt://h:***@example.com``).
    """
    pieces = []
    position = 0
    search_from = 0
    while True:
        match = _SCHEME.search(text, search_from)
        if match is None:
            break
        start = match.end()
        end = _uri_end(text, start)
        at = text.rfind("@", start, end)
        if at != -1:
            user, sep, _ = text[start:at].partition(":")
            pieces.append(text[position:start])
            pieces.append(f"{user}:{MASK}" if sep else user)
            position = at
        search_from = max(at + 1, start)
    pieces.append(text[position:])
    return "".join(pieces)


def _uri_end(text: str, start: int) -> int:
    """Where the URI whose authority starts at ``start`` ends, as far as user info is concerned."""
    end = len(text)
    for line_end in _LINE_ENDS:
        found = text.find(line_end, start, end)
        if found != -1:
            end = found
    for match in _SCHEME.finditer(text, start, end):
        if match.start() > start and text[match.start() - 1] in _URI_BOUNDARY:
            return match.start()
    return end


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Mask every occurrence of the given secret strings (raw or percent-encoded), then URI credentials.

    Secrets go first: a password holding ``@``, ``/`` or a space, written raw inside a URI, would
    otherwise be cut at that character by the URI masking and leave its tail in the text.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
            encoded = quote(secret, safe="")
            if encoded != secret:
                text = text.replace(encoded, MASK)
    return mask_uri_credentials(text)


# ``password=hunter2``, ``token: abc``, ``"secret": "x y"``, ``api_key='k'``, ``client_key=...`` (not ``monkey=``).
_SECRET_ASSIGNMENT = re.compile(
    r"""(?P<name>\b(?:[A-Za-z0-9]+[_.-])*"""
    r"""(?:password|passwd|passphrase|pwd|token|secret|api[_-]?key|access[_-]?key|private[_-]?key|key)\b)"""
    r"""(?P<sep>["']?\s*[:=]\s*)"""
    r"""(?:(?P<quote>["'])(?P<quoted>.*?)(?P=quote)|(?P<bare>[^\s"',;&}\]]+))""",
    re.IGNORECASE,
)


def mask_secrets(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with the given secrets, URI passwords and ``password=...``-like values replaced by ``***``."""

    def _mask(match: re.Match[str]) -> str:
        quote = match.group("quote") or ""
        return f"{match.group('name')}{match.group('sep')}{quote}{MASK}{quote}"

    return _SECRET_ASSIGNMENT.sub(_mask, redact(text, secrets))


def shown_setting(name: str, value: Any) -> Any:
    """``value`` of the option ``name`` as it may be shown: secrets masked, certificate data elided."""
    if value is None:
        return None
    if name in SECRET_SETTINGS:
        return MASK
    if name == "cadata" and isinstance(value, str):
        return CERTIFICATE_DATA
    if isinstance(value, str) and "://" in value:
        return mask_uri_credentials(value)
    return value


class SecretRedactingFilter(logging.Filter):
    """A logging filter that rewrites records so no secrets reach a handler (:func:`mask_secrets`).

    The handler that ``mqtt-listener run`` and :func:`Listener.ops.json_logging.configure_logging` install has
    one, and so do the third-party ``amqtt`` loggers, whose debug lines can print broker URIs.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = tuple(secret for secret in secrets if secret)

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message once, redact it, and drop the arguments that held it."""
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the emitter's bug; leave the record as it is
            return True
        cleaned = mask_secrets(message, self.secrets)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True
