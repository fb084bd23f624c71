"""What each option of :class:`~Listener.config.settings.EventListenerConfig` does, in one or two sentences.

The documentation's configuration reference is built from this table, the dataclass's fields and
:func:`~Listener.config.settings.option_kinds`; a test fails when an option has no entry here or an entry
names no option. Limits come from the constants the checks use, so the text cannot disagree with them.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Iterable, Mapping

from .settings import (ACK_POLICIES, DUPLICATE_ACTIONS, LOG_LEVELS, MAX_CONCURRENT_JOBS, MAX_INFLIGHT_PUBLICATIONS,
                       MAX_KEEP_ALIVE, MAX_PAYLOAD_BYTES, MAX_RETRIES, MAX_RETRY_DELAY)

__all__ = ["FIELD_HELP", "option_help"]


def _one_of(values: Iterable[str]) -> str:
    return ", ".join(f"`{value}`" for value in values)


# Not inline in the table: bandit takes a literal string under the key "password" for a hard-coded password.
_CREDENTIAL_HELP = ("Password sent with `username`; masked in every log, repr and message. Any password but the "
                    "default without a user name is a `ConfigError`: MQTT does not allow it.")


#: The help of ``http_token`` and ``http_token_file`` (names, not literals, in the table: bandit takes a literal
#: under a key naming a token for a password).
_DASHBOARD_ACCESS = ("The dashboard's token, at least 16 characters: every dashboard request must present it; without "
                     "one, a non-loopback http_host shows no job data. From MQTT_HTTP_TOKEN or a config file, never "
                     "--set.")
_DASHBOARD_ACCESS_FILE = "A file whose first line is the dashboard's token (instead of http_token)."

_HELP = {
    # Connection
    "host": "Broker host name or address (not empty). Ignored when `uri` is set.",
    "port": "Broker port, 1 to 65535. Ignored when `uri` is set.",
    "client_id": "MQTT client id (not empty). Keep it fixed and unique per process for `cleansession = false`.",
    "username": "User name sent in CONNECT. Empty or None sends no credentials at all (the default password "
                "is then not sent either): `username = \"\"` means anonymous.",
    "password": _CREDENTIAL_HELP,
    "uri": "`mqtt://`, `mqtts://`, `ws://` or `wss://` URI of the broker; generated from `host` and `port` "
           "(`mqtts://` when a TLS option is set) when unset. User name and password in it win over "
           "`username`/`password`.",
    # TLS
    "cafile": "CA certificate file (PEM) to verify the broker's certificate; turns TLS on.",
    "capath": "Directory of CA certificates; turns TLS on.",
    "cadata": "CA certificates as PEM text; turns TLS on. Shown as `<certificate data>`.",
    "additional_headers": "HTTP headers sent when connecting over `ws://` or `wss://`.",
    # MQTT client
    "keep_alive": f"Seconds, 1 to {MAX_KEEP_ALIVE}; the keep-alive sent to the broker is `keep_alive - ping_delay`.",
    "ping_delay": "Seconds, at least 1 and less than `keep_alive`, by which the keep-alive sent is shortened.",
    "default_qos": "QoS (0, 1 or 2) of the listener's own publications (results, events) unless a "
                   "`ReturnType` or `custom_topics` says otherwise.",
    "default_retain": "Retain flag of the listener's own publications unless a `ReturnType` or `custom_topics` "
                      "says otherwise.",
    "auto_reconnect": "Reconnect (and subscribe again) after the connection drops.",
    "connect_timeout": "Seconds to wait for a connection (30 when unset); greater than 0.",
    "reconnect_retries": "Connection attempts before `run()` gives up; negative retries forever.",
    "reconnect_max_interval": "Cap, in seconds (> 0), of the exponential backoff between connection attempts.",
    "cleansession": "MQTT clean-session flag. `false` (with a fixed `client_id`) lets the broker keep QoS 1/2 "
                    "messages while the listener is away.",
    # Topics
    "topic": "Subscription filter for job messages (`+` and `#` allowed).",
    "qos": "QoS (0, 1 or 2) of the subscription to `topic`.",
    "retain": "The manual's retain flag of the subscription: accepted and checked, but MQTT 3.1.1 subscriptions "
              "have no retain flag, so it changes nothing (`default_retain` sets that of publications).",
    "error_topic": "Publish topic of error events (`invalid_payload`, `missing_job_id`, `processing_error`, ...).",
    "log_topic": "Publish topic of log events; `\"\"` turns them off.",
    "results_topic": "Publish topic of dict results and of `ReturnType`s without a topic of their own.",
    # Advanced
    "will": "Last-will message: a table with `topic` and `message`, optional `qos` and `retain`.",
    "custom_topics": "`{filter: {qos, retain}}`: more subscriptions, and the QoS/retain of publications on "
                     "matching topics.",
    # Job tracking
    "max_jobs_in_memory": "Jobs held at most (> 0): a new job evicts the oldest finished one; when every slot "
                          "holds an active job the listener waits.",
    "job_cleanup_interval": "Seconds (> 0) a finished job is kept after it finished (an age, not a schedule: "
                            "the sweep runs every min(this, 60) s).",
    "job_id_field": "Key of the payload that holds the job id (not empty).",
    "allow_job_id_generation": "Give a message without a job id a uuid4 instead of rejecting it.",
    "duplicate_action": f"What a job id seen before does: one of {_one_of(DUPLICATE_ACTIONS)}. `error` marks "
                        "the job DUPLICATE and publishes a `duplicate_job` event; it does not raise.",
    # Beyond the first release
    "log_topic_level": f"Lowest level mirrored to `log_topic`: one of {_one_of(LOG_LEVELS)} (`INFO` for an "
                       "audit trail of every job).",
    "certfile": "Client certificate file (PEM) for TLS client authentication; needs `keyfile`.",
    "keyfile": "Private key file of `certfile`; needs `certfile`.",
    "tls_check_hostname": "Verify that the broker's certificate names the host connected to.",
    "max_payload_bytes": f"Larger payloads are rejected with a `payload_too_large` event; 1 to {MAX_PAYLOAD_BYTES}.",
    "shutdown_grace_period": "Seconds (> 0) `stop()` lets the jobs in flight finish before cancelling them.",
    "max_concurrent_jobs": f"Jobs run at once, 1 to {MAX_CONCURRENT_JOBS}; 1 keeps strict arrival order.",
    "job_timeout": "Seconds (> 0) a job may run; a longer one fails with `error_type` `timeout`. Unset: no limit.",
    "http_host": "Address the health and metrics endpoints listen on.",
    "http_port": "Port of the health and metrics endpoints, 0 to 65535 (0: any free port); unset: no endpoints.",
    "http_token": _DASHBOARD_ACCESS,
    "http_token_file": _DASHBOARD_ACCESS_FILE,
    "keep_job_input": "Keep a finished job's `input_data` (dropped by default when the job finishes, to bound "
                      "memory).",
    "max_retries": f"Times a job whose processor raised or timed out is run again before it fails, 0 to {MAX_RETRIES}.",
    "retry_backoff": f"Seconds before the first retry, doubled for each next one (up to {MAX_RETRY_DELAY:g} s), "
                     f"0 to {MAX_RETRY_DELAY:g}; 0 retries at once.",
    "job_store": "Where jobs are kept: `memory`, a SQLite file (`sqlite:///jobs.db`, `sqlite:////abs/jobs.db`) "
                 "that survives restarts, or Redis (`redis://host:6379/0`, `redis+cluster://host:6379,host2:6379`, "
                 "`redis+sentinel://host:26379/service`, the `[redis]` extra) shared by workers; URL parameters "
                 "`prefix=name`, `wait_replicas=n` (a finished job's record on n replicas before its message is "
                 "acknowledged) and `wait_timeout_ms=ms`.",
    "ack_policy": f"When a QoS 1/2 message is acknowledged: one of {_one_of(ACK_POLICIES)}. `after_recording` "
                  "needs a SQLite or Redis `job_store`.",
    "max_pending_messages": "Messages queued or awaiting their acknowledgement at most (> 0); past it the listener "
                            "holds up to 4 MiB unparsed, then stops reading and the broker keeps the rest.",
    "share_group": "Subscribe as `$share/<group>/<filter>` so that listeners of one group split the messages; "
                   "no `/`, `+` or `#`. The broker must support shared subscriptions.",
    "max_inflight_publications": f"The listener's own QoS 1/2 publications awaiting the broker's acknowledgement "
                                 f"at once, 1 to {MAX_INFLIGHT_PUBLICATIONS}; keep it at or below the broker's "
                                 "limit (Mosquitto: 20).",
}

#: ``{option: what it does}`` for every option, in declaration order (Markdown inline code allowed).
FIELD_HELP: Mapping[str, str] = MappingProxyType(_HELP)


def option_help(name: str) -> str:
    """What option ``name`` does; ``KeyError`` for a name that is not an option."""
    return FIELD_HELP[name]
