"""A real ``redis-server`` for the tests, on a free loopback port, without persistence.

``redis_server`` (session scope) is shared: each test takes its own key prefix with ``redis_url()``.
``redis_factory`` gives a test private servers it may stop and restart on the same port (or protect with
a password). Readiness is awaited by PING, never slept for; every server still running when the
interpreter exits is killed by an ``atexit`` hook.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Protocol, TypeVar

import pytest

from .brokers import find_binary, free_port
from .leftovers import Leftovers

__all__ = ["REDIS_BINARY", "RedisFactory", "RedisServer", "needs_redis", "redis_factory", "redis_server", "running_in",
           "unique_prefix"]

REDIS_BINARY = find_binary("redis-server")
START_TIMEOUT = 10.0
#: Servers started and not yet stopped: stopped at interpreter exit.
_LIVE: "Leftovers[RedisServer]" = Leftovers(lambda server: server.stop())
_PREFIXES = itertools.count(1)

#: Skips a test when ``redis-server`` is not installed (CI installs it, so there they run).
needs_redis = pytest.mark.skipif(REDIS_BINARY is None, reason="redis-server is not installed (.ci/run installs it)")


def _ping(port: int, password: Optional[str]) -> bool:
    """True when a PING (after AUTH, with a password) on ``port`` answers PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            if password is not None:
                sock.sendall(f"AUTH {password}\r\n".encode())
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """One ``redis-server`` process (started by :meth:`start`; :meth:`stop` ends it within seconds)."""

    password: Optional[str] = None
    port: int = field(default_factory=free_port)
    process: Optional["subprocess.Popen[bytes]"] = None
    #: More ``redis-server`` options (a cluster node's).
    extra_args: List[str] = field(default_factory=list)
    #: The whole command instead (a sentinel's: ``redis-server <config file> --sentinel``).
    command: Optional[List[str]] = None

    def url(self, prefix: Optional[str] = None, password: Optional[str] = None, db: int = 0) -> str:
        """A ``job_store`` setting for this server (``password`` overrides the right one; ``prefix`` per test)."""
        secret = self.password if password is None else password
        auth = f":{secret}@" if secret else ""
        query = f"?prefix={prefix}" if prefix else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}{query}"

    def start(self) -> None:
        if REDIS_BINARY is None:
            raise RuntimeError("redis-server is not installed")
        args: List[str] = [REDIS_BINARY, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--daemonize", "no", "--logfile", ""]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        if self.command is not None:
            args = self.command
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        _LIVE.add(self)
        deadline = time.monotonic() + START_TIMEOUT
        while not _ping(self.port, self.password):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL after 5 s)."""
        process, self.process = self.process, None
        _LIVE.discard(self)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL (a crash: nothing flushed, no goodbye to replicas or sentinels) and reap; :meth:`start` runs it
        again on the same port with the same options."""
        process, self.process = self.process, None
        _LIVE.discard(self)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=5)

    def restart(self) -> None:
        """Start again on the same port (its data is gone: there is no persistence)."""
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server for the session (tests use their own ``prefix``; see :func:`unique_prefix`)."""
    if REDIS_BINARY is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    server = RedisServer()
    server.start()
    yield server
    server.stop()


class _Servers(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=_Servers)


@contextlib.contextmanager
def running_in(make: Callable[[Path], S], prefix: str) -> Iterator[S]:
    """Servers made with a temporary folder of their own (a cluster's, sentinels'), started, and stopped after."""
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        servers = make(Path(directory))
        try:
            servers.start()
            yield servers
        finally:
            servers.stop()


def unique_prefix(name: str = "t") -> str:
    """A key prefix no other test of this process uses."""
    return f"test-{name}-{next(_PREFIXES)}-{time.monotonic_ns()}"


@pytest.fixture
def redis_factory() -> Iterator["RedisFactory"]:
    """Private servers a test may stop and restart; all stopped at the end of the test."""
    if REDIS_BINARY is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    factory = RedisFactory()
    yield factory
    for server in factory.servers:
        server.stop()


class RedisFactory:
    """Starts :class:`RedisServer` instances for one test."""

    def __init__(self) -> None:
        self.servers: List[RedisServer] = []

    def start(self, password: Optional[str] = None) -> RedisServer:
        server = RedisServer(password=password)
        server.start()
        self.servers.append(server)
        return server
