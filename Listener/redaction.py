"""Keeping secrets out of reprs, log lines, exception messages and MQTT payloads."""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["MASK", "SecretRedactingFilter", "mask_uri_credentials", "redact", "split_uri_credentials"]

MASK = "***"

# user:password@ inside any URI-looking text.
_URI_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s]+)@")


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
    """Replace the password of every ``scheme://user:password@`` in ``text`` with ``***``."""

    def _mask(match: re.Match[str]) -> str:
        user, sep, _ = match.group("userinfo").partition(":")
        return f"{match.group('scheme')}{user}{':' + MASK if sep else ''}@"

    return _URI_CREDENTIALS.sub(_mask, text)


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


class SecretRedactingFilter(logging.Filter):
    """A logging filter that rewrites records so no URI credentials or known secrets reach a handler.

    It is attached to the third-party ``amqtt`` loggers, whose debug lines can print broker URIs.
    """

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message once, redact it, and drop the arguments that held it."""
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the emitter's bug; leave the record as it is
            return True
        cleaned = redact(message, self.secrets)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True
