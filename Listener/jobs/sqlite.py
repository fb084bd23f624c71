"""A job store that keeps every job in a SQLite file (WAL mode) as well as in memory.

The in-memory mirror (it is a :class:`~Listener.jobs.memory.MemoryJobStore`) answers every query and applies
the duplicate policy, so ``jobs``, ``job_lock`` and the documented coroutines behave exactly as with the memory
store. Each change marks its job *dirty*; once per turn of the event loop the dirty jobs become rows handed to
a writer thread, which commits everything queued in one transaction (grouped commits). The event loop never
waits for the disk, except in :meth:`SqliteJobStore.durable`, which the acknowledgement path awaits.

Jobs found PENDING or RUNNING when the file is opened were interrupted (a crash, or a stop that ran
out of grace): they stay PENDING, and when their message is delivered again they run again, their
``attempts`` counting on. A finished job's redelivery is a duplicate (``duplicate_action``). With
``ack_policy = "after_recording"`` their messages were acknowledged, so none comes again: the listener takes
them over with :meth:`SqliteJobStore.orphans` and runs them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from ..core.serialization import ResultEncodingError, to_json_bytes
from .memory import MemoryJobStore
from .records import ACTIVE_STATUSES, CANCELLED, JobInfo, JobStatus
from .store import JobStoreError

__all__ = ["SCHEMA", "SCHEMA_VERSION", "SqliteJobStore", "check_existing_database"]

logger = logging.getLogger("Listener.jobs")

SCHEMA_VERSION = 1
#: The one table; timestamps are ISO 8601 local time, ``input_data`` and ``result`` JSON text.
SCHEMA = """CREATE TABLE IF NOT EXISTS jobs (
    job_id          TEXT PRIMARY KEY,
    status          TEXT NOT NULL,
    started_at      TEXT NOT NULL,
    completed_at    TEXT,
    topic           TEXT,
    input_data      TEXT,
    result          TEXT,
    error           TEXT,
    duplicate_count INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0
)"""
_UPSERT = ("INSERT OR REPLACE INTO jobs (job_id, status, started_at, completed_at, topic, "
           "input_data, result, error, duplicate_count, attempts) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_NEWEST = ("SELECT job_id, status, started_at, completed_at, topic, "
           "input_data, result, error, duplicate_count, attempts FROM jobs "
           "ORDER BY started_at DESC, rowid DESC LIMIT ?")
_COLUMNS_CHECK = ("SELECT job_id, status, started_at, completed_at, topic, "
                  "input_data, result, error, duplicate_count, attempts FROM jobs LIMIT 0")
_DELETE = "DELETE FROM jobs WHERE job_id = ?"
#: Seconds a statement waits for another connection's lock before reporting the database locked.
BUSY_TIMEOUT = 2.0
#: Seconds between attempts to write a batch after a failure (doubling up to the last).
_RETRY_DELAYS = (0.1, 0.5, 2.0, 5.0)
#: Attempts to write what is left when the store closes while writing fails.
_ATTEMPTS_AT_CLOSE = 3
INTERRUPTED = "Interrupted: the listener stopped before this job finished; it runs again when its message is redelivered"

Row = Tuple[Any, ...]


@dataclass
class _Batch:
    """Changes handed to the writer at once: its sequence number, rows to write, ids to delete."""

    seq: int
    replace_all: bool
    rows: List[Row]
    deletes: List[Tuple[str]]


def merged(batches: Sequence[_Batch]) -> Tuple[bool, List[Row], List[Tuple[str]]]:
    """What writing ``batches`` one after another leaves in the table, as one change: whether every row goes
    first, then the rows to write and the ids to delete, each job once (its last change). A job admitted, started
    and finished while the writer committed the transaction before is then one row, not three."""
    replace_all = False
    last: Dict[Optional[str], Optional[Row]] = {}
    for batch in batches:
        if batch.replace_all:
            replace_all = True
            last.clear()
        for row in batch.rows:
            last.pop(row[0], None)  # keeps the order of the last changes: rows go in as they were changed
            last[row[0]] = row
        for job_id, in batch.deletes:
            last.pop(job_id, None)
            last[job_id] = None
    rows = [row for row in last.values() if row is not None]
    deletes = [(job_id or "",) for job_id, row in last.items() if row is None]
    return replace_all, rows, deletes


def _text(value: Optional[str]) -> Optional[str]:
    """A string SQLite can store (a lone surrogate, possible in a str given directly, is escaped)."""
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _json(value: Any) -> Optional[str]:
    if value is None:
        return None
    try:
        return to_json_bytes(value).decode("utf-8")
    except ResultEncodingError:  # kept as its repr: the row must be written whatever the processor returned
        return json.dumps(repr(value))


def _when(value: Optional[datetime]) -> Optional[str]:
    return None if value is None else value.isoformat(timespec="microseconds")


def job_row(job: JobInfo) -> Row:
    """The ``jobs`` row of ``job`` (in :data:`SCHEMA` column order)."""
    return (_text(job.job_id), job.status.value, _when(job.started_at), _when(job.completed_at), _text(job.topic),
            _json(job.input_data), _json(job.result), _text(job.error), job.duplicate_count, job.attempts)


def _job_from_row(row: Sequence[Any]) -> Optional[JobInfo]:
    """The job a row holds, or None for a row this version cannot read (logged)."""
    try:
        return JobInfo(job_id=str(row[0]), status=JobStatus(row[1]), started_at=datetime.fromisoformat(row[2]),
                       completed_at=datetime.fromisoformat(row[3]) if row[3] else None, topic=row[4],
                       input_data=json.loads(row[5]) if row[5] else None,
                       result=json.loads(row[6]) if row[6] else None, error=row[7],
                       duplicate_count=int(row[8] or 0), attempts=int(row[9] or 0))
    except (ValueError, TypeError) as exc:
        logger.warning("Job store: skipped the unreadable row of job %r: %s", row[0], exc)
        return None


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if "locked" in text:
        return f"{text} (another process holds a lock on it: another listener, or an open sqlite3 transaction)"
    if "not a database" in text or "malformed" in text:
        return f"{text} (the file is not a SQLite database, or it is corrupt)"
    if "readonly" in text or "unable to open" in text:
        return f"{text} (the file or its directory is not writable)"
    return text


FileIdentity = Tuple[int, int]


def _file_identity(path: Path) -> FileIdentity:
    """The device and inode of the file at ``path`` (OSError when there is none)."""
    found = os.stat(path)
    return found.st_dev, found.st_ino


def _moved(path: Path, opened: FileIdentity) -> Optional[str]:
    """Why ``path`` no longer names the file the store opened (``opened``), or None when it still does.

    A file deleted or replaced while the store has it open goes on taking writes that nobody can read:
    after a restart the completed jobs it recorded would be unknown, and run again.
    """
    try:
        now = _file_identity(path)
    except FileNotFoundError:
        change = "was deleted"
    except OSError as exc:
        change = f"cannot be checked ({exc.strerror or exc})"
    else:
        if now == opened:
            return None
        change = "was replaced by another file"
    return (f"the file {change} after the listener opened it, so what it writes would be lost; acknowledgements "
            f"are held until the file is put back or the listener is restarted")


def _open_database(path: Path, max_jobs: int) -> Tuple[sqlite3.Connection, List[Row]]:
    """Open (creating if needed) and check the database; return it and its newest ``max_jobs`` rows.

    Older rows are deleted (``max_jobs_in_memory`` bounds the file too). Blocking: run it in a thread.
    """
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise JobStoreError(f"Cannot open job store {str(path)!r}: the directory {str(directory)!r} does not exist")
    connection: Optional[sqlite3.Connection] = None
    try:
        connection = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL mode (journal mode stays {mode!r})")
        connection.execute("PRAGMA synchronous=FULL")
        verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed: {verdict}")
        connection.execute("BEGIN IMMEDIATE")  # fails at once when another connection writes or it is read-only
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {version} is newer than this version of the listener reads")
        connection.execute(SCHEMA)
        connection.execute("PRAGMA user_version = 1")  # SCHEMA_VERSION
        rows = connection.execute(_NEWEST, (max_jobs,)).fetchall()
        connection.execute("DELETE FROM jobs WHERE job_id NOT IN "
                           "(SELECT job_id FROM jobs ORDER BY started_at DESC, rowid DESC LIMIT ?)", (max_jobs,))
        connection.execute("COMMIT")
    except (sqlite3.Error, OSError) as exc:
        if connection is not None:
            connection.close()
        raise JobStoreError(f"Cannot open job store {str(path)!r}: {_reason(exc)}") from None
    return connection, rows


def check_existing_database(path: Path) -> Optional[str]:
    """For ``check-config``: why an existing database file could not serve as the job store, or None.

    Opened read-only; nothing is created or changed.
    """
    if not path.is_file():
        return f"job_store {str(path)!r}: is not a file"
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
        try:
            verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                return f"job_store {str(path)!r}: the database is corrupt ({verdict})"
            has_table = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone()
            if has_table:
                connection.execute(_COLUMNS_CHECK)
        finally:
            connection.close()
    except sqlite3.Error as exc:
        return f"job_store {str(path)!r}: {_reason(exc)}"
    if not os.access(path, os.W_OK) or not os.access(path.parent if str(path.parent) else Path("."), os.W_OK):
        return f"job_store {str(path)!r}: the file or its directory is not writable"
    return None


class _Writer(threading.Thread):
    """Writes batches in order, as many as are queued per transaction; retries after a failure."""

    def __init__(self, connection: sqlite3.Connection, name: str, committed: Callable[[int], None],
                 failed: Callable[[int, str], None], still_there: Callable[[], Optional[str]] = lambda: None) -> None:
        super().__init__(name=name, daemon=True)
        self._connection = connection
        self._committed = committed
        self._failed = failed
        self._still_there = still_there  # why the file written is not the store's any more, or None
        self._queue: "queue.SimpleQueue[Optional[_Batch]]" = queue.SimpleQueue()
        #: Commits so far (the tests look at it to see grouping).
        self.commits = 0

    def submit(self, batch: _Batch) -> None:
        self._queue.put(batch)

    def finish(self) -> None:
        """Write what is queued, then end (the thread closes the connection)."""
        self._queue.put(None)

    def run(self) -> None:
        pending: List[_Batch] = []
        stopping = False
        failures = 0
        try:
            while True:
                if not pending and not stopping:
                    item = self._queue.get()
                    if item is None:
                        break
                    pending.append(item)
                while not stopping:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                    else:
                        pending.append(item)
                if not pending:
                    break
                try:
                    self._write(pending)
                except Exception as exc:  # noqa: BLE001 - whatever it is, it is reported and the batch kept
                    failures += 1
                    self._failed(pending[-1].seq, _reason(exc))
                    if stopping and failures >= _ATTEMPTS_AT_CLOSE:
                        break
                    time.sleep(_RETRY_DELAYS[min(failures, len(_RETRY_DELAYS)) - 1])
                    continue
                failures = 0
                self.commits += 1
                self._committed(pending[-1].seq)
                pending = []
                if stopping:
                    break
        finally:
            self._connection.close()

    def _check_file(self) -> None:
        problem = self._still_there()
        if problem is not None:
            raise JobStoreError(problem)

    def _write(self, batches: List[_Batch]) -> None:
        # Nothing is written once the path names another file: its WAL (the path's "-wal" file, still ours)
        # would be read with the file now there.
        self._check_file()
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            replace_all, rows, deletes = merged(batches)
            if replace_all:
                connection.execute("DELETE FROM jobs")
            if rows:
                connection.executemany(_UPSERT, rows)
            if deletes:
                connection.executemany(_DELETE, deletes)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        self._check_file()  # again: the file may have gone while the rows were written


class SqliteJobStore(MemoryJobStore):
    """A :class:`~Listener.jobs.store.JobStore`: a :class:`~Listener.jobs.memory.MemoryJobStore` whose jobs are
    also written to the SQLite file ``path``.

    Call :meth:`open` (the listener does, when ``run()`` starts) before use and :meth:`close` after.
    Changes made before :meth:`open` are written when it opens. ``on_error`` is called (on the event
    loop) with a message each time writing fails; writing is retried until it succeeds, and
    :meth:`durable` raises meanwhile, so nothing is acknowledged that is not on disk.
    """

    #: Jobs are kept in the file: they outlive the process.
    persistent = True

    def __init__(self, path: Path, max_jobs: int, ttl_seconds: float, keep_input: bool = False) -> None:
        super().__init__(max_jobs, ttl_seconds, keep_input)
        self.path = Path(path)
        self.on_error: Callable[[str], None] = lambda message: logger.error("%s", message)
        self._dirty: Dict[str, Optional[JobInfo]] = {}  # job id -> the job to write, or None to delete its row
        self._replace_all = False
        self._flush_scheduled = False
        self._sent = 0  # batches handed to the writer
        self._committed = 0  # the last batch the writer committed
        self._failure: Optional[str] = None
        self._waiters: Deque[Tuple[int, "asyncio.Future[None]"]] = deque()
        self._writer: Optional[_Writer] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._opening: "Optional[asyncio.Future[None]]" = None
        self._identity: Optional[FileIdentity] = None  # of the file opened: the path must keep naming it
        self._reported: Optional[str] = None  # the failure last reported to on_error, until writing works again
        self._orphans: List[str] = []  # interrupted jobs held when the file was opened, oldest first

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._writer is not None

    @property
    def commits(self) -> int:
        """Transactions committed since :meth:`open` (each holds every change queued at the time)."""
        return self._writer.commits if self._writer is not None else 0

    # -- opening and closing ---------------------------------------------------------------------

    async def open(self, on_error: Optional[Callable[[str], None]] = None,
                   on_failover: Optional[Callable[[str], None]] = None) -> None:
        """Open the file (creating it), load its newest ``max_jobs`` jobs, start the writer.

        ``on_error`` replaces the default report of a failed write (an ERROR log line); a file has no failover
        (``on_failover`` is never called).

        Raises:
            JobStoreError: the file is corrupt, locked, or cannot be created or written (named).
        """
        if on_error is not None:
            self.on_error = on_error
        if self._writer is not None:
            return
        if self._opening is None:  # callers that come meanwhile wait for the same opening
            self._opening = asyncio.ensure_future(self._open())
        opening = self._opening
        try:
            await asyncio.shield(opening)
        finally:
            if opening.done() and self._opening is opening:
                self._opening = None

    async def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        connection, rows = await asyncio.to_thread(_open_database, self.path, self.max_jobs)
        try:
            opened = await asyncio.to_thread(_file_identity, self.path)
        except OSError as exc:
            connection.close()
            raise JobStoreError(f"Cannot open job store {str(self.path)!r}: {_reason(exc)}") from None
        self._identity = opened
        self._load(rows)
        self._failure = None
        path = self.path
        self._writer = _Writer(connection, f"job-store-writer[{self.path.name}]", self._from_writer(self._on_committed),
                               self._from_writer(self._on_failed), lambda: _moved(path, opened))
        self._writer.start()
        self._flush()

    async def close(self) -> None:
        """Write every change made so far, then close the file (a no-op when not open)."""
        writer = self._writer
        if writer is None:
            return
        self._flush()
        writer.finish()
        await asyncio.to_thread(writer.join)
        self._writer = None
        await asyncio.sleep(0)  # let the writer's last callbacks run

    def _load(self, rows: List[Row]) -> None:
        """Add the file's jobs (newest first) to those in memory; mark the unfinished ones interrupted."""
        loaded: List[JobInfo] = []
        for row in rows:
            if len(self.jobs) + len(loaded) >= self.max_jobs:
                break
            job = _job_from_row(row)
            if job is None or job.job_id in self.jobs:
                continue
            if job.status in ACTIVE_STATUSES:
                job.status, job.error = JobStatus.PENDING, INTERRUPTED
                self._interrupted.add(job.job_id)
                self._dirty[job.job_id] = job
            elif job.status is JobStatus.FAILED and job.error == CANCELLED:  # stopped mid-job, left unacknowledged
                self._interrupted.add(job.job_id)
            loaded.append(job)
        for job in reversed(loaded):  # oldest first, as if they had arrived in this run
            self.jobs[job.job_id] = job
        # Those of an earlier run() of this process too (cut short at its stop): the file holds them alike.
        self._orphans = [job_id for job_id in self.jobs if job_id in self._interrupted]
        self._index_finished()

    async def orphans(self) -> List[JobInfo]:
        """The jobs the store held unfinished when it was last opened (running or pending at a crash, or cut
        short by a stop, also one of an earlier ``run()`` of this process) that kept their input and whose
        message has not come again since: each is PENDING again, owned by this process, and returned once
        (later calls return none until the store is opened again), oldest first."""
        async with self.lock:
            found, self._orphans = self._orphans, []
            taken: List[JobInfo] = []
            for job_id in found:
                job = self.jobs.get(job_id)
                if job is None or job_id not in self._interrupted or job.input_data is None:
                    continue  # forgotten, run again by its redelivered message, or without input to run on
                self._interrupted.discard(job_id)
                resumed = replace(job, status=JobStatus.PENDING, error=None, completed_at=None)
                self._put(resumed)
                taken.append(replace(resumed))
            return taken

    # -- what changes ----------------------------------------------------------------------------

    def _make_room(self) -> bool:
        if super()._make_room():
            return True
        # Interrupted jobs whose message never comes again must not fill the store for good.
        for job_id in list(self.jobs):
            if job_id in self._interrupted:
                return self.remove(job_id)
        return False

    def _cleanup_expired(self, now: Optional[datetime]) -> int:
        # Interrupted jobs started before the TTL go too: their message may never come again.
        cutoff = (now or datetime.now()) - self.ttl
        stale = [job_id for job_id in self._interrupted if self.jobs[job_id].started_at < cutoff]
        for job_id in stale:
            self.remove(job_id)
        return super()._cleanup_expired(now) + len(stale)

    def reindex(self) -> None:
        """Take note of a ``jobs`` dict replaced or edited by hand: the file is rewritten to match it."""
        super().reindex()
        self._interrupted &= set(self.jobs)
        self._replace_all = True
        self._dirty = dict(self.jobs)
        self._schedule()

    def _changed(self, job: JobInfo) -> None:
        self._dirty[job.job_id] = job
        if not self._flush_scheduled:
            self._schedule()

    def _removed(self, job_id: str) -> None:
        self._dirty[job_id] = None
        if not self._flush_scheduled:
            self._schedule()

    # -- writing ---------------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Flush at the end of this turn of the event loop (at once when called outside it)."""
        if self._writer is None:
            return  # kept until open()
        self._flush_scheduled = True
        try:
            asyncio.get_running_loop().call_soon(self._flush)
        except RuntimeError:
            self._flush()

    def _flush(self) -> None:
        """Hand the dirty jobs to the writer as one batch."""
        self._flush_scheduled = False
        if self._writer is None or not (self._dirty or self._replace_all):
            return
        dirty, self._dirty = self._dirty, {}
        rows = [job_row(job) for job in dirty.values() if job is not None]
        deletes = [(_text(job_id) or "",) for job_id, job in dirty.items() if job is None]
        self._sent += 1
        self._writer.submit(_Batch(self._sent, self._replace_all, rows, deletes))
        self._replace_all = False

    async def durable(self) -> None:
        """Return once every change made so far is committed to the file.

        Raises:
            JobStoreError: the store is not open, or writing is failing (the message says why; the
                writer keeps retrying, and a later call succeeds once a write does), or the path no longer
                names the file opened (deleted or replaced: what was committed is not where the next start
                looks; a later call succeeds once the file is back).
        """
        if self._writer is None:
            raise JobStoreError(f"Job store {str(self.path)!r} is not open")
        self._flush()
        if self._failure is not None:
            raise JobStoreError(self._failure)
        problem = _moved(self.path, self._identity) if self._identity is not None else None
        if problem is not None:
            message = self._failure_message(problem)
            self._report(message)
            raise JobStoreError(message)
        self._reported = None  # writing works and the file is in place: a new failure is news again
        target = self._sent
        if self._committed >= target:
            return
        future: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        await future

    def _from_writer(self, callback: Callable[..., None]) -> Callable[..., None]:
        """``callback`` made safe to call from the writer thread: it runs on the event loop."""
        loop = self._loop
        if loop is None:  # open() sets it before the writer starts
            raise RuntimeError("the job store is not open")

        def post(*args: Any) -> None:
            try:
                loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # the loop was closed: nobody is left waiting
                pass

        return post

    def _on_committed(self, seq: int) -> None:
        self._committed = max(self._committed, seq)
        if self._failure is not None:
            self._failure = None
            self._reported = None
            logger.warning("Job store %s: writing works again", self.path)
        while self._waiters and self._waiters[0][0] <= self._committed:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)

    def _failure_message(self, reason: str) -> str:
        return f"Cannot write job store {str(self.path)!r}: {reason}; retrying"

    def _report(self, message: str) -> None:
        """``on_error(message)``, once while the same failure goes on (the writer retries every few seconds)."""
        if message != self._reported:
            self._reported = message
            self.on_error(message)

    def _on_failed(self, seq: int, reason: str) -> None:
        message = self._failure_message(reason)
        self._failure = message
        while self._waiters:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_exception(JobStoreError(message))
        self._report(message)
