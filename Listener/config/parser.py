"""Safe TOML parsing for configuration files and message payloads.

:class:`SafeConfigParser` turns a dict, a TOML string or a TOML file into a plain ``dict``, and reports
every failure as a :class:`ConfigError` subclass instead of a parser-specific exception:

* :class:`ConfigParseError` when the input cannot be read or parsed (missing file, too large, bad TOML,
  wrong input type, ...);
* :class:`ConfigValidationError` when parsed data fails the parser's validators (only raised on request,
  see :meth:`SafeConfigParser.safe_get_config`).

Message payloads go through :meth:`SafeConfigParser.parse_config_from_string`, which never interprets
its argument as a file path. Only :meth:`SafeConfigParser.parse_config` (meant for configuration files)
looks at the file system when handed a string.

Neither document contents nor values are ever logged: configuration may contain secrets.

Validators:
    A validator is any callable taking the parsed ``dict`` and returning either

    * a tuple ``(is_valid, errors)`` where ``errors`` is a list of messages (the canonical form,
      used by :func:`validate_required_fields` and :func:`validate_field_types`), or
    * a plain ``bool``.

    A false result makes the configuration invalid; its messages (or, when it gave none, a generic
    ``"Validator '<name>' rejected the configuration"``) are collected. Messages that come with a true
    result are ignored. A validator that raises is reported as ``"Validator error: <message>"`` and one
    that returns anything else is reported as a ``"Validator error: ..."`` too. All validators run, in
    the order they were added, so every problem is reported at once.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, TypeVar, Union, overload

from ..errors import ConfigError, ConfigParseError, ConfigValidationError
from .toml_parsing import loads as toml_loads

__all__ = [
    "ConfigError",
    "ConfigParseError",
    "ConfigSource",
    "ConfigValidationError",
    "ParsedConfig",
    "SafeConfigParser",
    "validate_field_types",
    "validate_required_fields",
]

#: Largest TOML string accepted, in UTF-8 bytes (1 MiB).
MAX_KEY_PARTS = 64
MAX_STRING_BYTES = 1024 * 1024
#: Largest TOML file accepted, in bytes (10 MiB).
MAX_FILE_BYTES = 10 * 1024 * 1024
#: Longer strings are never taken for a file path by :meth:`SafeConfigParser.parse_config`.
_MAX_PATH_CHARS = 4096
#: UTF-8 uses at most this many bytes per code point.
_MAX_UTF8_BYTES_PER_CHAR = 4

ValidatorResult = Union[bool, Tuple[bool, List[str]]]
#: A validator receives the parsed configuration and returns ``(is_valid, errors)`` or a ``bool``.
Validator = Callable[[Dict[str, Any]], ValidatorResult]
TypeSpec = Union[type, Tuple[type, ...]]
PathInput = Union[str, "os.PathLike[str]"]

_T = TypeVar("_T")

_default_logger = logging.getLogger("Listener.safe_config_parser")


class ConfigSource(Enum):
    """Where a :class:`ParsedConfig` came from."""

    #: Read from a TOML file.
    FILE_PATH = "file_path"
    #: Parsed from a TOML string.
    STRING_CONTENT = "string_content"
    #: Taken from a dictionary.
    DICT_OBJECT = "dict_object"


@dataclass
class ParsedConfig:
    """The result of :meth:`SafeConfigParser.parse_config`.

    Attributes:
        data: The parsed configuration.
        source: The kind of input it came from.
        source_info: ``"Dictionary object"``, the resolved file path, or a description starting with
            ``"String content"`` (never the content itself).
        is_valid: Whether every validator accepted ``data``.
        validation_errors: The validators' messages (a list, possibly empty, when made by
            :meth:`SafeConfigParser.parse_config`); ``None`` by default, as in the first release.
    """

    data: Dict[str, Any]
    source: ConfigSource
    source_info: str
    is_valid: bool = True
    validation_errors: Optional[List[str]] = None


def _type_name(spec: TypeSpec) -> str:
    if isinstance(spec, tuple):
        return " or ".join(t.__name__ for t in spec)
    return spec.__name__


def _matches(value: Any, spec: TypeSpec) -> bool:
    """``isinstance``, except that a bool is not accepted as an int unless bool is asked for."""
    if isinstance(value, bool):
        allowed = spec if isinstance(spec, tuple) else (spec,)
        return any(issubclass(bool, t) and t is not int for t in allowed)
    return isinstance(value, spec)


def validate_required_fields(required_fields: Iterable[str]) -> Callable[[Dict[str, Any]], Tuple[bool, List[str]]]:
    """Build a validator that checks the given top-level keys are present.

    Args:
        required_fields: Names of the keys that must exist (a single string counts as one name).

    Returns:
        A validator reporting ``"Required field missing: <name>"`` for each absent key.
    """
    names = [required_fields] if isinstance(required_fields, str) else list(required_fields)

    def check_required_fields(config: Dict[str, Any]) -> Tuple[bool, List[str]]:
        errors = [f"Required field missing: {name}" for name in names if name not in config]
        return not errors, errors

    return check_required_fields


def validate_field_types(field_types: Mapping[str, TypeSpec]) -> Callable[[Dict[str, Any]], Tuple[bool, List[str]]]:
    """Build a validator that checks the types of top-level values.

    Absent keys are not reported (combine with :func:`validate_required_fields` for that). A type may
    be a tuple of types, as for ``isinstance``. A ``bool`` does not count as an ``int`` (so
    ``port = true`` is rejected for ``{"port": int}``) unless ``bool`` itself is accepted.

    Args:
        field_types: Maps a key to the type (or tuple of types) its value must have.

    Returns:
        A validator reporting ``"Field '<name>' should be <type>, got <type>"`` for each mismatch.
    """
    expected = dict(field_types)

    def check_field_types(config: Dict[str, Any]) -> Tuple[bool, List[str]]:
        errors = [
            f"Field '{name}' should be {_type_name(spec)}, got {type(config[name]).__name__}"
            for name, spec in expected.items()
            if name in config and not _matches(config[name], spec)
        ]
        return not errors, errors

    return check_field_types


class SafeConfigParser:
    """Safe TOML configuration parser.

    Every failure surfaces as a :class:`ConfigError` subclass with a short reason; inputs are size
    limited (:data:`MAX_STRING_BYTES` for strings, :data:`MAX_FILE_BYTES` for files) before they are
    read or parsed, and parsed results are plain dicts.

    Attributes:
        logger: Where failures are reported (reasons only, never document contents).
        validators: The validators :meth:`validate_config` and :meth:`parse_config` apply, in order.
    """

    def __init__(self, logger: Optional[logging.Logger] = None) -> None:
        """Create a parser.

        Args:
            logger: Logger for error reporting; ``Listener.config.parser`` when omitted.
        """
        self.logger = logger if logger is not None else _default_logger
        self.validators: List[Validator] = []

    # -- parsing --------------------------------------------------------------------------------------

    def parse_config_from_dict(self, config_dict: Mapping[str, Any]) -> Dict[str, Any]:
        """Accept configuration that is already a mapping.

        Args:
            config_dict: The configuration.

        Returns:
            A shallow copy as a plain dict: adding or removing keys on one does not affect the other.

        Raises:
            ConfigParseError: ``config_dict`` is not a mapping ("Unsupported input type").
        """
        if not isinstance(config_dict, Mapping):
            raise self._parse_error(f"Unsupported input type: expected a dict, got {type(config_dict).__name__}")
        return dict(config_dict)

    def parse_config_from_string(self, config_string: str) -> Dict[str, Any]:
        """Parse a TOML document held in a string.

        The string is always parsed as TOML, even when it happens to name an existing file: message
        payloads come through here.

        Args:
            config_string: The TOML document, at most 1 MiB in UTF-8.

        Returns:
            The parsed document.

        Raises:
            ConfigParseError: Not a ``str`` ("Unsupported input type"), over the size limit
                ("too large"), or not valid TOML ("Invalid TOML syntax: <reason>").
        """
        return self._parse_toml_string(config_string)

    def parse_config_from_file(self, file_path: PathInput) -> Dict[str, Any]:
        """Read and parse a TOML file.

        Args:
            file_path: Path of the file (a ``str`` or path-like object), at most 10 MiB.

        Returns:
            The parsed document.

        Raises:
            ConfigParseError: The path is unusable or the file "does not exist", is "not a file", is
                "too large", cannot be read ("Permission denied"), or is not valid TOML ("Invalid TOML
                syntax: <reason>").
        """
        return self._parse_toml_file(self._sanitize_path(file_path))

    def parse_config(self, config_input: Union[Mapping[str, Any], str, "os.PathLike[str]"]) -> ParsedConfig:
        """Parse configuration from a dict, a TOML string or a TOML file, then validate it.

        A string is read as a file path when it is a single line naming something that exists on the
        file system (so a directory gives "not a file"); any other string is parsed as TOML. Use this
        for configuration only; message payloads belong in :meth:`parse_config_from_string`.

        Args:
            config_input: A mapping, a TOML document, or a path (``str`` or path-like).

        Returns:
            The data with its source and the validators' verdict; invalid data does not raise here.

        Raises:
            ConfigParseError: The input has an unsupported type or cannot be read or parsed.
        """
        if isinstance(config_input, Mapping):
            data = self.parse_config_from_dict(config_input)
            source, source_info = ConfigSource.DICT_OBJECT, "Dictionary object"
        elif isinstance(config_input, os.PathLike) or (isinstance(config_input, str) and _names_existing_path(config_input)):
            path = self._sanitize_path(config_input)
            data = self._parse_toml_file(path)
            source, source_info = ConfigSource.FILE_PATH, str(path)
        elif isinstance(config_input, str):
            data = self._parse_toml_string(config_input)
            source, source_info = ConfigSource.STRING_CONTENT, f"String content ({len(config_input)} characters)"
        else:
            raise self._parse_error(f"Unsupported input type: {type(config_input).__name__}")
        is_valid, errors = self._validate_config(data)
        if not is_valid:
            self.logger.warning("Configuration from %s failed validation: %s", source.value, "; ".join(errors))
        return ParsedConfig(data, source, source_info, is_valid, errors)

    @overload  # pragma: no cover - typing stub
    def safe_get_config(self, config_input: Any, default: None = None, raise_on_invalid: bool = False) -> Dict[str, Any]: ...

    @overload  # pragma: no cover - typing stub
    def safe_get_config(self, config_input: Any, default: _T, raise_on_invalid: bool = False) -> Union[Dict[str, Any], _T]: ...

    def safe_get_config(self, config_input: Any, default: Any = None, raise_on_invalid: bool = False) -> Any:
        """Parse configuration like :meth:`parse_config` and return just the data.

        Args:
            config_input: A mapping, a TOML document, or a path (``str`` or path-like).
            default: Returned instead of raising when anything goes wrong (any :class:`ConfigError`,
                including the validation error ``raise_on_invalid`` asks for). ``None`` means "no default".
            raise_on_invalid: Treat data rejected by the validators as an error. When false, invalid
                data is returned (and a warning logged).

        Returns:
            The parsed dict, or ``default``.

        Raises:
            ConfigParseError: The input cannot be parsed and no default was given.
            ConfigValidationError: ``raise_on_invalid`` is set, the data is invalid and no default was given.
        """
        try:
            parsed = self.parse_config(config_input)
            if raise_on_invalid and not parsed.is_valid:
                raise ConfigValidationError("Configuration validation failed: " + "; ".join(parsed.validation_errors or []))
            return parsed.data
        except ConfigError as exc:
            if default is None:
                raise
            self.logger.warning("Using the default configuration: %s", exc)
            return default

    # -- validation -----------------------------------------------------------------------------------

    def add_validator(self, validator: Validator) -> None:
        """Add a validator (see the module documentation for its contract).

        Args:
            validator: Callable taking the parsed dict and returning ``(is_valid, errors)`` or a bool.

        Raises:
            TypeError: ``validator`` is not callable.
        """
        if not callable(validator):
            raise TypeError(f"Validator must be callable, got {type(validator).__name__}")
        self.validators.append(validator)

    def validate_config(self, config: Dict[str, Any]) -> bool:
        """Check configuration against every validator.

        Args:
            config: Parsed configuration.

        Returns:
            True when it is a dict and every validator accepts it; the reasons are logged otherwise.
        """
        is_valid, errors = self._validate_config(config)
        if not is_valid:
            self.logger.warning("Configuration validation failed: %s", "; ".join(errors))
        return is_valid

    def _validate_config(self, config: Dict[str, Any]) -> Tuple[bool, List[str]]:
        """Run every validator and collect their messages.

        Args:
            config: Parsed configuration.

        Returns:
            ``(is_valid, errors)``.
        """
        if not isinstance(config, dict):
            return False, [f"Configuration must be a dict, got {type(config).__name__}"]
        errors: List[str] = []
        for validator in list(self.validators):
            try:
                result = validator(config)
            except Exception as exc:  # a broken validator must not break parsing
                errors.append(f"Validator error: {str(exc) or type(exc).__name__}")
                continue
            errors.extend(_interpret_result(validator, result))
        return not errors, errors

    # -- helpers --------------------------------------------------------------------------------------

    def _sanitize_path(self, file_path: PathInput) -> Path:
        """Turn user input into the absolute, resolved path of an existing regular file of at most 10 MiB.

        Args:
            file_path: A ``str`` or path-like object.

        Returns:
            The resolved path.

        Raises:
            ConfigParseError: Not a ``str``/path-like ("Unsupported input type"), empty, containing a NUL
                byte, impossible to resolve (e.g. a symlink loop), or naming something that "does not
                exist", is "not a file" (a directory, a FIFO, ...) or is "too large".
        """
        if not isinstance(file_path, (str, os.PathLike)):
            raise self._parse_error(f"Unsupported input type for a file path: {type(file_path).__name__}")
        raw = os.fspath(file_path)
        if not isinstance(raw, str):
            raise self._parse_error(f"Unsupported input type for a file path: {type(raw).__name__}")
        if not raw.strip():
            raise self._parse_error("Invalid file path: empty")
        if "\x00" in raw:
            raise self._parse_error("Invalid file path: contains a NUL byte")
        try:
            path = Path(raw).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop before Python 3.13
            raise self._parse_error(f"Invalid file path {raw!r}: {exc}") from None
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise self._parse_error(f"Configuration file does not exist: {path}") from None
        except PermissionError:
            raise self._parse_error(f"Permission denied: cannot access configuration file {path}") from None
        except OSError as exc:
            raise self._parse_error(f"Cannot access configuration file {path}: {exc}") from None
        self._check_regular_file(path, info)
        return path

    def _parse_toml_file(self, file_path: Path) -> Dict[str, Any]:
        """Read and parse a TOML file through the built-in :func:`open`.

        Whatever ``open`` raises decides the error: a ``PermissionError`` is "Permission denied", any other
        ``OSError`` is reported with its message. A path that can be examined beforehand is refused
        without being opened when it is not a regular file or is over the size limit.

        Args:
            file_path: The file (normally from :meth:`_sanitize_path`).

        Returns:
            The parsed document.

        Raises:
            ConfigParseError: See :meth:`parse_config_from_file`.
        """
        path = Path(file_path)
        try:
            info: Optional[os.stat_result] = os.stat(path)
        except OSError:  # open() below reports the problem, with its own reason
            info = None
        if info is not None:
            self._check_regular_file(path, info)
        content = self._read_limited(path)
        if isinstance(content, str):  # an open() replaced by one returning text
            return self._loads(content)
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise self._parse_error(f"Invalid TOML syntax: file is not valid UTF-8 (byte {exc.start})") from None
        return self._loads(text)

    def _parse_toml_string(self, config_string: str) -> Dict[str, Any]:
        """Parse a TOML string, checking its size first.

        Args:
            config_string: The TOML document.

        Returns:
            The parsed document.

        Raises:
            ConfigParseError: See :meth:`parse_config_from_string`.
        """
        if not isinstance(config_string, str):
            raise self._parse_error(f"Unsupported input type: expected a str, got {type(config_string).__name__}")
        # Every code point takes at least one byte: a long string is rejected without being encoded,
        # and one short enough to fit even at 4 bytes per code point is accepted without encoding.
        if len(config_string) > MAX_STRING_BYTES:
            raise self._parse_error(
                f"Configuration string is too large: at least {len(config_string)} bytes, limit {MAX_STRING_BYTES}")
        if len(config_string) * _MAX_UTF8_BYTES_PER_CHAR > MAX_STRING_BYTES:
            size = len(config_string.encode("utf-8", "surrogatepass"))
            if size > MAX_STRING_BYTES:
                raise self._parse_error(f"Configuration string is too large: {size} bytes, limit {MAX_STRING_BYTES}")
        return self._loads(config_string)

    def _check_file_size(self, path: Path, size: int) -> None:
        if size > MAX_FILE_BYTES:
            raise self._parse_error(f"Configuration file is too large: {path} has {size} bytes, limit {MAX_FILE_BYTES}")

    def _check_regular_file(self, path: Path, info: os.stat_result) -> None:
        if not stat.S_ISREG(info.st_mode):
            raise self._parse_error(f"Configuration path is not a file: {path}")
        self._check_file_size(path, info.st_size)

    def _read_limited(self, path: Path) -> Union[bytes, str]:
        """Read at most one byte past the limit, so a file growing after ``stat`` cannot exhaust memory."""
        try:
            with open(path, "rb", opener=_open_nonblocking) as handle:
                if not _is_regular(handle):
                    raise self._parse_error(f"Configuration path is not a file: {path}")
                content: Union[bytes, str] = handle.read(MAX_FILE_BYTES + 1)
        except PermissionError:
            raise self._parse_error(f"Permission denied: cannot read configuration file {path}") from None
        except IsADirectoryError:
            raise self._parse_error(f"Configuration path is not a file: {path}") from None
        except (FileNotFoundError, NotADirectoryError):
            raise self._parse_error(f"Configuration file does not exist: {path}") from None
        except OSError as exc:
            raise self._parse_error(f"Cannot read configuration file {path}: {exc}") from None
        self._check_file_size(path, len(content))
        return content

    def _loads(self, text: str) -> Dict[str, Any]:
        too_long = _longest_dotted_key(text)
        if too_long > MAX_KEY_PARTS:
            raise self._parse_error(
                f"Invalid TOML syntax: a key has {too_long} dotted parts, limit {MAX_KEY_PARTS}")
        try:
            data: Dict[str, Any] = toml_loads(text)
        except RecursionError:
            raise self._parse_error("Invalid TOML syntax: nesting too deep") from None
        except ValueError as exc:  # TOMLDecodeError, or int() refusing a number with too many digits
            raise self._parse_error(f"Invalid TOML syntax: {exc}") from None
        return data

    def _parse_error(self, message: str) -> ConfigParseError:
        self.logger.debug("Configuration not parsed: %s", message)
        return ConfigParseError(message)


def _open_nonblocking(path: str, flags: int) -> int:
    """``open()``'s opener: should the path have been swapped for a FIFO, opening must not hang."""
    return os.open(path, flags | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0))


def _is_regular(handle: Any) -> bool:
    """Whether an opened file is a regular file (True for a stand-in without a real descriptor)."""
    try:
        mode = os.fstat(handle.fileno()).st_mode
    except (AttributeError, TypeError, ValueError, io.UnsupportedOperation):
        return True
    return stat.S_ISREG(mode)


def _names_existing_path(text: str) -> bool:
    """Whether a string given to ``parse_config`` should be read as a path rather than TOML."""
    if not text or len(text) > _MAX_PATH_CHARS or "\n" in text or "\r" in text or "\x00" in text:
        return False
    return os.path.lexists(text)  # False, not an error, for unusable paths


def _interpret_result(validator: Validator, result: Any) -> List[str]:
    """The error messages a validator's return value stands for (empty when it accepted the data)."""
    name = getattr(validator, "__name__", type(validator).__name__)
    if isinstance(result, bool):
        return [] if result else [f"Validator '{name}' rejected the configuration"]
    if (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], bool)
            and isinstance(result[1], (list, tuple))):
        ok, messages = result
        if ok:
            return []
        return [str(m) for m in messages] or [f"Validator '{name}' rejected the configuration"]
    return [f"Validator error: {name} returned {type(result).__name__}, expected (bool, list of str) or bool"]


# Strings removed before looking for keys, so dots inside them do not count.
_STRING_LITERAL = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'')
_KEY_START = re.compile(r"[{,\[]")


def _longest_dotted_key(text: str) -> int:
    """The most dotted parts in one key or table header (a cheap over-estimate, scanning only suspect lines).

    TOML parsers' time and memory grow much faster than the number of parts of a dotted key
    (``a.a.a…`` of 10 KB takes ~100 MiB), so such keys are refused before parsing.
    """
    if text.count(".") < MAX_KEY_PARTS:
        return 0
    longest = 0
    for line in text.splitlines():
        if line.count(".") < MAX_KEY_PARTS:
            continue
        cleaned = _STRING_LITERAL.sub("s", line)
        # A key ends at "=" (key/value) or "]" (table header); it starts after "{", "," or "[" or at line start.
        for piece in re.split(r"[=\]]", cleaned)[:-1]:
            key = _KEY_START.split(piece)[-1]
            longest = max(longest, key.count(".") + 1)
    return longest
