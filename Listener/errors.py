"""The root of every exception the library defines, and the configuration errors.

Every exception class of the package derives from :class:`ListenerError`, and keeps the built-in base it
had before the root existed: a transport failure is still a ``ConnectionError`` (what the manual tells
users to catch), an invalid configuration still a ``ValueError``, a job timeout still a ``TimeoutError``.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ConfigParseError", "ConfigValidationError", "ListenerError"]


class ListenerError(Exception):
    """Base class of every exception the listener raises on its own (``except ListenerError`` catches them all)."""


class ConfigError(ListenerError, ValueError):
    """Configuration parsing or validation failed.

    Subclasses ``ValueError`` so that both ``except ValueError`` and
    ``except ConfigError`` catch an invalid :class:`EventListenerConfig`.
    """


class ConfigParseError(ConfigError):
    """A TOML document, string or file could not be read or parsed."""


class ConfigValidationError(ConfigError):
    """Parsed configuration data failed validation."""
