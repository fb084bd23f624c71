"""EventListenerConfig: every setting of the listener, validated once, at construction."""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional
from urllib.parse import urlsplit

from ..core.redaction import (CERTIFICATE_DATA, MASK, SECRET_SETTINGS, mask_uri_credentials, shown_setting,
                              split_uri_credentials)
from ..core.topics import filter_error, share_group_error, topic_name_error
from ..errors import ConfigError
from ..jobs.factory import MEMORY, job_store_problem

__all__ = ["ACK_POLICIES", "EventListenerConfig", "CERTIFICATE_DATA", "DUPLICATE_ACTIONS", "LOG_LEVELS",
           "MIN_TOKEN_CHARS", "MAX_PAYLOAD_BYTES", "MAX_RETRIES", "MAX_RETRY_DELAY", "OptionKind",
           "PUBLIC_DEFAULT_PASSWORD", "SECTION_NAME", "describe_unknown_keys", "environment_variables", "http_token",
           "option_kinds"]

DUPLICATE_ACTIONS = ("skip", "reprocess", "error")
ACK_POLICIES = ("after_processing", "after_recording", "on_receipt")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_CONCURRENT_JOBS = 10_000
MAX_KEEP_ALIVE = 65535
#: Most own publications in flight (their packet ids come from a block of 1,024: see Listener.mqtt.wire_handler).
MAX_INFLIGHT_PUBLICATIONS = 1000
#: Most retries of one job (``max_retries``).
MAX_RETRIES = 100
#: Longest wait, in seconds, before a retry: the cap of the doubling delays and the most ``retry_backoff`` may be.
MAX_RETRY_DELAY = 300.0
_URI_SCHEMES = ("mqtt", "mqtts", "ws", "wss")
# Environment variable names the manual uses that are not simply PREFIX + FIELD.
_ENV_ALIASES = {"CA_FILE": "cafile", "CA_PATH": "capath", "CA_DATA": "cadata"}
_CONFIG_FILE_LIMIT = 10 * 1024 * 1024


@dataclass(frozen=True, repr=False)
class EventListenerConfig:
    """Unified configuration for the MQTT Event Listener.

    Every field has a default, so ``EventListenerConfig()`` is valid. Invalid values raise
    :class:`~Listener.errors.ConfigError` (a ``ValueError``) naming the field and the value.
    ``repr()`` and ``str()`` never show the password or URI credentials.

    Credentials: user name and password in an explicit ``uri`` win. Otherwise an empty or None
    ``username`` means no credentials at all (the default password is then not sent either), and
    any other password without a username is a ``ConfigError``: MQTT 3.1.1 forbids it.
    """

    # Connection
    host: str = "localhost"
    port: int = 1883
    client_id: str = "event-listener"
    username: Optional[str] = "test"
    password: Optional[str] = "test"
    uri: Optional[str] = None
    # TLS
    cafile: Optional[str] = None
    capath: Optional[str] = None
    cadata: Optional[str] = None
    additional_headers: Optional[Dict[str, Any]] = None
    # MQTT client
    keep_alive: int = 10
    ping_delay: int = 1
    default_qos: int = 0
    default_retain: bool = False
    auto_reconnect: bool = True
    connect_timeout: Optional[float] = None
    reconnect_retries: int = 2
    reconnect_max_interval: float = 10
    cleansession: bool = True
    # Topics
    topic: str = "test"
    qos: int = 0
    retain: bool = False
    error_topic: str = "test/error"
    log_topic: str = "test/log"
    results_topic: str = "test/results"
    # Advanced
    will: Optional[Dict[str, Any]] = None
    custom_topics: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # Job tracking
    max_jobs_in_memory: int = 5000
    job_cleanup_interval: float = 259200
    job_id_field: str = "job_id"
    allow_job_id_generation: bool = False
    duplicate_action: str = "skip"
    # Beyond the first release (each with a default, after the documented fields)
    log_topic_level: str = "WARNING"
    certfile: Optional[str] = None
    keyfile: Optional[str] = None
    tls_check_hostname: bool = True
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    shutdown_grace_period: float = 30.0
    max_concurrent_jobs: int = 1
    job_timeout: Optional[float] = None
    http_host: str = "127.0.0.1"
    http_port: Optional[int] = None
    #: The dashboard's token (``MQTT_HTTP_TOKEN``); never shown, never accepted on the command line.
    http_token: Optional[str] = None
    #: A file holding the dashboard's token (its first line), instead of ``http_token``.
    http_token_file: Optional[str] = None
    keep_job_input: bool = False
    max_retries: int = 0
    retry_backoff: float = 1.0
    #: ``"memory"``, or ``"sqlite:///jobs.db"`` (relative path) / ``"sqlite:////abs/jobs.db"`` (absolute).
    job_store: str = "memory"
    #: When a QoS 1/2 message is acknowledged: ``"after_processing"`` (its job finished), ``"after_recording"``
    #: (its job recorded with its input in a durable ``job_store``) or ``"on_receipt"`` (queued).
    ack_policy: str = "after_processing"
    #: Messages queued or awaiting their acknowledgement at most (and 64 MiB of queued payloads). A message past
    #: it is held in its wire form, up to 4 MiB, then the listener stops reading and the broker keeps the rest.
    #: A QoS 0 message is dropped and counted (``messages_dropped``) only when those 4 MiB are full while the
    #: listener must read on for an acknowledgement it awaits (a sustained overload); QoS 1/2 ones never are.
    max_pending_messages: int = 10_000
    #: Subscribe as ``$share/<share_group>/<filter>``: listeners of one group split the messages (None: not shared).
    share_group: Optional[str] = None
    #: The listener's own QoS 1/2 publications (results, events) awaiting the broker's acknowledgement at once.
    max_inflight_publications: int = 20

    def __post_init__(self) -> None:
        for check in _CHECKS:
            check(self)
        if self.uri is None:
            object.__setattr__(self, "uri", self._generated_uri())

    # -- derived values -------------------------------------------------------------------------

    @property
    def uses_tls(self) -> bool:
        """True when any TLS option is set or the URI scheme is secure."""
        if self.uri and self.uri.split("://", 1)[0] in ("mqtts", "wss"):
            return True
        return any(v is not None for v in (self.cafile, self.capath, self.cadata, self.certfile))

    def _generated_uri(self) -> str:
        scheme = "mqtts" if self.uses_tls else "mqtt"
        host = self.host
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
        return f"{scheme}://{host}:{self.port}"

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.redacted_dict().items())
        return f"{type(self).__name__}({shown})"

    __str__ = __repr__

    def redacted_dict(self) -> Dict[str, Any]:
        """All settings as a dict, safe to log or print: the password and URI credentials masked,
        certificate data replaced by ``"<certificate data>"``."""
        return {f.name: shown_setting(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)}

    # -- alternative constructors ---------------------------------------------------------------

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of every configuration option, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **explicit: Any) -> "EventListenerConfig":
        """Load settings from a TOML or JSON file; keyword arguments override the file.

        Unknown keys are an error, so a typo in a file never silently falls back to a default.
        """
        values = _read_config_file(Path(path))
        values.update(explicit)
        return cls(**values)

    @classmethod
    def from_env(
        cls,
        prefix: str = "MQTT_",
        *,
        config_file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        **explicit: Any,
    ) -> "EventListenerConfig":
        """Build a config with the manual's precedence: explicit > environment > file > default.

        Each option ``name`` is read from ``{prefix}{NAME}`` (``MQTT_HOST``, ``MQTT_PORT``, ...);
        the manual's ``MQTT_CA_FILE`` also works. Values are converted to the option's type.
        """
        values: Dict[str, Any] = _read_config_file(Path(config_file)) if config_file is not None else {}
        values.update(_read_environment(prefix, os.environ if environ is None else environ))
        values.update(explicit)
        return cls(**values)


#: The manual's default password: public knowledge. It is not sent without a username, so that
#: ``username = ""`` alone means an anonymous connection.
PUBLIC_DEFAULT_PASSWORD: Optional[str] = EventListenerConfig.password  # the field's default


# -- validation ---------------------------------------------------------------------------------


#: The shortest dashboard token accepted.
MIN_TOKEN_CHARS = 16


def http_token(cfg: "EventListenerConfig") -> Optional[str]:
    """The dashboard's token: ``http_token``, or the first line of ``http_token_file``; None when neither is set.

    Raises:
        ConfigError: the file cannot be read, or holds a token shorter than :data:`MIN_TOKEN_CHARS` (the message
            names the file, never its content).
    """
    if cfg.http_token_file is None:
        return cfg.http_token.strip() if cfg.http_token else None
    try:
        with open(cfg.http_token_file, encoding="utf-8") as handle:
            token = handle.readline(4096).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Invalid http_token_file: {cfg.http_token_file!r} (cannot be read: "
                          f"{getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"Invalid http_token_file: {cfg.http_token_file!r} (its first line must hold a token of at "
                          f"least {MIN_TOKEN_CHARS} characters)")
    return token


def _fail(name: str, value: Any, why: str) -> ConfigError:
    if name in SECRET_SETTINGS:
        shown = MASK
    else:
        # repr first: it escapes line breaks, which would otherwise end the URI the masking sees.
        shown = mask_uri_credentials(repr(shown_setting(name, value)))
    return ConfigError(f"Invalid {name}: {shown} ({why})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _check_types(cfg: EventListenerConfig) -> None:
    for name in ("host", "client_id", "topic", "error_topic", "log_topic", "results_topic", "job_id_field",
                 "duplicate_action", "log_topic_level", "http_host", "job_store", "ack_policy"):
        value = getattr(cfg, name)
        if not isinstance(value, str):
            raise _fail(name, value, f"must be a string, got {type(value).__name__}")
    for name in ("username", "password", "uri", "cafile", "capath", "cadata", "certfile", "keyfile", "share_group"):
        value = getattr(cfg, name)
        if value is not None and not isinstance(value, str):
            raise _fail(name, value, f"must be a string or None, got {type(value).__name__}")
    for name in ("default_retain", "auto_reconnect", "cleansession", "retain", "allow_job_id_generation",
                 "tls_check_hostname", "keep_job_input"):
        value = getattr(cfg, name)
        if not isinstance(value, bool):
            raise _fail(name, value, f"must be true or false, got {type(value).__name__}")
    if cfg.additional_headers is not None and not isinstance(cfg.additional_headers, dict):
        raise _fail("additional_headers", cfg.additional_headers, "must be a dict or None")


def _check_connection(cfg: EventListenerConfig) -> None:
    if not cfg.host.strip():
        raise _fail("host", cfg.host, "must not be empty")
    if not _is_int(cfg.port) or not 1 <= cfg.port <= 65535:
        raise ConfigError(f"Invalid port number: {cfg.port!r} (must be an integer from 1 to 65535)")
    if not cfg.client_id:
        raise _fail("client_id", cfg.client_id, "must not be empty")
    if cfg.uri is not None:
        _check_uri(cfg.uri)
    if (cfg.certfile is None) != (cfg.keyfile is None):
        raise _fail("certfile" if cfg.keyfile is None else "keyfile", cfg.certfile or cfg.keyfile,
                    "certfile and keyfile must be given together")


def _check_uri(uri: str) -> None:
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in _URI_SCHEMES or not rest:
        raise _fail("uri", uri, f"must look like mqtt://host:port; schemes: {', '.join(_URI_SCHEMES)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in uri):
        raise _fail("uri", uri, "must not contain control characters such as line breaks or tabs")
    userinfo = rest.rpartition("@")[0]
    if any(c in userinfo for c in "/?#"):
        # urllib ends the host at the first '/', '?' or '#': the password would become host and path.
        raise _fail("uri", uri, "the user name or password holds '/', '?' or '#': percent-encode them "
                                "(%2F, %3F, %23), or set username and password instead")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:  # urllib's message quotes parts of the URI, which may be parts of the password
        raise _fail("uri", uri, "malformed: the port must be a number and an IPv6 address needs [brackets]") from None
    if not parts.hostname:
        raise _fail("uri", uri, "has no host")
    if port is not None and not 1 <= port <= 65535:
        raise _fail("uri", uri, "port must be from 1 to 65535")


def _check_credentials(cfg: EventListenerConfig) -> None:
    """A password needs a user name (MQTT 3.1.1 §3.1.2.9; Mosquitto closes the connection without a CONNACK)."""
    if cfg.uri is not None:
        _, uri_user, uri_password = split_uri_credentials(cfg.uri)
        if uri_user is None and uri_password:
            raise _fail("uri", cfg.uri, "has a password but no user name; MQTT does not allow a password without "
                                        "a user name: add the user name, or remove the password")
        if uri_user is not None:
            return  # the uri's credentials are sent, username and password are not
    if not cfg.username and cfg.password and cfg.password != PUBLIC_DEFAULT_PASSWORD:
        raise ConfigError(f"Invalid password: {MASK} (a password without a username: MQTT does not allow it; "
                          f"set username as well, or leave password unset to connect without credentials)")


def _check_timing(cfg: EventListenerConfig) -> None:
    for name in ("keep_alive", "ping_delay"):
        value = getattr(cfg, name)
        if not _is_int(value) or value <= 0:
            raise _fail(name, value, "must be a whole number of seconds > 0")
    if cfg.keep_alive > MAX_KEEP_ALIVE:
        # MQTT carries the keep-alive in two bytes; a larger value makes every CONNECT fail to encode.
        raise _fail("keep_alive", cfg.keep_alive, f"must be at most {MAX_KEEP_ALIVE} seconds (MQTT limit)")
    if cfg.ping_delay >= cfg.keep_alive:
        raise _fail("ping_delay", cfg.ping_delay, f"must be smaller than keep_alive ({cfg.keep_alive})")
    for name in ("reconnect_max_interval", "job_cleanup_interval", "shutdown_grace_period"):
        value = getattr(cfg, name)
        if not _is_number(value) or value <= 0:
            raise _fail(name, value, "must be a number > 0")
    if cfg.connect_timeout is not None and (not _is_number(cfg.connect_timeout) or cfg.connect_timeout <= 0):
        raise _fail("connect_timeout", cfg.connect_timeout, "must be a number > 0 or None")
    if not _is_int(cfg.reconnect_retries):
        raise _fail("reconnect_retries", cfg.reconnect_retries, "must be an integer; negative retries forever")


def _qos_error(value: Any) -> bool:
    return not _is_int(value) or value not in (0, 1, 2)


def _check_qos(cfg: EventListenerConfig) -> None:
    for name in ("qos", "default_qos"):
        value = getattr(cfg, name)
        if _qos_error(value):
            raise ConfigError(f"Invalid QoS value: {value!r} for {name} (must be 0, 1 or 2)")


def _check_topics(cfg: EventListenerConfig) -> None:
    problem = filter_error(cfg.topic)
    if problem:
        raise _fail("topic", cfg.topic, f"topic filter {problem}")
    for name in ("error_topic", "log_topic", "results_topic"):
        value = getattr(cfg, name)
        if name == "log_topic" and value == "":
            continue  # an empty log_topic turns log events off
        problem = topic_name_error(value)
        if problem:
            raise _fail(name, value, f"publish topic {problem}")
    if not isinstance(cfg.custom_topics, dict):
        raise _fail("custom_topics", cfg.custom_topics, "must be a dict of {topic filter: {qos, retain}}")
    for topic_filter, options in cfg.custom_topics.items():
        label = f"custom_topics[{topic_filter!r}]"
        problem = filter_error(topic_filter)
        if problem:
            raise _fail(label, topic_filter, f"topic filter {problem}")
        if not isinstance(options, dict):
            raise _fail(label, options, "must be a dict with optional keys qos and retain")
        unknown = set(options) - {"qos", "retain"}
        if unknown:
            raise _fail(label, sorted(unknown), "unknown keys; allowed: qos, retain")
        if _qos_error(options.get("qos", 0)):
            raise ConfigError(f"Invalid QoS value: {options.get('qos')!r} for {label} (must be 0, 1 or 2)")
        if not isinstance(options.get("retain", False), bool):
            raise _fail(label + "['retain']", options.get("retain"), "must be true or false")


def _check_share_group(cfg: EventListenerConfig) -> None:
    if cfg.share_group is None:
        return
    problem = share_group_error(cfg.share_group)
    if problem:
        raise _fail("share_group", cfg.share_group, problem)
    for label, topic_filter in [("topic", cfg.topic)] + [(f"custom_topics[{f!r}]", f) for f in cfg.custom_topics]:
        if topic_filter.startswith("$share/"):
            raise _fail(label, topic_filter, "already has a $share/ prefix; with share_group set, give the plain filter")


def _check_will(cfg: EventListenerConfig) -> None:
    will = cfg.will
    if will is None:
        return
    if not isinstance(will, dict):
        raise _fail("will", will, "must be a dict with topic and message")
    unknown = set(will) - {"topic", "message", "qos", "retain"}
    if unknown:
        raise _fail("will", sorted(unknown), "unknown keys; allowed: topic, message, qos, retain")
    for key in ("topic", "message"):
        if key not in will:
            raise _fail("will", sorted(will), f"needs a {key!r}")
    if topic_name_error(will["topic"]):
        raise _fail("will['topic']", will["topic"], f"publish topic {topic_name_error(will['topic'])}")
    if not isinstance(will["message"], (str, bytes)):
        raise _fail("will['message']", will["message"], "must be a string")
    if _qos_error(will.get("qos", 0)):
        raise ConfigError(f"Invalid QoS value: {will.get('qos')!r} for will (must be 0, 1 or 2)")
    if not isinstance(will.get("retain", False), bool):
        raise _fail("will['retain']", will.get("retain"), "must be true or false")


def _check_jobs(cfg: EventListenerConfig) -> None:
    if not _is_int(cfg.max_jobs_in_memory) or cfg.max_jobs_in_memory <= 0:
        raise _fail("max_jobs_in_memory", cfg.max_jobs_in_memory, "must be an integer > 0")
    if not cfg.job_id_field:
        raise _fail("job_id_field", cfg.job_id_field, "must not be empty")
    if cfg.duplicate_action not in DUPLICATE_ACTIONS:
        raise _fail("duplicate_action", cfg.duplicate_action, f"must be one of {', '.join(DUPLICATE_ACTIONS)}")
    if cfg.log_topic_level.upper() not in LOG_LEVELS:
        raise _fail("log_topic_level", cfg.log_topic_level, f"must be one of {', '.join(LOG_LEVELS)}")
    if not _is_int(cfg.max_payload_bytes) or not 0 < cfg.max_payload_bytes <= MAX_PAYLOAD_BYTES:
        # The TOML parser refuses strings over 1 MiB, so a larger limit could never be honoured.
        raise _fail("max_payload_bytes", cfg.max_payload_bytes, f"must be an integer from 1 to {MAX_PAYLOAD_BYTES}")
    if not _is_int(cfg.max_concurrent_jobs) or not 1 <= cfg.max_concurrent_jobs <= MAX_CONCURRENT_JOBS:
        raise _fail("max_concurrent_jobs", cfg.max_concurrent_jobs, f"must be an integer from 1 to {MAX_CONCURRENT_JOBS}")
    if cfg.job_timeout is not None and (not _is_number(cfg.job_timeout) or cfg.job_timeout <= 0):
        raise _fail("job_timeout", cfg.job_timeout, "must be a number > 0, or None for no limit")
    if cfg.http_port is not None and (not _is_int(cfg.http_port) or not 0 <= cfg.http_port <= 65535):
        raise _fail("http_port", cfg.http_port, "must be an integer from 0 to 65535 (0 = any free port), or None")
    if not cfg.http_host:
        raise _fail("http_host", cfg.http_host, "must be a host name or address")
    if cfg.http_token is not None and (not isinstance(cfg.http_token, str) or len(cfg.http_token.strip()) < MIN_TOKEN_CHARS):
        raise _fail("http_token", cfg.http_token, f"must be a string of at least {MIN_TOKEN_CHARS} characters")
    if cfg.http_token_file is not None and (not isinstance(cfg.http_token_file, str) or not cfg.http_token_file):
        raise _fail("http_token_file", cfg.http_token_file, "must be the path of a file holding the token")
    if cfg.http_token is not None and cfg.http_token_file is not None:
        raise _fail("http_token_file", cfg.http_token_file, "set http_token or http_token_file, not both")
    problem = job_store_problem(cfg.job_store)
    if problem:
        raise _fail("job_store", cfg.job_store, problem)
    if cfg.ack_policy not in ACK_POLICIES:
        raise _fail("ack_policy", cfg.ack_policy, f"must be one of {', '.join(ACK_POLICIES)}")
    if cfg.ack_policy == "after_recording" and cfg.job_store == MEMORY:
        raise _fail("ack_policy", cfg.ack_policy,
                    "after_recording needs a durable job_store (sqlite:/// or redis://); the memory store forgets "
                    "an acknowledged job with its process")
    if not _is_int(cfg.max_pending_messages) or cfg.max_pending_messages <= 0:
        raise _fail("max_pending_messages", cfg.max_pending_messages, "must be an integer > 0")
    if not _is_int(cfg.max_inflight_publications) or not 1 <= cfg.max_inflight_publications <= MAX_INFLIGHT_PUBLICATIONS:
        raise _fail("max_inflight_publications", cfg.max_inflight_publications,
                    f"must be an integer from 1 to {MAX_INFLIGHT_PUBLICATIONS}")


def _check_retries(cfg: EventListenerConfig) -> None:
    if not _is_int(cfg.max_retries) or not 0 <= cfg.max_retries <= MAX_RETRIES:
        raise _fail("max_retries", cfg.max_retries, f"must be an integer from 0 (no retries) to {MAX_RETRIES}")
    if not _is_number(cfg.retry_backoff) or not 0 <= cfg.retry_backoff <= MAX_RETRY_DELAY:
        raise _fail("retry_backoff", cfg.retry_backoff,
                    f"must be a number of seconds from 0 (retry at once) to {MAX_RETRY_DELAY:g}")


_CHECKS = (_check_types, _check_connection, _check_credentials, _check_timing, _check_qos, _check_topics,
           _check_share_group, _check_will, _check_jobs, _check_retries)


# -- reading files and the environment ------------------------------------------------------------


def _read_config_file(path: Path) -> Dict[str, Any]:
    """Read a TOML or JSON settings file (chosen by suffix; TOML otherwise) into a dict of known options."""
    from .parser import SafeConfigParser  # the parser module imports nothing from here

    if path.suffix.lower() == ".json":
        try:
            if path.stat().st_size > _CONFIG_FILE_LIMIT:
                raise ConfigError(f"Configuration file {path} is too large (over {_CONFIG_FILE_LIMIT} bytes)")
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"Configuration file {path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"Cannot read configuration file {path}: {exc}") from None
    else:
        data = SafeConfigParser().parse_config_from_file(str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"Configuration file {path} must hold a table/object of options")
    data = _unwrap_section(data, path)
    unknown = sorted(set(data) - set(EventListenerConfig.field_names()))
    if unknown:
        raise ConfigError(f"Unknown option(s) in {path}: {describe_unknown_keys(unknown)}")
    return dict(data)


#: A table of this name holds the options, as many projects lay out their files ([mqtt] host = ...).
SECTION_NAME = "mqtt"


def _unwrap_section(data: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """The options of a file: its top level, plus those of an ``[mqtt]`` table when it has one."""
    section = data.get(SECTION_NAME)
    if not isinstance(section, dict):
        return data
    options = {key: value for key, value in data.items() if key != SECTION_NAME}
    twice = sorted(set(options) & set(section))
    if twice:
        raise ConfigError(f"Option(s) set both at the top level and in the [{SECTION_NAME}] table of {path}: "
                          f"{', '.join(twice)}")
    options.update(section)
    return options


def describe_unknown_keys(names: Iterable[str]) -> str:
    """``'prot' (did you mean 'port'?), 'x'``: unknown option names with the closest known one, if any."""
    known = list(EventListenerConfig.field_names())
    described = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        described.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ", ".join(described)


@dataclass(frozen=True)
class OptionKind:
    """What one option holds, read from :class:`EventListenerConfig`'s type hints."""

    #: The value's type without ``Optional``: ``str``, ``int``, ``float``, ``bool`` or ``dict``.
    type: type
    #: True when None is a valid value (``Optional[...]``).
    optional: bool


def _kind_of(hint: Any) -> OptionKind:
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        (hint,) = [arg for arg in args if arg is not type(None)]
    return OptionKind(typing.get_origin(hint) or hint, optional)


_OPTION_KINDS: Mapping[str, OptionKind] = types.MappingProxyType(
    {name: _kind_of(hint) for name, hint in typing.get_type_hints(EventListenerConfig).items()
     if name in EventListenerConfig.field_names()})


def option_kinds() -> Mapping[str, OptionKind]:
    """``{option: OptionKind}`` for every option, in declaration order (computed once, from the type hints)."""
    return _OPTION_KINDS


_KIND_WORDS = {bool: "true/false", int: "an integer", float: "a number", dict: "a JSON object"}
_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _convert(name: str, kind: type, raw: str, variable: str) -> Any:
    try:
        if kind is bool:
            return _BOOL_WORDS[raw.strip().lower()]
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is dict:
            return json.loads(raw)
    except (KeyError, ValueError):
        shown = MASK if name in SECRET_SETTINGS else repr(raw)
        raise ConfigError(f"Invalid {variable}: {shown} (expected {_KIND_WORDS[kind]} for {name})") from None
    return raw


def _read_environment(prefix: str, environ: Mapping[str, str]) -> Dict[str, Any]:
    values: Dict[str, Any] = {}
    for name, variable in environment_variables(prefix, environ).items():
        values[name] = _convert(name, _OPTION_KINDS[name].type, environ[variable], variable)
    return values


def environment_variables(prefix: str = "MQTT_", environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Which option each set ``{prefix}…`` variable supplies to :meth:`EventListenerConfig.from_env`: {option: variable}."""
    environ = os.environ if environ is None else environ
    names = {name.upper(): name for name in EventListenerConfig.field_names()}
    names.update(_ENV_ALIASES)
    return {name: prefix + suffix for suffix, name in names.items() if prefix + suffix in environ}
