"""A job store shared by every listener that names the same Redis database (``job_store = "redis://…"``).

Each process keeps a mirror of *its own* jobs (it is a :class:`~Listener.jobs.memory.MemoryJobStore`:
``listener.jobs`` and the status changes work on it) and writes every change to Redis from a background task, in
one transaction per batch; :meth:`RedisJobStore.durable` returns once everything so far is written, so a
message is acknowledged only once its job's record is in Redis.

What makes the store *shared*: before a message's job runs, :meth:`RedisJobStore.admit` claims its id
atomically (one Lua script: the record is created only if none holds the id, and the store's limit,
``max_jobs_in_memory``, is enforced over every worker's records). A second worker that receives the same
job id finds the record, and the script applies the duplicate policy of :mod:`Listener.jobs.admission` to it.
The queries (:meth:`RedisJobStore.get`, :meth:`RedisJobStore.jobs_with`) read Redis, so they see every
worker's jobs.

Key layout (``<prefix>`` is ``mqtt-listener`` unless the URL says ``?prefix=name``):

- ``<prefix>:job:<job id>``: a hash, one field per :class:`~Listener.jobs.records.JobInfo` attribute (JSON for
  ``input_data`` and ``result``, ISO 8601 local time for the timestamps) plus ``interrupted``;
- ``<prefix>:ids``: a sorted set of the job ids, scored by creation time (the count the limit applies to);
- ``<prefix>:finished``: a sorted set of the finished job ids, scored by finishing time (eviction order);
- ``<prefix>:owner:<owner id>``: the lease of one open store (a random id per :meth:`RedisJobStore.open`);
- ``<prefix>:epoch``: a random marker the first store to open writes. Its disappearance means the Redis lost
  its data (restarted without persistence, or FLUSHALL): each store checks it with every renewal of its owner
  lease and in every claim, reports the loss (:data:`DATA_LOST`, to ``on_error``: an ERROR log line), writes
  the marker again and writes its own jobs again.

Redis Cluster (``redis+cluster://host:port[,host:port…][?prefix=name]``): ``<prefix>`` is written ``{<prefix>}``
in every key above (:attr:`RedisUrl.keyspace`), a hash tag, so that all the keys of one store are in one slot.
Every key a script touches is one of its KEYS, as Redis requires: the claim script is given the record, the
sorted sets and the marker, and asks for the others it turns out to need (the lease of the owner of an active
record, the records it evicts, the leases of their owners) by answering ``keys`` with their names; the store
runs it again with them (:data:`CLAIM_ROUNDS`). One store's records therefore live on one master; different
prefixes spread over the masters. Redis Sentinel
(``redis+sentinel://host:port[,host:port…]/service_name[?db=n]``): the keys of ``redis://``, on the master the
sentinels name (asked again after a failover).

Loss detection: the records are the memory of which jobs ran; a Redis that lost them takes a completed job
whose message comes again for a new one. That cannot be undone, but it is never silent.

Ownership: an active record (PENDING or RUNNING) names its ``owner``, the store that claimed it. Each open
store keeps its owner key alive with a short lease (:data:`OWNER_LEASE`, renewed every third of it by the
writer) and deletes it when it closes. A claim of an id whose record is active elsewhere answers BUSY while
the owner's lease is alive (the message waits, unacknowledged), and takes the job over once it lapsed (the
job runs again here, its ``attempts`` kept): a job a killed worker was running is never acknowledged as
a duplicate, and runs again at most :data:`OWNER_LEASE` seconds after the worker died.

A finished record expires ``job_cleanup_interval`` seconds after it finished. An active one carries a
longer lease (:data:`ACTIVE_LEASE`) that its owner renews, so that a dead worker's record does not hold
its slot for ever; except the records of a store that resumes its jobs (``resume``: the job's input is
the only copy of the work, see :meth:`RedisJobStore.orphans`), which stay until a live store takes them
over.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Set, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from ..core.backoff import backoff_delay
from ..core.redaction import mask_uri_credentials
from ..core.serialization import ResultEncodingError, to_json_bytes
from .admission import REPROCESS, Admission, Verdict, admission_of
from .memory import MemoryJobStore
from .records import ACTIVE_STATUSES, FINISHED_STATUSES, JobInfo, JobStatus
from .store import JobStoreError

__all__ = ["ACTIVE_LEASE", "CLUSTER_SCHEMES", "CLUSTER_TRANSACTIONS", "DATA_LOST", "DEFAULT_PREFIX", "FAILOVER_WINDOW",
           "FULL_RECHECK", "NotReplicated",
           "OWNER_LEASE", "RedisJobReader", "RedisJobStore", "RedisUrl", "SENTINEL_SCHEMES", "check_redis",
           "parse_redis_url", "record_fields"]

logger = logging.getLogger("Listener.jobs")

DEFAULT_PREFIX = "mqtt-listener"
#: Seconds an active record lives without its owner renewing it (renewed every third of it), unless resumable.
ACTIVE_LEASE = 60.0
#: Seconds a store's owner key lives without the store renewing it (every third of it): how long a job a dead
#: worker owned waits, at most, before another worker takes it over.
OWNER_LEASE = 5.0
#: Seconds to connect to Redis, and to wait for an answer.
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
#: Seconds between tries to write after a failure (backoff up to this).
MAX_WRITE_RETRY = 5.0
#: Runs of the claim script for one claim at most: it may ask for the keys it needs (an owner's lease, then the
#: records to evict and their owners' leases) before it decides, and the marker may be found gone.
CLAIM_ROUNDS = 8
#: Seconds between admissions tried again while the store is full (other processes' jobs free its slots).
FULL_RECHECK = 0.5
#: What a store reports (to ``on_error``) when the Redis lost its data: docs/reliability.md.
DATA_LOST = ("the Redis lost its data (restarted without persistence, or flushed): every job record was gone, so "
             "a completed job whose message comes again runs again")
#: Why a cluster store cannot open with an older redis-py (its cluster pipelines take no MULTI/EXEC).
CLUSTER_TRANSACTIONS = ("redis+cluster:// needs a redis-py whose cluster pipelines support transactions: "
                        "pip install -U redis")
#: What a failover may have cost (docs/scaling.md, "Failover").
FAILOVER_WINDOW = ("Records the old master had not yet passed to its replica are lost with it (without wait_replicas): "
                   "the jobs they recorded as finished run again if their messages come again")
INSTALL_HINT = "pip install 'redis>=5' (or install this package with its [redis] extra: docs/installation.md)"

#: Records next in line for eviction a claim that evicted names, for the next claims to pass as KEYS.
EVICTION_HINTS = 4

_CLAIM = """
local key, ids, finished = KEYS[1], KEYS[2], KEYS[3]
local job_id, max_jobs, ttl_ms, lease_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now, mode, started, topic, input, prefix = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local me, owners, resume, epoch, held = ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15]
local marker = redis.call('GET', KEYS[4])
if marker ~= epoch then
  -- The Redis lost its data (or another store found so and wrote its marker): the caller reports it first.
  if not marker then
    redis.call('SET', KEYS[4], epoch)
    return {'lost'}
  end
  return {'lost', marker}
end
-- Every key the script touches is one of KEYS: those it needs beyond the first four (an owner's lease, the
-- records it evicts or looks at) it asks for first ({'keys', name, ...}, before any write but the idempotent
-- ones above and the sweep of expired ids), and the caller runs it again with them added.
local given, wanted = {}, {}
for _, name in ipairs(KEYS) do given[name] = true end
local function known(name)
  if given[name] then return true end
  wanted[#wanted + 1] = name
  return false
end
local function alive(owner)
  return owner and redis.call('EXISTS', owners .. owner) == 1
end
local function active(status)
  return status == 'pending' or status == 'running'
end
local function create(verdict, dups, attempts)
  redis.call('DEL', key)
  redis.call('HSET', key, 'job_id', job_id, 'status', 'pending', 'started_at', started,
             'duplicate_count', dups, 'attempts', attempts, 'interrupted', '0', 'owner', me)
  if topic ~= '' then redis.call('HSET', key, 'topic', string.sub(topic, 2)) end
  if input ~= '' then redis.call('HSET', key, 'input_data', input) end
  if resume == '1' and input ~= '' then
    redis.call('HSET', key, 'resume', '1')
  else
    redis.call('PEXPIRE', key, lease_ms)
  end
  redis.call('ZADD', ids, now, job_id)
  redis.call('ZREM', finished, job_id)
  return {verdict, tostring(dups), tostring(attempts)}
end
local status = redis.call('HGET', key, 'status')
if status then
  -- Listener.jobs.admission.decide, branch for branch ('mark' records a duplicate, whatever the record)
  local dups = tonumber(redis.call('HGET', key, 'duplicate_count') or '0')
  local attempts = tonumber(redis.call('HGET', key, 'attempts') or '0')
  if mode ~= 'mark' and active(status) then
    local owner = redis.call('HGET', key, 'owner')
    if owner ~= me then
      if owner and not known(owners .. owner) then return {'keys', unpack(wanted)} end
      if alive(owner) then return {'busy'} end
      return create('run_again', dups, attempts)  -- its owner died (or stopped renewing its lease)
    end
    if held == '0' then
      -- This store's own claim, whose answer it never got (the connection failed, a failover): claimed again.
      return create('new', dups, attempts)
    end
  end
  if status ~= 'running' and mode ~= 'mark' then
    if redis.call('HGET', key, 'interrupted') == '1' then
      return create('run_again', dups, attempts)
    end
    if mode == 'reprocess' then
      return create('restart', dups + 1, 0)
    end
  end
  redis.call('HINCRBY', key, 'duplicate_count', 1)
  -- An active record keeps its status and its TTL (an explicit 'mark' makes a pending one DUPLICATE, as
  -- the other stores do, yet leaves it active in Redis: its worker is about to run it).
  if not active(status) or (mode == 'mark' and status ~= 'running') then
    redis.call('HSET', key, 'status', 'duplicate')
  end
  return {'duplicate', tostring(dups + 1), tostring(attempts), status}
end
if mode == 'mark' then return {'unknown'} end
-- Expired records are gone on their own (their TTL): their ids leave the sorted sets.
local expired = redis.call('ZRANGEBYSCORE', finished, '-inf', now - ttl_ms / 1000)
for _, old in ipairs(expired) do
  redis.call('ZREM', ids, old)
  redis.call('ZREM', finished, old)
end
local excess, evicted = redis.call('ZCARD', ids) - max_jobs + 1, false
if excess > 0 then
  local oldest = redis.call('ZRANGE', finished, 0, excess - 1)
  for _, old in ipairs(oldest) do known(prefix .. old) end
  if #wanted > 0 then return {'keys', unpack(wanted)} end
  for _, old in ipairs(oldest) do
    redis.call('DEL', prefix .. old)
    redis.call('ZREM', ids, old)
    redis.call('ZREM', finished, old)
  end
  excess, evicted = excess - #oldest, #oldest > 0
end
if excess > 0 then
  -- Full of active records: those without a record, and a dead worker's that its message (unacknowledged)
  -- brings back, only hold a slot.
  local candidates = redis.call('ZRANGE', ids, 0, 199)
  for _, other in ipairs(candidates) do known(prefix .. other) end
  if #wanted > 0 then return {'keys', unpack(wanted)} end
  local holders = {}
  for _, other in ipairs(candidates) do
    local held = prefix .. other
    local state = redis.call('HGET', held, 'status')
    if state and active(state) and redis.call('HGET', held, 'resume') ~= '1' then
      local owner = redis.call('HGET', held, 'owner')
      if owner then known(owners .. owner) end
      holders[other] = owner or false
    end
  end
  if #wanted > 0 then return {'keys', unpack(wanted)} end
  for _, other in ipairs(candidates) do
    local held = prefix .. other
    local owner = holders[other]
    if redis.call('EXISTS', held) == 0 or (owner ~= nil and not alive(owner or nil)) then
      redis.call('DEL', held)
      redis.call('ZREM', ids, other)
    end
  end
  if redis.call('ZCARD', ids) >= max_jobs then return {'full'} end
end
local reply = create('new', 0, 0)
if evicted then
  -- A full store evicts at every claim: the records next in line, for the caller to give the next claim.
  for _, next_id in ipairs(redis.call('ZRANGE', finished, 0, EVICTION_HINTS - 1)) do
    reply[#reply + 1] = prefix .. next_id
  end
end
return reply
""".replace("EVICTION_HINTS", str(EVICTION_HINTS))

#: Takes over an active record with its input whose owner's lease lapsed (see RedisJobStore.orphans), to be
#: resumed: its fields, or an empty reply when it is not (or no longer) one.
_TAKE_OVER = """
local key, lease, me, listed = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local status = redis.call('HGET', key, 'status')
if status ~= 'pending' and status ~= 'running' then return {} end
if redis.call('HEXISTS', key, 'input_data') == 0 then return {} end
local owner = redis.call('HGET', key, 'owner')
-- KEYS[2] is the lease of the owner the caller listed: another owner since, and the next look decides.
if (owner or '') ~= listed or owner == me or redis.call('EXISTS', lease) == 1 then return {} end
redis.call('HSET', key, 'status', 'pending', 'owner', me, 'interrupted', '0', 'resume', '1')
redis.call('HDEL', key, 'completed_at', 'result', 'error')
redis.call('PERSIST', key)
return redis.call('HGETALL', key)
"""


@dataclass(frozen=True)
class RedisUrl:
    """A parsed ``redis://`` setting: the URL for the client, a label safe to show, the key prefix; for a
    ``redis+cluster://`` one also the nodes to start from."""

    url: str
    label: str
    prefix: str
    password: Optional[str] = field(repr=False)
    #: ``redis+cluster://`` or ``rediss+cluster://``: a Redis Cluster, reached through ``nodes``.
    cluster: bool = False
    nodes: Tuple[Tuple[str, int], ...] = ()
    username: Optional[str] = None
    tls: bool = False
    #: ``redis+sentinel://``: the master of ``service``, as the sentinels in ``nodes`` name it, database ``db``.
    sentinel: bool = False
    service: str = ""
    db: int = 0
    #: ``?wait_replicas=n``: a batch that finishes jobs counts as written only once ``n`` replicas have it (``WAIT``).
    wait_replicas: int = 0
    #: ``?wait_timeout_ms=ms``: how long one ``WAIT`` waits for them (then the batch is written again, later).
    wait_timeout_ms: int = 0

    @property
    def keyspace(self) -> str:
        """What every key starts with: the prefix, or in a cluster the prefix as a hash tag (``{prefix}``), so
        that one store's keys are in one slot (the claim script reads and writes several of them)."""
        return f"{{{self.prefix}}}" if self.cluster else self.prefix


#: The URL schemes of a Redis Cluster (``redis+cluster://host:port[,host:port…][?prefix=name]``).
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: The URL schemes of a Redis watched by sentinels (``redis+sentinel://host:port[,host:port…]/service[?db=n]``).
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


#: The URL parameters every scheme reads (``redis+sentinel://`` also ``db=n``).
QUERY_PARAMETERS = ("prefix=name", "wait_replicas=n", "wait_timeout_ms=ms")
#: ``WAIT``'s timeout when ``wait_replicas`` is set without ``wait_timeout_ms``.
DEFAULT_WAIT_TIMEOUT_MS = 1000
#: The longest ``wait_timeout_ms``: a ``WAIT`` must answer within the client's socket timeout (COMMAND_TIMEOUT).
MAX_WAIT_TIMEOUT_MS = 4000
MAX_WAIT_REPLICAS = 64


@dataclass(frozen=True)
class _Query:
    """What a Redis URL's query says besides the hosts."""

    prefix: str
    wait_replicas: int
    wait_timeout_ms: int


def _query_of(query_text: str, known: Tuple[str, ...] = QUERY_PARAMETERS) -> _Query:
    query = parse_qs(query_text, keep_blank_values=True)
    unknown = sorted(set(query) - {name.partition("=")[0] for name in known})
    if unknown:
        read = ", ".join(known[:-1]) + f" and {known[-1]}"
        raise ValueError(f"unknown URL parameter(s) {', '.join(unknown)} (only {read} are read)")
    prefix = query.get("prefix", [DEFAULT_PREFIX])[-1]
    if not prefix or any(c in prefix for c in " \t\r\n"):
        raise ValueError("prefix must be a non-empty name without spaces")
    replicas = _number(query, "wait_replicas", 0, MAX_WAIT_REPLICAS, "a number of replicas")
    timeout = _number(query, "wait_timeout_ms", 1, MAX_WAIT_TIMEOUT_MS, "milliseconds")
    if timeout is not None and not replicas:
        raise ValueError("wait_timeout_ms needs wait_replicas=n (n >= 1): it is how long WAIT waits for them")
    return _Query(prefix, replicas or 0, (timeout or DEFAULT_WAIT_TIMEOUT_MS) if replicas else 0)


def _number(query: Dict[str, List[str]], name: str, low: int, high: int, what: str) -> Optional[int]:
    """The integer parameter ``name`` (``low`` to ``high``), or None when absent; ValueError saying why."""
    if name not in query:
        return None
    text = query[name][-1]
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"{name} must be {what} from {low} to {high}, got {text!r}")
    return int(text)


def _nodes_of(hosts: str, kind: str, default_port: int) -> List[Tuple[str, int]]:
    nodes: List[Tuple[str, int]] = []
    for node in hosts.split(","):
        where = urlsplit(f"//{node.strip()}")
        try:
            port = where.port
        except ValueError:
            raise ValueError("the port must be a number from 1 to 65535") from None
        if not where.hostname:
            raise ValueError(f"the {kind} URL needs at least one host:port, comma-separated: "
                             f"{kind}://node1:{default_port},node2:{default_port}")
        if port == 0:
            raise ValueError("the port must be a number from 1 to 65535")
        nodes.append((where.hostname, port or default_port))
    return nodes


def _parse_sentinel_url(value: str) -> RedisUrl:
    """``redis[s]+sentinel://[[user]:password@]host:port[,host:port…]/service_name[?db=n][&prefix=name]``: the
    password is the master's (and its replicas'), not the sentinels'."""
    parts = urlsplit(value)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = _nodes_of(hosts, "redis+sentinel", 26379)
    service = unquote(parts.path.strip("/"))
    if not service or "/" in service:
        raise ValueError("the redis+sentinel URL needs the service name the sentinels monitor: "
                         "redis+sentinel://sentinel1:26379,sentinel2:26379/mymaster")
    query = _query_of(parts.query, (*QUERY_PARAMETERS, "db=n"))
    db_text = parse_qs(parts.query).get("db", ["0"])[-1]
    if not db_text.isdigit():
        raise ValueError(f"the database must be a number (?db=0), got {db_text!r}")
    username, sep, password = userinfo.partition(":")
    client_url = parts._replace(query="").geturl()
    return RedisUrl(client_url, mask_uri_credentials(client_url), query.prefix,
                    unquote(password) if sep and password else None, nodes=tuple(nodes),
                    username=unquote(username) or None, tls=parts.scheme == "rediss+sentinel", sentinel=True,
                    service=service, db=int(db_text), wait_replicas=query.wait_replicas,
                    wait_timeout_ms=query.wait_timeout_ms)


def _parse_cluster_url(value: str) -> RedisUrl:
    """``redis[s]+cluster://[[user]:password@]host:port[,host:port…][/0][?prefix=name]``."""
    parts = urlsplit(value)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = _nodes_of(hosts, "redis+cluster", 6379)
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has database 0 only: leave the database out of a redis+cluster URL")
    query = _query_of(parts.query)
    if "{" in query.prefix or "}" in query.prefix:
        raise ValueError("a redis+cluster prefix must not contain { or }: the store puts it in braces itself "
                         "(a hash tag, so that its keys share one slot)")
    username, sep, password = userinfo.partition(":")
    client_url = parts._replace(query="").geturl()
    return RedisUrl(client_url, mask_uri_credentials(client_url), query.prefix,
                    unquote(password) if sep and password else None, cluster=True, nodes=tuple(nodes),
                    username=unquote(username) or None, tls=parts.scheme == "rediss+cluster",
                    wait_replicas=query.wait_replicas, wait_timeout_ms=query.wait_timeout_ms)


def parse_redis_url(value: str) -> RedisUrl:
    """Parse ``redis[s]://[[user]:password@]host[:port][/db][?prefix=name]`` or
    ``redis[s]+cluster://[[user]:password@]host:port[,host:port…][?prefix=name]`` or
    ``redis[s]+sentinel://[[user]:password@]host:port[,host:port…]/service_name[?db=n][&prefix=name]``, each also
    with ``wait_replicas=n`` (and ``wait_timeout_ms=ms``, 1 to 4000, default 1000); raises ValueError saying why."""
    parts = urlsplit(value)
    if parts.scheme in CLUSTER_SCHEMES:
        return _parse_cluster_url(value)
    if parts.scheme in SENTINEL_SCHEMES:
        return _parse_sentinel_url(value)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("the URL must start with redis://, rediss://, redis+cluster:// or redis+sentinel://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError("the redis URL needs a host: redis://host:6379/0")
    if port == 0:
        raise ValueError("the port must be a number from 1 to 65535")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"the database must be a number (redis://host:6379/0), got {db!r}")
    query = _query_of(parts.query)
    client_url = parts._replace(query="").geturl()
    password = unquote(parts.password) if parts.password is not None else None
    return RedisUrl(client_url, mask_uri_credentials(client_url), query.prefix, password or None,
                    wait_replicas=query.wait_replicas, wait_timeout_ms=query.wait_timeout_ms)


def _client_module() -> Any:
    try:
        import redis.asyncio as aioredis  # only listeners that use it load redis-py
    except ImportError:
        raise JobStoreError(f"job_store redis:// needs the redis package: {INSTALL_HINT}") from None
    return aioredis


def _new_client(target: RedisUrl, *, asynchronous: bool = True, timeout: float = COMMAND_TIMEOUT,
                node: Optional[Tuple[str, int]] = None) -> Any:
    """A redis-py client for ``target``, not yet connected: asyncio's for the store, the blocking one for
    ``check-config`` (their modules and constructors are the same but for ``asyncio``); a ``RedisCluster`` for a
    cluster URL, the master the sentinels name for a sentinel URL; with ``node``, a plain client of that server
    alone (in the URL's database), which never retries a command."""
    if asynchronous:
        _client_module()  # the install hint when redis-py is missing
    base = "redis.asyncio" if asynchronous else "redis"
    options: Dict[str, Any] = {"decode_responses": True, "socket_connect_timeout": CONNECT_TIMEOUT,
                               "socket_timeout": timeout}
    if node is not None:
        no_retry = importlib.import_module(f"{base}.retry").Retry(importlib.import_module("redis.backoff").NoBackoff(), 0)
        return importlib.import_module(base).Redis(host=node[0], port=node[1], db=target.db, username=target.username,
                                                   password=target.password, ssl=target.tls, retry=no_retry, **options)
    if target.cluster:
        cluster = importlib.import_module(f"{base}.cluster")
        return cluster.RedisCluster(startup_nodes=[cluster.ClusterNode(host, port) for host, port in target.nodes],
                                    username=target.username, password=target.password, ssl=target.tls, **options)
    if target.sentinel:
        sentinels = importlib.import_module(f"{base}.sentinel").Sentinel(
            list(target.nodes), socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT)
        return sentinels.master_for(target.service, db=target.db, username=target.username,
                                    password=target.password, ssl=target.tls, **options)
    return importlib.import_module(base).Redis.from_url(target.url, **options)


def _address(where: Tuple[str, int]) -> str:
    return f"{where[0]}:{where[1]}"


def _reason(exc: BaseException) -> str:
    return mask_uri_credentials(str(exc) or type(exc).__name__)


def check_redis(value: str) -> Optional[str]:
    """For ``check-config``: why the Redis store cannot be used (package missing, no answer to PING, fewer replicas
    in step than ``wait_replicas`` asks for), or None."""
    target = parse_redis_url(value)
    if importlib.util.find_spec("redis") is None:
        return f"job_store {target.label}: needs the redis package: {INSTALL_HINT}"
    try:
        client = _new_client(target, asynchronous=False, timeout=CONNECT_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - a cluster client connects as it is made
        return f"job_store {target.label}: {_reason(exc)}"
    try:
        client.ping()
        return _replicas_problem(client, target)
    except Exception as exc:  # noqa: BLE001 - whatever it is, check-config reports it
        return f"job_store {target.label}: {_reason(exc)}"
    finally:
        client.close()


def _replicas_problem(client: Any, target: RedisUrl) -> Optional[str]:
    """With ``wait_replicas=n``: why the master of the store's records has fewer than ``n`` replicas online (no
    message would be acknowledged), or None."""
    if not target.wait_replicas:
        return None
    if target.cluster:
        node = client.get_node_from_key(f"{target.keyspace}:ids")
        info = client.info("replication", target_nodes=node)
    else:
        info = client.info("replication")
    online = sum(1 for value in info.values() if isinstance(value, dict) and value.get("state") == "online")
    if online >= target.wait_replicas:
        return None
    return (f"job_store {target.label}: wait_replicas={target.wait_replicas}, but the master of its records has "
            f"{online} replica(s) online: finished jobs would never be acknowledged")


def _text(value: str) -> str:
    return value if value.isascii() else value.encode("utf-8", "backslashreplace").decode("utf-8")


def _json(value: Any) -> str:
    try:
        return to_json_bytes(value).decode("utf-8")
    except ResultEncodingError:  # kept as its repr: the record must be written whatever the processor returned
        return json.dumps(repr(value))


def record_fields(job: JobInfo, interrupted: bool = False) -> Dict[str, str]:
    """The hash fields of ``job``'s record (a field whose value is None is absent)."""
    fields = {"job_id": _text(job.job_id), "status": job.status.value,
              "started_at": job.started_at.isoformat(timespec="microseconds"),
              "duplicate_count": str(job.duplicate_count), "attempts": str(job.attempts),
              "interrupted": "1" if interrupted else "0"}
    if job.completed_at is not None:
        fields["completed_at"] = job.completed_at.isoformat(timespec="microseconds")
    if job.topic is not None:
        fields["topic"] = _text(job.topic)
    if job.input_data is not None:
        fields["input_data"] = _json(job.input_data)
    if job.result is not None:
        fields["result"] = _json(job.result)
    if job.error is not None:
        fields["error"] = _text(job.error)
    return fields


#: The fields of a record a job list shows (input and result stay in Redis).
_LISTED = ("job_id", "status", "started_at", "completed_at", "topic", "error", "duplicate_count", "attempts")
_OPTIONAL = ("completed_at", "topic", "input_data", "result", "error")


def job_from_record(fields: Dict[str, str]) -> Optional[JobInfo]:
    """The job a record holds, or None for an empty or unreadable one."""
    if not fields.get("status"):
        return None
    try:
        return JobInfo(job_id=fields["job_id"], status=JobStatus(fields["status"]),
                       started_at=datetime.fromisoformat(fields["started_at"]),
                       completed_at=datetime.fromisoformat(fields["completed_at"]) if fields.get("completed_at") else None,
                       topic=fields.get("topic"),
                       input_data=json.loads(fields["input_data"]) if fields.get("input_data") else None,
                       result=json.loads(fields["result"]) if fields.get("result") else None,
                       error=fields.get("error"), duplicate_count=int(fields.get("duplicate_count") or 0),
                       attempts=int(fields.get("attempts") or 0))
    except (KeyError, ValueError, TypeError) as exc:
        logger.warning("Job store: skipped the unreadable record of job %r: %s", fields.get("job_id"), exc)
        return None


class NotReplicated(JobStoreError):
    """Fewer replicas than ``wait_replicas`` acknowledged a batch within ``wait_timeout_ms``: it is written again."""


class RedisJobStore(MemoryJobStore):
    """A :class:`~Listener.jobs.store.JobStore` whose records are in Redis, shared by every listener using the
    same URL (see the module's docstring)."""

    #: Records outlive the process: a message is acknowledged only once :meth:`durable` passed.
    persistent = True
    #: Other processes' jobs free slots too, without this one hearing of it.
    full_recheck_interval: Optional[float] = FULL_RECHECK

    def __init__(self, url: str, max_jobs: int, ttl_seconds: float, keep_input: bool = False) -> None:
        super().__init__(max_jobs, ttl_seconds, keep_input)
        self.target = parse_redis_url(url)
        self.label = self.target.label
        self.on_error: Callable[[str], None] = lambda message: logger.error("%s", message)
        #: Told (a WARNING line unless :meth:`open` is given another) when the store's master changed: a failover.
        self.on_failover: Callable[[str], None] = lambda message: logger.warning("%s", message)
        #: How many times this store found its master changed (see :meth:`_check_master`).
        self.failovers = 0
        #: Seconds an active record of a non-resumable store lives unless renewed.
        self.lease = ACTIVE_LEASE
        #: Seconds this store's owner key lives unless renewed (set before :meth:`open`).
        self.owner_lease = OWNER_LEASE
        #: Seconds between looks for :meth:`orphans`: a dead worker's jobs are taken over once its lease lapsed.
        self.orphan_scan_interval: Optional[float] = OWNER_LEASE
        #: Records this store creates are resumed by :meth:`orphans` (set by its first call): they never
        #: expire while active, and are never dropped to make room.
        self.resumable = False
        #: This store's owner id while it is open (a new one per :meth:`open`).
        self.owner = ""
        #: How many times this store found that the Redis lost its data (see :data:`DATA_LOST`).
        self.data_losses = 0
        self._epoch = ""  # the marker this store expects in Redis
        self._client: Any = None
        self._claim_script: Any = None
        self._take_over_script: Any = None
        self._writer: "Optional[asyncio.Task[None]]" = None
        self._wake: Optional[asyncio.Event] = None
        self._dirty: Dict[str, Optional[JobInfo]] = {}
        self._claimed: Set[str] = set()  # created by admit(): Redis counts their duplicates
        self._written: Set[str] = set()  # ids this store wrote (reindex deletes those no longer held)
        self._taken = 0  # batches the writer took
        self._committed = 0
        self._failure: Optional[str] = None
        self._master: Optional[Tuple[str, int]] = None  # the master last written to (None: standalone, or unknown)
        self._waiter: Optional[Tuple[Tuple[str, int], Any]] = None  # wait_replicas: a client of the master
        self._claiming: Dict[str, int] = {}  # ids whose claim is under way (how many), answered or not yet
        self._next_evicted: List[str] = []  # records a full store evicts next (the claim script's hint)
        self._waiters: Deque[Tuple[int, "asyncio.Future[None]"]] = deque()

    # -- keys ------------------------------------------------------------------------------------

    def _key(self, job_id: str) -> str:
        return f"{self.target.keyspace}:job:{_text(job_id)}"

    @property
    def _ids(self) -> str:
        return f"{self.target.keyspace}:ids"

    @property
    def _finished_key(self) -> str:
        return f"{self.target.keyspace}:finished"

    @property
    def _epoch_key(self) -> str:
        return f"{self.target.keyspace}:epoch"

    @property
    def _owners(self) -> str:
        return f"{self.target.keyspace}:owner:"

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._client is not None

    # -- opening and closing ---------------------------------------------------------------------

    async def open(self, on_error: Optional[Callable[[str], None]] = None,
                   on_failover: Optional[Callable[[str], None]] = None) -> None:
        """Connect and PING; start the writer. ``on_error`` is told of failures to write, ``on_failover`` that the
        master changed (a Redis Cluster or Sentinel failover), each with a message that names the store.

        Raises:
            JobStoreError: redis-py is not installed, or Redis does not answer or refuses the credentials
                (the message names the store, its password masked).
        """
        if on_error is not None:
            self.on_error = on_error
        if on_failover is not None:
            self.on_failover = on_failover
        if self._client is not None:
            return
        client = _new_client(self.target)
        owner = uuid.uuid4().hex
        try:
            client.pipeline(transaction=True)  # the writer's; older redis-py refuses it for a cluster
        except Exception:  # noqa: BLE001 - RedisClusterException: transactions are not supported
            await _close_client(client)
            raise JobStoreError(f"Cannot open job store {self.label}: {CLUSTER_TRANSACTIONS}") from None
        try:
            await client.ping()
            await client.set(self._owners + owner, "1", px=self._owner_lease_ms())
            await client.set(self._epoch_key, uuid.uuid4().hex, nx=True)
            epoch = await client.get(self._epoch_key)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the store is reported by name
            await _close_client(client)
            raise JobStoreError(f"Cannot open job store {self.label}: {_reason(exc)}") from None
        self.owner = owner
        self._epoch = epoch or ""
        self._client = client
        self._master = self._writing_to()
        self._claim_script = client.register_script(_CLAIM)
        self._take_over_script = client.register_script(_TAKE_OVER)
        self._failure = None
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_forever(self._wake), name=f"job-store-writer[{self.label}]")
        if self._dirty:
            self._wake.set()

    async def close(self) -> None:
        """Write what is not yet written (a few tries), end this store's lease (its active jobs, if any, are
        taken over by the next claim or look for orphans), then disconnect (a no-op when not open)."""
        writer, client = self._writer, self._client
        if writer is None or client is None:
            return
        for attempt in range(3):
            if not self._dirty and self._committed >= self._taken:
                break
            try:
                await asyncio.wait_for(self.durable(), COMMAND_TIMEOUT)
            except (JobStoreError, asyncio.TimeoutError):
                await asyncio.sleep(0.1 * (attempt + 1))
        writer.cancel()
        await _at_most(writer, COMMAND_TIMEOUT)
        self._writer = self._client = self._wake = None
        with contextlib.suppress(Exception):  # unreachable: the lease lapses on its own
            await asyncio.wait_for(client.delete(self._owners + self.owner), COMMAND_TIMEOUT)
        await self._close_waiter()
        await _close_client(client)

    # -- admission (claimed in Redis) -----------------------------------------------------------

    def admit_now(self, job_id: str, data: Optional[Dict[str, Any]], topic: Optional[str] = None,
                  duplicate_action: str = "skip") -> Optional[Admission]:
        """None: only Redis decides (await :meth:`admit`)."""
        return None

    async def admit(self, job_id: str, data: Optional[Dict[str, Any]], topic: Optional[str] = None,
                    duplicate_action: str = "skip") -> Admission:
        """Claim the id in Redis, atomically for every worker: create its record, or apply the duplicate policy
        to the record holding it (the claim script follows :func:`~Listener.jobs.admission.decide`).

        CREATED: the job is this process's to run (new, run again, or taken over from a worker whose lease
        lapsed). DUPLICATE: the record counted it. BUSY: the job is active in a worker whose lease is alive
        (admit again later). FULL: the store's limit is reached and no finished record can be evicted.

        Raises:
            JobStoreError: Redis cannot be reached (the message names the store).
        """
        job = JobInfo(job_id=job_id, status=JobStatus.PENDING, input_data=data, topic=topic)
        mode = "reprocess" if duplicate_action == REPROCESS else "admit"
        reply = await self._claim(job, mode)
        if reply[0] == Admission.FULL.value and (self._dirty or self._committed < self._taken):
            await self.durable()  # jobs this process finished free slots once Redis knows it
            reply = await self._claim(job, mode)
        if reply[0] == Admission.FULL.value:
            return Admission.FULL
        if reply[0] == Admission.BUSY.value:
            return Admission.BUSY
        verdict = Verdict(reply[0])
        if self.lock.locked():
            async with self.lock:
                self._claimed_locally(job, verdict, int(reply[1]), int(reply[2]))
        else:
            self._claimed_locally(job, verdict, int(reply[1]), int(reply[2]))
        return admission_of(verdict)

    async def mark_duplicate(self, job_id: str) -> bool:
        """Record in Redis that ``job_id`` arrived again, as :meth:`admit` does for a duplicate; False when no
        record holds the id.

        Raises:
            JobStoreError: Redis cannot be reached.
        """
        job = JobInfo(job_id=job_id, status=JobStatus.DUPLICATE)
        reply = await self._claim(job, "mark")
        if reply[0] == "unknown":
            return False
        async with self.lock:
            self._claimed_locally(job, Verdict.DUPLICATE, int(reply[1]), int(reply[2]), marked=True)
        return True

    async def orphans(self) -> List[JobInfo]:
        """Active records (each holds its job's input) whose owner's lease lapsed: each taken over
        atomically (owned by this store now, PENDING, its ``attempts`` kept), held here, and returned as a
        copy with its ``input_data``. From the first call on, this store's records are resumable (the
        listener calls this with ``ack_policy = "after_recording"`` only, where a record is the only copy of
        an acknowledged job; the wiring may also set :attr:`resumable` before :meth:`open`): they stay while
        active (no lease of their own) and are never dropped to make room.

        Raises:
            JobStoreError: Redis cannot be reached.
        """
        self.resumable = True
        if self._client is None or self._take_over_script is None:
            raise JobStoreError(f"Job store {self.label} is not open")
        try:
            await self.durable()
            found: List[JobInfo] = []
            for candidate, owner in await self._abandoned():
                reply = await self._take_over_script(
                    keys=[f"{self.target.keyspace}:job:{candidate}", self._owners + owner], args=[self.owner, owner])
                job = job_from_record(dict(zip(reply[0::2], reply[1::2]))) if reply else None
                if job is None:
                    continue
                async with self.lock:
                    self._adopt(job)
                found.append(replace(job))
        except JobStoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - a connection error, a timeout, a refused command
            raise JobStoreError(f"Job store {self.label} unreachable: {_reason(exc)}") from None
        return found

    async def _abandoned(self) -> List[Tuple[str, str]]:
        """The ids of active records with their input owned by another store whose lease lapsed, with that
        owner ('' for none) (as listed now; the take-over checks each again, atomically)."""
        ids = await self._client.zrange(self._ids, 0, -1)
        held: List[Tuple[str, str]] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            pipe = self._client.pipeline(transaction=False)
            for member in chunk:
                key = f"{self.target.keyspace}:job:{member}"
                pipe.hmget(key, "status", "owner")
                pipe.hexists(key, "input_data")
            replies = await pipe.execute()
            for member, (status, owner), has_input in zip(chunk, replies[0::2], replies[1::2]):
                if status in ("pending", "running") and has_input and owner != self.owner:
                    held.append((member, owner or ""))
        owners = sorted({owner for _, owner in held if owner})
        pipe = self._client.pipeline(transaction=False)
        for owner in owners:
            pipe.exists(self._owners + owner)
        alive = {owner for owner, exists in zip(owners, await pipe.execute() if owners else []) if exists}
        return [(member, owner) for member, owner in held if owner not in alive]

    def _owner_lease_ms(self) -> int:
        return max(1, int(self.owner_lease * 1000))

    async def _claim(self, job: JobInfo, mode: str) -> Any:
        """Run the claim script for ``job`` (``mode``: admit, reprocess, or mark a duplicate); its reply."""
        if self._client is None:
            raise JobStoreError(f"Job store {self.label} is not open")
        job_id, data, topic = job.job_id, job.input_data, job.topic
        if job_id in self._dirty or (job_id in self.jobs and self._committed < self._taken):
            # This process changed the job and Redis does not have it yet: the claim must see the change
            # (a write landing after it would undo what the claim recorded).
            await self.durable()
        args = [_text(job_id), self.max_jobs, max(1, int(self.ttl.total_seconds() * 1000)), int(self.lease * 1000),
                repr(time.time()), mode, job.started_at.isoformat(timespec="microseconds"),
                "" if topic is None else "=" + _text(topic), "" if data is None else _json(data),
                f"{self.target.keyspace}:job:", self.owner, self._owners, "1" if self.resumable else "0", "",
                "1" if self._holds(job_id) else "0"]
        record = self._key(job_id)
        keys = [record, self._ids, self._finished_key, self._epoch_key,
                *(name for name in self._next_evicted if name != record)]
        self._claiming[job_id] = self._claiming.get(job_id, 0) + 1
        try:
            losses = 0
            for _ in range(CLAIM_ROUNDS):
                args[-2] = self._epoch
                reply = await self._run_claim(keys, args)
                if reply[0] == "keys":  # the script needs these keys too (an owner's lease, records to evict)
                    keys += [name for name in reply[1:] if name not in keys]
                    continue
                if reply[0] != "lost":
                    if reply[0] == Verdict.NEW.value:
                        self._next_evicted = list(reply[3:])
                    return reply
                self._data_lost(reply[1] if len(reply) > 1 else self._epoch)
                losses += 1
                if losses == 3:
                    raise JobStoreError(f"Job store {self.label}: its Redis keeps losing its data; retrying")
        finally:
            self._claiming[job_id] -= 1
            if not self._claiming[job_id]:
                del self._claiming[job_id]
        raise JobStoreError(f"Job store {self.label}: the claim of job {job_id} kept needing other keys; retrying")

    async def _run_claim(self, keys: List[str], args: List[Any]) -> Any:
        try:
            return await self._claim_script(keys=keys, args=args)
        except Exception as exc:  # noqa: BLE001 - a connection error, a timeout, a refused command
            raise JobStoreError(f"Job store {self.label} unreachable: {_reason(exc)}") from None

    def _holds(self, job_id: str) -> bool:
        """True when this process runs (or is claiming) ``job_id``: an active record of this store's with the id is
        then that job's; otherwise it is a claim whose answer was lost, and the claim script claims it again."""
        held = self.jobs.get(job_id)
        return job_id in self._claiming or (held is not None and held.status in ACTIVE_STATUSES)

    def _data_lost(self, epoch: str) -> None:
        """The marker was gone (or another store wrote a new one, ``epoch``): report it loudly, and write this
        process's jobs again (its active ones hold their ids again)."""
        self._epoch = epoch
        self.data_losses += 1
        for job_id, job in self.jobs.items():
            self._dirty[job_id] = job
        if self._wake is not None:
            self._wake.set()
        self.on_error(f"Job store {self.label}: {DATA_LOST}")

    def _claimed_locally(self, job: JobInfo, verdict: Verdict, duplicate_count: int, attempts: int,
                         marked: bool = False) -> None:
        """Make this process's copy follow what the claim script did to the record (``marked``: an explicit
        :meth:`mark_duplicate`, which makes a PENDING job DUPLICATE too)."""
        if verdict is Verdict.DUPLICATE:
            mine = self.jobs.get(job.job_id)
            if mine is not None:
                mine.duplicate_count = duplicate_count
                if mine.status not in ACTIVE_STATUSES or (marked and mine.status is JobStatus.PENDING):
                    mine.status = JobStatus.DUPLICATE
            return
        job.duplicate_count, job.attempts = duplicate_count, attempts
        self._adopt(job)

    def _adopt(self, job: JobInfo) -> None:
        """Hold a job claimed in Redis (making room among this process's finished jobs, here only)."""
        job_id = job.job_id
        self._finished.pop(job_id, None)
        self._interrupted.discard(job_id)
        if job_id not in self.jobs:
            while len(self.jobs) >= self.max_jobs and self._finished:
                old, _ = self._finished.popitem(last=False)
                if self.jobs.pop(old, None) is not None:
                    self._claimed.discard(old)
                    self._written.discard(old)
                    self._interrupted.discard(old)
        self.jobs[job_id] = job
        self._claimed.add(job_id)
        self._written.add(job_id)

    # -- queries (every worker's jobs) -----------------------------------------------------------

    async def get(self, job_id: str) -> Optional[JobInfo]:
        """The job's record in Redis (a copy of this process's job while Redis cannot be reached)."""
        try:
            await self._settle()
            fields = await self._client.hgetall(self._key(job_id))
        except Exception as exc:  # noqa: BLE001 - answered from this process's jobs instead
            self._query_failed(exc)
            held = self.jobs.get(job_id)
            return None if held is None else replace(held)
        return job_from_record(fields)

    async def exists(self, job_id: str) -> bool:
        """True when a record holds the id (this process's jobs while Redis cannot be reached)."""
        return await self.get(job_id) is not None

    async def jobs_with(self, *statuses: JobStatus) -> Dict[str, JobInfo]:
        """Every worker's jobs (those with one of ``statuses``); this process's while Redis cannot be reached."""
        wanted = frozenset(statuses)
        try:
            await self._settle()
            ids = await self._client.zrange(self._ids, 0, -1)
            found: Dict[str, JobInfo] = {}
            for start in range(0, len(ids), 500):
                pipe = self._client.pipeline(transaction=False)
                for job_id in ids[start:start + 500]:
                    pipe.hgetall(f"{self.target.keyspace}:job:{job_id}")
                for fields in await pipe.execute():
                    job = job_from_record(fields)
                    if job is not None and (not wanted or job.status in wanted):
                        found[job.job_id] = job
        except Exception as exc:  # noqa: BLE001 - answered from this process's jobs instead
            self._query_failed(exc)
            return self.snapshot(*statuses)
        return found

    async def recent(self, limit: int) -> List[JobInfo]:
        """Every worker's ``limit`` newest jobs, without input and result; this process's while Redis cannot be
        reached."""
        try:
            await self._settle()
            return await read_recent(self._client, self.target.keyspace, limit)
        except Exception as exc:  # noqa: BLE001 - answered from this process's jobs instead
            self._query_failed(exc)
            return self._recent(limit)

    async def _settle(self) -> None:
        if self._client is None:
            raise JobStoreError(f"Job store {self.label} is not open")
        await self.durable()

    def _query_failed(self, exc: BaseException) -> None:
        logger.warning("Job store %s: query answered from this process's jobs only: %s", self.label, _reason(exc))

    # -- what changes ----------------------------------------------------------------------------

    def _changed(self, job: JobInfo) -> None:
        self._dirty[job.job_id] = job
        self._written.add(job.job_id)
        if self._wake is not None:
            self._wake.set()

    def _removed(self, job_id: str) -> None:
        self._written.discard(job_id)
        if job_id in self._claimed:
            # Not deleted: a claimed record expires in Redis (another worker may hold the id by then). A change
            # not yet written still is, so that the record ends with the job's outcome.
            self._claimed.discard(job_id)
            return
        self._dirty[job_id] = None
        if self._wake is not None:
            self._wake.set()

    def reindex(self) -> None:
        """Take note of a ``jobs`` dict replaced or edited by hand: Redis is written to match it."""
        super().reindex()
        self._interrupted &= set(self.jobs)
        self._claimed &= set(self.jobs)
        for job_id in self._written - set(self.jobs):
            self._dirty[job_id] = None
        self._written = set(self.jobs)
        for job in self.jobs.values():
            self._dirty[job.job_id] = job
        if self._wake is not None:
            self._wake.set()

    # -- writing ---------------------------------------------------------------------------------

    async def durable(self) -> None:
        """Return once every change made so far is written to Redis.

        Raises:
            JobStoreError: the store is not open, or writing is failing (the writer keeps retrying, with
                backoff; a later call succeeds once a write does).
        """
        if self._client is None or self._wake is None:
            raise JobStoreError(f"Job store {self.label} is not open")
        if self._failure is not None:
            raise JobStoreError(self._failure)
        target = self._taken + (1 if self._dirty else 0)
        if self._committed >= target:
            return
        future: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        await future

    async def _write_forever(self, wake: asyncio.Event) -> None:
        failures = 0
        renewed = owned = time.monotonic()
        while True:
            # Not wait_for(): on Python 3.11 it swallows a cancel that comes as the event is set, and close()
            # would wait for this task for ever.
            woken = asyncio.ensure_future(wake.wait())
            due = min(renewed + self.lease / 3, owned + self.owner_lease / 3)  # the next renewal, on time
            try:
                await asyncio.wait({woken}, timeout=max(0.01, due - time.monotonic()))
            finally:
                woken.cancel()
            wake.clear()
            dirty, self._dirty = self._dirty, {}
            if dirty:
                self._taken += 1
            target = self._taken
            now = time.monotonic()
            renew = now - renewed >= self.lease / 3
            own = now - owned >= self.owner_lease / 3
            try:
                await self._write(dirty, renew, own)
            except asyncio.CancelledError:
                self._dirty = {**dirty, **self._dirty}
                raise
            except Exception as exc:  # noqa: BLE001 - whatever it is, it is reported and the batch kept
                self._dirty = {**dirty, **self._dirty}
                failures += 1
                self._failed(_reason(exc))
                await asyncio.sleep(backoff_delay(failures, MAX_WRITE_RETRY, base=0.2))
                wake.set()
                continue
            if renew:
                renewed = now
            if own:
                owned = now
            self._check_master()
            if failures or self._failure is not None:
                failures = 0
                self._failure = None
                logger.warning("Job store %s: writing works again", self.label)
            self._committed = max(self._committed, target)
            while self._waiters and self._waiters[0][0] <= self._committed:
                _, future = self._waiters.popleft()
                if not future.done():
                    future.set_result(None)

    async def _write(self, dirty: Dict[str, Optional[JobInfo]], renew: bool, own: bool) -> None:
        if not dirty and not renew and not own:
            return
        pipe = self._client.pipeline(transaction=True)
        if own:
            pipe.set(self._owners + self.owner, "1", px=self._owner_lease_ms())
            pipe.set(self._epoch_key, self._epoch, nx=True)  # set: it was gone
            pipe.get(self._epoch_key)
        ttl_ms = max(1, int(self.ttl.total_seconds() * 1000))
        for job_id, job in dirty.items():
            key, member = self._key(job_id), _text(job_id)
            if job is None:
                pipe.delete(key)
                pipe.zrem(self._ids, member)
                pipe.zrem(self._finished_key, member)
                continue
            fields = record_fields(job, job_id in self._interrupted)
            if job_id in self._claimed:
                del fields["duplicate_count"]  # Redis counts them (other workers' duplicates too)
            resumable = self.resumable and job.input_data is not None
            if job.status in ACTIVE_STATUSES:
                fields["owner"] = self.owner
                if resumable:
                    fields["resume"] = "1"
            pipe.hset(key, mapping=fields)
            missing = [name for name in _OPTIONAL if name not in fields]
            if missing:
                pipe.hdel(key, *missing)
            pipe.zadd(self._ids, {member: job.started_at.timestamp()}, nx=True)
            if job.status in FINISHED_STATUSES:
                pipe.zadd(self._finished_key, {member: (job.completed_at or job.started_at).timestamp()})
                pipe.pexpire(key, ttl_ms)
            else:
                pipe.zrem(self._finished_key, member)
                if resumable:
                    pipe.persist(key)
                else:
                    pipe.pexpire(key, int(self.lease * 1000))
        if renew:
            for job_id, job in self.jobs.items():
                if job.status in ACTIVE_STATUSES and job_id not in dirty and not (
                        self.resumable and job.input_data is not None):
                    pipe.pexpire(self._key(job_id), int(self.lease * 1000))
        waits = self.target.wait_replicas and any(job is not None and job.status in FINISHED_STATUSES
                                                  for job in dirty.values())
        token = uuid.uuid4().hex if waits else ""
        if waits:  # the batch's mark: the master asked to WAIT must hold it
            pipe.set(self._owners + self.owner, token, px=self._owner_lease_ms())
        master = self._writing_to()
        replies = await pipe.execute()
        if own and (replies[1] or replies[2] != self._epoch):
            self._data_lost(replies[2] or self._epoch)
        if waits:
            await self._wait_for_replicas(master, token)

    async def _wait_for_replicas(self, master: Optional[Tuple[str, int]], token: str) -> None:
        """``wait_replicas``: return once that many replicas of ``master`` (where the batch marked ``token`` was
        sent) have it (Redis ``WAIT``). Raise :class:`NotReplicated` when fewer did within ``wait_timeout_ms``, or
        when ``master`` does not hold the batch (the client followed a failover or a redirection meanwhile: the
        batch may be on another server only): the batch is then written again, its messages unacknowledged.

        ``WAIT`` covers the writes of its own connection only: a write on that connection just before it comes
        after the batch's, so the replicas that have it have the batch. That write (``SET … GET`` of this store's
        owner key) also answers the batch's mark. Both go on one connection to ``master`` that is never retried
        elsewhere (a retry on another connection would make ``WAIT`` count nothing)."""
        wanted, timeout = self.target.wait_replicas, self.target.wait_timeout_ms
        client = self._client if master is None else await self._waiting_client(master)
        pipe = client.pipeline(transaction=False)
        pipe.set(self._owners + self.owner, "1", px=self._owner_lease_ms(), get=True)
        pipe.execute_command("WAIT", wanted, timeout)
        marked, acknowledged = await pipe.execute()
        if marked != token:
            raise NotReplicated("the batch is not on the master that was asked to WAIT (a failover): written again")
        if int(acknowledged) < wanted:
            raise NotReplicated(f"{acknowledged} of the {wanted} replicas wait_replicas asks for acknowledged the "
                                f"write within {timeout} ms")

    async def _waiting_client(self, master: Tuple[str, int]) -> Any:
        """A plain client of ``master`` alone, which never retries a command (see :meth:`_wait_for_replicas`)."""
        if self._waiter is not None and self._waiter[0] == master:
            return self._waiter[1]
        await self._close_waiter()
        client = _new_client(self.target, node=master)
        self._waiter = (master, client)
        return client

    async def _close_waiter(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            await _close_client(waiter[1])

    def _writing_to(self) -> Optional[Tuple[str, int]]:
        """The master the client sends this store's writes to now, as it knows without asking (a cluster's node for
        the store's slot, the sentinels' last answer); None for a standalone Redis."""
        if self.target.cluster:
            node = self._client.get_node_from_key(self._ids)
            return None if node is None else (str(node.host), int(node.port))
        if self.target.sentinel:
            address = getattr(self._client.connection_pool, "master_address", None)
            return None if address is None else (str(address[0]), int(address[1]))
        return None

    def _check_master(self) -> None:
        """After each write: when the master the client writes to is another server than before (it followed a
        failover: a cluster client's slot map, a sentinel client's last answer), report it to ``on_failover``,
        once per change. Costs no round trip."""
        master = self._writing_to()
        if master is None:
            return
        previous, self._master = self._master, master
        if previous is None or previous == master:
            return
        self.failovers += 1
        self.on_failover(f"Job store {self.label}: its master changed from {_address(previous)} to "
                         f"{_address(master)} (a failover); writes and claims go on there. {FAILOVER_WINDOW}")

    def _failed(self, reason: str) -> None:
        message = f"Cannot write job store {self.label}: {reason}; retrying"
        first = self._failure is None
        self._failure = message
        while self._waiters:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_exception(JobStoreError(message))
        if first:
            self.on_error(message)

    def _interrupt(self, job_id: str, error: str) -> bool:
        # The record says so too, so that any worker runs the job again.
        if not super()._interrupt(job_id, error):
            return False
        job = self.jobs.get(job_id)
        if job is not None:
            self._changed(job)  # written again: ``interrupted`` is set only now
        return True


async def read_recent(client: Any, prefix: str, limit: int) -> List[JobInfo]:
    """The ``limit`` newest records under ``prefix`` (a store's :attr:`RedisUrl.keyspace`; one ZREVRANGE, one
    pipelined HMGET each), without input and result."""
    if limit <= 0:
        return []
    ids = await client.zrevrange(f"{prefix}:ids", 0, limit - 1)
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(f"{prefix}:job:{_text(job_id)}", _LISTED)
    found = (job_from_record({name: value for name, value in zip(_LISTED, values) if value is not None})
             for values in await pipe.execute())
    return [job for job in found if job is not None]


class RedisJobReader:
    """A read-only look at a Redis job store's records, for a process that runs no jobs (a worker group's
    supervisor shows every worker's jobs with it). Connects on first use."""

    def __init__(self, url: str) -> None:
        self.target = parse_redis_url(url)
        self._client: Any = None

    def __repr__(self) -> str:
        return f"RedisJobReader({self.target.label})"

    def _connected(self) -> Any:
        if self._client is None:
            self._client = _new_client(self.target)
        return self._client

    async def recent(self, limit: int) -> List[JobInfo]:
        """Every worker's ``limit`` newest jobs (see :func:`read_recent`).

        Raises:
            JobStoreError: Redis cannot be reached (the message names the store, its password masked).
        """
        try:
            return await read_recent(self._connected(), self.target.keyspace, limit)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the store is reported by name
            raise JobStoreError(f"Cannot read job store {self.target.label}: {_reason(exc)}") from None

    async def get(self, job_id: str) -> Optional[JobInfo]:
        """The job's record, or None.

        Raises:
            JobStoreError: Redis cannot be reached.
        """
        try:
            fields = await self._connected().hgetall(f"{self.target.keyspace}:job:{_text(job_id)}")
        except Exception as exc:  # noqa: BLE001 - any failure to reach the store is reported by name
            raise JobStoreError(f"Cannot read job store {self.target.label}: {_reason(exc)}") from None
        return job_from_record(fields)

    async def close(self) -> None:
        """Disconnect (a no-op when never connected)."""
        client, self._client = self._client, None
        if client is not None:
            await _close_client(client)


#: Tasks given up by :func:`_at_most`, kept referenced until they end.
_GIVEN_UP: "Set[asyncio.Future[Any]]" = set()


def _consume(task: "asyncio.Future[Any]") -> None:
    if not task.cancelled():
        task.exception()  # retrieved: closing a broken connection may fail, nothing is left to do then


async def _at_most(awaitable: Awaitable[Any], timeout: float) -> None:
    """Await ``awaitable`` for at most ``timeout`` seconds, whatever it does: one that ignores its cancellation
    (a cluster client stuck closing its connections) is cancelled and left behind, not awaited, so that
    :meth:`RedisJobStore.close` and the listener's stop stay bounded. Its errors are swallowed."""
    task = asyncio.ensure_future(awaitable)
    task.add_done_callback(_consume)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        logger.debug("Job store: gave up waiting %.0f s for %r", timeout, task)
        task.cancel()
        _GIVEN_UP.add(task)
        task.add_done_callback(_GIVEN_UP.discard)


async def _close_client(client: Any) -> None:
    closing = getattr(client, "aclose", None) or client.close
    await _at_most(closing(), COMMAND_TIMEOUT)
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):  # a redis+sentinel store's connections to its sentinels
        await _at_most(sentinel.aclose(), COMMAND_TIMEOUT)
