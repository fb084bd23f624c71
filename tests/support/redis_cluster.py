"""A real Redis Cluster for the tests: six ``redis-server`` nodes (three masters, one replica each) on free
loopback ports, without persistence, made a cluster by ``redis-cli --cluster create``.

``redis_cluster`` (session scope) is shared: each test takes its own key prefix with ``unique_prefix()``.
Readiness is awaited (PING, then ``cluster_state:ok`` on every node), never slept for; the nodes are
stopped at the end of the session (and at interpreter exit, as every :class:`RedisServer` is).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import redis

from .brokers import find_binary, free_port
from .redis_server import REDIS_BINARY, RedisServer, running_in

__all__ = ["REDIS_CLI", "RedisCluster", "private_redis_cluster", "redis_cluster"]

REDIS_CLI = find_binary("redis-cli")
READY_TIMEOUT = 30.0


class RedisCluster:
    """Six cluster nodes; :meth:`url` is a ``redis+cluster://`` setting naming two of them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.nodes: List[RedisServer] = []

    def start(self) -> None:
        if REDIS_BINARY is None or REDIS_CLI is None:
            raise RuntimeError("redis-server and redis-cli are needed")
        for _ in range(6):
            port = free_port()
            node = RedisServer(port=port, extra_args=[
                "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                "--cluster-config-file", str(self.directory / f"nodes-{port}.conf"), "--dir", str(self.directory),
                "--cluster-node-timeout", "2000", "--repl-diskless-sync-delay", "0"])
            node.start()
            self.nodes.append(node)
        subprocess.run(  # noqa: S603 - the test's own binary and arguments
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=READY_TIMEOUT)
        self.wait_until_ready()

    def wait_until_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every node running says ``cluster_state:ok`` and every replica's link to its master is up (a
        replica that has not finished its first sync acknowledges no write: ``WAIT`` would count it out)."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node.process is None:
                continue
            client = redis.Redis(port=node.port, decode_responses=True)
            try:
                while not _ready(client):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the cluster did not become ready (node {node.port})")
                    time.sleep(0.05)
            finally:
                client.close()

    def master_of(self, key: str) -> RedisServer:
        """The node that is the master of ``key``'s slot now."""
        client = self.client()
        try:
            name = client.get_node_from_key(key).name
        finally:
            client.close()
        return next(node for node in self.nodes if f"127.0.0.1:{node.port}" == name)

    def replica_of(self, master: RedisServer) -> RedisServer:
        """The node replicating ``master``."""
        for node in self.nodes:
            if node is not master and node.process is not None:
                info = _info(node.port)
                if info.get("role") == "slave" and int(info.get("master_port", 0)) == master.port:
                    return node
        raise LookupError(f"no replica of node {master.port}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def url(self, prefix: Optional[str] = None, password: Optional[str] = None) -> str:
        query = f"?prefix={prefix}" if prefix else ""
        auth = f":{password}@" if password else ""
        return f"redis+cluster://{auth}127.0.0.1:{self.nodes[0].port},127.0.0.1:{self.nodes[1].port}{query}"

    def client(self) -> "redis.RedisCluster":
        """A synchronous client of the cluster, decoding answers."""
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, decode_responses=True)


def _info(port: int) -> Dict[str, Any]:
    client = redis.Redis(port=port, decode_responses=True, socket_timeout=2)
    try:
        return client.info("replication")
    finally:
        client.close()


def _ready(client: "redis.Redis[str]") -> bool:
    try:
        if client.cluster("info").get("cluster_state") != "ok":
            return False
        info = client.info("replication")
    except redis.RedisError:
        return False
    return info.get("role") != "slave" or info.get("master_link_status") == "up"


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One cluster for the session (tests use their own prefix)."""
    if REDIS_BINARY is None or REDIS_CLI is None:
        pytest.skip("redis-server or redis-cli is not installed (.ci/run installs them)")
    with running_in(RedisCluster, "redis-cluster-") as cluster:
        yield cluster


@pytest.fixture
def private_redis_cluster() -> Iterator[RedisCluster]:
    """A cluster for one test that kills or fails over its nodes (the session's stays whole for the others)."""
    if REDIS_BINARY is None or REDIS_CLI is None:
        pytest.skip("redis-server or redis-cli is not installed (.ci/run installs them)")
    with running_in(RedisCluster, "redis-cluster-") as cluster:
        yield cluster
