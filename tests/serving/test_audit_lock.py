"""The audit writer: another process's write lock (short waits, a deadline) and a full disk."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import serving.http.audit as audit_module
from serving.http.audit import AuditLog

ANSWER = {"episode_id": "E-1", "probability": 0.7, "band": "intermediate"}
MODEL = {"name": "ctit-response", "version": "3"}


def _record(log: AuditLog) -> None:
    log.record_score(
        model=MODEL,
        patient_id="P-1",
        input_sha256="0" * 64,
        answers=[ANSWER],
        endpoint="/v1/score",
        caller="test",
    )


def _hold_write_lock(
    path: Path, seconds: float, held: threading.Event, released: list[float] | None = None
) -> None:
    other = sqlite3.connect(path, isolation_level=None)  # another worker process's connection
    other.execute("BEGIN IMMEDIATE")
    held.set()
    time.sleep(seconds)
    if released is not None:
        released.append(time.monotonic())
    other.execute("COMMIT")
    other.close()


def test_a_held_write_lock_delays_the_row_but_loses_nothing(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db", salt="s")
    held, released = threading.Event(), []
    holder = threading.Thread(target=_hold_write_lock, args=(log.path, 0.3, held, released))
    holder.start()
    held.wait(5)
    _record(log)  # waits for the lock (SQLite's own handler is off for this connection)
    done = time.monotonic()
    holder.join()
    assert done >= released[0]  # it waited for the other writer, and did not fail fast
    assert [row["endpoint"] for row in log.rows()] == ["/v1/score"]
    log.close()


def test_a_lock_held_past_the_deadline_fails_the_request_not_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_module, "_LOCK_WAIT_S", 0.2)
    log = AuditLog(tmp_path / "audit.db", salt="s")
    held = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(log.path, 1.0, held))
    holder.start()
    held.wait(5)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _record(log)
    holder.join()
    _record(log)  # the writer thread survived and writes again
    assert len(log.rows()) == 1
    log.close()


def test_a_full_disk_fails_the_write_and_the_log_recovers_when_space_returns(
    tmpfs, fill_disk
) -> None:
    disk = tmpfs("512k")
    log = AuditLog(disk / "audit.db", salt="s")
    _record(log)
    filler = fill_disk(disk)
    big = {**ANSWER, "padding": "x" * 50_000}  # more than the space left
    with pytest.raises(sqlite3.Error):
        log.record_score(
            model=MODEL,
            patient_id="P-2",
            input_sha256="1" * 64,
            answers=[big],
            endpoint="/v1/score",
            caller="test",
        )
    filler.unlink()
    _record(log)  # not stuck inside the failed transaction
    assert [row["patient_hash"] == log.hash_id("P-1") for row in log.rows()] == [True, True]
    log.close()


class _Traced(AuditLog):
    """Notes which thread ran each commit."""

    def __init__(self, *args, **kwargs) -> None:
        self.committers: list[str] = []
        super().__init__(*args, **kwargs)

    def _commit(self, submissions, wait):  # type: ignore[no-untyped-def]
        self.committers.append(threading.current_thread().name)
        return super()._commit(submissions, wait)


def test_quick_commits_are_made_by_the_caller_slow_ones_by_the_writer(tmp_path: Path) -> None:
    log = _Traced(tmp_path / "audit.db", salt="s")
    _record(log)
    assert log.committers == [threading.current_thread().name]  # no hop to the writer thread
    log._commit_s = 1.0  # as after syncs of a second: group commit in the writer instead
    _record(log)
    assert log.committers[1:] == ["ctit-audit"]
    assert len(log.rows()) == 2
    log.close()


def test_an_awaited_row_committed_by_the_caller_is_durable_when_the_await_returns(
    tmp_path: Path,
) -> None:
    log = _Traced(tmp_path / "audit.db", salt="s")
    items = [("P-1", "0" * 64, [ANSWER])]
    asyncio.run(log.arecord_scores(model=MODEL, items=items, endpoint="/v1/score", caller="t"))
    assert log.committers == [threading.current_thread().name]
    reader = sqlite3.connect(log.path)  # another connection sees the committed row
    assert reader.execute("SELECT count(*) FROM scores").fetchone() == (1,)
    reader.close()
    log.close()


def test_a_caller_finding_the_lock_held_leaves_its_rows_to_the_writer(tmp_path: Path) -> None:
    log = _Traced(tmp_path / "audit.db", salt="s")
    held = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(log.path, 0.2, held))
    holder.start()
    held.wait(5)
    _record(log)
    holder.join()
    # the caller tried once without waiting; the writer waited for the lock and committed
    assert log.committers[0] == threading.current_thread().name
    assert log.committers[-1] == "ctit-audit"
    assert len(log.rows()) == 1
    log.close()


def test_commits_run_no_timeout_statements_and_reads_wait_again(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db", salt="s")
    statements: list[str] = []
    log._db.set_trace_callback(statements.append)
    _record(log)
    assert not [s for s in statements if "busy_timeout" in s]  # the commit: no PRAGMA at all
    assert statements[0] == "BEGIN IMMEDIATE" and statements[-1] == "COMMIT"
    statements.clear()
    assert log.check() and len(log.rows()) == 1
    timeouts = [s for s in statements if "busy_timeout" in s]
    assert timeouts == ["PRAGMA busy_timeout=30000", "PRAGMA busy_timeout=0"] * 2
    assert log._db.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    log.close()


def test_a_new_log_waits_for_another_writer_to_store_its_salt(tmp_path: Path) -> None:
    AuditLog(tmp_path / "audit.db", salt="s").close()  # the file and its tables exist
    held, released = threading.Event(), []
    holder = threading.Thread(
        target=_hold_write_lock, args=(tmp_path / "audit.db", 0.3, held, released)
    )
    holder.start()
    held.wait(5)
    log = AuditLog(tmp_path / "audit.db")  # no salt given: one is stored (a write), after waiting
    opened = time.monotonic()
    holder.join()
    assert opened >= released[0]
    assert len(log._stored_salt()) == 64
    log.close()


def test_a_restored_file_is_not_opened_beside_the_old_write_ahead_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = AuditLog(tmp_path / "audit.db", salt="s")
    for _ in range(30):
        _record(log)
    backup = AuditLog(tmp_path / "backup.db", salt="s")
    backup.record_score(
        model=MODEL, patient_id="P-2", input_sha256="1" * 64, answers=[ANSWER], endpoint="/b",
        caller="restore",
    )  # fmt: skip
    backup.close()
    (tmp_path / "backup.db").replace(log.path)  # the old -wal and -shm stay beside it
    for _ in range(3):
        with pytest.raises(audit_module.AuditUnavailable):
            _record(log)
    assert not log.check()
    stale = [r for r in caplog.records if "write-ahead log is still beside it" in r.getMessage()]
    assert len(stale) == 1  # said once, not at every refused write
    for suffix in ("-wal", "-shm"):
        Path(f"{log.path}{suffix}").unlink()
    _record(log)
    assert log.check()
    assert [row["endpoint"] for row in log.rows()] == ["/b", "/v1/score"]  # the backup's row kept
    log.close()
