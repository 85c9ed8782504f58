"""Audit log of every score: SQLite in WAL mode, written durably before the answer leaves.

Each row: time (UTC), model name and version, salted SHA-256 of the patient id and of the episode
id, SHA-256 of the input record, the output (with the episode id replaced by its hash), the
endpoint and the caller. No raw patient or episode identifier is written here or to any log.

Durability: WAL with `synchronous=FULL` by default. Under WAL, NORMAL survives an application
crash but may lose the last commits on power loss or an OS crash; an audit trail of clinical advice
must not, so every commit is synced before the response is returned. A sync costs milliseconds
(6-8 ms measured on this project's build machine), so one writer thread commits all waiting rows
together (group commit): concurrent requests share a sync. Where a sync is quick (0.12 ms on this
project's development VM, less than the two thread wake-ups of handing rows to the writer), the
caller commits its own rows while the writer is idle (`AuditLog._commit_here`).
`synchronous="NORMAL"` is available for hosts that accept the power-loss window. Server workers
(processes) share the file; a writer waiting for another's lock retries every 0.1-2 ms instead of
SQLite's 1-100 ms busy sleeps (with two workers: about 230 -> 300 requests/s here).

Model inputs (for drift monitoring, `ctit monitor`): unless switched off
(`ServingSettings.audit_model_inputs`, CTIT_AUDIT_MODEL_INPUTS=false), each score also writes one
row of `score_inputs`: time, model name and version, the salted episode hash (the only link to
outcomes), probability, margin and the model-input feature vector as little-endian float32 bytes
(NaN = missing), exactly what the booster saw. Feature names live once per feature set in
`feature_sets`. Model features are clinical values (labs, regimen history, age); no identifier,
date or free text is a model input.

Salt: `ServingSettings.audit_salt` (CTIT_AUDIT_SALT), never written to the database. Without one
(development only; production mode refuses to start), a random salt is created once and kept in
the database's `meta` table so hashes stay stable across restarts, and a loud warning is logged:
whoever reads the file can then recover short identifiers (MRNs) by trying them all.

Free text: the stored answer keeps each warning's code, feature and path but not its message
(messages quote drug names, test codes and units as the client wrote them); callers hash every
identifier (CDS `userId`, unknown card ids) before they get here.

A deleted or replaced file: SQLite keeps writing to the open (unlinked) file, and the rows would
vanish at the next restart. Before every commit the writer compares the path's device and inode
with those of the file it opened; when they differ it refuses the rows (`AuditUnavailable`) and
`writable()` turns false, so the service answers 503 and scores nothing. When a file is back at
the path (restored, or a new one created), the log reopens it and accepts rows again, unless the
lost file's write-ahead log (`-wal`) is still beside it: SQLite would replay the old file's pages
onto the new one and silently replace its rows, so the log stays unwritable, says so once, and
reopens when `-wal` and `-shm` have been removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from serving.http.jsonout import dumps

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scores (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    patient_hash TEXT NOT NULL,
    episode_hash TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    output TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    caller TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    model_version TEXT NOT NULL,
    patient_hash TEXT NOT NULL,
    episode_hash TEXT NOT NULL,
    feedback TEXT NOT NULL,
    caller TEXT NOT NULL
);
-- model inputs for monitoring (see the module docstring); no identifiers
CREATE TABLE IF NOT EXISTS feature_sets (id TEXT PRIMARY KEY, names TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS score_inputs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    episode_hash TEXT NOT NULL,
    probability REAL NOT NULL,
    margin REAL NOT NULL,
    feature_set TEXT NOT NULL,
    features BLOB NOT NULL
);
"""


def salted_hash(salt: bytes, identifier: str) -> str:
    """SHA-256 of salt + identifier: how the log stores patient and episode ids."""
    return hashlib.sha256(salt + str(identifier).encode("utf-8")).hexdigest()


def feature_set_id(names: Sequence[str]) -> str:
    """Identifier of an ordered list of feature names (first 16 hex digits of its SHA-256)."""
    return hashlib.sha256(json.dumps(list(names)).encode("utf-8")).hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def _feature_set(names: tuple[str, ...]) -> tuple[str, str]:
    """`feature_set_id(names)` and the names as JSON, computed once per model's feature list."""
    return feature_set_id(names), json.dumps(list(names))


def input_hash(record: Any) -> str:
    """SHA-256 of a record's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_INSERT = {
    "scores": "INSERT INTO scores (time, model_name, model_version, patient_hash, episode_hash,"
    " input_hash, output, endpoint, caller) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "feedback": "INSERT INTO feedback (time, model_version, patient_hash, episode_hash, feedback,"
    " caller) VALUES (?, ?, ?, ?, ?, ?)",
    "feature_sets": "INSERT OR IGNORE INTO feature_sets (id, names) VALUES (?, ?)",
    "score_inputs": "INSERT INTO score_inputs (time, model_name, model_version, episode_hash,"
    " probability, margin, feature_set, features) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
}
_GROUP_MAX = 512
_SALT_WARNING = (
    "audit log %s: CTIT_AUDIT_SALT is not set; a random salt is stored IN the audit database, "
    "so anyone who can read the file can recover short patient identifiers from the hashes. "
    "Set CTIT_AUDIT_SALT (required with CTIT_MODE=production)."
)


class AuditUnavailable(RuntimeError):
    """The audit database was deleted, replaced or closed: rows cannot be written durably."""


_LOCK_WAIT_S = 30.0
#: Commit in the caller's thread while commits take less than this on average (`_commit_here`).
_INLINE_COMMIT_S = 0.0005
_COMMIT_AVERAGING = 0.2  # weight of the newest commit in the moving average
_BUSY_TIMEOUT_S = 30.0  # SQLite's own wait, for the rare statements outside `_begin` (`_patient`)


class AuditLog:
    """Append-only audit of scores and clinician feedback.

    One writer thread commits whatever is queued as one transaction (group commit), so concurrent
    requests share one sync of the disk; while commits are quick and the writer idle, a caller
    commits its own rows instead. Each caller waits until its own rows are committed:
    `record_*` block until then; `arecord_*` await it without blocking the event loop.
    """

    def __init__(
        self,
        path: str | Path,
        salt: str | None = None,
        synchronous: str = "FULL",
        model_inputs: bool = True,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._synchronous = synchronous
        self._identity: tuple[int, int] | None = None
        self._wal_identity: tuple[int, int] | None = None
        self._stale_wal_reported = False
        self._db = self._open()
        self._salt = (salt or self._stored_salt()).encode("utf-8")
        self.model_inputs = model_inputs
        self._queue: queue.SimpleQueue[tuple[str, list[tuple], Future] | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="ctit-audit", daemon=True)
        self._closed = False
        self._commit_s = 0.0  # moving average of a commit's duration (s), see `_commit_here`
        self._writer.start()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=_BUSY_TIMEOUT_S
        )
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"audit log {self.path}: WAL mode refused (journal_mode={mode})")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.executescript(_SCHEMA)
            # From now on a locked database fails at once: `_begin` retries faster than SQLite's
            # busy handler; the rare other statements wait in `_patient`. Switching the timeout
            # around every commit cost two statements a request (30-45 µs after a scoring).
            db.execute("PRAGMA busy_timeout=0")
        except BaseException:
            db.close()
            raise
        self._identity = _identity(self.path)
        self._wal_identity = _identity(self._wal_path)  # created by the schema's transaction
        self._stale_wal_reported = False
        return db

    @property
    def _wal_path(self) -> Path:
        return self.path.with_name(self.path.name + "-wal")

    def _same_file(self) -> bool:
        """Whether the path still names the file this log opened (not deleted or replaced)."""
        return self._identity is not None and _identity(self.path) == self._identity

    def _reopen(self) -> bool:
        """Open the file now at the path (restored or new) in place of a lost one; under _lock."""
        if not self.path.exists() or self._stale_wal():
            return False
        try:
            fresh = self._open()
        except (sqlite3.Error, RuntimeError, OSError) as exc:
            log.error("audit log %s: cannot reopen (%s)", self.path, type(exc).__name__)
            return False
        old, self._db = self._db, fresh
        with contextlib.suppress(sqlite3.Error):
            old.close()
        log.warning("audit log %s: a new file is at the path; writing to it from now on", self.path)
        return True

    def _stale_wal(self) -> bool:
        """Whether the write-ahead log beside the path is still the lost file's (only the main
        file was put back): SQLite would replay the old file's pages onto the new one, silently
        replacing its rows. The log then stays unwritable until `-wal` and `-shm` are removed.
        (Our old connection keeps the old log open, so its inode cannot be reused meanwhile.)"""
        if self._wal_identity is None or _identity(self._wal_path) != self._wal_identity:
            return False
        if not self._stale_wal_reported:
            self._stale_wal_reported = True
            log.error(
                "audit log %s: a new file is at the path, but the previous file's write-ahead "
                "log is still beside it and would be replayed onto it; remove %s and %s-shm "
                "(nothing is scored until then)",
                self.path,
                self._wal_path,
                self.path,
            )
        return True

    def writable(self) -> bool:
        """Whether rows can be written now: open, writer running, the same file at the path.

        A lost file that has come back is reopened here (so `/readyz` recovers without a write).
        """
        if self._closed or not self._writer.is_alive():
            return False
        if self._same_file():
            return True
        with self._lock:
            if self._same_file():
                return True
            return self._reopen()

    def _stored_salt(self) -> str:
        with self._lock, self._patient():
            # Several server processes may open a new log at once: the first salt written wins.
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('salt', ?)",
                (secrets.token_hex(32),),
            )
            row = self._db.execute("SELECT value FROM meta WHERE key = 'salt'").fetchone()
        log.warning(_SALT_WARNING, self.path)
        return str(row[0])

    def hash_id(self, identifier: str) -> str:
        """Salted SHA-256 of an identifier (patient or episode id)."""
        return salted_hash(self._salt, identifier)

    # -- scores ---------------------------------------------------------------------------------

    def score_rows(
        self,
        *,
        model: dict[str, Any],
        items: Iterable[tuple[str, str, Sequence[dict[str, Any]]]],
        endpoint: str,
        caller: str,
    ) -> list[tuple]:
        """Rows of the `scores` table for (patient_id, input_sha256, answers) items."""
        now = _now()
        name, version = str(model.get("name", "")), str(model.get("version", ""))
        rows = []
        for patient_id, record_hash, answers in items:
            patient_hash = self.hash_id(patient_id)
            for answer in answers:
                episode_hash = self.hash_id(answer["episode_id"])
                rows.append(
                    (
                        now,
                        name,
                        version,
                        patient_hash,
                        episode_hash,
                        record_hash,
                        _output(answer, episode_hash),
                        endpoint,
                        caller,
                    )
                )
        return rows

    def record_score(
        self,
        *,
        model: dict[str, Any],
        patient_id: str,
        input_sha256: str,
        answers: Sequence[dict[str, Any]],
        endpoint: str,
        caller: str,
    ) -> None:
        """Append one row per answer (episode) of one record; durable when this returns.

        `input_sha256` is the SHA-256 of the request as received (or `input_hash(record)`).
        """
        items = [(patient_id, input_sha256, answers)]
        self._submit_tables(self._score_tables(model, items, endpoint, caller)).result()

    def record_scores(
        self,
        *,
        model: dict[str, Any],
        items: Iterable[tuple[str, str, Sequence[dict[str, Any]]]],
        endpoint: str,
        caller: str,
    ) -> None:
        """Append the rows of several records (patient_id, input_sha256, answers) at once."""
        self._submit_tables(self._score_tables(model, items, endpoint, caller)).result()

    async def arecord_scores(
        self,
        *,
        model: dict[str, Any],
        items: Iterable[tuple[str, str, Sequence[dict[str, Any]]]],
        endpoint: str,
        caller: str,
    ) -> None:
        """`record_scores` for async code: waits for the commit without blocking the loop."""
        done = self._submit_tables(self._score_tables(model, items, endpoint, caller))
        if done.done():  # committed here: no hop through the loop's callbacks
            done.result()
            return
        await asyncio.wrap_future(done)

    def _score_tables(
        self,
        model: dict[str, Any],
        items: Iterable[tuple[str, str, Sequence[dict[str, Any]]]],
        endpoint: str,
        caller: str,
    ) -> list[tuple[str, list[tuple]]]:
        """The rows of one submission: the scores, then the model-input rows of each record."""
        items = list(items)
        rows = self.score_rows(model=model, items=items, endpoint=endpoint, caller=caller)
        return [("scores", rows), *self._input_tables(model, items)]

    # -- model inputs (monitoring) --------------------------------------------------------------

    def _input_tables(
        self, model: dict[str, Any], items: Sequence[tuple[str, str, Sequence[dict[str, Any]]]]
    ) -> list[tuple[str, list[tuple]]]:
        """The `feature_sets` and `score_inputs` rows of answers that carry `model_input` (see
        module doc), written in the same transaction as their `scores` rows."""
        if not self.model_inputs:
            return []
        now = _now()
        name, version = str(model.get("name", "")), str(model.get("version", ""))
        rows, sets = [], {}
        for _patient_id, _record_hash, answers in items:
            for answer in answers:
                carried = getattr(answer, "model_input", None)
                if carried is None:
                    continue
                names, values = carried
                set_id, names_json = _feature_set(tuple(names))
                sets.setdefault(set_id, names_json)
                vector = np.asarray(values, dtype="<f4").tobytes()
                episode_hash = self.hash_id(answer["episode_id"])
                probability, margin = float(answer["probability"]), float(answer["margin"])
                rows.append((now, name, version, episode_hash, probability, margin, set_id, vector))
        # feature_sets: INSERT OR IGNORE, before the rows naming them
        return [("feature_sets", list(sets.items())), ("score_inputs", rows)]

    # -- feedback -------------------------------------------------------------------------------

    def record_feedback(
        self,
        *,
        model_version: str,
        patient_id: str,
        episode_id: str,
        feedback: dict[str, Any],
        caller: str,
    ) -> None:
        """Append clinician feedback about a score (free text must not carry identifiers)."""
        row = (
            _now(),
            str(model_version),
            self.hash_id(patient_id),
            self.hash_id(episode_id),
            json.dumps(feedback, sort_keys=True, default=str),
            caller,
        )
        self._submit("feedback", [row]).result()

    # -- writing --------------------------------------------------------------------------------

    def _submit(self, table: str, rows: list[tuple]) -> Future:
        return self._submit_tables([(table, rows)])

    def _submit_tables(self, tables: list[tuple[str, list[tuple]]]) -> Future:
        """Queue rows of one or more tables; they commit together (one transaction, one sync).

        When commits are quick and nobody else is writing, they are committed here, in the
        caller's thread (see `_commit_here`); the returned future is then already done.
        """
        done: Future = Future()
        tables = [(table, rows) for table, rows in tables if rows]
        if self._closed:
            done.set_exception(AuditUnavailable(f"audit log {self.path} is closed"))
        elif not tables:
            done.set_result(None)
        elif not self._commit_here(tables, done):
            self._queue.put((tables, done))
        return done

    def _commit_here(self, tables: list[tuple[str, list[tuple]]], done: Future) -> bool:
        """Commit in the caller's thread, if that is the cheaper way; whether it was tried.

        Handing rows to the writer thread and being woken when they are synced costs two thread
        wake-ups, 0.2-0.3 ms on a 2-core VM: more than the sync itself on a fast disk (0.12 ms
        here). So while recent commits took under `_INLINE_COMMIT_S`, nothing is queued, the
        writer is idle and no other process holds the write lock, the caller commits itself
        (an event loop is blocked that long, as by any scoring). On a slow disk (a sync of 6-8 ms)
        the average rises above the limit and every commit goes to the writer, which shares one
        sync among all waiting requests (group commit).
        """
        if self._commit_s > _INLINE_COMMIT_S or not self._queue.empty():
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            committed = self._commit([tables], wait=False)
        except Exception as exc:  # the caller learns that its rows were not written
            log.error("audit log %s: write failed (%s)", self.path, type(exc).__name__)
            done.set_exception(exc)
            return True
        finally:
            self._lock.release()
        if committed:
            done.set_result(None)
        return committed

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            while len(group) < _GROUP_MAX:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                group.append(more)
            try:
                with self._lock:
                    self._commit([tables for tables, _done in group], wait=True)
            except Exception as exc:  # every waiter learns that its rows were not written
                log.error("audit log %s: write failed (%s)", self.path, type(exc).__name__)
                for _tables, done in group:
                    done.set_exception(exc)
            else:
                for _tables, done in group:
                    done.set_result(None)

    def _commit(self, submissions: list[list[tuple[str, list[tuple]]]], wait: bool) -> bool:
        """Insert the submissions' rows and commit them as one transaction; under `_lock`.

        Without `wait`, gives up (False, nothing written) when another process holds the write
        lock. Raises `AuditUnavailable` when the file was deleted or replaced.
        """
        if not self._same_file() and not self._reopen():
            log.error(
                "audit log %s: the database file was deleted or replaced; rows refused until it "
                "is back",
                self.path,
            )
            raise AuditUnavailable(f"audit log {self.path} was deleted or replaced")
        if not self._begin(wait):
            return False
        start = time.perf_counter()  # the transaction only: a wait for another worker's lock
        try:
            for tables in submissions:
                for table, rows in tables:
                    self._db.executemany(_INSERT[table], rows)
            self._db.execute("COMMIT")
        except BaseException:
            # also after a failed COMMIT (disk full): never stay inside a transaction
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._commit_s += (time.perf_counter() - start - self._commit_s) * _COMMIT_AVERAGING
        return True

    def _begin(self, wait: bool = True) -> bool:
        """BEGIN IMMEDIATE, retried every 0.1-2 ms while another process holds the write lock.

        Several server workers share one file. SQLite's own busy handler sleeps in steps of 1 to
        100 ms, far longer than the other writer's commit (a sync, ~0.4 ms here): with two
        workers that halved the throughput. So the connection's busy timeout stays 0 (see
        `_open`) and the wait is ours. Gives up after `_LOCK_WAIT_S` (raises), or at once without
        `wait` (returns False).
        """
        deadline = time.monotonic() + _LOCK_WAIT_S
        pause = 0.0001
        while True:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                return True
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
                if not wait:
                    return False
            time.sleep(pause)
            pause = min(pause * 2, 0.002)

    @contextlib.contextmanager
    def _patient(self) -> Iterator[None]:
        """SQLite's own waiting (`_BUSY_TIMEOUT_S`) for a statement outside `_begin` (the salt,
        `check`, `rows`: a WAL reader rarely meets a lock, but may during another process's
        recovery); under `_lock`."""
        self._db.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
        try:
            yield
        finally:
            self._db.execute("PRAGMA busy_timeout=0")

    # -- reading --------------------------------------------------------------------------------

    def check(self) -> bool:
        """Whether the log answers, its writer runs and its file is in place (for /readyz)."""
        if not self.writable():
            return False
        try:
            with self._lock, self._patient():
                self._db.execute("SELECT 1 FROM scores LIMIT 1").fetchall()
        except sqlite3.Error:
            return False
        return True

    def rows(self, table: str = "scores") -> list[dict[str, Any]]:
        """Every row of a table as dicts (for audits and tests)."""
        if table not in ("scores", "feedback", "score_inputs", "feature_sets"):
            raise ValueError(f"unknown audit table {table!r}")
        with self._lock, self._patient():
            cursor = self._db.execute(f"SELECT * FROM {table} ORDER BY id")
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def close(self) -> None:
        """Write what is queued, stop the writer and close the database."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout=30)
        with self._lock:
            self._db.close()


def _output(answer: dict[str, Any], episode_hash: str) -> str:
    """The answer as canonical JSON, its episode id replaced by the id's salted hash and its
    warnings without their free-text messages (which quote the client's own words)."""
    kept = {key: value for key, value in answer.items() if key != "episode_id"}
    kept["episode_hash"] = episode_hash
    if isinstance(kept.get("warnings"), list):
        kept["warnings"] = [
            {k: v for k, v in w.items() if k in ("code", "feature", "loc")}
            if isinstance(w, dict)
            else None
            for w in kept["warnings"]
        ]
    return dumps(kept, sort_keys=True).decode("utf-8")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
