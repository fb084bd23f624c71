"""MQTT Event Listener: turn an MQTT topic into a reliable job processor.

``from Listener import EventListener, EventListenerConfig`` then ``await listener.run(processor)``.
"""

from ._version import __version__
from .config.parser import ConfigSource, ParsedConfig, SafeConfigParser
from .config.settings import EventListenerConfig
from .errors import ConfigError, ConfigParseError, ConfigValidationError, ListenerError
from .event_listener import EventListener
from .jobs.records import JobInfo, JobStatus
from .ops.metrics import ListenerMetrics
from .ops.quiet_logs import quiet_third_party_loggers
from .processing.processors import JobTimeoutError, run_inline
from .results import ReturnType, create_error_result, create_return_type

# amqtt and transitions log every connection and state change at INFO: quiet unless configured
# (see Listener.ops.quiet_logs for turning them back on).
quiet_third_party_loggers()

__all__ = [
    "ConfigError",
    "ConfigParseError",
    "ConfigSource",
    "ConfigValidationError",
    "EventListener",
    "EventListenerConfig",
    "JobInfo",
    "JobStatus",
    "JobTimeoutError",
    "ListenerError",
    "ListenerMetrics",
    "ParsedConfig",
    "ReturnType",
    "SafeConfigParser",
    "__version__",
    "create_error_result",
    "create_return_type",
    "run_inline",
]
