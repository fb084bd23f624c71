"""The library's one small exception family.

Transport failures are not here on purpose: they surface as the built-in
``ConnectionError`` that the manual tells users to catch.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ConfigParseError", "ConfigValidationError"]


class ConfigError(ValueError):
    """Configuration parsing or validation failed.

    Subclasses ``ValueError`` so that both ``except ValueError`` and
    ``except ConfigError`` catch an invalid :class:`EventListenerConfig`.
    """


class ConfigParseError(ConfigError):
    """A TOML document, string or file could not be read or parsed."""


class ConfigValidationError(ConfigError):
    """Parsed configuration data failed validation."""
