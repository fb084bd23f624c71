"""The SQLite job store's own behaviour: restarts, bad files, grouped commits, a reader alongside,
failed writes; and the ``job_store`` option (config validation, ``check-config``, ``run()``)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import AsyncIterator, Callable, List

import pytest

from Listener import EventListener, EventListenerConfig, JobStatus
from Listener.cli.command import main
from Listener.errors import ConfigError
from Listener.jobs.factory import JobStoreError, check_job_store, sqlite_path
from Listener.jobs.admission import Admission
from Listener.jobs.sqlite import INTERRUPTED, SqliteJobStore


@pytest.fixture
async def open_store(tmp_path: Path) -> AsyncIterator[Callable[..., "asyncio.Future[SqliteJobStore]"]]:
    opened: List[SqliteJobStore] = []

    async def make(max_jobs: int = 10, ttl_seconds: float = 60, path: Path = tmp_path / "jobs.db") -> SqliteJobStore:
        store = SqliteJobStore(path, max_jobs, ttl_seconds)
        await store.open()
        opened.append(store)
        return store

    yield make  # type: ignore[misc]
    for store in opened:
        await store.close()


def rows(path: Path) -> List[tuple]:  # type: ignore[type-arg]
    reader = sqlite3.connect(str(path))
    try:
        return list(reader.execute("SELECT job_id, status, attempts, error FROM jobs ORDER BY job_id"))
    finally:
        reader.close()


async def test_a_finished_job_is_a_duplicate_after_reopening_and_an_interrupted_one_runs_again(
        open_store: Callable[..., "asyncio.Future[SqliteJobStore]"], tmp_path: Path) -> None:
    first = await open_store()
    for job_id in ("done", "running", "pending"):
        await first.admit(job_id, {"id": job_id})
    await first.start_attempt("done")
    await first.set_status("done", JobStatus.COMPLETED, result={"ok": 1})
    await first.start_attempt("running")
    await first.close()  # as a crash would leave it: "running" and "pending" never finished

    second = await open_store()
    done, running = second.jobs["done"], second.jobs["running"]
    assert (done.status, done.result, done.attempts) == (JobStatus.COMPLETED, {"ok": 1}, 1)
    assert (running.status, running.error, running.attempts) == (JobStatus.PENDING, INTERRUPTED, 1)
    assert second.is_interrupted("running") and second.is_interrupted("pending") and not second.is_interrupted("done")
    assert await second.admit("done", {"id": "done"}) is Admission.DUPLICATE  # duplicate_action applies
    assert await second.admit("running", {"id": "again"}) is Admission.CREATED
    await second.start_attempt("running")
    resumed = second.jobs["running"]
    assert (resumed.status, resumed.input_data, resumed.error, resumed.attempts) == (
        JobStatus.RUNNING, {"id": "again"}, None, 2)
    assert await second.admit("running", None) is Admission.DUPLICATE  # resumed once, then a duplicate like any job
    await second.durable()
    assert rows(tmp_path / "jobs.db") == [("done", "duplicate", 1, None), ("pending", "pending", 0, INTERRUPTED),
                                          ("running", "running", 2, None)]


async def test_opening_loads_the_newest_jobs_and_deletes_the_rest(
        open_store: Callable[..., "asyncio.Future[SqliteJobStore]"], tmp_path: Path) -> None:
    first = await open_store(max_jobs=10)
    for n in range(6):
        await first.admit(f"j{n}", None)
        await first.set_status(f"j{n}", JobStatus.COMPLETED)
        first.jobs[f"j{n}"].started_at = datetime(2025, 1, 1) + timedelta(minutes=n)
        first._changed(first.jobs[f"j{n}"])
    await first.close()
    second = await open_store(max_jobs=3)
    assert list(second.jobs) == ["j3", "j4", "j5"]  # oldest first, as if they had arrived in this order
    assert [row[0] for row in rows(tmp_path / "jobs.db")] == ["j3", "j4", "j5"]
    await second.admit("new", None)  # the store is full of finished jobs: the oldest goes, in memory and in the file
    await second.durable()
    assert [row[0] for row in rows(tmp_path / "jobs.db")] == ["j4", "j5", "new"]


async def test_interrupted_jobs_expire_and_make_room(open_store: Callable[..., "asyncio.Future[SqliteJobStore]"]) -> None:
    first = await open_store(max_jobs=2)
    await first.admit("a", None)
    await first.admit("b", None)
    await first.close()
    second = await open_store(max_jobs=2)
    assert await second.admit("c", None) is Admission.CREATED  # an interrupted job gave way
    assert len(second.jobs) == 2 and "c" in second.jobs
    assert await second.cleanup_expired(now=datetime.now() + timedelta(seconds=120)) == 1
    assert list(second.jobs) == ["c"]


async def test_a_removed_job_leaves_the_file(open_store: Callable[..., "asyncio.Future[SqliteJobStore]"],
                                             tmp_path: Path) -> None:
    store = await open_store()
    await store.admit("a", None)
    await store.set_status("a", JobStatus.COMPLETED)
    await store.admit("b", None)
    assert store.remove("a") and not store.remove("a")
    await store.durable()
    assert rows(tmp_path / "jobs.db") == [("b", "pending", 0, None)]
    assert await store.admit("a", None) is Admission.CREATED  # a forgotten id is new again
    await store.durable()
    assert rows(tmp_path / "jobs.db") == [("a", "pending", 0, None), ("b", "pending", 0, None)]


async def test_commits_are_grouped(open_store: Callable[..., "asyncio.Future[SqliteJobStore]"]) -> None:
    store = await open_store(max_jobs=5000)
    for n in range(2000):  # one turn of the event loop (nothing is awaited for real): one batch, one transaction
        await store.admit(f"j{n}", {"n": n})
        await store.start_attempt(f"j{n}")
    await store.durable()
    assert store.commits == 1
    for n in range(200):  # many turns: the writer takes what queued while it committed, together
        await store.set_status(f"j{n}", JobStatus.COMPLETED, result=n)
        await asyncio.sleep(0)
    await store.durable()
    assert 2 <= store.commits < 1 + 200


def test_batches_written_together_are_merged_each_job_into_its_last_change() -> None:
    from Listener.jobs.sqlite import _Batch, merged

    def row(job_id: str, status: str) -> tuple:  # type: ignore[type-arg]
        return (job_id, status)

    batches = [_Batch(1, False, [row("a", "pending"), row("b", "pending")], []),
               _Batch(2, False, [row("a", "running")], [("c",)]),
               _Batch(3, False, [row("a", "completed"), row("c", "pending")], [("b",)])]
    assert merged(batches) == (False, [row("a", "completed"), row("c", "pending")], [("b",)])
    # Every row goes first when a batch replaces them all: what came before it is not written.
    batches.append(_Batch(4, True, [row("d", "pending")], []))
    batches.append(_Batch(5, False, [row("d", "running")], [("a",)]))
    assert merged(batches) == (True, [row("d", "running")], [("a",)])
    assert merged([]) == (False, [], [])


async def test_changes_queued_while_the_writer_commits_go_in_one_transaction_each_job_one_row(
        open_store: Callable[..., "asyncio.Future[SqliteJobStore]"], monkeypatch: pytest.MonkeyPatch) -> None:
    """Under load a transaction holds every change queued while the writer committed the one before: a job
    admitted, started and finished meanwhile is written once, not three times (and nothing waits longer)."""
    from Listener.jobs import sqlite as module

    store = await open_store(max_jobs=100)
    writing, go_on = threading.Event(), threading.Event()
    written: List[int] = []
    original = module._Writer._write

    def slow_write(self: "module._Writer", batches: list) -> None:  # type: ignore[type-arg]
        written.append(len(module.merged(batches)[1]))
        writing.set()
        go_on.wait(5)
        original(self, batches)

    monkeypatch.setattr(module._Writer, "_write", slow_write)
    await store.admit("first", None)
    await asyncio.sleep(0)  # the end of the turn: its batch goes to the writer, which holds it
    assert await asyncio.to_thread(writing.wait, 5)
    for n in range(30):  # each in turns of its own, while the writer is busy
        await store.admit(f"j{n}", None)
        await asyncio.sleep(0)
        await store.start_attempt(f"j{n}")
        await asyncio.sleep(0)
        await store.set_status(f"j{n}", JobStatus.COMPLETED, result=n)
        await asyncio.sleep(0)
    go_on.set()
    await asyncio.wait_for(store.durable(), 5)
    assert written == [1, 30] and store.commits == 2
    written_rows = rows(store.path)
    assert len(written_rows) == 31 and ("j7", "completed", 1, None) in written_rows


async def test_a_second_connection_reads_the_file_while_the_store_writes(
        open_store: Callable[..., "asyncio.Future[SqliteJobStore]"], tmp_path: Path) -> None:
    store = await open_store()
    reader = sqlite3.connect(str(tmp_path / "jobs.db"))
    try:
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        await store.admit("a", {"x": 1})
        await store.durable()
        reader.execute("BEGIN")  # a long read transaction does not block the writer (WAL)
        assert reader.execute("SELECT status FROM jobs").fetchall() == [("pending",)]
        await store.set_status("a", JobStatus.COMPLETED)
        await asyncio.wait_for(store.durable(), 10)
        reader.execute("COMMIT")
        assert reader.execute("SELECT status FROM jobs").fetchall() == [("completed",)]
    finally:
        reader.close()


async def test_a_failing_write_is_reported_retried_and_durable_raises_meanwhile(
        open_store: Callable[..., "asyncio.Future[SqliteJobStore]"], tmp_path: Path) -> None:
    store = await open_store()
    reported: List[str] = []
    await store.open(on_error=reported.append)
    other = sqlite3.connect(str(tmp_path / "jobs.db"), isolation_level=None)
    try:
        other.execute("ALTER TABLE jobs RENAME TO hidden")  # every write now fails: no such table
        await store.admit("a", None)
        with pytest.raises(JobStoreError, match="jobs.db.*no such table: jobs"):
            await asyncio.wait_for(store.durable(), 10)
        assert reported and "Cannot write job store" in reported[0]
        with pytest.raises(JobStoreError):
            await store.durable()
        other.execute("ALTER TABLE hidden RENAME TO jobs")
        await _durable_again(store)
    finally:
        other.close()
    assert rows(tmp_path / "jobs.db") == [("a", "pending", 0, None)]


async def _durable_again(store: SqliteJobStore) -> None:
    """Wait (bounded) until the writer, retrying on its own, records everything again."""
    for _ in range(200):
        try:
            await asyncio.wait_for(store.durable(), 10)
            break
        except JobStoreError:
            await asyncio.sleep(0.05)
    await store.durable()


async def _durable_fails(store: SqliteJobStore, fragment: str) -> None:
    """``durable()`` raises, naming the file and ``fragment``, however often it is asked (bounded)."""
    for _ in range(3):
        with pytest.raises(JobStoreError, match=f"jobs\\.db.*{fragment}.*acknowledgements are held"):
            await asyncio.wait_for(store.durable(), 10)


async def test_a_job_store_file_deleted_mid_run_is_an_error_reported_once_until_it_is_back(
        open_store: Callable[..., "asyncio.Future[SqliteJobStore]"], tmp_path: Path) -> None:
    """Issue 23 item 5: the file deleted (here: moved away) while open takes writes nobody reads. durable() raises,
    so no acknowledgement goes out; on_error hears it once, not at every retry; put back, writing works again."""
    store = await open_store()
    reported: List[str] = []
    await store.open(on_error=reported.append)
    await store.admit("before", None)
    await store.durable()
    path, away = tmp_path / "jobs.db", tmp_path / "elsewhere.db"
    path.rename(away)
    await _durable_fails(store, "was deleted")  # nothing new to write: durable() looks at the path itself
    await store.admit("during", None)
    await _durable_fails(store, "was deleted")  # the writer's commit went to the file no one will open
    assert len(reported) == 1 and "was deleted" in reported[0] and str(path) in reported[0], reported
    away.rename(path)
    await _durable_again(store)
    assert [row[0] for row in rows(path)] == ["before", "during"]
    assert len(reported) == 1


async def test_a_job_store_file_replaced_mid_run_is_an_error(
        open_store: Callable[..., "asyncio.Future[SqliteJobStore]"], tmp_path: Path) -> None:
    """Another database put in its place (a restored backup, another listener's file): an error, and not written to."""
    store = await open_store()
    reported: List[str] = []
    await store.open(on_error=reported.append)
    other = await open_store(path=tmp_path / "other.db")
    await other.admit("theirs", None)
    await other.close()
    (tmp_path / "other.db").replace(tmp_path / "jobs.db")
    await store.admit("mine", None)
    await _durable_fails(store, "was replaced by another file")
    assert len(reported) == 1 and "was replaced" in reported[0], reported
    # Not written to after the change (what a reader sees of the new file still includes the listener's "-wal" file,
    # which SQLite applies to whatever file has the name: replace a job store only while its listener is stopped).
    assert "mine" not in [row[0] for row in rows(tmp_path / "jobs.db")]


async def test_a_corrupt_file_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JobStoreError, match=r"jobs\.db.*not a (SQLite )?database"):
        await SqliteJobStore(path, 10, 60).open()
    assert "corrupt" in (check_job_store(f"sqlite:///{path}") or "")


async def test_a_locked_file_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("Listener.jobs.sqlite.BUSY_TIMEOUT", 0.1)
    path = tmp_path / "jobs.db"
    holder = sqlite3.connect(str(path), isolation_level=None)
    try:
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(JobStoreError, match=r"jobs\.db.*locked.*another listener"):
            await SqliteJobStore(path, 10, 60).open()
    finally:
        holder.close()


async def test_a_missing_or_unusable_directory_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(JobStoreError, match=r"no-such-dir.*does not exist"):
        await SqliteJobStore(tmp_path / "no-such-dir" / "jobs.db", 10, 60).open()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(JobStoreError, match=r"a-file"):
        await SqliteJobStore(tmp_path / "a-file" / "jobs.db", 10, 60).open()
    with pytest.raises(JobStoreError, match=r"dir\.db"):
        (tmp_path / "dir.db").mkdir()
        await SqliteJobStore(tmp_path / "dir.db", 10, 60).open()


async def test_concurrent_opens_open_once(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.db", 10, 60)
    await asyncio.gather(store.open(), store.open(), store.open())
    writer = store._writer
    await store.open()
    assert writer is not None and store._writer is writer
    assert [t.name for t in threading.enumerate()].count("job-store-writer[jobs.db]") == 1
    await store.close()
    assert not store.is_open


async def test_durable_before_open_raises(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.db", 10, 60)
    await store.admit("early", None)  # kept in memory, written when it opens
    with pytest.raises(JobStoreError, match="not open"):
        await store.durable()
    await store.open()
    await store.durable()
    await store.close()
    assert rows(tmp_path / "jobs.db") == [("early", "pending", 0, None)]


def test_job_store_setting_is_validated() -> None:
    assert EventListenerConfig(job_store="sqlite:///jobs.db").job_store == "sqlite:///jobs.db"
    assert sqlite_path("sqlite:///data/jobs.db") == Path("data/jobs.db")
    assert sqlite_path("sqlite:////var/lib/jobs.db") == Path("/var/lib/jobs.db")
    assert sqlite_path("memory") is None
    assert EventListenerConfig(job_store="redis://localhost:6379/0").job_store == "redis://localhost:6379/0"
    with pytest.raises(ConfigError, match=r"job_store.*database must be a number"):
        EventListenerConfig(job_store="redis://localhost:6379/zero")
    with pytest.raises(ConfigError, match=r"job_store.*must be \"memory\", \"sqlite:"):
        EventListenerConfig(job_store="postgres://db")
    for empty in ("sqlite:///", "sqlite:///:memory:", "sqlite:///dir/"):
        with pytest.raises(ConfigError, match="needs a file path"):
            EventListenerConfig(job_store=empty)
    with pytest.raises(ConfigError, match="job_store.*must be a string"):
        EventListenerConfig(job_store=None)  # type: ignore[arg-type]


def test_check_job_store_creates_nothing(tmp_path: Path) -> None:
    new = tmp_path / "new.db"
    assert check_job_store(f"sqlite:///{new}") is None and not new.exists()
    assert "does not exist" in (check_job_store(f"sqlite:///{tmp_path}/missing/jobs.db") or "")
    assert check_job_store("memory") is None


async def test_an_existing_good_database_passes_the_check(open_store: Callable[..., "asyncio.Future[SqliteJobStore]"],
                                                          tmp_path: Path) -> None:
    store = await open_store()
    await store.admit("a", None)
    await store.close()
    assert check_job_store(f"sqlite:///{tmp_path / 'jobs.db'}") is None


def test_check_config_reports_an_unusable_job_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 200)
    config = tmp_path / "listener.toml"
    config.write_text(f'job_store = "sqlite:///{bad}"\n')
    assert main(["check-config", str(config)]) == 1
    assert "bad.db" in capsys.readouterr().err
    config.write_text(f'job_store = "sqlite:///{tmp_path / "fresh.db"}"\n')
    assert main(["check-config", str(config)]) == 0
    assert not (tmp_path / "fresh.db").exists()


async def test_run_refuses_a_corrupt_job_store_before_connecting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 200)
    listener = EventListener(EventListenerConfig(job_store=f"sqlite:///{bad}", port=1, reconnect_retries=0))
    with pytest.raises(JobStoreError, match=r"bad\.db"):
        await asyncio.wait_for(listener.run(), 10)
    assert not listener.is_running


async def test_a_write_failure_during_a_run_becomes_an_error_log_event(tmp_path: Path) -> None:
    listener = EventListener(EventListenerConfig(job_store=f"sqlite:///{tmp_path / 'jobs.db'}"))
    logged: List[str] = []
    listener._events.log = lambda level, event, text, *args, **fields: _record(logged, event, text % args)  # type: ignore
    await listener.process_message({"job_id": "a"})
    listener._job_store_failed("Cannot write job store 'x': disk full; retrying")
    await asyncio.sleep(0)
    assert logged == ["job_store_error: Cannot write job store 'x': disk full; retrying"]
    await listener.__aexit__(None, None, None)


async def _record(logged: List[str], event: str, text: str) -> None:
    logged.append(f"{event}: {text}")
