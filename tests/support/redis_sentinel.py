"""A real Redis watched by sentinels, for the tests: one master, one replica and three sentinels
(``redis-server --sentinel``) on free loopback ports, without persistence.

``redis_sentinels`` (function scope: a failover test changes which server is the master) starts them and
waits until every sentinel knows the replica and the other two sentinels (so that a failover has its
quorum); readiness is awaited, never slept for. Everything is stopped at the end of the test.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
import redis

from .brokers import free_port
from .redis_server import REDIS_BINARY, RedisServer, running_in

__all__ = ["SERVICE", "RedisSentinels", "redis_sentinels"]

SERVICE = "jobs-master"
READY_TIMEOUT = 30.0


class RedisSentinels:
    """A master, its replica and three sentinels; :meth:`url` is a ``redis+sentinel://`` setting."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.master = RedisServer()
        self.replica = RedisServer()
        self.sentinels: List[RedisServer] = []

    def start(self) -> None:
        if REDIS_BINARY is None:
            raise RuntimeError("redis-server is not installed")
        # The RDB a full sync transfers is written in the temporary directory, not the working one.
        self.master.extra_args = ["--dir", str(self.directory), "--dbfilename", f"master-{self.master.port}.rdb",
                                  "--repl-diskless-sync-delay", "0"]
        self.master.start()
        self.replica.extra_args = ["--replicaof", "127.0.0.1", str(self.master.port), "--dir", str(self.directory),
                                   "--dbfilename", f"replica-{self.replica.port}.rdb", "--repl-diskless-sync-delay", "0"]
        self.replica.start()
        for _ in range(3):
            port = free_port()
            config = self.directory / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n", encoding="utf-8")
            sentinel = RedisServer(port=port, command=[REDIS_BINARY, str(config), "--sentinel"])
            sentinel.start()
            self.sentinels.append(sentinel)
        deadline = time.monotonic() + READY_TIMEOUT
        replica = redis.Redis(port=self.replica.port, decode_responses=True)
        try:  # synced: a replica still loading its first copy acknowledges no write (WAIT)
            while replica.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not sync with the master")
                time.sleep(0.05)
        finally:
            replica.close()
        for sentinel in self.sentinels:
            client = redis.Redis(port=sentinel.port, decode_responses=True)
            try:
                while True:
                    master = client.sentinel_master(SERVICE)
                    if int(master.get("num-slaves", 0)) >= 1 and int(master.get("num-other-sentinels", 0)) >= 2:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"sentinel {sentinel.port} did not see the replica and its peers")
                    time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        for server in [*self.sentinels, self.master, self.replica]:
            server.stop()

    def url(self, prefix: Optional[str] = None, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        query = f"?db={db}" + (f"&prefix={prefix}" if prefix else "")
        return f"redis+sentinel://{hosts}/{SERVICE}{query}"

    def master_port(self) -> Optional[int]:
        """The master's port as the first sentinel answering names it now."""
        for sentinel in self.sentinels:
            client = redis.Redis(port=sentinel.port, decode_responses=True, socket_timeout=1)
            try:
                _, port = client.sentinel_get_master_addr_by_name(SERVICE)
                return int(port)
            except (redis.RedisError, TypeError, ValueError):
                continue
            finally:
                client.close()
        return None


@pytest.fixture
def redis_sentinels() -> Iterator[RedisSentinels]:
    """A master, a replica and three sentinels for one test."""
    if REDIS_BINARY is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    with running_in(RedisSentinels, "redis-sentinel-") as setup:
        yield setup
