"""Turning an incoming payload into job data and a job id, or a clear rejection."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Dict, Optional, Union

from ..config.parser import SafeConfigParser
from ..errors import ConfigError, ListenerError
from ..ops.events import ErrorType

__all__ = [
    "LARGE_PAYLOAD_BYTES", "MAX_JOB_ID_LENGTH", "RejectedMessage", "decode_payload", "decode_payload_now",
    "decode_payload_off_loop", "find_job_id", "generate_job_id", "resolve_job_id",
]

MAX_JOB_ID_LENGTH = 1024
#: Payloads above this many bytes are parsed in a thread: a 1 MiB TOML document takes over 100 ms.
LARGE_PAYLOAD_BYTES = 64 * 1024
Payload = Union[bytes, bytearray, memoryview, str]


class RejectedMessage(ListenerError):
    """A message that cannot become a job; carries the error event's type and message."""

    def __init__(self, error_type: ErrorType, message: str, job_id: Optional[str] = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.job_id = job_id


def decode_payload(payload: Payload, parser: SafeConfigParser, max_bytes: int) -> Dict[str, Any]:
    """Decode UTF-8 and parse TOML from a string — never as a file path, whatever the payload says."""
    size = len(payload.encode("utf-8", "surrogatepass")) if isinstance(payload, str) else len(payload)
    if size > max_bytes:
        raise RejectedMessage(ErrorType.PAYLOAD_TOO_LARGE, f"Payload of {size} bytes exceeds the limit of {max_bytes} bytes")
    if isinstance(payload, str):
        text = payload
    else:
        try:
            text = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RejectedMessage(ErrorType.INVALID_PAYLOAD, f"Payload is not valid UTF-8 (byte {exc.start})") from None
    try:
        return parser.parse_config_from_string(text)
    except ConfigError as exc:
        raise RejectedMessage(ErrorType.INVALID_PAYLOAD, str(exc)) from None


def decode_payload_now(payload: Payload, parser: SafeConfigParser, max_bytes: int) -> Optional[Dict[str, Any]]:
    """:func:`decode_payload` on the event loop, without an await, for a payload of at most ``LARGE_PAYLOAD_BYTES``;
    None for a larger one, which nothing was done with: then await :func:`decode_payload_off_loop`."""
    return decode_payload(payload, parser, max_bytes) if len(payload) <= LARGE_PAYLOAD_BYTES else None


async def decode_payload_off_loop(payload: Payload, parser: SafeConfigParser, max_bytes: int) -> Dict[str, Any]:
    """:func:`decode_payload`, run in a thread for payloads above ``LARGE_PAYLOAD_BYTES``.

    Parsing a large document on the event loop would stall everything else for its duration:
    pings (the broker may then drop the connection), other jobs, the HTTP probes.
    """
    fields = decode_payload_now(payload, parser, max_bytes)
    if fields is not None:
        return fields
    return await asyncio.to_thread(decode_payload, payload, parser, max_bytes)


def generate_job_id() -> str:
    """A fresh random job id."""
    return str(uuid.uuid4())


def resolve_job_id(data: Dict[str, Any], field: str, allow_generation: bool) -> str:
    """The job id from ``data[field]``, or a generated one when allowed; otherwise a rejection."""
    value = data.get(field)
    if value is None or value == "":
        if allow_generation:
            return generate_job_id()
        problem = f"has no '{field}' field" if value is None else f"has an empty '{field}' (the job id is empty)"
        raise RejectedMessage(ErrorType.MISSING_JOB_ID, f"Message {problem} and job id generation is off")
    if isinstance(value, (dict, list)):
        kind = "table" if isinstance(value, dict) else "array"
        raise RejectedMessage(ErrorType.INVALID_PAYLOAD, f"Field '{field}' must be a string or number, got {kind}")
    job_id = str(value)
    if len(job_id) > MAX_JOB_ID_LENGTH:
        raise RejectedMessage(ErrorType.INVALID_PAYLOAD, f"Field '{field}' is longer than {MAX_JOB_ID_LENGTH} characters")
    return job_id


def find_job_id(data: Dict[str, Any], field: str) -> Optional[str]:
    """The job id in ``data[field]`` as a string, or None when absent or unusable (never generated)."""
    try:
        return resolve_job_id(data, field, allow_generation=False)
    except RejectedMessage:
        return None
