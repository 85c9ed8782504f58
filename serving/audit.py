"""Audit log of every score: SQLite in WAL mode, written durably before the answer leaves.

Each row: time (UTC), model name and version, salted SHA-256 of the patient id and of the episode
id, SHA-256 of the input record, the output (with the episode id replaced by its hash), the
endpoint and the caller. No raw patient or episode identifier is written here or to any log.

Durability: WAL with `synchronous=FULL`. Under WAL, NORMAL survives an application crash but may
lose the last commits on power loss or an OS crash; an audit trail of clinical advice must not, so
every commit is synced before the response is returned (measured cost: well under a millisecond
on local disk).

Salt: `ServingSettings.audit_salt` (CTIT_AUDIT_SALT). Without one, a random salt is created once
and kept in the database's `meta` table, so hashes stay stable across restarts; set the variable
to keep the salt away from readers of the database file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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
"""


def input_hash(record: Any) -> str:
    """SHA-256 of a record's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AuditLog:
    """Append-only audit of scores and clinician feedback (thread-safe, one connection)."""

    def __init__(self, path: str | Path, salt: str | None = None) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"audit log {self.path}: WAL mode refused (journal_mode={mode})")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._salt = (salt or self._stored_salt()).encode("utf-8")

    def _stored_salt(self) -> str:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'salt'").fetchone()
            if row is not None:
                return str(row[0])
            salt = secrets.token_hex(32)
            self._db.execute("INSERT INTO meta (key, value) VALUES ('salt', ?)", (salt,))
        log.warning("audit log %s: no salt configured; a random salt is kept in it", self.path)
        return salt

    def hash_id(self, identifier: str) -> str:
        """Salted SHA-256 of an identifier (patient or episode id)."""
        return hashlib.sha256(self._salt + str(identifier).encode("utf-8")).hexdigest()

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
        now = _now()
        patient_hash = self.hash_id(patient_id)
        record_hash = input_sha256
        rows = [
            (
                now,
                str(model.get("name", "")),
                str(model.get("version", "")),
                patient_hash,
                self.hash_id(answer["episode_id"]),
                record_hash,
                self._output(answer),
                endpoint,
                caller,
            )
            for answer in answers
        ]
        self._insert_scores(rows)

    def record_scores(
        self,
        *,
        model: dict[str, Any],
        items: Iterable[tuple[str, str, Sequence[dict[str, Any]]]],
        endpoint: str,
        caller: str,
    ) -> None:
        """Append the rows of several records (patient_id, input_sha256, answers) at once."""
        now = _now()
        rows = []
        for patient_id, record_hash, answers in items:
            patient_hash = self.hash_id(patient_id)
            rows.extend(
                (
                    now,
                    str(model.get("name", "")),
                    str(model.get("version", "")),
                    patient_hash,
                    self.hash_id(answer["episode_id"]),
                    record_hash,
                    self._output(answer),
                    endpoint,
                    caller,
                )
                for answer in answers
            )
        self._insert_scores(rows)

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
        with self._lock:
            self._db.execute(
                "INSERT INTO feedback (time, model_version, patient_hash, episode_hash, feedback,"
                " caller) VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )

    def _output(self, answer: dict[str, Any]) -> str:
        kept = {key: value for key, value in answer.items() if key != "episode_id"}
        kept["episode_hash"] = self.hash_id(answer["episode_id"])
        return json.dumps(kept, sort_keys=True, separators=(",", ":"))

    def _insert_scores(self, rows: list[tuple]) -> None:
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO scores (time, model_name, model_version, patient_hash,"
                    " episode_hash, input_hash, output, endpoint, caller)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def check(self) -> bool:
        """Whether the log answers (for /readyz)."""
        try:
            with self._lock:
                self._db.execute("SELECT 1 FROM scores LIMIT 1").fetchall()
        except sqlite3.Error:
            return False
        return True

    def rows(self, table: str = "scores") -> list[dict[str, Any]]:
        """Every row of a table as dicts (for audits and tests)."""
        if table not in ("scores", "feedback"):
            raise ValueError(f"unknown audit table {table!r}")
        with self._lock:
            cursor = self._db.execute(f"SELECT * FROM {table} ORDER BY id")
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
