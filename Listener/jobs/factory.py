"""Which job store a listener uses (the ``job_store`` option), and the error a store reports.

``"memory"`` (the default) keeps jobs in a dict (see :mod:`Listener.jobs.memory`); ``"sqlite:///jobs.db"``
(a path relative to the working directory) or ``"sqlite:////var/lib/listener/jobs.db"`` (four slashes: an
absolute path) keeps them in a SQLite file as well (see :mod:`Listener.jobs.sqlite`);
``"redis://[[user]:password@]host:port/db"`` keeps them in Redis, shared by every listener using it (see
:mod:`Listener.jobs.redis`, the ``[redis]`` extra), ``"redis+cluster://host:port[,host:port…]"`` in a Redis
Cluster, ``"redis+sentinel://host:port[,host:port…]/service_name"`` in the master sentinels
name. Each is a :class:`~Listener.jobs.store.JobStore`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .memory import MemoryJobStore
from .store import JobStore, JobStoreError

__all__ = ["JobStoreError", "MEMORY", "REDIS_SCHEMES", "SQLITE_PREFIX", "check_job_store", "create_job_store",
           "job_store_problem", "sqlite_path"]

MEMORY = "memory"
SQLITE_PREFIX = "sqlite:///"
REDIS_SCHEMES = ("redis://", "rediss://", "redis+cluster://", "rediss+cluster://", "redis+sentinel://",
                 "rediss+sentinel://")


def job_store_problem(value: str) -> Optional[str]:
    """Why ``value`` is not a valid ``job_store`` setting, or None."""
    if value == MEMORY:
        return None
    if value.startswith(SQLITE_PREFIX):
        path = value[len(SQLITE_PREFIX):]
        if not path or path.endswith("/") or path == ":memory:":
            return "the sqlite URL needs a file path: sqlite:///relative/jobs.db or sqlite:////absolute/jobs.db"
        if "\x00" in path:
            return "the path must not contain a NUL character"
        return None
    if value.startswith(REDIS_SCHEMES):
        from .redis import parse_redis_url

        try:
            parse_redis_url(value)
        except ValueError as exc:
            return str(exc)
        return None
    return "must be \"memory\", \"sqlite:///path/to/jobs.db\" or \"redis://host:6379/0\""


def sqlite_path(value: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` setting, or None for ``memory``."""
    if not value.startswith(SQLITE_PREFIX):
        return None
    return Path(value[len(SQLITE_PREFIX):])


def create_job_store(job_store: str, max_jobs: int, ttl_seconds: float, keep_input: bool = False) -> JobStore:
    """The store a ``job_store`` setting names, not yet open (the listener opens it when ``run()`` starts)."""
    if job_store.startswith(REDIS_SCHEMES):
        from .redis import RedisJobStore  # redis-py itself is imported when the store opens

        return RedisJobStore(job_store, max_jobs, ttl_seconds, keep_input)
    path = sqlite_path(job_store)
    if path is None:
        return MemoryJobStore(max_jobs, ttl_seconds, keep_input)
    from .sqlite import SqliteJobStore  # only listeners that use it load sqlite3

    return SqliteJobStore(path, max_jobs, ttl_seconds, keep_input)


def check_job_store(job_store: str) -> Optional[str]:
    """For ``check-config``: why the store could not be opened, or None. Creates no file.

    An existing database is opened read-only and checked; for a new one, the directory must exist and
    be writable. A Redis store must answer a PING within a few seconds.
    """
    if job_store.startswith(REDIS_SCHEMES):
        from .redis import check_redis

        return check_redis(job_store)
    path = sqlite_path(job_store)
    if path is None:
        return None
    if path.exists():
        from .sqlite import check_existing_database

        return check_existing_database(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        return f"job_store {str(path)!r}: the directory {str(directory)!r} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"job_store {str(path)!r}: the directory {str(directory)!r} is not writable"
    return None
