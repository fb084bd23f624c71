"""Who may see job data: anyone on a loopback-only server without a token, else only holders of ``http_token``."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from http.cookies import CookieError, SimpleCookie
from typing import Mapping, Optional

__all__ = ["COOKIE_NAME", "Access", "is_loopback_host"]

COOKIE_NAME = "listener_dashboard"


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses: only this machine can connect to a server bound there."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost, or an empty (all addresses) bind
        return False


class Access:
    """The dashboard's gate. With a token, every dashboard request needs it (``Authorization: Bearer <token>``,
    or the cookie a login sets); without one, a server bound to a non-loopback address shows no job data, and a
    loopback one answers only requests addressed to a loopback name (``Host``)."""

    def __init__(self, token: Optional[str], bind_host: str) -> None:
        self._token = token or None
        self.loopback = is_loopback_host(bind_host)
        # The cookie holds a digest of the token, never the token: a copied cookie does not reveal it.
        self._session = (hmac.new(self._token.encode("utf-8"), b"listener-dashboard-session", hashlib.sha256).hexdigest()
                         if self._token else None)

    def __repr__(self) -> str:
        return f"Access(token={'set' if self._token else 'unset'}, loopback={self.loopback})"

    @property
    def needs_token(self) -> bool:
        """A token is configured: requests must present it."""
        return self._token is not None

    @property
    def closed(self) -> bool:
        """No token, and the server is reachable from other machines: job data is never shown."""
        return self._token is None and not self.loopback

    def allows(self, headers: Mapping[str, str]) -> bool:
        """Whether a request with these (lower-cased) headers may see the dashboard."""
        if self._token is None:
            # A web page elsewhere may point a name of its own at 127.0.0.1 (DNS rebinding) and read a loopback
            # dashboard through the browser of someone on this machine: its Host header gives it away.
            return self.loopback and is_loopback_host(_host_name(headers.get("host", "")))
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credentials.strip()):
            return True
        return self._session is not None and hmac.compare_digest(_cookie(headers, COOKIE_NAME), self._session)

    def token_matches(self, candidate: str) -> bool:
        """Constant-time comparison with the configured token (False without one)."""
        if self._token is None:
            return False
        return hmac.compare_digest(candidate.encode("utf-8"), self._token.encode("utf-8"))

    def session_cookie(self) -> str:
        """The ``Set-Cookie`` value a successful login answers with."""
        return f"{COOKIE_NAME}={self._session}; HttpOnly; SameSite=Strict; Path=/"


def _host_name(host: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:9100`` → ``::1``)."""
    host = host.strip()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cookie(headers: Mapping[str, str], name: str) -> str:
    try:
        morsel = SimpleCookie(headers.get("cookie", "")).get(name)
    except CookieError:
        return ""
    return morsel.value if morsel is not None else ""
