"""Log records as one JSON object per line, with secrets masked, for log shippers and ``journalctl -o cat``.

``configure_json_logging()`` installs :class:`JsonLogFormatter` on the root logger; ``mqtt-listener run
--log-format json`` does exactly that. Every line looks like::

    {"timestamp": "2025-01-01T12:00:00.123+00:00", "level": "INFO", "logger": "Listener.event_listener",
     "message": "Job task-1 completed", "job_id": "task-1", "event": "job_completed"}

Masking (the manual's §13.5.2 SecureFormatter, made stricter): the secrets given to the formatter, the
password of every ``scheme://user:password@`` URI, and the value of ``password=...``, ``token: ...``,
``"secret": "..."``, ``api_key=...``-like assignments, in the message, the exception text and the context fields.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, Optional, TextIO, Tuple

from .redaction import MASK, redact

__all__ = [
    "CONTEXT_FIELDS", "JsonLogFormatter", "RedactingTextFormatter", "configure_json_logging", "configure_text_logging",
    "mask_secrets",
]

#: Record attributes copied into the JSON object when a record has them (``logger.info(..., extra={...})``).
CONTEXT_FIELDS: Tuple[str, ...] = ("job_id", "topic", "event", "status", "duration_ms")

# ``password=hunter2``, ``token: abc``, ``"secret": "x y"``, ``api_key='k'``, ``client_key=...`` (not ``monkey=``).
_SECRET_ASSIGNMENT = re.compile(
    r"""(?P<name>\b(?:[A-Za-z0-9]+[_.-])*"""
    r"""(?:password|passwd|passphrase|pwd|token|secret|api[_-]?key|access[_-]?key|private[_-]?key|key)\b)"""
    r"""(?P<sep>["']?\s*[:=]\s*)"""
    r"""(?:(?P<quote>["'])(?P<quoted>.*?)(?P=quote)|(?P<bare>[^\s"',;&}\]]+))""",
    re.IGNORECASE,
)


def mask_secrets(text: str, secrets: Tuple[str, ...] = ()) -> str:
    """``text`` with the given secrets, URI passwords and ``password=...``-like values replaced by ``***``."""

    def _mask(match: re.Match[str]) -> str:
        quote = match.group("quote") or ""
        return f"{match.group('name')}{match.group('sep')}{quote}{MASK}{quote}"

    return _SECRET_ASSIGNMENT.sub(_mask, redact(text, secrets))


def _record_message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a broken format string must not lose the record
        return f"{record.msg!s} {record.args!r}"


def _clean(value: Any, secrets: Tuple[str, ...]) -> Any:
    """A JSON-ready copy of a context value, strings masked."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return mask_secrets(value if isinstance(value, str) else str(value), secrets)


class JsonLogFormatter(logging.Formatter):
    """Format each record as one line of JSON, secrets masked.

    Args:
        secrets: strings never to show (passwords, tokens); each occurrence becomes ``***``.
        include_traceback: also add a ``traceback`` field (masked) for records with exception info.
        context_fields: record attributes to copy when present and not None.

    The object has ``timestamp`` (ISO 8601, UTC), ``level``, ``logger`` and ``message``, the context
    fields, and for an exception ``exc_type`` and ``exc_message``.
    """

    def __init__(self, secrets: Iterable[str] = (), *, include_traceback: bool = False,
                 context_fields: Iterable[str] = CONTEXT_FIELDS) -> None:
        super().__init__()
        self.secrets: Tuple[str, ...] = tuple(s for s in secrets if s)
        self.include_traceback = include_traceback
        self.context_fields: Tuple[str, ...] = tuple(context_fields)

    def to_dict(self, record: logging.LogRecord) -> Dict[str, Any]:
        """The JSON object for ``record``, as a dict."""
        body: Dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_secrets(_record_message(record), self.secrets),
        }
        for name in self.context_fields:
            value = getattr(record, name, None)
            if value is not None:
                body[name] = _clean(value, self.secrets)
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, _ = record.exc_info
            body["exc_type"] = exc_type.__name__
            body["exc_message"] = mask_secrets(str(exc), self.secrets)
            if self.include_traceback:
                body["traceback"] = mask_secrets("".join(traceback.format_exception(*record.exc_info)).rstrip(),
                                                 self.secrets)
        if self.include_traceback and record.stack_info:
            body["stack"] = mask_secrets(record.stack_info, self.secrets)
        return body

    def format(self, record: logging.LogRecord) -> str:
        """One line of JSON (newlines inside values are escaped)."""
        return json.dumps(self.to_dict(record), ensure_ascii=False, default=str)


class RedactingTextFormatter(logging.Formatter):
    """The classic ``time level logger: message`` text format, with the same masking as :class:`JsonLogFormatter`."""

    def __init__(self, secrets: Iterable[str] = (), fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
        super().__init__(fmt)
        self.secrets: Tuple[str, ...] = tuple(s for s in secrets if s)

    def format(self, record: logging.LogRecord) -> str:
        """The formatted record (exception text included), masked."""
        return mask_secrets(super().format(record), self.secrets)


_HANDLER_MARK = "_listener_json_logging"


def configure_json_logging(level: str | int = "INFO", secrets: Iterable[str] = (),
                           stream: Optional[TextIO] = None, *, include_traceback: bool = False) -> logging.Handler:
    """Send every log record to ``stream`` (stderr by default) as JSON lines, secrets masked.

    Installs one handler on the root logger and sets the root level. Calling it again replaces the
    handler it installed before (other handlers are left alone). Returns the handler.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLogFormatter(secrets, include_traceback=include_traceback))
    setattr(handler, _HANDLER_MARK, True)
    _install(handler, level)
    return handler


def configure_text_logging(level: str | int = "INFO", secrets: Iterable[str] = (),
                           stream: Optional[TextIO] = None) -> logging.Handler:
    """Like :func:`configure_json_logging`, in the plain text format (:class:`RedactingTextFormatter`)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(RedactingTextFormatter(secrets))
    setattr(handler, _HANDLER_MARK, True)
    _install(handler, level)
    return handler


def _install(handler: logging.Handler, level: str | int) -> None:
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, _HANDLER_MARK, False):
            root.removeHandler(existing)
            existing.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
