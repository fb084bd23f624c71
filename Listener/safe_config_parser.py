"""``from Listener.config.parser import SafeConfigParser``, as the manual writes it.

The parser lives in :mod:`Listener.config.parser`; this module keeps the manual's import path.
"""

from .config.parser import (ConfigError, ConfigParseError, ConfigSource, ConfigValidationError, ParsedConfig, SafeConfigParser,
                            validate_field_types, validate_required_fields)

__all__ = ["ConfigError", "ConfigParseError", "ConfigSource", "ConfigValidationError", "ParsedConfig",
           "SafeConfigParser", "validate_field_types", "validate_required_fields"]
