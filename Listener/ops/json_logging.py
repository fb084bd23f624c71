"""Log records as one JSON object per line, with secrets masked, for log shippers and ``journalctl -o cat``.

``configure_json_logging()`` installs :class:`JsonLogFormatter` on the root logger; ``mqtt-listener run
--log-format json`` does exactly that. Every line looks like::

    {"timestamp": "2025-01-01T12:00:00.123+00:00", "level": "INFO", "logger": "Listener.event_listener",
     "message": "Job task-1 completed", "job_id": "task-1", "event": "job_completed"}

Masking (the manual's §13.5.2 SecureFormatter, made stricter; all of it in :mod:`Listener.core.redaction`): the
secrets given to the formatter, the password of every ``scheme://user:password@`` URI, and the value of
``password=...``, ``token: ...``, ``"secret": "..."``, ``api_key=...``-like assignments, in the message, the
exception text and the context fields.

:func:`configure_logging` is the one set-up, text or JSON, through :func:`logging.config.dictConfig`
(:func:`logging_config` is the dictionary it applies): one stream handler on the root logger with the
chosen formatter and the :class:`~Listener.core.redaction.SecretRedactingFilter`.
"""

from __future__ import annotations

import functools
import json
import logging
import logging.config
import sys
import traceback
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, Optional, TextIO, Tuple

from ..core.redaction import SecretRedactingFilter, mask_secrets

__all__ = [
    "CONTEXT_FIELDS", "JsonLogFormatter", "LOG_FORMATS", "RedactingTextFormatter", "configure_json_logging",
    "configure_logging", "configure_text_logging", "logging_config", "mask_secrets",
]

#: Record attributes copied into the JSON object when a record has them (``logger.info(..., extra={...})``).
CONTEXT_FIELDS: Tuple[str, ...] = ("job_id", "topic", "event", "status", "duration_ms")


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


#: The ``log_format`` values :func:`configure_logging` takes (``mqtt-listener run --log-format``).
LOG_FORMATS = ("text", "json")


class _ListenerHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (its type tells it from the application's handlers)."""


def logging_config(log_format: str = "text", level: str | int = "INFO", secrets: Iterable[str] = (),
                   stream: Optional[TextIO] = None, *, include_traceback: bool = False) -> Dict[str, Any]:
    """The :func:`logging.config.dictConfig` dictionary :func:`configure_logging` applies.

    Raises:
        ValueError: ``log_format`` is not one of :data:`LOG_FORMATS`.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    kept = tuple(secret for secret in secrets if secret)
    # Factories bound with functools.partial: dictConfig would otherwise read a secret like "ext://..." as a reference.
    formatter = (functools.partial(JsonLogFormatter, kept, include_traceback=include_traceback)
                 if log_format == "json" else functools.partial(RedactingTextFormatter, kept))
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": functools.partial(SecretRedactingFilter, kept)}},
        "formatters": {"listener": {"()": formatter}},
        "handlers": {"listener": {"()": _ListenerHandler, "stream": stream if stream is not None else sys.stderr,
                                  "formatter": "listener", "filters": ["redact"]}},
        "root": {"level": level.upper() if isinstance(level, str) else level, "handlers": ["listener"]},
    }


def configure_logging(log_format: str = "text", level: str | int = "INFO", secrets: Iterable[str] = (),
                      stream: Optional[TextIO] = None, *, include_traceback: bool = False) -> logging.Handler:
    """Send every log record to ``stream`` (stderr by default) as text or JSON lines, secrets masked.

    Applies :func:`logging_config` with :func:`logging.config.dictConfig`: one handler on the root logger,
    the root level set. Calling it again replaces the handler it installed before; handlers the application
    attached to the root logger stay attached (dictConfig closes the handlers configured before it, as always:
    a stream handler goes on working). Loggers keep their levels. Returns the handler.
    """
    config = logging_config(log_format, level, secrets, stream, include_traceback=include_traceback)
    root = logging.getLogger()
    others = [handler for handler in root.handlers if not isinstance(handler, _ListenerHandler)]
    logging.config.dictConfig(config)
    for handler in others:
        root.addHandler(handler)
    return next(handler for handler in root.handlers if isinstance(handler, _ListenerHandler))


def configure_json_logging(level: str | int = "INFO", secrets: Iterable[str] = (),
                           stream: Optional[TextIO] = None, *, include_traceback: bool = False) -> logging.Handler:
    """:func:`configure_logging` in the JSON format (:class:`JsonLogFormatter`)."""
    return configure_logging("json", level, secrets, stream, include_traceback=include_traceback)


def configure_text_logging(level: str | int = "INFO", secrets: Iterable[str] = (),
                           stream: Optional[TextIO] = None) -> logging.Handler:
    """:func:`configure_logging` in the plain text format (:class:`RedactingTextFormatter`)."""
    return configure_logging("text", level, secrets, stream)
