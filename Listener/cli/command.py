"""The ``mqtt-listener`` command (also ``python -m Listener``): run a processor as a service, check a
configuration file, publish one job.

    mqtt-listener run myapp.jobs:process --config listener.toml --set port=1884 --log-format json
    mqtt-listener check-config listener.toml
    mqtt-listener publish --topic jobs --data 'job_id = "task-1"'

Settings follow the library's precedence: ``--set`` (and the publish connection options) > ``MQTT_*``
environment variables > ``--config`` file > defaults. Exit codes: 0 success, 1 failure at run time
(broker unreachable or refusing, ``run`` ended by an error or by a second signal, invalid file for
``check-config``, or a ``share_group`` its broker does not apply), 2 usage error (bad arguments, invalid
configuration, a processor that cannot be imported or that calls ``sys.exit()`` on import, an invalid TOML
payload, a ``share_group`` the broker of ``run`` does not apply); 128 + N when ``run`` had to be ended
``FORCED_EXIT_AFTER`` seconds after a second signal N (143 for SIGTERM, 130 for SIGINT).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import difflib
import ipaddress
import json
import logging
import math
import os
import pkgutil
import re
import sys
import uuid
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, TextIO, Tuple
from urllib.parse import urlsplit

import tomli
import tomli_w

from .._version import __version__
from ..config.checks import config_warnings, file_problems
from ..config.parser import SafeConfigParser
from ..config.settings import LOG_LEVELS, EventListenerConfig, environment_variables, http_token, option_kinds
from ..core.redaction import mask_secrets, shown_setting
from ..core.topics import topic_name_error
from ..errors import ConfigError
from ..jobs.factory import check_job_store
from ..ops.json_logging import LOG_FORMATS, configure_logging
from ..ops.quiet_logs import restore_third_party_loggers
from ..processing.processors import describe_exception
from .exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliError

__all__ = ["CliError", "EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "build_parser", "load_config", "load_processor",
           "main", "parse_overrides", "parse_set_value", "render_settings"]

logger = logging.getLogger("Listener.cli")

PROG = "mqtt-listener"
PUBLISH_TIMEOUT = 10.0
BROKER_SHUTDOWN_TIMEOUT = 10.0
DISCONNECT_TIMEOUT = 5.0
#: Longest ``check-config`` waits to connect to the broker (less when ``connect_timeout`` is shorter).
CHECK_CONNECT_TIMEOUT = 5.0
#: Seconds after a second SIGTERM/SIGINT before the process is ended with os._exit if still running.
FORCED_EXIT_AFTER = 5.0
#: Most processes ``run --workers`` starts.
MAX_WORKERS = 64

Processor = Callable[..., Any]
#: Runs beside the listener while it serves (a ``--workers`` child reports its status with one); cancelled at the end.
Companion = Callable[[Any], Awaitable[None]]

EPILOG = """\
settings (the first that sets an option wins):
  --set KEY=VALUE / --unset KEY    any EventListenerConfig option (host, port, topic, username, ...)
  MQTT_<KEY> environment variables MQTT_HOST, MQTT_PORT, MQTT_PASSWORD, MQTT_CA_FILE, MQTT_HTTP_PORT, ...
  --config FILE                    TOML (options at the top level or in an [mqtt] table), or .json
  defaults                         localhost:1883, user/password test/test, topic "test"

examples:
  mqtt-listener check-config listener.toml --with-env
  mqtt-listener run myapp.jobs:process --config listener.toml --log-format json
  mqtt-listener run myapp.jobs:process --embedded-broker --unset username --unset password
  mqtt-listener run myapp.jobs:process --config listener.toml --workers 4
  mqtt-listener publish --topic test --data 'job_id = "task-001"'

exit codes: 0 success; 1 failure at run time (broker unreachable or refusing, invalid file for
check-config); 2 usage error (bad arguments, invalid configuration, processor not importable, a
share_group the broker does not apply).
Each command has its own --help (mqtt-listener run --help).
"""


# -- arguments --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mqtt-listener`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Run an MQTT event listener as a service, check its configuration, publish jobs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="connect, process jobs with a processor until SIGTERM/SIGINT",
                              description="Connect to the broker and process jobs until SIGTERM or SIGINT; the job "
                                          "in flight finishes first. A second signal stops at once.")
    run.add_argument("processor", metavar="MODULE:FUNCTION",
                     help="the processor to call, e.g. myapp.jobs:process (the current directory is importable)")
    _add_config_options(run)
    run.add_argument("--embedded-broker", action="store_true",
                     help="start amqtt's broker in this process on the configured (loopback) host and port")
    run.add_argument("--workers", type=_worker_count, default=1, metavar="N",
                     help="run N listener processes in one shared subscription group, restarted when they die "
                          "(default 1: this process only)")
    run.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                     help="log lines as text (default) or one JSON object per line")
    run.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default="INFO", metavar="LEVEL",
                     help=f"lowest level logged: {', '.join(LOG_LEVELS)} (default INFO)")

    check = commands.add_parser("check-config", help="validate a configuration file and print the effective settings",
                                description="Validate a TOML or JSON configuration file and print every setting "
                                            "(secrets hidden). Exits 1 when the file is invalid. With share_group "
                                            "set, it also connects to the broker and checks that it applies shared "
                                            "subscriptions (exit 1 when it does not; a broker it cannot reach is a "
                                            "warning).")
    check.add_argument("file", metavar="FILE", help="the configuration file (TOML, or JSON by its .json suffix)")
    check.add_argument("--format", choices=("toml", "json"), default="toml", dest="output_format",
                       help="print the settings as TOML lines (default) or as one JSON object")
    check.add_argument("--with-env", action="store_true",
                       help="also apply MQTT_* environment variables, as `run` does")

    publish = commands.add_parser("publish", help="send one TOML job message",
                                  description="Validate a TOML payload locally, then publish it once. "
                                              "Connection settings come from --config, MQTT_* variables and options.")
    publish.add_argument("--topic", "-t", required=True, help="topic to publish to")
    payload = publish.add_mutually_exclusive_group(required=True)
    payload.add_argument("--file", "-f", metavar="FILE", help="read the TOML payload from FILE ('-' for stdin)")
    payload.add_argument("--data", "-d", metavar="TOML", help="the TOML payload itself")
    publish.add_argument("--qos", "-q", type=int, choices=(0, 1, 2), default=1,
                         help="QoS of the message (default 1: exit 0 means the broker acknowledged it)")
    publish.add_argument("--retain", action="store_true", help="set the retain flag")
    publish.add_argument("--host", help="broker host (overrides the config and MQTT_HOST)")
    publish.add_argument("--port", type=int, help="broker port (overrides the config and MQTT_PORT)")
    publish.add_argument("--username", "-u", help="user name (overrides the config and MQTT_USERNAME)")
    publish.add_argument("--password", "-P",
                         help="password (prefer MQTT_PASSWORD: arguments are visible to other local users)")
    publish.add_argument("--client-id", help="MQTT client id (default: a unique mqtt-listener-publish-… id)")
    publish.add_argument("--timeout", type=float, default=PUBLISH_TIMEOUT,
                         help=f"seconds to wait for the connection and the acknowledgement (default {PUBLISH_TIMEOUT:g})")
    _add_config_options(publish)
    return parser


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_WORKERS}, got {text!r}")
    return count


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", help="configuration file (TOML, or JSON by its suffix)")
    parser.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="set one option; VALUE is read as TOML (1884, true, 2.5, [..], {..}) or else as text; "
                             "repeatable")
    parser.add_argument("--unset", action="append", default=[], metavar="KEY",
                        help="set an optional option to None (e.g. --unset username --unset password); repeatable")


def parse_set_value(name: str, raw: str) -> Any:
    """The value of ``--set name=raw``: parsed as a TOML value, or the raw text when that fails.

    Text options (``topic``, ``client_id``, ``password``, …) keep the text as typed when it parses as
    something else (``--set client_id=123`` is the string ``"123"``); a quoted TOML string is unquoted.
    """
    try:
        value = tomli.loads(f"v = {raw}")["v"]
    except (tomli.TOMLDecodeError, KeyError):
        return raw
    kind = option_kinds().get(name)
    if kind is not None and kind.type is str and not isinstance(value, str):
        return raw
    return value


#: Options never taken from ``--set``: secrets whose value would be visible in the process list.
COMMAND_LINE_REFUSED = frozenset({"http_token"})


def parse_overrides(assignments: Sequence[str], unset: Sequence[str] = ()) -> Dict[str, Any]:
    """Turn ``--set KEY=VALUE`` and ``--unset KEY`` options into keyword arguments for the config.

    Dashes in keys are accepted for underscores. Raises :class:`CliError` (exit 2) naming every
    unknown key, or a ``--set`` without ``=``.
    """
    kinds = option_kinds()
    values: Dict[str, Any] = {}
    unknown: List[str] = []
    for item in assignments:
        key, sep, raw = item.partition("=")
        name = key.strip().replace("-", "_")
        if not sep or not name:
            raise CliError(f"--set expects KEY=VALUE, got {mask_secrets(item)!r}")
        if name not in kinds:
            unknown.append(name)
            continue
        if name in COMMAND_LINE_REFUSED:
            raise CliError(f"--set {name}: not accepted on the command line (every user of this machine can read it "
                           f"in the process list); set MQTT_HTTP_TOKEN, or http_token_file")
        values[name] = parse_set_value(name, raw.strip())
    for key in unset:
        name = key.strip().replace("-", "_")
        if name not in kinds:
            unknown.append(name)
        elif not kinds[name].optional:
            raise CliError(f"--unset {name}: this option cannot be None (it has to have a value)")
        else:
            values[name] = None
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(kinds), n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise CliError(f"unknown configuration key(s): {', '.join(hints)}. "
                       f"Valid keys are the EventListenerConfig fields, e.g. host, port, topic, results_topic.")
    return values


def load_config(config_file: Optional[str], overrides: Dict[str, Any],
                environ: Optional[Dict[str, str]] = None) -> EventListenerConfig:
    """``EventListenerConfig.from_env(config_file=…, **overrides)``; an invalid setting is a :class:`CliError`."""
    try:
        config = EventListenerConfig.from_env(config_file=config_file, environ=environ, **overrides)
        if config.http_port is not None:
            http_token(config)  # an unreadable token file is a usage error, before anything starts
        return config
    except ConfigError as exc:
        raise CliError(f"invalid configuration: {exc}") from None


def load_processor(spec: str) -> Processor:
    """Import ``package.module:function`` (or ``module:object.method``) and return the callable.

    The current directory is importable, as with ``python -m``. Raises :class:`CliError` (exit 2).
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CliError(f"processor must look like package.module:function, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target = pkgutil.resolve_name(spec)
    except ValueError:  # not dotted names (resolve_name's format check)
        raise CliError(f"processor must look like package.module:function, got {spec!r}") from None
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CliError(f"cannot import processor module {module_name!r}: no module named {exc.name!r} "
                           f"(is it on PYTHONPATH or in the current directory?)") from None
        raise CliError(f"importing processor module {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    except AttributeError as exc:
        if module_name in sys.modules:  # imported: the attribute path is what is missing
            raise CliError(f"processor {spec!r} not found: {module_name!r} has no attribute {attribute!r}") from None
        raise CliError(f"importing processor module {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # the module's own code failed: show why, without a traceback
        raise CliError(f"importing processor module {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    except SystemExit as exc:  # sys.exit() while being imported: never a successful start (nor exit 0)
        raise CliError(f"importing processor module {module_name!r} failed: it called sys.exit({exc.code!r})") from None
    if not callable(target):
        raise CliError(f"processor {spec!r} is not callable (it is a {type(target).__name__})")
    return target  # type: ignore[no-any-return]


def _secrets(config: EventListenerConfig) -> Tuple[str, ...]:
    from ..mqtt.client import secrets

    return secrets(config)


def _fail(message: str, secrets: Tuple[str, ...] = (), stream: Optional[TextIO] = None) -> None:
    print(f"{PROG}: {mask_secrets(message, secrets)}", file=stream if stream is not None else sys.stderr)


# -- run --------------------------------------------------------------------------------------------


def _cancel(task: "asyncio.Task[Any]") -> None:
    task.cancel()


def _before_forced_exit(code: int) -> None:
    """The watchdog ends the process: say why on stderr first."""
    _fail(f"did not stop within {FORCED_EXIT_AFTER:g} s of the second signal; exiting now")
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()


def _embedded_broker_address(config: EventListenerConfig) -> Tuple[str, int]:
    from ..mqtt.client import credentials

    parts = urlsplit(credentials(config)[0])
    if parts.scheme != "mqtt":
        raise CliError(f"--embedded-broker serves plain mqtt:// only; the configuration uses {parts.scheme}://")
    host = parts.hostname or config.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise CliError(f"--embedded-broker binds a loopback address only (it accepts anonymous clients); "
                       f"set host to 127.0.0.1 or localhost, not {host!r}")
    return host, parts.port or 1883


async def _start_embedded_broker(host: str, port: int) -> Any:
    from ..mqtt.amqtt_boundary import EmbeddedBroker

    broker = EmbeddedBroker(host, port)
    try:
        await broker.start()
    except Exception as exc:
        raise CliError(f"the embedded broker could not start on {broker.bind}: {exc}", EXIT_FAILURE) from None
    logger.info("Embedded amqtt broker listening on %s", broker.bind)
    return broker


async def _run_service(config: EventListenerConfig, processor: Processor, embedded_broker: bool,
                       companion: Optional[Companion] = None) -> int:
    from ..event_listener import EventListener
    from ..mqtt.share_probe import SharedSubscriptionUnsupported

    task = asyncio.current_task()
    if task is None:  # pragma: no cover - always inside asyncio.run()
        raise RuntimeError("_run_service must run in a task")
    listener = EventListener(config)
    # First signal: drain; second: cancel this task (exit 1); still here FORCED_EXIT_AFTER s later: 128 + N.
    signals = listener.install_signal_handlers(on_second_signal=lambda: _cancel(task), exit_after=FORCED_EXIT_AFTER,
                                               before_exit=_before_forced_exit)
    broker: Any = None
    beside = asyncio.ensure_future(companion(listener)) if companion is not None else None
    try:
        if embedded_broker:
            broker = await _start_embedded_broker(*_embedded_broker_address(config))
        if signals.received:
            return EXIT_OK
        logger.info("%s %s: processor %s.%s, topic %r", PROG, __version__, getattr(processor, "__module__", "?"),
                    getattr(processor, "__qualname__", repr(processor)), config.topic)
        # Awaited directly (not as a task) so no signal can slip in before run() has started.
        await listener.run(processor)
    except asyncio.CancelledError:
        if signals.received < 2:
            raise
        if sys.version_info >= (3, 11):
            task.uncancel()
        _fail("stopped at once by a second signal; the job in flight was abandoned", _secrets(config))
        return EXIT_FAILURE
    except SharedSubscriptionUnsupported as exc:  # the configuration does not fit this broker: restarting cannot help
        _fail(str(exc), _secrets(config))
        return EXIT_USAGE
    except ConnectionError as exc:
        _fail(str(exc), _secrets(config))
        return EXIT_FAILURE
    except OSError as exc:  # e.g. the HTTP endpoints' address is in use
        _fail(f"cannot start: {exc}", _secrets(config))
        return EXIT_FAILURE
    except Exception as exc:  # run() ended by an error: a service manager must see a failure, not exit 0
        logger.debug("run() ended by an unexpected error", exc_info=True)
        _fail(f"the listener stopped on an unexpected error: {describe_exception(exc)}", _secrets(config))
        return EXIT_FAILURE
    finally:
        listener.remove_signal_handlers()
        if beside is not None:
            beside.cancel()
            with contextlib.suppress(BaseException):
                await beside
        if broker is not None:
            try:
                await asyncio.wait_for(broker.shutdown(), BROKER_SHUTDOWN_TIMEOUT)
            except Exception as exc:  # the listener's outcome matters more than a broker that shut down badly
                logger.warning("Embedded broker shutdown failed: %s", exc)
    return EXIT_OK


def _command_run(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides, args.unset)
    config = load_config(args.config, overrides)
    secrets = _secrets(config)
    configure_logging(args.log_format, args.log_level, secrets)
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        restore_third_party_loggers()  # quiet by default (Listener.ops.quiet_logs); --log-level DEBUG shows amqtt's lines
    if args.embedded_broker:
        if args.workers > 1 or config.share_group is not None:
            raise CliError("--embedded-broker cannot serve --workers or share_group: amqtt's broker does not "
                           "implement $share subscriptions (it takes $share/... as a plain filter: no worker would "
                           "get any message); use Mosquitto")
        _embedded_broker_address(config)  # refuse a non-loopback address before importing anything
    processor = load_processor(args.processor)
    if args.workers > 1:
        from .supervisor import WorkerLaunch, run_supervisor

        launch = WorkerLaunch(args.processor, args.config, overrides, args.log_format, args.log_level)
        return run_supervisor(launch, config, args.workers)
    try:
        return asyncio.run(_run_service(config, processor, args.embedded_broker))
    except SystemExit as exc:  # nothing the processor raises gets here (it fails its job); exit non-zero anyway
        _fail(f"the listener stopped on SystemExit({exc.code!r})", secrets)
        return EXIT_FAILURE


# -- check-config -----------------------------------------------------------------------------------


def _toml_ready(value: Any) -> Any:
    """``value`` in types TOML holds: None inside tables dropped, bytes decoded, anything else as text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _toml_ready(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_toml_ready(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def render_settings(settings: Dict[str, Any], output_format: str = "toml") -> str:
    """Settings as TOML (options that are None appear as comments; tables last) or as one JSON object.

    Secrets and certificate data are masked here too (:func:`Listener.core.redaction.shown_setting`).
    """
    shown = {key: shown_setting(key, value) for key, value in settings.items()}
    if output_format == "json":
        return json.dumps(shown, indent=2, default=str)
    lines, tables = [], {}
    for key, value in shown.items():
        if value is None:
            lines.append(f"# {key} is not set")
        elif isinstance(value, dict):
            tables[key] = _toml_ready(value)  # a TOML table ends only where the next one starts: after the keys
        else:
            lines.append(tomli_w.dumps({key: _toml_ready(value)}).rstrip("\n"))
    return "\n".join(lines) + ("\n\n" + tomli_w.dumps(tables).rstrip("\n") if tables else "")


def _blame(message: str, file: str, variables: Dict[str, str]) -> str:
    """An invalid-configuration message naming its source: the MQTT_* variable that set the option, else the file."""
    if any(variable in message for variable in variables.values()):
        return f"environment: {message}"
    invalid = re.match(r"Invalid (\w+)", message)
    if invalid is not None and invalid.group(1) in variables:
        # The variable after the message: "MQTT_PASSWORD: Invalid" would read as a secret assignment and be masked.
        return f"{message} (from environment variable {variables[invalid.group(1)]})"
    return message if file in message else f"{file}: {message}"


def _command_check_config(args: argparse.Namespace) -> int:
    try:
        if args.with_env:
            config = EventListenerConfig.from_env(config_file=args.file)
        else:
            config = EventListenerConfig.from_file(args.file)
    except ConfigError as exc:
        _fail(_blame(str(exc), args.file, environment_variables() if args.with_env else {}))
        return EXIT_FAILURE
    problems = file_problems(config)
    store_problem = check_job_store(config.job_store)
    if store_problem:
        problems.append(store_problem)
    for problem in problems:
        _fail(f"{args.file}: {problem}")
    if problems:
        return EXIT_FAILURE
    print(render_settings(config.redacted_dict(), args.output_format))
    for warning in config_warnings(config):
        _fail(f"{args.file}: warning: {warning}")
    if config.share_group is not None and not _share_group_applied(config, args.file):
        return EXIT_FAILURE
    print(f"{PROG}: {args.file}: configuration is valid", file=sys.stderr)
    return EXIT_OK


def _share_group_applied(config: EventListenerConfig, file: str) -> bool:
    """Check ``share_group`` against the broker (as ``run`` does at each connection); print the outcome.

    False only when the broker was reached and does not apply shared subscriptions: one that cannot be
    reached, or that leaves the probe unanswered, is a warning (the file may be checked away from it).
    """
    from ..mqtt.client import endpoint_label
    from ..mqtt.share_probe import SharedSubscriptionUnsupported, check_share_group

    secrets = _secrets(config)
    timeout = min(float(config.connect_timeout or CHECK_CONNECT_TIMEOUT), CHECK_CONNECT_TIMEOUT)
    try:
        asyncio.run(check_share_group(config, timeout))
    except SharedSubscriptionUnsupported as exc:
        _fail(f"{file}: {exc}", secrets)
        return False
    except OSError as exc:  # ConnectionError and its kin: not verified, not disproved
        _fail(f"{file}: warning: share_group not verified: {exc}", secrets)
        return True
    print(f"{PROG}: {file}: the broker at {endpoint_label(config)} applies shared subscriptions "
          f"(share_group {config.share_group!r})", file=sys.stderr)
    return True


# -- publish ----------------------------------------------------------------------------------------


def _read_payload(args: argparse.Namespace, limit: int) -> bytes:
    payload: bytes
    if args.data is not None:
        payload = str(args.data).encode("utf-8", "surrogateescape")
    elif args.file == "-":
        payload = sys.stdin.buffer.read(limit + 1)
    else:
        try:
            with open(args.file, "rb") as handle:
                payload = handle.read(limit + 1)
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    if len(payload) > limit:
        raise CliError(f"payload is larger than max_payload_bytes ({limit} bytes); the listener would reject it")
    return payload


def _validate_payload(payload: bytes, config: EventListenerConfig) -> Dict[str, Any]:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"payload is not valid UTF-8 (byte {exc.start}); nothing was sent") from None
    try:
        return SafeConfigParser().parse_config_from_string(text)
    except ConfigError as exc:
        raise CliError(f"payload is not valid TOML, nothing was sent: {exc}") from None


async def _publish(config: EventListenerConfig, topic: str, payload: bytes, qos: int, retain: bool,
                   timeout: float) -> None:
    from ..mqtt.client import create_client, endpoint_label, open_connection

    client = create_client(config)
    await open_connection(config, client, timeout)
    try:
        await asyncio.wait_for(client.publish(topic, payload, qos, retain), timeout)
    except asyncio.TimeoutError:
        raise ConnectionError(f"MQTT broker at {endpoint_label(config)} did not acknowledge the message "
                              f"within {timeout:g} s") from None
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), DISCONNECT_TIMEOUT)
        except Exception as exc:  # the message is out (or the error above says why not)
            logger.debug("Disconnect after publish failed: %r", exc)


def _command_publish(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides, args.unset)
    for option in ("host", "port", "username", "password", "client_id"):
        if getattr(args, option) is not None:
            overrides[option] = getattr(args, option)
    config = load_config(args.config, overrides)
    secrets = _secrets(config)
    configure_logging("text", "WARNING", secrets)
    # Never the service's client id (the broker would disconnect the running listener) nor its will.
    client_id = overrides.get("client_id") or f"{PROG}-publish-{uuid.uuid4().hex[:12]}"
    config = dataclasses.replace(config, client_id=client_id, will=None)
    problem = topic_name_error(args.topic)
    if problem:
        raise CliError(f"invalid topic {args.topic!r}: {problem}")
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise CliError(f"--timeout must be a number of seconds > 0, got {args.timeout!r}")
    payload = _read_payload(args, config.max_payload_bytes)
    data = _validate_payload(payload, config)
    job_id = data.get(config.job_id_field)
    if job_id in (None, "") and not config.allow_job_id_generation:
        problem = "has no" if job_id is None else "has an empty"
        print(f"{PROG}: warning: the payload {problem} {config.job_id_field!r}; a listener with "
              f"allow_job_id_generation off will reject it", file=sys.stderr)
    try:
        asyncio.run(_publish(config, args.topic, payload, args.qos, args.retain, args.timeout))
    except ConnectionError as exc:
        _fail(str(exc), secrets)
        return EXIT_FAILURE
    print(f"Published {len(payload)} bytes to {args.topic!r} (QoS {args.qos})")
    return EXIT_OK


# -- entry point ------------------------------------------------------------------------------------


_COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _command_run,
    "check-config": _command_check_config,
    "publish": _command_publish,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``mqtt-listener`` command line; returns the exit code (0, 1 or 2)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        code = _COMMANDS[args.command](args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled, not at interpreter exit
        return code
    except CliError as exc:
        _fail(str(exc))
        return exc.code
    except KeyboardInterrupt:  # before the signal handlers are installed (e.g. while importing)
        _fail("interrupted")
        return 130
    except BrokenPipeError:  # output piped into something that stopped reading (| head)
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
